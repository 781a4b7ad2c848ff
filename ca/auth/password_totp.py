"""Log in with a password, then a one-time code (SSH ``keyboard-interactive``); and the step-up code.

The client is always asked for both, so the answer never tells whether the
password was right, and is not told which factor failed. The code is
checked only after a right password: checking uses the code up (no
replay), and a stranger must not be able to burn the user's current code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ca.auth.base import (
    Challenge,
    Conversation,
    Guarding,
    InteractiveAuthenticator,
    Refusal,
    StepUp,
)
from ca.auth.users import TOTP_OK, TOTP_REPLAY, TOTP_WRONG, UserStore
from ca.models import Identity

PASSWORD = Challenge(prompts=(("Password: ", False),))
# What the audit log says of a right one-time code used a second time (README, "Log in").
REPLAY_WHY = "replay: this one-time code was already used"
CODE = Challenge(prompts=(("One-time code: ", True),), name="")


def _one(responses: Sequence[str]) -> str:
    return responses[0] if len(responses) == 1 else ""


class PasswordTotpAuthenticator(InteractiveAuthenticator, StepUp):
    """Password (argon2id) then TOTP code, both of an enabled user."""

    guarding = Guarding("keyboard-interactive", guessable=True)
    submethods = ("password",)
    # A one-time code sent with a request (``sign --otp``): throttled and audited like a
    # login, but a right code does not clear the account's failures.
    step_up_guarding = Guarding("otp-step-up", guessable=True, clear_on_success=False)

    def __init__(self, users: UserStore):
        self.users = users

    def begin(self, user: str, address: str, hints: Sequence[str] = ()) -> Conversation:
        return _PasswordThenCode(self, user, address)

    def check(self, user: str, password: str, code: str, address: str, now: float) -> Identity | Refusal:
        pw_ok = self.users.check_password(user, password)
        verdict = self.users.totp_verdict(user, code, now) if pw_ok else TOTP_WRONG
        if verdict == TOTP_OK:
            return Identity(user=user, auth_methods=("password", "totp"), mfa=True, source_address=address)
        if verdict == TOTP_REPLAY:  # the password was right: only the audit log is told (Refusal.why)
            return Refusal(REPLAY_WHY)
        return Refusal("wrong password or one-time code")

    def step_up(self, user: str, code: str) -> Callable[[float], bool | Refusal]:
        """The check for a step-up code, to run under the guard with :attr:`step_up_guarding`."""

        def verify(now: float) -> bool | Refusal:
            verdict = self.users.totp_verdict(user, code, now)
            if verdict == TOTP_OK:
                return True
            return Refusal(REPLAY_WHY if verdict == TOTP_REPLAY else "one-time code refused")

        return verify


class _PasswordThenCode(Conversation):
    def __init__(self, authn: PasswordTotpAuthenticator, user: str, address: str):
        self.authn, self.user, self.address = authn, user, address
        self.password: str | None = None
        self.code: str | None = None

    async def start(self) -> Challenge:
        return PASSWORD

    async def answer(self, responses: Sequence[str]) -> Challenge | None:
        if self.password is None:
            # Always ask for the code, so the answer never tells whether the password was right.
            self.password = _one(responses)
            return CODE
        self.code = _one(responses)
        return None

    def verify(self, now: float) -> Identity | Refusal:
        return self.authn.check(self.user, self.password or "", self.code or "", self.address, now)
