"""Authentication: authenticators that turn what a connection presented into an Identity, users, throttling.

Every authenticator shares one place for throttling, lockout and the audit of failures.
May import: ca core, ca.sshcert, ca.audit, ca.config, ca.store.
"""
