"""A person logs in with the key of a certificate this CA issued them, while it is valid (docs/security.md rule 80).

After ``iast-ssh login`` the client holds a fresh key and its certificate (in
ssh-agent or in files); for the commands that only read or ask
(``whoami``, ``roles``, ``requests``, ``request``, ``cancel``, ``ca-keys``,
``krl``, ``known-hosts``) it proves possession of that key over SSH
``publickey``, offered as the plain key, and this accepts it when the key is
the certified key of a user certificate this CA issued *to that user* that:

* is current (``valid_after <= now < valid_before``),
* is not revoked by serial, key ID, key, user (a revocation at or after the
  certificate's start) or CA key,
* belongs to an enabled user.

The identity is the same user, authenticated by ``certificate``, with no
second factor (``mfa=False``) whatever the first login had: a certificate is
never more than a key. It cannot get another certificate, nor approve or deny
(:func:`ca.rules.check_certificate_login`): a chain of certificates would
outlive the credential that started it.
"""

from __future__ import annotations

from ca.auth.base import Guarding, KeyAuthenticator, Refusal
from ca.models import Identity
from ca.rules import CERTIFICATE_LOGIN, WORKLOAD_USER, is_user_name
from ca.sshcert.certificates import fingerprint
from ca.store.base import Store

USER_KEY_ID_PREFIX = "iast:"  # every user certificate's key ID is iast:USER:ROLE:SERIAL (rule 9)


class CertifiedKeyAuthenticator(KeyAuthenticator):
    """The key of a current, unrevoked user certificate this CA issued to that (enabled) user."""

    guarding = Guarding(CERTIFICATE_LOGIN, guessable=False, audit_failures=False)

    def __init__(self, store: Store):
        self.store = store  # the auth thread's connection

    def _revoked(self, serial: int, key_id: str, key_fp: str, ca_fp: str, user: str, valid_after: int) -> bool:
        revoked = self.store.revocations
        if any(revoked.is_revoked(kind, value) for kind, value in
               (("serial", str(serial)), ("key_id", key_id), ("key", key_fp), ("ca_key", ca_fp))):
            return True
        when = revoked.revoked_at("user", user)
        return when is not None and when >= valid_after

    def check_key(self, user: str, key_blob: bytes, address: str, now: float) -> Identity | Refusal:
        if not is_user_name(user) or user == WORKLOAD_USER:
            return Refusal("not a user account")
        row = self.store.users.get(user)
        if row is None or row.disabled:
            return Refusal("no accepted key")
        fp = fingerprint(bytes(key_blob))
        for row in self.store.certificates.current_of(user, fp, int(now)):
            if not row.key_id.startswith(f"{USER_KEY_ID_PREFIX}{user}:") or row.valid_after > now:
                continue
            if self._revoked(row.serial, row.key_id, fp, row.ca_fingerprint, user, row.valid_after):
                continue
            return Identity(user=user, auth_methods=(CERTIFICATE_LOGIN,), mfa=False, source_address=address,
                            login_key=fp, subject=f"serial {row.serial}")
        return Refusal("no current certificate of this CA for this key")
