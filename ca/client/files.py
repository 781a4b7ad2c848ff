"""The client's files: the key and certificate pair (0600, atomic) and a host's installed KRL.

Without ssh-agent, ``login`` writes ``id_ed25519`` and ``id_ed25519-cert.pub``
into an output directory (default ``~/.ssh/iast-ssh``, created 0700);
``install_krl`` replaces a host's RevokedKeys file only with a valid, newer KRL.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ca.client.results import HeldCertificate, held_certificate
from ca.errors import CAError

__all__ = ["CERT_FILE", "KEY_FILE", "cache_dir", "cache_file", "cached_krls", "krl_age", "cert_file", "key_file", "save_krl", "check_out_dir", "default_out_dir", "file_held", "install_krl", "write_files"]


KEY_FILE = "id_ed25519"  # the pair of a login without a role name (files of older versions too)
CERT_FILE = KEY_FILE + "-cert.pub"
_ROLE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def key_file(role: str | None) -> str:
    """The key file of one role's pair, ``id_ed25519-ROLE`` (its certificate: ``id_ed25519-ROLE-cert.pub``):
    one pair per role, so a login for a second role does not overwrite the first's."""
    if not role:
        return KEY_FILE
    if not _ROLE_FILE.match(role):
        raise CAError(f"the role name {role[:40]!r} cannot be a file name; use ssh-agent (drop --no-agent)")
    return f"{KEY_FILE}-{role}"


def cert_file(role: str | None) -> str:
    return key_file(role) + "-cert.pub"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/iast-ssh`` (default ``~/.cache/iast-ssh``): the last KRL fetched from each CA."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path(os.path.expanduser("~")) / ".cache"
    return root / "iast-ssh"


def save_krl(address: str, data: bytes) -> Path:
    """Keep the KRL just fetched from the CA at ``address`` (``status`` marks what it revokes)."""
    from ca.files import write_atomic

    path = cache_file("krl", address)
    try:
        if path.read_bytes() == data:
            os.utime(path)  # unchanged (most logins): no write, no fsync; its age starts again
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, 0o600)
    return path


def cache_file(kind: str, address: str) -> Path:
    """The file in :func:`cache_dir` that keeps ``kind`` (``krl``, ``hostkey``) of the CA at ``address``."""
    return cache_dir() / (f"{kind}-" + re.sub(r"[^A-Za-z0-9._-]", "_", address))


def krl_age(address: str) -> float:
    """Seconds since the KRL of the CA at ``address`` was last fetched (or found unchanged); inf if never."""
    import time

    try:
        return time.time() - os.stat(cache_file("krl", address)).st_mtime
    except OSError:
        return float("inf")


def cached_krls() -> list:
    """Every KRL kept by :func:`save_krl` that still parses."""
    from ca.sshcert.krl import KRLError, parse_krl

    out = []
    for path in sorted(cache_dir().glob("krl-*")):
        try:
            out.append(parse_krl(path.read_bytes()))
        except (OSError, KRLError):
            continue
    return out


def default_out_dir() -> Path:
    """Where certificate files go when they do not go into ssh-agent."""
    return Path(os.path.expanduser("~")) / ".ssh" / "iast-ssh"


def check_out_dir(out_dir: Path) -> None:
    """Refuse an existing output directory that someone else could write into or that is not
    ours (docs/security.md, "The client's output directory is the user's own"): they could swap
    the key the next ``ssh -i`` uses. A directory that does not exist yet is fine (it is made 0700)."""
    out_dir = Path(out_dir)
    try:
        st = os.stat(out_dir)
    except FileNotFoundError:
        return
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise CAError(f"{out_dir} is not a directory")
    if st.st_uid != os.getuid():
        raise CAError(f"{out_dir} is owned by uid {st.st_uid}, not you: use a directory of your own "
                      f"(--out-dir DIR), or 'sudo chown {os.getuid()} {out_dir}'")
    if st.st_mode & 0o022:
        raise CAError(f"{out_dir} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                      f"'chmod go-w {out_dir}' (or chmod 700), then try again")


def write_files(out_dir: Path, key, certificate: str, key_id: str, role: str | None = None) -> tuple[Path, Path]:
    """``OUT/id_ed25519-ROLE`` and ``OUT/id_ed25519-ROLE-cert.pub``, 0600 and atomic, replacing that role's
    previous pair; ``OUT`` is created 0700 (an existing ``OUT`` must pass :func:`check_out_dir`)."""
    from ca.files import write_atomic

    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    name = key_file(role)
    if not out_dir.exists():
        out_dir.mkdir(parents=True, mode=0o700)
        os.chmod(out_dir, 0o700)  # mkdir's mode is filtered by the umask
    key.set_comment(key_id)
    key_path, cert_path = out_dir / name, out_dir / (name + "-cert.pub")
    kind, blob = certificate.split()[:2]
    # The key first: for a moment the old certificate sits beside the new key (ssh then fails to
    # use the pair and says so), never the new certificate beside the old key.
    write_atomic(key_path, key.export_private_key("openssh"), 0o600)
    write_atomic(cert_path, f"{kind} {blob} {key_id}\n", 0o600)
    return key_path, cert_path


def read_cert(cert_path: Path) -> bytes | None:
    import base64
    import binascii

    try:
        fields = cert_path.read_text().split()
        return base64.b64decode(fields[1], validate=True)
    except (OSError, IndexError, binascii.Error, UnicodeDecodeError):
        return None


def cert_files(out_dir: Path) -> list[Path]:
    """The certificate files of the pairs in ``out_dir`` (``id_ed25519[-ROLE]-cert.pub``), by name."""
    try:
        return sorted(p for p in Path(out_dir).glob(KEY_FILE + "*-cert.pub") if p.is_file())
    except OSError:
        return []


def file_held(out_dir: Path, krls=()) -> list[HeldCertificate]:
    """The iast certificates in ``out_dir``'s certificate files (expired or not), marked revoked by ``krls``."""
    out = []
    for cert_path in cert_files(out_dir):
        blob = read_cert(cert_path)
        held = held_certificate("files", blob, path=cert_path, krls=krls) if blob else None
        if held:
            out.append(held)
    return out


def install_krl(data: bytes, path: str | os.PathLike) -> tuple[int, int | None]:
    """Replace the KRL at ``path`` with ``data``, only if ``data`` is a valid KRL
    whose version is not older than the installed one; return (new, old) versions.

    On any failure the installed file is left exactly as it was: sshd refuses
    every login when its RevokedKeys file is unreadable, so a host must keep
    its last good KRL rather than install a bad one.
    """
    from ca.sshcert.krl import KRLError, parse_krl

    try:
        new = parse_krl(data)
    except KRLError as e:
        raise CAError(f"the fetched KRL is not valid ({e}); kept {path}") from None
    path = Path(path)
    old_version = None
    try:
        old_version = parse_krl(path.read_bytes()).version
    except FileNotFoundError:
        pass
    except (OSError, KRLError):
        old_version = None  # an unreadable installed KRL is replaced by a valid one
    if old_version is not None and new.version < old_version:
        raise CAError(f"the fetched KRL has version {new.version}, older than the installed {old_version}; "
                      f"kept {path}")
    write_installed(path, data, 0o644)
    return new.version, old_version


def write_installed(path: Path, data: bytes | str, mode: int) -> None:
    """``write_atomic``, with an error that names ``path`` (not the temp file beside it)."""
    from ca.files import write_atomic

    try:
        write_atomic(path, data, mode)
    except OSError as e:
        where = path.parent if isinstance(e, FileNotFoundError) or not path.parent.is_dir() else path
        raise CAError(f"cannot write {path}: {e.strerror or e}"
                      + (f" (is there a directory {where}?)" if where != path else "")) from None
