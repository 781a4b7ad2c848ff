"""Prometheus metrics, ``/healthz`` and ``/readyz``: the CA as its operators watch it.

Off unless the config names a listener (``[metrics] listen = "127.0.0.1:9322"``);
the default address is loopback, and another one is used only when the
operator writes it (docs/security.md rule 70).

The counters count what the audit log commits, nothing else: the service's
store connections are wrapped (:func:`instrument`) so that every committed
``issued``/``host_issued``, ``denied``/``host_denied``, ``auth_failed`` and
``lockout`` event adds one, after its commit, and a rolled-back transaction
adds nothing. So the counters equal the audit log's counts (rule 71).

``prometheus_client`` runs in multiprocess mode: every process of ``serve
--workers N`` writes its values to files in one private directory (made
here, 0700, before any worker starts), and the listener, in the parent,
adds them up. Label values come from closed sets only: a policy role name,
an error code of :mod:`ca.errors`, an authentication method name (rule 72).

``/readyz`` answers 200 only when a fresh database connection answers and
the active CA key signs a probe; otherwise 503 with the reason, which the
service logs too (once per change).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ca.config import Config
from ca.errors import CAError
from ca.service.observe import event

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PROBE_INTERVAL = 10.0  # seconds between background readiness probes (and gauge updates)

_COUNTED = {"issued", "host_issued", "denied", "host_denied", "auth_failed", "lockout"}


def _error_codes() -> frozenset[str]:
    """Every ``code`` of the error tree: the closed set a ``code`` label may take."""
    out, todo = set(), [CAError]
    while todo:
        cls = todo.pop()
        out.add(cls.code)
        todo.extend(cls.__subclasses__())
    return frozenset(out)


_METHOD = re.compile(r"[a-z][a-z0-9_-]{0,23}")  # publickey, password, none, oidc, ... (a name, never a user's)


def _method(value: Any) -> str:
    if not isinstance(value, str):
        return "other"
    base = value.split(":", 1)[0]  # "oidc:PROVIDER" is counted as "oidc": provider names stay out of labels
    return base if _METHOD.fullmatch(base) else "other"


class _Metrics:
    """The metric objects of this process (created once multiprocess mode is set up)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.codes = _error_codes()
        self.issued = Counter("iast_certificates_issued", "Certificates issued (audit events issued, host_issued).",
                              ["role", "cert_type"])
        self.denied = Counter("iast_requests_denied", "Requests refused and audited (denied, host_denied).",
                              ["code"])
        self.auth_failures = Counter("iast_auth_failures", "Failed logins (audit events auth_failed).", ["method"])
        self.lockouts = Counter("iast_lockouts", "Accounts or addresses locked out (audit events lockout).")
        self.issue_seconds = Histogram("iast_issue_seconds", "A sign request: received to reply sent.")
        self.commit_seconds = Histogram("iast_audit_commit_seconds", "One audit transaction: begin to commit.")
        self.connections = Gauge("iast_connections", "Open SSH connections by state.", ["state"],
                                 multiprocess_mode="livesum")
        self.krl_version = Gauge("iast_krl_version", "The version of the KRL the CA serves.",
                                 multiprocess_mode="max")
        self.ca_key_info = Gauge("iast_ca_key_info", "The CA keys in the keyring (1 per key).",
                                 ["fingerprint", "state"], multiprocess_mode="max")

    def committed(self, events: list[tuple[str, str | None, dict]], seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        for kind, role, data in events:
            if kind in ("issued", "host_issued"):
                self.issued.labels(role=role or "-", cert_type="host" if kind == "host_issued" else "user").inc()
            elif kind in ("denied", "host_denied"):
                code = data.get("code")
                self.denied.labels(code=code if code in self.codes else "other").inc()
            elif kind == "auth_failed":
                self.auth_failures.labels(method=_method(data.get("method"))).inc()
            elif kind == "lockout":
                self.lockouts.inc()


_metrics: _Metrics | None = None


def enabled() -> bool:
    return _metrics is not None


def setup(cfg: Config) -> bool:
    """In a process that serves (the parent or a worker): start counting if the config asks for
    metrics. The multiprocess directory must already be in the environment (:func:`listener`)."""
    global _metrics
    if cfg.metrics_listen is None or not os.environ.get(MULTIPROC_ENV):
        return False
    if _metrics is None:
        _metrics = _Metrics()
    return True


def observe_issue(seconds: float) -> None:
    if _metrics is not None:
        _metrics.issue_seconds.observe(seconds)


def connection(state: str, delta: int) -> None:
    """``state`` is "queued", "unauthenticated" or "authenticated" (a closed set)."""
    if _metrics is not None:
        _metrics.connections.labels(state=state).inc(delta)


# -- counting what the audit log commits ------------------------------------------------


class _ObservedUnit:
    def __init__(self, tx: Any, seen: list):
        self._tx, self._seen = tx, seen

    def append(self, kind: str, data: dict[str, Any], **columns: Any) -> int:
        event_id = self._tx.append(kind, data, **columns)
        if kind in _COUNTED:
            self._seen.append((kind, columns.get("role"), data))
        return event_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


class ObservedStore:
    """A store whose committed audit events are counted (everything else passes through)."""

    def __init__(self, store: Any, on_commit: Callable[[list, float], None]):
        self._store, self._on_commit = store, on_commit
        self._grouped: list[tuple[list, float]] | None = None  # inside group(): counted at its commit
        self._group_thread: int | None = None

    @contextmanager
    def transaction(self) -> Iterator[_ObservedUnit]:
        seen: list = []
        start = time.perf_counter()
        with self._store.transaction() as tx:
            yield _ObservedUnit(tx, seen)
        if self._grouped is not None and self._group_thread == threading.get_ident():
            self._grouped.append((seen, start))  # a savepoint: not durable until the group commits
        else:
            self._on_commit(seen, time.perf_counter() - start)  # reached only once committed

    @contextmanager
    def group(self) -> Iterator[None]:
        """The store's group commit (docs/security.md rule 64): its transactions are counted
        only once the group's one commit returned; a failed commit counts none of them."""
        grouped: list[tuple[list, float]] = []
        with self._store.group():
            self._grouped, self._group_thread = grouped, threading.get_ident()
            try:
                yield
            finally:
                self._grouped = self._group_thread = None
        done = time.perf_counter()
        for seen, start in grouped:
            self._on_commit(seen, done - start)

    def record(self, kind: str, data: dict[str, Any], **columns: Any) -> int:
        with self.transaction() as tx:
            return tx.append(kind, data, **columns)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def instrument(ca: Any) -> None:
    """Count the service's audit commits: wrap the CA's two store connections before any part
    (authority, guard) is built on them. A no-op when metrics are off."""
    if _metrics is None:
        return
    for part in ("audit", "auth_audit"):
        if part in ca.__dict__:
            raise RuntimeError(f"instrument() after {part} was opened")
    audit = ObservedStore(ca.audit, _metrics.committed)
    ca.audit = audit
    ca.auth_audit = audit if not ca.for_service else ObservedStore(ca.auth_audit, _metrics.committed)


# -- readiness ------------------------------------------------------------------------


class Readiness:
    """Is the CA able to issue: the database answers on a fresh connection, and the active CA key
    signs a probe. Also keeps the KRL version and CA key gauges current."""

    def __init__(self, cfg: Config, passphrase: bytes | None):
        self.cfg, self.passphrase = cfg, passphrase
        self._signer: Any = None
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        self.last: tuple[bool, str] | None = None

    def probe(self, *, gauges: bool = False) -> tuple[bool, str]:
        """``gauges``: also rebuild the KRL for its version (a write transaction: the background
        probe does it every PROBE_INTERVAL, never a scrape of /readyz)."""
        with self._lock:
            try:
                reason = self._probe(gauges)
            except Exception as e:  # any failure is a reason to be out of rotation, never a crash
                reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            result = (reason == "", reason or "ready")
            if result != self.last:
                if result[0]:
                    event("ready" if self.last is None else "ready again")
                else:
                    event("not ready", reason=result[1])
                self.last = result
            return result

    def _probe(self, gauges: bool) -> str:
        from ca.app import load_keyring, load_signer, open_ca
        from ca.sshcert.krl import parse_krl

        with open_ca(self.cfg, for_service=True) as ca:
            try:
                ca.audit.head()
            except CAError as e:
                return f"the database does not answer: {e.message}"
            except Exception as e:
                return f"the database does not answer: {e}".splitlines()[0]
            keyring = load_keyring(ca.paths)
            if self._signer is None or self._fingerprint != keyring.active.fingerprint:
                if self._signer is not None:
                    self._signer.backend.close()
                    self._signer = None
                self._signer = load_signer(keyring, self.passphrase, self.cfg)
                self._fingerprint = keyring.active.fingerprint
            try:
                self._signer.backend.sign(b"iast-ca readiness probe")
            except CAError as e:
                self._signer = None
                return f"the CA key cannot sign: {e.message}"
            if _metrics is not None and gauges:
                for k in keyring.keys:
                    _metrics.ca_key_info.labels(fingerprint=k.fingerprint, state=k.state).set(1)
                try:
                    _metrics.krl_version.set(parse_krl(ca.krl()).version)
                except CAError:
                    pass
        return ""


# -- the listener ---------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            ok, reason = self.server.readiness.probe()
            self._send(200 if ok else 503, (reason + "\n").encode())
        else:
            self._send(404, b"not found: /metrics, /healthz, /readyz\n")

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # scrapes are not log lines
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    readiness: Readiness

    def __init__(self, address: tuple[str, int], readiness: Readiness):
        import socket

        self.address_family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0][0]
        super().__init__(address, _Handler)
        self.readiness = readiness


@contextmanager
def listener(cfg: Config, passphrase: bytes | None) -> Iterator[_Server | None]:
    """Around ``serve``: the multiprocess directory (0700, removed afterwards), this process's
    metrics, the HTTP listener and a background readiness probe. Yields None when metrics are off."""
    if cfg.metrics_listen is None:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="iast-ca-metrics-")  # 0700: the values are the CA's own
    os.environ[MULTIPROC_ENV] = directory  # before any worker is spawned: they inherit it
    stop = threading.Event()
    server = None
    try:
        setup(cfg)
        server = _Server(cfg.metrics_listen, Readiness(cfg, passphrase))
        threading.Thread(target=server.serve_forever, name="iast-metrics", daemon=True).start()

        def probe_loop() -> None:
            while not stop.is_set():
                server.readiness.probe(gauges=True)
                stop.wait(PROBE_INTERVAL)

        threading.Thread(target=probe_loop, name="iast-readiness", daemon=True).start()
        host, port = server.server_address[:2]
        event("metrics listening", host=host, port=port)
        yield server
    finally:
        stop.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """A worker is gone: its live gauges (connections) stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
