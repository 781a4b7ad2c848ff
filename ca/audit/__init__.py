"""Tamper evidence: the hash-chain format of events, the RFC 6962 Merkle tree, signed checkpoints, proofs.

The formats and checks that make the audit log verifiable; ``merkle`` stands alone (a reviewer can copy it).
May import: ca core and ca.sshcert.
"""
