"""replicas: the service on PostgreSQL next to SQLite, and one replica vs two, in the same run.

One CA (the same keys and enrolled users) served three ways, each client
keeping one authenticated connection and asking for certificates in sequence
(as login-kept): ``iast-ca serve`` on STATE/ca.db (SQLite); the same CA copied
into PostgreSQL (``iast-ca db copy``) and served by one replica; then by two
replicas at once, each under the same load. The service's CPU per certificate
is each ``serve`` process's own (the database server's is reported apart).

Targets (the replicas issue): through PostgreSQL the service costs at most
1.5x its CPU per certificate on SQLite. Two replicas must keep the chain
correct at whatever concurrency this machine can generate: checked after the
run (``audit verify``, serials unique); their throughput here is bounded by
the two cores that the clients share with them.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .common import Outcome, Row, cleanup, iast_server, make_ca, workdir
from .load import run_load
from .pgserver import BenchPostgres

NAME = "replicas"


def run(quick: bool, profile: bool = False, results_dir: Path | None = None) -> Outcome:
    from ca.store import open_store
    from ca.store.copy import copy_sqlite_to_postgres

    duration = 2.0 if quick else 8.0
    clients = 2 if quick else 4
    out = Outcome()
    work = workdir(NAME)
    servers = []
    try:
        ca = make_ca(work, n_users=clients)
        with BenchPostgres() as pg:
            url = pg.create_database()
            copy_sqlite_to_postgres(ca.cfg.state_dir / "ca.db", url)
            pg_config = work / "ca-pg.toml"
            pg_config.write_text(ca.config_path.read_text().replace("\n", f'\ndatabase = "{url}"\n', 1))

            def load(server):
                return run_load(server, server.port, ca.users, ca.keys, ca.host_key_line(), clients=clients,
                                mode="kept", duration=duration)

            sqlite_server = iast_server(ca, work / "sqlite.log")
            servers.append(sqlite_server)
            on_sqlite = load(sqlite_server)
            sqlite_server.stop()

            ca.config_path = pg_config  # the same CA, its database in PostgreSQL
            a = iast_server(ca, work / "pg-a.log")
            servers.append(a)
            cpu0 = pg.server_cpu_seconds()
            one = load(a)
            db_cpu_one = pg.server_cpu_seconds() - cpu0
            b = iast_server(ca, work / "pg-b.log")
            servers.append(b)
            two: dict[str, dict] = {}
            threads = [threading.Thread(target=lambda n, s: two.__setitem__(n, load(s)), args=(n, s))
                       for n, s in (("a", a), ("b", b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for s in (a, b):
                s.stop()
            log = open_store(url)
            try:
                report = log.verify()
                serials = [e.serial for e in log.events(kind="issued", limit=None)]
            finally:
                log.close()
        assert len(set(serials)) == len(serials), "two replicas issued one serial twice"

        def cpu_ms(r: dict) -> float:
            return r["server_cpu_s"] * 1000 / r["certs"]

        two_certs = sum(r["certs"] for r in two.values())
        two_cpu = sum(r["server_cpu_s"] for r in two.values()) * 1000 / two_certs
        out.figures.update({
            "sqlite": on_sqlite, "postgresql_one": one, "postgresql_two": two,
            "db_server_cpu_ms_per_cert_one": db_cpu_one * 1000 / one["certs"],
            "chain_events": report.count, "issued_serials_unique": True,
        })
        out.rows += [
            Row(f"service CPU ms/cert, PostgreSQL vs SQLite ({clients} clients)", cpu_ms(one), "ms",
                cpu_ms(on_sqlite), "SQLite", ("<=", 1.5)),
            Row("certs/s, PostgreSQL vs SQLite", one["certs_per_s"], "/s", on_sqlite["certs_per_s"], "SQLite"),
            Row("service CPU ms/cert per replica, 2 replicas vs 1", two_cpu, "ms", cpu_ms(one), "1 replica"),
            Row("certs/s, 2 replicas vs 1", sum(r["certs_per_s"] for r in two.values()), "/s", one["certs_per_s"],
                "1 replica"),
        ]
        out.notes.append(f"after the run: audit verify passed over {report.count} events; "
                         f"{len(serials)} serials, all unique; the database server spent "
                         f"{out.figures['db_server_cpu_ms_per_cert_one']:.2f} ms CPU per certificate")
        errors = sum(r["errors"] for r in (on_sqlite, one, *two.values()))
        if errors:
            out.notes.append(f"{errors} failed requests")
    finally:
        for s in servers:
            s.stop()
        cleanup(work)
    return out
