"""A small ssh-agent client (draft-miller-ssh-agent): list, add with a lifetime, remove. No asyncio, no asyncssh.

``iast-ssh login`` over OpenSSH (:mod:`ca.client.openssh`) uses it to put the
certificate into the agent: the key *with its certificate only* (``ssh-add``
would add the bare key too), constrained to the certificate's remaining
lifetime (docs/security.md rule 76), and to remove the previous certificate of
the same CA and role. Everything else that talks to the agent goes through
asyncssh (:mod:`ca.client.agent`).
"""

from __future__ import annotations

import struct

import _socket  # socket.py's enum conversions cost more than this whole exchange

from ca.errors import CAError
from ca.sshcert.wire import Reader, WireError, uint32
from ca.sshcert.wire import string as _string

__all__ = ["Agent"]

_REQUEST_IDENTITIES = 11
_IDENTITIES_ANSWER = 12
_REMOVE_IDENTITY = 18
_ADD_ID_CONSTRAINED = 25
_SUCCESS = 6
_FAILURE = 5
_CONSTRAIN_LIFETIME = 1
_MAX_REPLY = 256 * 1024


class Agent:
    """One connection to the ssh-agent at ``path``; a CAError when it cannot be reached or misbehaves."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise CAError(f"cannot use ssh-agent at {path}: {e.strerror or e}") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise CAError(f"ssh-agent at {self.path} closed the connection")
            out += chunk
        return out

    def _call(self, message: bytes) -> bytes:
        try:
            self.sock.sendall(_string(message))
            (n,) = struct.unpack(">I", self._recv(4))
            if not 0 < n <= _MAX_REPLY:
                raise CAError(f"ssh-agent at {self.path} sent a reply of {n} bytes")
            return self._recv(n)
        except OSError as e:
            raise CAError(f"cannot use ssh-agent at {self.path}: {e.strerror or e}") from None

    def identities(self) -> list[tuple[bytes, str]]:
        """(key or certificate blob, comment) for every identity the agent holds."""
        reply = self._call(bytes([_REQUEST_IDENTITIES]))
        try:
            r = Reader(reply)
            if r.byte() != _IDENTITIES_ANSWER:
                raise CAError(f"ssh-agent at {self.path} refused to list its keys")
            out = []
            for _ in range(r.uint32()):
                blob = r.string()
                out.append((blob, r.string().decode("utf-8", "replace")))
            return out
        except WireError as e:
            raise CAError(f"ssh-agent at {self.path} sent a malformed key list: {e}") from None

    def add_ed25519_certificate(self, cert_blob: bytes, public: bytes, secret: bytes, comment: str,
                                lifetime: int) -> None:
        """Add an Ed25519 key under its certificate only, dropped by the agent after ``lifetime`` seconds.
        ``public`` is the 32-byte key, ``secret`` the 64-byte seed||public of OpenSSH's key format."""
        if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
            raise CAError("not an Ed25519 key pair")
        if not 0 < lifetime < 2**32:
            raise CAError(f"bad agent lifetime {lifetime}")
        message = (bytes([_ADD_ID_CONSTRAINED]) + _string(b"ssh-ed25519-cert-v01@openssh.com") + _string(cert_blob)
                   + _string(public) + _string(secret) + _string(comment.encode())
                   + bytes([_CONSTRAIN_LIFETIME]) + uint32(lifetime))
        if self._call(message)[:1] != bytes([_SUCCESS]):
            raise CAError(f"ssh-agent at {self.path} refused the certificate")

    def remove(self, blob: bytes) -> bool:
        """Remove one identity (a certificate: its certificate blob); False if the agent did not hold it."""
        return self._call(bytes([_REMOVE_IDENTITY]) + _string(blob))[:1] == bytes([_SUCCESS])
