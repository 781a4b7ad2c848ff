"""The SQLite implementation of the store: one module per repository.

Placeholder created by the review helper so that ca.store.sqlite.review imports; the storage helper owns this file.
May import: ca core, ca.sshcert, ca.audit, ca.config, ca.policy, ca.store.
"""
