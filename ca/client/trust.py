"""A host's trusted CA keys (sshd's ``TrustedUserCAKeys``), installed from the CA the way the KRL is.

``install_trust`` replaces the file only with a set that makes sense, and
otherwise keeps the installed one (the last good copy), so a failed refresh
never leaves sshd trusting nothing (every certificate login refused) or
something unexpected:

* every line is a plain public key of a type a CA key can be (no
  certificates, no options, no DSA), and there is at least one;
* the new set shares at least one key with the installed one: a rotation
  always overlaps (docs/security.md, "Rotation"), so a set with no key in
  common is refused unless ``replace=True`` (a host that was offline through
  a whole rotation, or a first install over an unrelated file).

The file is written with a temp file and a rename (mode 0644): sshd reads it
at every authentication, and sees the old file or the new one, never half.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from ca.errors import CAError
from ca.sshcert.build import SIGNATURE_ALGORITHMS
from ca.sshcert.certificates import fingerprint
from ca.sshcert.wire import Reader, WireError

__all__ = ["TrustUpdate", "install_trust", "parse_trust_lines"]

MAX_KEYS = 64


@dataclass(frozen=True)
class TrustUpdate:
    path: str
    keys: tuple[str, ...]  # fingerprints now trusted
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: bool

    def as_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def parse_trust_lines(text: str) -> dict[str, str]:
    """``fingerprint -> 'TYPE BASE64 COMMENT'`` for each key line; CAError for anything else."""
    keys: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        kind = parts[0]
        if kind not in SIGNATURE_ALGORITHMS or len(parts) < 2:
            raise CAError(f"line {n}: not a CA public key ({kind[:40]!r})")
        try:
            blob = base64.b64decode(parts[1], validate=True)
            if Reader(blob).text() != kind:
                raise WireError("key type does not match its blob")
        except (binascii.Error, ValueError, WireError) as e:
            raise CAError(f"line {n}: malformed {kind} key ({e})") from None
        keys[fingerprint(blob)] = " ".join(parts[:3])
    if not keys:
        raise CAError("no CA key in it")
    if len(keys) > MAX_KEYS:
        raise CAError(f"{len(keys)} keys: more than {MAX_KEYS}")
    return keys


def install_trust(text: str, path: str | os.PathLike, *, replace: bool = False) -> TrustUpdate:
    """Install the trusted CA keys ``text`` (what ``iast-ca trust`` prints) at ``path``,
    keeping the installed file on any failure (see the module docstring)."""
    from ca.client.files import write_installed

    path = Path(path)
    try:
        new = parse_trust_lines(text)
    except CAError as e:
        raise CAError(f"the fetched trusted CA keys are not valid ({e}); kept {path}") from None
    try:
        old = parse_trust_lines(path.read_text())
    except FileNotFoundError:
        old = None
    except (OSError, UnicodeError, CAError):
        old = {}  # unreadable or empty: nothing to keep, but no overlap to check either
    if old and not replace and not set(old) & set(new):
        raise CAError(f"the fetched CA keys share none with the installed ones ({', '.join(sorted(old))}); a "
                      f"rotation always overlaps, so this is refused: check the CA, or use --replace; kept {path}")
    body = "".join(new[fp] + "\n" for fp in new)
    try:
        current = path.read_bytes()
    except OSError:
        current = None
    changed = current != body.encode()
    if changed:
        write_installed(path, body, 0o644)
    before = set(old or ())
    return TrustUpdate(str(path), tuple(new), tuple(fp for fp in new if fp not in before),
                       tuple(sorted(before - set(new))), changed)
