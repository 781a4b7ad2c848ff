"""The audit Merkle tree (ca/audit/merkle.py): RFC 6962 test vectors, a reference
implementation written straight from the RFC text, and Hypothesis properties
for proofs (every honest proof verifies; every change to it fails)."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.audit import merkle
from ca.audit.merkle import (
    EMPTY_ROOT,
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

PROPS = settings(max_examples=200, deadline=None)

# -- RFC 6962 test vectors -------------------------------------------------------
# From google/certificate-transparency cpp/merkletree/merkle_tree_test.cc
# (kInputs, kSHA256Roots, kSHA256Paths, kSHA256Proofs) and transparency-dev/merkle
# testonly/constants.go (NodeHashes, CompactTrees) and proof/verify_test.go (the
# extra 6 -> 7 consistency proof). CT numbers leaves from 1 in its path vectors;
# here indices count from 0.

H = bytes.fromhex

INPUTS = [H(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                         "606162636465666768696a6b6c6d6e6f")]
LEAVES = [leaf_hash(d) for d in INPUTS]

ROOTS = [H(x) for x in (  # ROOTS[n] is the root of the first n inputs
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]

NODES = [  # NODES[level][i]: the perfect subtrees of the 8-leaf tree
    [H(x) for x in ("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1")],
    [H(x) for x in ("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0")],
    [H(x) for x in ("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")],
    [H("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# transparency-dev CompactTrees: the frontier (perfect-subtree roots, left to right) for sizes 0..8.
FRONTIERS = [
    [], [NODES[0][0]], [NODES[1][0]], [NODES[1][0], NODES[0][2]], [NODES[2][0]],
    [NODES[2][0], NODES[0][4]], [NODES[2][0], NODES[1][2]], [NODES[2][0], NODES[1][2], NODES[0][6]], [NODES[3][0]],
]

INCLUSION_VECTORS = [  # (index from 0, tree size, audit path)
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]

CONSISTENCY_VECTORS = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]

SOME_HASH = H("abacaba000000000000000000000000000000000000000000060061e00123456")


# -- a reference implementation, straight from RFC 6962 section 2.1 ---------------
# Recursive, on lists of leaf hashes, deliberately unlike ca/audit/merkle.py's iterative code.


def ref_k(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d):
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = ref_k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m, d):
    if len(d) == 1:
        return []
    k = ref_k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m, d, b):
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = ref_k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m, d):
    return ref_subproof(m, d, True) if 0 < m < len(d) else []


def make_leaves(seed: bytes, n: int) -> list[bytes]:
    return [leaf_hash(seed + i.to_bytes(4, "big")) for i in range(n)]


def flip(h: bytes, pos: int, mask: int) -> bytes:
    b = bytearray(h)
    b[pos % len(b)] ^= mask
    return bytes(b)


# -- vectors -----------------------------------------------------------------------------


def test_hashing_primitives():
    assert EMPTY_ROOT == ROOTS[0] == hashlib.sha256(b"").digest()
    assert LEAVES == NODES[0]
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(LEAVES[0], LEAVES[1]) == NODES[1][0]
    for level in range(1, 4):
        for i, h in enumerate(NODES[level]):
            assert node_hash(NODES[level - 1][2 * i], NODES[level - 1][2 * i + 1]) == h


@pytest.mark.parametrize("n", range(9))
def test_root_vectors(n):
    assert root(LEAVES[:n]) == ROOTS[n]
    assert root(iter(LEAVES[:n])) == ROOTS[n]  # a stream, not a list
    assert ref_mth(LEAVES[:n]) == ROOTS[n]


def test_tree_builder_vectors():
    b = TreeBuilder()
    assert (b.size, b.frontier, b.root()) == (0, (), ROOTS[0])
    for n in range(1, 9):
        b.append(LEAVES[n - 1])
        assert b.size == n
        assert list(b.frontier) == FRONTIERS[n]
        assert b.root() == ROOTS[n]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_VECTORS)
def test_inclusion_vectors(index, size, path):
    path = [H(x) for x in path]
    assert inclusion_proof(LEAVES[:size], index) == path
    assert inclusion_proof(LEAVES, index, size) == path  # an older tree size, from all the leaves
    assert ref_path(index, LEAVES[:size]) == path
    assert verify_inclusion(LEAVES[index], index, size, path, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_consistency_vectors(old, new, proof):
    proof = [H(x) for x in proof]
    assert consistency_proof(LEAVES, old, new) == proof
    assert ref_proof(old, LEAVES[:new]) == proof
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


# The corruption probes of transparency-dev/merkle proof/verify_test.go, on the vectors.


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_VECTORS)
def test_inclusion_vectors_corrupted(index, size, path):
    path = [H(x) for x in path]
    leaf, rt = LEAVES[index], ROOTS[size]
    probes = [
        (index - 1, size, rt, leaf, path), (index + 1, size, rt, leaf, path), (index ^ 2, size, rt, leaf, path),
        (index, size * 2, rt, leaf, path), (index, size // 2, rt, leaf, path),
        (index, size, rt, leaf_hash(b"WrongLeaf"), path),
        (index, size, EMPTY_ROOT, leaf, path), (index, size, SOME_HASH, leaf, path),
        (index, size, rt, leaf, path + [b""]), (index, size, rt, leaf, path + [rt]),
        (index, size, rt, leaf, [b""] + path), (index, size, rt, leaf, [rt] + path),
    ]
    for i in range(len(path)):
        probes.append((index, size, rt, leaf, path[:i] + [flip(path[i], 0, 8)] + path[i + 1:]))
    if path:
        probes.append((index, size, rt, leaf, path[:-1]))
    if len(path) > 1:
        probes.append((index, size, rt, leaf, [path[0], SOME_HASH] + path[1:]))
    for i, n, r, lf, p in probes:
        assert not verify_inclusion(lf, i, n, p, r), (i, n)


@pytest.mark.parametrize(("old", "new", "proof"), [v for v in CONSISTENCY_VECTORS if v[2]])
def test_consistency_vectors_corrupted(old, new, proof):
    proof = [H(x) for x in proof]
    r1, r2 = ROOTS[old], ROOTS[new]
    probes = [
        (old - 1, new, r1, r2, proof), (old + 1, new, r1, r2, proof), (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof), (old, new // 2, r1, r2, proof),
        (old, new, SOME_HASH, r2, proof), (old, new, r1, SOME_HASH, proof), (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, proof + [b""]), (old, new, r1, r2, proof + [r1]), (old, new, r1, r2, proof + [r2]),
        (old, new, r1, r2, [b""] + proof), (old, new, r1, r2, [r1] + proof), (old, new, r1, r2, [r2] + proof),
        (old, new, r1, r2, [proof[0]] + proof), (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        probes.append((old, new, r1, r2, proof[:i] + [flip(proof[i], 0, 16)] + proof[i + 1:]))
    for o, n, a, b, p in probes:
        assert not verify_consistency(o, n, a, b, p), (o, n)


# -- the implementation against the reference, exhaustively for small trees ----------


def test_small_trees_exhaustive():
    pool = make_leaves(b"exhaustive", 40)
    for n in range(1, 41):
        leaves = pool[:n]
        rt = root(leaves)
        assert rt == ref_mth(leaves)
        for i in range(n):
            p = inclusion_proof(leaves, i)
            assert p == ref_path(i, leaves)
            assert verify_inclusion(leaves[i], i, n, p, rt)
        for old in range(0, n + 1):
            p = consistency_proof(leaves, old, n)
            assert p == ref_proof(old, leaves)
            assert verify_consistency(old, n, root(leaves[:old]), rt, p)


# -- Hypothesis: random trees of 1..300 leaves ------------------------------------------


@st.composite
def trees(draw, max_size=300):
    n = draw(st.integers(1, max_size))
    seed = draw(st.binary(max_size=8))
    return n, make_leaves(seed, 2 * n + 2)  # extra leaves: trees of other sizes over the same data


@PROPS
@given(tree=trees(), data=st.data())
def test_inclusion_proofs(tree, data):
    n, pool = tree
    leaves = pool[:n]
    rt = root(leaves)
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(leaves, i)
    assert proof == ref_path(i, leaves)
    assert proof == inclusion_proof(iter(pool), i, n)  # streamed from a longer log
    assert verify_inclusion(leaves[i], i, n, proof, rt)

    # Any byte of any proof element flipped.
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="element")
        pos = data.draw(st.integers(0, 31), label="byte")
        mask = data.draw(st.integers(1, 255), label="mask")
        bad = proof[:k] + [flip(proof[k], pos, mask)] + proof[k + 1:]
        assert not verify_inclusion(leaves[i], i, n, bad, rt)
        assert not verify_inclusion(leaves[i], i, n, proof[:-1], rt)
        assert not verify_inclusion(leaves[i], i, n, proof[1:], rt)
    assert not verify_inclusion(leaves[i], i, n, proof + [rt], rt)
    assert not verify_inclusion(leaves[i], i, n, [leaves[i]] + proof, rt)

    # The wrong index (of this tree or beyond it), leaf or root.
    j = data.draw(st.integers(-2, n + 2).filter(lambda j: j != i), label="wrong index")
    assert not verify_inclusion(leaves[i], j, n, proof, rt)
    other = data.draw(st.integers(0, len(pool) - 1).filter(lambda k: k != i), label="wrong leaf")
    assert not verify_inclusion(pool[other], i, n, proof, rt)
    assert not verify_inclusion(flip(leaves[i], data.draw(st.integers(0, 31)), 1), i, n, proof, rt)
    assert not verify_inclusion(leaves[i], i, n, proof, flip(rt, data.draw(st.integers(0, 31)), 1))

    # The wrong size, even with that size's genuine root.
    m = data.draw(st.integers(0, len(pool)).filter(lambda m: m != n), label="wrong size")
    m_root = root(pool[:m])
    assert not verify_inclusion(leaves[i], i, m, proof, m_root)
    if m > i:  # and the honest proof for that size is different
        assert inclusion_proof(pool, i, m) != proof


@PROPS
@given(tree=trees(), data=st.data())
def test_consistency_proofs(tree, data):
    n, pool = tree
    old = data.draw(st.integers(0, n), label="old size")
    new = n
    r1, r2 = root(pool[:old]), root(pool[:new])
    proof = consistency_proof(pool, old, new)
    assert proof == ref_proof(old, pool[:new])
    assert proof == consistency_proof(iter(pool), old, new)
    assert verify_consistency(old, new, r1, r2, proof)
    if old == 0 or old == new:
        assert proof == []
        assert not verify_consistency(old, new, r1, r2, [SOME_HASH])
        assert not verify_consistency(old, new, SOME_HASH, r2, [])
        return

    # Any byte of any proof element flipped; any element added, dropped, or the proof emptied.
    k = data.draw(st.integers(0, len(proof) - 1), label="element")
    pos = data.draw(st.integers(0, 31), label="byte")
    mask = data.draw(st.integers(1, 255), label="mask")
    assert not verify_consistency(old, new, r1, r2, proof[:k] + [flip(proof[k], pos, mask)] + proof[k + 1:])
    assert not verify_consistency(old, new, r1, r2, [])
    assert not verify_consistency(old, new, r1, r2, proof[:-1])
    assert not verify_consistency(old, new, r1, r2, proof[1:])
    assert not verify_consistency(old, new, r1, r2, proof + [r2])
    assert not verify_consistency(old, new, r1, r2, [proof[0]] + proof)

    # Wrong or swapped roots.
    assert not verify_consistency(old, new, r2, r1, proof)
    assert not verify_consistency(old, new, flip(r1, pos, mask), r2, proof)
    assert not verify_consistency(old, new, r1, flip(r2, pos, mask), proof)

    # Wrong sizes, with the genuine roots of those sizes. (With the *original* roots a
    # wrong size can pass -- e.g. 1 -> 130 also as 1 -> 129: sizes and roots must come
    # together from signed checkpoints; see test_tree_size_comes_from_the_checkpoint.)
    o2 = data.draw(st.integers(-1, len(pool)).filter(lambda o: o != old), label="wrong old size")
    assert not verify_consistency(o2, new, root(pool[:max(o2, 0)]), r2, proof)
    n2 = data.draw(st.integers(0, len(pool)).filter(lambda m: m != new), label="wrong new size")
    assert not verify_consistency(old, n2, r1, root(pool[:n2]), proof)


@PROPS
@given(tree=trees(), data=st.data())
def test_tree_builder_matches_root_for_every_size(tree, data):
    n, pool = tree
    leaves = pool[:n]
    b = TreeBuilder()
    for size in range(n + 1):
        if size:
            b.append(leaves[size - 1])
        assert b.size == size
        assert len(b.frontier) == size.bit_count()
        assert b.root() == root(leaves[:size])
    assert b.root() == ref_mth(leaves)
    # Resume from a saved (size, frontier) part-way and finish: same root.
    cut = data.draw(st.integers(0, n), label="cut")
    first = TreeBuilder()
    first.extend(leaves[:cut])
    resumed = TreeBuilder(first.size, first.frontier)
    resumed.extend(leaves[cut:])
    assert resumed.root() == b.root()


# -- edge cases and errors -----------------------------------------------------------------


def test_inclusion_edges():
    # Caller bugs in the generator: ValueError / TypeError.
    for bad in (-1, 8, 100):
        with pytest.raises(ValueError):
            inclusion_proof(LEAVES, bad)
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, 0, 9)  # larger than the leaves given
    with pytest.raises(ValueError):
        inclusion_proof([], 0)
    with pytest.raises(TypeError):
        inclusion_proof(iter(LEAVES), 0)  # a stream needs tree_size
    with pytest.raises(ValueError):
        inclusion_proof(iter(LEAVES[:3]), 0, 8)  # the stream ran out
    with pytest.raises(TypeError):
        inclusion_proof(LEAVES, True)

    # Bad values in a proof: False.
    p = inclusion_proof(LEAVES, 5)
    assert verify_inclusion(LEAVES[5], 5, 8, p, ROOTS[8])
    assert not verify_inclusion(LEAVES[5], 8, 8, p, ROOTS[8])  # index == size
    assert not verify_inclusion(LEAVES[5], -1, 8, p, ROOTS[8])
    assert not verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)  # nothing is in the empty tree
    assert not verify_inclusion(LEAVES[5], 5, 8, [], ROOTS[8])  # empty proof where one is needed
    assert not verify_inclusion(LEAVES[5], 5, 8, p[:2] + [p[2][:31]], ROOTS[8])  # short hash
    assert not verify_inclusion(LEAVES[5][:31], 5, 8, p, ROOTS[8])
    assert not verify_inclusion(LEAVES[5], 5, 8, p, ROOTS[8] + b"\x00")
    # A one-leaf tree: the root is the leaf hash, the proof is empty.
    assert verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    assert not verify_inclusion(LEAVES[0], 0, 1, [LEAVES[0]], LEAVES[0])
    assert not verify_inclusion(LEAVES[0], 0, 1, [], EMPTY_ROOT)

    # Wrong types are caller bugs: TypeError.
    with pytest.raises(TypeError):
        verify_inclusion(LEAVES[5].hex(), 5, 8, p, ROOTS[8])
    with pytest.raises(TypeError):
        verify_inclusion(LEAVES[5], 5, 8, [h.hex() for h in p], ROOTS[8])
    with pytest.raises(TypeError):
        verify_inclusion(LEAVES[5], "5", 8, p, ROOTS[8])
    with pytest.raises(TypeError):
        verify_inclusion(LEAVES[5], 5, 8.0, p, ROOTS[8])
    with pytest.raises(TypeError):
        verify_inclusion(LEAVES[5], True, 8, p, ROOTS[8])
    with pytest.raises(TypeError):
        verify_inclusion(LEAVES[5], 5, 8, b"".join(p), ROOTS[8])
    # bytearray is fine.
    assert verify_inclusion(bytearray(LEAVES[5]), 5, 8, [bytearray(h) for h in p], bytearray(ROOTS[8]))


def test_consistency_edges():
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, 5, 4)  # old > new
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, -1, 4)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, 2, 9)  # more than the leaves given
    with pytest.raises(ValueError):
        consistency_proof(iter(LEAVES[:3]), 2, 8)
    assert consistency_proof(LEAVES, 0, 8) == []
    assert consistency_proof(LEAVES, 8, 8) == []
    assert consistency_proof([], 0, 0) == []

    # old > new, negative sizes: False.
    assert not verify_consistency(8, 6, ROOTS[8], ROOTS[6], consistency_proof(LEAVES, 6, 8))
    assert not verify_consistency(2, 1, ROOTS[2], ROOTS[1], [])
    assert not verify_consistency(-1, 8, EMPTY_ROOT, ROOTS[8], [])
    # An empty proof where one is needed.
    assert not verify_consistency(1, 2, ROOTS[1], ROOTS[2], [])
    assert not verify_consistency(4, 8, ROOTS[4], ROOTS[8], [])
    # Equal sizes: empty proof, equal roots.
    assert verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])
    assert not verify_consistency(5, 5, ROOTS[5], ROOTS[4], [])
    assert not verify_consistency(5, 5, ROOTS[5], ROOTS[5], [ROOTS[5]])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    # From the empty tree: nothing to prove, but the old root must be the empty root.
    assert verify_consistency(0, 8, EMPTY_ROOT, ROOTS[8], [])
    assert not verify_consistency(0, 8, ROOTS[1], ROOTS[8], [])
    assert not verify_consistency(0, 8, EMPTY_ROOT, ROOTS[8], [EMPTY_ROOT])
    assert not verify_consistency(0, 8, EMPTY_ROOT, ROOTS[8][:31], [])
    # An old tree that is a perfect subtree (its root is not in the proof).
    p = consistency_proof(LEAVES, 4, 8)
    assert p == [NODES[2][1]]
    assert verify_consistency(4, 8, ROOTS[4], ROOTS[8], p)
    assert not verify_consistency(4, 8, ROOTS[4], ROOTS[8], [ROOTS[4]] + p)

    with pytest.raises(TypeError):
        verify_consistency("6", 8, ROOTS[6], ROOTS[8], [])
    with pytest.raises(TypeError):
        verify_consistency(6, 8, ROOTS[6].hex(), ROOTS[8], [])
    with pytest.raises(TypeError):
        verify_consistency(6, 8, ROOTS[6], ROOTS[8], "")


def test_tree_size_comes_from_the_checkpoint():
    """As the module docstring warns: a proof does not pin the tree size(s) by itself.

    The proof of leaf 0 in the 3-leaf tree also passes for size 4 *with the 3-leaf
    root* -- a root no honest 4-leaf tree has. Taking size and root together from
    one signed checkpoint is what closes this; with the 4-leaf root it fails.
    """
    p = inclusion_proof(LEAVES, 0, 3)
    assert verify_inclusion(LEAVES[0], 0, 4, p, ROOTS[3])
    assert not verify_inclusion(LEAVES[0], 0, 4, p, ROOTS[4])
    # The same for consistency proofs: 1 -> 130 also passes as 1 -> 129 with the 130-leaf root.
    pool = make_leaves(b"size", 130)
    p = consistency_proof(pool, 1, 130)
    assert verify_consistency(1, 129, root(pool[:1]), root(pool), p)
    assert not verify_consistency(1, 129, root(pool[:1]), root(pool[:129]), p)


def test_tree_builder_edges():
    with pytest.raises(ValueError):
        TreeBuilder().append(b"\x00" * 31)
    with pytest.raises(ValueError):
        TreeBuilder(3, [NODES[1][0]])  # 3 leaves need 2 frontier hashes
    with pytest.raises(ValueError):
        TreeBuilder(-1)
    with pytest.raises(TypeError):
        TreeBuilder().append("00" * 32)
    b = TreeBuilder(7, FRONTIERS[7])
    b.append(LEAVES[7])
    assert b.root() == ROOTS[8]


def test_large_tree_streams_in_small_memory():
    """The root of 2**17 + 5 leaves without holding them: a handful of hashes, not megabytes."""
    n = (1 << 17) + 5
    leaves = (hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n))
    tracemalloc.start()
    try:
        b = TreeBuilder()
        b.extend(leaves)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert b.size == n and len(b.frontier) == 3
    assert peak < 64 * 1024
    # And a proof over a stream: same as over a list.
    sample = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(5000)]
    stream = (hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(5000))
    assert inclusion_proof(stream, 4321, 4999) == inclusion_proof(sample, 4321, 4999)


# -- the audit log's leaves -----------------------------------------------------------------


def test_audit_events_are_leaves(tmp_path):
    """Leaf i is leaf_hash(canonical(row)) of event id i + 1: proofs over a real audit log."""
    from ca.audit.chain import canonical
    from ca.store import AuditLog

    log = AuditLog(tmp_path / "audit.db")
    for i in range(11):
        log.record("test", {"n": i, "text": "ünïcode"}, user="alice")
    rows = log.conn.execute(
        "SELECT id, ts, kind, username, role, serial, key_id, source, data, prev_hash, hash FROM events ORDER BY id"
    ).fetchall()
    log.close()
    leaves = [leaf_hash(canonical(r)) for r in rows]
    rt = root(leaves)
    event = rows[6]
    i = event[0] - 1
    proof = inclusion_proof(leaves, i)
    assert verify_inclusion(leaf_hash(canonical(event)), i, len(rows), proof, rt)
    assert verify_consistency(7, 11, root(leaves[:7]), rt, consistency_proof(leaves, 7, 11))
    # A changed event is not in the tree.
    changed = event[:8] + ('{"n":6,"text":"changed"}',) + event[9:]
    assert not verify_inclusion(leaf_hash(canonical(changed)), i, len(rows), proof, rt)


# -- standalone: stdlib only, and the reviewer's command line -------------------------------


def test_merkle_imports_only_the_standard_library():
    tree = ast.parse(Path(merkle.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: merkle.py must stand alone"
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_copied_file_runs_selftest(tmp_path):
    """A reviewer copies merkle.py anywhere and runs it with a plain python3 (-I: no site, no cwd)."""
    copy = tmp_path / "merkle.py"
    shutil.copy(merkle.__file__, copy)
    out = subprocess.run([sys.executable, "-I", str(copy), "selftest"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK")


def _checkpoint_text(events: int, rt: bytes) -> str:
    # The suggested v2 checkpoint message; merkle.py only reads it (ssh-keygen checks the signature).
    return (f"iast-ssh audit checkpoint v2\nevents: {events}\nhead: {'0' * 64}\nroot: {rt.hex()}\n"
            "time: 2026-01-01T00:00:00.000000Z\naudit-key: SHA256:x\n"
            "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n")


def test_cli_inclusion(tmp_path, capsys):
    data = [json.dumps([i + 1, "2026-01-01T00:00:00.000000Z", "issued", "alice", "dev", i, None, None, "{}"],
                       separators=(",", ":")).encode() for i in range(6)]
    leaves = [leaf_hash(d) for d in data]
    rt = root(leaves)
    proof = merkle.inclusion_to_json(6, 3, leaves[3], inclusion_proof(leaves, 3), rt, leaf_data=data[3])
    pf = tmp_path / "proof.json"
    pf.write_text(json.dumps(proof))
    cp = tmp_path / "cp.txt"
    cp.write_text(_checkpoint_text(6, rt))

    assert merkle.main(["inclusion", str(pf), "--checkpoint", str(cp)]) == 0
    assert merkle.main(["inclusion", str(pf), "--size", "6", "--root", rt.hex()]) == 0
    assert merkle.main(["inclusion", str(pf)]) == 0
    assert "WARNING" in capsys.readouterr().err

    # A checkpoint for another tree: refused, not silently used.
    cp.write_text(_checkpoint_text(5, root(leaves[:5])))
    assert merkle.main(["inclusion", str(pf), "--checkpoint", str(cp)]) == 2
    # A v1 checkpoint has no root.
    cp.write_text(_checkpoint_text(6, rt).replace(f"root: {rt.hex()}\n", ""))
    assert merkle.main(["inclusion", str(pf), "--checkpoint", str(cp)]) == 2

    # Tampered proof, tampered event, event at the wrong index.
    bad = dict(proof, audit_path=[flip(H(proof["audit_path"][0]), 3, 1).hex()] + proof["audit_path"][1:])
    pf.write_text(json.dumps(bad))
    assert merkle.main(["inclusion", str(pf), "--size", "6", "--root", rt.hex()]) == 1
    pf.write_text(json.dumps(dict(proof, leaf_data=data[3].decode().replace("alice", "mallory"))))
    assert merkle.main(["inclusion", str(pf), "--size", "6", "--root", rt.hex()]) == 1
    moved = merkle.inclusion_to_json(6, 2, leaves[3], inclusion_proof(leaves, 2), rt, leaf_data=data[3])
    pf.write_text(json.dumps(dict(moved, leaf_hash=leaves[3].hex())))
    assert merkle.main(["inclusion", str(pf), "--size", "6", "--root", rt.hex()]) == 1
    # Event bytes from a file.
    pf.write_text(json.dumps({k: v for k, v in proof.items() if k != "leaf_data"}))
    ev = tmp_path / "event.json"
    ev.write_bytes(data[3] + b"\n")
    assert merkle.main(["inclusion", str(pf), "--size", "6", "--root", rt.hex(), "--event", str(ev)]) == 0

    # Malformed input: exit 2.
    for junk in ("not json", "[]", json.dumps(dict(proof, root="zz")), json.dumps(dict(proof, tree_size=-1)),
                 json.dumps(dict(proof, audit_path=["00"])), json.dumps(dict(proof, leaf_index="3"))):
        pf.write_text(junk)
        assert merkle.main(["inclusion", str(pf), "--size", "6", "--root", rt.hex()]) == 2, junk
    assert merkle.main(["inclusion", str(tmp_path / "missing.json")]) == 2
    pf.write_text(json.dumps(proof))
    assert merkle.main(["inclusion", str(pf), "--size", "6"]) == 2  # size without root


def test_cli_consistency(tmp_path):
    leaves = make_leaves(b"cli", 13)
    r5, r13 = root(leaves[:5]), root(leaves)
    pf = tmp_path / "proof.json"
    pf.write_text(json.dumps(merkle.consistency_to_json(5, 13, r5, r13, consistency_proof(leaves, 5, 13))))
    c1, c2 = tmp_path / "cp1.txt", tmp_path / "cp2.txt"
    c1.write_text(_checkpoint_text(5, r5))
    c2.write_text(_checkpoint_text(13, r13))
    assert merkle.main(["consistency", str(pf), "--old-checkpoint", str(c1), "--new-checkpoint", str(c2)]) == 0
    assert merkle.main(["consistency", str(pf), "--old-size", "5", "--old-root", r5.hex(),
                        "--new-size", "13", "--new-root", r13.hex()]) == 0
    # A forked log: same old tree, different new leaves -> the CA cannot prove consistency.
    forked = leaves[:5] + make_leaves(b"fork", 8)
    pf.write_text(json.dumps(merkle.consistency_to_json(5, 13, r5, root(forked), consistency_proof(forked, 5, 13))))
    assert merkle.main(["consistency", str(pf), "--old-checkpoint", str(c1), "--new-checkpoint", str(c2)]) == 2
    proof = consistency_proof(forked, 5, 13)
    pf.write_text(json.dumps(merkle.consistency_to_json(5, 13, r5, r13, proof)))
    assert merkle.main(["consistency", str(pf), "--old-checkpoint", str(c1), "--new-checkpoint", str(c2)]) == 1
