"""The iast-ssh client: connect to the CA (host key pinned), log in, and hold certificates in ssh-agent or files.

Runs on people's machines and hosts; it shares formats with the CA, never its state.
May import: ca core and ca.sshcert.
"""

from ca.client.agent import agent_socket, logout, status
from ca.client.config import (
    DEFAULT_CA,
    ClientConfig,
    check_fingerprint,
    config_path,
    load_config,
    parse_address,
    save_config,
)
from ca.client.connection import AUTH_FAILED_MESSAGE, Client, Prompter
from ca.client.files import (
    CERT_FILE,
    KEY_FILE,
    default_out_dir,
    install_krl,
    write_files,
)
from ca.client.trust import TrustUpdate, install_trust
from ca.client.results import HeldCertificate, LoginResult, LogoutResult, Status

__all__ = ["AUTH_FAILED_MESSAGE", "CERT_FILE", "DEFAULT_CA", "KEY_FILE", "Client", "ClientConfig", "HeldCertificate",
           "LoginResult", "LogoutResult", "Prompter", "Status", "agent_socket", "check_fingerprint", "config_path",
           "default_out_dir", "install_krl", "install_trust", "TrustUpdate", "load_config", "logout", "parse_address", "save_config", "status",
           "write_files"]
