"""Storage: the audit log, the CA's tables and the queries over them, behind one interface per backend.

Placeholder created by the review helper so that ca.store.sqlite.review imports; the storage helper owns this file.
May import: ca core, ca.sshcert, ca.audit, ca.config, ca.policy.
"""
