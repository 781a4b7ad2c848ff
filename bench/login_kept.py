"""login-kept: one authenticated connection, many ``sign`` requests in sequence, each on a new channel.

What a long-lived client (an automation agent, a bastion) costs the
service per certificate once the handshake is paid. Same figures as
login-fresh, one client, against the real service and the bare asyncssh
server in the same run. Target: the service's CPU per certificate <= 1.5x
the bare server's.
"""

from __future__ import annotations

from pathlib import Path

from . import login_fresh
from .common import Outcome

NAME = "login-kept"


def run(quick: bool, profile: bool = False, results_dir: Path | None = None) -> Outcome:
    return login_fresh.run(quick, profile, results_dir, mode="kept", levels=[1], target=1.2, name=NAME)
