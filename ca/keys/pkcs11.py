"""The PKCS#11 key backend: a CA key held in a token (an HSM, a YubiHSM, SoftHSM); only signatures come out.

A key is named by an RFC 7512 URI, e.g.
``pkcs11:token=iast;object=user-ca?module-path=/usr/lib/softhsm/libsofthsm2.so``:

* path attributes ``token``, ``serial`` (which token), ``object``, ``id``
  (which key; at least one of them), ``type=private``;
* query attributes ``module-path`` (else ``signing.pkcs11_module`` in the
  config) and ``pin-source`` (a file holding the PIN). ``pin-value`` is
  refused: a PIN in the URI would sit in ``keyring.json``, in shell history
  and in ``ps`` (docs/security.md, "CA keys in tokens").

The PIN comes from ``pin-source``, else ``signing.pkcs11_pin_file``, else the
systemd credential ``pkcs11-pin`` (``$CREDENTIALS_DIRECTORY``); never from
the command line.

Signing mechanisms (docs/architecture.md, "Signing key"): ``CKM_EDDSA`` over
the data for Ed25519; ``CKM_ECDSA`` over our own SHA-256 / SHA-384 digest for
ECDSA P-256 / P-384 (the token returns ``r || s``); ``CKM_SHA512_RSA_PKCS``
for RSA (``rsa-sha2-512``). The signer re-verifies every certificate against
the public key in ``keyring.json``, whatever the token returned.

The token is opened lazily and reopened after any failure: a token that is
unplugged, locked or refuses the PIN makes that one ``sign`` raise
:class:`~ca.errors.SigningError` (one line; the authority audits it as
``failed``), the library is finalised, and the next request initialises it
again, finds the token and logs in. So the service recovers by itself when
the token comes back.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from ca.errors import BadKey, SigningError, UsageError
from ca.files import read_secret
from ca.sshcert.build import ecdsa_signature_from_raw, signature_algorithm, ssh_signature
from ca.sshcert.certificates import fingerprint
from ca.sshcert.wire import Reader, mpint, string

from ca.keys.base import KeyBackend

PIN_CREDENTIAL = "pkcs11-pin"

# CLI name -> what to generate in the token.
PKCS11_KEY_TYPES = ("ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-3072", "rsa-4096")

# DER of the curve identifiers a token reports in CKA_EC_PARAMS.
_ED25519_PARAMS = (bytes.fromhex("06032b6570"),  # OID 1.3.101.112
                   bytes.fromhex("130c") + b"edwards25519")  # PrintableString, PKCS#11 3.0
_EC_CURVES = {
    bytes.fromhex("06082a8648ce3d030107"): ("nistp256", hashlib.sha256, "secp256r1"),
    bytes.fromhex("06052b81040022"): ("nistp384", hashlib.sha384, "secp384r1"),
}
_PATH_ATTRS = {"token", "serial", "object", "id", "type", "manufacturer", "model"}
_QUERY_ATTRS = {"module-path", "pin-source"}


# --------------------------------------------------------------------------
# RFC 7512 URIs


@dataclass(frozen=True)
class Pkcs11URI:
    """The parts of a ``pkcs11:`` URI this backend uses."""

    token: str | None = None
    serial: str | None = None
    object: str | None = None
    id: bytes | None = None
    module_path: str | None = None
    pin_source: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())  # manufacturer, model: kept in the text only

    @classmethod
    def parse(cls, text: str) -> Pkcs11URI:
        """Parse ``pkcs11:...``; :class:`UsageError` (one line) for anything we would misread."""
        if not isinstance(text, str) or not text.startswith("pkcs11:"):
            raise UsageError(f"not a PKCS#11 URI (expected pkcs11:token=...;object=...): {str(text)[:80]!r}")
        if any(c in text for c in "\r\n\x00 "):
            raise UsageError("a PKCS#11 URI has no spaces or control characters (percent-encode them)")
        body = text[len("pkcs11:"):]
        path, _, query = body.partition("?")
        values: dict[str, str | bytes] = {}
        extra = []
        for part, allowed, sep in ((path, _PATH_ATTRS, ";"), (query, _QUERY_ATTRS, "&")):
            for item in filter(None, part.split(sep)):
                name, eq, value = item.partition("=")
                if not eq:
                    raise UsageError(f"PKCS#11 URI attribute {name[:40]!r} has no value")
                if name == "pin-value":
                    raise UsageError("a PIN never goes in the URI (it would be stored and shown): "
                                     "use pin-source=FILE, signing.pkcs11_pin_file, or the systemd credential "
                                     f"'{PIN_CREDENTIAL}'")
                if name not in allowed:
                    raise UsageError(f"unsupported PKCS#11 URI attribute {name[:40]!r}")
                if name in values or any(n == name for n, _ in extra):
                    raise UsageError(f"PKCS#11 URI attribute {name!r} given twice")
                try:
                    raw = unquote(value, errors="strict") if name != "id" else None
                except UnicodeDecodeError:
                    raise UsageError(f"PKCS#11 URI attribute {name!r} is not UTF-8 once percent-decoded") from None
                if name in _QUERY_ATTRS and not raw:
                    raise UsageError(f"PKCS#11 URI attribute {name!r} is empty (give a path, or leave it out)")
                if name == "id":
                    values["id"] = bytes(_unquote_bytes(value))
                elif name == "type":
                    if raw not in ("private", "public"):
                        raise UsageError(f"PKCS#11 URI type={raw!r}: the CA key is the private key")
                elif name in ("manufacturer", "model"):
                    extra.append((name, raw))
                else:
                    values[name.replace("-", "_")] = raw
        if "object" not in values and "id" not in values:
            raise UsageError("the PKCS#11 URI must name the key: object=LABEL (or id=%XX...)")
        return cls(extra=tuple(extra), **values)  # type: ignore[arg-type]

    def text(self) -> str:
        """The URI again, canonical (percent-encoded), as stored in ``keyring.json``."""
        path = []
        for name in ("token", "serial", "manufacturer", "model", "object"):
            value = getattr(self, name, None) if name not in ("manufacturer", "model") else dict(self.extra).get(name)
            if value is not None:
                path.append(f"{name}={quote(value, safe='')}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        query = [f"{n}={quote(v, safe='/')}" for n, v in (("module-path", self.module_path),
                                                          ("pin-source", self.pin_source)) if v]
        return "pkcs11:" + ";".join(path) + ("?" + "&".join(query) if query else "")

    def display(self) -> str:
        """The URI without its query (module and PIN file paths), for one-line messages."""
        return self.text().partition("?")[0]

    def with_id(self, key_id: bytes) -> Pkcs11URI:
        return Pkcs11URI(self.token, self.serial, self.object, key_id, self.module_path, self.pin_source, self.extra)


def _unquote_bytes(value: str) -> bytes:
    try:
        from urllib.parse import unquote_to_bytes

        return unquote_to_bytes(value)
    except ValueError as e:  # pragma: no cover - unquote_to_bytes does not raise today
        raise UsageError(f"bad PKCS#11 URI id: {e}") from None


# --------------------------------------------------------------------------
# Settings: module and PIN


@dataclass(frozen=True)
class Pkcs11Settings:
    """Defaults from the config (``[signing] pkcs11_module``, ``pkcs11_pin_file``)."""

    module_path: Path | None = None
    pin_file: Path | None = None


def resolve_module(uri: Pkcs11URI, settings: Pkcs11Settings) -> str:
    path = uri.module_path or (str(settings.module_path) if settings.module_path else None)
    if not path:
        raise UsageError("no PKCS#11 module: give module-path=/path/to/module.so in the URI, "
                         "or signing.pkcs11_module in the config")
    return path


def read_pin(uri: Pkcs11URI, settings: Pkcs11Settings) -> bytes:
    """The token PIN: the URI's pin-source, else the config's pin file, else the systemd credential."""
    source = uri.pin_source
    if source and source.startswith("file:"):
        source = source[len("file:"):]
    candidates = [("pin-source", source), ("signing.pkcs11_pin_file", settings.pin_file)]
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        candidates.append((f"credential {PIN_CREDENTIAL}", Path(creds) / PIN_CREDENTIAL))
    for what, path in candidates:
        if not path:
            continue
        if what.startswith("credential") and not Path(path).is_file():
            continue
        try:
            return read_secret(path)
        except OSError as e:
            raise SigningError(f"cannot read the token PIN ({what} {path}): {e.strerror}") from None
    raise SigningError("no token PIN: give pin-source=FILE in the URI, signing.pkcs11_pin_file in the config, "
                       f"or the systemd credential '{PIN_CREDENTIAL}'")


# --------------------------------------------------------------------------
# The library, shared by every backend of one module in this process

_lock = threading.RLock()
_generation: dict[str, int] = {}


def _pkcs11():
    try:
        import pkcs11  # python-pkcs11
    except ImportError:  # pragma: no cover - a dependency of the project
        raise SigningError("python-pkcs11 is not installed (pip install python-pkcs11)") from None
    return pkcs11


def _library(module: str):
    pkcs11 = _pkcs11()
    try:
        return pkcs11.lib(module)  # cached per path; initialises again after a reset
    except pkcs11.PKCS11Error as e:
        raise SigningError(f"cannot open PKCS#11 module {module}: {_describe(e)}") from None


def _reset(module: str) -> None:
    """Finalise the module (closes every session, logs out), so the next use starts afresh.
    Every backend on this module sees the new generation and reopens."""
    pkcs11 = _pkcs11()
    with _lock:
        _generation[module] = _generation.get(module, 0) + 1
        lib = getattr(pkcs11, "_loaded", {}).get(module)
        if lib is not None:
            try:
                lib.finalize()
            except pkcs11.PKCS11Error:
                pass


_MESSAGES = {
    "PinIncorrect": "wrong PIN",
    "PinLocked": "the token's PIN is locked",
    "PinExpired": "the token's PIN has expired",
    "PinInvalid": "the PIN is not valid for this token",
    "PinLenRange": "the PIN has the wrong length",
    "TokenNotPresent": "the token is not present (unplugged?)",
    "TokenNotRecognised": "the token is not recognised",
    "DeviceRemoved": "the token was removed",
    "DeviceError": "the token reports a device error",
    "NoSuchToken": "no such token (unplugged, or wrong token= / serial=)",
    "MultipleTokensReturned": "more than one token matches: add serial= to the URI",
    "NoSuchKey": "no such key in the token (wrong object= / id=)",
    "MultipleObjectsReturned": "more than one key matches: add id= to the URI",
    "ObjectHandleInvalid": "the key disappeared from the token (removed?)",
    "SessionHandleInvalid": "the token session was lost (token removed?)",
    "SessionClosed": "the token session was closed",
    "UserNotLoggedIn": "not logged in to the token",
    "MechanismInvalid": "the token does not offer this signing mechanism",
    "GeneralError": "the PKCS#11 module failed (token missing or misconfigured?)",
}


def _describe(e: BaseException) -> str:
    name = type(e).__name__
    text = _MESSAGES.get(name)
    detail = str(e).strip().replace("\n", " ")[:200]
    if text:
        return text
    return f"{name}: {detail}" if detail else name


# --------------------------------------------------------------------------
# Public keys as the token holds them


def _der_octets(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING (some tokens give the raw point): unwrap it."""
    if len(value) >= 2 and value[0] == 0x04:
        n, i = value[1], 2
        if n & 0x80:
            k = n & 0x7F
            n, i = int.from_bytes(value[2:2 + k], "big"), 2 + k
        if i + n == len(value):
            return value[i:]
    return value


def public_blob_of(public_key) -> tuple[bytes, str]:
    """The SSH public key blob of a token public key object, and the key kind
    (``ed25519``, ``ecdsa``, ``rsa``). :class:`BadKey` for a key type a CA cannot use."""
    _pkcs11()
    from pkcs11 import Attribute, KeyType

    kt = public_key.key_type
    if kt == KeyType.RSA:
        n = int.from_bytes(public_key[Attribute.MODULUS], "big")
        e = int.from_bytes(public_key[Attribute.PUBLIC_EXPONENT], "big")
        if n.bit_length() < 3072:
            raise BadKey(f"the token's RSA key has {n.bit_length()} bits; a CA key needs at least 3072")
        return string("ssh-rsa") + mpint(e) + mpint(n), "rsa"
    params = bytes(public_key[Attribute.EC_PARAMS])
    point = _der_octets(bytes(public_key[Attribute.EC_POINT]))
    if kt == getattr(KeyType, "EC_EDWARDS", None) and params in _ED25519_PARAMS:
        if len(point) != 32:
            raise BadKey("the token's Ed25519 public key is not 32 bytes")
        return string("ssh-ed25519") + string(point), "ed25519"
    if kt == KeyType.EC and params in _EC_CURVES:
        curve = _EC_CURVES[params][0]
        return string(f"ecdsa-sha2-{curve}") + string(curve) + string(point), "ecdsa"
    raise BadKey(f"the token key is of a type a CA key cannot be ({kt!r}, parameters {params.hex()[:40]})")


# --------------------------------------------------------------------------
# The backend


class Pkcs11KeyBackend(KeyBackend):
    """A CA key in a PKCS#11 token. ``expected_blob`` (from ``keyring.json``) is checked
    against the token's public key each time the session is opened."""

    def __init__(self, uri: Pkcs11URI | str, *, settings: Pkcs11Settings = Pkcs11Settings(),
                 expected_blob: bytes | None = None, what: str = "CA key"):
        self.uri = Pkcs11URI.parse(uri) if isinstance(uri, str) else uri
        self.settings = settings
        self.module = resolve_module(self.uri, settings)
        self.what = what
        self._blob = expected_blob
        self._key = None
        self._session = None
        self._generation = -1
        self._kind: str | None = None
        if expected_blob is None:
            self.check()  # learn the public key now: used by 'iast-ca key add'
        else:
            self._kind = _kind_of(Reader(expected_blob).text())

    # -- the seam ---------------------------------------------------------

    @property
    def public_blob(self) -> bytes:
        assert self._blob is not None
        return self._blob

    def sign(self, data: bytes) -> bytes:
        pkcs11 = _pkcs11()
        from pkcs11 import Mechanism

        alg = self.signature_algorithm
        with _lock:
            try:
                key = self._open()
                if self._kind == "ed25519":
                    return ssh_signature(alg, bytes(key.sign(data, mechanism=Mechanism.EDDSA)))
                if self._kind == "ecdsa":
                    digest = (hashlib.sha256 if alg.endswith("nistp256") else hashlib.sha384)(data).digest()
                    return ecdsa_signature_from_raw(alg, bytes(key.sign(digest, mechanism=Mechanism.ECDSA)))
                return ssh_signature(alg, bytes(key.sign(data, mechanism=Mechanism.SHA512_RSA_PKCS)))
            except pkcs11.PKCS11Error as e:
                self._drop(reset=True)
                raise SigningError(f"{self.what} in token {self.uri.display()} cannot sign: {_describe(e)}") from None
            except SigningError:
                self._drop(reset=True)
                raise

    def check(self) -> None:
        """Open the session now (log in, find the key, compare its public key); SigningError if not."""
        pkcs11 = _pkcs11()
        with _lock:
            try:
                self._open()
            except pkcs11.PKCS11Error as e:
                self._drop(reset=True)
                raise SigningError(f"{self.what} in token {self.uri.display()}: {_describe(e)}") from None
            except (SigningError, BadKey):
                self._drop(reset=True)
                raise

    def close(self) -> None:
        with _lock:
            self._drop(reset=False)

    # -- the session ------------------------------------------------------

    def _open(self):
        if self._key is not None and self._generation == _generation.get(self.module, 0):
            return self._key
        self._drop(reset=False)
        pkcs11 = _pkcs11()
        from pkcs11 import Attribute, ObjectClass

        lib = _library(self.module)
        self._generation = _generation.get(self.module, 0)
        token = lib.get_token(**{k: v for k, v in (("token_label", self.uri.token),
                                                   ("token_serial", self.uri.serial)) if v is not None})
        pin = read_pin(self.uri, self.settings)
        try:
            session = token.open(user_pin=pin.decode("utf-8"))
        except pkcs11.UserAlreadyLoggedIn:
            session = token.open()  # another backend of this process logged in to the same token
        self._session = session
        query = {k: v for k, v in (("label", self.uri.object), ("id", self.uri.id)) if v is not None}
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, **query)
        if key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
            raise BadKey(f"the token key {self.uri.display()} is extractable or not sensitive: a CA key must never "
                         "leave its token (generate one with 'iast-ca key add --pkcs11 URI --generate')")
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, **query)
        blob, kind = public_blob_of(public)
        if self._blob is not None and blob != self._blob:
            raise SigningError(f"the key in the token ({fingerprint(blob)}) is not {self.what} "
                               f"{fingerprint(self._blob)} of keyring.json")
        self._blob, self._kind, self._key = blob, kind, key
        return key

    def _drop(self, *, reset: bool) -> None:
        session, self._session, self._key = self._session, None, None
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001 - a lost session cannot be closed; it is gone either way
                pass
        if reset:
            _reset(self.module)


def _kind_of(algorithm: str) -> str:
    signature_algorithm(algorithm)  # ValueError for a type a CA key cannot be
    if algorithm == "ssh-ed25519":
        return "ed25519"
    if algorithm.startswith("ecdsa-sha2-"):
        if algorithm.endswith("nistp521"):
            raise BadKey("ECDSA P-521 CA keys are not supported in a token")
        return "ecdsa"
    return "rsa"


# --------------------------------------------------------------------------
# Making a key in the token


def generate_in_token(uri: Pkcs11URI | str, kind: str, *, settings: Pkcs11Settings = Pkcs11Settings(),
                      what: str = "CA key") -> Pkcs11KeyBackend:
    """Create a key pair of ``kind`` inside the token, private half sensitive and
    non-extractable, and return it as a backend. Refuses if the URI's label or id
    already names a key there (it would be ambiguous)."""
    if kind not in PKCS11_KEY_TYPES:
        raise BadKey(f"unknown key type {kind!r}; choose one of {', '.join(PKCS11_KEY_TYPES)}")
    uri = Pkcs11URI.parse(uri) if isinstance(uri, str) else uri
    if uri.object is None:
        raise UsageError("give the new key a label: object=NAME in the URI")
    if uri.id is None:
        uri = uri.with_id(os.urandom(8))
    module = resolve_module(uri, settings)
    pkcs11 = _pkcs11()
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.util.ec import encode_named_curve_parameters

    private = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
               Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DECRYPT: False,
               Attribute.UNWRAP: False, Attribute.DERIVE: False}
    public = {Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.ENCRYPT: False,
              Attribute.WRAP: False, Attribute.DERIVE: False}
    with _lock:
        session = None
        try:
            token = _library(module).get_token(**{k: v for k, v in (("token_label", uri.token),
                                                                     ("token_serial", uri.serial)) if v})
            pin = read_pin(uri, settings).decode("utf-8")
            try:
                session = token.open(user_pin=pin, rw=True)
            except pkcs11.UserAlreadyLoggedIn:
                session = token.open(rw=True)
            for attr, name, value in ((Attribute.LABEL, "object", uri.object), (Attribute.ID, "id", uri.id)):
                if any(True for _ in session.get_objects({attr: value})):
                    raise UsageError(f"the token already holds an object with {name}={value!r}: "
                                     "use it without --generate, or pick another")
            common = {"store": True, "label": uri.object, "id": uri.id,
                      "public_template": public, "private_template": private}
            if kind == "ed25519":
                params = session.create_domain_parameters(
                    KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")},
                    local=True)
                params.generate_keypair(mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, **common)
            elif kind.startswith("ecdsa-"):
                curve = {"ecdsa-p256": "secp256r1", "ecdsa-p384": "secp384r1"}[kind]
                params = session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True)
                params.generate_keypair(**common)
            else:
                session.generate_keypair(KeyType.RSA, int(kind.split("-")[1]), **common)
        except pkcs11.PKCS11Error as e:
            _reset(module)
            raise SigningError(f"cannot generate a key in the token {uri.display()}: {_describe(e)}") from None
        finally:
            if session is not None:
                try:
                    session.close()
                except Exception:  # noqa: BLE001
                    pass
    return Pkcs11KeyBackend(uri, settings=settings, what=what)
