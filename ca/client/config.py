"""The client's settings: ``~/.config/iast-ssh/config.toml``, and the CA address and pin written in it.

The file is read strictly (an unknown field or a wrong value names the file
and the field) and written atomically, 0600.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ca.errors import ConfigError, UsageError

__all__ = ["DEFAULT_CA", "DEFAULT_PORT", "ClientConfig", "check_fingerprint", "config_path", "format_address",
           "load_config", "parse_address", "save_config"]


DEFAULT_CA = "127.0.0.1:2222"
DEFAULT_PORT = 2222
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_CONFIG_FIELDS = ("ca", "ca_fingerprint", "user", "role")


@dataclass(frozen=True)
class ClientConfig:
    """The client's settings file. Every field is optional."""

    ca: str | None = None  # host:port
    ca_fingerprint: str | None = None  # SHA256:... of the CA's SSH host key
    user: str | None = None
    role: str | None = None


def config_path(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/iast-ssh/config.toml`` (default ``~/.config/iast-ssh/config.toml``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path(os.path.expanduser("~")) / ".config"
    return root / "iast-ssh" / "config.toml"


def load_config(path: str | os.PathLike | None = None) -> ClientConfig:
    """Read the config file strictly: an unknown field or a wrong value names the file and the field.

    A missing file is an empty config.
    """
    import tomllib

    path = Path(path) if path is not None else config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ClientConfig()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in _CONFIG_FIELDS:
            raise ConfigError(f"{path}: unknown field {key!r} (expected one of: {', '.join(_CONFIG_FIELDS)})")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {key}: expected a non-empty string, got {value!r}")
        values[key] = value.strip()
    if "ca" in values:
        try:
            parse_addresses(values["ca"])
        except UsageError as e:
            raise ConfigError(f"{path}: ca: {e}") from None
    if "ca_fingerprint" in values:
        try:
            values["ca_fingerprint"] = check_fingerprint(values["ca_fingerprint"])
        except UsageError as e:
            raise ConfigError(f"{path}: ca_fingerprint: {e}") from None
    return ClientConfig(**values)


def save_config(cfg: ClientConfig, path: str | os.PathLike | None = None) -> Path:
    """Write the config file atomically, mode 0600 (its directory 0700)."""
    from ca.files import write_atomic

    path = Path(path) if path is not None else config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["# iast-ssh client settings (written by iast-ssh)"]
    for key, value in asdict(cfg).items():
        if value is not None:
            lines.append(f"{key} = {json.dumps(value)}")  # a JSON string is a valid TOML basic string
    write_atomic(path, "\n".join(lines) + "\n", 0o600)
    return path


def parse_address(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); the default port is 2222."""
    s = (text or "").strip()
    if not s:
        raise UsageError("empty CA address; expected HOST[:PORT]")
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"cannot parse the CA address {text!r}; expected HOST[:PORT] or [V6]:PORT")
        port_text = rest[1:] if rest else ""
    elif s.count(":") == 1:
        host, _, port_text = s.partition(":")
    else:
        host, port_text = s, ""  # a bare name, or a bare IPv6 address
    if not host or any(c.isspace() for c in host):
        raise UsageError(f"cannot parse the CA address {text!r}; expected HOST[:PORT]")
    if port_text == "":
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"bad port in the CA address {text!r}")
    return host, int(port_text)


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """``a:2222,b:2222``: the CA's replicas, tried in this order (README "Run several replicas")."""
    parts = [p for p in (text or "").split(",")]
    if len(parts) > 1 and any(not p.strip() for p in parts):
        raise UsageError(f"empty address in the CA list {text!r}; expected HOST[:PORT],HOST[:PORT]")
    return [parse_address(p) for p in parts]


def format_addresses(addresses: list[tuple[str, int]]) -> str:
    return ",".join(format_address(h, p) for h, p in addresses)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_fingerprint(text: str) -> str:
    """A host key fingerprint as ``ssh-keygen -lf`` and ``iast-ca info`` print it: ``SHA256:`` + 43 chars."""
    s = (text or "").strip()
    if not _FINGERPRINT.match(s):
        raise UsageError(f"expected a fingerprint like SHA256:<43 base64 characters> (from 'iast-ca info'), got {text!r}")
    return s
