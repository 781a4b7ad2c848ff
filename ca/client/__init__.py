"""The iast-ssh client: connect to the CA (host key pinned), log in, and hold certificates in ssh-agent or files.

Runs on people's machines and hosts; it shares formats with the CA, never its state.
May import: ca core and ca.sshcert.
"""

from ca.client.client import (
    AUTH_FAILED_MESSAGE,
    CERT_FILE,
    KEY_FILE,
    Client,
    Prompter,
    default_out_dir,
    install_krl,
    load_config,
    logout,
    status,
)

__all__ = ["AUTH_FAILED_MESSAGE", "CERT_FILE", "KEY_FILE", "Client", "Prompter", "default_out_dir", "install_krl",
           "load_config", "logout", "status"]
