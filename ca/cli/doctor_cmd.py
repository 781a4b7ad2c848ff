"""``iast-ca doctor``: a thin shell over ca.review.doctor."""

from __future__ import annotations

import time

import click

from ca.cli.common import output_options
from ca.cli.context import Env, pass_env
from ca.cli.findings import report_findings


@click.command()
@output_options(csv_ok=False)
@pass_env
def doctor(env: Env, fmt: str) -> None:
    """Check the CA's state directory, database and policy; one line per finding with the fix.

    Reports a state directory or key files open to other users, an
    unreadable keyring, a database that does not answer, and policy
    warnings: a role that grants root without require_reason or an
    approval, and members = ["*"] on a role with a privileged principal and
    no force_command; and a clock off by more than signing.clock_skew
    against the database server (PostgreSQL) or behind the newest audit
    event (a replica ahead, or this clock stepped back). Exit 0 when clean,
    1 with findings.

    \b
    Example:
      iast-ca --config /etc/iast-ca/ca.toml doctor
      iast-ca doctor --json | jq -r '.[] | select(.severity == "error") | .code'
    """
    from ca.app import read_policy
    from ca.durations import parse_time
    from ca.models import Finding
    from ca.review.doctor import check_ca, clock_findings

    cfg = env.config
    with env.open_ca() as ca:
        def database() -> None:
            ca.require_db()
            ca.audit.head()

        def clock() -> list[Finding]:
            before = time.time()
            theirs = ca.audit.server_time()
            after = time.time()
            count, _ = ca.audit.head()
            newest = ca.audit.get(count) if count else None
            return clock_findings(server=None if theirs is None else (before, theirs, after),
                                  newest=None if newest is None else (newest.id, parse_time(newest.ts, after)),
                                  now=after, skew=cfg.clock_skew)

        secrets = tuple(p for p in (cfg.passphrase_file, cfg.pkcs11_pin_file) if p is not None)
        findings = check_ca(state_dir=cfg.state_dir, policy=lambda: read_policy(cfg), database=database,
                            clock=clock, secret_files=secrets)
    report_findings(findings, fmt, f"{cfg.state_dir}: no findings")
