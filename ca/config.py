"""The service config (TOML), read and validated once into one typed object.

Precedence, highest first: command-line options, environment variables
(``IAST_CA_STATE_DIR``, ``IAST_CA_POLICY``, ``IAST_CA_DATABASE``), the config file (``--config``
or ``IAST_CA_CONFIG``), then the embedded defaults (state in ``./var``, the
policy at ``STATE/policy.toml``). Relative paths in a config file are
relative to that file's directory.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ca.durations import parse_duration
from ca.errors import ConfigError
from ca.rules import DEFAULT_PRINCIPAL_PATTERN
from ca.sshcert.userkey import DEFAULT_MIN_RSA_BITS

MAX_CLOCK_SKEW = 300

# The service's key exchange and cipher preferences (README, "Algorithms the service prefers").
# Post-quantum hybrids first: they protect the passwords and one-time codes on the wire against
# a later quantum computer (the service offers only those its asyncssh supports). AES-GCM before
# ChaCha20-Poly1305: as strong, and AES-NI makes it cheaper per packet here.
DEFAULT_KEX_ALGS = ("mlkem768x25519-sha256", "sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com",
                    "curve25519-sha256", "curve25519-sha256@libssh.org",
                    "ecdh-sha2-nistp256", "ecdh-sha2-nistp384", "ecdh-sha2-nistp521",
                    "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512",
                    "diffie-hellman-group14-sha256")
DEFAULT_ENCRYPTION_ALGS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@dataclass(frozen=True)
class ThrottleSettings:
    """Brute-force limits (``[throttle]``): see :mod:`ca.auth.throttle`."""

    user_limit: int = 5
    address_limit: int = 20
    window: int = 900
    lockout: int = 900
    max_backoff: int = 30


@dataclass(frozen=True)
class OIDCProvider:
    """One ``[oidc.NAME]`` identity provider: people log in through its device flow (RFC 8628)."""

    name: str
    issuer: str
    client_id: str
    client_secret_file: Path | None = None
    ca_file: Path | None = None  # CA bundle for its HTTPS (default: the system's)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    username_claim: str = "email"  # "email": the local part of a verified email in allowed_domains
    groups_claim: str = "groups"
    allowed_domains: tuple[str, ...] = ()
    max_age: int | None = None  # sent as max_age: the IdP must re-authenticate older sign-ins
    timeout: int = 5  # seconds, for every HTTP call to it

    def client_secret(self) -> str | None:
        if self.client_secret_file is None:
            return None
        try:
            return self.client_secret_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"oidc.{self.name}.client_secret_file: cannot read {self.client_secret_file}: "
                              f"{e.strerror}") from None


@dataclass(frozen=True)
class WorkloadIssuer:
    """One ``[workload.NAME]``: services trade their platform's signed token (a JWT) for a certificate."""

    name: str
    issuer: str
    audience: str
    claims: tuple[tuple[str, str], ...]  # each must equal the token's claim exactly
    user: str  # the user name certificates are issued to (and {user} expands to)
    ca_file: Path | None = None
    ttl: int = 300  # the default ttl of its certificates
    timeout: int = 5


@dataclass(frozen=True)
class Config:
    """Everything the CA reads from its config, validated."""

    source: str  # the file it came from, or "<defaults>"
    state_dir: Path
    policy_path: Path
    clock_skew: int = 60
    min_rsa_bits: int = DEFAULT_MIN_RSA_BITS
    principal_pattern: str = DEFAULT_PRINCIPAL_PATTERN
    passphrase_file: Path | None = None
    # A CA key in a PKCS#11 token (ca.keys.pkcs11): the module, unless the key's URI names one,
    # and the file holding the token PIN (else the systemd credential 'pkcs11-pin').
    pkcs11_module: Path | None = None
    pkcs11_pin_file: Path | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = 2222
    login_timeout: int = 30
    max_unauthenticated: int = 32
    # docs/security.md "Limits per connection and per address": one address may hold only a few
    # of the unauthenticated slots; a channel, a connection and a user are bounded too.
    max_unauthenticated_per_address: int = 8
    # docs/security.md rule 63: connections past those slots wait in a queue (counted across
    # ``serve --workers``; per address within one worker) instead of being dropped; past it, a
    # clean SSH disconnect with a reason.
    max_queued: int = 512
    max_queued_per_address: int = 256
    # The service's algorithm preferences, most preferred first (README "Algorithms the service
    # prefers"); empty: asyncssh's defaults.
    kex_algs: tuple[str, ...] = DEFAULT_KEX_ALGS
    encryption_algs: tuple[str, ...] = DEFAULT_ENCRYPTION_ALGS
    max_channels_per_connection: int = 4
    max_channels_per_user: int = 8
    request_timeout: int = 30
    max_request_bytes: int = 16384
    drain_timeout: int = 30
    throttle: ThrottleSettings = ThrottleSettings()
    # Run (never through a shell) when an access request is created; {id}, {user}, {role} are substituted.
    on_request: tuple[str, ...] | None = None
    oidc: tuple[OIDCProvider, ...] = ()
    workloads: tuple[WorkloadIssuer, ...] = ()
    # The CA database: None for STATE/ca.db (SQLite), or a PostgreSQL URL that several replicas
    # share ("postgresql://USER@HOST:PORT/DB"; the password from a passfile or PGPASSWORD, see README).
    database: str | None = None
    # [metrics] listen: the Prometheus and health listener (ca.service.metrics); None = off.
    # Loopback unless the operator names another address (docs/security.md rule 70).
    metrics_listen: tuple[str, int] | None = None

    @property
    def database_location(self) -> str | Path:
        """Where the CA database is: the PostgreSQL URL, or the SQLite file in the state directory."""
        return self.database if self.database else self.state_dir / "ca.db"

    def with_overrides(self, state_dir: str | None = None, policy: str | None = None,
                       database: str | None = None) -> Config:
        """Apply ``--state-dir``/``--policy``/``IAST_CA_DATABASE``. A new state dir
        moves the default policy with it unless a policy path was set."""
        cfg = self
        if database:
            cfg = replace(cfg, database=parse_database(database, "IAST_CA_DATABASE"))
        if state_dir:
            moved = {"policy_path": Path(state_dir) / "policy.toml"} if self._default_policy else {}
            cfg = replace(cfg, state_dir=Path(state_dir), **moved)
        if policy:
            cfg = replace(cfg, policy_path=Path(policy))
        return cfg

    @property
    def _default_policy(self) -> bool:
        return self.policy_path == self.state_dir / "policy.toml"


def default_config() -> Config:
    """The embedded defaults: state in ``./var``, policy in the state dir."""
    return Config(source="<defaults>", state_dir=Path("var"), policy_path=Path("var") / "policy.toml")


_KEYS = {
    "": {"state_dir", "policy", "database", "signing", "server", "throttle", "on_request", "oidc", "workload",
         "metrics"},
    "metrics": {"listen"},
    "signing": {"clock_skew", "min_rsa_bits", "principal_pattern", "passphrase_file", "pkcs11_module",
                "pkcs11_pin_file"},
    "server": {"listen", "login_timeout", "max_unauthenticated", "max_request_bytes", "drain_timeout",
               "max_unauthenticated_per_address", "max_channels_per_connection", "max_channels_per_user",
               "request_timeout", "max_queued", "max_queued_per_address", "kex_algs", "encryption_algs"},
    "throttle": {"user_failures", "address_failures", "window", "lockout", "max_backoff"},
}


def _int(sec: dict, key: str, where: str, field: str, lo: int, hi: int) -> int | None:
    if key not in sec:
        return None
    v = sec[key]
    _expect(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, where, field,
            f"an integer from {lo} to {hi}")
    return v


def _dur(sec: dict, key: str, where: str, field: str, hi: int) -> int | None:
    if key not in sec:
        return None
    try:
        v = parse_duration(sec[key])
    except ValueError as e:
        raise ConfigError(f"{where}: {field}: {e}") from None
    _expect(v <= hi, where, field, f"at most {hi}s")
    return v


def _expect(cond: bool, where: str, field: str, what: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {field}: expected {what}")


def parse_config(data: bytes, path: str | Path) -> Config:
    """Parse and validate a config file's bytes; errors name the file and the field."""
    path = Path(path)
    where = str(path)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    base = path.parent

    def section(name: str) -> dict[str, Any]:
        sec = doc.get(name, {}) if name else doc
        _expect(isinstance(sec, dict), where, f"[{name}]", "a table")
        extra = set(sec) - _KEYS[name]
        if extra:
            raise ConfigError(f"{where}: {name + '.' if name else ''}{sorted(extra)[0]}: unknown field")
        return sec

    top, signing, server, throttle = section(""), section("signing"), section("server"), section("throttle")
    metrics = section("metrics")
    cfg = default_config()
    values: dict[str, Any] = {"source": where}
    if "state_dir" in top:
        _expect(isinstance(top["state_dir"], str) and top["state_dir"], where, "state_dir", "a path")
        values["state_dir"] = base / top["state_dir"]
    state_dir = values.get("state_dir", cfg.state_dir)
    values["policy_path"] = state_dir / "policy.toml"
    if "policy" in top:
        _expect(isinstance(top["policy"], str) and top["policy"], where, "policy", "a path")
        values["policy_path"] = base / top["policy"]
    found = {
        "clock_skew": _dur(signing, "clock_skew", where, "signing.clock_skew", MAX_CLOCK_SKEW),
        "min_rsa_bits": _int(signing, "min_rsa_bits", where, "signing.min_rsa_bits", 2048, 16384),
        "login_timeout": _dur(server, "login_timeout", where, "server.login_timeout", 600),
        "max_unauthenticated": _int(server, "max_unauthenticated", where, "server.max_unauthenticated", 1, 10000),
        "max_request_bytes": _int(server, "max_request_bytes", where, "server.max_request_bytes", 1024, 1 << 20),
        "drain_timeout": _dur(server, "drain_timeout", where, "server.drain_timeout", 3600),
        "max_unauthenticated_per_address": _int(server, "max_unauthenticated_per_address", where,
                                                "server.max_unauthenticated_per_address", 1, 10000),
        "max_channels_per_connection": _int(server, "max_channels_per_connection", where,
                                            "server.max_channels_per_connection", 1, 1000),
        "max_channels_per_user": _int(server, "max_channels_per_user", where, "server.max_channels_per_user",
                                      1, 10000),
        "request_timeout": _dur(server, "request_timeout", where, "server.request_timeout", 3600),
        "max_queued": _int(server, "max_queued", where, "server.max_queued", 0, 100000),
        "max_queued_per_address": _int(server, "max_queued_per_address", where, "server.max_queued_per_address",
                                       0, 100000),
    }
    for name in ("kex_algs", "encryption_algs"):
        if name in server:
            values[name] = _strings(server, name, where, f"server.{name}", ())
    values.update({k: v for k, v in found.items() if v is not None})
    limits = {
        "user_limit": _int(throttle, "user_failures", where, "throttle.user_failures", 1, 1000),
        "address_limit": _int(throttle, "address_failures", where, "throttle.address_failures", 1, 100000),
        "window": _dur(throttle, "window", where, "throttle.window", 7 * 86400),
        "lockout": _dur(throttle, "lockout", where, "throttle.lockout", 7 * 86400),
        "max_backoff": _dur(throttle, "max_backoff", where, "throttle.max_backoff", 3600),
    }
    values["throttle"] = replace(cfg.throttle, **{k: v for k, v in limits.items() if v is not None})
    if "principal_pattern" in signing:
        pat = signing["principal_pattern"]
        _expect(isinstance(pat, str), where, "signing.principal_pattern", "a regular expression")
        try:
            re.compile(pat)
        except re.error as e:
            raise ConfigError(f"{where}: signing.principal_pattern: not a regular expression: {e}") from None
        # Security.md rule 2: whatever the pattern, no empty, comma, space or wildcard principal.
        for bad in ("", ",", " ", "*", "a,b", "a b", "a*"):
            if re.fullmatch(pat, bad):
                raise ConfigError(f"{where}: signing.principal_pattern: must not match {bad!r}")
        values["principal_pattern"] = pat
    if "passphrase_file" in signing:
        _expect(isinstance(signing["passphrase_file"], str), where, "signing.passphrase_file", "a path")
        values["passphrase_file"] = base / signing["passphrase_file"]
    for name in ("pkcs11_module", "pkcs11_pin_file"):
        if name in signing:
            _expect(isinstance(signing[name], str) and signing[name], where, f"signing.{name}", "a path")
            values[name] = base / signing[name]
    if "database" in top:
        values["database"] = parse_database(top["database"], f"{where}: database")
    if "on_request" in top:
        hook = top["on_request"]
        _expect(isinstance(hook, list) and hook and all(isinstance(a, str) and a for a in hook)
                and hook[0].startswith("/"), where, "on_request",
                'a command as a list of strings, starting with an absolute path: ["/usr/local/bin/notify", "{id}"]')
        values["on_request"] = tuple(hook)
    if "listen" in server:
        values["listen_host"], values["listen_port"] = parse_listen(server["listen"], f"{where}: server.listen")
    if "listen" in metrics:
        values["metrics_listen"] = parse_listen(metrics["listen"], f"{where}: metrics.listen")
    values["oidc"] = tuple(_oidc(n, sec, where, base) for n, sec in _named(doc, "oidc", where))
    values["workloads"] = tuple(_workload(n, sec, where, base) for n, sec in _named(doc, "workload", where))
    return replace(cfg, **values)


_OIDC_KEYS = {"issuer", "client_id", "client_secret_file", "ca_file", "scopes", "username_claim", "groups_claim",
              "allowed_domains", "max_age", "timeout"}
_WORKLOAD_KEYS = {"issuer", "audience", "claims", "user", "ca_file", "ttl", "timeout"}
_SECTION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _named(doc: dict, kind: str, where: str) -> list[tuple[str, dict]]:
    tables = doc.get(kind, {})
    _expect(isinstance(tables, dict), where, f"[{kind}]", f"tables [{kind}.NAME]")
    out = []
    for name, sec in tables.items():
        _expect(bool(_SECTION_NAME.fullmatch(name)), where, f"{kind}.{name[:40]}",
                "a name matching [a-z0-9][a-z0-9_-]{0,31}")
        _expect(isinstance(sec, dict), where, f"{kind}.{name}", "a table")
        extra = set(sec) - (_OIDC_KEYS if kind == "oidc" else _WORKLOAD_KEYS)
        if extra:
            raise ConfigError(f"{where}: {kind}.{name}.{sorted(extra)[0]}: unknown field")
        out.append((name, sec))
    return out


def _https(sec: dict, key: str, where: str, field: str) -> str:
    v = sec.get(key)
    # Exact, as tokens must name it (iss is compared as a string); https only (Discovery 4).
    _expect(isinstance(v, str) and re.fullmatch(r"https://[^\s/?#]+(/[^\s?#]*)?", v) is not None, where, field,
            "an https:// URL")
    return v


def _text(sec: dict, key: str, where: str, field: str, default: str | None = None) -> str:
    v = sec.get(key, default)
    _expect(isinstance(v, str) and 0 < len(v) <= 256 and v.isprintable(), where, field, "a string")
    return v


def _strings(sec: dict, key: str, where: str, field: str, default: tuple[str, ...]) -> tuple[str, ...]:
    v = sec.get(key, list(default))
    _expect(isinstance(v, list) and all(isinstance(x, str) and x and x.isprintable() for x in v), where, field,
            "a list of strings")
    return tuple(v)


def _path(sec: dict, key: str, where: str, field: str, base: Path) -> Path | None:
    if key not in sec:
        return None
    _expect(isinstance(sec[key], str) and sec[key], where, field, "a path")
    return base / sec[key]


def _oidc(name: str, sec: dict, where: str, base: Path) -> OIDCProvider:
    at = f"oidc.{name}."
    scopes = _strings(sec, "scopes", where, at + "scopes", ("openid", "email", "profile"))
    _expect("openid" in scopes, where, at + "scopes", 'a list containing "openid"')
    username_claim = _text(sec, "username_claim", where, at + "username_claim", "email")
    _expect(bool(_CLAIM_NAME.fullmatch(username_claim)), where, at + "username_claim", "a claim name")
    domains = tuple(d.lower() for d in _strings(sec, "allowed_domains", where, at + "allowed_domains", ()))
    if username_claim == "email":
        # Anyone can have an email at some domain: without a list, "alice@evil.example" would be alice.
        _expect(bool(domains), where, at + "allowed_domains", "at least one domain when username_claim is email")
    groups_claim = _text(sec, "groups_claim", where, at + "groups_claim", "groups")
    _expect(bool(_CLAIM_NAME.fullmatch(groups_claim)), where, at + "groups_claim", "a claim name")
    return OIDCProvider(
        name=name, issuer=_https(sec, "issuer", where, at + "issuer"),
        client_id=_text(sec, "client_id", where, at + "client_id"),
        client_secret_file=_path(sec, "client_secret_file", where, at + "client_secret_file", base),
        ca_file=_path(sec, "ca_file", where, at + "ca_file", base),
        scopes=scopes, username_claim=username_claim, groups_claim=groups_claim, allowed_domains=domains,
        max_age=_dur(sec, "max_age", where, at + "max_age", 366 * 86400),
        timeout=_dur(sec, "timeout", where, at + "timeout", 60) or 5,
    )


def _workload(name: str, sec: dict, where: str, base: Path) -> WorkloadIssuer:
    from ca.rules import is_user_name

    at = f"workload.{name}."
    claims = sec.get("claims", {})
    _expect(isinstance(claims, dict) and claims and all(
        isinstance(k, str) and _CLAIM_NAME.fullmatch(k) and isinstance(v, str) and v for k, v in claims.items()),
        where, at + "claims", 'a table of claim = "exact value" (at least one: which workloads, not any)')
    user = sec.get("user", name)
    _expect(is_user_name(user), where, at + "user", "a user name (^[a-z_][a-z0-9_.-]{0,31}$)")
    return WorkloadIssuer(
        name=name, issuer=_https(sec, "issuer", where, at + "issuer"),
        audience=_text(sec, "audience", where, at + "audience"),
        claims=tuple(sorted(claims.items())), user=user,
        ca_file=_path(sec, "ca_file", where, at + "ca_file", base),
        ttl=_dur(sec, "ttl", where, at + "ttl", 86400) or 300,
        timeout=_dur(sec, "timeout", where, at + "timeout", 60) or 5,
    )


def parse_database(text: Any, where: str) -> str:
    """A PostgreSQL URL (``postgresql://USER@HOST:PORT/DB``); the error never repeats a password."""
    if not isinstance(text, str) or not re.match(r"postgres(ql)?://", text):
        raise ConfigError(f"{where}: expected a PostgreSQL URL like postgresql://USER@HOST:5432/DB"
                          " (leave it out for STATE/ca.db)")
    if re.search(r"\s", text):
        raise ConfigError(f"{where}: the database URL must not contain spaces")
    return text


def parse_listen(text: Any, where: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:2222`` for IPv6) -> (host, port)."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", text) if isinstance(text, str) else None
    if not m:
        raise ConfigError(f"{where}: expected HOST:PORT, got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: port {port} out of range")
    return host, int(port)


def load_config(path: str | Path | None) -> Config:
    """Read the config file at ``path``, or the embedded defaults when None."""
    if path is None:
        return default_config()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    return parse_config(data, path)
