"""``iast-ca serve``, ``iast-ca run`` (what ``make run`` starts) and ``iast-ca info``."""

from __future__ import annotations

import asyncio
import base64

import click

from ca.app import open_ca
from ca.cli.common import echo, echo_json, output_options
from ca.cli.context import Env, pass_env
from ca.config import parse_listen
from ca.errors import PolicyError, StateError
from ca.service import metrics
from ca.service.control import pid_file, reload_service
from ca.service.observe import setup_logging
from ca.service.server import serve as serve_forever
from ca.service.workers import run_workers
from ca.sshcert.certificates import fingerprint
from ca.state import StatePaths, init_state


def _host_key_fingerprint(paths: StatePaths) -> str:
    line = paths.host_key.with_suffix(".pub").read_text().split()
    return fingerprint(base64.b64decode(line[1]))


def _serve(env: Env, listen: str | None, on_ready=None, workers: int = 1) -> None:
    cfg = env.config
    ca = open_ca(cfg, for_service=True)
    if not ca.paths.keyring.exists():
        raise StateError(f"no CA in {cfg.state_dir}: run 'iast-ca init' first")
    host, port = parse_listen(listen) if listen else (cfg.listen_host, cfg.listen_port)
    setup_logging()
    with metrics.listener(cfg, env.passphrase()):  # off unless [metrics] listen is set
        metrics.instrument(ca)
        ca.authority  # noqa: B018 - reads the passphrase file; fails here, once, on a bad key or policy
        with pid_file(cfg.state_dir):  # for 'iast-ca reload'
            if workers > 1:
                ca.close()
                status = run_workers(cfg, workers, host, port, env.passphrase())
                if status:
                    raise SystemExit(status)
                return
            asyncio.run(serve_forever(ca, host=host, port=port, ready=on_ready))


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="Listen here instead of the config's server.listen.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Service processes sharing the port (SO_REUSEPORT); one audit chain. About one per core.")
@pass_env
def serve(env: Env, listen: str | None, workers: int) -> None:
    """Run the CA service (SSH) until SIGTERM; SIGHUP reloads the policy.

    Logs are one JSON object per line on stderr. Under systemd
    (Type=notify) it reports READY=1 once listening.

    \b
    Example:
      iast-ca --config /etc/iast-ca/ca.toml serve --listen 0.0.0.0:2222 --workers 2
    """
    _serve(env, listen, workers=workers)


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="Listen here instead of 127.0.0.1:2222.")
@pass_env
def run(env: Env, listen: str | None) -> None:
    """Create the CA on first run, then serve, printing how to enrol a user and log in.

    \b
    Example:
      iast-ca --state-dir ./var run
    """
    cfg = env.config
    paths = open_ca(cfg).paths
    if not paths.keyring.exists():
        s = init_state(cfg, "ed25519", env.passphrase())
        echo(f"Created a new CA in {s['state_dir']}: CA key {s['ca_algorithm']} {s['ca_fingerprint']} (signs "
             "certificates)", err=True)

    def ready(service) -> None:
        fp = _host_key_fingerprint(paths)
        where = service.cfg.listen_host if not listen else listen.rsplit(':', 1)[0]
        sd = f"--state-dir {cfg.state_dir} " if str(cfg.state_dir) != "var" else ""
        echo(f"""
The CA is listening on {where}:{service.port}
(service host key {fp}: clients pin this one, not the CA key). In another terminal, from this directory:

  # 1. enrol yourself with your SSH public key
  .venv/bin/iast-ca {sd}user add "$USER" --key ~/.ssh/id_ed25519.pub
  # 2. log in: a fresh key and a short-lived certificate, straight into ssh-agent
  .venv/bin/iast-ssh login --ca 127.0.0.1:{service.port} --ca-fingerprint {fp} -i ~/.ssh/id_ed25519
  # or, with nothing installed but ssh: trust the service host key once, then ask for a certificate
  .venv/bin/iast-ssh trust-ca {where}:{service.port} --ca-fingerprint {fp}
  ssh -p {service.port} "$USER@{where}" sign < ~/.ssh/id_ed25519.pub > ~/.ssh/id_ed25519-cert.pub
  # 3. make a host trust the CA key, then plain ssh works
  .venv/bin/iast-ca {sd}trust | sudo tee /etc/ssh/iast-user-ca.pub   # + TrustedUserCAKeys in sshd_config

Ctrl-C stops the CA.
""", err=True)

    _serve(env, listen, ready)


def _service_name(cfg, host: str | None) -> str:
    """The name clients reach the service by: ``--host``, else the listen address (a wildcard: this host's name)."""
    import socket

    if host:
        return host
    return socket.getfqdn() if cfg.listen_host in ("0.0.0.0", "::", "") else cfg.listen_host


@click.command()
@click.option("--timeout", type=click.FloatRange(1, 300), default=15, show_default=True,
              help="Seconds to wait for the service's verdict.")
@output_options(csv_ok=False)
@pass_env
def reload(env: Env, timeout: float, fmt: str) -> None:
    """Make the running service read its policy and keyring again (SIGHUP), and say whether it took.

    The service serving this state directory is found by its pid file,
    STATE/serve.pid (with --workers, the parent, which tells every worker).
    Exits 0 when the new policy is in use; 1 when the service refused it
    (it keeps serving the old one, and the message names the mistake) or
    gave no verdict in time. Under systemd, 'systemctl reload iast-ca' sends
    the same signal.

    \b
    Example:
      iast-ca policy check /etc/iast-ca/policy.toml && iast-ca --config /etc/iast-ca/ca.toml reload
    """
    with env.open_ca(require_db=True) as ca:
        result = reload_service(env.config.state_dir, ca.audit, timeout)
    if fmt == "json":
        echo_json(result.as_json())
    if result.accepted is None:
        raise StateError(f"sent SIGHUP to the service (pid {result.pid}): {result.detail}")
    if not result.accepted:
        raise PolicyError(f"the service (pid {result.pid}) refused the policy and keeps the old one: {result.detail}")
    if fmt != "json":
        echo(f"the service (pid {result.pid}) reloaded: policy sha256 {result.detail}")


@click.command()
@click.option("--known-hosts", "known_hosts", is_flag=True,
              help="Print only the service host key's known_hosts line ('[host]:port KEY') for plain ssh.")
@click.option("--host", "host", metavar="NAME", help="The name clients use for the service in that line "
                                                     "(default: the listen address, or this host's name).")
@output_options(csv_ok=False)
@pass_env
def info(env: Env, known_hosts: bool, host: str | None, fmt: str) -> None:
    """Show the CA keys (they sign certificates), the service host key (clients pin it), and where it listens.

    Two different keys: the CA key signs certificates (hosts trust it:
    'iast-ca trust'); the service host key is the SSH host key of the CA
    service, which clients pin (--ca-fingerprint) and plain ssh needs in
    known_hosts (--known-hosts prints that line; 'iast-ssh trust-ca' writes it).

    \b
    Example:
      iast-ca info --json | jq -r .host_key_fingerprint
      iast-ca info --known-hosts --host ca.example.com >> ~/.ssh/known_hosts
    """
    cfg = env.config
    if known_hosts:
        from ca.client.config import known_hosts_line

        public = open_ca(cfg).paths.host_key.with_suffix(".pub").read_text()
        echo(known_hosts_line(_service_name(cfg, host), cfg.listen_port, public))
        return
    ca = open_ca(cfg)
    paths, keyring = ca.paths, ca.keyring
    data = {
        "state_dir": str(cfg.state_dir),
        "policy": str(cfg.policy_path),
        "listen": f"{cfg.listen_host}:{cfg.listen_port}",
        "ca_keys": [{"name": k.name, "algorithm": k.algorithm, "fingerprint": k.fingerprint, "state": k.state}
                    for k in keyring.keys],
        "active_ca_fingerprint": keyring.active.fingerprint,
        "host_key": paths.host_key.with_suffix(".pub").read_text().strip(),
        "host_key_fingerprint": _host_key_fingerprint(paths),
    }
    if fmt == "json":
        echo_json(data)
        return
    echo(f"state dir        {data['state_dir']}")
    echo(f"policy           {data['policy']}")
    echo(f"listen           {data['listen']}")
    for k in data["ca_keys"]:
        echo(f"CA key           {k['algorithm']} {k['fingerprint']} ({k['state']})")
    echo(f"service host key {data['host_key_fingerprint']}  (clients pin this: --ca-fingerprint; "
         "'iast-ca info --known-hosts' for plain ssh)")
