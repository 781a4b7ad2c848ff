"""Hosts log in to the CA service too: with a one-time join token (to enrol), or with their host key (to renew).

A host connects as the account ``host:NAME`` (``ca.rules.host_account``); no
user name contains ``:``, so neither kind of login can pass for the other,
and the service runs only the host commands for such an identity
(``ca.service.handlers``).

* :class:`JoinTokenAuthenticator`, keyboard-interactive: one hidden prompt
  for the join token ``iast-join.HOST.ID.SECRET`` that ``iast-ca host token``
  printed. It must exist, be for that host, be unused and unexpired, and its
  secret must hash to the stored SHA-256 (compared in constant time). The
  token is *used* only by the issuance itself, inside its transaction
  (:meth:`ca.issuance.authority.Authority.issue_host`), so two connections
  racing with one token get one certificate. Guessable as far as the guard
  is concerned: failures are counted and locked like passwords'.
* :class:`HostKeyAuthenticator`, publickey: the key must be the certified key
  of a host certificate this CA issued to that host. The renewal then sends
  that certificate, and the authority decides: current, unrevoked, ours.
  (An expired or revoked one still logs in, so that the refusal is precise,
  one line to the host and a ``host_denied`` event, rather than a bare
  "permission denied"; such a login can run nothing but host commands.)

Why the token is an authenticator rather than a field of an unauthenticated
command: every connection to the CA authenticates (docs/security.md rule 14),
so the command parser and the issue thread never see a stranger; a wrong
token costs the client a throttled login, audited as ``auth_failed``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ca.auth.base import Challenge, Conversation, Guarding, InteractiveAuthenticator, KeyAuthenticator, Refusal
from ca.errors import UsageError
from ca.models import Identity
from ca.rules import HOST_ACCOUNT_PREFIX, check_host_name, host_of_account
from ca.sshcert.certificates import fingerprint
from ca.store.base import Store

TOKEN_PREFIX = "iast-join"
TOKEN_PROMPT = "Join token: "
MAX_TOKEN_TTL = 7 * 86400  # a join token is for now, not for later: a week at most
_TOKEN = re.compile(r"iast-join\.([a-z0-9-]{1,63})\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class JoinToken:
    host: str
    token_id: str
    secret: str

    @property
    def text(self) -> str:
        return f"{TOKEN_PREFIX}.{self.host}.{self.token_id}.{self.secret}"

    @property
    def secret_sha256(self) -> str:
        return secret_sha256(self.secret)


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_join_token(host: str) -> JoinToken:
    """A fresh token for ``host``: a 64-bit id and a 256-bit secret."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    return JoinToken(check_host_name(host), secrets.token_hex(8), secret)


def parse_join_token(text: str) -> JoinToken:
    """Read a token as printed by ``iast-ca host token``; :class:`UsageError` if it is not one."""
    m = _TOKEN.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise UsageError("not a join token (expected iast-join.HOST.ID.SECRET, as 'iast-ca host token' prints it)")
    return JoinToken(m.group(1), m.group(2), m.group(3))


def token_refusal(store, token_id: str, host: str, now: float) -> str | None:
    """Why the token ``token_id`` cannot enrol ``host`` now (unknown, another host's, used,
    expired), or None. ``store`` is a store or a unit of work."""
    row = store.join_tokens.get(token_id)
    if row is None:
        return "unknown join token"
    if row.host != host:
        return f"the join token is for host {row.host}, not {host}"
    if row.used_at is not None:
        return f"the join token was already used (serial {row.used_serial})"
    if now >= row.expires_at:
        return "the join token has expired"
    return None


class _TokenConversation(Conversation):
    def __init__(self, authn: JoinTokenAuthenticator, user: str, address: str):
        self.authn, self.user, self.address = authn, user, address
        self.answer_text: str | None = None

    async def start(self) -> Challenge:
        return Challenge(prompts=((TOKEN_PROMPT, False),), instructions="iast-ssh host enrolment")

    async def answer(self, responses: Sequence[str]) -> Challenge | None:
        self.answer_text = responses[0] if len(responses) == 1 else None
        return None

    def verify(self, now: float) -> Identity | Refusal:
        host = host_of_account(self.user)
        if host is None:
            return Refusal("not a host account")
        try:
            token = parse_join_token(self.answer_text or "")
        except UsageError:
            return Refusal("not a join token")
        row = self.authn.store.join_tokens.get(token.token_id)
        # Constant-time compare of the hashes; a missing row compares against a dummy.
        stored = row.secret_sha256 if row is not None else "0" * 64
        if not hmac.compare_digest(stored, token.secret_sha256) or row is None:
            return Refusal("unknown join token or wrong secret")
        why = token_refusal(self.authn.store, token.token_id, host, now)
        if why is None and token.host != host:
            why = f"the join token names host {token.host}, not {host}"
        if why is not None:
            return Refusal(why)
        return Identity(user=self.user, auth_methods=("join-token",), source_address=self.address,
                        subject=token.token_id)


class JoinTokenAuthenticator(InteractiveAuthenticator):
    """A host's one-time join token, for ``host:NAME`` accounts only."""

    guarding = Guarding("join-token", guessable=True)

    def __init__(self, store: Store):
        self.store = store  # the auth thread's connection

    def accepts(self, user: str) -> bool:
        return user.startswith(HOST_ACCOUNT_PREFIX)

    def begin(self, user: str, address: str, hints: Sequence[str] = ()) -> Conversation:
        return _TokenConversation(self, user, address)


class HostKeyAuthenticator(KeyAuthenticator):
    """A host key with a current certificate from this CA, for ``host:NAME`` accounts only."""

    guarding = Guarding("host-key", guessable=False, audit_failures=False)

    def __init__(self, store: Store):
        self.store = store

    def check_key(self, user: str, key_blob: bytes, address: str, now: float) -> Identity | Refusal:
        if host_of_account(user) is None:
            return Refusal("not a host account")
        fp = fingerprint(bytes(key_blob))
        if any(row.key_id.startswith("iast-host:") for row in self.store.certificates.current_of(user, fp, 0)):
            return Identity(user=user, auth_methods=("host-key",), source_address=address, login_key=fp)
        return Refusal("no host certificate of this CA for this key")
