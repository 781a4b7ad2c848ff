"""Shared fixtures: a fresh CA in tmp_path, real user keys from ssh-keygen, and the CLI."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca.app import open_authority
from ca.cli.admin import cli
from ca.config import default_config
from ca.sshcert.wire import string
from ca.state import init_state

TEST_POLICY = """\
[defaults]
ttl = "1h"
max_ttl = "8h"
role = "dev"

[groups]
sre = ["alice", "bob"]
security = ["carol"]

[roles.dev]
description = "dev hosts as yourself"
members = ["*"]
principals = ["{user}"]
max_ttl = "8h"
extensions = ["permit-pty", "permit-port-forwarding"]

[roles.prod-readonly]
description = "read-only production"
members = ["group:sre"]
principals = ["prod-ro", "{user}"]
force_command = "/usr/local/bin/prod-readonly-shell --audit"
source_address = ["10.20.0.0/16", "127.0.0.2/32"]
max_ttl = "30m"
require_reason = true

[roles.breakglass]
description = "needs a second factor"
members = ["group:security"]
principals = ["root"]
max_ttl = "15m"
require_mfa = true
require_reason = true
extensions = []
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(TEST_POLICY)
    return p


@pytest.fixture
def cfg(tmp_path: Path, policy_file: Path, database):
    """A freshly initialised CA (Ed25519, no passphrase) using the test policy (on ``database``)."""
    c = default_config().with_overrides(state_dir=str(tmp_path / "state"), policy=str(policy_file),
                                        database=database)
    init_state(c, "ed25519", None)
    return c


@pytest.fixture
def authority(cfg):
    a = open_authority(cfg)
    yield a
    a.close()


@pytest.fixture
def cli_run(tmp_path: Path, policy_file: Path, database):
    """Run ``iast-ca`` in-process with the test state dir and policy (and ``database``); returns click's Result."""
    state = tmp_path / "state"

    def run(*args: str, input: str | None = None, env: dict | None = None):
        base = ["--state-dir", str(state), "--policy", str(policy_file)]
        if database:
            env = {"IAST_CA_DATABASE": database, **(env or {})}
        return CliRunner().invoke(cli, base + list(args), input=input, env=env, catch_exceptions=False)

    run.state = state
    run.database = database
    return run


def make_key(tmp_path: Path, kind: str = "ed25519", bits: int | None = None, name: str | None = None) -> Path:
    """A real key pair from ssh-keygen; returns the private key path (``.pub`` beside it)."""
    path = tmp_path / (name or f"id_{kind}{bits or ''}")
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test", "-f", str(path)]
    if bits:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True)
    return path


def sk_key_line(kind: str) -> str:
    """A FIDO (sk-*) public key line. No token is needed to certify one: its
    public blob is a normal key plus the application string (PROTOCOL.u2f)."""
    if kind == "sk-ssh-ed25519@openssh.com":
        pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        blob = string(kind) + string(pub) + string("ssh:")
    else:
        pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        blob = string(kind) + string("nistp256") + string(pub) + string("ssh:")
    return f"{kind} {base64.b64encode(blob).decode()} hw-key"


def keygen_L(cert_path: Path) -> dict:
    """Parse ``ssh-keygen -L`` (times in UTC) into a dict of its fields."""
    out = subprocess.run(["ssh-keygen", "-L", "-f", str(cert_path)], check=True, capture_output=True, text=True,
                         env={**os.environ, "TZ": "UTC"}).stdout
    fields: dict = {"principals": [], "critical": {}, "extensions": []}
    section = None
    for line in out.splitlines()[1:]:
        if line.startswith(" " * 16) or line.startswith("\t\t"):
            item = line.strip()
            if section == "principals":
                fields["principals"].append(item)
            elif section == "critical":
                name, _, value = item.partition(" ")
                fields["critical"][name] = value
            elif section == "extensions":
                fields["extensions"].append(item)
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip()
        section = {"Principals": "principals", "Critical Options": "critical", "Extensions": "extensions"}.get(key)
        if section is None:
            fields[key] = value
        elif value.strip() == "(none)":
            pass
    m = re.match(r"from (\S+) to (\S+)", fields.get("Valid", ""))
    if m:
        fields["valid_from"], fields["valid_to"] = m.groups()
    return fields


# -- PostgreSQL (tests/pg_harness.py) -------------------------------------------------------


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (skipped loudly when missing; fails under CI=true)."""
    from .pg_harness import start_server

    server = start_server()
    yield server
    server.destroy()


@pytest.fixture
def pg_url(postgres) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return postgres.create_database()


BOTH = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    """A test marked ``both_backends`` (or in a module so marked) runs once per storage backend, unless
    also marked ``sqlite_only`` (it opens the SQLite file itself): its ``cfg`` and ``cli_run`` use that backend."""
    if metafunc.definition.get_closest_marker("sqlite_only"):
        return
    # Only tests that reach a database through the fixtures (cfg, cli_run, database) are doubled.
    if "database" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_backends"):
        metafunc.parametrize("db_backend", BOTH, indirect=True)


@pytest.fixture
def db_backend(request) -> str:
    """The storage backend of this test: ``sqlite`` unless parametrized (``both_backends``)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database(db_backend, request) -> str | None:
    """The ``database`` setting for ``db_backend``: None (STATE/ca.db) or a fresh PostgreSQL database's URL."""
    if db_backend == "sqlite":
        return None
    return request.getfixturevalue("postgres").create_database()
