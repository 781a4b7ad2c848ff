"""``python -m bench``: run the scenarios, print the table, write bench/results/latest.json."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

from . import SCENARIOS
from .common import RESULTS, Outcome, Skip, fmt_num, loadavg, machine_info


def _clean(x):
    """JSON without NaN/inf (they are not JSON): None instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def table(results: dict) -> str:
    head = ["scenario", "figure", "value", "baseline", "ratio", "target", "met"]
    lines = []
    for name, res in results.items():
        if res["status"] != "ok":
            lines.append([name, res["status"].upper(), "-", "-", "-", "-", "-", ])
            lines.append(["", f"  {res['note']}"[:100], "", "", "", "", ""])
            continue
        for r in res["rows"]:
            base = fmt_num(r["baseline"], r["unit"]) + (f" ({r['baseline_name']})" if r["baseline_name"] else "") \
                if r["baseline"] is not None else "-"
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
            lines.append([name, r["figure"], fmt_num(r["value"], r["unit"]), base, ratio, r["target"] or "-", met])
            name = ""
    widths = [max(len(str(row[i])) for row in [head] + lines) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*[str(c) for c in row]) for row in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="Run the iast-ssh benchmarks.")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="every scenario at a small size (the whole run < 2 min)")
    p.add_argument("--profile", action="store_true",
                   help="also profile pipeline (cProfile) and login-fresh (py-spy on the service); "
                        "profiles go to bench/results/")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="result file (default: %(default)s)")
    args = p.parse_args(argv)
    if args.list:
        for name, mod in SCENARIOS.items():
            doc = (importlib.import_module(mod).__doc__ or "").strip().splitlines()[0]
            print(f"{name:12} {doc.split(':', 1)[-1].strip()}")
        return 0
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    names = args.names or list(SCENARIOS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    doc = {
        "command": " ".join(["python -m bench"] + (argv if argv is not None else sys.argv[1:])),
        "quick": args.quick,
        "machine": machine_info(),
        "scenarios": {},
    }
    failed = False
    for name in names:
        print(f"[bench] {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        load0 = loadavg()
        mod = importlib.import_module(SCENARIOS[name])
        try:
            outcome: Outcome = mod.run(args.quick, profile=args.profile, results_dir=RESULTS)
            res = {"status": "ok", "note": "; ".join(outcome.notes) or None,
                   "rows": [r.as_json() for r in outcome.rows], "figures": outcome.figures}
        except Skip as e:
            res = {"status": "skipped", "note": str(e), "rows": [], "figures": {}}
        except Exception as e:  # noqa: BLE001 - one broken scenario must not hide the others' figures
            failed = True
            res = {"status": "error", "note": f"{type(e).__name__}: {e}"[:500], "rows": [], "figures": {},
                   "traceback": traceback.format_exc()}
            print(res["traceback"], file=sys.stderr)
        res["seconds"] = round(time.time() - t0, 1)
        # The 1-minute load average around the scenario: other jobs on the machine disturb timings.
        res["loadavg"] = [load0, loadavg()]
        doc["scenarios"][name] = res
        print(f"[bench] {name}: {res['status']} in {res['seconds']} s"
              + (f" - {res['note']}" if res["note"] and res["status"] != "ok" else ""), file=sys.stderr, flush=True)
        # Written after every scenario: a long run that dies late keeps what it measured.
        doc["seconds"] = round(time.time() - started, 1)
        _write(args.out, doc)
        # A copy per run, so that a quick run (the test suite makes one) never loses a full run's figures.
        _write(RESULTS / time.strftime(f"run-%Y%m%dT%H%M%S{'-quick' if args.quick else ''}.json",
                                       time.gmtime(started)), doc)
    print(table(doc["scenarios"]))
    for name, res in doc["scenarios"].items():
        if res["status"] == "ok" and res["note"]:
            print(f"\n{name}: {res['note']}")
    print(f"\n{len(names)} scenario(s) in {doc['seconds']} s; results in {args.out}")
    return 1 if failed else 0


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_clean(doc), indent=2, default=str) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
