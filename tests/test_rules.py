"""One validator per rule (ca/rules.py): each rule refuses what it must, wherever the input arrives.

docs/security.md rules 2 and 24: the same characters are refused in a sign
reason, a revocation reason, a disable reason and an approval comment,
because each of them ends up in front of a reviewer.
"""

from __future__ import annotations

import pytest

from ca.errors import PolicyDenied, UsageError
from ca.rules import (
    DEFAULT_PRINCIPAL_PATTERN,
    check_user_name,
    free_text,
    is_user_name,
    principal_ok,
    principal_safe,
)

# One of each class a terminal, a spreadsheet or a bidi-aware viewer would act on.
HOSTILE = {
    "C0 newline": "line one\nline two",
    "C0 escape (CSI)": "ok \x1b[2J cleared",
    "DEL": "rub\x7fout",
    "C1 CSI": "c1 \x9b31m red",
    "C1 NEL": "next\x85line",
    "bidi override RLO": "invoice \u202egnp.exe",
    "bidi isolate LRI": "a \u2066b\u2069 c",
    "zero-width joiner": "ad\u200dmin",
    "line separator": "one\u2028two",
    "paragraph separator": "one\u2029two",
    "BOM / zero-width no-break": "\ufeffstart",
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_free_text_refuses_every_class_that_changes_what_a_reader_sees(text):
    with pytest.raises(UsageError, match=r"one line without control characters \(found U\+[0-9A-F]{4}\)"):
        free_text(text)


def test_free_text_keeps_ordinary_text_of_any_script_and_strips_it():
    assert free_text("  incident 42: disk full on db-3  ") == "incident 42: disk full on db-3"
    assert free_text("Störung – 東京 – ошибка") == "Störung – 東京 – ошибка"
    assert free_text("   ") is None and free_text(None) is None


def test_free_text_limits_length_and_type_and_raises_the_callers_error():
    assert free_text("x" * 500) == "x" * 500
    with pytest.raises(UsageError, match="too long"):
        free_text("x" * 501)
    with pytest.raises(PolicyDenied, match="must be text"):
        free_text(42, error=PolicyDenied)
    with pytest.raises(UsageError, match="the comment is too long"):
        free_text("x" * 11, "comment", limit=10)


@pytest.mark.parametrize("name, ok", [
    ("alice", True), ("_svc", True), ("a.b-c_d9", True), ("a" * 32, True),
    ("a" * 33, False), ("Alice", False), ("9lives", False), ("-x", False), ("", False),
    ("al ice", False), ("al,ice", False), ("ali\u0441e", False), (None, False), (b"alice", False),
])
def test_one_user_name_rule(name, ok):
    assert is_user_name(name) is ok
    if ok:
        assert check_user_name(name) == name
    else:
        with pytest.raises(UsageError, match="invalid user name"):
            check_user_name(name)


@pytest.mark.parametrize("principal", ["a,b", "a b", "a*", "a?", "!a", "a\tb", "a\x00", "a\x7f", ""])
def test_no_principal_with_a_separator_wildcard_negation_or_control(principal):
    # Whatever the configured pattern, even one that matches everything.
    assert not principal_safe(principal)
    assert not principal_ok(principal, r".*")


def test_principals_follow_the_pattern_and_the_forbidden_characters_together():
    assert principal_ok("alice") and principal_ok("prod-ro", DEFAULT_PRINCIPAL_PATTERN)
    assert not principal_ok("Admin") and principal_ok("Admin", r"^[A-Za-z]+$")
    assert principal_safe("Admin")


def test_the_same_rule_holds_for_revocation_disable_and_approval_text(tmp_path):
    """Each place that takes free text refuses a bidi override and a C1 control."""
    from ca.access.approvals import _comment
    from ca.access.revocation import check_reason

    for text in (HOSTILE["bidi override RLO"], HOSTILE["C1 CSI"]):
        with pytest.raises(UsageError):
            check_reason(text)
        with pytest.raises(UsageError):
            _comment(text)
    assert check_reason(" key leaked ") == "key leaked"
    with pytest.raises(UsageError, match="reason is required"):
        check_reason("  ")
