"""Single sign-on for people with plain ``ssh``: the OIDC device authorization grant (RFC 8628).

keyboard-interactive, one round with no prompts: the instructions show the
verification URL, the user code and the complete URL (OpenSSH prints them;
``iast-ssh login --sso`` prints them and opens a browser). The CA then polls
the IdP's token endpoint on the event loop as RFC 8628 section 3.5 says
(``interval``, ``slow_down`` adds 5 s, ``expired_token``/``access_denied``
end it), within the login timeout, and checks the ID token it gets
(:func:`ca.auth.tokens.verify_token`). :meth:`_DeviceLogin.verify`, on the
auth thread under the guard, remembers the token (replay, through the
store) and returns the :class:`~ca.models.Identity`: issuer, subject,
``auth_time``, ``amr`` and the groups as ``idp:NAME:GROUP``.

The user name comes from one claim (``username_claim``): the local part of
a verified ``email`` in ``allowed_domains``, or a claim such as
``preferred_username``, always through :func:`ca.rules.check_user_name`
(docs/security.md rule 2's validator, the same as everywhere).

A refused token is not guessable (it is signed), so it never locks an
account; it counts toward the source address's limit (docs/security.md rule 15).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from ca.auth.base import Challenge, Conversation, Guarding, InteractiveAuthenticator, Refusal
from ca.auth.idp_http import IssuerClient
from ca.auth.tokens import TokenRefused, replay_key, token_hash, verify_token
from ca.config import OIDCProvider
from ca.errors import CAError, IdentityProviderError
from ca.models import Identity
from ca.rules import is_user_name
from ca.store import Store

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MAX_GROUPS = 256


class OIDCAuthenticator(InteractiveAuthenticator):
    """One ``[oidc.NAME]`` identity provider, through its device flow."""

    guarding = Guarding("oidc", guessable=False, count_address=True)

    def __init__(self, provider: OIDCProvider, store: Store, *, skew: int, login_timeout: int,
                 clock: Callable[[], float] = time.time, sleep=asyncio.sleep,
                 role_auth_age: Callable[[str], int | None] = lambda role: None):
        self.provider = provider
        self.store = store
        self.skew = skew
        self.login_timeout = login_timeout
        self.clock = clock
        self.sleep = sleep
        self.role_auth_age = role_auth_age  # a role's max_auth_age in the current policy
        self.submethods = (f"sso:{provider.name}", "sso")
        self.issuer = IssuerClient(provider.issuer, ca_file=provider.ca_file, timeout=provider.timeout, clock=clock)

    @property
    def name(self) -> str:
        return self.provider.name

    def begin(self, user: str, address: str, hints: Sequence[str] = ()) -> Conversation:
        return _DeviceLogin(self, address, self.max_age_for(hints))

    def max_age_for(self, hints: Sequence[str]) -> tuple[int | None, bool]:
        """(max_age, prompt=login) for the device authorization request.

        The role is in the exec command, which SSH sends only *after* authentication, so
        the CA cannot know it here unless the login names it: a ``role:NAME`` submethod
        (``ssh -o KbdInteractiveDevices=role:prod-admin``; ``iast-ssh login --sso --role``
        sends it). For a role with ``max_auth_age`` the IdP is then asked for a sign-in that
        recent (``max_age``) and a fresh one (``prompt=login``); the role's check at issue
        time (docs/security.md rule 35) stays the one that decides."""
        ages = [a for a in (self.role_auth_age(h[len("role:"):]) for h in hints if h.startswith("role:"))
                if a is not None]
        own = self.provider.max_age
        if not ages:
            return own, False
        return min(ages + ([own] if own is not None else [])), True

    # -- claims -> identity (pure) -----------------------------------------------------

    def identity(self, claims: dict[str, Any], token: str, address: str) -> Identity | Refusal:
        p = self.provider
        email = claims.get("email")
        verified = claims.get("email_verified") is True
        if p.allowed_domains or p.username_claim == "email":
            if not isinstance(email, str) or "@" not in email:
                return Refusal("oidc: the token has no email")
            if not verified:
                return Refusal(f"oidc: email {email[:80]!r} is not verified")
            if email.rsplit("@", 1)[1].lower() not in p.allowed_domains:
                return Refusal(f"oidc: email domain of {email[:80]!r} is not allowed")
        raw = email.rsplit("@", 1)[0].lower() if p.username_claim == "email" else claims.get(p.username_claim)
        if not is_user_name(raw):
            return Refusal(f"oidc: {p.username_claim} gives no valid user name ({str(raw)[:40]!r})")
        groups = claims.get(p.groups_claim, [])
        if not isinstance(groups, list):
            groups = []
        qualified = tuple(f"idp:{p.name}:{g}" for g in groups[:MAX_GROUPS]
                          if isinstance(g, str) and 0 < len(g) <= 128 and g.isprintable())
        auth_time = claims.get("auth_time")
        amr = claims.get("amr")
        acr = claims.get("acr")
        return Identity(
            user=raw, auth_methods=("oidc",), mfa=False, source_address=address, groups=qualified,
            issuer=p.issuer, subject=claims["sub"],
            auth_time=int(auth_time) if isinstance(auth_time, (int, float)) and not isinstance(auth_time, bool)
            else None,
            amr=tuple(a for a in amr if isinstance(a, str))[:16] if isinstance(amr, list) else (),
            acr=acr[:128] if isinstance(acr, str) and acr.isprintable() else None,
            token_hash=token_hash(token),
        )

    def remember(self, claims: dict[str, Any], token: str, now: float) -> bool:
        """Record the token as used (until it expires); False if it was used before. Blocking."""
        with self.store.transaction() as tx:
            return tx.tokens.use(replay_key(self.provider.issuer, claims, token), self.provider.issuer,
                                 int(claims["exp"]) + self.skew, int(now))


class _DeviceLogin(Conversation):
    def __init__(self, authn: OIDCAuthenticator, address: str, max_age: tuple[int | None, bool] = (None, False)):
        self.authn, self.address = authn, address
        self.max_age, self.fresh = max_age
        self.device: dict[str, Any] | None = None
        self.started = 0.0
        self.failure: str | None = None
        self.claims: dict[str, Any] | None = None
        self.token = ""

    async def start(self) -> Challenge:
        a, p = self.authn, self.authn.provider
        self.started = a.clock()
        data = {"client_id": p.client_id, "scope": " ".join(p.scopes)}
        if self.max_age is not None:
            data["max_age"] = str(self.max_age)
        if self.fresh:
            data["prompt"] = "login"
        try:
            url = await a.issuer.endpoint("device_authorization_endpoint")
            _, device = await a.issuer.request_json("POST", url, data=data, auth=_client_auth(p))
            for field in ("device_code", "user_code", "verification_uri"):
                if not isinstance(device.get(field), str):
                    raise IdentityProviderError(f"{url}: the answer has no {field}")
        except CAError as e:
            self.failure = f"oidc: identity provider unavailable: {e.message}"
            return Challenge(prompts=(), name=f"Sign-in with {p.name}",
                             instructions=f"Single sign-on with {p.name} is unavailable right now.\n")
        self.device = device
        text = (f"To sign in with {p.name}, open {device['verification_uri']} and enter the code "
                f"{device['user_code']}\n")
        if isinstance(device.get("verification_uri_complete"), str):
            text += f"or open {device['verification_uri_complete']}\n"
        text += "Waiting for the sign-in to be approved...\n"
        # No prompts: the client answers at once and the CA polls while the person signs in.
        return Challenge(prompts=(), name=f"Sign-in with {p.name}", instructions=text)

    async def answer(self, responses: Sequence[str]) -> Challenge | None:
        if self.device is not None and self.failure is None:
            try:
                await self._poll()
            except CAError as e:
                self.failure = f"oidc: identity provider unavailable: {e.message}"
        return None

    async def _poll(self) -> None:
        a, p, device = self.authn, self.authn.provider, self.device
        assert device is not None
        interval = _number(device.get("interval"), 5, 1, 60)
        # The device code's life, and the SSH login timeout, bound the wait (leave time to answer).
        deadline = self.started + min(_number(device.get("expires_in"), 300, 1, 1800), a.login_timeout - 2)
        url = await a.issuer.endpoint("token_endpoint")
        while True:
            if a.clock() + interval > deadline:
                self.failure = f"oidc: device login not approved within {int(deadline - self.started)}s"
                return
            await a.sleep(interval)
            status, reply = await a.issuer.request_json(
                "POST", url, data={"grant_type": DEVICE_GRANT, "device_code": device["device_code"],
                                   "client_id": p.client_id},
                auth=_client_auth(p), ok_statuses=(200, 400, 401))
            if status == 200:
                token = reply.get("id_token")
                if not isinstance(token, str):
                    self.failure = "oidc: the token endpoint sent no id_token (is the openid scope allowed?)"
                    return
                await self._check(token)
                return
            error = reply.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":  # RFC 8628 3.5: add 5 seconds to the interval from now on
                interval += 5
                continue
            self.failure = f"oidc: device login ended: {str(error)[:40]} ({str(reply.get('error_description', ''))[:80]})"
            return

    async def _check(self, token: str) -> None:
        a = self.authn
        try:
            self.claims = await verify_token(token, a.issuer, a.provider.client_id, now=a.clock(), skew=a.skew)
            self.token = token
        except TokenRefused as e:
            self.failure = f"oidc: token refused: {e}"

    def verify(self, now: float) -> Identity | Refusal:
        if self.failure is not None:
            # An outage is not the person's doing: audited, but not counted toward any lock.
            return Refusal(self.failure, count="unavailable" not in self.failure)
        if self.claims is None:
            return Refusal("oidc: no sign-in")
        identity = self.authn.identity(self.claims, self.token, self.address)
        if isinstance(identity, Refusal):
            return identity
        if not self.authn.remember(self.claims, self.token, now):
            return Refusal("oidc: token refused: replay: this token was used before")
        return identity


def _client_auth(p: OIDCProvider) -> tuple[str, str] | None:
    secret = p.client_secret()
    return (p.client_id, secret) if secret else None


def _number(v: Any, default: float, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return default
    return max(lo, min(hi, float(v)))
