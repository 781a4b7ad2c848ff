"""The iast-ssh client: connect to the CA (host key pinned), log in, and hold certificates in ssh-agent or files.

Runs on people's machines and hosts; it shares formats with the CA, never its state.
May import: ca core and ca.sshcert.

The names below are imported when first used (PEP 562), so that a command
pays only for the modules its path needs (docs/architecture.md, "The
client"): ``iast-ssh login`` over OpenSSH never imports asyncio or asyncssh.
"""

from importlib import import_module

_WHERE = {
    "agent_socket": "agent", "logout": "agent", "status": "agent",
    "DEFAULT_CA": "config", "ClientConfig": "config", "check_fingerprint": "config", "config_path": "config",
    "load_config": "config", "parse_address": "config", "save_config": "config",
    "AUTH_FAILED_MESSAGE": "connection", "Client": "connection", "Prompter": "connection",
    "CERT_FILE": "files", "KEY_FILE": "files", "default_out_dir": "files", "install_krl": "files",
    "write_files": "files",
    "TrustUpdate": "trust", "install_trust": "trust",
    "HeldCertificate": "results", "LoginResult": "results", "LogoutResult": "results", "Status": "results",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'ca.client' has no attribute {name!r}")
    value = getattr(import_module(f"ca.client.{where}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
