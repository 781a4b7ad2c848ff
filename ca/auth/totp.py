"""Time-based one-time passwords (RFC 6238, built on HOTP, RFC 4226).

The service uses the profile every authenticator app understands: HMAC-SHA1,
6 digits, a 30 s step (docs/security.md rule 16). SHA-256 and SHA-512 exist here
only so that the RFC 6238 Appendix B test vectors can be checked in full.

Secrets are base32 text without padding (what ``otpauth://`` URIs carry).
Whether a code was already used is not this module's business: the user
store keeps the last accepted step and refuses any step not newer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from urllib.parse import quote, urlencode

STEP = 30
DIGITS = 6
SECRET_BYTES = 20  # 160 bits: the HMAC-SHA1 key length RFC 4226 section 4 recommends
MAX_DRIFT = 1  # docs/security.md rule 16: at most one step either way

_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
_CODE = re.compile(r"[0-9]{6}")


def generate_secret() -> str:
    """A new random TOTP secret: 20 bytes from the OS CSPRNG, base32 without padding."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def decode_secret(secret_b32: str) -> bytes:
    """The key bytes of a base32 secret (case-insensitive, padding optional).

    Raises ``ValueError`` if it is not base32.
    """
    text = secret_b32.strip().replace(" ", "").upper()
    text += "=" * (-len(text) % 8)
    try:
        key = base64.b32decode(text, casefold=False)
    except (binascii.Error, ValueError):
        raise ValueError("TOTP secret is not valid base32") from None
    if not key:
        raise ValueError("TOTP secret is empty")
    return key


def hotp(key: bytes, counter: int, digits: int = DIGITS, algorithm: str = "sha1") -> str:
    """RFC 4226 HOTP: HMAC over the 8-byte big-endian counter, dynamic truncation."""
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unknown TOTP algorithm {algorithm!r}")
    if not 6 <= digits <= 10:
        raise ValueError("digits must be between 6 and 10")
    mac = hmac.new(key, struct.pack(">Q", counter), _ALGORITHMS[algorithm]).digest()
    offset = mac[-1] & 0x0F  # RFC 4226 section 5.3
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp(secret_b32: str, for_time: int, step: int = STEP, digits: int = DIGITS, algorithm: str = "sha1") -> str:
    """The RFC 6238 code of ``secret_b32`` at unix time ``for_time`` (T0 = 0)."""
    return hotp(decode_secret(secret_b32), int(for_time) // step, digits, algorithm)


def provisioning_uri(secret: str, user: str, issuer: str = "iast-ssh") -> str:
    """The ``otpauth://totp/...`` URI an authenticator app imports (as a QR code or text).

    Google Authenticator's Key Uri Format: the label is ``issuer:account``
    and the issuer is repeated as a parameter; both are URL-quoted.
    """
    label = f"{quote(issuer, safe='')}:{quote(user, safe='')}"
    query = urlencode(
        {"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP},
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def matching_step(secret: str, code: str, now: float, drift: int = MAX_DRIFT) -> int | None:
    """The time step whose code is ``code``, allowing ``drift`` steps either way; else None.

    ``code`` must be exactly 6 ASCII digits. Every candidate step is
    computed and compared with :func:`hmac.compare_digest` (no early return),
    so the time taken does not depend on which step matched, if any. If two
    candidate steps share the code, the newest is returned: accepting it
    then consumes every step the code could stand for.
    """
    if not 0 <= drift <= MAX_DRIFT:
        raise ValueError(f"TOTP drift must be between 0 and {MAX_DRIFT} steps")
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        return None
    key = decode_secret(secret)
    current = int(now) // STEP
    found = None
    for step in range(current - drift, current + drift + 1):
        if hmac.compare_digest(hotp(key, step).encode("ascii"), code.encode("ascii")) and step >= 0:
            found = step
    return found
