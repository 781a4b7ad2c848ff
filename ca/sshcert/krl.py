"""OpenSSH Key Revocation Lists (KRL), format 1: build, parse, describe.

The format is OpenSSH's ``PROTOCOL.krl``::

    "SSHKRL\\n\\0"  uint32 format_version (1)  uint64 krl_version
    uint64 generated_date  uint64 flags  string reserved  string comment
    then sections: byte section_type, string section_data

Certificate sections (type 1) name a CA key (or none: a "wildcard" section
that applies to certificates from any CA) and revoke that CA's certificates
by serial -- as a list (0x20), a range (0x21) or a bitmap (0x22) -- and by key
ID (0x23). Key sections revoke plain keys, and with them every certificate
*for* that key and every certificate *signed by* that key when it is a CA key
(sshd checks a certificate's CA key against the KRL too): explicit key
blobs (type 2), SHA-1 (3) or SHA-256 (5) hashes of the key blob.

Facts from OpenSSH's ``krl.c`` this module keeps (OpenSSH 9.2 tested):

* Serial 0 is never revocable: a list, range or bitmap naming serial 0 makes
  the *whole* KRL unreadable (``ssh_krl_revoke_cert_by_serial_range`` refuses
  ``lo == 0``), and an unreadable RevokedKeys file makes sshd refuse every
  login. :func:`build_krl` refuses serial 0; :func:`parse_krl` rejects it.
* A bitmap is read as an SSH mpint, and OpenSSH refuses mpints longer than
  2048 bytes (``SSHBUF_MAX_BIGNUM``): a bitmap may span at most 16384
  serials. ``ssh-keygen -k`` itself ignores that limit and writes KRLs it
  cannot read back ("bignum is too large") for dense sets spanning more than
  16384 serials; :func:`build_krl` never does.
* No signature section: signed KRLs were never checked by sshd, and OpenSSH
  9.4 dropped support for them; :func:`build_krl` writes none and
  :func:`parse_krl` refuses one.

:func:`build_krl` picks, for each CA, the encoding of its serials with the
fewest bytes (an exact dynamic programme over the runs of consecutive
serials; ``ssh-keygen`` uses a greedy estimate of the same costs, so our KRLs
are never larger than its for the same serials).

:func:`parse_krl` is strict: anything OpenSSH would refuse, and a little
more (unknown sections, non-UTF-8 key IDs, unsorted hashes, empty sections),
raises :class:`KRLError`, a :class:`ValueError`. A host that fetched a KRL
uses it to decide whether to install it, so that it never replaces a good
KRL with one sshd cannot read.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from ca.sshcert.certificates import Certificate, fingerprint
from ca.sshcert.wire import Reader, WireError, uint32, uint64
from ca.sshcert.wire import string as wire_string

KRL_MAGIC = b"SSHKRL\n\x00"
KRL_FORMAT_VERSION = 1

SECTION_CERTIFICATES = 1
SECTION_EXPLICIT_KEY = 2
SECTION_FINGERPRINT_SHA1 = 3
SECTION_SIGNATURE = 4
SECTION_FINGERPRINT_SHA256 = 5

CERT_SERIAL_LIST = 0x20
CERT_SERIAL_RANGE = 0x21
CERT_SERIAL_BITMAP = 0x22
CERT_KEY_ID = 0x23

MAX_SERIAL = 2**64 - 1
# OpenSSH reads a bitmap as an mpint of at most SSHBUF_MAX_BIGNUM (2048) bytes.
MAX_BITMAP_BITS = 2048 * 8

# Resource limits for parse_krl (a fetched KRL is untrusted input until it parses):
# far beyond any KRL this CA writes, well below what would exhaust a host's memory.
MAX_KRL_BYTES = 16 * 1024 * 1024
MAX_KRL_ENTRIES = 1_000_000  # serial runs + key IDs + keys + hashes

WILDCARD_CA = b""  # the CA key of a certificate section that applies to every CA

# Sizes in bytes of the serial subsections (byte type + uint32 length + body).
_RANGE_COST = 1 + 4 + 8 + 8
_LIST_HEADER = 1 + 4
_BITMAP_HEADER = 1 + 4 + 8 + 4  # + the mpint bytes

# Plain public key types and their fields after the type name (PROTOCOL.certkeys, PROTOCOL.u2f).
# DSA is left out on purpose: the CA never certifies or trusts DSA keys.
_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("ed25519",),
    "ssh-rsa": ("rsa",),
    "ecdsa-sha2-nistp256": ("ec:nistp256",),
    "ecdsa-sha2-nistp384": ("ec:nistp384",),
    "ecdsa-sha2-nistp521": ("ec:nistp521",),
    "sk-ssh-ed25519@openssh.com": ("ed25519", "string"),
    "sk-ecdsa-sha2-nistp256@openssh.com": ("ec:nistp256", "string"),
}
_CURVES = {"nistp256": ec.SECP256R1(), "nistp384": ec.SECP384R1(), "nistp521": ec.SECP521R1()}
# OpenSSH refuses RSA keys under SSH_RSA_MINIMUM_MODULUS_SIZE and mpints over SSHBUF_MAX_BIGNUM.
_RSA_MIN_BITS, _RSA_MAX_BITS = 1024, 16384


class KRLError(WireError):
    """A KRL that is malformed, or that OpenSSH would refuse."""


def _check_serial_range(lo: int, hi: int) -> None:
    if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or isinstance(hi, bool):
        raise KRLError("serials must be integers")
    if lo < 1 or hi > MAX_SERIAL or lo > hi:
        raise KRLError(f"bad serial range {lo}-{hi}: serials run from 1 to 2^64-1 (serial 0 cannot be revoked)")


def _normalise(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sort ranges and merge the ones that overlap or touch."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


@dataclass(frozen=True)
class CertRevocations:
    """What one certificate section revokes: serial ranges (inclusive) and key IDs.

    ``ranges`` is kept sorted, merged and validated (1 <= lo <= hi <= 2^64-1),
    so two values revoking the same certificates compare equal.
    """

    ranges: tuple[tuple[int, int], ...] = ()
    key_ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        ranges = tuple(self.ranges)
        for r in ranges:
            if not isinstance(r, tuple) or len(r) != 2:
                raise KRLError("a serial range is a (lo, hi) pair")
            _check_serial_range(*r)
        key_ids = frozenset(self.key_ids)
        for k in key_ids:
            if not isinstance(k, str) or "\x00" in k:
                raise KRLError("a key ID is text without NUL characters")
        object.__setattr__(self, "ranges", _normalise(ranges))
        object.__setattr__(self, "key_ids", key_ids)

    @classmethod
    def of(cls, serials: Iterable[int] = (), *, ranges: Iterable[tuple[int, int]] = (),
           key_ids: Iterable[str] = ()) -> CertRevocations:
        """From single serials, ``(lo, hi)`` ranges and key IDs."""
        return cls(tuple((s, s) for s in serials) + tuple(ranges), frozenset(key_ids))

    def revokes_serial(self, serial: int) -> bool:
        """True if ``serial`` is in one of the ranges (serial 0 never is, as in OpenSSH)."""
        if serial == 0:
            return False
        i = bisect.bisect_right(self.ranges, (serial, MAX_SERIAL + 1)) - 1
        return i >= 0 and self.ranges[i][0] <= serial <= self.ranges[i][1]

    @property
    def serial_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges or self.key_ids)


@dataclass(frozen=True, eq=True)
class KRLContents:
    """A parsed KRL. ``certs`` maps a CA public key blob (``b""`` for the
    wildcard section) to what is revoked for that CA."""

    version: int
    generated: int
    comment: str
    certs: Mapping[bytes, CertRevocations] = field(default_factory=dict)
    keys: frozenset[bytes] = frozenset()
    sha1s: frozenset[bytes] = frozenset()
    sha256s: frozenset[bytes] = frozenset()
    flags: int = 0

    __hash__ = None  # type: ignore[assignment]  # holds a dict

    def key_revoked(self, key_blob: bytes) -> bool:
        """True if the plain key ``key_blob`` is revoked (explicitly or by hash)."""
        return (key_blob in self.keys or hashlib.sha256(key_blob).digest() in self.sha256s
                or hashlib.sha1(key_blob).digest() in self.sha1s)

    def is_revoked(self, cert: Certificate) -> bool:
        """Would sshd refuse ``cert`` under this KRL? The same checks as
        OpenSSH's ``ssh_krl_check_key``: the certified key, then the section of
        the signing CA and the wildcard section (key ID, then non-zero serial),
        then the CA key itself."""
        if self.key_revoked(cert.public_key_blob) or self.key_revoked(cert.signature_key):
            return True
        for ca in (cert.signature_key, WILDCARD_CA):
            rc = self.certs.get(ca)
            if rc and (cert.key_id in rc.key_ids or rc.revokes_serial(cert.serial)):
                return True
        return False


# --------------------------------------------------------------------------
# Building


def _bitmap_mpint_len(span: int) -> int:
    """Bytes of the mpint holding a bitmap whose top bit is ``span - 1`` (bit 0 always set)."""
    return span // 8 + 1  # == ceil(span / 8), plus a zero byte when the top bit lands on bit 7


def choose_serial_encoding(ranges: tuple[tuple[int, int], ...]) -> list[tuple[str, int, int]]:
    """Split normalised serial ranges into the cheapest subsections.

    Returns ``[(kind, first_run, end_run), ...]`` over the runs of
    ``ranges``, with ``kind`` one of ``"list"`` (every listed serial goes
    into one shared list subsection: 8 bytes each, 5 bytes of header once),
    ``"range"`` (21 bytes, one run) or ``"bitmap"`` (runs first..end-1, 17
    bytes plus the mpint, spanning at most :data:`MAX_BITMAP_BITS`).

    An exact dynamic programme. With ``lo_j = 8q + r`` and the end of the
    bitmap ``A = 8Q + R``, a bitmap over runs j..i-1 costs
    ``best[j] - q + Q + 18 - (r > R)``, so a sliding-window minimum of
    ``best[j] - q`` per residue ``r`` finds the best start in O(8) per run.
    """
    n = len(ranges)
    inf = 1 << 256  # integers throughout: serials near 2^64 do not fit a float exactly
    # best[u][i]: fewest bytes for runs 0..i-1, u = whether the list subsection is already paid for.
    best = [[0] + [inf] * n, [inf] * (n + 1)]
    back: list[list[tuple[str, int, int] | None]] = [[None] * (n + 1), [None] * (n + 1)]
    # Per (u, residue): monotone deque of candidate bitmap starts j (increasing j, increasing key).
    windows = [[[] for _ in range(8)] for _ in range(2)]
    heads = [[0] * 8 for _ in range(2)]
    for i in range(1, n + 1):
        lo, hi = ranges[i - 1]
        # The run i-1 may start a bitmap.
        for u in (0, 1):
            if best[u][i - 1] < inf:
                key = best[u][i - 1] - lo // 8
                dq, h = windows[u][lo % 8], heads[u][lo % 8]
                while len(dq) > h and dq[-1][0] >= key:
                    dq.pop()
                dq.append((key, i - 1))
        count = hi - lo + 1
        end = hi + 1
        for u in (0, 1):
            # A range subsection for this run.
            if best[u][i - 1] + _RANGE_COST < best[u][i]:
                best[u][i] = best[u][i - 1] + _RANGE_COST
                back[u][i] = ("range", i - 1, u)
            # Into the list (never worth it for 3 serials or more: a range is 21 bytes).
            if count <= 2:
                c = best[u][i - 1] + 8 * count + (0 if u else _LIST_HEADER)
                if c < best[1][i]:
                    best[1][i] = c
                    back[1][i] = ("list", i - 1, u)
            # A bitmap from some run j to this one.
            big_q, big_r = divmod(end, 8)
            for r in range(8):
                dq = windows[u][r]
                h = heads[u][r]
                while h < len(dq) and end - ranges[dq[h][1]][0] > MAX_BITMAP_BITS:
                    h += 1
                heads[u][r] = h
                if h < len(dq):
                    key, j = dq[h]
                    c = key + big_q + _BITMAP_HEADER + 1 - (1 if r > big_r else 0)
                    if c < best[u][i]:
                        best[u][i] = c
                        back[u][i] = ("bitmap", j, u)
    # Walk back from the cheaper end state.
    u = 0 if best[0][n] <= best[1][n] else 1
    out: list[tuple[str, int, int]] = []
    i = n
    while i > 0:
        kind, j, prev_u = back[u][i]  # type: ignore[misc]
        out.append((kind, j, i))
        i, u = j, prev_u
    out.reverse()
    return out


def _serial_subsections(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, bytes]]:
    plan = choose_serial_encoding(ranges)
    subs: list[tuple[int, int, bytes]] = []  # (lowest serial, type, body) to sort by
    listed: list[int] = []
    for kind, j, i in plan:
        if kind == "list":
            for lo, hi in ranges[j:i]:
                listed.extend(range(lo, hi + 1))
        elif kind == "range":
            lo, hi = ranges[j]
            subs.append((lo, CERT_SERIAL_RANGE, uint64(lo) + uint64(hi)))
        else:
            base = ranges[j][0]
            bits = 0
            for lo, hi in ranges[j:i]:
                bits |= ((1 << (hi - lo + 1)) - 1) << (lo - base)
            # An mpint: minimal big-endian, with a leading 0x00 only when the top bit is set.
            raw = bits.to_bytes(_bitmap_mpint_len(bits.bit_length()), "big")
            subs.append((base, CERT_SERIAL_BITMAP, uint64(base) + wire_string(raw)))
    if listed:
        subs.append((min(listed), CERT_SERIAL_LIST, b"".join(uint64(s) for s in sorted(listed))))
    subs.sort()
    return [(t, body) for _, t, body in subs]


def _section(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + wire_string(body)


def build_krl(
    version: int,
    *,
    certs: Mapping[bytes, CertRevocations],
    keys: Iterable[bytes] = (),
    sha256s: Iterable[bytes] = (),
    generated: int,
    comment: str = "",
) -> bytes:
    """A binary KRL (format 1) revoking ``certs`` (CA key blob, or ``b""`` for
    every CA -> serials and key IDs), plain ``keys`` (public key blobs; a CA
    key here revokes everything it signed) and ``sha256s`` (SHA-256 digests of
    key blobs). No signature section. The output depends only on the
    arguments: same revocations, same bytes.
    """
    for name, n in (("version", version), ("generated", generated)):
        if not isinstance(n, int) or not 0 <= n <= MAX_SERIAL:
            raise KRLError(f"{name} must be an integer from 0 to 2^64-1")
    if "\x00" in comment:
        raise KRLError("the comment cannot contain NUL")
    out = [KRL_MAGIC, uint32(KRL_FORMAT_VERSION), uint64(version), uint64(generated), uint64(0),
           wire_string(b""), wire_string(comment)]
    for ca in sorted(certs):
        rc = certs[ca]
        if not isinstance(rc, CertRevocations):
            raise KRLError("certs maps a CA key blob to a CertRevocations")
        if ca != WILDCARD_CA:
            _check_key_blob(bytes(ca), "CA key")
        if not rc:
            continue
        body = [wire_string(bytes(ca)), wire_string(b"")]
        for t, sub in _serial_subsections(rc.ranges):
            body.append(_section(t, sub))
        if rc.key_ids:
            body.append(_section(CERT_KEY_ID, b"".join(wire_string(k) for k in sorted(rc.key_ids))))
        out.append(_section(SECTION_CERTIFICATES, b"".join(body)))
    key_blobs = sorted(set(bytes(k) for k in keys))
    for k in key_blobs:
        _check_key_blob(k, "revoked key")
    if key_blobs:
        out.append(_section(SECTION_EXPLICIT_KEY, b"".join(wire_string(k) for k in key_blobs)))
    # PROTOCOL.krl: hashes "must appear in numeric order, treating each hash as a big-endian integer".
    digests = sorted(set(bytes(d) for d in sha256s))
    for d in digests:
        if len(d) != 32:
            raise KRLError("a SHA-256 digest is 32 bytes")
    if digests:
        out.append(_section(SECTION_FINGERPRINT_SHA256, b"".join(wire_string(d) for d in digests)))
    return b"".join(out)


def sha256_of_fingerprint(fp: str) -> bytes:
    """The 32-byte digest inside an OpenSSH ``SHA256:...`` fingerprint."""
    if not isinstance(fp, str) or not fp.startswith("SHA256:") or len(fp) != 50:
        raise KRLError(f"not a SHA256 fingerprint: {str(fp)[:60]!r}")
    try:
        raw = base64.b64decode(fp[7:] + "=", validate=True)
    except ValueError:
        raise KRLError(f"not a SHA256 fingerprint: {fp!r}") from None
    if len(raw) != 32 or fingerprint_of_digest(raw) != fp:
        raise KRLError(f"not a SHA256 fingerprint: {fp!r}")
    return raw


def fingerprint_of_digest(digest: bytes) -> str:
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# --------------------------------------------------------------------------
# Parsing


def _check_key_blob(blob: bytes, what: str) -> str:
    """Check that ``blob`` is a plain public key that OpenSSH's ``sshkey_from_blob``
    would load (known type, Ed25519 length, EC point on the curve and
    uncompressed, RSA modulus size, no trailing bytes); return its type."""
    try:
        r = Reader(blob)
        ktype = r.text()
        fields = _KEY_FIELDS.get(ktype)
        if fields is None:
            raise KRLError(f"{what}: unsupported key type {ktype[:64]!r}")
        for f in fields:
            if f == "ed25519":
                if len(r.string()) != 32:
                    raise KRLError(f"{what}: an Ed25519 key is 32 bytes")
            elif f == "rsa":
                r.mpint()  # e
                if not _RSA_MIN_BITS <= r.mpint().bit_length() <= _RSA_MAX_BITS:
                    raise KRLError(f"{what}: RSA modulus size out of range")
            elif f.startswith("ec:"):
                if r.string() != f[3:].encode():
                    raise KRLError(f"{what}: curve does not match the key type")
                point = r.string()
                if not point or point[0] != 4:
                    raise KRLError(f"{what}: EC point is not uncompressed")
                try:
                    ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[f[3:]], point)
                except ValueError:
                    raise KRLError(f"{what}: EC point is not on the curve") from None
            else:
                r.string()
        r.end()
    except KRLError:
        raise
    except WireError as e:
        raise KRLError(f"{what}: malformed key: {e}") from None
    return ktype


def _bitmap_runs(offset: int, raw: bytes) -> list[tuple[int, int]]:
    """The serial runs a bitmap subsection revokes, checked as OpenSSH does."""
    if raw and raw[0] & 0x80:
        raise KRLError("negative bitmap")
    if len(raw) > MAX_BITMAP_BITS // 8 + 1 or (len(raw) == MAX_BITMAP_BITS // 8 + 1 and raw[0] != 0):
        raise KRLError("bitmap longer than OpenSSH accepts (16384 bits)")
    bits = int.from_bytes(raw, "big")
    runs: list[tuple[int, int]] = []
    pos = 0
    while bits:
        low = (bits & -bits).bit_length() - 1  # index of the lowest set bit
        bits >>= low
        pos += low
        ones = (~bits & (bits + 1)).bit_length() - 1  # length of the run of ones at the bottom
        lo, hi = offset + pos, offset + pos + ones - 1
        if hi > MAX_SERIAL:
            raise KRLError("bitmap runs past serial 2^64-1")
        if lo == 0:
            raise KRLError("bitmap revokes serial 0 (OpenSSH refuses the whole KRL)")
        runs.append((lo, hi))
        bits >>= ones
        pos += ones
    return runs


class _Budget:
    """Counts parsed entries, so that a hostile KRL cannot exhaust memory."""

    def __init__(self, limit: int):
        self.left = limit

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise KRLError(f"KRL has more than {MAX_KRL_ENTRIES} entries")


def _parse_cert_section(data: bytes, certs: dict[bytes, tuple[list, set]], budget: _Budget) -> None:
    r = Reader(data)
    ca = r.string()
    r.string()  # reserved: ignored, as OpenSSH does
    if ca != WILDCARD_CA:
        _check_key_blob(ca, "CA key")  # a known plain key type: never a certificate
    ranges, key_ids = certs.setdefault(ca, ([], set()))
    while r.remaining():
        t = r.byte()
        sub = Reader(r.string())
        before = len(ranges) + len(key_ids)
        if t == CERT_SERIAL_LIST:
            if not sub.remaining() or sub.remaining() % 8:
                raise KRLError("serial list subsection is empty or not a whole number of serials")
            while sub.remaining():
                s = sub.uint64()
                if s == 0:
                    raise KRLError("serial list revokes serial 0 (OpenSSH refuses the whole KRL)")
                ranges.append((s, s))
        elif t == CERT_SERIAL_RANGE:
            lo, hi = sub.uint64(), sub.uint64()
            if lo == 0 or lo > hi:
                raise KRLError(f"bad serial range {lo}-{hi}")
            ranges.append((lo, hi))
        elif t == CERT_SERIAL_BITMAP:
            offset = sub.uint64()
            ranges.extend(_bitmap_runs(offset, sub.string()))
        elif t == CERT_KEY_ID:
            if not sub.remaining():
                raise KRLError("key ID subsection is empty")
            while sub.remaining():
                key_id = sub.text()
                if "\x00" in key_id:
                    raise KRLError("key ID contains NUL")
                key_ids.add(key_id)
        else:
            raise KRLError(f"unsupported certificate subsection type 0x{t:02x}")
        if sub.remaining():
            raise KRLError(f"certificate subsection 0x{t:02x} has {sub.remaining()} trailing bytes")
        budget.spend(len(ranges) + len(key_ids) - before)


def _parse_blobs(data: bytes, size: int | None, what: str, ordered: bool) -> list[bytes]:
    r = Reader(data)
    out: list[bytes] = []
    if not r.remaining():
        raise KRLError(f"empty {what} section")
    while r.remaining():
        blob = r.string()
        if size is not None and len(blob) != size:
            raise KRLError(f"{what} entry is {len(blob)} bytes, not {size}")
        if ordered and out and blob <= out[-1]:
            raise KRLError(f"{what} entries are not in numeric order")
        out.append(blob)
    return out


def parse_krl(data: bytes) -> KRLContents:
    """Parse a binary KRL strictly; raise :class:`KRLError` on anything malformed.

    Accepts what OpenSSH's ``ssh_krl_from_blob`` accepts, minus signature
    sections, unknown section types, empty sections, non-UTF-8 comments and
    key IDs, and unsorted hash sections.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise KRLError("a KRL is bytes")
    if len(data) > MAX_KRL_BYTES:
        raise KRLError(f"KRL is larger than {MAX_KRL_BYTES} bytes")
    try:
        r = Reader(bytes(data))
        if r.remaining() < len(KRL_MAGIC) or r.raw(len(KRL_MAGIC)) != KRL_MAGIC:
            raise KRLError("not a KRL (bad magic)")
        fmt = r.uint32()
        if fmt != KRL_FORMAT_VERSION:
            raise KRLError(f"unsupported KRL format version {fmt}")
        version, generated, flags = r.uint64(), r.uint64(), r.uint64()
        r.string()  # reserved: ignored, as OpenSSH does
        comment = r.text()
        if "\x00" in comment:
            raise KRLError("comment contains NUL")
        certs: dict[bytes, tuple[list, set]] = {}
        budget = _Budget(MAX_KRL_ENTRIES)
        keys: set[bytes] = set()
        sha1s: set[bytes] = set()
        sha256s: set[bytes] = set()
        while r.remaining():
            t = r.byte()
            if t == SECTION_SIGNATURE:
                raise KRLError("signed KRL: signature sections are not supported (OpenSSH 9.4 removed them)")
            body = r.string()
            if t == SECTION_CERTIFICATES:
                _parse_cert_section(body, certs, budget)
            elif t == SECTION_EXPLICIT_KEY:
                blobs = _parse_blobs(body, None, "explicit key", False)
                budget.spend(len(blobs))
                for blob in blobs:
                    _check_key_blob(blob, "revoked key")
                    keys.add(blob)
            elif t == SECTION_FINGERPRINT_SHA1:
                blobs = _parse_blobs(body, 20, "SHA1 fingerprint", True)
                budget.spend(len(blobs))
                sha1s.update(blobs)
            elif t == SECTION_FINGERPRINT_SHA256:
                blobs = _parse_blobs(body, 32, "SHA256 fingerprint", True)
                budget.spend(len(blobs))
                sha256s.update(blobs)
            else:
                raise KRLError(f"unsupported KRL section type {t}")
    except KRLError:
        raise
    except WireError as e:
        raise KRLError(f"malformed KRL: {e}") from None
    return KRLContents(
        version=version, generated=generated, comment=comment, flags=flags,
        certs={ca: CertRevocations(tuple(rs), frozenset(ids)) for ca, (rs, ids) in certs.items()},
        keys=frozenset(keys), sha1s=frozenset(sha1s), sha256s=frozenset(sha256s),
    )


# --------------------------------------------------------------------------
# Describing


def _when(ts: int) -> str:
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{ts} (not a date)"


def _key_line(blob: bytes) -> str:
    return f"{Reader(blob).text()} {base64.b64encode(blob).decode()}"


def describe(contents: KRLContents, names: Mapping[bytes, str] | None = None) -> str:
    """What a KRL revokes, as text in ``ssh-keygen -k`` spec syntax (``#`` comments,
    ``serial:``, ``id:``, ``key:``, ``hash:`` lines), for ``iast-ca krl --text``.

    ``names`` optionally labels key blobs (e.g. our CA keys) in the comments.
    """
    names = names or {}
    lines = [f"# KRL version {contents.version}, generated {_when(contents.generated)}"]
    if contents.comment:
        lines.append(f"# comment: {contents.comment!r}"[:200])
    n_serials = sum(rc.serial_count for rc in contents.certs.values())
    n_ids = sum(len(rc.key_ids) for rc in contents.certs.values())
    lines.append(f"# {n_serials} certificate serial(s), {n_ids} key ID(s), "
                 f"{len(contents.keys) + len(contents.sha256s) + len(contents.sha1s)} key(s)")
    if contents.keys or contents.sha256s or contents.sha1s:
        lines += ["", "# Revoked keys: every certificate for them, and every certificate they signed"]
        for blob in sorted(contents.keys):
            label = names.get(blob)
            lines.append(f"key: {_key_line(blob)}")
            lines.append(f"#   {fingerprint(blob)}" + (f"  {label}" if label else ""))
        for d in sorted(contents.sha256s):
            lines.append(f"hash: {fingerprint_of_digest(d)}")
        for d in sorted(contents.sha1s):
            lines.append(f"# sha1 hash: {d.hex()}")
    for ca in sorted(contents.certs):
        rc = contents.certs[ca]
        lines.append("")
        if ca == WILDCARD_CA:
            lines.append("# Certificates from any CA")
        else:
            label = names.get(ca)
            lines.append(f"# Certificates signed by {Reader(ca).text()} {fingerprint(ca)}"
                         + (f"  {label}" if label else ""))
        for lo, hi in rc.ranges:
            lines.append(f"serial: {lo}" if lo == hi else f"serial: {lo}-{hi}")
        for key_id in sorted(rc.key_ids):
            printable = key_id.isprintable()
            lines.append(f"id: {key_id}" if printable else f"# id (shown quoted): {key_id!r}")
    return "\n".join(lines) + "\n"
