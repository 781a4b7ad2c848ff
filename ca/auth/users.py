"""The user store: who may log in to the CA service, and with what.

Users live in the store beside the audit log (``ca.db``), so that every
change to a user is committed in the same transaction as its audit event:
there is no enrolment without a record of who did it.

A user logs in with an enrolled public key, or with a password followed by
a TOTP code (keyboard-interactive). The rules this module keeps:

* passwords are stored as argon2id hashes only, and rehashed on the next
  successful login when the parameters change (docs/security.md rule 17);
* an unknown, disabled or password-less user is checked against a dummy
  hash with the same parameters: same code path, same timing (rule 14);
* a TOTP code is accepted once only: the last accepted step is stored, and
  read, compared and updated in one write transaction of the store, so two
  connections racing with one code cannot both win (rule 16);
* no password, hash, TOTP secret or code ever goes into an audit event, a
  log line, or a :class:`User` (rule 13).
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ca.auth.totp import generate_secret, matching_step, provisioning_uri
from ca.errors import NotFound, UsageError
from ca.rules import RESERVED_PRINCIPALS, check_not_reserved, check_user_name, free_text, is_user_name
from ca.sshcert.certificates import fingerprint
from ca.sshcert.userkey import DEFAULT_MIN_RSA_BITS, parse_user_key
from ca.store.base import Store, UserRow

TOTP_OK, TOTP_REPLAY, TOTP_WRONG = "ok", "replay", "wrong"

MIN_PASSWORD_LENGTH = 12  # NIST SP 800-63B allows 8; a CA guarding root access asks for more
MAX_PASSWORD_LENGTH = 1024  # the hash cost does not grow with length, but nobody needs more

# argon2id, above OWASP's floor (m=19 MiB, t=2, p=1): 64 MiB, 3 passes, 1 lane.
DEFAULT_TIME_COST = 3
DEFAULT_MEMORY_COST = 65536  # KiB
DEFAULT_PARALLELISM = 1


def default_hasher() -> PasswordHasher:
    """The argon2id hasher new passwords are hashed with (docs/security.md rule 17)."""
    return PasswordHasher(time_cost=DEFAULT_TIME_COST, memory_cost=DEFAULT_MEMORY_COST,
                          parallelism=DEFAULT_PARALLELISM)


@dataclass(frozen=True)
class EnrolledKey:
    """A public key enrolled for a user."""

    fingerprint: str
    algorithm: str
    public: str  # the OpenSSH line "TYPE BASE64", without a comment
    added: str
    comment: str = ""  # the comment of the line it was enrolled from (user@laptop), or ""

    @classmethod
    def from_row(cls, fingerprint: str, algorithm: str, stored: str, added: str) -> EnrolledKey:
        """A ``user_keys`` row: its ``public`` column holds the line as enrolled, comment kept
        (``TYPE BASE64 [COMMENT]``; only the first two fields are ever checked)."""
        parts = stored.split(None, 2)
        return cls(fingerprint, algorithm, " ".join(parts[:2]), added, parts[2] if len(parts) > 2 else "")

    def as_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class User:
    """A user as others may see it: never the password hash or the TOTP secret."""

    name: str
    disabled: bool
    disabled_reason: str | None
    has_password: bool
    has_totp: bool
    keys: tuple[EnrolledKey, ...]
    created: str

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "disabled": self.disabled,
            "disabled_reason": self.disabled_reason,
            "has_password": self.has_password,
            "has_totp": self.has_totp,
            "keys": [k.as_json() for k in self.keys],
            "created": self.created,
        }


@dataclass(frozen=True)
class Enrolment:
    """What ``add`` and ``reset_totp`` return: the TOTP secret, this once only."""

    user: User
    totp_secret: str | None
    totp_uri: str | None


@dataclass(frozen=True)
class Invitation:
    """What ``invite`` returns: the enrolment code, this once only (the store keeps its hash)."""

    user: str
    code: str
    code_id: str
    expires_at: int
    user_created: bool

    def as_json(self) -> dict:
        return {"user": self.user, "code": self.code, "code_id": self.code_id, "expires_at": self.expires_at,
                "user_created": self.user_created}


def check_password_policy(password: object) -> str:
    """Refuse (with :class:`UsageError`) a password that is not text or too short or long."""
    if not isinstance(password, str) or not password:
        raise UsageError("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"the password is too short: at least {MIN_PASSWORD_LENGTH} characters are required")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UsageError(f"the password is too long: at most {MAX_PASSWORD_LENGTH} characters")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


class UserStore:
    """The users of one CA, in its store (``audit``: the :class:`ca.store.Store`).

    A lock serialises this object's use of the store between threads (the
    service verifies passwords in worker threads). The slow argon2 work
    runs outside the lock.
    """

    def __init__(
        self,
        audit: Store,
        *,
        min_rsa_bits: int = DEFAULT_MIN_RSA_BITS,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
    ):
        self.audit = audit
        self.min_rsa_bits = min_rsa_bits
        self.clock = clock
        self.hasher = hasher or default_hasher()
        self._lock = threading.RLock()
        # Checked for unknown, disabled and password-less users (rule 14). It
        # is a well-formed argon2 hash with this hasher's parameters, a random
        # salt and a random digest (no password hashes to it), so verifying
        # against it does exactly the work a real hash costs, without paying
        # for a hash at start-up.
        h = self.hasher
        self._dummy_hash = (
            f"$argon2{h.type.name.lower()}$v=19$m={h.memory_cost},t={h.time_cost},p={h.parallelism}"
            f"${_b64(secrets.token_bytes(h.salt_len))}${_b64(secrets.token_bytes(h.hash_len))}"
        )
        # Checked, like the dummy hash, when a user has no TOTP secret.
        self._dummy_totp_secret = generate_secret()

    # -- helpers -------------------------------------------------------------

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            yield

    @contextmanager
    def _writing(self) -> Iterator:
        """One write transaction of the store (events and user rows together)."""
        with self._lock, self.audit.transaction() as tx:
            self._tx = tx
            try:
                yield tx
            finally:
                self._tx = None

    _tx = None

    @property
    def _users(self):
        """The user rows: through the open transaction, if this thread holds one, else the store."""
        return self._tx.users if self._tx is not None else self.audit.users

    def _row(self, name: str) -> UserRow | None:
        if not is_user_name(name):
            return None
        return self._users.get(name)

    def _require(self, name: str) -> UserRow:
        row = self._row(name)
        if row is None:
            raise NotFound(f"no such user {name!r}")
        return row

    def _keys(self, name: str) -> tuple[EnrolledKey, ...]:
        return tuple(EnrolledKey.from_row(*r) for r in self._users.keys(name))

    def _user(self, row: UserRow) -> User:
        name, disabled, reason, password_hash, totp_secret, _, created = row
        return User(name, bool(disabled), reason, password_hash is not None, totp_secret is not None,
                    self._keys(name), created)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError, TypeError):
            return False

    # -- reading -------------------------------------------------------------

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        with self._reading():
            row = self._row(name)
            return self._user(row) if row else None

    def list(self) -> list[User]:
        """Every user, by name."""
        with self._reading():
            return [self._user(r) for r in self._users.all()]

    # -- administration --------------------------------------------------------

    def add(self, name: str, *, keys: Iterable[str] = (), password: str | None = None, totp: bool = False,
            actor: str | None = None, allow_reserved: bool = False,
            reserved: frozenset[str] = RESERVED_PRINCIPALS) -> Enrolment:
        """Create a user with keys, and/or a password and a TOTP secret.

        A user needs a way to log in: at least one key, or a password with
        TOTP (the service asks for the password, then a code, so a password
        alone could never be used). The TOTP secret is returned in the
        :class:`Enrolment`, this once. A name in ``reserved`` (``root``, ...)
        is refused unless ``allow_reserved`` (docs/security.md, "Reserved principals").
        """
        check_user_name(name)
        check_not_reserved(name, reserved, allow=allow_reserved)
        if isinstance(keys, str):  # one key line, not an iterable of characters
            keys = (keys,)
        parsed = {}
        for line in keys:
            k = parse_user_key(line, self.min_rsa_bits)
            parsed.setdefault(k.fingerprint, k)
        if password is not None:
            check_password_policy(password)
            if not totp:
                raise UsageError("a password alone cannot be used to log in (the service asks for a password "
                                 "and then a TOTP code): enable TOTP too")
        if not parsed and not (password is not None and totp):
            raise UsageError(f"user {name} needs a way to log in: a public key, or a password with TOTP")
        # The slow hash is made before the write lock is taken.
        password_hash = self.hasher.hash(password) if password is not None else None
        secret = generate_secret() if totp else None
        with self._writing() as tx:
            if self._row(name) is not None:
                raise UsageError(f"user {name} exists")
            for fp in parsed:
                self._refuse_enrolled(fp)
            now = self._now()
            tx.users.insert(name, password_hash=password_hash, totp_secret=secret, created=now)
            for k in parsed.values():
                tx.users.insert_key(k.fingerprint, name, k.algorithm, k.line_with_comment, now)
            tx.append("user_added", {"actor": actor, "keys": list(parsed), "has_password": password is not None,
                                     **({"allow_reserved": True} if name in reserved else {}),
                                     "has_totp": secret is not None}, user=name)
            user = self._user(self._row(name))
        return Enrolment(user, secret, provisioning_uri(secret, name) if secret else None)

    def _refuse_enrolled(self, fp: str) -> None:
        owner = self._users.key_owner(fp)
        if owner is not None:
            raise UsageError(f"key {fp} is already enrolled for user {owner}")

    def disable(self, name: str, reason: str | None, actor: str | None = None) -> None:
        """Refuse every login of ``name`` (keys, password and TOTP) until enabled again."""
        reason = free_text(reason)
        with self._writing() as tx:
            row = self._require(name)
            if row[1]:
                raise UsageError(f"user {name} is already disabled")
            tx.users.set_disabled(name, True, reason)
            tx.append("user_disabled", {"actor": actor, "reason": reason}, user=name)

    def enable(self, name: str, actor: str | None = None) -> None:
        """Allow ``name`` to log in again."""
        with self._writing() as tx:
            row = self._require(name)
            if not row[1]:
                raise UsageError(f"user {name} is not disabled")
            tx.users.set_disabled(name, False)
            tx.append("user_enabled", {"actor": actor}, user=name)

    def set_password(self, name: str, password: str, actor: str | None = None) -> None:
        """Set (or replace) the password of ``name``."""
        check_password_policy(password)
        with self._reading():
            self._require(name)  # fail fast, before the slow hash
        password_hash = self.hasher.hash(password)
        with self._writing() as tx:
            self._require(name)
            tx.users.set_password_hash(name, password_hash)
            tx.append("password_changed", {"actor": actor}, user=name)

    def reset_totp(self, name: str, actor: str | None = None) -> Enrolment:
        """Give ``name`` a new TOTP secret (the old one stops working); returned this once."""
        secret = generate_secret()
        with self._writing() as tx:
            self._require(name)
            tx.users.set_totp_secret(name, secret)
            tx.append("totp_reset", {"actor": actor}, user=name)
            user = self._user(self._row(name))
        return Enrolment(user, secret, provisioning_uri(secret, name))

    # -- self-enrolment (ca.auth.enrol, docs/security.md rule 86) ------------------

    def invite(self, name: str, *, ttl: int, actor: str | None = None, allow_reserved: bool = False,
               reserved: frozenset[str] = RESERVED_PRINCIPALS) -> Invitation:
        """A one-time enrolment code for ``name`` (made a user with no credential if it is not one yet);
        only the code's hash is stored, with its event, in one transaction. Returned this once."""
        from ca.auth.enrol import MAX_CODE_TTL, new_code

        check_user_name(name)
        if type(ttl) is not int or not 0 < ttl <= MAX_CODE_TTL:
            raise UsageError(f"an enrolment code lives at most {MAX_CODE_TTL // 3600}h")
        code = new_code()
        with self._writing() as tx:
            row = self._row(name)
            created = row is None
            if created:
                check_not_reserved(name, reserved, allow=allow_reserved)
                tx.users.insert(name, password_hash=None, totp_secret=None, created=self._now())
                tx.append("user_added", {"actor": actor, "keys": [], "has_password": False, "has_totp": False,
                                         "invited": True}, user=name)
            elif row.disabled:
                raise UsageError(f"user {name} is disabled: 'iast-ca user enable {name}' first")
            if tx.enrolment_codes.get(code.code_id) is not None:  # 40 random bits: never, but never twice
                raise UsageError("enrolment code id collision; try again")
            now = int(self.clock())
            event_id = tx.append("enrolment_code_created", {"actor": actor, "code_id": code.code_id,
                                                            "expires_at": now + ttl, "ttl": ttl,
                                                            "user_created": created}, user=name)
            tx.enrolment_codes.insert(code.code_id, code.secret_sha256, name, now, now + ttl, event_id)
        return Invitation(name, code.text, code.code_id, now + ttl, created)

    def redeem(self, name: str, code_id: str, *, key_line: str | None = None, password: str | None = None,
               totp: bool = False) -> Enrolment:
        """Use the enrolment code ``code_id`` to register ``name``'s own key and/or password and TOTP,
        all in the transaction that uses the code (a used, expired or another user's code changes
        nothing). The TOTP secret is returned this once, to the person enrolling."""
        from ca.auth.enrol import code_refusal
        from ca.errors import AuthenticationFailed

        k = parse_user_key(key_line, self.min_rsa_bits) if key_line and key_line.strip() else None
        if password is not None:
            check_password_policy(password)
        if k is None and password is None and not totp:
            raise UsageError("nothing to enrol: send your public key on stdin, and/or a password "
                             "(--password-stdin) with --totp")
        password_hash = self.hasher.hash(password) if password is not None else None
        secret = generate_secret() if totp else None
        with self._writing() as tx:
            row = self._require(name)
            now = self.clock()
            why = code_refusal(tx, code_id, name, now)
            if why is not None:
                raise AuthenticationFailed(why)
            if password is not None and secret is None and row.totp_secret is None:
                raise UsageError("a password alone cannot be used to log in (the service asks for a password "
                                 "and then a TOTP code): add --totp")
            if k is not None:
                self._refuse_enrolled(k.fingerprint)
            if not tx.enrolment_codes.mark_used(code_id, int(now)):
                raise AuthenticationFailed("the enrolment code was already used")
            actor = f"{name} (self-enrolment)"
            if k is not None:
                # The comment is kept, as for 'user add'/'key-add' ('user show': alice@laptop).
                tx.users.insert_key(k.fingerprint, name, k.algorithm, k.line_with_comment, self._now())
                tx.append("key_added", {"actor": actor, "fingerprint": k.fingerprint, "algorithm": k.algorithm,
                                        "enrolment_code": code_id, **({"comment": k.comment} if k.comment else {})},
                          user=name)
            if password_hash is not None:
                tx.users.set_password_hash(name, password_hash)
                tx.append("password_changed", {"actor": actor, "enrolment_code": code_id}, user=name)
            if secret is not None:
                tx.users.set_totp_secret(name, secret)
                tx.append("totp_reset", {"actor": actor, "enrolment_code": code_id}, user=name)
            tx.append("enrolment_code_used", {"code_id": code_id, "key": k.fingerprint if k else None,
                                              "password": password_hash is not None, "totp": secret is not None},
                      user=name)
            user = self._user(self._row(name))
        return Enrolment(user, secret, provisioning_uri(secret, name) if secret else None)

    def add_key(self, name: str, key_line: str, actor: str | None = None) -> EnrolledKey:
        """Enrol a public key for ``name``; a key belongs to one user only."""
        k = parse_user_key(key_line, self.min_rsa_bits)
        with self._writing() as tx:
            self._require(name)
            self._refuse_enrolled(k.fingerprint)
            enrolled = EnrolledKey(k.fingerprint, k.algorithm, k.line, self._now(), k.comment)
            tx.users.insert_key(k.fingerprint, name, k.algorithm, k.line_with_comment, enrolled.added)
            tx.append("key_added", {"actor": actor, "fingerprint": k.fingerprint, "algorithm": k.algorithm,
                                    **({"comment": k.comment} if k.comment else {})}, user=name)
        return enrolled

    def remove_key(self, name: str, fingerprint: str, actor: str | None = None) -> None:
        """Remove the key with this fingerprint (``SHA256:...``) from ``name``."""
        with self._writing() as tx:
            self._require(name)
            if not tx.users.delete_key(name, fingerprint):
                raise UsageError(f"user {name} has no key {str(fingerprint)[:80]}")
            tx.append("key_removed", {"actor": actor, "fingerprint": fingerprint}, user=name)

    # -- authentication --------------------------------------------------------

    def key_allowed(self, name: str, key_blob: bytes) -> bool:
        """True if ``key_blob`` is enrolled for ``name`` and ``name`` is enabled."""
        if not is_user_name(name) or not isinstance(key_blob, bytes | bytearray):
            return False
        with self._reading():
            public = self._users.enabled_key_public(name, fingerprint(bytes(key_blob)))
        # The fingerprint is a SHA-256 of the blob; comparing the blob too costs nothing.
        return public is not None and base64.b64decode(public.split()[1]) == bytes(key_blob)

    def check_password(self, name: str, password: str) -> bool:
        """Verify ``password`` for ``name`` (argon2id); False for unknown or disabled users.

        Every call verifies one argon2 hash: the user's, or a dummy one with
        the same parameters (rule 14). After a successful check, a hash made
        with older parameters is replaced (rule 17). Blocking: run it in a
        worker thread.
        """
        with self._reading():
            row = self._row(name)
        stored = row[3] if row is not None and not row[1] else None
        ok = self._verify(stored or self._dummy_hash, password)
        if stored is None or not ok:
            return False
        if self.hasher.check_needs_rehash(stored):
            self._rehash(name, stored, password)
        return True

    def _rehash(self, name: str, old_hash: str, password: str) -> None:
        new_hash = self.hasher.hash(password)
        with self._writing() as tx:
            # Only if nobody changed the password since we read it.
            if tx.users.set_password_hash(name, new_hash, if_hash=old_hash):
                tx.append("password_rehashed", {"actor": None, "why": "argon2 parameters changed"}, user=name)

    def check_totp(self, name: str, code: str, now: float | None = None) -> bool:
        """Accept ``code`` for ``name`` once: its step must be newer than the last accepted one.

        Read, compare and update happen in one write transaction of the
        store (``BEGIN IMMEDIATE`` in SQLite), so the same code is never accepted twice, even by two
        connections at once (rule 16). Unknown and disabled users, and users
        without TOTP, are checked against a dummy secret, then refused.
        """
        return self.totp_verdict(name, code, now) == TOTP_OK

    def totp_verdict(self, name: str, code: str, now: float | None = None) -> str:
        """:meth:`check_totp` saying why: :data:`TOTP_OK` (accepted and used up), :data:`TOTP_REPLAY`
        (a right code of a step already used: audited as a replay, docs/security.md rule 16) or
        :data:`TOTP_WRONG`."""
        now = self.clock() if now is None else now
        with self._writing() as tx:
            row = self._row(name)
            secret = row[4] if row is not None and not row[1] else None
            step = matching_step(secret or self._dummy_totp_secret, code, now)
            if secret is None or step is None:
                return TOTP_WRONG
            if step <= row[5]:
                return TOTP_REPLAY
            tx.users.set_totp_last_step(name, step)
            return TOTP_OK
