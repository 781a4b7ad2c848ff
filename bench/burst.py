"""burst: N plain ``ssh … sign`` started at once against a fresh ``iast-ca serve`` with the default limits.

The issue this answers: 40 clients started at once used to see 8 of them
cut off (``kex_exchange_identification: banner line contains invalid
characters``) because the pre-authentication cap closed connections. Now
past the slots they wait (docs/security.md rule 63). Figures: how many were
answered with a certificate (target: all), p50/p99 wall time from starting
the ``ssh`` process to its exit, and the service CPU per certificate over
the burst. The service runs its default ``[server]`` limits (32 slots, 8 per
address, every client here is 127.0.0.1), with ``max_channels_per_user``
raised because every client logs in as the same user.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from .common import Outcome, Row, ServerProcess, IAST_CA, cleanup, make_ca, percentile, workdir

NAME = "burst"


async def _one(argv: list[str], pub: bytes) -> tuple[float, int, bytes, bytes]:
    t0 = time.monotonic()
    p = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    out, err = await p.communicate(pub)
    return time.monotonic() - t0, p.returncode, out, err


def run(quick: bool, profile: bool = False, results_dir: Path | None = None) -> Outcome:
    n = 100 if quick else 200
    out = Outcome()
    work = workdir(NAME)
    try:
        ca = make_ca(work, n_users=1)
        config = work / "burst.toml"
        config.write_text(f'state_dir = "{ca.state_dir}"\npolicy = "{ca.root / "policy.toml"}"\n'
                          "[server]\nmax_channels_per_user = 1024\n")
        server = ServerProcess([IAST_CA, "--config", str(config), "serve", "--listen", "127.0.0.1:0"],
                               work / "iast.log").start()
        try:
            known = work / "known_hosts"
            known.write_text(f"[127.0.0.1]:{server.port} {ca.host_key_line()}\n")
            user = ca.users[0]
            argv = ["ssh", "-F", "/dev/null", "-p", str(server.port), "-i", str(ca.keys[user]),
                    "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=60",
                    f"{user}@127.0.0.1", "sign --role dev --json"]
            pub = ca.keys[user].with_suffix(".pub").read_bytes()

            async def burst() -> list:
                return await asyncio.gather(*(_one(argv, pub) for _ in range(n)))

            cpu0 = server.cpu()
            t0 = time.monotonic()
            results = asyncio.run(burst())
            wall = time.monotonic() - t0
            cpu = server.cpu() - cpu0
            queued = sum(1 for r in server.records() if r.get("msg") == "queued: waiting for a slot to log in")
        finally:
            server.stop()
        answered = 0
        errors: list[str] = []
        for _, rc, stdout, stderr in results:
            try:
                ok = rc == 0 and json.loads(stdout).get("serial")
            except ValueError:
                ok = False
            answered += bool(ok)
            if not ok:
                errors.append(stderr.decode(errors="replace").strip()[-200:])
        times = [r[0] * 1000 for r in results]
        out.figures.update({"clients": n, "answered": answered, "wall_s": wall, "queued": queued,
                            "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                            "max_ms": max(times), "server_cpu_ms_per_cert": cpu * 1000 / max(1, answered),
                            "first_errors": errors[:3]})
        out.rows += [
            Row(f"answered of {n} ssh … sign started at once", answered, "", n, "all of them", (">=", 1.0)),
            Row("latency p50 (start of ssh to its exit)", percentile(times, 50), "ms"),
            Row("latency p99", percentile(times, 99), "ms"),
            Row("service CPU per cert over the burst", cpu * 1000 / max(1, answered), "ms"),
        ]
        out.notes.append(f"{n} clients, {queued} of them queued at arrival; all done in {wall:.1f} s; "
                         "default limits: 32 slots, 8 per address, queue 512")
        if errors:
            out.notes.append(f"{len(errors)} not answered, e.g. {errors[0]!r}")
    finally:
        cleanup(work)
    return out
