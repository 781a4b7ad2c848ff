"""The one error tree of the CA.

Every error the library raises is a :class:`CAError`. Each kind carries a
stable ``code`` (used in audit rows, JSON output and wire errors) and an
``exit_status``. Only entry points turn them into process exit codes, and the
numbers are named here and nowhere else:

    0 ok, 1 error, 2 usage, 3 denied by policy, 4 authentication failed,
    5 not found (no such user, request, event), 130 interrupted (Ctrl-C).

A closed output pipe (``iast-ca audit list | head``) is not an error: the
tools stop writing and exit 0, quietly (see :class:`ca.cli.common.Group`).
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_AUTH = 4
EXIT_NOT_FOUND = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class CAError(Exception):
    """Base of every error the CA raises on purpose."""

    code = "error"
    exit_status = EXIT_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(CAError):
    """The service config is missing, unreadable or invalid."""

    code = "config"


class PolicyError(CAError):
    """The policy file is invalid; the message names file, role and field.

    ``errors`` holds every mistake the parser found in one run (the message is the first,
    with a count of the rest), so ``iast-ca policy check`` can list them all."""

    code = "policy"

    def __init__(self, message: str, errors: tuple[str, ...] = ()):
        super().__init__(message)
        self.errors = errors or (message,)


def did_you_mean(word: str, choices: Iterable[object]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``choices`` to ``word`` (difflib), or ``""``."""
    import difflib  # here, not at the top: every command imports this module

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class UsageError(CAError):
    """A request or command line that cannot be understood."""

    code = "usage"
    exit_status = EXIT_USAGE


class NotFound(CAError):
    """The thing named does not exist: no such user, request or event (exit 5, code ``not_found``).
    The command line was understood, so it is not a usage error."""

    code = "not_found"
    exit_status = EXIT_NOT_FOUND


class BadKey(CAError):
    """A key is unreadable, of a refused type, or too weak."""

    code = "key"


class StateError(CAError):
    """The state directory is missing, incomplete, or already initialised."""

    code = "state"


class PolicyDenied(CAError):
    """Policy refused the request. The message is safe to show the requester."""

    code = "denied"
    exit_status = EXIT_DENIED


class AuthenticationFailed(CAError):
    """The requester could not be authenticated (or not strongly enough)."""

    code = "auth"
    exit_status = EXIT_AUTH


class MFARequired(AuthenticationFailed):
    """The role needs a second factor this request has not shown (exit 4, code ``mfa_required``),
    so a client knows to ask for a one-time code and retry."""

    code = "mfa_required"


class ReauthenticationRequired(AuthenticationFailed):
    """The role needs a sign-in at the identity provider more recent than the one shown
    (``max_auth_age``; exit 4, code ``reauthentication_required``): log in again with SSO."""

    code = "reauthentication_required"


class IdentityProviderError(CAError):
    """An identity provider could not be reached or answered nonsense (one line; code ``idp``)."""

    code = "idp"


class HostKeyChanged(CAError):
    """The CA presented a host key other than the pinned one; nothing was sent to it.

    A plain error (exit 1): neither a usage mistake nor a refusal by the
    CA. It may be an attack, or a re-installed CA.
    """

    code = "host_key_changed"


class SigningError(CAError):
    """The signer failed, or its output did not verify."""

    code = "signing"


class AuditError(CAError):
    """The audit log could not be written or read."""

    code = "audit"


class AuditUnavailable(AuditError):
    """The audit database cannot be reached (an outage): nothing was issued; retry later."""

    code = "audit_unavailable"


class ChainBroken(AuditError):
    """The audit log's hash chain or a checkpoint does not verify."""

    code = "chain"

    def __init__(self, message: str, event_id: int | None = None):
        super().__init__(message)
        self.event_id = event_id
