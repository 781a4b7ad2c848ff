"""A real SoftHSM2 token for the PKCS#11 tests (Debian's softhsm2; ``make softhsm`` installs it).

One token per test session, initialised by ``softhsm2-util`` in a temporary
directory that ``SOFTHSM2_CONF`` points at (set for the whole session: a
PKCS#11 module reads its config once, when it is initialised). Tests label
their keys uniquely. ``unplugged()`` moves the token directory away and back,
which is what a removed token looks like to the module: open sessions fail,
and a fresh initialisation finds no token until it returns.

When softhsm2 is missing the tests skip loudly, and fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .sshd_harness import _missing

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
LABEL = "iast"
PIN = "246810"
SO_PIN = "13579111"


@dataclass
class SoftHSM:
    module: str
    conf: Path
    tokendir: Path
    pin_file: Path

    def uri(self, obj: str, *, pin_source: bool = True, module: bool = True) -> str:
        query = [f"module-path={self.module}"] if module else []
        if pin_source:
            query.append(f"pin-source={self.pin_file}")
        return f"pkcs11:token={LABEL};object={obj}" + ("?" + "&".join(query) if query else "")

    @staticmethod
    def label() -> str:
        return "k-" + uuid.uuid4().hex[:10]

    @contextlib.contextmanager
    def unplugged(self) -> Iterator[None]:
        away = self.tokendir.with_name(self.tokendir.name + ".away")
        shutil.move(str(self.tokendir), str(away))
        try:
            yield
        finally:
            shutil.move(str(away), str(self.tokendir))


def find_module() -> str | None:
    return next((m for m in MODULE_CANDIDATES if os.path.exists(m)), None)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    util = shutil.which("softhsm2-util")
    module = find_module()
    if util is None or module is None:
        _missing("softhsm2 not found (install the Debian package softhsm2: make softhsm)")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        _missing("python-pkcs11 is not installed (make venv)")
    work = tmp_path_factory.mktemp("softhsm")
    tokendir = work / "tokens"
    tokendir.mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run([util, "--init-token", "--free", "--label", LABEL, "--so-pin", SO_PIN, "--pin", PIN],
                   check=True, capture_output=True, env=env)
    os.environ["SOFTHSM2_CONF"] = str(conf)  # for this process's module and the CA processes it starts
    pin_file = work / "token.pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    return SoftHSM(module, conf, tokendir, pin_file)
