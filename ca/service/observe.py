"""What the service tells the outside world: JSON log lines on stderr, and systemd's sd_notify."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from typing import Any

log = logging.getLogger("iast.ca")


# Built once: json.dumps(default=...) builds an encoder for every line.
_ENCODER = json.JSONEncoder(default=str)


class JSONFormatter(logging.Formatter):
    """One JSON object per line (journald and log shippers read these as they are)."""

    def __init__(self, static: dict[str, Any] | None = None):
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        out.update(self.static)
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


def setup_logging(stream: Any = None, **static: Any) -> None:
    """JSON lines on stderr; ``static`` fields (e.g. ``worker=1``) go on every line."""
    # The JSON lines name no source file, thread or process: logging need not look them up for
    # every record (finding the caller walks the stack).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter(static))
    root = logging.getLogger("iast")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def event(msg: str, **fields: Any) -> None:
    log.info(msg, extra={"fields": fields})


def warning(msg: str, **fields: Any) -> None:
    """An event an operator must act on (a refused reload): ``"level": "warning"`` in the log."""
    log.warning(msg, extra={"fields": fields})


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())
