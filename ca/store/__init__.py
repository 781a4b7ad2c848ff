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

BACKENDS = ("sqlite", "postgresql")


def is_database_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL database (``postgresql://...``) rather than an SQLite file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def backend_of(location: str | Path) -> str:
    return "postgresql" if is_database_url(location) else "sqlite"


def open_store(path: str | Path, *, backend: str | None = None, busy_timeout: float = 10.0,
               clock: Callable[[], float] = time.time, migrate: bool = True) -> Store:
    """Open (creating or migrating) the CA database at ``path`` (a file, or a ``postgresql://`` URL).

    ``backend`` defaults to the one ``path`` names. ``migrate=False`` (PostgreSQL) refuses
    a database at an older schema instead of migrating it (``serve`` names ``iast-ca db migrate``).
    """
    backend = backend or backend_of(path)
    if backend == "sqlite":
        return SQLiteStore(path, busy_timeout=busy_timeout, clock=clock)
    if backend == "postgresql":
        from ca.store.postgres import PostgresStore  # psycopg is loaded only by a CA that uses it

        return PostgresStore(str(path), clock=clock, migrate_schema=migrate)
    raise ValueError(f"unknown storage backend {backend!r} (known: {', '.join(BACKENDS)})")


__all__ = ["AuditLog", "BACKENDS", "backend_of", "is_database_url", "SCHEMA_VERSION", "Store", "Transaction", "UnitOfWork", "VerifyReport",
           "open_store"]
