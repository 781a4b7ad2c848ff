"""Tests for ca.policy: the parser (every kind of mistake, fuzzed) and decide()."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ca.durations import format_duration
from ca.errors import AuthenticationFailed, ConfigError, PolicyDenied, PolicyError
from ca.models import Decision, Identity, SignRequest
from ca.policy import (
    DEFAULT_PRINCIPAL_PATTERN,
    EXTENSIONS,
    Approval,
    Policy,
    RoleVerdict,
    load_policy,
    parse_policy,
)

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATH = "test-policy.toml"

# The policy most decide() tests run against. Written out in full here (not
# read from config/) so that editing the shipped example cannot silently
# change what these tests check.
POLICY = """
[defaults]
ttl = "1h"
max_ttl = "8h"
extensions = ["permit-pty"]

[groups]
sre = ["alice", "bob"]
security = ["carol"]

[roles.dev]
description = "Day-to-day access to dev hosts as yourself"
members = ["*"]
principals = ["{user}"]
max_ttl = "8h"
extensions = ["permit-pty", "permit-port-forwarding", "permit-agent-forwarding"]

[roles.prod-readonly]
description = "Read-only production debugging"
members = ["group:sre"]
principals = ["prod-ro"]
force_command = "/usr/local/bin/prod-readonly-shell"
source_address = ["10.20.0.0/16", "2001:db8::/32"]
max_ttl = "30m"
require_reason = true
require_mfa = true

[roles.deploy]
members = ["carol", "group:security"]
principals = ["{user}", "{user}-ro", "deploy", "carol"]
ttl = "10m"
max_ttl = "2h"
"""

NOW = 1_700_000_000
SKEW = 60


def policy(text: str = POLICY, **kw) -> Policy:
    return parse_policy(text.encode(), path=PATH, **kw)


def who(user: str, mfa: bool = False, groups: tuple[str, ...] = ()) -> Identity:
    return Identity(user=user, auth_methods=("publickey",), mfa=mfa, groups=groups)


def ask(role: str | None = None, ttl: int | None = None, reason: str | None = None) -> SignRequest:
    return SignRequest(public_key="ssh-ed25519 AAAA test", role=role, ttl=ttl, reason=reason)


def decide(p: Policy, identity: Identity, request: SignRequest) -> Decision:
    return p.decide(identity, request, now=NOW, skew=SKEW)


# --------------------------------------------------------------------------
# The shipped files


def test_example_policy_loads_with_the_documented_roles():
    path = ROOT / "config" / "policy.toml"
    p = load_policy(path)
    assert p.path == str(path)
    assert p.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (p.default_ttl, p.max_ttl, p.default_extensions, p.default_role) == (3600, 8 * 3600, ("permit-pty",), None)
    assert dict(p.groups) == {"sre": ("alice", "bob"), "security": ("carol",)}
    assert list(p.roles) == ["dev", "prod-readonly", "prod-admin"]

    dev = p.roles["dev"]
    assert dev.members == ("*",)
    assert dev.principals == ("{user}",)
    assert (dev.ttl, dev.max_ttl) == (3600, 8 * 3600)
    assert dev.extensions == ("permit-agent-forwarding", "permit-port-forwarding", "permit-pty")
    assert (dev.force_command, dev.source_address) == (None, ())
    assert not (dev.require_reason or dev.require_mfa)

    prod = p.roles["prod-readonly"]
    assert prod.members == ("group:sre",)
    assert prod.principals == ("prod-ro",)
    assert prod.force_command == "/usr/local/bin/prod-readonly-shell"
    assert prod.source_address == ("10.20.0.0/16",)
    assert (prod.ttl, prod.max_ttl) == (1800, 1800)  # the 1h default is capped by the role's 30m
    assert prod.extensions == ("permit-pty",)  # inherited from [defaults]
    assert prod.require_reason and prod.require_mfa
    assert dev.approval is None and prod.approval is None

    admin = p.roles["prod-admin"]
    assert admin.members == ("group:sre",) and admin.principals == ("root",) and admin.max_ttl == 900
    assert admin.require_reason and not admin.require_mfa
    assert admin.approval == Approval(approvers=("group:security",), required=1, expires=3600)
    assert p.approvers_of(admin) == ("carol",)


def test_starter_policy_loads_and_gives_everyone_their_own_name():
    path = ROOT / "ca" / "defaults" / "policy.toml"
    p = load_policy(path)
    assert (p.default_ttl, p.max_ttl, p.default_role) == (3600, 8 * 3600, "dev")
    assert dict(p.groups) == {}
    assert list(p.roles) == ["dev"]
    dev = p.roles["dev"]
    assert dev.members == ("*",)
    assert dev.principals == ("{user}",)
    assert dev.max_ttl == 8 * 3600
    assert dev.extensions == ("permit-agent-forwarding", "permit-port-forwarding", "permit-pty")
    assert dev.force_command is None and dev.source_address == ()
    d = p.decide(who("zoe"), ask(), now=NOW, skew=SKEW)
    assert (d.role, d.principals, d.ttl) == ("dev", ("zoe",), 3600)


def test_load_policy_reads_a_real_file(tmp_path):
    f = tmp_path / "policy.toml"
    f.write_text(POLICY)
    p = load_policy(f)
    assert p.path == str(f)
    assert p.sha256 == hashlib.sha256(POLICY.encode()).hexdigest()
    assert set(p.roles) == {"dev", "prod-readonly", "deploy"}


def test_load_policy_missing_file_is_a_policy_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as e:
        load_policy(missing)
    assert str(e.value).startswith(f"{missing}: cannot read policy")


def test_policy_and_roles_cannot_be_changed():
    p = policy()
    with pytest.raises(TypeError):
        p.roles["evil"] = p.roles["dev"]  # type: ignore[index]
    with pytest.raises(TypeError):
        p.groups["sre"] = ("mallory",)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.roles["dev"].principals = ("root",)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_ttl = 10**9  # type: ignore[misc]


# --------------------------------------------------------------------------
# Parse errors: each names the file, the role or section, and the field.

GOOD_ROLE = 'members = ["*"]\nprincipals = ["{user}"]\n'


def doc(role: str = GOOD_ROLE, defaults: str = 'max_ttl = "8h"\n', groups: str = 'sre = ["alice"]\n', top: str = "") -> str:
    return f'{top}\n[defaults]\n{defaults}\n[groups]\n{groups}\n[roles.dev]\n{role}'


ERRORS = [
    # (id, document, the exact "file: where:" prefix, a phrase of the reason)
    ("unknown top-level key", doc(top='colour = "red"'), "colour", "unknown key"),
    ("unknown defaults key", doc(defaults='tll = "1h"'), "defaults.tll", "unknown key"),
    ("unknown role key", doc(GOOD_ROLE + 'descripton = "x"'), "roles.dev.descripton", "unknown key in role dev"),
    ("critical option permit_open", doc(GOOD_ROLE + 'permit_open = "db:5432"'), "roles.dev.permit_open", "unknown key"),
    ("critical_options table", doc(GOOD_ROLE + 'critical_options = { force-command = "/bin/sh" }'), "roles.dev.critical_options", "unknown key"),
    ("hyphenated force-command", doc(GOOD_ROLE + 'force-command = "/bin/sh"'), "roles.dev.force-command", "unknown key"),
    ("approval not a table", doc(GOOD_ROLE + "approval = true"), "roles.dev.approval", "expected a table, got a boolean"),
    ("nested role table", doc() + '\n[roles.prod.readonly]\nmembers = ["*"]\n', "roles.prod.readonly", "unknown key in role prod"),
    ("unknown extension", doc(GOOD_ROLE + 'extensions = ["permit-pty", "permit-everything"]'), "roles.dev.extensions", "unknown extension permit-everything"),
    ("extension in wrong case", doc(GOOD_ROLE + 'extensions = ["permit-x11-forwarding"]'), "roles.dev.extensions", "unknown extension"),
    ("duplicate extension", doc(GOOD_ROLE + 'extensions = ["permit-pty", "permit-pty"]'), "roles.dev.extensions", "permit-pty is listed twice"),
    ("unknown default extension", doc(defaults='extensions = ["permit-all"]'), "defaults.extensions", "unknown extension permit-all"),
    ("bad duration", doc(GOOD_ROLE + 'max_ttl = "8 hours"'), "roles.dev.max_ttl", "expected a duration"),
    ("zero duration", doc(GOOD_ROLE + 'max_ttl = "0s"'), "roles.dev.max_ttl", "positive"),
    ("zero default ttl", doc(defaults='ttl = "0"'), "defaults.ttl", "positive"),
    ("integer duration", doc(GOOD_ROLE + "ttl = 3600"), "roles.dev.ttl", "expected a duration"),
    ("duration beyond ceiling", doc(defaults='max_ttl = "400d"'), "defaults.max_ttl", "ceiling"),
    ("role max_ttl over defaults", doc(GOOD_ROLE + 'max_ttl = "12h"'), "roles.dev.max_ttl", "12h exceeds [defaults].max_ttl 8h"),
    ("role ttl over its max_ttl", doc(GOOD_ROLE + 'ttl = "2h"\nmax_ttl = "1h"'), "roles.dev.ttl", "2h exceeds roles.dev.max_ttl 1h"),
    ("default ttl over default max", doc(defaults='ttl = "9h"\nmax_ttl = "8h"'), "defaults.ttl", "9h exceeds [defaults].max_ttl 8h"),
    ("CIDR prefix too long", doc(GOOD_ROLE + 'source_address = ["10.20.0.0/33"]'), "roles.dev.source_address", "10.20.0.0/33 is not an address or CIDR"),
    ("CIDR with host bits", doc(GOOD_ROLE + 'source_address = ["10.0.0.0/8", "10.20.0.1/16"]'), "roles.dev.source_address", "10.20.0.1/16 has host bits set (did you mean 10.20.0.0/16?)"),
    ("not an address", doc(GOOD_ROLE + 'source_address = ["office"]'), "roles.dev.source_address", "office is not an address"),
    ("empty source_address", doc(GOOD_ROLE + "source_address = []"), "roles.dev.source_address", "must not be empty"),
    ("empty principals", doc('members = ["*"]\nprincipals = []'), "roles.dev.principals", "must not be empty"),
    ("missing principals", doc('members = ["*"]'), "roles.dev.principals", "required"),
    ("principal with comma", doc('members = ["*"]\nprincipals = ["root,admin"]'), "roles.dev.principals", "root,admin contains a comma"),
    ("principal with space", doc('members = ["*"]\nprincipals = ["bob smith"]'), "roles.dev.principals", "'bob smith' contains"),
    ("principal star", doc('members = ["*"]\nprincipals = ["*"]'), "roles.dev.principals", "contains a comma, '*'"),
    ("template with comma", doc('members = ["*"]\nprincipals = ["{user},root"]'), "roles.dev.principals", "contains a comma"),
    ("template with star", doc('members = ["*"]\nprincipals = ["{user}*"]'), "roles.dev.principals", "contains a comma, '*'"),
    ("principal uppercase", doc('members = ["*"]\nprincipals = ["Admin"]'), "roles.dev.principals", "Admin does not match ^[a-z_]"),
    ("principal too long", doc('members = ["*"]\nprincipals = ["' + "a" * 33 + '"]'), "roles.dev.principals", "does not match"),
    ("unknown template", doc('members = ["*"]\nprincipals = ["{host}"]'), "roles.dev.principals", "the only template is {user}"),
    ("duplicate principal", doc('members = ["*"]\nprincipals = ["deploy", "deploy"]'), "roles.dev.principals", "deploy is listed twice"),
    ("missing group", doc('members = ["group:ops"]\nprincipals = ["{user}"]'), "roles.dev.members", "group:ops: no such group"),
    ("empty members", doc('members = []\nprincipals = ["{user}"]'), "roles.dev.members", "must not be empty"),
    ("missing members", doc('principals = ["{user}"]'), "roles.dev.members", "required"),
    ("bad member name", doc('members = ["Bob"]\nprincipals = ["{user}"]'), "roles.dev.members", "Bob is not a user name"),
    ("members a string", doc('members = "alice"\nprincipals = ["{user}"]'), "roles.dev.members", "expected a list of strings, got a string"),
    ("members an int", doc('members = 5\nprincipals = ["{user}"]'), "roles.dev.members", "got an integer (5)"),
    ("principal an int", doc('members = ["*"]\nprincipals = [1]'), "roles.dev.principals", "found an integer"),
    ("bool as a string", doc(GOOD_ROLE + 'require_mfa = "yes"'), "roles.dev.require_mfa", "expected true or false"),
    ("bool as an int", doc(GOOD_ROLE + "require_reason = 1"), "roles.dev.require_reason", "expected true or false"),
    ("description a table", doc(GOOD_ROLE + "description = { a = 1 }"), "roles.dev.description", "expected a string, got a table"),
    ("force_command a list", doc(GOOD_ROLE + 'force_command = ["/bin/true"]'), "roles.dev.force_command", "expected a string"),
    ("force_command empty", doc(GOOD_ROLE + 'force_command = "  "'), "roles.dev.force_command", "must not be empty"),
    ("force_command newline", doc(GOOD_ROLE + 'force_command = "true\\nrm -rf /"'), "roles.dev.force_command", "line breaks"),
    ("force_command NUL", doc(GOOD_ROLE + 'force_command = "true\\u0000x"'), "roles.dev.force_command", "NUL"),
    ("source_address item an int", doc(GOOD_ROLE + 'source_address = ["10.0.0.0/8", 5]'), "roles.dev.source_address", "found an integer"),
    ("role not a table", 'roles = { dev = 5 }\n', "roles.dev", "expected a table, got an integer"),
    ("roles not a table", 'roles = "dev"\n', "roles", "expected a table, got a string"),
    ("defaults not a table", "defaults = 1\n[roles.dev]\n" + GOOD_ROLE, "defaults", "expected a table, got an integer (1)"),
    ("groups not a table", 'groups = ["sre"]\n[roles.dev]\n' + GOOD_ROLE, "groups", "expected a table, got a list"),
    ("group a string", doc(groups='sre = "alice"'), "groups.sre", "expected a list of strings"),
    ("group with bad user", doc(groups='sre = ["alice", "Bob Smith"]'), "groups.sre", "invalid user name 'Bob Smith'"),
    ("bad group name", doc(groups='SRE = ["alice"]'), "groups.SRE", "invalid group name"),
    ("bad role name", 'roles.Dev = { members = ["*"], principals = ["{user}"] }\n', "roles.Dev", "invalid role name"),
    ("role name with space", '[roles."dev ops"]\n' + GOOD_ROLE, "roles.'dev ops'", "invalid role name"),
    ("no roles", '[defaults]\nttl = "1h"\n', "roles", "no roles defined"),
    ("default role missing", doc(defaults='role = "ops"'), "defaults.role", "no such role ops"),
    ("default role not a string", doc(defaults="role = true"), "defaults.role", "expected a string"),
    ("datetime as duration", doc(GOOD_ROLE + "max_ttl = 1979-05-27T07:32:00"), "roles.dev.max_ttl", "expected a duration"),
]


@pytest.mark.parametrize("text, where, reason", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_each_mistake_is_a_policy_error_naming_file_and_field(text, where, reason):
    with pytest.raises(PolicyError) as e:
        policy(text)
    message = str(e.value)
    assert message.startswith(f"{PATH}: {where}: "), message
    assert reason in message, message
    assert "\n" not in message


def test_verify_required_is_an_unknown_key():
    # The OpenSSH verify-required critical option was removed: the signer
    # cannot encode it, so a role asking for it must not load (docs/security.md:
    # unknown critical options are a load error), not load and then fail
    # every request.
    with pytest.raises(PolicyError) as e:
        policy(doc(GOOD_ROLE + "verify_required = true"))
    assert str(e.value) == (
        f"{PATH}: roles.dev.verify_required: unknown key in role dev (allowed: description, members, "
        "principals, ttl, max_ttl, extensions, force_command, source_address, require_reason, require_mfa, "
            "approval, max_auth_age, require_amr, require_acr)"
    )


def test_the_good_document_used_above_is_itself_valid():
    # Guards the table above: every error must come from the one change made.
    p = policy(doc())
    assert p.roles["dev"].principals == ("{user}",)
    assert p.roles["dev"].extensions == ("permit-pty",)


def test_role_max_ttl_message_is_exactly_as_documented():
    with pytest.raises(PolicyError) as e:
        policy(doc(GOOD_ROLE + 'max_ttl = "12h"').replace("[roles.dev]", "[roles.prod-readonly]"))
    assert str(e.value) == "test-policy.toml: roles.prod-readonly.max_ttl: 12h exceeds [defaults].max_ttl 8h"


def test_toml_syntax_error_names_file_and_line():
    with pytest.raises(PolicyError) as e:
        policy('[defaults]\nttl = "1h"\nmax_ttl = 8h\n')
    assert str(e.value).startswith(f"{PATH}: invalid TOML: ")
    assert "line 3" in str(e.value)


def test_non_utf8_bytes_are_a_policy_error():
    with pytest.raises(PolicyError) as e:
        parse_policy(b'[roles.dev]\ndescription = "caf\xe9"\n', path=PATH)
    assert str(e.value).startswith(f"{PATH}: not UTF-8 (line 2, byte 30)")


def test_deeply_nested_toml_is_a_policy_error():
    with pytest.raises(PolicyError) as e:
        parse_policy(b"a = " + b"[" * 5000 + b"]" * 5000, path=PATH)
    assert "nested too deeply" in str(e.value)


def test_role_defaults_are_inherited_and_normalised():
    p = policy(
        doc(
            GOOD_ROLE + 'source_address = ["10.1.2.3", "2001:DB8::/32", "192.168.0.0/255.255.0.0"]',
            defaults='ttl = "2h"\nmax_ttl = "4h"\nextensions = ["permit-user-rc", "permit-pty"]',
        )
    )
    dev = p.roles["dev"]
    assert dev.extensions == ("permit-pty", "permit-user-rc")  # sorted, from [defaults]
    assert dev.source_address == ("10.1.2.3/32", "2001:db8::/32", "192.168.0.0/16")
    assert (dev.ttl, dev.max_ttl) == (7200, 4 * 3600)
    assert p.default_extensions == ("permit-pty", "permit-user-rc")


def test_empty_extension_list_grants_none():
    p = policy(doc(GOOD_ROLE + "extensions = []"))
    assert p.roles["dev"].extensions == ()


def test_builtin_defaults_when_defaults_section_is_absent():
    p = policy("[roles.dev]\n" + GOOD_ROLE)
    assert (p.default_ttl, p.max_ttl, p.default_extensions, p.default_role) == (3600, 8 * 3600, ("permit-pty",), None)
    assert p.roles["dev"].extensions == ("permit-pty",)  # docs/security.md rule 5
    # The built-in 1h default ttl is capped by a smaller max_ttl.
    assert policy('[defaults]\nmax_ttl = "20m"\n[roles.dev]\n' + GOOD_ROLE).default_ttl == 1200


def test_principal_pattern_is_configurable_but_comma_space_star_never_pass():
    loose = r"^[A-Za-z][A-Za-z0-9]*$"
    p = policy(doc('members = ["*"]\nprincipals = ["Admin", "{user}"]'), principal_pattern=loose)
    assert p.roles["dev"].principals == ("Admin", "{user}")
    assert p.principal_pattern == loose
    for bad in ("a,b", "a b", "a*", "a\\tb"):
        with pytest.raises(PolicyError, match="contains a comma"):
            policy(doc(f'members = ["*"]\nprincipals = ["{bad}"]'), principal_pattern=r"^.+$")
    # ...and not through a template expansion either.
    anything = policy(doc(), principal_pattern=r"^.+$")
    for user in ("x,y", "x y", "x*"):
        with pytest.raises(PolicyDenied):
            anything.decide(who(user), ask(), now=NOW, skew=SKEW)


def test_invalid_principal_pattern_is_a_policy_error():
    with pytest.raises(PolicyError, match=r"^test-policy.toml: invalid principal pattern"):
        policy(doc(), principal_pattern="([a-z")


# --------------------------------------------------------------------------
# decide()


def test_dev_certificate_is_for_the_user_only():
    p = policy()
    d = decide(p, who("alice"), ask("dev"))
    assert d == Decision(
        user="alice",
        role="dev",
        principals=("alice",),
        valid_after=NOW - SKEW,
        valid_before=NOW + 3600,
        ttl=3600,
        force_command=None,
        source_address=(),
        extensions=("permit-agent-forwarding", "permit-port-forwarding", "permit-pty"),
        reason=None,
        policy_sha256=hashlib.sha256(POLICY.encode()).hexdigest(),
    )


def test_templates_expand_and_duplicates_collapse_in_order():
    p = policy()
    assert decide(p, who("carol"), ask("deploy")).principals == ("carol", "carol-ro", "deploy")
    # For dave (member via identity-provider group), "carol" stays a literal.
    assert decide(p, who("dave", groups=("security",)), ask("deploy")).principals == ("dave", "dave-ro", "deploy", "carol")


@pytest.mark.parametrize("user", ["Bob Smith", "x,y", "root*", "Alice", "", "a" * 33, "bob\n", "-rf"])
def test_user_name_that_cannot_be_a_principal_is_denied(user):
    with pytest.raises(PolicyDenied) as e:
        decide(policy(), who(user), ask("dev"))
    assert "does not match" in str(e.value)
    assert "\n" not in str(e.value)


def test_ttl_defaults_and_caps():
    p = policy()
    assert decide(p, who("alice"), ask("dev")).ttl == 3600  # [defaults].ttl
    assert decide(p, who("alice", mfa=True), ask("prod-readonly", reason="x")).ttl == 1800  # capped by 30m
    assert decide(p, who("carol"), ask("deploy")).ttl == 600  # the role's own ttl
    assert decide(p, who("alice"), ask("dev", ttl=7200)).ttl == 7200
    assert decide(p, who("alice"), ask("dev", ttl=8 * 3600)).ttl == 8 * 3600  # exactly the max is fine


def test_ttl_over_role_max_is_denied_naming_the_limit():
    p = policy()
    with pytest.raises(PolicyDenied) as e:
        decide(p, who("alice"), ask("dev", ttl=9 * 3600))
    assert str(e.value) == "requested ttl 9h exceeds role dev max_ttl 8h"
    with pytest.raises(PolicyDenied) as e:
        decide(p, who("alice", mfa=True), ask("prod-readonly", ttl=1801, reason="debug"))
    assert str(e.value) == "requested ttl 30m1s exceeds role prod-readonly max_ttl 30m"
    assert e.value.exit_status == 3


@pytest.mark.parametrize("ttl", [0, -1, -3600, True, 1.5, "1h"])
def test_non_positive_or_non_integer_ttl_is_denied(ttl):
    with pytest.raises(PolicyDenied, match="positive number of seconds"):
        decide(policy(), who("alice"), ask("dev", ttl=ttl))


def test_validity_window_is_now_minus_skew_to_now_plus_ttl():
    p = policy()
    d = p.decide(who("alice"), ask("dev", ttl=900), now=2_000_000_000, skew=300)
    assert (d.valid_after, d.valid_before) == (2_000_000_000 - 300, 2_000_000_000 + 900)
    d = p.decide(who("alice"), ask("dev", ttl=900), now=2_000_000_000, skew=0)
    assert (d.valid_after, d.valid_before) == (2_000_000_000, 2_000_000_900)


@pytest.mark.parametrize("skew", [-1, 301, 1.0, None])
def test_skew_outside_0_to_300_is_refused(skew):
    with pytest.raises(ConfigError):
        policy().decide(who("alice"), ask("dev"), now=NOW, skew=skew)


def test_unknown_role_is_denied():
    with pytest.raises(PolicyDenied) as e:
        decide(policy(), who("alice"), ask("root"))
    assert str(e.value) == "no such role 'root'"
    with pytest.raises(PolicyDenied) as e:
        decide(policy(), who("alice"), ask("x\ny"))
    assert str(e.value) == "no such role 'x\\ny'"


def test_non_member_is_denied_naming_role_and_members():
    p = policy()
    with pytest.raises(PolicyDenied) as e:
        decide(p, who("dave", mfa=True), ask("prod-readonly", reason="curious"))
    assert str(e.value) == "dave may not use role prod-readonly (members: group:sre)"
    # A non-member is refused before MFA is asked for: the role's
    # requirements are not the business of someone who may not use it.
    with pytest.raises(PolicyDenied, match="may not use role prod-readonly"):
        decide(p, who("dave"), ask("prod-readonly"))


def test_group_membership_via_policy_groups_and_identity_groups():
    p = policy()
    assert decide(p, who("bob", mfa=True), ask("prod-readonly", reason="incident 42")).principals == ("prod-ro",)
    assert decide(p, who("erin", mfa=True, groups=("sre",)), ask("prod-readonly", reason="x")).user == "erin"
    with pytest.raises(PolicyDenied):
        decide(p, who("erin", mfa=True, groups=("security", "sre-admins")), ask("prod-readonly", reason="x"))
    assert p.groups_of("alice") == ("sre",)
    assert p.groups_of("carol") == ("security",)
    assert p.groups_of("zoe") == ()
    assert p.is_member(p.roles["deploy"], who("carol"))
    assert not p.is_member(p.roles["deploy"], who("alice"))


@pytest.mark.parametrize("reason", [None, "", "   ", "\t\n"])
def test_missing_reason_is_denied(reason):
    with pytest.raises(PolicyDenied) as e:
        decide(policy(), who("alice", mfa=True), ask("prod-readonly", reason=reason))
    assert str(e.value) == "role prod-readonly requires a reason"


@pytest.mark.parametrize("reason", ["a\nb", "bell\x07", "esc \x1b[31m", "bidi \u202e", "x" * 501])
def test_unprintable_or_long_reason_is_denied(reason):
    with pytest.raises(PolicyDenied, match="reason"):
        decide(policy(), who("alice"), ask("dev", reason=reason))


def test_reason_is_stripped_and_kept():
    p = policy()
    d = decide(p, who("alice", mfa=True), ask("prod-readonly", reason="  INC-1234 disk full  "))
    assert d.reason == "INC-1234 disk full"
    assert decide(p, who("alice"), ask("dev", reason="x" * 500)).reason == "x" * 500
    assert decide(p, who("alice"), ask("dev", reason="  ")).reason is None
    assert decide(p, who("alice"), ask("dev", reason="café ☕")).reason == "café ☕"


def test_missing_mfa_is_an_authentication_failure():
    with pytest.raises(AuthenticationFailed) as e:
        decide(policy(), who("alice", mfa=False), ask("prod-readonly", reason="incident"))
    assert str(e.value) == "role prod-readonly requires a second factor (one-time code)"
    assert e.value.exit_status == 4
    assert not isinstance(e.value, PolicyDenied)


def test_options_and_extensions_come_from_the_role_only():
    # SignRequest has no way to carry options or extensions at all...
    names = {f.name for f in dataclasses.fields(SignRequest)}
    assert not names & {"force_command", "source_address", "extensions", "critical_options", "principals"}
    # ...and the decision carries exactly the role's.
    p = policy()
    role = p.roles["prod-readonly"]
    d = decide(p, who("alice", mfa=True), ask("prod-readonly", ttl=60, reason="x"))
    assert d.force_command == role.force_command == "/usr/local/bin/prod-readonly-shell"
    assert d.source_address == role.source_address == ("10.20.0.0/16", "2001:db8::/32")
    assert d.extensions == role.extensions == ("permit-pty",)
    assert d.principals == ("prod-ro",)


def test_role_choice_when_none_is_requested():
    p = policy()
    # alice may use dev and prod-readonly: she must choose.
    with pytest.raises(PolicyDenied) as e:
        decide(p, who("alice"), ask())
    assert str(e.value) == "no role requested; roles you may request: dev, prod-readonly"
    # With only one usable role, that one is chosen.
    only = policy(doc('members = ["alice"]\nprincipals = ["{user}"]'))
    assert decide(only, who("alice"), ask()).role == "dev"
    with pytest.raises(PolicyDenied) as e:
        decide(only, who("bob"), ask())
    assert str(e.value) == "no role requested; roles you may request: none"
    # [defaults].role wins when set, and membership is still checked.
    with_default = policy(POLICY.replace('extensions = ["permit-pty"]\n', 'extensions = ["permit-pty"]\nrole = "deploy"\n', 1))
    assert with_default.default_role == "deploy"
    assert decide(with_default, who("carol"), ask()).role == "deploy"
    with pytest.raises(PolicyDenied, match="alice may not use role deploy"):
        decide(with_default, who("alice"), ask())
    assert decide(with_default, who("alice"), ask("dev")).role == "dev"


def test_decision_records_the_policy_hash():
    a, b = policy(), policy(POLICY + "\n# a comment\n")
    assert decide(a, who("alice"), ask("dev")).policy_sha256 == hashlib.sha256(POLICY.encode()).hexdigest()
    assert decide(b, who("alice"), ask("dev")).policy_sha256 != decide(a, who("alice"), ask("dev")).policy_sha256


# --------------------------------------------------------------------------
# explain()


def test_explain_every_role_for_a_user():
    verdicts = {v.role: v for v in policy().explain("dave")}
    assert list(verdicts) == ["dev", "prod-readonly", "deploy"]
    dev = verdicts["dev"]
    assert dev.allowed and dev.reasons == ()
    assert dev.principals == ("dave",)
    assert (dev.ttl, dev.max_ttl) == (3600, 8 * 3600)
    prod = verdicts["prod-readonly"]
    assert not prod.allowed
    assert prod.reasons == ("dave is not a member (members: group:sre)",)
    assert prod.principals is None and prod.force_command is None


def test_explain_one_role_as_json():
    [v] = policy().explain("bob", role="prod-readonly")
    assert isinstance(v, RoleVerdict)
    j = v.as_json()
    assert json.loads(json.dumps(j)) == j
    assert j == {
        "role": "prod-readonly",
        "allowed": True,
        "reasons": [],
        "description": "Read-only production debugging",
        "is_default": False,
        "principals": ["prod-ro"],
        "ttl": 1800,
        "max_ttl": 1800,
        "extensions": ["permit-pty"],
        "force_command": "/usr/local/bin/prod-readonly-shell",
        "source_address": ["10.20.0.0/16", "2001:db8::/32"],
        "require_reason": True,
        "require_mfa": True,
        "approval": None,
    }


def test_explain_unknown_role_and_unusable_user_name():
    [v] = policy().explain("bob", role="nope")
    assert (v.allowed, v.reasons) == (False, ("no such role 'nope'",))
    [v] = policy().explain("Bob Smith", role="dev")
    assert not v.allowed and "does not match" in v.reasons[0]


# --------------------------------------------------------------------------
# approval = { approvers, required, expires }: just-in-time access


APPROVAL_GROUPS = 'sre = ["alice", "bob"]\nsecurity = ["carol", "dave"]\nleads = ["carol", "erin"]\nidp = []\n'


def approval_doc(table: str) -> str:
    return doc('members = ["group:sre"]\nprincipals = ["root"]\nrequire_reason = true\n' + f"approval = {table}\n",
               groups=APPROVAL_GROUPS)


APPROVAL_ERRORS = [
    # (id, the approval table, the exact "where", a phrase of the reason)
    ("unknown key", '{ approvers = ["group:security"], quorum = 2 }', "roles.dev.approval.quorum",
     "unknown key in approval (allowed: approvers, required, expires, require_mfa)"),
    ("misspelt expires", '{ approvers = ["carol"], expire = "1h" }', "roles.dev.approval.expire", "unknown key"),
    ("missing approvers", '{ required = 1 }', "roles.dev.approval.approvers", "required"),
    ("empty approvers", '{ approvers = [] }', "roles.dev.approval.approvers", "must not be empty"),
    ("approvers a string", '{ approvers = "group:security" }', "roles.dev.approval.approvers", "expected a list"),
    ("unknown group", '{ approvers = ["group:secops"] }', "roles.dev.approval.approvers",
     "group:secops: no such group in [groups]"),
    ("bad user name", '{ approvers = ["Carol"] }', "roles.dev.approval.approvers", "Carol is not a user name"),
    ("anyone", '{ approvers = ["*"] }', "roles.dev.approval.approvers", "is not a user name"),
    ("duplicate approver", '{ approvers = ["carol", "carol"] }', "roles.dev.approval.approvers", "listed twice"),
    ("required zero", '{ approvers = ["carol"], required = 0 }', "roles.dev.approval.required",
     "expected an integer of at least 1, got an integer (0)"),
    ("required negative", '{ approvers = ["carol"], required = -1 }', "roles.dev.approval.required", "at least 1"),
    ("required a string", '{ approvers = ["carol"], required = "2" }', "roles.dev.approval.required",
     "got a string"),
    ("required a boolean", '{ approvers = ["carol"], required = true }', "roles.dev.approval.required",
     "got a boolean"),
    ("required a float", '{ approvers = ["carol"], required = 1.0 }', "roles.dev.approval.required", "got a float"),
    ("more than the approvers", '{ approvers = ["group:security"], required = 3 }', "roles.dev.approval.required",
     "3 exceeds the 2 distinct users the approvers expand to (carol, dave)"),
    # carol is in both groups and named herself: she is one approver, not three.
    ("an approver counts once", '{ approvers = ["carol", "group:security", "group:leads"], required = 4 }',
     "roles.dev.approval.required", "4 exceeds the 3 distinct users the approvers expand to (carol, dave, erin)"),
    ("only an empty group", '{ approvers = ["group:idp"] }', "roles.dev.approval.required",
     "1 exceeds the 0 distinct users the approvers expand to"),
    ("expires not a duration", '{ approvers = ["carol"], expires = "an hour" }', "roles.dev.approval.expires",
     "expected a duration"),
    ("expires an integer", '{ approvers = ["carol"], expires = 3600 }', "roles.dev.approval.expires",
     "expected a duration"),
    ("expires zero", '{ approvers = ["carol"], expires = "0s" }', "roles.dev.approval.expires", "positive"),
    ("expires beyond the ceiling", '{ approvers = ["carol"], expires = "400d" }', "roles.dev.approval.expires",
     "ceiling"),
    ("approval a list", '["group:security"]', "roles.dev.approval", "expected a table, got a list"),
]


@pytest.mark.parametrize("table, where, reason", [e[1:] for e in APPROVAL_ERRORS], ids=[e[0] for e in APPROVAL_ERRORS])
def test_each_approval_mistake_names_the_field(table, where, reason):
    with pytest.raises(PolicyError) as e:
        policy(approval_doc(table))
    message = str(e.value)
    assert message.startswith(f"{PATH}: {where}: "), message
    assert reason in message, message
    assert "\n" not in message


def test_approval_parses_with_defaults_and_expands_approvers():
    p = policy(approval_doc('{ approvers = ["erin", "group:security"], required = 3, expires = "2s" }'))
    role = p.roles["dev"]
    assert role.approval == Approval(approvers=("erin", "group:security"), required=3, expires=2)
    assert p.approvers_of(role) == ("carol", "dave", "erin")
    p = policy(approval_doc('{ approvers = ["group:security"] }'))
    assert p.roles["dev"].approval == Approval(approvers=("group:security",), required=1, expires=3600)
    # A role without the table needs no approval.
    assert policy().roles["dev"].approval is None and policy().approvers_of(policy().roles["dev"]) == ()


def test_may_approve_by_name_by_group_and_by_identity_provider_group():
    p = policy(approval_doc('{ approvers = ["erin", "group:security", "group:idp"] }'.replace("erin", "zoe")))
    role = p.roles["dev"]
    assert p.may_approve(role, who("carol")) and p.may_approve(role, who("zoe"))
    assert not p.may_approve(role, who("alice")) and not p.may_approve(role, who("erin"))
    assert p.may_approve(role, who("frank", groups=("idp",)))  # filled by an identity provider
    assert not p.may_approve(policy().roles["dev"], who("carol"))  # no approval table: nobody approves


def test_decide_stays_pure_approval_is_enforced_by_the_authority():
    # decide() grants an approval role like any other; Authority.issue refuses it without an
    # approved request (tests/test_approvals.py).
    p = policy(approval_doc('{ approvers = ["group:security"] }'))
    d = p.decide(who("alice"), ask("dev", reason="INC-1"), now=NOW, skew=SKEW)
    assert (d.role, d.principals) == ("dev", ("root",))


def test_explain_shows_the_approval():
    [v] = policy(approval_doc('{ approvers = ["group:security"], required = 2, expires = "30m" }')).explain(
        "alice", role="dev")
    assert v.as_json()["approval"] == {"approvers": ["group:security"], "required": 2, "expires": 1800,
                                       "require_mfa": False}


# --------------------------------------------------------------------------
# Property: any decision stays inside what the role allows.

USERS = ["alice", "bob", "carol", "_svc", "d.e-f"]
GROUPS = ["sre", "ops", "db"]
ROLE_NAMES = ["dev", "ops", "prod-ro", "db.admin", "r1"]
TEMPLATES = ["{user}", "{user}-ro", "deploy", "root", "_x", "{user}.{user}", "app-{user}"]
CIDRS = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/48", "0.0.0.0/0"]


@st.composite
def valid_policy_docs(draw):
    groups = draw(st.dictionaries(st.sampled_from(GROUPS), st.lists(st.sampled_from(USERS), unique=True, max_size=4), max_size=3))
    max_ttl = draw(st.integers(60, 3 * 86400))
    defaults: dict = {"max_ttl": format_duration(max_ttl)}
    if draw(st.booleans()):
        defaults["ttl"] = format_duration(draw(st.integers(1, max_ttl)))
    if draw(st.booleans()):
        defaults["extensions"] = draw(st.lists(st.sampled_from(sorted(EXTENSIONS)), unique=True))
    member_choices = ["*", *USERS, *(f"group:{g}" for g in groups)]
    roles = {}
    for name in draw(st.lists(st.sampled_from(ROLE_NAMES), unique=True, min_size=1)):
        role: dict = {
            # Half the roles are open to all, so that many generated requests get a decision.
            "members": draw(st.just(["*"]) | st.lists(st.sampled_from(member_choices), unique=True, min_size=1, max_size=3)),
            "principals": draw(st.lists(st.sampled_from(TEMPLATES), unique=True, min_size=1, max_size=4)),
        }
        role_max = max_ttl
        if draw(st.booleans()):
            role_max = draw(st.integers(1, max_ttl))
            role["max_ttl"] = format_duration(role_max)
        if draw(st.booleans()):
            role["ttl"] = format_duration(draw(st.integers(1, role_max)))
        if draw(st.booleans()):
            role["extensions"] = draw(st.lists(st.sampled_from(sorted(EXTENSIONS)), unique=True))
        if draw(st.booleans()):
            role["force_command"] = draw(st.sampled_from(["/bin/true", "/usr/bin/sudo -l", "echo 'hi, there'"]))
        if draw(st.booleans()):
            role["source_address"] = draw(st.lists(st.sampled_from(CIDRS), unique=True, min_size=1))
        for flag in ("require_reason", "require_mfa"):
            if draw(st.booleans()):
                role[flag] = draw(st.booleans())
        roles[name] = role
    if draw(st.booleans()):
        defaults["role"] = draw(st.sampled_from(sorted(roles)))
    return {"defaults": defaults, "groups": groups, "roles": roles}


identities = st.builds(
    Identity,
    user=st.one_of(
        st.sampled_from(USERS), st.sampled_from([*USERS, "zoe", "Bob Smith", "x,y", "root*", ""]), st.text(max_size=12)
    ),
    auth_methods=st.just(("publickey",)),
    mfa=st.booleans(),
    groups=st.lists(st.one_of(st.sampled_from(GROUPS), st.text(max_size=5)), max_size=3).map(tuple),
)


def requests_for(role_names) -> st.SearchStrategy[SignRequest]:
    """Requests that mostly name a role the policy has, so most get past the first check."""
    return st.builds(
        SignRequest,
        public_key=st.just("ssh-ed25519 AAAA"),
        role=st.one_of(st.none(), st.sampled_from(sorted(role_names)), st.sampled_from(sorted(role_names)), st.text(max_size=8)),
        ttl=st.one_of(st.none(), st.none(), st.integers(-100, 4 * 86400)),
        reason=st.one_of(st.none(), st.sampled_from(["", "  ", "incident 7"]), st.text(max_size=40)),
    )


@FUZZ
@given(valid_policy_docs(), identities, st.data(), st.integers(300, 2**40), st.integers(0, 300))
def test_property_decisions_stay_within_the_role(document, identity, data, now, skew):
    request = data.draw(requests_for(document["roles"]))
    p = parse_policy(toml_document(document).encode(), path=PATH)
    # The generated document parses to what it says...
    assert list(p.roles) == list(document["roles"])
    for name, body in document["roles"].items():
        assert p.roles[name].principals == tuple(body["principals"])
        assert p.roles[name].members == tuple(body["members"])
        inherited = document["defaults"].get("extensions", ["permit-pty"])
        assert p.roles[name].extensions == tuple(sorted(body.get("extensions", inherited)))
    # ...and whatever decide() grants stays inside the chosen role.
    try:
        d = p.decide(identity, request, now=now, skew=skew)
    except (PolicyDenied, AuthenticationFailed) as e:
        assert "\n" not in str(e)
        return
    role = p.roles[d.role]
    assert request.role in (None, d.role)
    assert p.is_member(role, identity)
    expanded = {t.replace("{user}", identity.user) for t in role.principals}
    assert d.principals, "docs/security.md rule 1: never an empty principal list"
    assert set(d.principals) <= expanded
    assert len(set(d.principals)) == len(d.principals)
    for principal in d.principals:
        assert re.fullmatch(DEFAULT_PRINCIPAL_PATTERN, principal)
        assert not set(principal) & set(", *\t\n")
    assert 0 < d.ttl <= role.max_ttl
    assert d.ttl == (role.ttl if request.ttl is None else request.ttl)
    assert d.valid_before - d.valid_after == d.ttl + skew
    assert (d.valid_after, d.valid_before) == (now - skew, now + d.ttl)
    assert (d.extensions, d.force_command, d.source_address) == (
        role.extensions,
        role.force_command,
        role.source_address,
    )
    assert list(d.extensions) == sorted(d.extensions)
    if role.require_mfa:
        assert identity.mfa
    if role.require_reason:
        assert d.reason and d.reason == d.reason.strip()
    assert d.policy_sha256 == p.sha256


# --------------------------------------------------------------------------
# Fuzzing the parser (docs/security.md rule 21): PolicyError or a Policy, nothing else.


def toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    """A tiny TOML writer: every table inline, every key quoted."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("-inf" if v < 0 else "inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_document(d: dict) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in d.items())


ALL_KEYS = [
    "defaults", "groups", "roles", "ttl", "max_ttl", "extensions", "role", "description", "members",
    "principals", "force_command", "source_address", "require_reason", "require_mfa",
    "approval", "approvers", "required", "expires", "permit_open", "critical_options",
]
PLAUSIBLE = [
    "1h", "30m", "0s", "8h", "12h", "400d", "-1h", "1h30m", "{user}", "{user}-ro", "{host}", "*", "group:sre",
    "group:nope", "permit-pty", "permit-everything", "10.0.0.0/8", "10.0.0.1/8", "::/0", "alice", "Bob", "a,b",
    "", " ", "dev", "/bin/true", "x\ny", "\x00",
]
keys = st.one_of(st.sampled_from(ALL_KEYS + ROLE_NAMES + GROUPS), st.text(max_size=8))
scalars = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.text(max_size=12),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
plausible_lists = st.lists(st.sampled_from(PLAUSIBLE), max_size=3)
role_bodies = st.dictionaries(
    st.sampled_from(ALL_KEYS) | keys, st.one_of(st.sampled_from(PLAUSIBLE), plausible_lists, values), max_size=8
)
schema_like = st.fixed_dictionaries(
    {},
    optional={
        "defaults": st.dictionaries(st.sampled_from(ALL_KEYS) | keys, st.one_of(st.sampled_from(PLAUSIBLE), plausible_lists, values), max_size=5) | values,
        "groups": st.dictionaries(st.sampled_from(GROUPS) | keys, st.one_of(st.lists(st.sampled_from(USERS + ["Bob"])), values), max_size=3) | values,
        "roles": st.dictionaries(st.sampled_from(ROLE_NAMES) | keys, role_bodies | values, max_size=3) | values,
    },
)


def _paths(node):
    """Every (container, key) in a nested document, for perturbing it."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield node, k
        yield from _paths(v)


@st.composite
def perturbed_valid_docs(draw):
    """A valid policy with one to three things changed: the parser's deep paths."""
    document = draw(valid_policy_docs())
    for _ in range(draw(st.integers(1, 3))):
        spots = list(_paths(document))
        container, key = draw(st.sampled_from(spots))
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace" or (op == "delete" and isinstance(container, list)):
            container[key] = draw(st.one_of(st.sampled_from(PLAUSIBLE), plausible_lists, values))
        elif op == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(keys)] = draw(st.one_of(st.sampled_from(PLAUSIBLE), values))
        else:
            container.append(draw(st.sampled_from(PLAUSIBLE)))
    return document


documents = st.one_of(perturbed_valid_docs(), schema_like, st.dictionaries(keys, values, max_size=5))


def parses_or_policy_error(data: bytes) -> Policy | None:
    try:
        p = parse_policy(data, path=PATH)
    except PolicyError as e:
        message = str(e)
        assert message.startswith(PATH + ": ")
        assert "\n" not in message and "\r" not in message
        return None
    # Whatever got through must still honour rules 1, 2 and 5.
    assert isinstance(p, Policy) and p.roles
    for role in p.roles.values():
        assert role.principals and role.members
        assert all(not set(x) & set(", *") for x in role.principals)
        assert set(role.extensions) <= EXTENSIONS and list(role.extensions) == sorted(role.extensions)
        assert 0 < role.ttl <= role.max_ttl <= p.max_ttl
    return p


@FUZZ
@given(documents)
def test_fuzz_arbitrary_toml_documents(document):
    text = toml_document(document)
    assert tomllib.loads(text) == document  # the writer is right, so the parser sees this document
    parses_or_policy_error(text.encode())


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data):
    parses_or_policy_error(data)


EXAMPLE_BYTES = (ROOT / "config" / "policy.toml").read_bytes()


mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "dup"]), st.integers(0, len(EXAMPLE_BYTES)), st.integers(0, 255)
)


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=6))
def test_fuzz_byte_mutations_of_the_example(mutations):
    data = bytearray(EXAMPLE_BYTES)
    for op, pos, byte in mutations:
        pos = min(pos, len(data) - 1)
        if op == "flip":
            data[pos] ^= 1 << (byte % 8)
        elif op == "insert":
            data.insert(pos, byte)
        elif op == "delete":
            del data[pos]
        else:
            data[pos:pos] = data[pos : pos + 1 + byte % 16]
    assume(bytes(data) != EXAMPLE_BYTES)
    p = parses_or_policy_error(bytes(data))
    if p is not None:
        assert p.sha256 == hashlib.sha256(bytes(data)).hexdigest()
