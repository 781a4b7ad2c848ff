"""The signing-key seam: what the signer needs from a CA key, and nothing more.

A key backend holds one private key and gives:

* ``public_blob``: the public key in SSH wire form (``string type, ...``);
* ``algorithm``: its key type (``ssh-ed25519``, ``ecdsa-sha2-nistp256``, ``ssh-rsa``, ...);
* ``signature_algorithm``: what it signs with, never SHA-1 ``ssh-rsa``
  (``rsa-sha2-512`` for RSA keys, docs/security.md rule 8);
* ``fingerprint``: ``SHA256:...`` of ``public_blob``;
* ``sign(data)``: one SSH signature blob over ``data``
  (``string signature_algorithm, string raw signature``; for ECDSA the raw
  signature is ``mpint r, mpint s``). A failure raises
  :class:`~ca.errors.SigningError` with a one-line message.

The private key never leaves the backend, so a backend may keep it in a
file (:mod:`ca.keys.file`) or in a token (a PKCS#11 backend: CKM_EDDSA,
CKM_ECDSA over a SHA-256/384/512 digest, CKM_SHA512_RSA_PKCS). The caller
builds every byte that is signed and checks the signature it gets back
(:mod:`ca.issuance.signer`), so a backend is trusted with the key only,
never with the content of a certificate. One backend per CA key: a user CA
and a host CA are two backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ca.sshcert.build import signature_algorithm
from ca.sshcert.certificates import fingerprint
from ca.sshcert.wire import Reader


class KeyBackend(ABC):
    """One CA private key behind ``sign(data)``.

    Subclasses give :attr:`public_blob` and :meth:`sign`; the other
    attributes follow from the public key.
    """

    @property
    @abstractmethod
    def public_blob(self) -> bytes:
        """The public key, SSH wire encoding."""

    @abstractmethod
    def sign(self, data: bytes) -> bytes:
        """An SSH signature blob over ``data`` made with :attr:`signature_algorithm`.

        Raises :class:`~ca.errors.SigningError` (one line) if the key cannot sign.
        """

    @property
    def algorithm(self) -> str:
        """The key type, e.g. ``ssh-ed25519``."""
        return Reader(self.public_blob).text()

    @property
    def signature_algorithm(self) -> str:
        """The signature algorithm, e.g. ``rsa-sha2-512`` for an RSA key (never SHA-1)."""
        return signature_algorithm(self.algorithm)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_blob)

    def close(self) -> None:
        """Release what the backend holds (a token session); a file key holds nothing."""
