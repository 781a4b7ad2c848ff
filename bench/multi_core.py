"""multi-core: ``iast-ca serve --workers 2`` against ``--workers 1``, 8 clients, one new connection per certificate.

The service as N processes sharing the port (SO_REUSEPORT) and one audit
chain. Figure: throughput with 2 workers / throughput with 1 (target >= 1.6x),
server CPU per certificate (summed over the worker processes), and then
``iast-ca audit verify`` on the resulting log, which must pass: two
writers must still make one unbroken chain.

Skipped, with a note, while ``iast-ca serve --help`` does not list
``--workers``.

On a 2-core machine the clients need CPU too (about as much per
certificate as the service): the ratio is bounded by the cores left for
the service, reported as ``cpus`` and ``client_cpu_ms_per_cert``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .common import (
    IAST_CA,
    Outcome,
    Row,
    ServerProcess,
    Skip,
    cleanup,
    descendants,
    free_port,
    iast_server,
    make_ca,
    workdir,
)
from .load import run_load

NAME = "multi-core"
CLIENTS = 8


def _per_worker(server: ServerProcess, r: dict) -> list[float]:
    """CPU ms per certificate of each worker: its own CPU over the load window (``process_cpu_s``)
    over the certificates its log says it issued (warm-ups included: 2 per client, a few per cent)."""
    issued: dict[int, int] = {}
    for rec in server.records():
        if rec.get("msg") == "issued" and rec.get("worker") is not None:
            issued[rec["worker"]] = issued.get(rec["worker"], 0) + 1
    # The workers are the spawned processes (not multiprocessing's resource tracker), started in
    # order, so their pids ascend with their index.
    pids = sorted(int(p) for p in r["process_cpu_s"] if _is_worker(int(p)))
    if len(pids) != len(issued) or not issued:
        return []
    return [r["process_cpu_s"][str(pid)] * 1000 / max(1, issued.get(i, 0)) for i, pid in enumerate(pids)]


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def workers_supported() -> bool:
    r = subprocess.run([IAST_CA, "serve", "--help"], capture_output=True, text=True, timeout=60)
    return "--workers" in r.stdout


def run(quick: bool, profile: bool = False, results_dir: Path | None = None) -> Outcome:
    if not workers_supported():
        raise Skip("not implemented: 'iast-ca serve --help' does not list --workers")
    duration = 3.0 if quick else 10.0
    out = Outcome()
    work = workdir(NAME)
    try:
        ca = make_ca(work, n_users=CLIENTS)
        res = {}
        for n in (1, 2):
            # A fixed port: each worker binds it (SO_REUSEPORT), so port 0 would not name one port.
            port = free_port()
            server = iast_server(ca, work / f"iast-w{n}.log", extra=["--workers", str(n)], port=port)
            try:
                time.sleep(0.5)  # let every worker bind before the load starts
                r = run_load(server, port, ca.users, ca.keys, ca.host_key_line(), clients=CLIENTS, mode="fresh",
                             duration=duration)
                r["processes"] = 1 + len(descendants(server.proc.pid))
            finally:
                server.stop()
            res[n] = r
            if r["errors"]:
                out.notes.append(f"{n} worker(s): {r['errors']} failed requests, e.g. {r['first_errors'][:1]}")
        # Pinned: the load generator (this process and its client processes) on CPU 0, the service
        # (all its workers) on CPU 1, so neither takes the other's core. With one core for the
        # service, a second worker can only add overhead: this prices it, per worker.
        pinned = {}
        if len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset"):
            before = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {0})
            try:
                for n in (1, 2):
                    port = free_port()
                    argv = ["taskset", "-c", "1", IAST_CA, "--config", str(ca.config_path), "serve",
                            "--listen", f"127.0.0.1:{port}", "--workers", str(n)]
                    server = ServerProcess(argv, work / f"iast-pinned-w{n}.log").start()
                    try:
                        time.sleep(0.5)
                        r = run_load(server, port, ca.users, ca.keys, ca.host_key_line(), clients=CLIENTS,
                                     mode="fresh", duration=duration)
                        r["per_worker_cpu_ms_per_cert"] = _per_worker(server, r)
                    finally:
                        server.stop()
                    pinned[n] = r
            finally:
                os.sched_setaffinity(0, before)
        v = subprocess.run([IAST_CA, "--config", str(ca.config_path), "audit", "verify", "--json"],
                           capture_output=True, text=True, timeout=600)
        verified = v.returncode == 0
        try:
            events = json.loads(v.stdout).get("events")
        except ValueError:
            events = None
        out.figures.update({"runs": {str(k): x for k, x in res.items()}, "audit_verify_ok": verified,
                            "pinned_runs": {str(k): x for k, x in pinned.items()},
                            "audit_verify_events": events, "audit_verify_output": (v.stdout + v.stderr)[-500:]})
        out.rows += [
            Row("certs/s, 2 workers vs 1, 8 clients", res[2]["certs_per_s"], "/s", res[1]["certs_per_s"],
                "--workers 1", (">=", 1.6)),
            Row("server CPU ms/cert, 2 workers vs 1", res[2]["server_cpu_ms_per_cert"], "ms",
                res[1]["server_cpu_ms_per_cert"], "--workers 1"),
            *([Row("pinned (clients CPU 0, service CPU 1): certs/s, 2 workers vs 1", pinned[2]["certs_per_s"],
                   "/s", pinned[1]["certs_per_s"], "--workers 1, pinned"),
               Row("pinned: service CPU ms/cert, 2 workers vs 1", pinned[2]["server_cpu_ms_per_cert"], "ms",
                   pinned[1]["server_cpu_ms_per_cert"], "--workers 1, pinned")] if pinned else []),
            Row("audit verify after the 2-worker run (1 = passed)", 1.0 if verified else 0.0, "", 1.0, "must pass",
                (">=", 1.0)),
        ]
        # The most a second worker could give here: the clients share the same cores.
        r1 = res[1]
        per_cert = (r1["server_cpu_ms_per_cert"] + r1["client_cpu_ms_per_cert"]) / 1000
        ceiling = (r1["cpus"] / per_cert) / r1["certs_per_s"] if per_cert and r1["certs_per_s"] else None
        out.figures["ratio_ceiling_on_this_machine"] = ceiling
        if ceiling is not None:
            out.notes.append(
                f"ceiling on this machine: {r1['cpus']} CPUs / ({r1['server_cpu_ms_per_cert']:.1f} ms service + "
                f"{r1['client_cpu_ms_per_cert']:.1f} ms client CPU per cert) = "
                f"{r1['cpus'] / per_cert:.0f} certs/s = {ceiling:.2f}x the 1-worker figure, before any overhead; "
                "the 1.6x target needs the clients on other machines (or more cores)")
        if pinned:
            p1, p2 = pinned[1], pinned[2]
            out.notes.append(
                f"pinned, service on one core: {p1['certs_per_s']:.0f} certs/s with 1 worker, "
                f"{p2['certs_per_s']:.0f} with 2 (CPU ms/cert per worker: "
                f"{', '.join(f'{x:.1f}' for x in p2['per_worker_cpu_ms_per_cert'])}); the service's ceiling "
                f"here is one core: 1000 / {p1['server_cpu_ms_per_cert']:.1f} ms = "
                f"{1000 / p1['server_cpu_ms_per_cert']:.0f} certs/s, whatever the number of workers")
        else:
            out.notes.append("pinned runs skipped: fewer than 2 CPUs or no taskset")
        busy = max(x["foreign_cpu_util"] for x in res.values())
        if busy > 0.2:
            out.notes.append(f"other processes used up to {busy:.1f} CPUs meanwhile")
        if not verified:
            out.notes.append(f"audit verify FAILED: {(v.stdout + v.stderr).strip()[-300:]}")
    finally:
        cleanup(work)
    return out
