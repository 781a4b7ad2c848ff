"""A real ``iast-ca serve`` process on a free loopback port, and real clients for it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncssh

IAST_CA = str(Path(sys.executable).parent / "iast-ca")


class CAProcess:
    """``iast-ca serve --listen 127.0.0.1:0`` as a child process; learns its port from the log."""

    def __init__(self, state_dir: Path, policy: Path, config: str = "", workdir: Path | None = None,
                 serve_args: tuple[str, ...] = (), database: str | None = None, env: dict | None = None):
        self.serve_args = serve_args
        self.env = env
        self.database = database
        self.state_dir = Path(state_dir)
        self.policy = Path(policy)
        self.workdir = Path(workdir or self.state_dir.parent)
        self.config_path = self.workdir / "ca.toml"
        db = f'database = "{database}"\n' if database else ""  # a PostgreSQL URL (tests/pg_harness.py)
        self.config_path.write_text(f'state_dir = "{self.state_dir}"\npolicy = "{self.policy}"\n{db}{config}')
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def start(self, port: int = 0, timeout: float = 20) -> CAProcess:
        mark = len(self.lines)
        self.proc = subprocess.Popen(
            [IAST_CA, "--config", str(self.config_path), "serve", "--listen", f"127.0.0.1:{port}",
             *self.serve_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        listening = self.wait_for("listening", timeout, since=mark)
        self.port = listening["port"]
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def records(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": line})
        return out

    def wait_for(self, msg: str, timeout: float = 10, since: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self.records()[since:]:
                    if rec.get("msg") == msg:
                        return rec
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc and self.proc.poll() is not None and not self._cond.wait(0.2)):
                    raise AssertionError(f"no {msg!r} in the CA log:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def signal(self, sig: int) -> None:
        assert self.proc
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def known_hosts(self) -> Path:
        """A known_hosts file pinning this CA's host key for [127.0.0.1]:PORT."""
        path = self.workdir / f"known_hosts-{self.port}"
        line = f"[127.0.0.1]:{self.port} {(self.state_dir / 'host-key.pub').read_text()}"
        if not path.exists() or path.read_text() != line:
            # temp + rename: concurrent ssh clients must never read a half-written file
            tmp = path.with_name(f".{path.name}.{threading.get_ident()}")
            tmp.write_text(line)
            os.replace(tmp, path)
        return path

    def ssh(self, user: str, key: Path, command: str, input: str | None = None, timeout: float = 30,
            port: int | None = None) -> subprocess.CompletedProcess:
        """The real OpenSSH client, authenticating with an enrolled key, host key pinned."""
        argv = ["ssh", "-F", "/dev/null", "-p", str(port or self.port), "-i", str(key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts()}", "-o", "ConnectTimeout=10",
                f"{user}@127.0.0.1", command]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "SSH_AUTH_SOCK": ""})


class _Kbd(asyncssh.SSHClient):
    def __init__(self, answers: list[str]):
        self.answers = list(answers)
        self.prompts: list[str] = []

    def kbdint_auth_requested(self) -> str:
        return ""

    def kbdint_challenge_received(self, name, instructions, lang, prompts):
        self.prompts.extend(p for p, _ in prompts)
        if len(self.answers) < len(prompts):
            return None  # out of answers: give up this method (no endless retries)
        return [self.answers.pop(0) for _ in prompts]


async def _kbd_run(port: int, known_hosts: Path, user: str, answers: list[str], command: str, input: str | None):
    client = _Kbd(answers)
    async with asyncssh.connect("127.0.0.1", port, username=user, known_hosts=str(known_hosts),
                                client_factory=lambda: client, client_keys=None, agent_path=None,
                                preferred_auth=["keyboard-interactive"], password=None) as conn:
        result = await conn.run(command, input=input, check=False)
        return result, client.prompts


def kbd_login(ca: CAProcess, user: str, password: str, code: str, command: str = "whoami --json",
              input: str | None = None):
    """Password + one-time code through keyboard-interactive (asyncssh client); returns (result, prompts)
    or raises asyncssh.PermissionDenied."""
    return asyncio.run(_kbd_run(ca.port, ca.known_hosts(), user, [password, code], command, input))
