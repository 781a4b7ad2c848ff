"""``iast-ssh host check``: what in this host's sshd makes the CA useless or unsafe here.

It reads what sshd will really do (``sshd -T``, after every Include and
default), the files that names, and optionally the CA (the keys it
publishes, its clock), and returns one :class:`~ca.models.Finding` per
problem (docs/security.md rule 74). The codes:

    sshd_config_invalid        sshd -T refuses the configuration
    revoked_keys_missing       no RevokedKeys, or the file is absent (sshd then refuses every login)
    revoked_keys_unreadable    the file is not a KRL sshd can read
    revoked_keys_stale         the KRL was not refreshed within the refresh interval
    trusted_ca_keys_missing    no TrustedUserCAKeys, or its file is absent or holds no key
    trusted_key_retired        a trusted CA key the CA no longer publishes (retired or revoked)
    no_principals_file         no AuthorizedPrincipalsFile: principals map to accounts by name only
    password_authentication    PasswordAuthentication is still on
    permissions                a file sshd trusts is writable by others, or a host key readable by others
    clock_skew                 this host's clock differs from the CA's by more than the allowed skew
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ca.client.hostsetup import Runner, _run, sshd_effective
from ca.durations import clock_offset
from ca.errors import CAError
from ca.models import Finding

CODES = ("sshd_config_invalid", "revoked_keys_missing", "revoked_keys_unreadable", "revoked_keys_stale",
         "trusted_ca_keys_missing", "trusted_key_retired", "no_principals_file", "password_authentication",
         "permissions", "clock_skew")


def _one(effective: dict[str, list[str]], key: str) -> str | None:
    values = effective.get(key)
    if not values or values[0].lower() == "none":
        return None
    return values[0]


def check_host(*, sshd: str, config: Path, published_keys: list[str] | None = None,
               ca_clock: tuple[float, float, float] | None = None, skew: int = 60,
               krl_max_age: int = 600, now: float | None = None, run: Runner = _run) -> list[Finding]:
    """The findings for the sshd that ``config`` configures. ``published_keys``: the CA's
    trust lines (``ca-keys``); ``ca_clock``: (local before, CA's time, local after) of one request."""
    from ca.client.trust import parse_trust_lines
    from ca.sshcert.krl import KRLError, parse_krl

    now = time.time() if now is None else now
    out: list[Finding] = []
    try:
        effective = sshd_effective(sshd, config, run)
    except CAError as e:
        return [Finding("error", "sshd_config_invalid", e.message, f"fix {config} until 'sshd -t' accepts it")]

    trusted_files: list[Path] = []
    krl = _one(effective, "revokedkeys")
    if krl is None:
        out.append(Finding("error", "revoked_keys_missing", "RevokedKeys is not set: a revoked certificate still "
                           "logs in here", "run 'iast-ssh host setup', or set RevokedKeys to the KRL that "
                           "'iast-ssh host fetch-krl' installs"))
    else:
        path = Path(krl)
        trusted_files.append(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            out.append(Finding("error", "revoked_keys_missing", f"RevokedKeys {path} does not exist: sshd refuses "
                               "every key and certificate login", f"iast-ssh host fetch-krl ... --output {path}"))
        except OSError as e:
            out.append(Finding("error", "revoked_keys_unreadable", f"RevokedKeys {path}: {e.strerror}: sshd "
                               "refuses every login", f"make {path} a readable KRL (iast-ssh host fetch-krl)"))
        else:
            try:
                if data:  # sshd accepts an empty file as "nothing revoked"
                    parse_krl(data)
            except KRLError as e:
                out.append(Finding("error", "revoked_keys_unreadable", f"RevokedKeys {path} is not a KRL ({e}): "
                                   "sshd refuses every login", f"iast-ssh host fetch-krl ... --output {path}"))
            else:
                age = now - path.stat().st_mtime
                if age > krl_max_age:
                    out.append(Finding("warning", "revoked_keys_stale",
                                       f"RevokedKeys {path} was last refreshed {int(age)}s ago (more than "
                                       f"{krl_max_age}s): revocations do not reach this host",
                                       "systemctl status iast-krl-refresh.timer; systemctl start "
                                       "iast-krl-refresh.service"))

    trust = _one(effective, "trustedusercakeys")
    keys: dict[str, str] = {}
    if trust is None:
        out.append(Finding("error", "trusted_ca_keys_missing", "TrustedUserCAKeys is not set: no certificate logs in",
                           "run 'iast-ssh host setup'"))
    else:
        path = Path(trust)
        trusted_files.append(path)
        try:
            keys = parse_trust_lines(path.read_text())
        except (OSError, CAError) as e:
            why = e.message if isinstance(e, CAError) else e.strerror
            out.append(Finding("error", "trusted_ca_keys_missing", f"TrustedUserCAKeys {path}: {why}",
                               f"iast-ssh host fetch-trust ... --output {path}"))
    if keys and published_keys is not None:
        published = parse_trust_lines("\n".join(published_keys))
        for fp in sorted(set(keys) - set(published)):
            out.append(Finding("error", "trusted_key_retired", f"{trust} trusts {fp}, which the CA no longer "
                               "publishes (retired or revoked): certificates it signed still log in",
                               f"iast-ssh host fetch-trust ... --replace --output {trust}"))

    principals = _one(effective, "authorizedprincipalsfile")
    if principals is None:
        out.append(Finding("warning", "no_principals_file", "no AuthorizedPrincipalsFile: a certificate logs in "
                           "to every account named among its principals", "run 'iast-ssh host setup "
                           "--principals-map FILE'"))
    else:
        pdir = Path(principals).parent
        if pdir.is_dir():
            trusted_files.append(pdir)
            trusted_files.extend(p for p in pdir.iterdir() if p.is_file())

    if (_one(effective, "passwordauthentication") or "no").lower() == "yes":
        out.append(Finding("warning", "password_authentication", "PasswordAuthentication is on: a guessed "
                           "password logs in without the CA", "PasswordAuthentication no (in an "
                           "sshd_config.d drop-in), then reload sshd"))

    for path in trusted_files:
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_mode & 0o022 or st.st_uid not in (0, os.geteuid()):
            out.append(Finding("error", "permissions", f"{path} (mode {st.st_mode & 0o7777:04o}, uid {st.st_uid}) "
                               "can be changed by others: whoever can write it decides who logs in",
                               f"chown root {path} && chmod go-w {path}"))
    for key in effective.get("hostkey", []):
        try:
            st = Path(key).stat()
        except OSError:
            continue
        if st.st_mode & 0o077:
            out.append(Finding("error", "permissions", f"host key {key} has mode {st.st_mode & 0o7777:04o}",
                               f"chmod 600 {key}"))

    if ca_clock is not None:
        off = clock_offset(*ca_clock)
        if abs(off) > skew:
            out.append(Finding("warning", "clock_skew", f"this host's clock is {int(abs(off))}s "
                               f"{'behind' if off > 0 else 'ahead of'} the CA's (more than {skew}s): "
                               "fresh certificates are refused as not yet valid, or old ones kept",
                               "enable time sync (timedatectl set-ntp true)"))
    return out
