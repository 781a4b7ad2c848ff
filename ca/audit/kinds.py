"""The kinds of audit event the CA writes (one list, for ``audit list --kind`` and its "did you mean").

A closed set: ``audit list --kind`` refuses any other word (exit 2, with "did you mean").
``tests/test_cliux.py::test_every_recorded_kind_is_listed`` checks that every kind the code
writes (``record("...")``, ``append("...")``) is here, so a new kind cannot be forgotten.
"""

from __future__ import annotations

__all__ = ["EVENT_KINDS"]

EVENT_KINDS = (
    # certificates
    "issued", "denied", "failed", "host_issued", "host_denied", "host_failed", "revoked", "correlated",
    "krl_version",
    # logins to the service
    "auth_failed", "lockout", "unlocked",
    # users
    "user_added", "user_disabled", "user_enabled", "key_added", "key_removed", "password_changed",
    "password_rehashed", "totp_reset", "enrolment_code_created", "enrolment_code_used",
    # access requests
    "request_created", "request_approved", "request_denied", "request_cancelled", "request_expired",
    "request_used", "request_refused",
    # the CA itself
    "ca_init", "ca_key_added", "ca_key_activated", "ca_key_retired", "ca_key_reloaded", "host_ca_created",
    "host_token_created", "policy_reloaded", "policy_reload_failed", "checkpoint", "audit_key_moved",
)
