"""``iast-ca run``: what ``make run`` does - a guided first issuance on the embedded defaults."""

from __future__ import annotations

import datetime as dt

import click

from ..authority import USER_NAME, Authority
from ..durations import format_duration
from ..files import write_atomic
from ..keys import Keyring, export_private, generate_key, public_line
from ..models import Identity, SignRequest
from ..state import StatePaths, init_state, os_user
from .context import Env, pass_env


@click.command()
@pass_env
def run(env: Env) -> None:
    """Create the CA on first run, sign a fresh demo key, and show how hosts trust it.

    Everything goes through the real path (decide -> sign -> audit); the
    demo key and certificate land in STATE/demo/.

    \b
    Example:
      iast-ca --state-dir ./var run
    """
    cfg = env.config
    paths = StatePaths(cfg.state_dir)
    if not paths.keyring.exists():
        s = init_state(cfg, "ed25519", env.passphrase())
        click.echo(f"Created a new CA in {s['state_dir']}: {s['ca_algorithm']} {s['ca_fingerprint']}")
    keyring = Keyring.load(cfg.state_dir)
    me = os_user()
    user = me if USER_NAME.fullmatch(me) else "demo"

    demo = paths.root / "demo"
    demo.mkdir(mode=0o700, exist_ok=True)
    key = generate_key("ed25519")
    write_atomic(demo / "id_ed25519", export_private(key, None), 0o600)
    write_atomic(demo / "id_ed25519.pub", public_line(key, f"{user}@iast-demo") + "\n", 0o644)

    authority = Authority.open(cfg, passphrase=env.passphrase())
    try:
        identity = Identity(user=user, auth_methods=("admin-offline",), mfa=True, operator=me)
        issued = authority.issue(identity, SignRequest(public_key=public_line(key), reason="make run demo"))
        report = authority.audit.verify()
    finally:
        authority.close()
    write_atomic(demo / "id_ed25519-cert.pub", issued.certificate + "\n", 0o644)
    d = issued.decision
    until = dt.datetime.fromtimestamp(d.valid_before, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    click.echo(f"""
Signed a certificate for {user} (role {d.role}):
  file         {demo / 'id_ed25519-cert.pub'}
  serial       {issued.serial}, key ID {issued.key_id}
  principals   {', '.join(d.principals)}
  valid until  {until} ({format_duration(d.ttl)})
  extensions   {', '.join(d.extensions)}
Audit log: {report.count} events, chain intact.

Inspect it:     ssh-keygen -L -f {demo / 'id_ed25519-cert.pub'}
Trust the CA on a host (as root):
  {'iast-ca --state-dir ' + str(cfg.state_dir) + ' trust'} > /etc/ssh/iast-user-ca.pub
  and in /etc/ssh/sshd_config:  TrustedUserCAKeys /etc/ssh/iast-user-ca.pub
CA key fingerprint: {keyring.active.fingerprint}
Read the log:   iast-ca --state-dir {cfg.state_dir} audit list""")
