"""The client's settings: ``~/.config/iast-ssh/config.toml``, and the CA address and pin written in it.

The file is read strictly (an unknown field or a wrong value names the file
and the field) and written atomically, 0600.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ca.errors import ConfigError, UsageError

__all__ = ["DEFAULT_CA", "DEFAULT_PORT", "ClientConfig", "Profile", "check_fingerprint", "config_path", "format_address",
           "load_config", "parse_address", "save_config"]


DEFAULT_CA = "127.0.0.1:2222"
DEFAULT_PORT = 2222
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_PROFILE_FIELDS = ("ca", "ca_fingerprint", "user", "identity", "role")
_CONFIG_FIELDS = _PROFILE_FIELDS + ("profiles",)
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")


@dataclass(frozen=True)
class Profile:
    """What the client remembers about one CA. Every field is optional."""

    ca: str | None = None  # host:port[,host:port...] (replicas of one CA)
    ca_fingerprint: str | None = None  # SHA256:... of the CA's service host key
    user: str | None = None
    identity: str | None = None  # the enrolled private key to authenticate with
    role: str | None = None  # the role 'login' asks for by default


@dataclass(frozen=True)
class ClientConfig(Profile):
    """The client's settings file: the top-level fields are the default profile; ``[profiles.NAME]``
    tables are one more profile each (another CA). Every field is optional."""

    profiles: tuple[tuple[str, Profile], ...] = ()

    @property
    def default(self) -> Profile:
        return Profile(**{k: getattr(self, k) for k in _PROFILE_FIELDS})

    def profile(self, name: str | None) -> Profile:
        """The named profile (None: the top-level one); UsageError if there is none of that name."""
        if name is None:
            return self.default
        for n, p in self.profiles:
            if n == name:
                return p
        known = ", ".join(n for n, _ in self.profiles) or "none"
        raise UsageError(f"no profile {name!r} in the config file (profiles: {known})")

    def for_addresses(self, addresses: list[tuple[str, int]]) -> tuple[str | None, Profile] | None:
        """The profile whose CA address list is ``addresses`` (the top-level one first), or None."""
        for name, p in ((None, self.default), *self.profiles):
            if p.ca and parse_addresses(p.ca) == addresses:
                return name, p
        return None

    def with_profile(self, name: str | None, profile: Profile) -> ClientConfig:
        """This config with profile ``name`` (None: the top-level one) replaced or added."""
        if name is None:
            return replace(self, **asdict(profile))
        rest = [(n, p) for n, p in self.profiles if n != name]
        return replace(self, profiles=tuple(rest + [(name, profile)]))


def config_path(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/iast-ssh/config.toml`` (default ``~/.config/iast-ssh/config.toml``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path(os.path.expanduser("~")) / ".config"
    return root / "iast-ssh" / "config.toml"


def _profile(path: Path, where: str, data: dict) -> Profile:
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in _PROFILE_FIELDS:
            raise ConfigError(f"{path}: {where}unknown field {key!r} (expected one of: {', '.join(_PROFILE_FIELDS)})")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {where}{key}: expected a non-empty string, got {value!r}")
        values[key] = value.strip()
    if "ca" in values:
        try:
            parse_addresses(values["ca"])
        except UsageError as e:
            raise ConfigError(f"{path}: {where}ca: {e}") from None
    if "ca_fingerprint" in values:
        try:
            values["ca_fingerprint"] = check_fingerprint(values["ca_fingerprint"])
        except UsageError as e:
            raise ConfigError(f"{path}: {where}ca_fingerprint: {e}") from None
    return Profile(**values)


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
    for key in data:
        if key not in _CONFIG_FIELDS:
            raise ConfigError(f"{path}: unknown field {key!r} (expected one of: {', '.join(_CONFIG_FIELDS)})")
    tables = data.pop("profiles", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"{path}: profiles: expected [profiles.NAME] tables")
    profiles = []
    for name, table in tables.items():
        if not _PROFILE_NAME.match(name):
            raise ConfigError(f"{path}: profiles.{name}: a profile name is letters, digits and ._:-")
        profiles.append((name, _profile(path, f"profiles.{name}.", table)))
    top = _profile(path, "", data)
    return ClientConfig(**asdict(top), profiles=tuple(profiles))


def save_config(cfg: ClientConfig, path: str | os.PathLike | None = None) -> Path:
    """Write the config file atomically, mode 0600 (its directory 0700)."""
    from ca.files import write_atomic

    path = Path(path) if path is not None else config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["# iast-ssh client settings (written by iast-ssh)"]

    def fields(p: Profile) -> None:
        for key in _PROFILE_FIELDS:
            value = getattr(p, key)
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")  # a JSON string is a valid TOML basic string

    fields(cfg.default)
    for name, p in cfg.profiles:
        lines += ["", f"[profiles.{json.dumps(name)}]"]
        fields(p)
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


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """The known_hosts line OpenSSH matches for ``host:port``: ``[host]:port TYPE BASE64`` (plain ``host``
    on port 22), as ``iast-ca info --known-hosts`` and ``iast-ssh trust-ca`` write it."""
    kind, blob = public_key.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {kind} {blob}"


def check_fingerprint(text: str) -> str:
    """A host key fingerprint as ``ssh-keygen -lf`` and ``iast-ca info`` print it: ``SHA256:`` + 43 chars."""
    s = (text or "").strip()
    if not _FINGERPRINT.match(s):
        raise UsageError(f"expected a fingerprint like SHA256:<43 base64 characters> (from 'iast-ca info'), got {text!r}")
    return s
