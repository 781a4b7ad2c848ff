"""``iast-ca requests``: list, approve and deny access requests on the CA host.

A thin shell over :class:`ca.approvals.Approvals`, for administrators. The
rules are the service's: the approver (``--as NAME``, else ``SUDO_USER``, else
the OS user) must be one of the role's approvers and not the requester, and
must prove it: their ssh-agent signs a fresh challenge with one of their
enrolled keys (:mod:`ca.auth.approver`; docs/security.md, "Approvers prove who
they are"). Every action, and every refusal, is audited.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ca.access.approvals import OPEN, STATUSES, AccessRequest, Approvals
from ca.app import CA
from ca.auth.approver import AUTH_METHOD, proven_identity
from ca.errors import AuthenticationFailed
from ca.cli.common import Choice, echo, echo_csv, echo_json, echo_table, output_options, truncated_note
from ca.cli.context import Env, pass_env
from ca.durations import format_duration
from ca.models import Identity
from ca.policy import Policy
from ca.state import os_user

_CSV_FIELDS = ["id", "user", "role", "ttl", "reason", "status", "created", "decided", "expires_at", "used_serial",
               "required", "approvals", "votes"]


@contextmanager
def _open(env: Env) -> Iterator[tuple[Approvals, Policy, CA]]:
    with env.open_ca(require_db=True) as ca:
        policy = ca.policy  # before the database: a bad policy opens nothing
        yield ca.approvals, policy, ca


def _approver(ca: CA, action: str, request_id: str, name: str | None) -> Identity:
    """The approver, proven by a signature from their ssh-agent (a name alone is never trusted)."""
    name = name or os_user()
    try:
        return proven_identity(ca.authenticators, os.environ.get("SSH_AUTH_SOCK"), action, request_id, name,
                               operator=os_user())
    except AuthenticationFailed as e:
        claimed = Identity(user=str(name)[:64], auth_methods=(AUTH_METHOD,), source_address="cli", operator=os_user())
        ca.approvals.refuse(action, request_id, claimed, e)
        raise


_PAST = {"approve": "approved", "deny": "denied"}


def _row(r: AccessRequest) -> list:
    votes = ", ".join(f"{v.approver} {_PAST.get(v.decision, v.decision)}" + (f" ({v.comment})" if v.comment else "")
                      for v in r.votes)
    return [r.id, r.user, r.role, format_duration(r.ttl), r.status, f"{len(r.approvers)}/{r.required or '?'}",
            r.as_json()["expires"][:16], r.reason, votes]


_HEADERS = ["ID", "USER", "ROLE", "TTL", "STATUS", "OK", "EXPIRES", "REASON", "VOTES"]


def _show(r: AccessRequest, fmt: str) -> None:
    if fmt == "json":
        echo_json(r.as_json())
    else:
        echo(r.summary())


@click.group(invoke_without_command=True)
@click.pass_context
def requests(ctx: click.Context) -> None:
    """List, approve and deny access requests for roles that need approval.

    Requesters ask with 'iast-ssh request'; approvers usually answer with
    'iast-ssh approve/deny' over the service. These commands do the same on
    the CA host, as the person running them. With no subcommand, 'iast-ca
    requests' lists the open requests (as 'iast-ssh requests' does).

    \b
    Example:
      iast-ca requests && sudo iast-ca requests approve req-abcdefghij --comment "INC-4711"
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_)


@requests.command("list")
@click.option("--status", "statuses", multiple=True, type=Choice(STATUSES),
              help="Only requests in this state (repeatable). Default: pending and approved.")
@click.option("--all", "all_", is_flag=True, help="Requests in every state.")
@click.option("--user", help="Only this requester's requests.")
@click.option("--role", help="Only requests for this role.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@output_options()
@pass_env
def list_(env: Env, statuses, all_: bool, user, role, limit: int, fmt: str) -> None:
    """List access requests, newest first (open ones unless --status or --all).

    \b
    Example:
      iast-ca requests list --all --user alice --json
    """
    with _open(env) as (approvals, policy, _ca):
        approvals.expire_due()  # looking is observing: overdue requests are expired (and audited) first
        chosen = None if all_ else (list(statuses) or list(OPEN))
        found = approvals.list(policy=policy, user=user, role=role, statuses=chosen, limit=limit + 1)
    truncated = len(found) > limit
    found = found[:limit]
    if fmt == "json":
        echo_json([r.as_json() for r in found])
    elif fmt == "csv":
        echo_csv((r.as_json() for r in found), _CSV_FIELDS)
    elif not found:
        echo("No requests.")
    else:
        echo_table([_row(r) for r in found], _HEADERS)
    if truncated:
        truncated_note(limit, "request")


_AS_HELP = "The approver (default: SUDO_USER, else you); proven by your ssh-agent, never taken on trust."


@requests.command()
@click.argument("request_id", metavar="ID")
@click.option("--comment", help="A note for the requester and the audit log.")
@click.option("--as", "as_user", metavar="NAME", help=_AS_HELP)
@output_options(csv_ok=False)
@pass_env
def approve(env: Env, request_id: str, comment: str | None, as_user: str | None, fmt: str) -> None:
    """Approve request ID as one of its approvers, proven by a key in your ssh-agent.

    Your ssh-agent (SSH_AUTH_SOCK) must hold one of your enrolled keys: it
    signs a fresh challenge, checked like a login. Under sudo keep the agent:
    sudo --preserve-env=SSH_AUTH_SOCK. A role whose approval needs MFA is
    approved over the service only (ssh CA approve ID, after a code).

    \b
    Example:
      sudo --preserve-env=SSH_AUTH_SOCK iast-ca requests approve req-abcdefghij --comment "ok for INC-4711"
    """
    with _open(env) as (approvals, policy, ca):
        r = approvals.approve(request_id, _approver(ca, "approve", request_id, as_user), policy, comment)
    _show(r, fmt)


@requests.command()
@click.argument("request_id", metavar="ID")
@click.option("--comment", required=True, help="Why (recorded in the audit log).")
@click.option("--as", "as_user", metavar="NAME", help=_AS_HELP)
@output_options(csv_ok=False)
@pass_env
def deny(env: Env, request_id: str, comment: str, as_user: str | None, fmt: str) -> None:
    """Deny request ID as one of its approvers (proven as for approve); one denial closes it.

    \b
    Example:
      sudo --preserve-env=SSH_AUTH_SOCK iast-ca requests deny req-abcdefghij --comment "use prod-readonly"
    """
    with _open(env) as (approvals, policy, ca):
        r = approvals.deny(request_id, _approver(ca, "deny", request_id, as_user), policy, comment)
    _show(r, fmt)
