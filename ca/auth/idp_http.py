"""Talking to an identity provider over HTTPS: discovery, JWKS, form posts; bounded in time and size.

One :class:`IssuerClient` per issuer (an ``[oidc.NAME]`` or ``[workload.NAME]``
section). Every call has a timeout and a size cap, and any failure (no
route, TLS, a slow or huge answer, HTML instead of JSON) is one
:class:`~ca.errors.IdentityProviderError` line: an IdP having a bad day fails
SSO cleanly and never hangs the service or blocks key and password logins
(docs/security.md, the SSO rules at the end). TLS is always verified, against
the system store or the section's ``ca_file``.

Discovery (``/.well-known/openid-configuration``, OpenID Connect Discovery
1.0 section 4) and the JWKS are cached; an unknown ``kid`` refreshes the
JWKS at most once per :data:`JWKS_REFRESH` seconds, so a flood of tokens
with made-up key ids cannot turn the CA into a load generator against the IdP.

Async, on the service's event loop (:mod:`ca.auth.base`: conversations may
await there, and must not block).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ca.errors import IdentityProviderError

MAX_DOCUMENT = 256 * 1024  # discovery, JWKS and token answers are a few KB; a megabyte is an attack or a bug
MAX_KEYS = 64
METADATA_TTL = 3600  # seconds a discovery document is trusted before it is fetched again
JWKS_TTL = 3600
JWKS_REFRESH = 60  # at most one JWKS refresh per minute on an unknown kid


class IssuerClient:
    """Discovery and keys of one issuer, fetched over HTTPS and cached."""

    def __init__(self, issuer: str, *, ca_file: Path | None = None, timeout: float = 5.0,
                 clock: Callable[[], float] = time.time):
        self.issuer = issuer
        self.ca_file = ca_file
        self.timeout = timeout
        self.clock = clock
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: dict[str, dict[str, Any]] | None = None
        self._keys_at = 0.0
        self._refreshed_at = -JWKS_REFRESH
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(self.ca_file))
                                             if self.ca_file else True)
            self._client = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(self.timeout),
                                             follow_redirects=False, trust_env=False,
                                             headers={"accept": "application/json"})
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- one bounded request ------------------------------------------------------------

    async def request_json(self, method: str, url: str, *, data: dict[str, str] | None = None,
                           auth: tuple[str, str] | None = None, ok_statuses: tuple[int, ...] = (200,)
                           ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object) of one request; IdentityProviderError with one line otherwise."""
        if not url.startswith("https://"):
            raise IdentityProviderError(f"{self.issuer}: refusing a non-HTTPS URL {url[:80]!r}")
        try:
            async with self._http().stream(method, url, data=data, auth=auth) as r:
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise IdentityProviderError(f"{url}: answer larger than {MAX_DOCUMENT} bytes")
                status, ctype = r.status_code, r.headers.get("content-type", "")
        except httpx.TimeoutException:
            raise IdentityProviderError(f"{url}: no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as e:
            raise IdentityProviderError(f"{url}: {type(e).__name__}: {str(e)[:120] or 'request failed'}") from None
        if status not in ok_statuses:
            raise IdentityProviderError(f"{url}: HTTP {status}")
        if "json" not in ctype.lower():
            raise IdentityProviderError(f"{url}: expected JSON, got {ctype.split(';')[0] or 'no content type'}")
        try:
            import json

            doc = json.loads(bytes(body))
        except ValueError:
            raise IdentityProviderError(f"{url}: not valid JSON") from None
        if not isinstance(doc, dict):
            raise IdentityProviderError(f"{url}: expected a JSON object")
        return status, doc

    # -- discovery and keys ------------------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        """The discovery document (cached); its ``issuer`` must be ours exactly (Discovery 4.3)."""
        now = self.clock()
        if self._metadata is not None and now - self._metadata_at < METADATA_TTL:
            return self._metadata
        _, doc = await self.request_json("GET", self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if doc.get("issuer") != self.issuer:
            raise IdentityProviderError(f"{self.issuer}: discovery names another issuer {str(doc.get('issuer'))[:80]!r}")
        for field in ("jwks_uri",):
            if not isinstance(doc.get(field), str):
                raise IdentityProviderError(f"{self.issuer}: discovery has no {field}")
        self._metadata, self._metadata_at = doc, now
        return doc

    async def endpoint(self, name: str) -> str:
        url = (await self.metadata()).get(name)
        if not isinstance(url, str):
            raise IdentityProviderError(f"{self.issuer}: discovery has no {name}")
        return url

    async def _fetch_keys(self) -> dict[str, dict[str, Any]]:
        _, doc = await self.request_json("GET", await self.endpoint("jwks_uri"))
        keys = doc.get("keys")
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            raise IdentityProviderError(f"{self.issuer}: JWKS has no 'keys' list of at most {MAX_KEYS}")
        out: dict[str, dict[str, Any]] = {}
        for k in keys:
            if isinstance(k, dict) and isinstance(k.get("kid"), str) and k.get("use", "sig") == "sig":
                out[k["kid"]] = k
        return out

    async def key(self, kid: str) -> dict[str, Any] | None:
        """The JWK with this ``kid``, or None; an unknown kid refreshes the JWKS at most once a minute."""
        now = self.clock()
        if self._keys is None or now - self._keys_at >= JWKS_TTL:
            self._keys, self._keys_at = await self._fetch_keys(), now
            self._refreshed_at = now
        if kid not in self._keys and now - self._refreshed_at >= JWKS_REFRESH:
            self._refreshed_at = now
            self._keys, self._keys_at = await self._fetch_keys(), now
        return self._keys.get(kid)
