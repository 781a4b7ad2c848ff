"""Storage: the CA database behind one interface (``base``), its schema (``schema``), one package per engine.

No module outside ``ca.store`` writes SQL or holds a connection: it calls the store's named methods.
May import: ca core, ca.audit (formats), ca.config.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ca.audit.verify import VerifyReport
from ca.store.base import Store, UnitOfWork
from ca.store.schema import SCHEMA_VERSION
from ca.store.sqlite import SQLiteStore, SQLiteUnitOfWork

# The names the rest of the CA has always used: the SQLite store is the audit log.
AuditLog = SQLiteStore
Transaction = SQLiteUnitOfWork

BACKENDS = ("sqlite",)


def open_store(path: str | Path, *, backend: str = "sqlite", busy_timeout: float = 10.0,
               clock: Callable[[], float] = time.time) -> Store:
    """Open (creating or migrating) the CA database at ``path`` with ``backend``."""
    if backend == "sqlite":
        return SQLiteStore(path, busy_timeout=busy_timeout, clock=clock)
    raise ValueError(f"unknown storage backend {backend!r} (known: {', '.join(BACKENDS)})")


__all__ = ["AuditLog", "BACKENDS", "SCHEMA_VERSION", "Store", "Transaction", "UnitOfWork", "VerifyReport",
           "open_store"]
