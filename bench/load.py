"""Load from separate client processes (asyncssh clients), and the figures taken around it.

Each client is its own process (multiprocessing, forkserver: the clients
fork from a server that has asyncssh imported already, so 32 of them start
in well under a second). Every client first makes ``warmup`` requests,
reports ready, and waits; the parent reads the server's CPU counters and
lets them all go at once. Each client then requests certificates until
the shared deadline and reports its latencies and its own CPU time.

Modes:

* ``fresh``: one new SSH connection per certificate (key exchange,
  enrolled-key authentication, one ``sign`` channel, close);
* ``kept``: one authenticated connection, one new channel per ``sign``.

The server's CPU per certificate is (utime+stime after - before) / certificates,
over the server process and its children.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

import asyncssh

from .common import ServerProcess, cpu_seconds, descendants, median, percentile, system_busy_seconds

KEY_POOL = 32  # distinct public keys each client cycles through


@dataclass(frozen=True)
class ClientSpec:
    index: int
    port: int
    user: str
    key_path: str
    host_key_line: str
    mode: str  # "fresh" or "kept"
    warmup: int
    duration: float
    command: str = "sign"


def _pool(n: int) -> list[str]:
    return [asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode() for _ in range(n)]


async def _client(spec: ClientSpec, go, start_at) -> dict[str, Any]:
    client_key = asyncssh.read_private_key(spec.key_path)
    host_key = asyncssh.import_public_key(spec.host_key_line)
    pubs = _pool(KEY_POOL)
    opts = dict(username=spec.user, client_keys=[client_key], known_hosts=([host_key], [], []), agent_path=None,
                config=None, preferred_auth="publickey", password=None)
    errors: list[str] = []

    async def sign(conn, pub: str) -> None:
        r = await conn.run(spec.command, input=pub, check=False)
        if r.exit_status != 0 or not str(r.stdout).startswith("ssh-ed25519-cert-v01@openssh.com "):
            raise RuntimeError(f"exit {r.exit_status}: {str(r.stderr).strip()[:200]}")

    async def one_fresh(pub: str) -> float:
        t0 = time.perf_counter()
        conn = await asyncssh.connect("127.0.0.1", spec.port, **opts)
        try:
            await sign(conn, pub)
            return time.perf_counter() - t0
        finally:
            conn.close()
            await conn.wait_closed()

    kept = None
    if spec.mode == "kept":
        kept = await asyncssh.connect("127.0.0.1", spec.port, **opts)

    async def one(i: int) -> float:
        pub = pubs[i % len(pubs)]
        if kept is None:
            return await one_fresh(pub)
        t0 = time.perf_counter()
        await sign(kept, pub)
        return time.perf_counter() - t0

    for i in range(spec.warmup):
        await one(i)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, go.wait)
    deadline = start_at.value + spec.duration
    latencies: list[float] = []
    cpu0 = time.process_time()
    i = 0
    while time.monotonic() < deadline:
        try:
            latencies.append(await one(i))
        except (OSError, asyncssh.Error, RuntimeError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            if len(errors) > 20:
                break
        i += 1
    t_end = time.monotonic()
    cpu = time.process_time() - cpu0
    if kept is not None:
        kept.close()
        await kept.wait_closed()
    return {"latencies": latencies, "errors": errors, "t_end": t_end, "cpu": cpu}


def _client_main(spec: ClientSpec, go, start_at, out) -> None:
    """Runs in a client process; puts ("ready", i) once warmed up, then ("done", i, result)."""

    class _Go:
        """``go``, announcing readiness to the parent first."""

        def wait(self) -> None:
            out.put(("ready", spec.index, None))
            go.wait()

    try:
        out.put(("done", spec.index, asyncio.run(_client(spec, _Go(), start_at))))
    except BaseException:  # noqa: BLE001 - report anything to the parent, which fails the run
        out.put(("error", spec.index, traceback.format_exc()))


_ctx = None


def context():
    """One forkserver context per bench process, with asyncssh preloaded in the fork server."""
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(["bench.load"])
    return _ctx


def _process_cpu(server: ServerProcess) -> dict[int, float]:
    assert server.proc is not None
    pids = [server.proc.pid, *descendants(server.proc.pid)]
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid, tree=False)
        except OSError:
            pass
    return out


def run_load(server: ServerProcess, port: int, users: list[str], keys: dict[str, Any], host_key_line: str, *,
             clients: int, mode: str, duration: float, warmup: int = 2, timeout: float = 120) -> dict[str, Any]:
    """``clients`` processes against ``port`` for ``duration`` seconds; figures as a dict.

    Client i authenticates as ``users[i % len(users)]``.
    """
    ctx = context()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    out = ctx.Queue()
    procs = []
    for i in range(clients):
        user = users[i % len(users)]
        spec = ClientSpec(index=i, port=port, user=user, key_path=str(keys[user]), host_key_line=host_key_line,
                          mode=mode, warmup=warmup, duration=duration)
        p = ctx.Process(target=_client_main, args=(spec, go, start_at, out), daemon=True)
        p.start()
        procs.append(p)
    def receive(deadline: float, what: str):
        """The next message from a client; fail fast if a client died without one."""
        import queue

        while True:
            try:
                kind, i, payload = out.get(timeout=0.5)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"clients stalled or died {what} (exit codes {dead})") from None
                continue
            if kind == "error":
                raise RuntimeError(f"client {i} failed {what}:\n{payload}")
            return kind, i, payload

    try:
        ready = 0
        results: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while ready < clients:
            kind, i, payload = receive(deadline, "during warm-up")
            ready += kind == "ready"
        cpu0 = server.cpu()
        kids0 = _process_cpu(server)
        busy0 = system_busy_seconds()
        t0 = time.monotonic() + 0.05
        start_at.value = t0
        go.set()
        deadline = time.monotonic() + duration + timeout
        while len(results) < clients:
            kind, i, payload = receive(deadline, "under load")
            results[i] = payload
        cpu1 = server.cpu()
        kids1 = _process_cpu(server)
        busy1 = system_busy_seconds()
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    lat = [x for r in results.values() for x in r["latencies"]]
    errors = [e for r in results.values() for e in r["errors"]]
    certs = len(lat)
    wall = max(r["t_end"] for r in results.values()) - t0
    client_cpu = sum(r["cpu"] for r in results.values())
    return {
        "clients": clients,
        "mode": mode,
        "certs": certs,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": wall,
        "certs_per_s": certs / wall if wall > 0 else 0.0,
        "p50_ms": median(lat) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "server_cpu_s": cpu1 - cpu0,
        "server_cpu_ms_per_cert": (cpu1 - cpu0) * 1000 / certs if certs else float("nan"),
        "client_cpu_ms_per_cert": client_cpu * 1000 / certs if certs else float("nan"),
        "server_cpu_util": (cpu1 - cpu0) / wall if wall > 0 else 0.0,
        # CPU used by anything else on the machine meanwhile (other jobs disturb throughput, not CPU/cert).
        "foreign_cpu_util": max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - client_cpu) / wall if wall > 0 else 0.0,
        "cpus": os.cpu_count(),
        # Each server process's own CPU over the window (for --workers: the parent, then each worker).
        "process_cpu_s": {str(pid): kids1[pid] - kids0.get(pid, 0.0) for pid in kids1},
    }


def compare(servers: dict[str, ServerProcess], ca, *, mode: str, levels: list[int], duration: float,
            reps: int = 1) -> dict[str, dict[int, dict[str, Any]]]:
    """Every server at every client count, ``reps`` times, alternating the order of the servers.

    CPU per certificate is pooled (total CPU / total certificates); the rest is the mean of the reps.
    """
    out: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in levels} for name in servers}
    names = list(servers)
    for c in levels:
        for rep in range(reps):
            for name in (names if rep % 2 == 0 else names[::-1]):
                s = servers[name]
                out[name][c].append(run_load(s, s.port, ca.users, ca.keys, ca.host_key_line(), clients=c, mode=mode,
                                             duration=duration))
    pooled: dict[str, dict[int, dict[str, Any]]] = {}
    for name, per in out.items():
        pooled[name] = {}
        for c, runs in per.items():
            certs = sum(r["certs"] for r in runs)
            p = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0] if isinstance(runs[0][k], float)}
            p.update(clients=c, mode=mode, reps=len(runs), certs=certs, errors=sum(r["errors"] for r in runs),
                     first_errors=[e for r in runs for e in r["first_errors"]][:3],
                     server_cpu_ms_per_cert=sum(r["server_cpu_s"] for r in runs) * 1000 / certs if certs else None)
            pooled[name][c] = p
    return pooled
