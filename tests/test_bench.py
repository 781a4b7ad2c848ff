"""The benchmark suite runs end to end (``python -m bench --quick``) and records every scenario.

No timing is asserted here: the figures depend on the machine. What must
hold is that every scenario ran (or says why it could not) and left
numbers in bench/results/latest.json.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
# Every scenario must run: none may skip (the PostgreSQL ones only where it is not installed, never under CI).
MAY_SKIP: set[str] = set() if os.environ.get("CI", "").strip().lower() == "true" else {"pipeline-pg", "replicas"}


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [obj]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return []


@pytest.mark.slow
def test_quick_run_records_every_scenario():
    out = ROOT / "bench" / "results" / "latest.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and "bench" in doc["command"]
    for key in ("nproc", "python", "asyncssh", "openssh", "date"):
        assert doc["machine"][key], key
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for name, res in doc["scenarios"].items():
        if res["status"] == "skipped":
            assert name in MAY_SKIP and res["note"], (name, res)
            continue
        assert res["status"] == "ok", (name, res.get("note"), res.get("traceback"))
        assert res["rows"], name
        for row in res["rows"]:
            assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]), (name, row)
            if row["target"] is not None:
                assert isinstance(row["baseline"], (int, float)) and row["baseline"] > 0, (name, row)
                assert isinstance(row["met"], bool), (name, row)
        assert _numbers(res["figures"]), name
    for name in SCENARIOS:
        assert name in r.stdout  # the table was printed
