"""Log in with an enrolled public key (SSH ``publickey``).

asyncssh checks the signature; this decides whether the key may log in:
enrolled for that user, the user enabled, the key not revoked. The guard
adds the last condition: the client address is not locked (an account
locked by password failures still logs in with its key).
"""

from __future__ import annotations

from collections.abc import Callable

from ca.auth.base import Guarding, KeyAuthenticator, Refusal
from ca.auth.users import UserStore
from ca.models import Identity
from ca.sshcert.certificates import fingerprint


class PublicKeyAuthenticator(KeyAuthenticator):
    """An enrolled, unrevoked key of an enabled user."""

    # Keys cannot be guessed: only a locked address refuses them, and each refused key is
    # not audited on its own (the connection's auth_failed event lists the keys offered).
    guarding = Guarding("publickey", guessable=False, audit_failures=False)

    def __init__(self, users: UserStore, key_revoked: Callable[[str], bool]):
        self.users = users
        self.key_revoked = key_revoked  # fingerprint -> revoked? (on the same thread's connection)

    def check_key(self, user: str, key_blob: bytes, address: str, now: float) -> Identity | Refusal:
        fp = fingerprint(key_blob)
        if not self.users.key_allowed(user, key_blob) or self.key_revoked(fp):
            return Refusal("no accepted key")
        return Identity(user=user, auth_methods=("publickey",), mfa=False, source_address=address, login_key=fp)
