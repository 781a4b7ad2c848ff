"""Where a server process spends its CPU: per-thread CPU counters, and py-spy for the Python frames.

Two measurements taken over the same load run:

* the CPU seconds of every thread of the server (``/proc/PID/task/TID/stat``),
  named from py-spy's output (``thread (TID): NAME``): exact, and enough to
  tell the event loop (SSH protocol) from the issuance thread and the
  authentication thread;
* py-spy in ``--gil`` mode: it samples only the thread holding the GIL, so
  the samples approximate Python CPU time (work done with the GIL released,
  such as SQLite's own B-tree code and the fsync wait, is not sampled: the
  thread counters cover it). The raw output is one line per distinct stack,
  ``frame;frame;...;frame COUNT``, outermost first. A bucket's share is the
  share of samples whose stack contains a frame matching it (inclusive
  time; buckets overlap).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import thread_cpu

BUCKETS = {
    "SSH key exchange (kex, ML-KEM/X25519, host key signature)":
        r"\(asyncssh/(kex|kex_dh|crypto/pq|crypto/ed|crypto/ec|crypto/dh)\.py|_process_kexinit|send_newkeys",
    "SSH packet cipher + MAC (chacha20-poly1305)": r"\(asyncssh/(crypto/chacha|encryption|crypto/cipher|mac)\.py",
    "SSH user auth (asyncssh auth, signature check)": r"\(asyncssh/auth\.py|_validate_client_public_key",
    "asyncssh options rebuilt at auth (reload_config)": r"reload_config|ConnectionOptions\.(prepare|construct)",
    "SSH channel/session (asyncssh channel, process, stream)": r"\(asyncssh/(channel|process|stream)\.py",
    "our connection callbacks (validate_public_key, auth_completed)": r"Connection\.\w+ \(ca/service/connection\.py",
    "our request handling (Service._handle/_run, handlers)": r"Service\._(handle|run) \(ca/service/server\.py|\(ca/service/handlers\.py",
    "thread hand-offs (run_in_executor, futures, wake-ups)":
        r"run_in_executor|ThreadPoolExecutor\.submit|_chain_future|call_soon_threadsafe|_read_from_self|"
        r"_write_to_self|Future\.set_result",
    "JSON log lines (event(), logging)": r"^event \(ca/service/observe\.py|JSONFormatter|\(logging/__init__\.py",
    "auth lookups (Guard.check: throttle + key)": r"Guard\.check|PublicKeyAuthenticator\.check_key",
    "issuance (sign handler)": r"^sign \(ca/service/handlers\.py",
    "  UserStore.get (disabled check)": r"UserStore\.get",
    "  Authority.issue": r"Authority\.issue",
    "    Signer.sign (to-be-signed bytes, backend signature, re-check)": r"Signer\.sign",
    "      Signer._check (re-parse + pyca verify)": r"Signer\._check",
    "    audit transaction": r"\(ca/store/",
    "socket I/O and selector (leaf)": None,  # computed on leaf frames below
}
_IO_LEAF = re.compile(r"_SelectorSocketTransport\.(write|_read_ready\w*)|EpollSelector\.select|socket\.")


def available() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen:
    """Start py-spy (GIL holder only) on ``pid`` for ``seconds``; wait() before reading ``out``."""
    exe = available()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(max(1, round(seconds)))),
                             "--rate", str(rate), "--format", "raw", "--threads", "--gil", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _short(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame.strip())


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks.append(([_short(f) for f in stack.split(";")], int(count)))
    return stacks


def summarize(stacks: list[tuple[list[str], int]], top: int = 25) -> dict[str, Any]:
    total = sum(c for _, c in stacks) or 1
    buckets = {}
    for name, pat in BUCKETS.items():
        if pat is None:
            n = sum(c for fr, c in stacks if _IO_LEAF.search(fr[-1]))
        else:
            rx = re.compile(pat)
            n = sum(c for fr, c in stacks if any(rx.search(f) for f in fr[1:]))
        buckets[name] = round(100 * n / total, 1)
    self_time: Counter[str] = Counter()
    for fr, c in stacks:
        self_time[fr[-1]] += c
    return {
        "samples": total,
        "inclusive_pct": buckets,
        "top_self_pct": [[f, round(100 * c / total, 1)] for f, c in self_time.most_common(top)],
    }


def thread_names(stacks: list[tuple[list[str], int]]) -> dict[int, str]:
    names = {}
    for fr, _ in stacks:
        m = re.match(r"thread \((\d+)\): (.*)", fr[0])
        if m:
            names[int(m.group(1))] = m.group(2)
    return names


def profile_server(pid: int, seconds: float, out: Path, load: Callable[[], dict]) -> dict[str, Any]:
    """Run ``load()`` (about ``seconds`` long) with py-spy attached to ``pid``; return the summary.

    The thread CPU split is per certificate when ``load`` returns ``certs``.
    """
    before = thread_cpu(pid)
    spy = record(pid, seconds, out)
    result = load()
    try:
        spy.wait(seconds + 60)
    except subprocess.TimeoutExpired:
        spy.kill()
    after = thread_cpu(pid)
    stacks = read_raw(out) if out.exists() else []
    names = thread_names(stacks)
    certs = result.get("certs") or 1
    threads: dict[str, float] = {}
    for tid, cpu in after.items():
        name = names.get(tid, "main" if tid == pid else f"tid {tid}")
        name = re.sub(r"asyncio_\d+", "asyncio default executor", name)
        name = "event loop (main thread)" if tid == pid or name == "MainThread" else name
        threads[name] = threads.get(name, 0.0) + (cpu - before.get(tid, 0.0)) * 1000 / certs
    summary = summarize(stacks) if stacks else {"error": (spy.stderr.read() if spy.stderr else "")[-500:]}
    return {
        "load": {k: v for k, v in result.items() if not isinstance(v, list)},
        "thread_cpu_ms_per_cert": {k: round(v, 3) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])},
        "pyspy_gil": summary,
        "raw": str(out),
    }
