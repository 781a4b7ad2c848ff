"""``iast-ca serve --workers N``: N service processes on one port, one audit chain.

Each worker is a full service (its own event loop, its own database
connections) listening with SO_REUSEPORT, so the kernel spreads new
connections across them and the CA uses every core. They share nothing but
the SQLite file: every append to the audit log is a ``BEGIN IMMEDIATE``
transaction that reads the head of the chain and allocates the serial under
the database's write lock, so there is still exactly one chain and serials
stay unique.

The parent holds the port (bound, never listening, so it receives no
connections) until every worker listens, then tells systemd READY=1. It
forwards SIGHUP (policy reload) and SIGTERM (drain) to the workers, and if
a worker dies it stops the rest and exits non-zero, for systemd to restart
the whole service.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import wait

from ca.config import Config
from ca.errors import EXIT_ERROR, EXIT_OK, StateError


def _worker(cfg: Config, index: int, host: str, port: int, passphrase: bytes | None, ready, queued) -> None:
    import asyncio

    from ca.app import open_ca
    from ca.service import metrics
    from ca.service.server import serve, setup_logging

    setup_logging(worker=index)
    ca = open_ca(cfg, passphrase=passphrase, for_service=True)
    if metrics.setup(cfg):  # the parent's multiprocess directory, inherited (ca.service.metrics)
        metrics.instrument(ca)
    ca.authority  # noqa: B018 - unlock the key and read the policy before the loop starts, as the parent did
    asyncio.run(serve(ca, host=host, port=port, worker=index, ready=lambda _s: ready.put(index),
                      queued_total=queued))


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_workers(cfg: Config, workers: int, host: str, port: int, passphrase: bytes | None,
                on_ready: Callable[[int], None] | None = None) -> int:
    """Run ``workers`` service processes until SIGTERM/SIGINT; return the exit status."""
    from ca.service import metrics
    from ca.service.observe import event, sd_notify

    reserve = _reserve(host, port)
    port = reserve.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    # The connections waiting to log in, counted over all workers (ca.service.admission).
    queued = ctx.Value("i", 0)
    procs = [ctx.Process(target=_worker, args=(cfg, i, host, port, passphrase, ready, queued),
                         name=f"iast-ca-worker-{i}")
             for i in range(workers)]
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _f: stop.append(signum))
    signal.signal(signal.SIGHUP, lambda *_: [p.pid and _send(p, signal.SIGHUP) for p in procs])
    for p in procs:
        p.start()
    try:
        started, deadline = 0, time.monotonic() + 60
        while started < workers:
            if stop or any(p.exitcode is not None for p in procs) or time.monotonic() > deadline:
                raise StateError("a worker failed to start (see its log above)")
            try:
                ready.get(timeout=0.2)
                started += 1
            except queue.Empty:
                continue
        reserve.close()
        event("listening", host=host, port=port, workers=workers, state_dir=str(cfg.state_dir))
        sd_notify("READY=1")
        if on_ready:
            on_ready(port)
        while not stop:
            wait([p.sentinel for p in procs], timeout=0.5)
            dead = [p for p in procs if p.exitcode is not None]
            if dead and not stop:
                event("worker died; stopping the service", worker=procs.index(dead[0]), exitcode=dead[0].exitcode)
                return EXIT_ERROR
        sd_notify("STOPPING=1")
        return EXIT_OK
    finally:
        reserve.close()
        for p in procs:
            _send(p, signal.SIGTERM)
        for p in procs:
            p.join(cfg.drain_timeout + 5)
            if p.exitcode is None:
                p.kill()
                p.join()
            if p.pid:
                metrics.worker_exited(p.pid)
        event("stopped", workers=workers)


def _send(p, sig: int) -> None:
    try:
        if p.pid and p.exitcode is None:
            os.kill(p.pid, sig)
    except ProcessLookupError:
        pass
