"""How ``iast-ssh host check`` and ``iast-ca doctor`` report: one line per finding, exit 1 if any."""

from __future__ import annotations

from collections.abc import Sequence

from ca.cli.common import echo, echo_json
from ca.errors import EXIT_ERROR
from ca.models import Finding


def report_findings(findings: Sequence[Finding], fmt: str, clean: str) -> None:
    """Print the findings (``--json``: a list of objects); exit 1 with findings, 0 when clean."""
    if fmt == "json":
        echo_json([f.as_json() for f in findings])
    elif findings:
        for f in findings:
            echo(f.line())
    else:
        echo(clean)
    if findings:
        raise SystemExit(EXIT_ERROR)
