"""``iast-ssh host setup`` and ``iast-ssh host check``: a thin shell over ca.client.hostsetup and
ca.client.hostcheck, registered on the ``host`` group of :mod:`ca.cli.client`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ca.cli.client import ca_options, host
from ca.cli.common import echo, echo_json, output_options
from ca.cli.findings import report_findings
from ca.durations import parse_duration
from ca.errors import UsageError


def _seconds(text: str, flag: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


@host.command("setup")
@ca_options
@click.option("--principals-map", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help='TOML: local account = ["principal", ...], e.g. root = ["alice", "bob"].')
@click.option("--root", "root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="Write everything under this directory, and name it there (tests, staged trees); "
                   "with a root other than /, sshd is not reloaded and the timer is enabled in the tree.")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
@click.option("--sshd", "sshd", metavar="PATH", help="The sshd binary that validates (default: /usr/sbin/sshd).")
@click.option("--units-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Where iast-krl-refresh.service and .timer are (default: the systemd/ directory shipped "
                   "with iast-ssh).")
@click.option("--textfile-dir", metavar="DIR",
              help="Have the refresh write iast_krl.prom (iast_krl_age_seconds, ...) here for the node "
                   "exporter's textfile collector, e.g. /var/lib/prometheus/node-exporter.")
@output_options(csv_ok=False)
def setup(make_client, principals_map, root, dry_run, sshd, units_dir, textfile_dir, fmt) -> None:
    """Trust the CA on this host in one command (run as root), or change nothing.

    Fetches the CA's keys and its KRL (authenticated like fetch-krl: an
    enrolled user, e.g. this host's key), writes an sshd_config.d drop-in
    (TrustedUserCAKeys, RevokedKeys, AuthorizedPrincipalsFile), the trust
    file, the KRL, one principals file per account of the map, and the KRL
    refresh timer. 'sshd -t' must accept the result before sshd is reloaded;
    if it does not, every file is put back as it was and the exit status is 1.

    \b
    Example:
      iast-ssh host setup --ca ca.example.com:2222 --ca-fingerprint SHA256:... \\
        -l krl-web1 -i /etc/ssh/ssh_host_ed25519_key --principals-map /root/principals.toml
    """
    from ca.client import hostsetup
    from ca.client.config import format_addresses

    rootp = Path(root).resolve()
    mapping = {}
    if principals_map:
        mapping = hostsetup.parse_principals_map(Path(principals_map).read_text(), principals_map)
    program = None if units_dir else hostsetup.installed_program()  # units of one's own keep their ExecStart
    client = make_client(remember=False)
    trust_text, krl_data = "\n".join(client.ca_keys()) + "\n", client.krl()
    if not client.pin:
        raise UsageError("--ca-fingerprint is required: the refresh timer pins the CA's service host key")
    files = hostsetup.plan(root=rootp, ca=format_addresses(client.addresses), ca_fingerprint=client.pin,
                           krl_user=client.user, identity=str(client.identity or "/etc/ssh/ssh_host_ed25519_key"),
                           trust_text=trust_text, krl_data=krl_data, principals=mapping,
                           units_dir=Path(units_dir) if units_dir else hostsetup.default_units_dir(),
                           textfile_dir=textfile_dir, program=program)
    result = hostsetup.apply(files, root=rootp, sshd=sshd or hostsetup.sshd_binary(), dry_run=dry_run)
    if program and hostsetup.hidden_by_protect_home(program):
        result.notes.append(f"the refresh unit runs {program}, which its ProtectHome=yes hides: install iast-ssh "
                            "outside /home and /root (e.g. pip install into /opt/iast-ssh) and run setup from there")
    if fmt == "json":
        echo_json(result.as_json())
        return
    for f in result.files:
        echo(f"{'would write' if dry_run else 'wrote'} {f.path} ({f.mode:04o}, {len(f.data)} bytes)")
    if not dry_run:
        echo("sshd -t: the configuration is valid and the drop-in is in effect")
        echo(f"KRL refresh timer: {result.timer}")
        echo(f"sshd reloaded: {result.reloaded}" if result.reloaded else "sshd not reloaded")
    for note in result.notes:
        echo(f"note: {note}", err=True)


@host.command("check")
@ca_options
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
              help="The sshd config to check (read through 'sshd -T'; default: /etc/ssh/sshd_config, or the "
                   "one under --root).")
@click.option("--root", "root", default=None, type=click.Path(file_okay=False), metavar="DIRECTORY",
              help="Check the tree 'host setup --root DIRECTORY' wrote: its etc/ssh/sshd_config.")
@click.option("--sshd", "sshd", metavar="PATH", help="The sshd binary (default: /usr/sbin/sshd).")
@click.option("--krl-max-age", default="10m", show_default=True, metavar="DURATION",
              help="A KRL older than this is stale (the refresh timer runs every 5 minutes).")
@click.option("--offline", is_flag=True, help="Do not ask the CA (no retired-key or clock check).")
@output_options(csv_ok=False)
def check(make_client, config, root, sshd, krl_max_age, offline, fmt) -> None:
    """Check this host's sshd for what makes the CA useless or unsafe here; one line per finding.

    Reads 'sshd -T' and the files it names; unless --offline, also asks the
    CA for the keys it publishes and its clock. Exit 0 when clean, 1 with
    findings (each with a severity and the fix); --json for scripts.

    \b
    Example:
      iast-ssh host check --ca ca.example.com:2222 --ca-fingerprint SHA256:... \\
        -l krl-web1 -i /etc/ssh/ssh_host_ed25519_key
      iast-ssh host check --offline --json | jq -r '.[].code'
    """
    from ca.client import hostcheck, hostsetup

    if config is not None and root is not None:
        raise UsageError("--config and --root exclude each other")
    config = config or (str(Path(root) / hostsetup.MAIN_CONFIG) if root else "/etc/ssh/sshd_config")

    published, clock = None, None
    if not offline:
        client = make_client(remember=False)
        published = client.ca_keys()
        before = time.time()
        theirs = client.whoami().get("now")
        after = time.time()
        if isinstance(theirs, int):
            clock = (before, float(theirs), after)
    findings = hostcheck.check_host(sshd=sshd or hostsetup.sshd_binary(), config=Path(config),
                                    published_keys=published, ca_clock=clock,
                                    krl_max_age=_seconds(krl_max_age, "--krl-max-age"))
    report_findings(findings, fmt, f"{config}: no findings")
