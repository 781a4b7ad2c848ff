"""docs/security.md names, under each promise, the tests that hold it: every one must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
    return out


def test_every_test_security_md_names_exists():
    text = (ROOT / "docs" / "security.md").read_text()
    refs = sorted(set(re.findall(r"tests/([a-z0-9_]+\.py)::([A-Za-z0-9_]+)", text)))
    assert len(refs) > 300  # the promises are held by named tests, not prose
    defined: dict[str, set[str]] = {}
    missing = []
    for file, name in refs:
        path = ROOT / "tests" / file
        if file not in defined:
            defined[file] = _names(path) if path.is_file() else set()
        if name not in defined[file]:
            missing.append(f"tests/{file}::{name}")
    assert not missing, missing


def test_every_rule_number_is_used_once():
    numbers = re.findall(r"^### (\d+)\. ", (ROOT / "docs" / "security.md").read_text(), re.M)
    assert numbers and len(numbers) == len(set(numbers)), sorted(n for n in numbers if numbers.count(n) > 1)
