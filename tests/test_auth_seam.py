"""The composition root and the authenticator seam, as a library (the service tests drive them over SSH)."""

from __future__ import annotations

import base64

from argon2 import PasswordHasher

from ca.app import open_ca
from ca.auth.base import Guarding, KeyAuthenticator, Refusal
from ca.auth.certkey import CertifiedKeyAuthenticator
from ca.auth.enrol import EnrolmentCodeAuthenticator
from ca.auth.hosts import HostKeyAuthenticator, JoinTokenAuthenticator
from ca.auth.password_totp import PasswordTotpAuthenticator
from ca.auth.pubkey import PublicKeyAuthenticator
from ca.auth.totp import totp
from ca.auth.users import UserStore
from ca.service.handlers import HANDLERS
from ca.service.protocol import COMMANDS

from .conftest import make_key

PASSWORD = "correct horse battery staple"


def test_the_command_table_and_the_grammar_name_the_same_commands():
    assert set(HANDLERS) == set(COMMANDS)


def test_only_the_service_authority_is_online(cfg):
    with open_ca(cfg, for_service=True) as service, open_ca(cfg) as offline:
        assert service.authority.online and not offline.authority.online
        assert service.authority.approvals is not None and offline.authority.approvals is not None
        assert service.auth_audit is not service.audit and offline.auth_audit is offline.audit
        kinds = {type(a) for a in service.authenticators}
        assert kinds == {PublicKeyAuthenticator, PasswordTotpAuthenticator, HostKeyAuthenticator,
                         JoinTokenAuthenticator, CertifiedKeyAuthenticator, EnrolmentCodeAuthenticator}


def test_guard_counts_failures_once_and_keys_pass_a_locked_account(cfg, tmp_path):
    now = [1_900_000_000.0]
    with open_ca(cfg, clock=lambda: now[0], for_service=True) as ca:
        users = UserStore(ca.auth_audit, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
                          clock=lambda: now[0])
        key = make_key(tmp_path, name="alice").with_suffix(".pub").read_text()
        secret = users.add("alice", keys=[key], password=PASSWORD, totp=True, actor="test").totp_secret
        pt = PasswordTotpAuthenticator(users)
        pk = next(a for a in ca.authenticators if isinstance(a, KeyAuthenticator))
        limit = cfg.throttle.user_limit
        for _ in range(limit):
            assert ca.guard.check(pt.guarding, "alice", "192.0.2.1",
                                  lambda t: pt.check("alice", "wrong", "000000", "192.0.2.1", t)) is None
            now[0] += cfg.throttle.max_backoff + 1  # past each backoff, inside the window
        # Locked: the right password is refused unchecked, audited, not counted again.
        right = lambda t: pt.check("alice", PASSWORD, totp(secret, int(t)), "192.0.2.1", t)  # noqa: E731
        assert ca.guard.check(pt.guarding, "alice", "192.0.2.1", right) is None
        failed = ca.auth_audit.events(kind="auth_failed", limit=None)
        assert failed[0].data["why"].startswith("throttled") and failed[0].data["failures"] is None
        assert len(ca.auth_audit.events(kind="lockout", limit=None)) == 1
        # An account locked by password failures still logs in with its key.
        blob = base64.b64decode(key.split()[1])
        identity = ca.guard.check(pk.guarding, "alice", "192.0.2.1",
                                  lambda t: pk.check_key("alice", blob, "192.0.2.1", t))
        assert identity is not None and identity.auth_methods == ("publickey",) and identity.login_key
        assert identity.issuer is None and identity.subject is None and identity.auth_time is None


def test_a_refusal_of_an_unguessable_check_is_not_counted(cfg):
    with open_ca(cfg, for_service=True) as ca:
        rule = Guarding("token", guessable=False)
        assert ca.guard.check(rule, "bob", "192.0.2.9", lambda t: Refusal("bad token")) is None
        (e,) = ca.auth_audit.events(kind="auth_failed", limit=None)
        assert e.data == {"method": "token", "why": "bad token", "failures": None}
        assert ca.throttle.blocked_for("bob", "192.0.2.9", 0) == 0
