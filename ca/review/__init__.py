"""Review: correlate sshd logs with issuances, and the audit report (text, JSON, HTML).

Reads the audit log through the store; writes only its own correlation records.
May import: ca core, ca.sshcert, ca.audit, ca.keys, ca.store.
"""
