"""The composition root: one function builds the running CA from the config.

:func:`open_ca` is what every ``iast-ca`` command and the service start
from. It knows the state directory once (:class:`~ca.state.StatePaths`),
and builds each part the first time it is asked for, so a command that
only reads users never needs the CA key's passphrase:

    paths      the state directory's files
    keyring    which CA keys exist (trust lines, the KRL); loaded once, reloaded on SIGHUP
    audit      the audit log (the store); with users and approvals on its connection
    policy     the policy file; reload_policy() swaps it in only if it is valid
    authority  the issuance path (unlocks the CA key); owns its gate and approval hook
    guard, authenticators
               for the service: their own database connection (the auth thread's)

Each part is built by one function below (open_audit, open_users,
open_throttle, open_approvals, load_signer), so that changing how one is
made (another store, another key backend) is a change in one place.

``for_service=True`` makes the authority *online*: every request is a
login's, so the login is re-checked inside the issuing transaction and
every request goes through the approvals. Offline (``iast-ca sign``, an
operator acting for a user) neither applies, and an access request is used
only when one is named. That is decided here and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

from ca.access.approvals import Approvals
from ca.access.revocation import build_current_krl
from ca.auth.base import Authenticator
from ca.auth.guard import Guard
from ca.auth.oidc import OIDCAuthenticator
from ca.auth.certkey import CertifiedKeyAuthenticator
from ca.auth.enrol import EnrolmentCodeAuthenticator
from ca.auth.hosts import HostKeyAuthenticator, JoinTokenAuthenticator
from ca.auth.workload import WorkloadAuthenticator
from ca.auth.password_totp import PasswordTotpAuthenticator
from ca.auth.pubkey import PublicKeyAuthenticator
from ca.auth.throttle import Throttle
from ca.auth.users import UserStore
from ca.config import Config
from ca.errors import CAError, StateError
from ca.issuance.authority import Authority
from ca.issuance.signer import Signer
from ca.keys.hostca import host_ca_public, open_host_ca
from ca.keys.keyring import Keyring, read_passphrase
from ca.keys.pkcs11 import Pkcs11Settings
from ca.policy import Policy, load_policy
from ca.state import StatePaths
from ca.store import AuditLog, Store, is_database_url, open_store

# -- how each part is made: one function each ---------------------------------------


def open_audit(cfg: Config, clock: Callable[[], float] = time.time, *, migrate: bool = True) -> Store:
    """A connection to the audit database (one per thread that uses it).

    The one place the database is chosen: ``cfg.database`` (a PostgreSQL URL shared by
    replicas) or, without it, ``STATE/ca.db`` (SQLite). ``migrate=False`` (the service)
    refuses a PostgreSQL schema older than this iast-ca's and names ``iast-ca db migrate``.
    """
    return open_store(cfg.database_location, clock=clock, migrate=migrate)


def check_replica_keys(audit: Store, keyring: Keyring) -> None:
    """Refuse to serve a shared database with another CA's keys (README "Run several replicas").

    The first replica to start records its keyring's fingerprints in the database; a later
    one must share at least one key with them (a rotated keyring adds its new key), else
    StateError. Backends that keep no fingerprints (SQLite) are not checked.
    """
    recorded = audit.ca_keys()
    if recorded is None:
        return
    mine = [k.fingerprint for k in keyring.keys]
    if recorded and keyring.active.fingerprint not in recorded and not set(mine) & set(recorded):
        raise StateError(f"this replica's CA key {keyring.active.fingerprint} is not one of the keys of the database "
                         f"{audit.path} ({', '.join(recorded)}): copy the first replica's state directory keys "
                         "(keyring.json, the CA key, audit and host keys)")
    if set(mine) - set(recorded):
        audit.record_ca_keys(mine)


def open_users(audit: AuditLog, cfg: Config, clock: Callable[[], float] = time.time) -> UserStore:
    return UserStore(audit, min_rsa_bits=cfg.min_rsa_bits, clock=clock)


def open_throttle(audit: AuditLog, cfg: Config) -> Throttle:
    return Throttle(audit, cfg.throttle)


def open_approvals(audit: AuditLog, clock: Callable[[], float] = time.time) -> Approvals:
    return Approvals(audit, clock=clock)


def key_revoked(audit: AuditLog) -> Callable[[str], bool]:
    """``fingerprint -> revoked?`` for a user key, on ``audit``'s connection."""
    return lambda fp: audit.revocations.is_revoked("key", fp)


def load_keyring(paths: StatePaths) -> Keyring:
    return Keyring.load(paths.root)


def pkcs11_settings(cfg: Config) -> Pkcs11Settings:
    """The config's defaults for keys held in a PKCS#11 token (module, PIN file)."""
    return Pkcs11Settings(module_path=cfg.pkcs11_module, pin_file=cfg.pkcs11_pin_file)


def load_signer(keyring: Keyring, passphrase: bytes | None, cfg: Config | None = None) -> Signer:
    """Open the active CA key (a file unlocked now, or a token key opened on first use):
    the one place the CA's private key is loaded."""
    settings = pkcs11_settings(cfg) if cfg is not None else None
    return Signer(keyring.open_signer(passphrase, settings))


def load_host_signer(paths: StatePaths, passphrase: bytes | None, audit: AuditLog) -> tuple[Signer, str]:
    """Unlock the host CA key (a key of its own: ca.keys.hostca); a CA made before host
    certificates gets one here, on first use, and the audit log says so (``host_ca_created``)."""
    host_ca = open_host_ca(paths.root, passphrase, create=True)
    if host_ca.created:
        audit.record("host_ca_created", {"fingerprint": host_ca.fingerprint, "public": host_ca.public})
    return Signer(host_ca.backend), host_ca.fingerprint


def read_policy(cfg: Config) -> Policy:
    return load_policy(cfg.policy_path, principal_pattern=cfg.principal_pattern)


# -- the CA ------------------------------------------------------------------------


class CA:
    """One certificate authority, as the config describes it; parts are built on first use.

    Not thread-safe by itself: the service uses :attr:`audit` (and everything on
    it) from its issue thread only, and :attr:`guard` / :attr:`authenticators`
    (on a second connection) from its auth thread only.
    """

    def __init__(self, cfg: Config, *, passphrase: bytes | None = None,
                 clock: Callable[[], float] = time.time, for_service: bool = False):
        self.cfg = cfg
        self.paths = StatePaths(cfg.state_dir)
        self.clock = clock
        self.for_service = for_service
        self._passphrase = passphrase

    # -- the state directory -------------------------------------------------------

    def require_db(self) -> None:
        if is_database_url(self.cfg.database_location):
            # A shared database: opening it says whether it is there; its log says whether a CA made it.
            if self.audit.head()[0] == 0:
                raise StateError(f"the database {self.audit.path} holds no CA: run 'iast-ca init' first")
            return
        if not self.paths.db.exists():
            raise StateError(f"no audit database at {self.paths.db}: run 'iast-ca init' first")

    @cached_property
    def keyring(self) -> Keyring:
        return load_keyring(self.paths)

    @cached_property
    def audit(self) -> AuditLog:
        """The audit log (and the store of users, requests, revocations); the issue thread's connection.
        For the service, a shared database must be at this schema and served with this keyring."""
        audit = open_audit(self.cfg, self.clock, migrate=not self.for_service)
        if self.for_service:
            try:
                check_replica_keys(audit, self.keyring)
            except BaseException:
                audit.close()
                raise
        return audit

    @cached_property
    def users(self) -> UserStore:
        return open_users(self.audit, self.cfg, self.clock)

    @cached_property
    def approvals(self) -> Approvals:
        return open_approvals(self.audit, self.clock)

    # -- policy and issuance -----------------------------------------------------------

    @cached_property
    def _policy(self) -> Policy:
        return read_policy(self.cfg)

    @property
    def policy(self) -> Policy:
        """The policy in force (the authority's, once it is open: a reload swaps it there)."""
        authority = self.__dict__.get("authority")
        return authority.policy if authority is not None else self._policy

    @cached_property
    def authority(self) -> Authority:
        """The issuance path: unlocks the CA key (asks for the passphrase file if none was given)."""
        self.keyring  # first: with no CA here, the error says to run 'iast-ca init'
        return self._authority(approvals=self.approvals, online=self.for_service)

    def _authority(self, *, approvals: Approvals | None, online: bool) -> Authority:
        keyring = self.keyring
        passphrase = self._ca_passphrase()
        signer = load_signer(keyring, passphrase, self.cfg)
        policy = self._policy
        audit = self.audit
        paths = self.paths
        return Authority(
            policy=policy,
            signer=signer,
            ca_fingerprint=keyring.active.fingerprint,
            audit=audit,
            clock_skew=self.cfg.clock_skew,
            min_rsa_bits=self.cfg.min_rsa_bits,
            clock=self.clock,
            approvals=approvals,
            online=online,
            host_ca=lambda: load_host_signer(paths, passphrase, audit),
        )

    def _ca_passphrase(self) -> bytes | None:
        return self._passphrase if self._passphrase is not None else read_passphrase(self.cfg.passphrase_file)

    @property
    def host_ca_public(self) -> str | None:
        """The host CA's public key line (None before it exists); needs no passphrase."""
        return host_ca_public(self.paths.root)

    def host_known_hosts_lines(self, pattern: str | None = None) -> list[str]:
        """``@cert-authority PATTERNS KEY``: the host CA, trusted for the names the host policy
        certifies (or ``pattern``), and for no other (one line; none without a host CA key or a host role)."""
        public = self.host_ca_public
        patterns = [pattern] if pattern else self.policy.known_hosts_patterns()
        if not public or not patterns:
            return []
        return [f"@cert-authority {','.join(patterns)} {' '.join(public.split()[:2])}"]

    def krl(self) -> bytes:
        """The current KRL, built from the database (its version moves only when its content does)."""
        extra = (self.host_ca_public,) if self.host_ca_public else ()
        return build_current_krl(self.audit, self.keyring, extra_ca_keys=extra).data

    def reload_keyring(self) -> str | None:
        """SIGHUP: read ``keyring.json`` again (trust lines, KRL), and if another key was activated
        ('iast-ca key activate'), open it and sign with it from the next request on.

        All or nothing: if the file cannot be read, or the new active key cannot be opened (a wrong
        passphrase, a token that is absent or refuses the PIN), CAError is raised and the old keyring
        and signer stay. Returns the new active fingerprint when the signer changed, else None."""
        new = load_keyring(self.paths)
        authority = self.__dict__.get("authority")
        changed = None
        if authority is not None and new.active.fingerprint != authority.ca_fingerprint:
            signer = load_signer(new, self._ca_passphrase(), self.cfg)
            check = getattr(signer.backend, "check", None)
            if check is not None:
                check()  # a token key: log in and compare its public key now, not at the next request
            old = authority.signer
            authority.signer, authority.ca_fingerprint = signer, new.active.fingerprint
            old.backend.close()
            changed = new.active.fingerprint
            authority.audit.record("ca_key_reloaded", {"active": changed, "name": new.active.name,
                                                       "backend": new.active.backend})
        self.keyring = new
        return changed

    def reload_policy(self) -> str:
        """SIGHUP: read the policy file again; swap it in only if it is valid. Audited either way
        (``policy_reloaded``, or ``policy_reload_failed`` and the CAError raised). Returns its sha256."""
        a = self.authority
        try:
            new = read_policy(self.cfg)
        except CAError as e:
            a.audit.record("policy_reload_failed", {"error": e.message, "kept_sha256": a.policy.sha256})
            raise
        old = a.policy.sha256
        a.policy = new
        self._policy = new
        a.audit.record("policy_reloaded", {"old_sha256": old, "new_sha256": new.sha256})
        return new.sha256

    # -- authentication (the service's auth thread) -------------------------------------

    @cached_property
    def auth_audit(self) -> AuditLog:
        """The service's auth thread's own connection: users, throttle counters, auth events.
        Outside the service (one thread) it is :attr:`audit`."""
        return open_audit(self.cfg, self.clock, migrate=False) if self.for_service else self.audit

    @cached_property
    def auth_users(self) -> UserStore:
        return open_users(self.auth_audit, self.cfg, self.clock)

    @cached_property
    def throttle(self) -> Throttle:
        return open_throttle(self.auth_audit, self.cfg)

    @cached_property
    def guard(self) -> Guard:
        return Guard(self.auth_audit, self.throttle, lockout=self.cfg.throttle.lockout, clock=self.clock)

    @cached_property
    def authenticators(self) -> tuple[Authenticator, ...]:
        """Every way to log in, in the order they are offered. A new provider is one line here.

        With identity providers configured, plain keyboard-interactive is SSO (the first
        ``[oidc.NAME]``): a person with only an IdP account needs no option at all, and the
        choice never depends on the user name, so it tells nothing about which accounts have
        a password (docs/security.md rule 14). Password + code is the ``password`` submethod
        (``ssh -o KbdInteractiveDevices=password``; ``iast-ssh`` asks for it itself)."""
        sso = tuple(OIDCAuthenticator(p, self.auth_audit, skew=self.cfg.clock_skew,
                                      login_timeout=self.cfg.login_timeout, clock=self.clock,
                                      role_auth_age=self._role_auth_age)
                    for p in self.cfg.oidc)
        # Workload tokens authenticate one request each (sign --token -), not a login.
        workload = ((WorkloadAuthenticator(self.cfg.workloads, self.auth_audit, skew=self.cfg.clock_skew,
                                           clock=self.clock),) if self.cfg.workloads else ())
        return (
            PublicKeyAuthenticator(self.auth_users, key_revoked(self.auth_audit)),
            *sso,
            HostKeyAuthenticator(self.auth_audit),  # host:NAME accounts only (host renew)
            CertifiedKeyAuthenticator(self.auth_audit),  # a user's current certificate's key (rule 80)
            JoinTokenAuthenticator(self.auth_audit),  # host:NAME accounts only (host enroll); before passwords
            PasswordTotpAuthenticator(self.auth_users),
            EnrolmentCodeAuthenticator(self.auth_audit),  # submethod "enrol" only: never the default
            *workload,
        )

    def _role_auth_age(self, role: str) -> int | None:
        """A role's max_auth_age in the policy now served (for the IdP's max_age; None if none)."""
        found = self.policy.roles.get(role)
        return found.max_auth_age if found is not None else None

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connections opened so far (the parts built on them go with them)."""
        authority = self.__dict__.get("authority")
        if authority is not None:
            authority.signer.backend.close()  # a token session (a file key holds nothing)
        closed = []
        for name in ("auth_audit", "audit"):
            part = self.__dict__.get(name)
            if part is not None and part not in closed:
                part.close()
                closed.append(part)

    def __enter__(self) -> CA:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_ca(cfg: Config, *, passphrase: bytes | None = None, clock: Callable[[], float] = time.time,
            for_service: bool = False) -> CA:
    """The CA that ``cfg`` describes. Nothing is opened until asked for; close() it (or use ``with``)."""
    return CA(cfg, passphrase=passphrase, clock=clock, for_service=for_service)


def open_authority(cfg: Config, *, passphrase: bytes | None = None,
                   clock: Callable[[], float] = time.time) -> Authority:
    """An offline authority without approvals, on its own connection: the library's shortcut
    (tests, benchmarks). Closing it closes its audit log."""
    return CA(cfg, passphrase=passphrase, clock=clock)._authority(approvals=None, online=False)
