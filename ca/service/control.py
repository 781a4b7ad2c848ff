"""Finding the running service from the command line: its pid file, and ``iast-ca reload``.

``iast-ca serve`` writes ``STATE/serve.pid`` (0644) while it runs and removes it when it
stops; with ``--workers`` it is the parent's pid, which forwards SIGHUP to every worker.
``reload`` sends SIGHUP to that pid only after checking that the process is an
``iast-ca`` (a stale file must never signal a stranger that got the pid since), then
waits for the service's verdict in the audit log: ``policy_reloaded`` or
``policy_reload_failed`` (audited by :meth:`ca.app.CA.reload_policy`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ca.errors import CAError, StateError
from ca.files import write_atomic
from ca.store import AuditLog

PID_FILE = "serve.pid"


def pid_path(state_dir: Path) -> Path:
    return Path(state_dir) / PID_FILE


@contextlib.contextmanager
def pid_file(state_dir: Path) -> Iterator[Path]:
    """``STATE/serve.pid`` holding this process's pid while the block runs (removed after, if still ours)."""
    path = pid_path(state_dir)
    write_atomic(path, f"{os.getpid()}\n", 0o644)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()


def running_pid(state_dir: Path) -> int:
    """The pid of the service serving ``state_dir``; :class:`StateError` when none runs."""
    path = pid_path(state_dir)
    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        raise StateError(f"no service is running for {state_dir} (no {path}); under systemd: "
                         "systemctl reload iast-ca") from None
    except (OSError, ValueError):
        raise StateError(f"{path} does not hold a process id") from None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        raise StateError(f"the service of {path} (pid {pid}) is not running (a stale pid file)") from None
    if b"iast-ca" not in cmdline:
        raise StateError(f"pid {pid} from {path} is not an iast-ca service (a stale pid file): nothing sent")
    return pid


@dataclass(frozen=True)
class ReloadResult:
    pid: int
    accepted: bool | None  # None: no verdict within the timeout
    detail: str  # the new policy's sha256, or why it was refused

    def as_json(self) -> dict:
        return {"pid": self.pid, "accepted": self.accepted, "detail": self.detail}


def reload_service(state_dir: Path, log: AuditLog, timeout: float = 15.0) -> ReloadResult:
    """SIGHUP the running service and wait for its policy verdict in the audit log."""
    pid = running_pid(state_dir)
    after, _ = log.head()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise StateError(f"the service (pid {pid}) stopped before it could be signalled") from None
    except PermissionError:
        raise CAError(f"not allowed to signal the service (pid {pid}): run as its user or root") from None
    deadline = time.monotonic() + timeout
    while True:
        for e in reversed(log.events(limit=50)):  # oldest first among the newest
            if e.id <= after:
                continue
            if e.kind == "policy_reloaded":
                return ReloadResult(pid, True, str(e.data.get("new_sha256")))
            if e.kind == "policy_reload_failed":
                return ReloadResult(pid, False, str(e.data.get("error")))
        if time.monotonic() > deadline:
            return ReloadResult(pid, None, f"no verdict within {timeout:.0f}s; see the service log")
        time.sleep(0.1)
