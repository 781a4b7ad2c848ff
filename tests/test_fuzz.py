"""Every parser is fuzzed (docs/security.md rule 21): Hypothesis and byte mutation
of real inputs. A malformed input gets our own error, never a crash, and a
changed certificate never verifies."""

from __future__ import annotations

import base64

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.audit.checkpoint import make_checkpoint, read_checkpoint
from ca.config import parse_config
from ca.errors import BadKey, ChainBroken, ConfigError
from ca.issuance.signer import Signer
from ca.models import Decision
from ca.sshcert.certificates import (
    parse_certificate,
    parse_certificate_line,
    verify_signature,
)
from ca.sshcert.userkey import parse_user_key
from ca.sshcert.wire import WireError

from .conftest import sk_key_line

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CA = asyncssh.generate_private_key("ssh-ed25519")
USER = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
USER_LINE = USER.export_public_key("openssh").decode().strip()
DECISION = Decision(
    user="alice", role="prod", principals=("prod-ro", "alice"), valid_after=1_000_000, valid_before=1_003_600,
    ttl=3600, force_command="/bin/echo hi", source_address=("10.0.0.0/8",),
    extensions=("permit-pty",), reason=None, policy_sha256="0" * 64,
)
CERT_LINE, CERT = Signer(CA).sign(DECISION, parse_user_key(USER_LINE), 42, "iast:alice:prod:42")


def mutations(data: bytes):
    """Byte-level mutations: flips, truncations, insertions, length-field lies."""
    return st.one_of(
        st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)).map(
            lambda t: data[: t[0]] + bytes([data[t[0]] ^ t[1]]) + data[t[0] + 1 :]
        ),
        st.integers(0, len(data) - 1).map(lambda i: data[:i]),
        st.tuples(st.integers(0, len(data)), st.binary(min_size=1, max_size=16)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] :]
        ),
        st.tuples(st.integers(0, len(data) - 4), st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                                                                  b"\x00\x00\x00\x00"])).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] + 4 :]
        ),
    )


@FUZZ
@given(mutations(CERT.blob))
def test_mutated_certificates_never_crash_and_never_verify(blob):
    try:
        cert = parse_certificate(blob)
    except WireError:
        return
    # It parsed: then it must be the original, or the signature must fail.
    try:
        verify_signature(cert, CA.public_data)
    except WireError:
        return
    assert cert.signed_data == CERT.signed_data


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_as_certificate(blob):
    with pytest.raises(WireError):
        parse_certificate(blob)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_certificate_lines(line):
    with pytest.raises(WireError):
        parse_certificate_line(line)


def test_the_unmutated_certificate_parses():
    assert parse_certificate_line(CERT_LINE).principals == ("prod-ro", "alice")
    assert CERT.force_command == "/bin/echo hi" and CERT.source_address == ("10.0.0.0/8",)


KEY_LINES = [
    USER_LINE,
    asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip(),
    sk_key_line("sk-ssh-ed25519@openssh.com"),
    sk_key_line("sk-ecdsa-sha2-nistp256@openssh.com"),
]


@FUZZ
@given(st.sampled_from(KEY_LINES).flatmap(lambda line: st.tuples(st.just(line), mutations(
    base64.b64decode(line.split()[1])))))
def test_mutated_public_keys(pair):
    line, blob = pair
    kind = line.split()[0]
    try:
        key = parse_user_key(f"{kind} {base64.b64encode(blob).decode()}")
    except BadKey:
        return
    assert key.blob == blob and key.algorithm == kind  # accepted only as exactly what it is


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_key_lines(line):
    try:
        parse_user_key(line)
    except BadKey:
        pass


AUDIT = asyncssh.generate_private_key("ssh-ed25519")
CHECKPOINT = make_checkpoint(AUDIT, 10, "ab" * 32, "2026-11-29T00:00:00Z", "cd" * 32)


@FUZZ
@given(mutations(CHECKPOINT.encode()))
def test_mutated_checkpoints(data):
    text = data.decode("utf-8", "replace")
    try:
        cp = read_checkpoint(text, AUDIT.public_data)
    except ChainBroken:
        return
    assert (cp.count, cp.head) == (10, "ab" * 32)


@FUZZ
@given(st.binary(max_size=300))
def test_config_parser_on_arbitrary_bytes(data):
    try:
        parse_config(data, "ca.toml")
    except ConfigError:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(["state_dir", "policy", "signing", "server", "x"]),
                       st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.lists(st.integers()),
                                 st.dictionaries(st.sampled_from(["clock_skew", "min_rsa_bits", "principal_pattern",
                                                                  "listen", "passphrase_file"]),
                                                 st.one_of(st.integers(), st.text(max_size=20), st.booleans())))))
def test_config_parser_on_arbitrary_toml(doc):
    import json

    def toml_value(v):
        return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")

    lines, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append(f"[{k}]\n" + "".join(f"{kk} = {toml_value(vv)}\n" for kk, vv in v.items()))
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(map(str, v))}]\n")
        else:
            lines.append(f"{k} = {toml_value(v)}\n")
    try:
        parse_config(("".join(lines) + "".join(tables)).encode(), "ca.toml")
    except ConfigError:
        pass


@FUZZ
@given(st.text(max_size=200))
def test_request_protocol_on_arbitrary_command_lines(line):
    from ca.errors import UsageError
    from ca.service.protocol import COMMANDS, parse_command

    try:
        cmd = parse_command(line)
    except UsageError:
        return
    assert cmd.name in COMMANDS
    assert cmd.ttl is None or cmd.ttl > 0


@FUZZ
@given(st.lists(st.sampled_from(["sign", "roles", "--role", "dev", "--ttl", "30m", "--reason", "x y", "--otp",
                                 "123456", "--json", "--json=1", "--role=", "'", '"', "--", "-r"]), max_size=8))
def test_request_protocol_on_plausible_words(words):
    import shlex

    from ca.errors import UsageError
    from ca.service.protocol import parse_command

    line = " ".join(shlex.quote(w) if w not in ("'", '"') else w for w in words)
    try:
        cmd = parse_command(line)
    except UsageError:
        return
    if cmd.role is not None:
        assert "--role" in line
