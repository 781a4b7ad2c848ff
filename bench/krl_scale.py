"""krl-scale: build the KRL for 10k, 100k and 1M revoked serials, next to ``ssh-keygen -k`` for the same set.

The serials are a fixed random sample of N out of 1..10N (one certificate
in ten revoked, scattered: what revoking users and keys over a long life
leaves behind), all under one CA key. Ours: ``CertRevocations.of(serials)``
+ ``build_krl`` (ca/krl.py), in-process. Theirs: ``ssh-keygen -k -s CA.pub``
on a spec file of ``serial: N`` lines (written beforehand, not timed), as
a process. Both sides: the best of 3 runs up to 100k, one run at 1M.
Targets: size <= 1.1x and time <= 2x ssh-keygen's. Each KRL is then read
back with ``ssh-keygen -Q -l`` (a KRL sshd cannot read would lock everyone out).

ca/krl.py is being written alongside this suite: if it cannot be imported,
the scenario is skipped with a note.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

from .common import Outcome, Row, Skip, cleanup, ssh_keygen, workdir

NAME = "krl-scale"


def run(quick: bool, profile: bool = False, results_dir: Path | None = None) -> Outcome:
    try:
        from ca.sshcert.krl import CertRevocations, build_krl
    except ImportError as e:
        raise Skip(f"ca/krl.py is not there yet (or does not import): {e}") from None
    import asyncssh

    keygen = ssh_keygen()
    sizes = [10_000] if quick else [10_000, 100_000, 1_000_000]
    out = Outcome()
    work = workdir(NAME)
    try:
        ca = asyncssh.generate_private_key("ssh-ed25519")
        ca_pub = work / "ca.pub"
        ca_pub.write_bytes(ca.export_public_key("openssh"))
        per = {}
        for n in sizes:
            serials = sorted(random.Random(n).sample(range(1, 10 * n + 1), n))
            spec = work / f"spec-{n}"
            spec.write_text("".join(f"serial: {s}\n" for s in serials))
            theirs_path = work / f"keygen-{n}.krl"
            reps = 3 if n <= 100_000 else 1  # the best of as many runs for both sides
            theirs_t = None
            for _ in range(reps):
                theirs_path.unlink(missing_ok=True)
                t0 = time.perf_counter()
                subprocess.run([keygen, "-q", "-k", "-f", str(theirs_path), "-s", str(ca_pub), str(spec)],
                               check=True, stdin=subprocess.DEVNULL, capture_output=True)
                t = time.perf_counter() - t0
                theirs_t = t if theirs_t is None else min(theirs_t, t)
            best = None
            for _ in range(reps):
                t0 = time.perf_counter()
                krl = build_krl(1, certs={ca.public_data: CertRevocations.of(serials)}, generated=int(time.time()))
                t = time.perf_counter() - t0
                best = t if best is None else min(best, t)
            ours_path = work / f"ours-{n}.krl"
            ours_path.write_bytes(krl)
            reads = {}
            for who, path in (("ours", ours_path), ("ssh-keygen", theirs_path)):
                r = subprocess.run([keygen, "-Q", "-l", "-f", str(path)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                # ssh-keygen names the file first; keep only its reason.
                reads[who] = r.returncode == 0 or (r.stderr.strip().rsplit(": ", 1)[-1][-200:] or f"exit {r.returncode}")
            per[n] = {"ours_s": best, "ssh_keygen_s": theirs_t, "ours_bytes": len(krl),
                      "ssh_keygen_bytes": theirs_path.stat().st_size, "ssh_keygen_reads": reads}
            label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
            out.rows += [
                Row(f"KRL size, {label} serials", len(krl) / 1024, "KiB", theirs_path.stat().st_size / 1024,
                    "ssh-keygen -k", ("<=", 1.1)),
                Row(f"KRL build time, {label} serials", best * 1000, "ms", theirs_t * 1000, "ssh-keygen -k",
                    ("<=", 2.0)),
            ]
            if reads["ours"] is not True:
                out.notes.append(f"ssh-keygen cannot read our {label} KRL: {reads['ours']}")
            if reads["ssh-keygen"] is not True:
                out.notes.append(f"ssh-keygen cannot read its own {label} KRL: {reads['ssh-keygen']}")
        out.figures["sizes"] = {str(k): v for k, v in per.items()}
        if profile and results_dir is not None:
            import cProfile
            import pstats

            n = sizes[-1]
            serials = sorted(random.Random(n).sample(range(1, 10 * n + 1), n))
            prof = cProfile.Profile()
            prof.enable()
            build_krl(1, certs={ca.public_data: CertRevocations.of(serials)}, generated=0)
            prof.disable()
            prof.dump_stats(str(results_dir / "profile-krl.pstats"))
            st = pstats.Stats(prof)
            top = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:8]
            out.figures["profile_top_self_s"] = [[f"{Path(f[0]).name}:{f[2]}", round(v[2], 3)] for f, v in top]
    finally:
        cleanup(work)
    return out
