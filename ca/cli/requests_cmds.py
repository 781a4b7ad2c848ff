"""``iast-ca requests``: list, approve and deny access requests on the CA host.

A thin shell over :class:`ca.approvals.Approvals`, for administrators. The
rules are the service's: the approver is the person running the command
(``SUDO_USER``, else the OS user), who must be one of the role's approvers
and not the requester; every action, and every refusal, is audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from ca.access.approvals import OPEN, STATUSES, AccessRequest, Approvals
from ca.cli.common import echo, echo_csv, echo_json, echo_table, output_options
from ca.cli.context import Env, pass_env
from ca.durations import format_duration
from ca.models import Identity
from ca.policy import Policy
from ca.state import os_user

_CSV_FIELDS = ["id", "user", "role", "ttl", "reason", "status", "created", "decided", "expires_at", "used_serial",
               "required", "approvals", "votes"]


@contextmanager
def _open(env: Env) -> Iterator[tuple[Approvals, Policy]]:
    with env.open_ca(require_db=True) as ca:
        policy = ca.policy  # before the database: a bad policy opens nothing
        yield ca.approvals, policy


def _admin() -> Identity:
    name = os_user()
    return Identity(user=name, auth_methods=("admin-offline",), operator=name)


def _row(r: AccessRequest) -> list:
    votes = ", ".join(f"{v.approver} {v.decision}d" + (f" ({v.comment})" if v.comment else "") for v in r.votes)
    return [r.id, r.user, r.role, format_duration(r.ttl), r.status, f"{len(r.approvers)}/{r.required or '?'}",
            r.as_json()["expires"][:16], r.reason, votes]


_HEADERS = ["ID", "USER", "ROLE", "TTL", "STATUS", "OK", "EXPIRES", "REASON", "VOTES"]


def _show(r: AccessRequest, fmt: str) -> None:
    if fmt == "json":
        echo_json(r.as_json())
    else:
        echo(r.summary())


@click.group()
def requests() -> None:
    """List, approve and deny access requests for roles that need approval.

    Requesters ask with 'iast-ssh request'; approvers usually answer with
    'iast-ssh approve/deny' over the service. These commands do the same on
    the CA host, as the person running them.

    \b
    Example:
      iast-ca requests list && sudo iast-ca requests approve req-abcdefghij --comment "INC-4711"
    """


@requests.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
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
    with _open(env) as (approvals, policy):
        approvals.expire_due()  # looking is observing: overdue requests are expired (and audited) first
        chosen = None if all_ else (list(statuses) or list(OPEN))
        found = approvals.list(policy=policy, user=user, role=role, statuses=chosen, limit=limit)
    if fmt == "json":
        echo_json([r.as_json() for r in found])
    elif fmt == "csv":
        echo_csv((r.as_json() for r in found), _CSV_FIELDS)
    elif not found:
        echo("No requests.")
    else:
        echo_table([_row(r) for r in found], _HEADERS)


@requests.command()
@click.argument("request_id", metavar="ID")
@click.option("--comment", help="A note for the requester and the audit log.")
@output_options(csv_ok=False)
@pass_env
def approve(env: Env, request_id: str, comment: str | None, fmt: str) -> None:
    """Approve request ID as the user running this command (who must be one of its approvers).

    \b
    Example:
      sudo iast-ca requests approve req-abcdefghij --comment "ok for INC-4711"
    """
    with _open(env) as (approvals, policy):
        r = approvals.approve(request_id, _admin(), policy, comment)
    _show(r, fmt)


@requests.command()
@click.argument("request_id", metavar="ID")
@click.option("--comment", required=True, help="Why (recorded in the audit log).")
@output_options(csv_ok=False)
@pass_env
def deny(env: Env, request_id: str, comment: str, fmt: str) -> None:
    """Deny request ID as the user running this command; one denial closes it.

    \b
    Example:
      sudo iast-ca requests deny req-abcdefghij --comment "use prod-readonly"
    """
    with _open(env) as (approvals, policy):
        r = approvals.deny(request_id, _admin(), policy, comment)
    _show(r, fmt)
