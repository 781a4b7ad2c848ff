"""``iast-ca policy``: check a policy file and explain what it grants."""

from __future__ import annotations

import click

from ca.cli.common import did_you_mean, echo, echo_json, output_options
from ca.cli.context import Env, pass_env
from ca.durations import format_duration
from ca.errors import PolicyError, StateError, UsageError
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

    Exits 0 when it is valid; otherwise 1, with one line per mistake (all
    of them, in one run), each naming the file, the role and the field, and
    the key you probably meant for a misspelt one.

    \b
    Example:
      iast-ca policy check /etc/iast-ca/policy.toml
    """
    try:
        pol = load_policy(file or env.config.policy_path, principal_pattern=env.config.principal_pattern)
    except PolicyError as e:
        if fmt == "json":
            echo_json({"path": str(file or env.config.policy_path), "ok": False, "errors": list(e.errors)})
        for message in e.errors[:-1]:
            echo(f"Error: {message}", err=True)
        raise PolicyError(e.errors[-1]) from None  # the last line, and exit 1
    warnings = _warnings(pol)
    if fmt == "json":
        echo_json({"path": pol.path, "ok": True, "sha256": pol.sha256, "roles": sorted(pol.roles),
                   "warnings": warnings})
    else:
        echo(f"{pol.path}: OK, {len(pol.roles)} roles ({', '.join(sorted(pol.roles))}), sha256 {pol.sha256}")
        for w in warnings:
            echo(f"warning: {w}", err=True)


def _enrolment_note(env: Env, user: str) -> str | None:
    """Why the service would refuse ``user`` whatever the policy grants: not enrolled, or disabled.
    None when the user may log in, or when there is no user store to ask (a policy checked alone)."""
    try:
        with env.open_ca() as ca:
            ca.require_db()
            u = ca.users.get(user)
    except StateError:
        return None
    if u is None:
        return (f"{user} is not enrolled ('iast-ca user add {user}'): the service refuses them; "
                "below is only what the policy would grant")
    if u.disabled:
        return f"{user} is disabled ('iast-ca user enable {user}'): the service refuses them"
    return None


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

    A USER the user store does not hold (or a disabled one) gets a note on
    stderr: the service would refuse them whatever the policy grants. An
    unknown --role exits 2 and names the closest role.

    \b
    Examples:
      iast-ca policy explain alice --role prod-readonly
      iast-ca policy explain alice --groups idp:corp:sre,idp:corp:dev
    """
    pol = load_policy(env.config.policy_path, principal_pattern=env.config.principal_pattern)
    if role is not None and role not in pol.roles:
        raise UsageError(f"no such role {role!r}{did_you_mean(role, pol.roles)}; "
                         f"the policy has: {', '.join(sorted(pol.roles))}")
    note = _enrolment_note(env, user)
    if note:
        echo(f"note: {note}", err=True)
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
