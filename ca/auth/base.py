"""The authenticator seam: what an SSH connection presented -> an :class:`~ca.models.Identity`, or a refusal.

One authenticator per way of logging in, one module each in ``ca/auth/``:
:mod:`ca.auth.pubkey` (an enrolled public key) and :mod:`ca.auth.password_totp`
(keyboard-interactive: password, then one-time code). A new provider (an
OIDC device flow, a workload JWT) is one more module that subclasses
:class:`KeyAuthenticator` or :class:`InteractiveAuthenticator`, and one line
in the composition root (:mod:`ca.app`) that adds it to the CA's list.

An authenticator only *checks*. Throttling, lockout and the audit of
failures are the guard's (:class:`ca.auth.guard.Guard`), the same for all
of them: the service runs every check through it, and an authenticator
says only how the guard should treat it (:class:`Guarding`).

Threads: :meth:`KeyAuthenticator.check_key` and :meth:`Conversation.verify`
block (SQLite, argon2) and run on the service's authentication thread,
under the guard. :meth:`Conversation.start` and :meth:`Conversation.answer`
run on the event loop: they may await (an OIDC flow polls its issuer there)
but must not block.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ca.models import Identity


@dataclass(frozen=True)
class Refusal:
    """A check that said no. ``why`` goes to the audit log and the service log, never to the client
    (which is not told which factor failed)."""

    why: str
    count: bool = True  # counts toward the throttle (a refusal for being throttled does not)


@dataclass(frozen=True)
class Guarding:
    """How the guard treats one kind of check.

    ``guessable``: the secret can be guessed (a password, a one-time code).
    Such a check is refused while the account *or* the address is locked,
    its failures are counted toward both, and a success clears the
    account's counter. Otherwise (a key, a signed token) only a locked
    address refuses it, and nothing is counted: an account locked by
    password failures still logs in with its key, else anyone could lock
    anyone out (docs/security.md rule 15).

    ``audit_failures``: record each failure as an ``auth_failed`` event.
    Keys do not: an agent offers several, and the connection's one
    ``auth_failed`` event on close lists them (:meth:`Guard.connection_failed`).

    ``clear_on_success``: a success clears the account's counter (a
    guessable login does; a step-up code sent with a request does not).
    """

    method: str  # the name in audit events and the service log
    guessable: bool
    audit_failures: bool = True
    clear_on_success: bool = True
    # A signed token refused (OIDC, workload): not guessable, so no account lock, but each
    # refusal counts toward the source address's limit (the SSH user name is not who the
    # token names, so counting it against that account would let anyone lock anyone out).
    count_address: bool = False


class Authenticator(ABC):
    """One way to log in to the CA service."""

    #: the SSH authentication method it answers: "publickey" or "keyboard-interactive"
    ssh_method: ClassVar[str]
    guarding: ClassVar[Guarding]


class KeyAuthenticator(Authenticator):
    """SSH ``publickey``: asyncssh proves possession of the key; this says whether it may log in."""

    ssh_method = "publickey"

    @abstractmethod
    def check_key(self, user: str, key_blob: bytes, address: str, now: float) -> Identity | Refusal:
        """Blocking; on the authentication thread, under the guard."""


@dataclass(frozen=True)
class Challenge:
    """One keyboard-interactive round: text for the client to show, and what to ask for."""

    prompts: tuple[tuple[str, bool], ...]  # (prompt, echo the answer)
    name: str = "iast-ssh"
    instructions: str = ""

    def as_asyncssh(self) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return self.name, self.instructions, "", list(self.prompts)


class Conversation(ABC):
    """One keyboard-interactive exchange with one connection, from the first prompt to the check."""

    @abstractmethod
    async def start(self) -> Challenge:
        """The first round (on the event loop; must not block)."""

    @abstractmethod
    async def answer(self, responses: Sequence[str]) -> Challenge | None:
        """Take one round's answers: the next round, or None once everything is in (on the event loop)."""

    @abstractmethod
    def verify(self, now: float) -> Identity | Refusal:
        """Check what was collected. Blocking; on the authentication thread, under the guard."""


class StepUp(ABC):
    """An authenticator that can also check a one-time code sent with a request (``sign --otp``)."""

    step_up_guarding: ClassVar[Guarding]

    @abstractmethod
    def step_up(self, user: str, code: str) -> Callable[[float], bool | Refusal]:
        """The check, to run under the guard with :attr:`step_up_guarding` (blocking)."""


class RequestAuthenticator(Authenticator):
    """A credential sent *with one request*, not at SSH login (a workload's signed token:
    ``sign --token -``, its first stdin line). The SSH connection itself is accepted by
    ``none`` only for the reserved user name that asks for this (docs/security.md rule 14);
    the credential then authenticates exactly that one request."""

    ssh_method = "none"

    @abstractmethod
    async def check(self, credential: str, address: str) -> Callable[[float], Identity | Refusal]:
        """On the event loop (may await its issuer, must not block): the blocking rest of the
        check (replay, through the store), to run on the auth thread under the guard."""


class InteractiveAuthenticator(Authenticator):
    """SSH ``keyboard-interactive``: rounds of prompts and answers, then a check."""

    ssh_method = "keyboard-interactive"
    #: the keyboard-interactive submethods (RFC 4256 section 3.1) that ask for this one
    #: (``ssh -o KbdInteractiveDevices=password``); with none asked for, the CA's first is used
    submethods: tuple[str, ...] = ()

    def accepts(self, user: str) -> bool:
        """Whether this authenticator answers for ``user``. By default every name without a colon:
        a colon marks another kind of account (``host:NAME``, which no user name can be), answered
        by its own authenticator (a host's join token)."""
        return ":" not in user

    @abstractmethod
    def begin(self, user: str, address: str, hints: Sequence[str] = ()) -> Conversation:
        """A new conversation for ``user`` (any name: unknown names take the same path, rule 14).
        ``hints``: the client's other submethods (``role:NAME`` asks SSO for the sign-in that role needs)."""
