"""The client's files: the key and certificate pair (0600, atomic) and a host's installed KRL.

Without ssh-agent, ``login`` writes ``id_ed25519`` and ``id_ed25519-cert.pub``
into an output directory (default ``~/.ssh/iast-ssh``, created 0700);
``install_krl`` replaces a host's RevokedKeys file only with a valid, newer KRL.
"""

from __future__ import annotations

import os
from pathlib import Path

from ca.client.results import HeldCertificate, held_certificate
from ca.errors import CAError

__all__ = ["CERT_FILE", "KEY_FILE", "check_out_dir", "default_out_dir", "file_held", "install_krl", "write_files"]


KEY_FILE = "id_ed25519"
CERT_FILE = KEY_FILE + "-cert.pub"


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
                      f"(--out DIR), or 'sudo chown {os.getuid()} {out_dir}'")
    if st.st_mode & 0o022:
        raise CAError(f"{out_dir} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                      f"'chmod go-w {out_dir}' (or chmod 700), then try again")


def write_files(out_dir: Path, key, certificate: str, key_id: str) -> tuple[Path, Path]:
    """``OUT/id_ed25519`` and ``OUT/id_ed25519-cert.pub``, 0600 and atomic; ``OUT`` is created 0700
    (an existing ``OUT`` must pass :func:`check_out_dir`)."""
    from ca.files import write_atomic

    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if not out_dir.exists():
        out_dir.mkdir(parents=True, mode=0o700)
        os.chmod(out_dir, 0o700)  # mkdir's mode is filtered by the umask
    key.set_comment(key_id)
    key_path, cert_path = out_dir / KEY_FILE, out_dir / CERT_FILE
    kind, blob = certificate.split()[:2]
    write_atomic(cert_path, f"{kind} {blob} {key_id}\n", 0o600)
    write_atomic(key_path, key.export_private_key("openssh"), 0o600)
    return key_path, cert_path


def file_held(out_dir: Path) -> list[HeldCertificate]:
    """The iast certificate in ``out_dir``'s certificate file, if there is one (expired or not)."""
    import base64
    import binascii

    cert_path = out_dir / CERT_FILE
    try:
        fields = cert_path.read_text().split()
        blob = base64.b64decode(fields[1], validate=True)
    except (OSError, IndexError, binascii.Error, UnicodeDecodeError):
        return []
    held = held_certificate("files", blob, path=cert_path)
    return [held] if held else []


def install_krl(data: bytes, path: str | os.PathLike) -> tuple[int, int | None]:
    """Replace the KRL at ``path`` with ``data``, only if ``data`` is a valid KRL
    whose version is not older than the installed one; return (new, old) versions.

    On any failure the installed file is left exactly as it was: sshd refuses
    every login when its RevokedKeys file is unreadable, so a host must keep
    its last good KRL rather than install a bad one.
    """
    from ca.files import write_atomic
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
    write_atomic(path, data, 0o644)
    return new.version, old_version
