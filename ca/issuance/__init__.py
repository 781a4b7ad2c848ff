"""The issuance path: the authority (authenticate -> decide -> sign -> audit -> reply) and the signer.

``Authority.issue`` is the one choke point every certificate request passes; it owns its gate and approvals.
May import: ca core, ca.sshcert, ca.audit, ca.policy, ca.store, ca.keys, ca.access, ca.auth.
"""
