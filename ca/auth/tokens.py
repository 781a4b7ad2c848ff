"""Checking a signed JWT (an OIDC ID token, a workload token) against its issuer's published keys.

The checks the issue trackers of other CAs show people getting wrong, each
refused with its own reason (recorded in the audit log, never shown to the
client; docs/security.md, the SSO rules at the end):

* the signature, with a key from the issuer's JWKS only, never a key the
  token names itself (``jwk``, ``jku``, ``x5u`` headers are refused);
* the algorithm from an allow-list (RS256, ES256, EdDSA): never ``none``,
  never HS256 (an HMAC "secret" built from a public key is the classic
  confusion attack); and the JWK's own type and ``alg`` must fit it;
* ``iss`` exactly ours; ``aud`` contains our audience, and ``azp`` is ours
  when there are several audiences (OpenID Connect Core 3.1.3.7);
* ``exp``, ``iat``, ``nbf`` against the injected clock with a bounded skew,
  and a lifetime cap (a token valid for a year is not a login);
* replay is for the caller (it needs the store): :func:`replay_key`.

RFC 7519 (JWT), RFC 7515 (JWS), RFC 8725 (JWT best current practices).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ca.auth.idp_http import IssuerClient
from ca.errors import IdentityProviderError

ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA")
# The JWK a given algorithm may be verified with (RFC 7518 section 6, RFC 8037).
_KEY_FITS = {"RS256": ("RSA", None), "ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}
MAX_TOKEN = 16 * 1024
MAX_LIFETIME = 24 * 3600  # exp - iat


@dataclass(frozen=True)
class TokenRefused(Exception):
    """Why a token was refused: a short stable ``reason`` (for counting) and a detail line."""

    reason: str  # bad_signature, wrong_audience, wrong_issuer, expired, algorithm, unknown_kid, replay, ...
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def token_hash(token: str) -> str:
    """What the audit log keeps of a token (never the token itself)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def replay_key(issuer: str, claims: Mapping[str, Any], token: str) -> str:
    """The key under which a used token is remembered: its ``jti`` (with the issuer) or its hash."""
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        return hashlib.sha256(f"jti\n{issuer}\n{jti}".encode()).hexdigest()
    return token_hash(token)


async def verify_token(token: str, issuer: IssuerClient, audience: str, *, now: float, skew: int) -> dict[str, Any]:
    """The verified claims of ``token``, or :class:`TokenRefused`; IdentityProviderError if the
    issuer's keys cannot be had (an outage is not the token's fault, and says so)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise TokenRefused("malformed", f"not a token of 1..{MAX_TOKEN} characters")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise TokenRefused("malformed", str(e)[:100]) from None
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise TokenRefused("algorithm", f"algorithm {str(alg)[:20]!r} is not allowed ({', '.join(ALLOWED_ALGORITHMS)})")
    for h in ("jwk", "jku", "x5u", "x5c"):
        if h in header:
            raise TokenRefused("algorithm", f"the token names its own key ({h}); only the issuer's JWKS is used")
    if header.get("crit"):
        raise TokenRefused("malformed", "critical header parameters are not understood")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenRefused("unknown_kid", "the token names no key (kid)")
    jwk = await issuer.key(kid)
    if jwk is None:
        raise TokenRefused("unknown_kid", f"key {kid[:40]!r} is not in {issuer.issuer}'s JWKS")
    kty, crv = _KEY_FITS[alg]
    if jwk.get("kty") != kty or (crv and jwk.get("crv") != crv) or jwk.get("alg", alg) != alg:
        raise TokenRefused("algorithm", f"key {kid[:40]!r} ({jwk.get('kty')}) does not fit {alg}")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError) as e:
        raise IdentityProviderError(f"{issuer.issuer}: JWKS key {kid[:40]!r} unusable: {str(e)[:80]}") from None
    try:
        claims = jwt.decode(token, key=key, algorithms=[alg], audience=audience, issuer=issuer.issuer,
                            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                     "require": ["iss", "aud", "exp", "iat", "sub"]})
    except jwt.InvalidSignatureError:
        raise TokenRefused("bad_signature", "signature does not verify with the issuer's key") from None
    except jwt.InvalidAudienceError:
        raise TokenRefused("wrong_audience", f"audience is not {audience}") from None
    except jwt.InvalidIssuerError:
        raise TokenRefused("wrong_issuer", f"issuer is not {issuer.issuer}") from None
    except jwt.MissingRequiredClaimError as e:
        raise TokenRefused("malformed", f"missing claim {e.claim}") from None
    except jwt.PyJWTError as e:
        raise TokenRefused("malformed", str(e)[:100]) from None
    _check_times(claims, now, skew)
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != audience:
        raise TokenRefused("wrong_audience", f"several audiences and azp is not {audience}")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise TokenRefused("malformed", "sub must be a non-empty string")
    return claims


def _num(claims: Mapping[str, Any], name: str) -> float | None:
    v = claims.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TokenRefused("malformed", f"{name} is not a number")
    return float(v)


def _check_times(claims: Mapping[str, Any], now: float, skew: int) -> None:
    exp, iat, nbf = _num(claims, "exp"), _num(claims, "iat"), _num(claims, "nbf")
    assert exp is not None and iat is not None  # required above
    if exp <= now - skew:
        raise TokenRefused("expired", f"expired {int(now - exp)}s ago")
    if iat > now + skew:
        raise TokenRefused("not_yet_valid", f"issued {int(iat - now)}s in the future")
    if nbf is not None and nbf > now + skew:
        raise TokenRefused("not_yet_valid", f"not valid for another {int(nbf - now)}s")
    if exp - iat > MAX_LIFETIME:
        raise TokenRefused("lifetime", f"valid for {int(exp - iat)}s, more than {MAX_LIFETIME}s")


def claim_text(claims: Mapping[str, Any], name: str) -> str | None:
    v = claims.get(name)
    return v if isinstance(v, str) else None


def describe(claims: Mapping[str, Any]) -> str:
    return json.dumps({k: claims.get(k) for k in ("iss", "sub", "aud")})[:200]
