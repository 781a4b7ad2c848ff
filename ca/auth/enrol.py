"""Self-enrolment: an administrator invites a person; the person registers their own credentials (rule 86).

``iast-ca user invite NAME`` makes a one-time, short-lived enrolment code
(``XXXX-XXXX-XXXX-XXXX-XXXX-XXXX``, base32: a 40-bit id, then an 80-bit
secret) and prints it, once. Only the SHA-256 of the secret is stored
(``enrolment_codes``), with an ``enrolment_code_created`` event, in one
transaction; an invited name that is not a user yet becomes one, with no
credential at all (``user_added``, ``invited: true``), so nothing but the
code can log in as it.

The person redeems it over SSH: keyboard-interactive, submethod ``enrol``
(``ssh -o KbdInteractiveDevices=enrol alice@ca enroll``, or
``iast-ssh enroll``), answering the one prompt with the code. The code must
exist, be for that user name, be unused and unexpired, and its secret must
hash to the stored value (compared in constant time; an unknown id compares
against a dummy). Failures are throttled and locked like passwords'
(guessable). Such a login runs nothing but ``enroll``
(:func:`ca.rules.check_enrolment_login`), which uses the code inside the
transaction that writes the person's key, password hash and TOTP secret
(:meth:`ca.auth.users.UserStore.redeem`): two connections racing with one
code enrol once. The TOTP secret is in the reply to that person only; the
administrator never sees it, and the audit events name what changed, never
a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ca.auth.base import Challenge, Conversation, Guarding, InteractiveAuthenticator, Refusal
from ca.errors import UsageError
from ca.models import Identity
from ca.rules import ENROLMENT_LOGIN, is_user_name
from ca.store.base import Store

CODE_PROMPT = "Enrolment code: "
SUBMETHODS = ("enrol", "enroll")
DEFAULT_CODE_TTL = 3600
MAX_CODE_TTL = 86400  # an invitation is for today
_CODE = re.compile(r"([A-Z2-7]{4})-?([A-Z2-7]{4})-?([A-Z2-7]{4})-?([A-Z2-7]{4})-?([A-Z2-7]{4})-?([A-Z2-7]{4})")


@dataclass(frozen=True)
class EnrolmentCode:
    code_id: str  # 8 base32 characters
    secret: str  # 16 base32 characters

    @property
    def text(self) -> str:
        s = self.code_id + self.secret
        return "-".join(s[i:i + 4] for i in range(0, len(s), 4))

    @property
    def secret_sha256(self) -> str:
        return hashlib.sha256(self.secret.encode("ascii")).hexdigest()


def new_code() -> EnrolmentCode:
    raw = base64.b32encode(secrets.token_bytes(15)).decode("ascii")  # 120 bits, 24 characters
    return EnrolmentCode(raw[:8], raw[8:])


def parse_code(text: str) -> EnrolmentCode:
    """Read a code as printed (dashes and case optional); :class:`UsageError` if it is not one."""
    m = _CODE.fullmatch(text.strip().upper().replace(" ", "")) if isinstance(text, str) else None
    if m is None:
        raise UsageError("not an enrolment code (expected XXXX-XXXX-XXXX-XXXX-XXXX-XXXX from 'iast-ca user invite')")
    s = "".join(m.groups())
    return EnrolmentCode(s[:8], s[8:])


def code_refusal(store, code_id: str, user: str, now: float) -> str | None:
    """Why the code cannot enrol ``user`` now (unknown, another user's, used, expired), or None.
    ``store`` is a store or a unit of work."""
    row = store.enrolment_codes.get(code_id)
    if row is None:
        return "unknown enrolment code"
    if row.username != user:
        return f"the enrolment code is for {row.username}, not {user}"
    if row.used_at is not None:
        return "the enrolment code was already used"
    if now >= row.expires_at:
        return "the enrolment code has expired"
    return None


class _CodeConversation(Conversation):
    def __init__(self, authn: EnrolmentCodeAuthenticator, user: str, address: str):
        self.authn, self.user, self.address = authn, user, address
        self.answer_text: str | None = None

    async def start(self) -> Challenge:
        return Challenge(prompts=((CODE_PROMPT, False),), instructions="iast-ssh self-enrolment")

    async def answer(self, responses: Sequence[str]) -> Challenge | None:
        self.answer_text = responses[0] if len(responses) == 1 else None
        return None

    def verify(self, now: float) -> Identity | Refusal:
        try:
            code = parse_code(self.answer_text or "")
        except UsageError:
            return Refusal("not an enrolment code")
        row = self.authn.store.enrolment_codes.get(code.code_id)
        stored = row.secret_sha256 if row is not None else "0" * 64
        if not hmac.compare_digest(stored, code.secret_sha256) or row is None:
            return Refusal("unknown enrolment code or wrong secret")
        why = code_refusal(self.authn.store, code.code_id, self.user, now)
        if why is not None:
            return Refusal(why)
        return Identity(user=self.user, auth_methods=(ENROLMENT_LOGIN,), source_address=self.address,
                        subject=code.code_id)


class EnrolmentCodeAuthenticator(InteractiveAuthenticator):
    """A person's one-time enrolment code (keyboard-interactive submethod ``enrol``)."""

    guarding = Guarding(ENROLMENT_LOGIN, guessable=True)
    submethods = SUBMETHODS

    def __init__(self, store: Store):
        self.store = store  # the auth thread's connection

    def accepts(self, user: str) -> bool:
        return is_user_name(user)

    def begin(self, user: str, address: str, hints: Sequence[str] = ()) -> Conversation:
        return _CodeConversation(self, user, address)
