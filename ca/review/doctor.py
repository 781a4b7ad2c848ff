"""``iast-ca doctor``: what in the CA's state or policy is weaker than it should be.

One :class:`~ca.models.Finding` per problem (docs/security.md rule 75). The codes:

    state_dir_permissions     the state directory is open to other users
    key_permissions           a private key, the database or a secret file is readable by others
    keyring_unreadable        keyring.json cannot be read (no CA key would sign)
    database_unavailable      the audit database does not answer
    policy_root_unguarded     a role grants root without require_reason or an approval
    policy_wildcard_privileged  members = ["*"] on a role with a privileged principal and no force_command
    policy_invalid            the policy file does not load
    clock_skew                this machine's clock differs from the database server's, or is behind
                              the newest audit event, by more than signing.clock_skew
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from ca.durations import clock_offset, format_duration
from ca.errors import CAError
from ca.keys.keyring import Keyring
from ca.models import Finding
from ca.policy import Policy
from ca.rules import RESERVED_PRINCIPALS

CODES = ("state_dir_permissions", "key_permissions", "keyring_unreadable", "database_unavailable",
         "policy_root_unguarded", "policy_wildcard_privileged", "policy_invalid", "clock_skew")

# Public by nature (.pub, the policy), or guarded by the 0700 state directory as SQLite writes
# them (ca.db and its -wal/-shm): the per-file check is for keys and secrets.
_PUBLIC_SUFFIXES = (".pub", ".toml", ".krl", ".pid", ".db", ".db-wal", ".db-shm", ".db-journal")  # serve.pid: public


def policy_findings(policy: Policy) -> list[Finding]:
    out = []
    for name, role in sorted(policy.roles.items()):
        if "root" in role.principals and not role.require_reason and role.approval is None:
            out.append(Finding("warning", "policy_root_unguarded", f"role {name} grants root with neither "
                               "require_reason nor an approval: nobody has to say why",
                               f"set require_reason = true or an [roles.{name}.approval] in the policy"))
        privileged = sorted(p for p in role.principals if p in RESERVED_PRINCIPALS)
        if "*" in role.members and privileged and not role.force_command:
            out.append(Finding("warning", "policy_wildcard_privileged", f"role {name} gives every user "
                               '(members = ["*"]) the privileged principal(s) ' + ", ".join(privileged)
                               + " with a full shell", f"name the members of {name}, or set a force_command"))
    return out


def state_findings(state_dir: Path, secret_files: tuple[Path, ...] = ()) -> list[Finding]:
    out = []
    try:
        mode = state_dir.stat().st_mode
    except OSError as e:
        return [Finding("error", "state_dir_permissions", f"{state_dir}: {e.strerror}",
                        "run 'iast-ca init' or fix --state-dir")]
    if mode & 0o077:
        out.append(Finding("error", "state_dir_permissions", f"{state_dir} has mode {mode & 0o7777:04o}: other "
                           "users can look at the CA's keys and database", f"chmod 700 {state_dir}"))
    files = [p for p in sorted(state_dir.rglob("*")) if p.is_file() and not p.name.endswith(_PUBLIC_SUFFIXES)]
    for p in files + [f for f in secret_files if f.exists()]:
        m = p.stat().st_mode
        if stat.S_ISREG(m) and m & 0o077:
            out.append(Finding("error", "key_permissions", f"{p} has mode {m & 0o7777:04o}: readable by others",
                               f"chmod 600 {p}"))
    return out


def clock_findings(*, server: tuple[float, float, float] | None, newest: tuple[int, float] | None,
                   now: float, skew: int) -> list[Finding]:
    """The CA stamps every certificate's validity with its own clock, so a clock off by more
    than ``skew`` (signing.clock_skew, the slack given to hosts) issues certificates that hosts
    refuse as not yet valid, or that outlive their lifetime. ``server``: (local before, the
    database server's time, local after) of one query, None where there is no other clock
    (SQLite); ``newest``: (id, time) of the newest audit event, written by this machine or any
    replica."""
    out = []
    if server is not None:
        off = clock_offset(*server)
        if abs(off) > skew:
            out.append(Finding("warning", "clock_skew", f"this machine's clock is {format_duration(abs(off))} "
                               f"{'behind' if off > 0 else 'ahead of'} the database server's (more than "
                               f"{format_duration(skew)}): replicas stamp certificates with different clocks",
                               "enable time sync on both (timedatectl set-ntp true)"))
    if newest is not None and newest[1] - now > skew:
        out.append(Finding("warning", "clock_skew", f"the newest audit event (id {newest[0]}) is dated "
                           f"{format_duration(newest[1] - now)} after this machine's clock: this clock is behind, "
                           "or the replica that wrote it is ahead; hosts refuse certificates from the wrong one",
                           "enable time sync on every replica (timedatectl set-ntp true)"))
    return out


def check_ca(*, state_dir: Path, policy: Callable[[], Policy], database: Callable[[], None],
             clock: Callable[[], list[Finding]] | None = None, secret_files: tuple[Path, ...] = ()) -> list[Finding]:
    """Every finding for the CA in ``state_dir``: ``policy()`` loads the policy, ``database()``
    raises CAError when the database does not answer, ``clock()`` returns the clock findings
    (see :func:`clock_findings`; only asked when the database answered)."""
    out = state_findings(state_dir, secret_files)
    try:
        Keyring.load(state_dir)
    except CAError as e:
        out.append(Finding("error", "keyring_unreadable", e.message, "restore keyring.json from a backup"))
    try:
        database()
    except CAError as e:
        out.append(Finding("error", "database_unavailable", e.message,
                           "check the database (PostgreSQL running, the URL and password right)"))
    else:
        if clock is not None:
            try:
                out.extend(clock())
            except CAError as e:
                out.append(Finding("error", "database_unavailable", e.message,
                                   "check the database (PostgreSQL running, the URL and password right)"))
    try:
        out.extend(policy_findings(policy()))
    except CAError as e:
        out.append(Finding("error", "policy_invalid", e.message, "iast-ca policy check"))
    return out
