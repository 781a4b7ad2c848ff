"""``iast-ca policy``: check a policy file and explain what it grants."""

from __future__ import annotations

import click

from ca.cli.common import echo, echo_json, output_options
from ca.cli.context import Env, pass_env
from ca.durations import format_duration
from ca.policy import load_policy
from ca.policy.model import USER_TEMPLATE
from ca.rules import RESERVED_PRINCIPALS


@click.group()
def policy() -> None:
    """Check the policy and see what it grants.

    \b
    Example:
      iast-ca policy check config/policy.toml && iast-ca policy explain alice
    """


@policy.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@output_options(csv_ok=False)
@pass_env
def check(env: Env, file: str | None, fmt: str) -> None:
    """Validate a policy file (default: the configured one).

    Exits 0 when it is valid; otherwise 1, with one line that names the file,
    the role and the field.

    \b
    Example:
      iast-ca policy check /etc/iast-ca/policy.toml
    """
    pol = load_policy(file or env.config.policy_path, principal_pattern=env.config.principal_pattern)
    warnings = _warnings(pol)
    if fmt == "json":
        echo_json({"path": pol.path, "ok": True, "sha256": pol.sha256, "roles": sorted(pol.roles),
                   "warnings": warnings})
    else:
        echo(f"{pol.path}: OK, {len(pol.roles)} roles ({', '.join(sorted(pol.roles))}), sha256 {pol.sha256}")
        for w in warnings:
            echo(f"warning: {w}", err=True)


def _warnings(pol) -> list[str]:  # noqa: ANN001 - a Policy
    """Roles that expand {user} while the policy relies on the fixed reserved list alone
    (docs/security.md, "Reserved principals")."""
    if pol.reserved_principals != RESERVED_PRINCIPALS:
        return []
    return [f"role {r.name} expands {{user}}: only the fixed reserved names ({', '.join(sorted(RESERVED_PRINCIPALS))}) "
            "are kept out of it; list your site's privileged accounts in [defaults].reserved_principals"
            for r in pol.roles.values() if any(USER_TEMPLATE in p for p in r.principals)]


@policy.command()
@click.argument("user")
@click.option("--role", "-r", help="Explain this role only.")
@click.option("--groups", "groups", default="",
              help="Comma-separated groups an identity provider would vouch for: idp:NAME:GROUP, workload:NAME.")
@output_options(csv_ok=False)
@pass_env
def explain(env: Env, user: str, role: str | None, groups: str, fmt: str) -> None:
    """Show which roles USER may request, with what, and why not for the others.

    \b
    Examples:
      iast-ca policy explain alice --role prod-readonly
      iast-ca policy explain alice --groups idp:corp:sre,idp:corp:dev
    """
    pol = load_policy(env.config.policy_path, principal_pattern=env.config.principal_pattern)
    verdicts = pol.explain(user, role, groups=tuple(g.strip() for g in groups.split(",") if g.strip()))
    if fmt == "json":
        echo_json([v.as_json() for v in verdicts])
        return
    for v in verdicts:
        if not v.allowed:
            echo(f"{v.role}: no - {'; '.join(v.reasons)}")
            continue
        extra = []
        if v.force_command:
            extra.append(f"force-command {v.force_command}")
        if v.source_address:
            extra.append(f"from {','.join(v.source_address)}")
        if v.require_reason:
            extra.append("reason required")
        if v.require_mfa:
            extra.append("one-time code required")
        if v.approval:
            a = v.approval
            extra.append(f"needs {a.required} approval(s) from {', '.join(a.approvers)}")
        echo(
            f"{v.role}: yes{' (default)' if v.is_default else ''} - principals {', '.join(v.principals or ())}; "
            f"ttl {format_duration(v.ttl or 0)} (max {format_duration(v.max_ttl or 0)}); "
            f"extensions {', '.join(v.extensions or ()) or 'none'}" + "".join(f"; {e}" for e in extra)
        )
