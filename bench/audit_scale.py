"""audit-scale: reviewer queries and ``audit verify`` at 10k, 1M and 10M events (quick: 10k and 100k).

The audit database is made directly, fast: the real schema (opened once
through ``AuditLog``), then events appended in batches with ``executemany``,
each row's hash chained from the one before with ``ca.audit.chain_hash``
-- the same function ``verify`` checks -- and the indexes dropped during
the load and rebuilt after it, exactly as the schema defines them. The
largest log is made by extending the previous one (the chain continues).

The events look like a busy CA's: 90 % ``issued`` (full data: principals,
validity, fingerprints, policy hash...), 8 % ``denied``, 2 %
``auth_failed``; 100 users; one event every 3 seconds (10M events = a
year), so a one-hour window holds the same number of events at every
size. The ``certificates`` table is not filled: no query here reads it.

Queries, through ``AuditLog.events(...)`` with its default limit (100), the
median of 25 different parameter values, warm page cache:

* by user, by serial, by a one-hour time window (targets: time at the
  largest size <= 3x the time at 10k);
* by user within a one-hour window (a figure, no target).

``AuditLog.verify()`` walks the whole chain: events per second at each size.

If the largest size would take more than about 5 minutes to generate on
this machine (measured while making the previous one), the largest size
that fits is used instead, and the note says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import sqlite3
import statistics
import time
from hashlib import sha256
from pathlib import Path

from .common import Outcome, Row, cleanup, workdir

NAME = "audit-scale"
USERS = [f"user{i:03d}" for i in range(100)]
BASE_TS = int(dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).timestamp())
SPACING = 3  # seconds between events
GEN_BUDGET_S = 300
BATCH = 50_000
REPEATS = 25


def _ts(i: int) -> str:
    """The ``ts`` of event i (1-based): same text form as ca.audit.iso, strictly increasing."""
    secs = BASE_TS + i * SPACING
    day, rem = divmod(secs, 86400)
    d = _DAYS.get(day)
    if d is None:
        d = _DAYS[day] = dt.datetime.fromtimestamp(day * 86400, dt.timezone.utc).strftime("%Y-%m-%dT")
    return f"{d}{rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}.{(i * 7919) % 1_000_000:06d}Z"


_DAYS: dict[int, str] = {}


def _q(s: str | None) -> str:
    """A JSON string for text without control or non-ASCII characters (all this generator makes)."""
    return "null" if s is None else '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _canonical(row: tuple) -> bytes:
    """ca.audit.canonical(row), about five times faster, for the rows this generator makes.

    Checked against ca.audit.chain_hash on a sample of rows while generating, and
    the whole chain is then walked by AuditLog.verify() at every size.
    """
    i, ts, kind, user, role, serial, key_id, source, data = row
    # ts, kind, user, source, role and key_id here never hold a quote or a backslash.
    return (f'[{i},"{ts}","{kind}","{user}",{"null" if role is None else chr(34) + role + chr(34)},'
            f'{"null" if serial is None else serial},{"null" if key_id is None else chr(34) + key_id + chr(34)},'
            f'"{source}",{_q(data)}]').encode()


class Generator:
    """Appends synthetic events to an audit database, continuing its chain."""

    def __init__(self, path: Path):
        from ca.store import AuditLog

        AuditLog(path).close()  # the real schema, migrations and pragmas
        self.path = path
        self.rng = random.Random(1)
        self.policy = "%064x" % self.rng.getrandbits(256)
        self.ca_fp = "SHA256:" + base64.b64encode(self.rng.getrandbits(256).to_bytes(32, "big")).decode()[:43]
        conn = sqlite3.connect(path)
        row = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        from ca.audit.chain import GENESIS

        self.last_id, self.last_hash = row if row else (0, GENESIS)
        (top,) = conn.execute("SELECT max(serial) FROM events").fetchone()
        self.serial = top or 0
        conn.close()
        self._checked = False

    def _issued(self, i: int, user: str) -> tuple:
        self.serial += 1
        serial = self.serial
        rng = self.rng
        fp = base64.b64encode(rng.getrandbits(256).to_bytes(32, "big")).decode()[:43]
        va = BASE_TS + i * SPACING - 60
        ttl = (3600, 1800, 28800)[i % 3]
        reason = "null" if i % 4 else f'"INC-{i % 100000}"'
        data = (
            '{"auth_methods":["publickey"],"ca_fingerprint":"' + self.ca_fp + '",'
            '"cert_type":"ssh-ed25519-cert-v01@openssh.com","extensions":["permit-port-forwarding","permit-pty"],'
            '"force_command":null,"key_fingerprint":"SHA256:' + fp + '","key_type":"ssh-ed25519","mfa":false,'
            '"operator":null,"policy_sha256":"' + self.policy + '","principals":["' + user + '"],'
            '"reason":' + reason + ',"request_id":null,"source_address":[],"ttl":' + str(ttl) + ','
            '"valid_after":' + str(va) + ',"valid_before":' + str(va + 60 + ttl) + '}'
        )
        return ("issued", user, "dev", serial, f"iast:{user}:dev:{serial}", data)

    def _denied(self, i: int, user: str) -> tuple:
        data = ('{"auth_methods":["publickey"],"code":"policy_denied","key_fingerprint":null,"key_type":null,'
                '"message":"role \'prod-readonly\' requires a reason","mfa":false,"operator":null,'
                '"policy_sha256":"' + self.policy + '","reason":null,"request_id":null,'
                '"requested_role":"prod-readonly","requested_ttl":null}')
        return ("denied", user, "prod-readonly", None, None, data)

    def _auth_failed(self, i: int, user: str) -> tuple:
        return ("auth_failed", user, None, None, None,
                '{"failures":null,"method":"publickey","offered_keys":[],"why":"no accepted key"}')

    def extend(self, n: int) -> float:
        """Append n events; return the seconds it took (load and index rebuild)."""
        from ca.audit.chain import chain_hash, encode_data

        t0 = time.perf_counter()
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=OFF")  # a scratch database: no journal while loading it
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='events' "
                               "AND sql IS NOT NULL").fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        prev, i, end = self.last_hash, self.last_id, self.last_id + n
        insert = "INSERT INTO events (id, ts, kind, username, role, serial, key_id, source, data, prev_hash, hash) " \
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        rng = self.rng
        while i < end:
            rows = []
            for i in range(i + 1, min(end, i + BATCH) + 1):
                user = USERS[rng.randrange(100)]
                roll = i % 50
                kind, user, role, serial, key_id, data = (
                    self._issued(i, user) if roll < 45 else self._denied(i, user) if roll < 49
                    else self._auth_failed(i, user))
                if not self._checked:  # the hand-made JSON is what encode_data would store
                    assert encode_data(json.loads(data)) == data, data
                row = (i, _ts(i), kind, user, role, serial, key_id, "10.0.%d.%d" % (i % 7, i % 250), data)
                h = sha256(b"iast-audit-v1\x00" + prev.encode() + b"\x00" + _canonical(row)).hexdigest()
                if i % 997 == 1 or not self._checked:  # the shortcut must be chain_hash, exactly
                    assert h == chain_hash(prev, row), row
                    self._checked = True
                rows.append(row + (prev, h))
                prev = h
            conn.execute("BEGIN")
            conn.executemany(insert, rows)
            conn.execute("COMMIT")
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("PRAGMA journal_mode=WAL")  # as the service leaves it
        conn.close()
        self.last_id, self.last_hash = end, prev
        return time.perf_counter() - t0


def _median_ms(fn, params) -> tuple[float, int]:
    fn(params[0])  # warm
    times, rows = [], 0
    for p in params:
        t0 = time.perf_counter()
        rows = len(fn(p))
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), rows


def measure(path: Path, n: int) -> dict:
    from ca.audit.chain import iso
    from ca.store import AuditLog

    log = AuditLog(path)
    try:
        rng = random.Random(n)
        users = [USERS[rng.randrange(100)] for _ in range(REPEATS)]
        (top_serial,) = log.conn.execute("SELECT max(serial) FROM events").fetchone()
        serials = [rng.randrange(1, top_serial + 1) for _ in range(REPEATS)]
        windows = []
        for _ in range(REPEATS):
            start = BASE_TS + rng.randrange(1, max(2, n * SPACING - 3600))
            windows.append((iso(start), iso(start + 3600)))
        q = {}
        q["by user"] = _median_ms(lambda u: log.events(user=u), users)
        q["by serial"] = _median_ms(lambda s: log.events(serial=s), serials)
        q["by 1 h window"] = _median_ms(lambda w: log.events(since=w[0], until=w[1]), windows)
        q["by user in 1 h window"] = _median_ms(
            lambda uw: log.events(user=uw[0], since=uw[1][0], until=uw[1][1]), list(zip(users, windows)))
        t0 = time.perf_counter()
        report = log.verify()
        verify_s = time.perf_counter() - t0
        assert report.count == n, (report.count, n)
        # The derived tables (docs/security.md "Derived tables are checked against the chain"): the
        # generator writes events only, so the certificate rows the issued events imply are added
        # here, then verify_derived replays every event against the tables.
        log.conn.execute("INSERT OR IGNORE INTO certificates SELECT serial, key_id, username, role, "
                         "json_extract(data, '$.key_fingerprint'), json_extract(data, '$.ca_fingerprint'), "
                         "json_extract(data, '$.valid_after'), json_extract(data, '$.valid_before'), id "
                         "FROM events WHERE kind = 'issued'")
        t0 = time.perf_counter()
        differences = log.verify_derived()
        derived_s = time.perf_counter() - t0
        assert differences == [], differences[:3]
    finally:
        log.close()
    return {
        "events": n,
        "query_ms": {k: v[0] for k, v in q.items()},
        "query_rows": {k: v[1] for k, v in q.items()},
        "verify_s": verify_s,
        "verify_events_per_s": n / verify_s,
        "derived_s": derived_s,
        "verify_with_derived_events_per_s": n / (verify_s + derived_s),
        "db_bytes": path.stat().st_size,
    }


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def run(quick: bool, profile: bool = False, results_dir: Path | None = None) -> Outcome:
    sizes = [10_000, 100_000] if quick else [10_000, 1_000_000, 10_000_000]
    out = Outcome()
    work = workdir(NAME)
    try:
        per: dict[int, dict] = {}
        # The smallest log on its own; the others grow one database.
        small = Generator(work / "small.db")
        gen_s = small.extend(sizes[0] - small.last_id)
        per[sizes[0]] = measure(small.path, sizes[0]) | {"generate_s": gen_s}
        cleanup_file(small.path)
        big = Generator(work / "big.db")
        rate = None
        for n in sizes[1:]:
            want = n
            if rate is not None:
                projected = (n - big.last_id) / rate
                if projected > GEN_BUDGET_S:
                    fit = big.last_id + int(rate * GEN_BUDGET_S)
                    fit = max(big.last_id, (fit // 1_000_000) * 1_000_000 or fit)
                    out.notes.append(
                        f"{_label(n)} events would take ~{projected / 60:.0f} min to generate here "
                        f"({rate:,.0f} events/s); used {_label(fit)} instead")
                    n = fit
            if n <= big.last_id:
                break
            added = n - big.last_id
            t = big.extend(added)
            rate = added / t
            per[n] = measure(big.path, n) | {"generate_s": t, "generate_events_per_s": rate, "requested": want}
        out.figures["sizes"] = {str(k): v for k, v in per.items()}
        first, last = sizes[0], max(per)
        for q in ("by user", "by serial", "by 1 h window", "by user in 1 h window"):
            target = ("<=", 3.0) if q != "by user in 1 h window" else None
            out.rows.append(Row(f"query {q}, {_label(last)} vs {_label(first)}", per[last]["query_ms"][q], "ms",
                                per[first]["query_ms"][q], f"at {_label(first)}", target))
        for n in sorted(per):
            out.rows.append(Row(f"verify, {_label(n)} events", per[n]["verify_events_per_s"], "events/s",
                                note=f"{per[n]['verify_s']:.1f} s"))
            out.rows.append(Row(f"verify + derived tables, {_label(n)} events",
                                per[n]["verify_with_derived_events_per_s"], "events/s",
                                note=f"{per[n]['verify_s'] + per[n]['derived_s']:.1f} s"))
        out.notes.append("generated " + ", ".join(
            f"{_label(n)} in {per[n]['generate_s']:.0f} s ({per[n]['db_bytes'] / 2**20:,.0f} MiB)" for n in sorted(per)))
        out.notes.append("verify: " + ", ".join(f"{_label(n)} in {per[n]['verify_s']:.1f} s" for n in sorted(per)))
    finally:
        cleanup(work)
    return out


def cleanup_file(path: Path) -> None:
    for p in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
        p.unlink(missing_ok=True)
