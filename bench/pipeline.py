"""pipeline: in-process decide -> sign -> durable audit commit, one thread, certificates per second.

``Authority.issue`` on a fresh CA (the bench policy's dev role), each request
a different Ed25519 public key line from a pool made beforehand. Every
certificate is committed to the audit log (WAL, ``synchronous=FULL``, one
fsync per certificate) before the next starts.

Baselines, measured in the same run with the same fields:

* A, the floor: bare asyncssh, key line in, certificate line out
  (``import_public_key`` + ``generate_user_certificate`` + ``export_certificate``);
* B, a shell-script CA: one ``ssh-keygen -s`` process per certificate.

Targets: >= 40 % of A, >= 10x B; and with 8 requests at a time through the
service's issue path (ca.service.executors: one issue thread, group commit,
every answer after its durable commit), >= 50 % of A.

Also measured (figures only): the cost of each stage alone, and the
pipeline with ``synchronous=NORMAL`` set on the authority's connection
(not durable: a diagnostic of what the fsync costs, never a configuration).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .common import (
    CERT_FIELDS,
    CLOCK_SKEW,
    TTL,
    Outcome,
    Row,
    cleanup,
    make_ca,
    ssh_keygen,
    workdir,
)

NAME = "pipeline"
POOL = 256
CONCURRENCY = 8


def rate(fn: Callable[[int], object], seconds: float, warmup: int = 50) -> tuple[float, int]:
    """Call fn(0), fn(1), ... for ``seconds`` after ``warmup`` calls; return (calls per second, calls)."""
    for i in range(warmup):
        fn(i)
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(20):
            fn(n)
            n += 1
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0), n


def run(quick: bool, profile: bool = False, results_dir: Path | None = None) -> Outcome:
    import asyncssh

    from ca.app import open_authority
    from ca.issuance.signer import make_key_id
    from ca.models import Identity, SignRequest
    from ca.sshcert.userkey import parse_user_key

    seconds = 1.5 if quick else 8.0
    keygen_n = 30 if quick else 150
    out = Outcome()
    work = workdir(NAME)
    try:
        ca = make_ca(work, n_users=0)
        pubs = [asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
                for _ in range(POOL)]
        identity = Identity(user="alice", auth_methods=("publickey",), source_address="127.0.0.1")
        requests = [SignRequest(public_key=p, role="dev") for p in pubs]
        authority = open_authority(ca.cfg)
        try:
            # an offline authority, for a name nobody enrolled (docs/security.md "Revocations stick")
            issue = lambda i: authority.issue(identity, requests[i % POOL], allow_unenrolled=True)  # noqa: E731
            ours, n_ours = rate(issue, seconds)
            grouped, per_commit = _concurrent(authority, identity, requests, seconds, CONCURRENCY)

            # Baseline A: the same fields through asyncssh alone.
            ca_key = asyncssh.read_private_key(ca.ca_key_path())

            def bare(i: int) -> str:
                key = asyncssh.import_public_key(pubs[i % POOL])
                now = int(time.time())
                cert = ca_key.generate_user_certificate(
                    key, f"iast:alice:dev:{i + 1}", serial=i + 1, principals=["alice"],
                    valid_after=now - CLOCK_SKEW, valid_before=now + TTL, sig_alg=ca_key.get_algorithm(),
                    comment=f"iast:alice:dev:{i + 1}", **CERT_FIELDS)
                return cert.export_certificate("openssh").decode("ascii").strip()

            floor, _ = rate(bare, seconds)

            # Baseline B: ssh-keygen -s, one process per certificate.
            keygen = ssh_keygen()
            kdir = work / "keygen"
            kdir.mkdir()

            def shell_ca(i: int) -> None:
                pub = kdir / f"k{i}.pub"
                pub.write_text(pubs[i % POOL])
                subprocess.run([keygen, "-q", "-s", str(ca.ca_key_path()), "-I", f"iast:alice:dev:{i + 1}",
                                "-n", "alice", "-z", str(i + 1), "-V", "-1m:+1h", "-O", "clear",
                                "-O", "permit-pty", "-O", "permit-port-forwarding", str(pub)],
                               check=True, stdin=subprocess.DEVNULL)
                (kdir / f"k{i}-cert.pub").read_text()

            for i in range(3):
                shell_ca(10_000_000 + i)
            t0 = time.perf_counter()
            for i in range(keygen_n):
                shell_ca(i)
            shell = keygen_n / (time.perf_counter() - t0)

            # Stages alone (figures, not targets): what one certificate costs where.
            stages = {}
            decision = authority.policy.decide(identity, requests[0], int(time.time()), authority.clock_skew)
            user_keys = [parse_user_key(p) for p in pubs[:POOL]]
            n = 2000 if quick else 10000
            stages["parse_user_key_us"] = _per_call(lambda i: parse_user_key(pubs[i % POOL]), n)
            stages["policy_decide_us"] = _per_call(
                lambda i: authority.policy.decide(identity, requests[i % POOL], int(time.time()), 60), n)
            stages["signer_sign_incl_check_us"] = _per_call(
                lambda i: authority.signer.sign(decision, user_keys[i % POOL], i + 1, make_key_id("alice", "dev", i + 1)),
                n // 2)
            stages["signer_check_only_us"] = stages["signer_sign_incl_check_us"] - 1e6 / floor
            stages["bare_asyncssh_us"] = 1e6 / floor

            def commit_only(i: int) -> None:
                with authority.audit.transaction() as tx:
                    serial = tx.next_serial()
                    eid = tx.append("issued", {"principals": ["alice"], "n": i}, user="alice", role="dev",
                                    serial=serial, key_id=f"iast:alice:dev:{serial}", source="127.0.0.1")
                    tx.add_certificate(serial=serial, key_id=f"iast:alice:dev:{serial}", user="alice", role="dev",
                                       key_fingerprint="SHA256:x", ca_fingerprint="SHA256:y", valid_after=0,
                                       valid_before=1, event_id=eid)

            stages["audit_commit_durable_us"] = _per_call(commit_only, n // 4)
            authority.audit.conn.execute("PRAGMA synchronous=NORMAL")
            stages["audit_commit_sync_normal_us"] = _per_call(commit_only, n // 4)
            nosync, _ = rate(issue, seconds / 2)
            authority.audit.conn.execute("PRAGMA synchronous=FULL")
            stages["issue_total_us"] = 1e6 / ours
            out.figures["wal_bytes_per_issue"] = _wal_bytes_per_issue(authority, issue, 200)

            if profile and results_dir is not None:
                out.figures["profile"] = _profile(issue, results_dir, 3000 if not quick else 500)
        finally:
            authority.close()

        out.figures.update({
            "issue_per_s": ours, "issued": n_ours, "bare_asyncssh_per_s": floor, "ssh_keygen_per_s": shell,
            "issue_sync_normal_per_s_diagnostic": nosync, "stages_us": stages,
            "grouped_issue_per_s": grouped, "grouped_concurrency": CONCURRENCY, "certs_per_commit": per_commit,
        })
        out.rows += [
            Row("certs/s vs bare asyncssh (A)", ours, "certs/s", floor, "bare asyncssh", (">=", 0.40)),
            Row(f"certs/s, {CONCURRENCY} concurrent, group commit, vs A", grouped, "certs/s", floor, "bare asyncssh",
                (">=", 0.50)),
            Row("certs/s vs ssh-keygen per cert (B)", ours, "certs/s", shell, "ssh-keygen -s", (">=", 10)),
        ]
        out.notes.append(
            f"stage costs (us): parse key {stages['parse_user_key_us']:.0f}, decide {stages['policy_decide_us']:.0f}, "
            f"sign+check {stages['signer_sign_incl_check_us']:.0f} (bare sign {stages['bare_asyncssh_us']:.0f}), "
            f"audit commit {stages['audit_commit_durable_us']:.0f} (no fsync: "
            f"{stages['audit_commit_sync_normal_us']:.0f}); whole issue {stages['issue_total_us']:.0f}; "
            f"{out.figures['wal_bytes_per_issue'] / 1024:.0f} KiB of WAL written per certificate; "
            f"{CONCURRENCY} concurrent through the service's group commit: {per_commit:.1f} certificates per commit")
    finally:
        cleanup(work)
    return out


def _concurrent(authority, identity, requests, seconds: float, concurrency: int) -> tuple[float, float]:
    """``concurrency`` requests at a time through the service's issue path (ca.service.executors:
    one issue thread, group commit, each answer after its durable commit); (certs/s, certs per commit)."""
    import asyncio
    import functools

    from ca.service.executors import Executors

    issue = functools.partial(authority.issue, allow_unenrolled=True)

    async def main() -> tuple[float, float]:
        ex = Executors()
        done = 0
        try:
            for i in range(20):
                await ex.on_issue_committed(authority.audit, issue, identity, requests[i % POOL])
            ex.groups = ex.grouped = 0
            t0 = time.perf_counter()
            end = t0 + seconds

            async def client(k: int) -> None:
                nonlocal done
                i = k
                while time.perf_counter() < end:
                    await ex.on_issue_committed(authority.audit, issue, identity, requests[i % POOL])
                    done += 1
                    i += concurrency

            await asyncio.gather(*(client(k) for k in range(concurrency)))
            return done / (time.perf_counter() - t0), ex.grouped / max(1, ex.groups)
        finally:
            ex.close()

    return asyncio.run(main())


def _wal_bytes_per_issue(authority, issue: Callable[[int], object], n: int) -> float:
    """How many bytes one durable issue appends to the WAL (each commit writes every page it touched)."""
    conn = authority.audit.conn
    wal = Path(str(authority.audit.path) + "-wal")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = wal.stat().st_size if wal.exists() else 0
        for i in range(n):
            issue(i)
        return (wal.stat().st_size - before) / n
    finally:
        conn.execute("PRAGMA wal_autocheckpoint=1000")


def _per_call(fn: Callable[[int], object], n: int) -> float:
    """Microseconds per call of fn(i), after a short warm-up."""
    for i in range(min(50, n)):
        fn(i)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def _profile(issue: Callable[[int], object], results_dir: Path, n: int) -> dict:
    """cProfile over n issues: the functions with the most time of their own, and some inclusive totals."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        issue(i)
    prof.disable()
    path = results_dir / "profile-pipeline.pstats"
    prof.dump_stats(str(path))
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # tottime over all functions
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    top_self = [{"function": f"{Path(f[0]).name}:{f[1]}:{f[2]}", "self_pct": 100 * v[2] / total,
                 "us_per_issue": v[2] / n * 1e6} for f, v in rows]
    inclusive = {}
    for f, v in st.stats.items():
        name = f"{Path(f[0]).name}:{f[2]}"
        for want in ("authority.py:issue", "signer.py:sign", "signer.py:_check", "audit.py:transaction",
                     "audit.py:append", "policy.py:decide", "keys.py:parse_user_key", "audit.py:next_serial",
                     "certificates.py:verify_signature", "certificates.py:parse_certificate",
                     "audit.py:chain_hash", "audit.py:__init__"):
            if name == want:
                inclusive[want] = v[3] / n * 1e6
    commit = [v for f, v in st.stats.items() if f[2] == "<method 'execute' of 'sqlite3.Connection' objects>"]
    if commit:
        inclusive["sqlite execute (all statements)"] = commit[0][3] / n * 1e6
    return {"file": str(path), "issues": n, "top_self": top_self, "inclusive_us_per_issue": inclusive}
