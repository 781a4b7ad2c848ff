"""A role can require how the IdP sign-in was made: ``require_amr`` (methods) and ``require_acr`` (class).

docs/security.md rule 35 (a sensitive role can require a fresh sign-in) with
its method and class forms: the ID token's ``amr`` and ``acr`` claims, as the
OIDC authenticator puts them in the Identity, are judged by the pure
``decide``; a refusal is exit 4 (``reauthentication_required``), so the
requester knows to sign in again at the IdP rather than ask an administrator.
"""

from __future__ import annotations

import pytest

from ca.errors import PolicyError, ReauthenticationRequired
from ca.models import Identity, SignRequest
from ca.policy import parse_policy

POLICY = """
[defaults]
role = "dev"

[roles.dev]
members = ["*"]
principals = ["{user}"]

[roles.prod]
members = ["idp:corp:sre"]
principals = ["prod"]
require_amr = ["mfa", "hwk"]

[roles.payments]
members = ["idp:corp:sre"]
principals = ["pay"]
require_acr = ["urn:corp:loa:3", "urn:corp:loa:4"]
"""
NOW = 1_800_000_000


def sso(amr=(), acr=None) -> Identity:
    return Identity(user="alice", auth_methods=("oidc",), groups=("idp:corp:sre",), issuer="https://idp.example",
                    subject="00u1", auth_time=NOW - 30, amr=tuple(amr), acr=acr)


def decide(role: str, identity: Identity):
    return parse_policy(POLICY.encode()).decide(identity, SignRequest(public_key="", role=role), NOW, 60)


def test_every_required_method_must_be_in_the_sign_in():
    assert decide("prod", sso(amr=("pwd", "mfa", "hwk"))).principals == ("prod",)
    with pytest.raises(ReauthenticationRequired, match=r"needs an identity-provider sign-in with mfa, hwk "
                                                       r"\(this one used pwd, mfa\): sign in again at the IdP with hwk"):
        decide("prod", sso(amr=("pwd", "mfa")))
    with pytest.raises(ReauthenticationRequired, match="no reported method"):
        decide("prod", sso())


def test_the_sign_in_class_must_be_one_of_those_listed():
    assert decide("payments", sso(acr="urn:corp:loa:4")).principals == ("pay",)
    for acr in ("urn:corp:loa:2", None, "URN:CORP:LOA:3"):
        with pytest.raises(ReauthenticationRequired) as e:
            decide("payments", sso(acr=acr))
        assert e.value.code == "reauthentication_required" and e.value.exit_status == 4


def test_a_key_login_never_satisfies_an_idp_requirement():
    key_login = Identity(user="alice", auth_methods=("publickey",), groups=("idp:corp:sre",))
    with pytest.raises(ReauthenticationRequired):
        decide("prod", key_login)
    assert decide("dev", key_login).principals == ("alice",)  # roles without the requirement are untouched


@pytest.mark.parametrize("value, message", [
    ("[]", "must not be empty"),
    ('"mfa"', "expected a list of strings"),
    ('["mfa", "mfa"]', "listed twice"),
    ('["\\u0007"]', "is not an IdP method or class name"),
])
def test_bad_requirements_are_load_errors(value, message):
    doc = POLICY.replace('require_amr = ["mfa", "hwk"]', f"require_amr = {value}")
    with pytest.raises(PolicyError, match=message):
        parse_policy(doc.encode())
