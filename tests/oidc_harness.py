"""A real OpenID Provider for the SSO tests: npm ``oidc-provider`` run by Debian's Node.js, over HTTPS.

:class:`OpenIDProvider` makes a throwaway CA and a server certificate for
127.0.0.1, the provider's signing keys (RSA and EC, as a private JWKS, so
tests can also mint tokens with the provider's own keys), and starts
``node tests/oidc/provider.mjs`` on a free loopback port with the accounts
and clients of ``tests/oidc/provider.json``. The CA under test is given the
CA bundle (``ca_file``): TLS verification is never turned off.

:meth:`OpenIDProvider.approve` plays the person at the browser: it opens the
verification URL with httpx, submits the provider's own user-code pages and
our test login page, as a person would.

Node and the npm packages are installed by ``make oidc`` (the ``test``
target runs it); when node or ``tests/oidc/node_modules`` is missing the
fixture skips loudly, and fails under CI=true.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

OIDC_DIR = Path(__file__).parent / "oidc"
CLIENT_ID = "iast-ca"
CLIENT_SECRET = "iast-ca-test-secret"
ACCOUNTS = json.loads((OIDC_DIR / "provider.json").read_text())["accounts"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_node() -> str:
    """The node binary with the provider's packages installed; skip loudly (fail under CI) if not."""
    node = shutil.which("node")
    reason = None
    if node is None:
        reason = "node not found (make oidc installs nodejs and npm)"
    elif not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        reason = "tests/oidc/node_modules missing (make oidc runs npm ci there)"
    if reason:
        if _in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(f"!!! REAL-OIDC TESTS NOT RUN: {reason} !!!")
    return node  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tls(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iast-ssh test IdP CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def private_jwk(key, kid: str, alg: str) -> dict:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


class _Forms(HTMLParser):
    """The forms of a page: (action, method, {name: value}) of each."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, str, dict[str, str]]] = []
        self.open = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append((a.get("action") or "", (a.get("method") or "get").lower(), {}))
            self.open = True
        elif tag == "input" and self.open and a.get("name"):  # the inputs, not the (abort) buttons
            self.forms[-1][2].setdefault(a["name"], a.get("value") or "")

    def handle_endtag(self, tag):
        if tag == "form":
            self.open = False


def forms_of(html: str) -> list[tuple[str, str, dict[str, str]]]:
    p = _Forms()
    p.feed(html)
    return p.forms


class OpenIDProvider:
    """oidc-provider on https://127.0.0.1:PORT, with the accounts of tests/oidc/provider.json."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node = require_node()
        self.ca_file, self.cert, self.key = _tls(self.workdir)
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.jwks_path = self.workdir / "jwks.json"
        self.jwks_path.write_text(json.dumps({"keys": [private_jwk(self.rsa_key, "rsa-1", "RS256"),
                                                       private_jwk(self.ec_key, "ec-1", "ES256")]}))
        self.jwks_path.chmod(0o600)
        self.port = _free_port()
        self.issuer = f"https://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    # -- process ---------------------------------------------------------------------

    def start(self, timeout: float = 20) -> OpenIDProvider:
        self.proc = subprocess.Popen(
            [self.node, str(OIDC_DIR / "provider.mjs"), str(OIDC_DIR / "provider.json"), str(self.port),
             str(self.cert), str(self.key), str(self.jwks_path)],
            cwd=OIDC_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                self.output.append(line.rstrip("\n"))
                if line.startswith("listening"):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("oidc-provider did not start:\n" + "\n".join(self.output[-20:]))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> OpenIDProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the CA's config for it --------------------------------------------------------

    def secret_file(self) -> Path:
        p = self.workdir / "client_secret"
        p.write_text(CLIENT_SECRET + "\n")
        p.chmod(0o600)
        return p

    def ca_toml(self, name: str = "test", extra: str = "") -> str:
        return (f'[oidc.{name}]\nissuer = "{self.issuer}"\nclient_id = "{CLIENT_ID}"\n'
                f'client_secret_file = "{self.secret_file()}"\nca_file = "{self.ca_file}"\n'
                f'scopes = ["openid", "email", "profile", "groups"]\nusername_claim = "email"\n'
                f'groups_claim = "groups"\nallowed_domains = ["example.test"]\n{extra}')

    # -- the person at the browser -------------------------------------------------------

    def browser(self) -> httpx.Client:
        """A person's browser: keeps the provider's session cookie from one sign-in to the next
        (so a later device login may skip the login page, as a real IdP session does)."""
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca_file)), follow_redirects=True,
                            timeout=10)

    def approve(self, url: str, login: str, password: str | None = None, *, auth_age: int = 0,
                user_code: str | None = None, browser: httpx.Client | None = None,
                logins: list[int] | None = None) -> str:
        """Open ``url`` (verification_uri or verification_uri_complete), enter the code if asked,
        sign in as ``login`` when the provider shows its login page (``auth_age``: back-date that
        sign-in by so many seconds); return the last page's text. ``browser``: one kept across
        sign-ins (:meth:`browser`); ``logins`` collects the auth_age of each login page shown."""
        password = password if password is not None else ACCOUNTS[login]["password"]
        from contextlib import nullcontext

        with (nullcontext(browser) if browser is not None else self.browser()) as http:
            r = http.get(url)
            for _ in range(8):
                forms = forms_of(r.text)
                if not forms:
                    return r.text
                action, method, fields = forms[0]
                if "user_code" in fields and not fields["user_code"]:
                    fields["user_code"] = user_code or ""
                if "login" in fields:
                    if logins is not None:
                        logins.append(auth_age)
                    fields.update(login=login, password=password, auth_age=str(auth_age))
                target = urljoin(str(r.url), action) if action else str(r.url)
                r = http.post(target, data=fields) if method == "post" else http.get(target, params=fields)
            return r.text

    # -- minting tokens with the provider's own keys (or others) ---------------------------

    def mint(self, claims: dict, *, key=None, kid: str = "rsa-1", alg: str = "RS256", headers: dict | None = None) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "auth_time": now,
                "jti": base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("="), **claims}
        body = {k: v for k, v in body.items() if v is not None}
        key = key if key is not None else (self.ec_key if alg == "ES256" else self.rsa_key)
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(headers or {})})

    def public_jwk(self, kid: str = "rsa-1") -> dict:
        key = self.rsa_key if kid == "rsa-1" else self.ec_key
        return {**json.loads(jwt.algorithms.get_default_algorithms()["RS256" if kid == "rsa-1" else "ES256"]
                             .to_jwk(key.public_key())), "kid": kid}


def unsigned(header: dict, claims: dict, signature: bytes = b"") -> str:
    """A JWT built by hand (``alg: none``, or any header): base64url(header).base64url(claims).sig."""
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode().rstrip("=")
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
