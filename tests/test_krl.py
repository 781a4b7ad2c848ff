"""The KRL format (ca/krl.py), checked against the real ``ssh-keygen``.

* ``ssh-keygen -Q -f KRL CERT...`` must agree with our KRL on every
  certificate we ask about, and with the KRL ``ssh-keygen -k`` builds from
  the same revocations;
* our serial encoding is never larger than ``ssh-keygen``'s, and is the
  exact minimum of its cost model (checked against a brute-force search);
* ``parse_krl`` round-trips ``build_krl``, reads what ``ssh-keygen -k``
  writes, and on mutated or random bytes raises only its own error -- and
  whatever it accepts, ``ssh-keygen`` can load too (docs/security.md rule 21).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import subprocess
import time
from functools import lru_cache
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ca.issuance.signer import Signer
from ca.models import Decision
from ca.sshcert.certificates import fingerprint, parse_certificate_line
from ca.sshcert.krl import (
    CERT_SERIAL_BITMAP,
    CERT_SERIAL_LIST,
    CERT_SERIAL_RANGE,
    MAX_BITMAP_BITS,
    MAX_SERIAL,
    WILDCARD_CA,
    CertRevocations,
    KRLContents,
    KRLError,
    build_krl,
    choose_serial_encoding,
    describe,
    parse_krl,
    sha256_of_fingerprint,
)
from ca.sshcert.userkey import parse_user_key
from ca.sshcert.wire import Reader, uint32, uint64
from ca.sshcert.wire import string as wire_string

from .sshd_harness import ssh_keygen_path

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Each example runs ssh-keygen a few times: keep them modest.
KEYGEN = settings(max_examples=30, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

CA = asyncssh.generate_private_key("ssh-ed25519")
CA_BLOB = CA.public_data
CA_LINE = CA.export_public_key("openssh").decode().strip()
OTHER_CA = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
USER = asyncssh.generate_private_key("ssh-ed25519")
USER_LINE = USER.export_public_key("openssh").decode().strip()
OTHER_USER = asyncssh.generate_private_key("ssh-ed25519")
NOW = int(time.time())


def _decision() -> Decision:
    return Decision(user="alice", role="dev", principals=("alice",), valid_after=NOW - 60, valid_before=NOW + 3600,
                    ttl=3600, force_command=None, source_address=(), extensions=("permit-pty",), reason=None,
                    policy_sha256="0" * 64)


@lru_cache(maxsize=None)
def _cert_line(ca_name: str, user_name: str, serial: int, key_id: str) -> str:
    ca = {"ca": CA, "other": OTHER_CA}[ca_name]
    user = {"user": USER, "other": OTHER_USER}[user_name]
    line, _ = Signer(ca).sign(_decision(), parse_user_key(user.export_public_key("openssh").decode()), serial, key_id)
    return line


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("krl")
    (d / "ca.pub").write_text(CA_LINE + "\n")
    (d / "other-ca.pub").write_text(OTHER_CA.export_public_key("openssh").decode())
    (d / "user.pub").write_text(USER_LINE + "\n")
    return d


def cert_file(work: Path, serial: int, key_id: str | None = None, *, ca: str = "ca", user: str = "user") -> Path:
    """A real certificate signed by our signer, written as a -cert.pub file."""
    key_id = key_id or f"iast:alice:dev:{serial}"
    path = work / f"{ca}-{user}-{serial}-{hashlib.sha256(key_id.encode()).hexdigest()[:8]}-cert.pub"
    if not path.exists():
        path.write_text(_cert_line(ca, user, serial, key_id) + "\n")
    return path


def keygen_query(krl: bytes | Path, certs: list[Path], work: Path) -> dict[Path, bool]:
    """``ssh-keygen -Q -f KRL CERT...``: {cert: revoked?}. Fails the test if ssh-keygen cannot read the KRL."""
    if isinstance(krl, bytes):
        path = work / f"q-{hashlib.sha256(krl).hexdigest()[:16]}.krl"
        path.write_bytes(krl)
        krl = path
    r = subprocess.run([ssh_keygen_path(), "-Q", "-f", str(krl)] + [str(c) for c in certs],
                       capture_output=True, text=True)
    assert r.returncode in (0, 1), f"ssh-keygen -Q failed ({r.returncode}): {r.stdout}{r.stderr}"
    out = {}
    for c in certs:
        line = next(x for x in r.stdout.splitlines() if x.startswith(f"{c} "))
        assert line.endswith(": REVOKED") or line.endswith(": ok"), line
        out[c] = line.endswith(": REVOKED")
    assert r.returncode == (1 if any(out.values()) else 0)  # exit 1 when something is revoked
    return out


def keygen_krl(spec: str, work: Path, *, ca_pub: Path | None = None) -> bytes:
    """The KRL ``ssh-keygen -k`` builds from a KRL spec."""
    h = hashlib.sha256(spec.encode()).hexdigest()[:16]
    spec_file, out = work / f"spec-{h}", work / f"keygen-{h}.krl"
    spec_file.write_text(spec)
    out.unlink(missing_ok=True)
    argv = [ssh_keygen_path(), "-k", "-f", str(out)] + (["-s", str(ca_pub)] if ca_pub else []) + [str(spec_file)]
    subprocess.run(argv, check=True, capture_output=True)
    return out.read_bytes()


def keygen_loads(krl: bytes, work: Path) -> subprocess.CompletedProcess:
    path = work / "load.krl"
    path.write_bytes(krl)
    return subprocess.run([ssh_keygen_path(), "-Q", "-l", "-f", str(path)], capture_output=True, text=True)


def runs_spec(ranges) -> str:
    return "".join(f"serial: {lo}\n" if lo == hi else f"serial: {lo}-{hi}\n" for lo, hi in ranges)


def subsection_types(krl: bytes) -> list[int]:
    """The serial/key-ID subsection types of the first certificate section."""
    r = Reader(krl)
    r.raw(8), r.uint32(), r.uint64(), r.uint64(), r.uint64(), r.string(), r.string()
    assert r.byte() == 1
    sect = Reader(r.string())
    sect.string(), sect.string()
    types = []
    while sect.remaining():
        types.append(sect.byte())
        sect.string()
    return types


# --------------------------------------------------------------------------
# The header and the simple cases


def test_header_fields_and_empty_krl(work):
    data = build_krl(7, certs={}, generated=1_700_000_000, comment="hello")
    assert data[:8] == b"SSHKRL\n\x00" and data[8:12] == uint32(1)
    assert data[12:20] == uint64(7) and data[20:28] == uint64(1_700_000_000) and data[28:36] == uint64(0)
    c = parse_krl(data)
    assert (c.version, c.generated, c.comment, c.flags) == (7, 1_700_000_000, "hello", 0)
    assert c.certs == {} and not c.keys and not c.sha256s
    assert keygen_loads(data, work).returncode == 0
    q = keygen_query(data, [cert_file(work, 5)], work)
    assert not any(q.values())


def test_same_input_same_bytes():
    certs = {CA_BLOB: CertRevocations.of([3, 1, 2, 10], key_ids=["b", "a"])}
    one = build_krl(1, certs=certs, generated=5)
    two = build_krl(1, certs={CA_BLOB: CertRevocations.of([10, 2, 3, 1, 2], key_ids=["a", "b", "a"])}, generated=5)
    assert one == two


@pytest.mark.parametrize("serials, kinds", [
    ([5], [CERT_SERIAL_LIST]),
    ([5, 900], [CERT_SERIAL_LIST]),
    (list(range(100, 200)), [CERT_SERIAL_RANGE]),
    ([1, 3, 4, 6, 9, 10, 12, 15], [CERT_SERIAL_BITMAP]),
    ([7] + list(range(1000, 1100)) + [5000, 5002, 5003, 5005, 5008, 5009, 5010], None),
])
def test_each_encoding_agrees_with_ssh_keygen(work, serials, kinds):
    ours = build_krl(1, certs={CA_BLOB: CertRevocations.of(serials)}, generated=NOW)
    if kinds is not None:
        assert subsection_types(ours) == kinds
    theirs = keygen_krl("".join(f"serial: {s}\n" for s in serials), work, ca_pub=work / "ca.pub")
    assert len(ours) <= len(theirs)
    members = sorted(set(serials))
    probes = sorted(set(members) | {s + 1 for s in members} | {max(1, s - 1) for s in members})
    certs = [cert_file(work, s) for s in probes]
    got, want = keygen_query(ours, certs, work), keygen_query(theirs, certs, work)
    assert got == want
    assert [s for s, c in zip(probes, certs) if got[c]] == members


def test_serials_near_2_64(work):
    serials = [MAX_SERIAL, MAX_SERIAL - 1, MAX_SERIAL - 7, MAX_SERIAL - 100]
    ours = build_krl(1, certs={CA_BLOB: CertRevocations.of(serials)}, generated=NOW)
    assert parse_krl(ours).certs[CA_BLOB] == CertRevocations.of(serials)
    probes = serials + [MAX_SERIAL - 2, MAX_SERIAL - 99, MAX_SERIAL - 101]
    certs = [cert_file(work, s) for s in probes]
    got = keygen_query(ours, certs, work)
    assert [s for s, c in zip(probes, certs) if got[c]] == serials


def test_serial_zero_is_refused_because_it_breaks_the_whole_krl(work):
    with pytest.raises(KRLError):
        CertRevocations.of([0])
    with pytest.raises(KRLError):
        CertRevocations(((0, 5),))
    # A KRL listing serial 0, made by hand: ssh-keygen (so sshd) refuses the whole file, and so do we.
    cert_sect = wire_string(CA_BLOB) + wire_string(b"") + bytes([CERT_SERIAL_LIST]) + wire_string(uint64(0))
    bad = build_krl(1, certs={}, generated=0) + bytes([1]) + wire_string(cert_sect)
    assert keygen_loads(bad, work).returncode != 0
    with pytest.raises(KRLError, match="serial 0"):
        parse_krl(bad)


def test_dense_set_wider_than_16384_serials(work):
    # ssh-keygen -k writes one bitmap for this and then cannot read its own KRL
    # ("bignum is too large": OpenSSH caps mpints at 2048 bytes). Ours splits it.
    serials = list(range(1, 40_001, 2))
    theirs = keygen_krl(runs_spec((s, s) for s in serials), work, ca_pub=work / "ca.pub")
    broken = keygen_loads(theirs, work)
    ours = build_krl(1, certs={CA_BLOB: CertRevocations.of(serials)}, generated=NOW)
    assert keygen_loads(ours, work).returncode == 0
    if broken.returncode != 0:
        assert "bignum is too large" in broken.stderr
    assert len(ours) <= 1.1 * len(theirs)
    probes = [1, 2, 16_383, 16_384, 16_385, 16_386, 39_999, 40_000, 40_001]
    certs = [cert_file(work, s) for s in probes]
    got = keygen_query(ours, certs, work)
    assert [s for s, c in zip(probes, certs) if got[c]] == [1, 16_383, 16_385, 39_999]
    assert parse_krl(ours).certs[CA_BLOB] == CertRevocations.of(serials)


def test_key_ids_per_ca_and_wildcard(work):
    revoked_here = cert_file(work, 11, "iast:alice:dev:11")
    same_id_other_ca = cert_file(work, 11, "iast:alice:dev:11", ca="other")
    wildcard_hit = cert_file(work, 12, "anywhere", ca="other")
    kept = cert_file(work, 13, "iast:alice:dev:13")
    data = build_krl(2, certs={CA_BLOB: CertRevocations.of(key_ids=["iast:alice:dev:11"]),
                               WILDCARD_CA: CertRevocations.of(key_ids=["anywhere"])}, generated=NOW)
    got = keygen_query(data, [revoked_here, same_id_other_ca, wildcard_hit, kept], work)
    assert got == {revoked_here: True, same_id_other_ca: False, wildcard_hit: True, kept: False}
    theirs = keygen_krl("id: iast:alice:dev:11\n", work, ca_pub=work / "ca.pub")
    assert parse_krl(theirs).certs == {CA_BLOB: CertRevocations.of(key_ids=["iast:alice:dev:11"])}
    c = parse_krl(data)
    for path, revoked in got.items():
        assert c.is_revoked(parse_certificate_line(path.read_text())) == revoked


def test_a_revoked_key_revokes_every_certificate_for_it(work):
    user_blob = USER.public_data
    for data in (build_krl(1, certs={}, keys=[user_blob], generated=NOW),
                 build_krl(1, certs={}, sha256s=[hashlib.sha256(user_blob).digest()], generated=NOW)):
        mine = [cert_file(work, s) for s in (21, 22)]
        other = cert_file(work, 23, user="other")
        got = keygen_query(data, mine + [other, work / "user.pub"], work)
        assert got == {mine[0]: True, mine[1]: True, other: False, work / "user.pub": True}
    # The same revocation by ssh-keygen -k: "hash: SHA256:..." gives the same section, byte for byte.
    theirs = keygen_krl(f"hash: {fingerprint(user_blob)}\n", work)
    ours = build_krl(0, certs={}, sha256s=[sha256_of_fingerprint(fingerprint(user_blob))],
                     generated=parse_krl(theirs).generated)
    assert ours == theirs


def test_a_revoked_ca_key_revokes_everything_it_signed(work):
    # The explicit-keys section, not a wildcard certificate section: sshd checks the
    # signing key of every certificate against the KRL.
    data = build_krl(1, certs={}, keys=[CA_BLOB], generated=NOW)
    signed = [cert_file(work, s) for s in (31, 32, 10**15)]
    other = cert_file(work, 31, ca="other")
    got = keygen_query(data, signed + [other], work)
    assert got == {signed[0]: True, signed[1]: True, signed[2]: True, other: False}
    theirs = keygen_krl(f"key: {CA_LINE}\n", work)
    assert parse_krl(theirs).keys == frozenset({CA_BLOB})
    assert build_krl(0, certs={}, keys=[CA_BLOB], generated=parse_krl(theirs).generated) == theirs
    # Whereas an empty ("wildcard") certificate section with nothing in it revokes nothing.
    c = parse_krl(data)
    assert all(c.is_revoked(parse_certificate_line(p.read_text())) == got[p] for p in got)


def test_sha256_section_is_sorted():
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(20)]
    data = build_krl(1, certs={}, sha256s=digests, generated=0)
    r = Reader(data[data.index(bytes([5]) + uint32(20 * 36)) + 1:])
    body = Reader(r.string())
    seen = [body.string() for _ in range(20)]
    assert seen == sorted(digests) and not body.remaining()


def test_parse_reads_what_ssh_keygen_writes(work):
    spec = (runs_spec([(1, 1), (3, 3), (5, 9), (100, 300), (1000, 1000)]) + "id: some-id\nid: other id\n"
            + f"hash: {fingerprint(OTHER_USER.public_data)}\n")
    theirs = keygen_krl(spec, work, ca_pub=work / "ca.pub")
    c = parse_krl(theirs)
    assert c.certs == {CA_BLOB: CertRevocations(((1, 1), (3, 3), (5, 9), (100, 300), (1000, 1000)),
                                                frozenset({"some-id", "other id"}))}
    assert c.sha256s == {hashlib.sha256(OTHER_USER.public_data).digest()}
    explicit = keygen_krl(f"key: {USER_LINE}\n", work)
    assert parse_krl(explicit).keys == {USER.public_data}


def test_signature_sections_are_refused():
    data = build_krl(1, certs={}, generated=0) + bytes([4]) + wire_string(CA_BLOB) + wire_string(b"sig")
    with pytest.raises(KRLError, match="signature"):
        parse_krl(data)


def test_describe_is_a_spec_ssh_keygen_accepts(work):
    contents = KRLContents(
        version=3, generated=NOW, comment="c",
        certs={CA_BLOB: CertRevocations.of([1, 2, 3, 9], ranges=[(100, 200)], key_ids=["iast:bob:dev:7"])},
        keys=frozenset({USER.public_data}), sha256s=frozenset({hashlib.sha256(b"x").digest()}))
    data = build_krl(3, certs=contents.certs, keys=contents.keys, sha256s=contents.sha256s, generated=NOW,
                     comment="c")
    assert parse_krl(data) == contents
    text = describe(parse_krl(data), {CA_BLOB: "our CA"})
    assert "serial: 1-3\nserial: 9\nserial: 100-200\nid: iast:bob:dev:7\n" in text
    assert f"key: {' '.join(USER_LINE.split()[:2])}" in text and "our CA" in text
    again = parse_krl(keygen_krl(text, work, ca_pub=work / "ca.pub"))
    assert (again.certs, again.keys, again.sha256s) == (contents.certs, contents.keys, contents.sha256s)


# --------------------------------------------------------------------------
# Serial sets: Hypothesis against ssh-keygen


def _runs(start_lo: int, start_hi: int):
    return st.lists(st.tuples(st.integers(start_lo, start_hi), st.integers(1, 200)), min_size=1, max_size=8).map(
        lambda rs: {s for lo, n in rs for s in range(lo, min(lo + n, MAX_SERIAL + 1))})


serial_sets = st.one_of(
    _runs(1, 5000),  # runs of consecutive serials
    st.sets(st.integers(1, 10**6), min_size=1, max_size=60),  # sparse
    st.tuples(st.integers(1, 50_000), st.integers(20, 2000), st.floats(0.2, 0.9), st.randoms(use_true_random=False))
    .map(lambda t: {t[0] + i for i in range(t[1]) if t[3].random() < t[2]} or {t[0]}),  # dense
    _runs(MAX_SERIAL - 5000, MAX_SERIAL),  # near 2^64
    st.sets(st.integers(1, MAX_SERIAL), min_size=1, max_size=40),  # anywhere
).flatmap(lambda a: st.one_of(st.just(a), _runs(1, 3000).map(lambda b: a | b)))


def _ranges(serials: set[int]) -> list[tuple[int, int]]:
    return list(CertRevocations.of(serials).ranges)


@KEYGEN
@given(serials=serial_sets, rnd=st.randoms(use_true_random=False))
@example(serials={1}, rnd=random.Random(0))
@example(serials=set(range(1, 17_000, 2)), rnd=random.Random(1))
@example(serials={MAX_SERIAL, MAX_SERIAL - 2, 1}, rnd=random.Random(2))
def test_random_serial_sets_agree_with_ssh_keygen(work, serials, rnd):
    ranges = _ranges(serials)
    ours = build_krl(1, certs={CA_BLOB: CertRevocations.of(serials)}, generated=NOW)
    theirs = keygen_krl(runs_spec(ranges), work, ca_pub=work / "ca.pub")
    assert len(ours) <= 1.1 * len(theirs), (len(ours), len(theirs))
    assert parse_krl(ours).certs[CA_BLOB] == CertRevocations(tuple(ranges))
    members = rnd.sample(sorted(serials), min(6, len(serials))) if len(serials) < 5000 else \
        [lo for lo, _ in rnd.sample(ranges, min(6, len(ranges)))]
    members += [ranges[0][0], ranges[-1][1]]
    outsiders = {lo - 1 for lo, _ in ranges if lo > 1} | {hi + 1 for _, hi in ranges if hi < MAX_SERIAL}
    outsiders = rnd.sample(sorted(outsiders), min(6, len(outsiders)))
    outsiders += [s for s in (rnd.randrange(1, MAX_SERIAL) for _ in range(2)) if s not in serials]
    probes = sorted(set(members) | set(outsiders))
    certs = [cert_file(work, s) for s in probes]
    got = keygen_query(ours, certs, work)
    assert {s for s, c in zip(probes, certs) if got[c]} == set(members)
    if keygen_loads(theirs, work).returncode == 0:  # ssh-keygen cannot read some of its own (see above)
        assert keygen_query(theirs, certs, work) == got


def _reference_cost(ranges: list[tuple[int, int]]) -> int:
    """Fewest bytes for the serial subsections, by brute force over every split of the runs."""
    n = len(ranges)
    best = None
    # Choose, for each maximal segment of runs, list / range / bitmap.
    for cuts in itertools.product([False, True], repeat=n - 1):
        segs, start = [], 0
        for i, cut in enumerate(cuts, 1):
            if cut:
                segs.append((start, i))
                start = i
        segs.append((start, n))
        for kinds in itertools.product("lrb", repeat=len(segs)):
            cost, listed = 0, 0
            for (j, i), k in zip(segs, kinds):
                if k == "r":
                    if i - j != 1:
                        break
                    cost += 21
                elif k == "l":
                    listed += sum(hi - lo + 1 for lo, hi in ranges[j:i])
                else:
                    span = ranges[i - 1][1] - ranges[j][0] + 1
                    if span > MAX_BITMAP_BITS:
                        break
                    cost += 17 + span // 8 + 1
            else:
                cost += 5 + 8 * listed if listed else 0
                best = cost if best is None else min(best, cost)
    return best


def _serial_bytes(serials) -> int:
    empty = len(build_krl(1, certs={CA_BLOB: CertRevocations.of(key_ids=["x"])}, generated=0))
    return len(build_krl(1, certs={CA_BLOB: CertRevocations.of(serials, key_ids=["x"])}, generated=0)) - empty


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(1, 300), min_size=1, max_size=40).filter(lambda s: len(_ranges(s)) <= 7))
def test_encoding_is_the_exact_minimum(serials):
    ranges = _ranges(serials)
    assert _serial_bytes(serials) == _reference_cost(ranges)
    plan = choose_serial_encoding(tuple(ranges))
    assert [j for _, j, _ in plan] == sorted(j for _, j, _ in plan)


@settings(max_examples=50, deadline=None)
@given(st.integers(2000, 80_000), st.floats(0.01, 0.99), st.integers(0, 2**32))
def test_large_sets_round_trip_and_bitmaps_stay_readable(width, density, seed):
    rnd = random.Random(seed)
    serials = {s for s in range(1, width) if rnd.random() < density} or {1}
    data = build_krl(1, certs={CA_BLOB: CertRevocations.of(serials)}, generated=0)
    assert parse_krl(data).certs[CA_BLOB] == CertRevocations.of(serials)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 400), st.integers(MAX_SERIAL - 50, MAX_SERIAL)), max_size=60))
def test_the_fast_path_of_of_matches_the_checked_one(serials):
    # CertRevocations.of takes plain int serials through a C-level path (no per-serial checks);
    # unsorted, duplicated or not, it must mean exactly what the range-by-range path means.
    fast = CertRevocations.of(serials)
    slow = CertRevocations(tuple((s, s) for s in serials))
    assert fast == slow and fast.ranges == slow.ranges and hash(fast) == hash(slow)
    assert fast.serial_count == len(set(serials)) and bool(fast) == bool(serials)
    assert all(fast.revokes_serial(s) for s in serials)
    assert not any(fast.revokes_serial(s) for s in range(0, 402) if s not in serials)


def test_the_fast_path_keeps_every_refusal():
    for bad in ([0], [5, 0, 3], [MAX_SERIAL + 1], [1, MAX_SERIAL + 1], [-1]):
        with pytest.raises(KRLError, match="serial 0 cannot be revoked"):
            CertRevocations.of(bad)
    for bad in ([1, True], [1, 2.0], ["3"]):
        with pytest.raises(KRLError, match="integers"):
            CertRevocations.of(bad)
    with pytest.raises(KRLError, match="key ID"):
        CertRevocations.of([1], key_ids=["a\x00b"])
    rc = CertRevocations.of([1, 2])
    with pytest.raises(AttributeError):
        rc.key_ids = frozenset({"x"})  # type: ignore[misc]


def test_a_run_too_long_for_a_bitmap_among_dense_serials(work):
    # A run longer than a bitmap may span, between dense stretches that want bitmaps:
    # no bitmap may reach over it, and OpenSSH must read every bitmap back.
    rnd = random.Random(7)
    serials = [s for s in range(1, 30_000) if rnd.random() < 0.3] + list(range(30_000, 50_000)) + \
              [s for s in range(50_001, 90_000) if rnd.random() < 0.3]
    data = build_krl(1, certs={CA_BLOB: CertRevocations.of(serials)}, generated=0)
    assert parse_krl(data).certs[CA_BLOB] == CertRevocations.of(serials)
    r = keygen_loads(data, work)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------
# Round trips and fuzzing (rule 21)

key_blobs = st.sampled_from([USER.public_data, OTHER_USER.public_data, CA_BLOB, OTHER_CA.public_data])
cert_revocations = st.builds(
    CertRevocations.of,
    st.sets(st.integers(1, MAX_SERIAL), max_size=20),
    ranges=st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 500)).map(lambda t: (t[0], t[0] + t[1])),
                    max_size=5),
    key_ids=st.sets(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30),
                    max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, MAX_SERIAL), st.integers(0, MAX_SERIAL),
       st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
       st.dictionaries(st.sampled_from([CA_BLOB, OTHER_CA.public_data, WILDCARD_CA]), cert_revocations, max_size=3),
       st.sets(key_blobs), st.sets(st.binary(min_size=32, max_size=32), max_size=5))
def test_round_trip(version, generated, comment, certs, keys, sha256s):
    data = build_krl(version, certs=certs, keys=keys, sha256s=sha256s, generated=generated, comment=comment)
    c = parse_krl(data)
    assert (c.version, c.generated, c.comment) == (version, generated, comment)
    assert c.certs == {ca: rc for ca, rc in certs.items() if rc}
    assert c.keys == keys and c.sha256s == sha256s
    assert build_krl(version, certs=c.certs, keys=c.keys, sha256s=c.sha256s, generated=generated,
                     comment=comment) == data
    describe(c)


SAMPLE = build_krl(
    9, generated=NOW, comment="sample",
    certs={CA_BLOB: CertRevocations.of([1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 500, 501, 502, 9000],
                                       ranges=[(10_000, 20_000)], key_ids=["iast:alice:dev:1", "x"]),
           OTHER_CA.public_data: CertRevocations.of([7]),
           WILDCARD_CA: CertRevocations.of(key_ids=["any"])},
    keys=[USER.public_data, OTHER_CA.public_data], sha256s=[hashlib.sha256(b"a").digest()])


def mutations(data: bytes):
    """Byte-level mutations: flips, truncations, insertions, length-field lies."""
    return st.one_of(
        st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)).map(
            lambda t: data[: t[0]] + bytes([data[t[0]] ^ t[1]]) + data[t[0] + 1:]),
        st.integers(0, len(data) - 1).map(lambda i: data[:i]),
        st.tuples(st.integers(0, len(data)), st.binary(min_size=1, max_size=16)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0]:]),
        st.tuples(st.integers(0, len(data) - 4),
                  st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00",
                                   b"\x00\x00\x00\x01"])).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] + 4:]),
    )


def _parse_or_own_error(data: bytes) -> KRLContents | None:
    try:
        c = parse_krl(data)
    except KRLError:
        return None
    describe(c)
    return c


def test_the_sample_parses_and_ssh_keygen_loads_it(work):
    c = parse_krl(SAMPLE)
    assert c.version == 9 and len(c.certs) == 3
    assert keygen_loads(SAMPLE, work).returncode == 0


@FUZZ
@given(mutations(SAMPLE))
def test_mutated_krls_raise_only_our_error(data):
    _parse_or_own_error(data)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data):
    with pytest.raises(KRLError):
        parse_krl(data)


@FUZZ
@given(st.binary(max_size=400))
def test_random_sections_after_a_valid_header(tail):
    _parse_or_own_error(build_krl(1, certs={}, generated=0) + tail)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations(SAMPLE))
def test_whatever_we_accept_ssh_keygen_loads(work, data):
    # The host-side refresh installs a fetched KRL only if parse_krl accepts it:
    # that must never be a KRL sshd would refuse (which would lock everyone out).
    if _parse_or_own_error(data) is None:
        return
    r = keygen_loads(data, work)
    assert r.returncode == 0, f"we accepted a KRL ssh-keygen refuses: {r.stderr}"


def test_every_bit_flip_we_accept_ssh_keygen_loads(work):
    # Deterministic companion of the test above: flip the low and the high bit of every byte.
    accepted = 0
    for i in range(len(SAMPLE)):
        for bit in (0x01, 0x80):
            data = SAMPLE[:i] + bytes([SAMPLE[i] ^ bit]) + SAMPLE[i + 1:]
            if _parse_or_own_error(data) is None:
                continue
            accepted += 1
            r = keygen_loads(data, work)
            assert r.returncode == 0, f"byte {i} ^ {bit:#x}: we accepted a KRL ssh-keygen refuses: {r.stderr}"
    assert accepted > 100  # the sweep exercised the accepting path


def test_not_bytes():
    with pytest.raises(KRLError):
        parse_krl("SSHKRL")  # type: ignore[arg-type]


def test_build_refuses_bad_input():
    with pytest.raises(KRLError):
        build_krl(1, certs={b"\x00\x00\x00\x03abc": CertRevocations.of([1])}, generated=0)
    with pytest.raises(KRLError):
        build_krl(1, certs={}, keys=[b"junk"], generated=0)
    with pytest.raises(KRLError):
        build_krl(1, certs={}, sha256s=[b"short"], generated=0)
    with pytest.raises(KRLError):
        build_krl(-1, certs={}, generated=0)
    with pytest.raises(KRLError):
        build_krl(1, certs={}, generated=0, comment="a\x00b")
    with pytest.raises(KRLError):
        CertRevocations.of([MAX_SERIAL + 1])
    with pytest.raises(KRLError):
        sha256_of_fingerprint("SHA256:nope")


def test_fingerprint_helpers_round_trip():
    fp = fingerprint(USER.public_data)
    assert sha256_of_fingerprint(fp) == hashlib.sha256(USER.public_data).digest()
    assert base64.b64encode(sha256_of_fingerprint(fp)).decode().rstrip("=") == fp[7:]


def test_resource_limits(monkeypatch):
    import ca.sshcert.krl as krl_module

    data = build_krl(1, certs={CA_BLOB: CertRevocations.of(range(1, 200, 2))}, generated=0)
    assert parse_krl(data).certs[CA_BLOB].serial_count == 100
    monkeypatch.setattr(krl_module, "MAX_KRL_ENTRIES", 50)
    with pytest.raises(KRLError, match="more than 50 entries"):
        parse_krl(data)
    monkeypatch.setattr(krl_module, "MAX_KRL_BYTES", len(data) - 1)
    with pytest.raises(KRLError, match="larger than"):
        parse_krl(data)
