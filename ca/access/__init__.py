"""Who keeps access: revocation and the KRL built from it, and just-in-time requests with approval.

State changes commit with their audit event through the store.
May import: ca core, ca.sshcert, ca.audit, ca.policy, ca.store, ca.keys.
"""
