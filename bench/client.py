"""client: wall time of ``iast-ssh login``, a new process each time, against plain OpenSSH ``ssh``.

What a person waits for: ``iast-ssh login -i KEY`` starts Python, makes a
fresh Ed25519 key, pins and authenticates to the CA, gets a certificate and
adds it to a real ssh-agent (started here, with its own socket). The
baseline is the plain OpenSSH client against the same service:
``ssh -p PORT -i KEY user@127.0.0.1 sign < key.pub`` (host key pinned in a
known_hosts file). The two alternate, one of each per round, after one
warm-up each; p50 over 20 rounds (5 in quick). Target: p50 <= 2x ssh's.

The warm-up login checks the service host key the asyncssh way and caches
it; the measured ones go over OpenSSH (ca/client/openssh.py), as every login
after a person's first does. The ``ca`` package is byte-compiled first, as an
installed package is: with ``PYTHONDONTWRITEBYTECODE`` set (as on some CI
machines) every run would otherwise compile it from source again.

Also measured, to explain the difference: the time of ``iast-ssh --help``
(Python and click starting), of ``python -c 'import asyncssh'``, and the
service's CPU per login for each client (``iast-ssh`` makes two SSH
connections: over OpenSSH ``sign`` and, at the same time, ``krl`` for
``status``; the asyncssh way, one to read and check the host key, one to
log in).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .common import (
    IAST_SSH,
    Outcome,
    Row,
    cleanup,
    iast_server,
    make_ca,
    median,
    percentile,
    workdir,
)

NAME = "client"


def _timed(argv: list[str], env: dict, stdin=None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    return time.perf_counter() - t0, r


def run(quick: bool, profile: bool = False, results_dir: Path | None = None) -> Outcome:
    rounds = 5 if quick else 20
    out = Outcome()
    work = workdir(NAME)
    server = agent = None
    try:
        ca = make_ca(work, n_users=1)
        user = ca.users[0]
        key = ca.keys[user]
        server = iast_server(ca, work / "iast.log")
        port = server.port
        sock = work / "agent.sock"
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.02)
        home = work / "home"
        (home / ".ssh").mkdir(parents=True)
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
               "SSH_AUTH_SOCK": str(sock)}
        login = [IAST_SSH, "login", "--ca", f"127.0.0.1:{port}", "--ca-fingerprint", ca.host_key_fingerprint(),
                 "-l", user, "-i", str(key)]
        known = work / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {ca.host_key_line()}\n")
        ssh = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes",
               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
               f"{user}@127.0.0.1", "sign"]
        ssh_env = {**env, "SSH_AUTH_SOCK": ""}
        session_pub = Path(str(key) + ".pub")  # any public key will do for the request

        def one_login() -> float:
            t, r = _timed(login, env)
            if r.returncode != 0 or "Added to ssh-agent" not in r.stdout:
                raise RuntimeError(f"iast-ssh login failed ({r.returncode}): {r.stdout[-300:]} {r.stderr[-500:]}")
            return t

        def one_ssh() -> float:
            with open(session_pub) as f:
                t, r = _timed(ssh, ssh_env, stdin=f)
            if r.returncode != 0 or "-cert-v01@openssh.com" not in r.stdout:
                raise RuntimeError(f"ssh failed ({r.returncode}): {r.stderr[-500:]}")
            return t

        import compileall

        import ca

        compileall.compile_dir(str(Path(ca.__file__).parent), quiet=1)
        one_login()
        one_ssh()
        ours, theirs, cpu_ours, cpu_theirs = [], [], [], []
        for _ in range(rounds):
            c0 = server.cpu()
            ours.append(one_login())
            c1 = server.cpu()
            theirs.append(one_ssh())
            c2 = server.cpu()
            cpu_ours.append(c1 - c0)
            cpu_theirs.append(c2 - c1)
        held = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True).stdout
        in_agent = len(re.findall(r"iast:", held))
        help_t = median([_timed([IAST_SSH, "--help"], env)[0] for _ in range(3 if quick else 5)])
        import_t = median([_timed([sys.executable, "-c", "import asyncssh"], env)[0] for _ in range(3 if quick else 5)])
        # What the login over OpenSSH imports (no asyncio, asyncssh, cryptography or click).
        path_modules = ("import ca.cli.fast_login, ca.client.connection, ca.client.openssh, ca.client.agentwire, "
                        "ca.sshcert.certificates")
        import_ca_t = median([_timed([sys.executable, "-c", path_modules], env)[0] for _ in range(3 if quick else 5)])
        out.figures.update({
            "rounds": rounds,
            "iast_ssh_login_s": ours, "ssh_sign_s": theirs,
            "iast_ssh_login_p50_ms": median(ours) * 1000, "ssh_sign_p50_ms": median(theirs) * 1000,
            "iast_ssh_login_p90_ms": percentile(ours, 90) * 1000, "ssh_sign_p90_ms": percentile(theirs, 90) * 1000,
            "iast_ssh_help_ms": help_t * 1000, "python_import_asyncssh_ms": import_t * 1000,
            "python_import_client_modules_ms": import_ca_t * 1000,
            "service_cpu_ms_per_iast_ssh_login": sum(cpu_ours) * 1000 / rounds,
            "service_cpu_ms_per_ssh_sign": sum(cpu_theirs) * 1000 / rounds,
            "certificates_in_agent": in_agent,
        })
        out.rows.append(Row("iast-ssh login p50 (new process -> cert in agent)", median(ours) * 1000, "ms",
                            median(theirs) * 1000, "ssh ... sign", ("<=", 2)))
        out.rows.append(Row("  'python -c import asyncssh' alone", import_t * 1000, "ms"))
        out.rows.append(Row("  'iast-ssh --help' (Python + click, no asyncssh)", help_t * 1000, "ms"))
        out.rows.append(Row("  service CPU per login", sum(cpu_ours) * 1000 / rounds, "ms",
                            sum(cpu_theirs) * 1000 / rounds, "ssh ... sign"))
        out.notes.append(
            f"iast-ssh login p50 {median(ours) * 1000:.0f} ms vs ssh {median(theirs) * 1000:.0f} ms; "
            f"'iast-ssh --help' alone {help_t * 1000:.0f} ms, 'import asyncssh' {import_t * 1000:.0f} ms, "
            f"imports of the login path (over OpenSSH) {import_ca_t * 1000:.0f} ms; {in_agent} iast certificates in the agent")
        if profile and results_dir is not None:
            out.figures["profile"] = _profile_login(login, env, results_dir / "profile-client-login.pstats")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        if server is not None:
            server.stop()
        cleanup(work)
    return out


# (file suffix, function) -> label, for the phases of one login.
_PHASES = [
    (("ca/client/connection.py", "_login_openssh"), "login over OpenSSH (keygen, ssh sign, agent)"),
    (("ca/client/openssh.py", "new_key"), "  ssh-keygen: the session key"),
    (("ca/client/connection.py", "_openssh_sign"), "  ssh ... sign --json"),
    (("asyncssh/__init__.py", "<module>"), "import asyncssh (only the asyncssh way)"),
    (("ca/client/connection.py", "login"), "Client.login (the asyncssh way: includes importing asyncssh)"),
    (("ca/client/loop.py", "run_async"), "  event loops: 2 SSH connections (pin, then login) + ssh-agent"),
    (("asyncssh/public_key.py", "generate_private_key"), "  generate the session key"),
    (("ca/cli/client.py", "cli"), "click command dispatch"),
]


def _profile_login(login: list[str], env: dict, path: Path) -> dict:
    """cProfile one ``iast-ssh login`` (imports included): milliseconds per phase."""
    import pstats

    code = ("import cProfile, sys; sys.argv = ['iast-ssh'] + sys.argv[1:]; "
            f"cProfile.run('from ca.cli.fast_login import main; main()', {str(path)!r})")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *login[1:]], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    if not path.exists():
        return {"error": r.stderr[-500:]}
    st = pstats.Stats(str(path))
    phases = {}
    for (suffix, fn), label in _PHASES:
        cum = [v[3] for f, v in st.stats.items() if f[0].endswith(suffix) and f[2] == fn]
        if cum:
            phases[label] = round(max(cum) * 1000, 1)
    return {"file": str(path), "wall_ms_under_profiler": round(wall * 1000, 1), "phases_ms": phases}
