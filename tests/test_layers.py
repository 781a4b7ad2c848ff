"""The shape of the code, checked: layers only import downwards, and only the store talks to a database.

docs/architecture.md lists the layers. A module may import from its own layer
or below; an import that runs back up the layers (the store reaching into the
service, the policy into the CLI) fails here, naming the file and the line.
Only modules under ``ca/store/`` may import a database driver or run a
statement, so a second storage backend is one new package and nothing else.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import ca

ROOT = Path(ca.__file__).resolve().parent

# Lowest first (docs/architecture.md, "Layers").
LAYERS: dict[str, int] = {
    "ca": 0, "ca.errors": 0, "ca.models": 0, "ca.durations": 0, "ca.files": 0, "ca.rules": 0,
    "ca.sshcert": 1, "ca.audit": 1,
    "ca.config": 2, "ca.policy": 2, "ca.client": 2,
    "ca.store": 3, "ca.keys": 3,
    "ca.auth": 4, "ca.access": 4, "ca.review": 4,
    "ca.issuance": 5,
    "ca.app": 6, "ca.state": 6,
    "ca.service": 7,
    "ca.cli": 8,
}
# The iast-ssh client runs on people's machines: only the CLI may build on it.
CLIENT_USERS = ("ca.cli", "ca.client")
DB_DRIVERS = ("sqlite3", "psycopg", "psycopg2", "sqlite_utils")
DB_CALLS = ("execute", "executemany", "executescript")


def layer_of(module: str) -> int:
    """The layer of ``ca.x.y``: its longest listed prefix."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return LAYERS[name]
    raise KeyError(f"{module} is in no layer: add its package to LAYERS and docs/architecture.md")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import, relative ones included (they are refused)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, "." * node.level + (node.module or "")))
    return out


def violations(module: str, source: str) -> list[str]:
    """Every broken rule of the shape in one module's source, as 'module:line: what'."""
    tree = ast.parse(source)
    own = layer_of(module)
    found = []
    for line, target in imports(tree):
        where = f"{module}:{line}"
        if target.startswith("."):
            found.append(f"{where}: relative import {target!r} (imports are absolute)")
            continue
        top = target.split(".")[0]
        if top in DB_DRIVERS and not module.startswith("ca.store"):
            found.append(f"{where}: imports the database driver {target!r} outside ca.store")
        if top != "ca":
            continue
        if target == "ca.client" or target.startswith("ca.client."):
            if not module.startswith(CLIENT_USERS):
                found.append(f"{where}: imports the client library {target!r}")
        if layer_of(target) > own:
            found.append(f"{where}: imports {target} (layer {layer_of(target)}) from layer {own}")
    if not module.startswith("ca.store"):
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in DB_CALLS):
                found.append(f"{module}:{node.lineno}: runs a statement (.{node.func.attr}) outside ca.store")
    return found


def all_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_imports():
    failed = {}
    for info in pkgutil.walk_packages(ca.__path__, "ca."):
        try:
            importlib.import_module(info.name)
        except Exception as e:  # noqa: BLE001 - report every module, not the first
            failed[info.name] = f"{type(e).__name__}: {e}"
    assert failed == {}


def test_imports_run_down_the_layers_and_only_the_store_touches_the_database():
    found = []
    for path in all_modules():
        found.extend(violations(module_name(path), path.read_text()))
    assert found == [], "\n".join(found)


def test_every_package_says_what_it_holds_and_may_import():
    missing = []
    for init in sorted(ROOT.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if "May import" not in doc and init.parent.name != "cli":
            missing.append(str(init.relative_to(ROOT.parent)))
    assert missing == []


@pytest.mark.parametrize("module, source, expect", [
    ("ca.store.sqlite", "from ca.service.server import Service\n", "imports ca.service.server (layer 7) from layer 3"),
    ("ca.policy.model", "from ca.cli.admin import cli\n", "imports ca.cli.admin (layer 8) from layer 2"),
    ("ca.access.revocation", "import sqlite3\n", "database driver 'sqlite3' outside ca.store"),
    ("ca.review.report", "def f(conn):\n    conn.execute('SELECT 1')\n", "runs a statement (.execute) outside ca.store"),
    ("ca.issuance.authority", "from ca.client import Client\n", "imports the client library 'ca.client'"),
    ("ca.auth.users", "from .throttle import Throttle\n", "relative import"),
])
def test_the_checker_catches_each_kind_of_break(module, source, expect):
    # The shape test is only worth something if it can fail: each break is caught.
    found = violations(module, source)
    assert any(expect in v for v in found), found


def test_the_checker_accepts_downward_imports():
    assert violations("ca.issuance.authority", "from ca.store import open_store\nfrom ca.rules import free_text\n") == []
