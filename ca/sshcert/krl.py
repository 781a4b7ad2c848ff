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
are never larger than its for the same serials -- save where its bitmaps
pass the 16384-bit limit above and it cannot read them back). The programme
does O(1) work per run (one monotone queue of bitmap starts, see
:func:`_cheapest`) and usually one pass; :meth:`CertRevocations.of` finds the
runs of sorted serials, and :func:`_bitmap` writes a bitmap's digits, with
C-level loops (``map``, ``itertools.compress``, ``str.join``,
``int(digits, 2)``): 1M serials in about 1 s, within 2x ``ssh-keygen -k``.

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
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress, count, islice, repeat
from operator import itemgetter, mul, sub

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


class CertRevocations:
    """What one certificate section revokes: serial ranges (inclusive) and key IDs.

    ``ranges`` is kept sorted, merged and validated (1 <= lo <= hi <= 2^64-1),
    so two values revoking the same certificates compare equal. Immutable.

    Held as two lists (the runs' first and last serials) as well as, when asked
    for, the tuple of ``(lo, hi)`` pairs: :meth:`of` and :func:`build_krl` never
    need the million pairs of a large KRL, and building them is a third of its time.
    """

    __slots__ = ("key_ids", "_ranges", "_los", "_his")

    key_ids: frozenset[str]

    def __init__(self, ranges: Iterable[tuple[int, int]] = (), key_ids: Iterable[str] = frozenset()) -> None:
        ranges = tuple(ranges)
        for r in ranges:
            if not isinstance(r, tuple) or len(r) != 2:
                raise KRLError("a serial range is a (lo, hi) pair")
            _check_serial_range(*r)
        self._set(_normalise(ranges), None, None, key_ids)

    def _set(self, ranges: tuple[tuple[int, int], ...] | None, los: list[int] | None, his: list[int] | None,
             key_ids: Iterable[str]) -> None:
        key_ids = frozenset(key_ids)
        for k in key_ids:
            if not isinstance(k, str) or "\x00" in k:
                raise KRLError("a key ID is text without NUL characters")
        object.__setattr__(self, "_ranges", ranges)
        object.__setattr__(self, "_los", los)
        object.__setattr__(self, "_his", his)
        object.__setattr__(self, "key_ids", key_ids)

    @classmethod
    def of(cls, serials: Iterable[int] = (), *, ranges: Iterable[tuple[int, int]] = (),
           key_ids: Iterable[str] = ()) -> CertRevocations:
        """From single serials, ``(lo, hi)`` ranges and key IDs."""
        ranges = tuple(ranges)
        serials = serials if isinstance(serials, list) else list(serials)
        if ranges or not serials or not set(map(type, serials)) <= {int}:
            # The general path: every range checked one by one (bools and int subclasses too).
            return cls(tuple((s, s) for s in serials) + ranges, key_ids)
        # The fast path for plain int serials (a CA's revocation list): sort, check the
        # bounds once, then find the runs of consecutive serials with C-level maps.
        steps = list(map(sub, islice(serials, 1, None), serials))
        if steps and min(steps) < 1:  # not sorted, or duplicates
            serials = sorted(set(serials))
            steps = list(map(sub, islice(serials, 1, None), serials))
        if serials[0] < 1 or serials[-1] > MAX_SERIAL:
            bad = serials[0] if serials[0] < 1 else serials[-1]
            _check_serial_range(bad, bad)
        breaks = list(map((1).__ne__, steps))  # breaks[i]: a run ends at serials[i]
        los = [serials[0]]
        los += compress(islice(serials, 1, None), breaks)
        his = list(compress(serials, breaks))
        his.append(serials[-1])
        self = object.__new__(cls)
        self._set(None, los, his, key_ids)
        return self

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        if self._ranges is None:
            object.__setattr__(self, "_ranges", tuple(zip(self._los, self._his)))
        return self._ranges  # type: ignore[return-value]

    def bounds(self) -> tuple[list[int], list[int]]:
        """The first and the last serial of every run, as two lists (do not change them)."""
        if self._los is None:
            object.__setattr__(self, "_los", list(map(itemgetter(0), self._ranges)))
            object.__setattr__(self, "_his", list(map(itemgetter(1), self._ranges)))
        return self._los, self._his  # type: ignore[return-value]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CertRevocations is immutable: cannot set {name!r}")

    __delattr__ = __setattr__  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CertRevocations):
            return NotImplemented
        return self.key_ids == other.key_ids and self.bounds() == other.bounds()

    def __hash__(self) -> int:
        return hash((self.ranges, self.key_ids))

    def __repr__(self) -> str:
        return f"CertRevocations(ranges={self.ranges!r}, key_ids={self.key_ids!r})"

    def __reduce__(self):  # pickling and copy: through the validating constructor
        return (CertRevocations, (self.ranges, self.key_ids))

    def revokes_serial(self, serial: int) -> bool:
        """True if ``serial`` is in one of the ranges (serial 0 never is, as in OpenSSH)."""
        if serial == 0:
            return False
        los, his = self.bounds()
        i = bisect.bisect_right(los, serial) - 1
        return i >= 0 and serial <= his[i]

    @property
    def serial_count(self) -> int:
        los, his = self.bounds()
        return sum(his) - sum(los) + len(los)

    def __bool__(self) -> bool:
        return bool(self.key_ids) or bool(self._los if self._ranges is None else self._ranges)


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


_RANGE, _LIST = -1, -2  # choices in _cheapest besides "a bitmap from run j" (j >= 0)


def _cheapest(los: list[int], his: list[int], lists: bool) -> tuple[int, list[int]]:
    """The fewest bytes for the runs ``los[i]..his[i]``, and the choice made for each run.

    ``choice[i]`` says how the cheapest encoding of runs 0..i ends: ``_RANGE``
    (run i is a range subsection), ``_LIST`` (run i goes into the list; only
    when ``lists``, and the list's 5-byte header is *not* counted) or ``j >= 0``
    (runs j..i are one bitmap).

    A bitmap over runs j..i costs ``best[j] + 18 + (end - lo_j) // 8`` (``best[j]``
    the cost of runs 0..j-1, ``end = hi_i + 1``), which is
    ``(K_j + end) // 8 + 18`` with ``K_j = 8 * best[j] - lo_j``: floor is
    monotone, so the best start is the one with the smallest ``K_j`` among those
    at most :data:`MAX_BITMAP_BITS` back, kept in a monotone queue. O(1) per run.
    """
    limit = MAX_BITMAP_BITS
    keys: list[int] = []  # K_j per run j
    queue: deque[int] = deque()  # candidate bitmap starts: lo increasing, K increasing
    choice: list[int] = []
    best = 0  # cost of the runs before the current one
    for i, lo, hi in zip(count(), los, his):
        k = 8 * best - lo
        keys.append(k)
        end = hi + 1
        if end - lo > limit:  # too long for any bitmap: no bitmap can reach over it either
            queue.clear()
            best += _RANGE_COST
            choice.append(_RANGE)
            continue
        while queue and keys[queue[-1]] >= k:
            queue.pop()
        queue.append(i)
        start = end - limit
        while los[queue[0]] < start:
            queue.popleft()
        how = queue[0]
        cost = (keys[how] + end) // 8 + _BITMAP_HEADER + 1
        if best + _RANGE_COST < cost:
            cost, how = best + _RANGE_COST, _RANGE
        # Into the list (never worth it for 3 serials or more: a range is 21 bytes).
        if lists and hi - lo < 2 and best + 8 * (end - lo) < cost:
            cost, how = best + 8 * (end - lo), _LIST
        choice.append(how)
        best = cost
    return best, choice


def choose_serial_encoding(ranges: tuple[tuple[int, int], ...]) -> list[tuple[str, int, int]]:
    """Split normalised serial ranges into the cheapest subsections.

    Returns ``[(kind, first_run, end_run), ...]`` over the runs of
    ``ranges``, with ``kind`` one of ``"list"`` (every listed serial goes
    into one shared list subsection: 8 bytes each, 5 bytes of header once),
    ``"range"`` (21 bytes, one run) or ``"bitmap"`` (runs first..end-1, 17
    bytes plus the mpint, spanning at most :data:`MAX_BITMAP_BITS`).

    Exact: the list header is paid once, so the cheapest encoding is the
    cheaper of the cheapest without a list and the cheapest with a free list
    header plus 5. When the latter uses no list the two are the same and one
    pass of :func:`_cheapest` is enough (the common case).
    """
    return _plan(list(map(itemgetter(0), ranges)), list(map(itemgetter(1), ranges)))


def _plan(los: list[int], his: list[int]) -> list[tuple[str, int, int]]:
    cost, choice = _cheapest(los, his, True)
    if _LIST in choice:
        plan = _walk_back(choice)
        if any(kind == "list" for kind, _, _ in plan):
            plain_cost, plain = _cheapest(los, his, False)
            if plain_cost <= cost + _LIST_HEADER:
                choice = plain
            else:
                return plan
    return _walk_back(choice)


def _walk_back(choice: list[int]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    i = len(choice) - 1
    while i >= 0:
        how = choice[i]
        if how >= 0:
            out.append(("bitmap", how, i + 1))
            i = how - 1
        else:
            out.append(("range" if how == _RANGE else "list", i, i + 1))
            i -= 1
    out.reverse()
    return out


# Strings of binary digits for the short runs and gaps of a bitmap, shared rather than built each time.
_ZEROS = tuple("0" * n for n in range(512))
_ONES = tuple("1" * n for n in range(512))


def _bitmap(los: list[int], his: list[int]) -> bytes:
    """The mpint of a bitmap whose bit 0 is serial ``los[0]``: the binary digits of
    the runs (ones) and of the gaps between them (zeros), least significant first,
    joined, reversed and read by ``int(digits, 2)``. Linear, and with C-level loops."""
    ends = list(map((1).__add__, his))
    counts = list(map(sub, ends, los))
    gaps = list(map(sub, islice(los, 1, None), ends))
    parts = counts + gaps  # the right length: counts and gaps interleaved
    if max(parts) < len(_ZEROS):
        parts[::2] = map(_ONES.__getitem__, counts)
        parts[1::2] = map(_ZEROS.__getitem__, gaps)
    else:
        parts[::2] = map(mul, repeat("1"), counts)
        parts[1::2] = map(mul, repeat("0"), gaps)
    digits = "".join(parts)[::-1]
    # An mpint: minimal big-endian, with a leading 0x00 only when the top bit is set.
    return int(digits, 2).to_bytes(_bitmap_mpint_len(len(digits)), "big")


def _serial_subsections(los: list[int], his: list[int]) -> list[tuple[int, bytes]]:
    subs: list[tuple[int, int, bytes]] = []  # (lowest serial, type, body) to sort by
    listed: list[int] = []
    for kind, j, i in _plan(los, his):
        if kind == "list":
            listed.extend(range(los[j], his[j] + 1))
        elif kind == "range":
            subs.append((los[j], CERT_SERIAL_RANGE, uint64(los[j]) + uint64(his[j])))
        else:
            raw = _bitmap(los[j:i], his[j:i])
            subs.append((los[j], CERT_SERIAL_BITMAP, uint64(los[j]) + wire_string(raw)))
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
        for t, part in _serial_subsections(*rc.bounds()):
            body.append(_section(t, part))
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
