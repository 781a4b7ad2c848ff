"""The settings and option types every ``iast-ca`` command shares."""

from __future__ import annotations

import os
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import click

from ca.app import CA, open_ca
from ca.config import Config, load_config
from ca.durations import parse_duration
from ca.keys.keyring import read_passphrase


class Env:
    """The settings every command shares, loaded on first use."""

    def __init__(self, config: str | None, state_dir: str | None, policy: str | None, passphrase_file: str | None):
        self._args = (config, state_dir, policy, passphrase_file)

    @cached_property
    def config(self) -> Config:
        config, state_dir, policy, passphrase_file = self._args
        cfg = load_config(config).with_overrides(state_dir=state_dir, policy=policy,
                                                 database=os.environ.get("IAST_CA_DATABASE") or None)
        if passphrase_file:
            cfg = replace(cfg, passphrase_file=Path(passphrase_file))
        return cfg

    def passphrase(self) -> bytes | None:
        return read_passphrase(self.config.passphrase_file)

    def open_ca(self, *, require_db: bool = False) -> CA:
        """The CA of these settings (:func:`ca.app.open_ca`); parts open on first use. Use it with ``with``.

        ``require_db``: refuse (StateError) when there is no audit database yet,
        rather than create an empty one.
        """
        ca = open_ca(self.config)
        if require_db:
            ca.require_db()
        return ca


pass_env = click.make_pass_decorator(Env)


class Duration(click.ParamType):
    """A duration option: ``30m``, ``8h``, ``1d``."""

    name = "duration"

    def convert(self, value, param, ctx):  # noqa: ANN001 - click's signature
        if isinstance(value, int):
            return value
        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = Duration()
