"""Policy: the role model with the pure ``decide`` and ``explain``, and the strict TOML parser that builds it.

``decide(identity, request, now)`` reads nothing but its arguments: the same inputs give the same certificate.
May import: ca core only.
"""

from ca.policy.model import EXTENSIONS, Approval, HostRole, Policy, Role, RoleVerdict
from ca.policy.parser import load_policy, parse_policy
from ca.rules import DEFAULT_PRINCIPAL_PATTERN

__all__ = ["DEFAULT_PRINCIPAL_PATTERN", "EXTENSIONS", "Approval", "HostRole", "Policy", "Role", "RoleVerdict",
           "load_policy", "parse_policy"]
