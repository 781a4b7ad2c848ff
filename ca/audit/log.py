"""Moved to :mod:`ca.store` (the SQLite store is ``ca.store.AuditLog``).

A transition alias only, for the modules not yet switched to ``from ca.store import ...``
(ca.cli.*, ca.service.server, ca.issuance.authority, ca.review.*). It breaks the layer
rule (ca.audit may not import ca.store): delete it once nothing imports it.
"""

from ca.store import AuditLog, Transaction, VerifyReport  # noqa: F401
from ca.store.schema import SCHEMA_VERSION  # noqa: F401
from ca.store.sqlite import ensure_tables  # noqa: F401
