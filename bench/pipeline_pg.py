"""pipeline-pg: the in-process pipeline on PostgreSQL next to SQLite, in the same run.

``Authority.issue`` (decide -> sign -> durable audit commit), one thread, on a
fresh CA whose database is first STATE/ca.db (SQLite, WAL, ``synchronous=FULL``)
and then a PostgreSQL database on a server started for the run (fsync on,
``synchronous_commit=on``, Unix socket; see bench/pgserver.py).

Figures: certificates per second on each, the CA process's CPU per certificate
on each, and (PostgreSQL) the server's CPU per certificate. Target (from the
replicas issue): issuing through PostgreSQL costs at most 1.5x the CA's CPU
per certificate of SQLite.
"""

from __future__ import annotations

import time

from .common import Outcome, Row, cleanup, make_ca, workdir
from .pgserver import BenchPostgres

NAME = "pipeline-pg"
POOL = 256


def _measure(cfg, seconds: float, pubs: list[str]) -> dict:
    from ca.app import open_authority
    from ca.models import Identity, SignRequest

    identity = Identity(user="alice", auth_methods=("publickey",), source_address="127.0.0.1")
    requests = [SignRequest(public_key=p, role="dev") for p in pubs]
    authority = open_authority(cfg)
    try:
        for i in range(30):
            authority.issue(identity, requests[i % POOL], allow_unenrolled=True)
        n, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(10):
                authority.issue(identity, requests[n % POOL], allow_unenrolled=True)
                n += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        authority.close()
    return {"per_s": n / wall, "cpu_us_per_cert": cpu / n * 1e6, "issued": n}


def run(quick: bool, profile: bool = False, results_dir=None) -> Outcome:
    import asyncssh

    seconds = 1.5 if quick else 8.0
    out = Outcome()
    work = workdir(NAME)
    try:
        pubs = [asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
                for _ in range(POOL)]
        sqlite = _measure(make_ca(work / "sqlite", n_users=0).cfg, seconds, pubs)
        with BenchPostgres() as pg:
            ca = make_ca(work / "pg", n_users=0, database=pg.create_database())
            server0 = pg.server_cpu_seconds()
            postgres = _measure(ca.cfg, seconds, pubs)
            postgres["server_cpu_us_per_cert"] = ((pg.server_cpu_seconds() - server0) / (postgres["issued"] + 30)
                                                  * 1e6)
        out.figures.update({"sqlite": sqlite, "postgresql": postgres})
        out.rows += [
            Row("CA CPU per cert, PostgreSQL vs SQLite", postgres["cpu_us_per_cert"], "us",
                sqlite["cpu_us_per_cert"], "SQLite", ("<=", 1.5)),
            Row("certs/s on PostgreSQL vs SQLite", postgres["per_s"], "certs/s", sqlite["per_s"], "SQLite"),
        ]
        out.notes.append(
            f"SQLite {sqlite['per_s']:.0f} certs/s ({sqlite['cpu_us_per_cert']:.0f} us CPU each); PostgreSQL "
            f"{postgres['per_s']:.0f} certs/s ({postgres['cpu_us_per_cert']:.0f} us CPU in the CA, "
            f"{postgres['server_cpu_us_per_cert']:.0f} us in the server)")
    finally:
        cleanup(work)
    return out
