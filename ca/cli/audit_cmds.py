"""``iast-ca audit``: read, verify and checkpoint the audit log."""

from __future__ import annotations

import base64
import json
import sys
import time

import click

from ca.audit import merkle
from ca.audit.chain import iso
from ca.audit.kinds import EVENT_KINDS
from ca.audit.checkpoint import make_checkpoint, read_checkpoint
from ca.cli.common import (
    Choice, echo, echo_csv, echo_json, echo_table, output_options, terminal_safe, truncated_note,
)
from ca.cli.progress import progress
from ca.cli.context import Env, pass_env
from ca.durations import format_duration, parse_time
from ca.errors import AuditError, CAError, ChainBroken, StateError, UsageError
from ca.files import write_atomic
from ca.models import Event
from ca.app import pkcs11_settings
from ca.keys.audit_key import known_publics, move_to_token, open_audit_signer
from ca.keys.pkcs11 import PKCS11_KEY_TYPES, Pkcs11KeyBackend, Pkcs11URI, generate_in_token
from ca.state import os_user
from ca.store import AuditLog

_CSV_FIELDS = ["id", "ts", "kind", "user", "role", "serial", "key_id", "source", "data", "prev_hash", "hash"]


def _open(env: Env) -> AuditLog:
    """The audit log; the caller closes it."""
    return env.open_ca(require_db=True).audit


def _as_dict(e: Event) -> dict:
    return dict(e.__dict__)


def _summary(e: Event) -> str:
    d = e.data
    if e.kind == "issued":
        return f"{','.join(d.get('principals', []))} for {format_duration(d.get('ttl', 0))}" + (
            f", key {d['login_key'][:15]}..." if d.get("login_key") else ""  # which enrolled key logged in
        ) + (f" - {d['reason']}" if d.get("reason") else "")
    if e.kind in ("denied", "failed"):
        return d.get("message", "")
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items()) if v not in (None, "", []))[:120]


def _when(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return iso(parse_time(text, time.time()))
    except ValueError as e:
        raise UsageError(str(e)) from None


@click.group()
def audit() -> None:
    """Read, verify and checkpoint the audit log.

    \b
    Example:
      iast-ca audit list --user alice --since 7d && iast-ca audit verify
    """


@audit.command("list")
@click.option("--user", help="Only events about this user.")
@click.option("--role", help="Only events for this role.")
@click.option("--kind", type=Choice(EVENT_KINDS), metavar="KIND",
              help="Only this kind of event: issued, denied, failed, revoked, auth_failed, user_added, "
                   "request_created, checkpoint, ... ('iast-ca audit list --kind x' lists them all).")
@click.option("--serial", type=int, help="Only events about this certificate serial.")
@click.option("--since", metavar="TIME", help="From this time: 2026-11-01, 2026-11-01T12:00Z, or 24h (ago).")
@click.option("--until", metavar="TIME", help="Before this time (same forms as --since).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many events.")
@output_options()
@pass_env
def list_(env: Env, user, role, kind, serial, since, until, limit, fmt) -> None:
    """List events, newest first.

    At most --limit events are printed; when more match, a note on stderr
    says so (stdout stays clean for pipes).

    \b
    Example:
      iast-ca audit list --kind denied --since 24h --csv > denials.csv
    """
    log = _open(env)
    try:
        events = log.events(user=user, role=role, kind=kind, serial=serial, since=_when(since),
                            until=_when(until), limit=limit + 1)
    finally:
        log.close()
    truncated = len(events) > limit
    events = events[:limit]
    if fmt == "json":
        echo_json([_as_dict(e) for e in events])
    elif fmt == "csv":
        echo_csv((_as_dict(e) for e in events), _CSV_FIELDS)
    else:
        echo_table([[e.id, e.ts[:19] + "Z", e.kind, e.user, e.role, e.serial, _summary(e)] for e in events],
                   ["ID", "TIME", "KIND", "USER", "ROLE", "SERIAL", "DETAIL"])
    if truncated:
        truncated_note(limit, "event")


@audit.command()
@click.argument("event_id", type=int, required=False)
@click.option("--serial", type=int, help="Show the issuance of this certificate serial.")
@click.option("--request", "request_id", metavar="ID",
              help="Show everything that happened to this access request, oldest first.")
@output_options(csv_ok=False)
@pass_env
def show(env: Env, event_id: int | None, serial: int | None, request_id: str | None, fmt: str) -> None:
    """Show one event in full, by id or by certificate serial; or the history of an access request.

    With --serial, the sshd logins 'audit correlate' joined to the
    certificate follow (host, time, account, outcome, worst finding).
    Times are UTC for people; --json keeps them as stored (ISO ts, epoch
    valid_after/valid_before).

    \b
    Example:
      iast-ca audit show --serial 42
      iast-ca audit show --request req-abcdefghij
    """
    if sum(x is not None for x in (event_id, serial, request_id)) != 1:
        raise UsageError("give an event ID, --serial N or --request ID (one of them)")
    if request_id is not None:
        _show_request(env, request_id, fmt)
        return
    log = _open(env)
    logins: list[dict] = []
    try:
        event = log.get(event_id) if event_id is not None else log.issued_by_serial(serial)
        if event is not None and serial is not None:  # the sshd logins 'audit correlate' joined to it
            rows = log.review.logins_of_certificate(serial, event.id, _LOGINS_SHOWN)
            logins = [{"host": h, "ts": ts, "logged_time": lt, "account": a, "source": src, "outcome": o,
                       "severity": sev} for h, ts, lt, a, src, o, sev in rows]
    finally:
        log.close()
    if event is None:
        raise AuditError(f"no event {event_id}" if event_id is not None else f"no certificate with serial {serial}")
    if fmt == "json":
        # times as they are stored: ISO ts, epoch valid_after/valid_before
        echo_json({**_as_dict(event), "logins": logins} if serial is not None else _as_dict(event))
        return
    for k in ("id", "ts", "kind", "user", "role", "serial", "key_id", "source"):
        value = getattr(event, k)
        echo(f"{k:16} {terminal_safe(value) if value is not None else '-'}")
    for k, v in sorted(event.data.items()):
        if k == "login_key" and v:
            shown = f"{v}{_key_label(env, event.user, v)}"
        else:
            shown = ", ".join(map(str, v)) if isinstance(v, list) else ("-" if v is None else _human_time(k, v))
        echo(f"{terminal_safe(k):16} {terminal_safe(shown)}")
    validity = _validity(event)
    if validity:
        echo(f"{'validity':16} {validity}")
    echo(f"{'prev_hash':16} {event.prev_hash}")
    echo(f"{'hash':16} {event.hash}")
    if serial is not None:
        echo(f"sshd logins with it ('iast-ca audit correlate'): {len(logins) or 'none recorded'}"
             + (f" (the first {_LOGINS_SHOWN})" if len(logins) == _LOGINS_SHOWN else ""))
        if logins:
            echo_table([[r["host"], (r["ts"][:19] + "Z") if r["ts"] else (r["logged_time"] or "no time"),
                         r["account"], r["source"], r["outcome"], r["severity"] or "-"] for r in logins],
                       ["HOST", "TIME", "ACCOUNT", "FROM", "OUTCOME", "FINDING"])


_LOGINS_SHOWN = 50


def _validity(event: Event) -> str | None:
    """The lifetime asked for, with the clock-skew backdating of valid_after told apart
    (a 10 s certificate is "10s", not the 1m10s between its two bounds)."""
    d = event.data
    va, vb, ttl = d.get("valid_after"), d.get("valid_before"), d.get("ttl")
    if not all(isinstance(x, int) for x in (va, vb, ttl)):
        return None
    skew = vb - va - ttl
    return format_duration(ttl) + (f" (valid_after is backdated {format_duration(skew)} for clock skew)"
                                   if skew > 0 else "")

# Data fields that hold a time as epoch seconds: shown as UTC to a person, kept as numbers in --json.
_EPOCH_FIELDS = frozenset({"valid_after", "valid_before", "auth_time", "expires_at", "generated", "used_at",
                           "blocked_until"})


def _human_time(key: str, value: object) -> object:
    if key in _EPOCH_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        if value > 253402300799:  # past 9999-12-31: OpenSSH's "forever"
            return f"forever ({value})"
        return f"{iso(value)[:19].replace('T', ' ')}Z ({value})"
    return value


def _key_label(env: Env, user: str | None, fp: str) -> str:
    """`` (alice@laptop, enrolled key of alice)`` for a login key still enrolled; else a note."""
    try:
        with env.open_ca() as ca:
            u = ca.users.get(user) if user else None
    except CAError:
        return ""
    key = next((k for k in u.keys if k.fingerprint == fp), None) if u else None
    if key is None:
        return " (no longer enrolled)"
    return f" ({key.comment + ', ' if key.comment else ''}enrolled key of {user})"


def _show_request(env: Env, request_id: str, fmt: str) -> None:
    """The request as it stands, then every event that names it (created, votes, refusals, the certificate)."""
    from ca.access.approvals import check_request_id, request_events

    request_id = check_request_id(request_id)
    with env.open_ca(require_db=True) as ca:
        req = ca.approvals.get(request_id)
        events = request_events(ca.audit, request_id)
    if req is None and not events:
        raise AuditError(f"no request {request_id}")
    if fmt == "json":
        echo_json({"request": req.as_json() if req else None, "events": [_as_dict(e) for e in events]})
        return
    if req is not None:
        echo(req.summary())
    echo_table([[e.id, e.ts[:19] + "Z", e.kind, e.user, e.serial, _request_detail(e)] for e in events],
               ["ID", "TIME", "KIND", "USER", "SERIAL", "DETAIL"])


def _request_detail(e: Event) -> str:
    d = e.data
    if e.kind == "request_created":
        return (f"{format_duration(d.get('ttl') or 0)}: {d.get('reason')} (needs {d.get('required')} of "
                f"{', '.join(d.get('approvers') or [])})")
    if e.kind == "request_used":
        return f"serial {d.get('serial')}, approved by {', '.join(d.get('approvers') or [])}"
    if e.kind in ("request_expired", "request_cancelled"):
        return f"was {d.get('was')}"
    if e.kind in ("request_approved", "request_denied"):
        return f"by {d.get('approver')}" + (f": {d['comment']}" if d.get("comment") else "")
    if e.kind == "issued":
        return f"approved by {', '.join(d.get('approvers') or [])}; {_summary(e)}"
    if e.kind == "request_refused":
        return f"{d.get('action')} by {d.get('actor')}: {d.get('message')}"
    return _summary(e)


def _audit_pub_blob(env: Env, audit_key: str | None) -> bytes:
    path = audit_key or env.open_ca().paths.audit_pub
    try:
        return base64.b64decode(open(path).read().split()[1])
    except (OSError, IndexError, ValueError):
        raise StateError(f"cannot read the audit public key {path}") from None


def _read_checkpoint(env: Env, text: str, audit_key: str | None):
    """A checkpoint checked with ``--audit-key``, else with the audit key of the state directory:
    the current one, or an earlier one it had before it moved into a token."""
    if audit_key:
        return read_checkpoint(text, _audit_pub_blob(env, audit_key))
    first: ChainBroken | None = None
    for blob in known_publics(env.open_ca().paths.root):
        try:
            return read_checkpoint(text, blob)
        except ChainBroken as e:
            first = first or e
    raise first  # type: ignore[misc]  # known_publics() has at least the current key


@audit.command()
@click.option("--checkpoint", "checkpoint_file", type=click.Path(dir_okay=False, exists=True),
              help="Also check the log against this signed checkpoint (catches truncation and rewrites).")
@click.option("--audit-key", type=click.Path(dir_okay=False, exists=True),
              help="The audit public key to check the checkpoint with (default: STATE/audit-key.pub). "
                   "Use a copy kept off the CA host.")
@output_options(csv_ok=False)
@pass_env
def verify(env: Env, checkpoint_file: str | None, audit_key: str | None, fmt: str) -> None:
    """Check the hash chain of the whole log, and the tables beside it; name what is wrong.

    Then rebuild users, user keys, disabled flags, revocations, certificates,
    requests and approvals from the events and compare them with the tables:
    each difference (a missing revocation, an extra key, a flipped flag) is
    named by table and row. Exits 0 when every event is intact, the tables
    agree (and the log matches the checkpoint, if given), 1 otherwise.

    \b
    Example:
      iast-ca audit verify --checkpoint /mnt/offsite/checkpoint-2026-11-29.txt
    """
    cp = None
    if checkpoint_file:
        with open(checkpoint_file) as f:
            cp = _read_checkpoint(env, f.read(), audit_key)
    log = _open(env)
    try:
        total, _ = log.head()
        kwargs = ({"checkpoint_count": cp.count, "checkpoint_head": cp.head, "checkpoint_root": cp.root}
                  if cp else {})
        with progress("verifying", total, show=total > 50_000 and fmt == "text") as update:
            report = log.verify(progress=update, **kwargs)
        differences = log.verify_derived()
    finally:
        log.close()
    if differences:
        if fmt == "json":
            echo_json({"ok": False, "events": report.count, "head": report.head,
                       "differences": [{"table": d.table, "row": d.row, "problem": d.problem} for d in differences]})
        else:
            for d in differences:
                echo(f"TAMPERED: {d}", err=True)
        raise ChainBroken(f"the chain is intact but {len(differences)} table row(s) disagree with it "
                          f"(first: {differences[0]})")
    if fmt == "json":
        echo_json({"ok": True, "events": report.count, "head": report.head, "root": report.root,
                   "checkpoint_events": report.checkpoint_count, "differences": []})
    else:
        msg = f"OK: {report.count} events, chain intact, tables agree, head {report.head}"
        if cp:
            msg += f"; matches the checkpoint of {cp.count} events from {cp.time}"
        echo(msg)


@audit.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the signed checkpoint (keep a copy off the CA host).")
@output_options(csv_ok=False)
@pass_env
def checkpoint(env: Env, output: str, fmt: str) -> None:
    """Verify the log, then write a checkpoint (event count, chain head, Merkle root, time) signed with the audit key.

    The checkpoint is in OpenSSH's SSHSIG format, so 'ssh-keygen -Y verify'
    can check it too (see the README).

    \b
    Example:
      iast-ca audit checkpoint -o /mnt/offsite/checkpoint-$(date +%F).txt
    """
    ca = env.open_ca()
    key = open_audit_signer(ca.paths.root, env.passphrase(), pkcs11_settings(env.config))
    log = _open(env)
    try:
        report = log.verify()
        text = make_checkpoint(key, report.count, report.head, iso(time.time()), report.root)
        write_atomic(output, text, 0o644)
        log.record("checkpoint", {"events": report.count, "head": report.head, "root": report.root, "file": output},
                   user=os_user())
    finally:
        log.close()
        key.close()  # a token session ends with the command
    if fmt == "json":
        echo_json({"events": report.count, "head": report.head, "root": report.root, "file": output})
    else:
        echo(f"checkpoint of {report.count} events (head {report.head}) written to {output}")


@audit.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True,
              help="One JSON object per event per line.")
@click.option("--after", type=click.IntRange(min=0), default=None, help="Only events with an id above this.")
@click.option("--cursor-file", type=click.Path(dir_okay=False),
              help="Read --after from this file, and write the last exported id back to it (atomically) "
                   "once everything is out: a cron job or timer then forwards each event once.")
@pass_env
def export(env: Env, fmt: str, after: int | None, cursor_file: str | None) -> None:
    """Stream events, oldest first, for a SIEM.

    Each line is one event with its hashes, so the receiver can check the
    chain too. To send events to journald/syslog instead of a file, pipe
    the output into 'systemd-cat -t iast-audit' or 'logger -t iast-audit'.

    \b
    Example:
      iast-ca audit export --cursor-file /var/lib/iast-ca/siem.cursor >> /var/log/iast-audit.jsonl
    """
    if after is None and cursor_file:
        try:
            after = int(open(cursor_file).read().strip() or 0)
        except FileNotFoundError:
            after = 0
        except (OSError, ValueError):
            raise UsageError(f"cursor file {cursor_file} does not hold an event id") from None
    log = _open(env)
    last = after or 0
    try:
        for e in log.stream(after or 0):
            echo(json.dumps(_as_dict(e), separators=(",", ":")))  # ASCII: no control reaches a terminal
            last = e.id
        sys.stdout.flush()
    finally:
        log.close()
    if cursor_file:
        write_atomic(cursor_file, f"{last}\n", 0o600)


def _checkpoint(env: Env, path: str, audit_key: str | None):
    with open(path) as f:
        cp = _read_checkpoint(env, f.read(), audit_key)
    if cp.root is None:
        raise UsageError(f"{path} is a v1 checkpoint (no Merkle root): proofs need a checkpoint made since")
    return cp


@audit.command()
@click.option("--event", "event_id", type=click.IntRange(min=1), required=True, help="The event to prove.")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(dir_okay=False, exists=True),
              help="Prove against this signed checkpoint's tree (default: the whole log as it is now).")
@click.option("--audit-key", type=click.Path(dir_okay=False, exists=True),
              help="The audit public key that signed the checkpoint (default: STATE/audit-key.pub).")
@pass_env
def prove(env: Env, event_id: int, checkpoint_file: str | None, audit_key: str | None) -> None:
    """Print an RFC 6962 inclusion proof (JSON) that an event is in the log.

    Against a checkpoint, the proof ends in that checkpoint's signed root,
    so a reviewer can check it with only the audit public key and
    ca/audit/merkle.py (docs/verify-proofs.md).

    \b
    Example:
      iast-ca audit prove --event 42 --checkpoint cp.txt > proof.json
      python3 ca/audit/merkle.py inclusion --checkpoint cp.txt proof.json
    """
    log = _open(env)
    try:
        if checkpoint_file:
            cp = _checkpoint(env, checkpoint_file, audit_key)
            size = cp.count
        else:
            cp, size = None, log.head()[0]
        if event_id > size:
            raise UsageError(f"event {event_id} is not in a tree of {size} events")
        root = merkle.root(log.leaf_hashes(size))
        if cp is not None and root.hex() != cp.root:
            raise ChainBroken(f"the log's first {size} events do not match the checkpoint's root", size)
        path = merkle.inclusion_proof(log.leaf_hashes(size), event_id - 1, size)
        data = log.canonical_of(event_id)
    finally:
        log.close()
    echo_json(merkle.inclusion_to_json(size, event_id - 1, merkle.leaf_hash(data), path, root, leaf_data=data))


@audit.command()
@click.argument("old", type=click.Path(dir_okay=False, exists=True))
@click.argument("new", type=click.Path(dir_okay=False, exists=True))
@click.option("--audit-key", type=click.Path(dir_okay=False, exists=True),
              help="The audit public key that signed both checkpoints (default: STATE/audit-key.pub).")
@pass_env
def consistency(env: Env, old: str, new: str, audit_key: str | None) -> None:
    """Prove (JSON) that checkpoint NEW's log extends checkpoint OLD's: nothing removed, changed or reordered.

    Exits 1 if the log cannot prove it.

    \b
    Example:
      iast-ca audit consistency cp-monday.txt cp-friday.txt > consistency.json
      python3 ca/audit/merkle.py consistency --old-checkpoint cp-monday.txt --new-checkpoint cp-friday.txt consistency.json
    """
    a, b = _checkpoint(env, old, audit_key), _checkpoint(env, new, audit_key)
    if a.count > b.count:
        raise UsageError(f"{old} covers {a.count} events, more than {new} ({b.count}): swap them")
    log = _open(env)
    try:
        proof = merkle.consistency_proof(log.leaf_hashes(b.count), a.count, b.count)
    finally:
        log.close()
    old_root, new_root = bytes.fromhex(a.root), bytes.fromhex(b.root)
    echo_json(merkle.consistency_to_json(a.count, b.count, old_root, new_root, proof))
    if not merkle.verify_consistency(a.count, b.count, old_root, new_root, proof):
        raise ChainBroken(f"the log does not prove that {new} extends {old}")


@audit.command("key-to-token")
@click.option("--pkcs11", "uri", required=True, metavar="URI",
              help="The token key, as an RFC 7512 URI: pkcs11:token=iast;object=audit?module-path=...")
@click.option("--generate", is_flag=True, help="Create the key inside the token (sensitive, never extractable).")
@click.option("--type", "key_type", default="ed25519", show_default=True, type=click.Choice(PKCS11_KEY_TYPES),
              help="Key type for --generate.")
@click.option("--pin-file", type=click.Path(dir_okay=False, exists=True),
              help="The token PIN for this command (else pin-source= in the URI, signing.pkcs11_pin_file, "
                   "or the systemd credential pkcs11-pin).")
@output_options(csv_ok=False)
@pass_env
def key_to_token(env: Env, uri: str, generate: bool, key_type: str, pin_file: str | None, fmt: str) -> None:
    """Move the audit key into a PKCS#11 token: checkpoints are signed there from now on.

    The old public key is kept in the state directory, so checkpoints signed
    before the move still verify ('audit verify --checkpoint' tries it); the
    old key file is deleted once the move is recorded (audit_key_moved).
    Keep a copy of the new STATE/audit-key.pub off the CA host.

    \b
    Example:
      iast-ca audit key-to-token --generate \\
        --pkcs11 'pkcs11:token=iast;object=audit?module-path=/usr/lib/softhsm/libsofthsm2.so' \\
        --pin-file /etc/iast-ca/token.pin
    """
    import dataclasses

    settings = pkcs11_settings(env.config)
    if pin_file:
        settings = dataclasses.replace(settings, pin_file=pin_file)
    parsed = Pkcs11URI.parse(uri)
    backend = (generate_in_token(parsed, key_type, settings=settings, what="audit key") if generate
               else Pkcs11KeyBackend(parsed, settings=settings, what="audit key"))
    with env.open_ca(require_db=True) as ca:
        try:
            data = move_to_token(ca.paths.root, backend,
                                 lambda d: ca.audit.record("audit_key_moved", d, user=os_user()))
        finally:
            backend.close()
    if fmt == "json":
        echo_json(data)
    else:
        echo(f"the audit key is now {data['new_fingerprint']} in {parsed.display()} "
             f"(was {data['old_fingerprint']}; its public key is kept for older checkpoints)")
