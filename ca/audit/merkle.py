"""An RFC 6962 / RFC 9162 Merkle tree over the audit log, with inclusion and
consistency proofs.

This file is meant to be read, and copied, on its own. It imports nothing but
the Python standard library (3.10 or later: hashlib, hmac, json, argparse), so a reviewer
who does not trust the CA host can copy it to their own machine, read it (it
is short) and check proofs with it::

    python3 merkle.py selftest
    python3 merkle.py inclusion proof.json --checkpoint cp.txt
    python3 merkle.py consistency proof.json --old-checkpoint cp1.txt --new-checkpoint cp2.txt

``--checkpoint`` only *reads* the ``events:`` and ``root:`` lines of a
checkpoint: check its SSHSIG signature with ``ssh-keygen -Y verify`` first
(see ``docs/verify-proofs.md``).

The tree
--------
Exactly the tree of RFC 6962 section 2.1 (the same in RFC 9162 section 2.1),
with SHA-256::

    MTH({})      = SHA-256()                            (the empty string)
    MTH({d0})    = SHA-256(0x00 || d0)                  leaf_hash(d0)
    MTH(D[n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   node_hash(...)
                   where k is the largest power of two smaller than n.

The 0x00 / 0x01 prefixes keep a leaf from ever being taken for an inner node.

The leaves of the audit log
---------------------------
Leaf *i* (counting from 0) is the event with ``id = i + 1``, and its leaf data
is ``ca.audit.canonical(row)``: the exact bytes the event's chain hash
covers, the compact JSON array ``[id, ts, kind, user, role, serial, key_id,
source, data]`` (UTF-8, no ASCII escaping, ``data`` being the stored JSON
text byte for byte). So ``leaf_hash(canonical(row))`` is the leaf hash. The
tree of size *n* covers events 1..n, and a signed checkpoint for *n* events
carries its root. (This module does not import ``ca.audit``, to stay
standalone; the convention lives there and here.)

What is trusted
---------------
A proof only says something relative to a root *and a tree size* that you
already trust, which is what a signed checkpoint gives you: always take both
from the same verified checkpoint, never from the proof. (The RFC 9162
checks do not by themselves pin the tree size: a proof for index 0 in a
3-leaf tree also passes for size 4 *with the 3-leaf root*, a root no honest
4-leaf tree has; a consistency proof for 1 -> 130 also passes as 1 -> 129
with the 130-leaf root. A size paired with the wrong root proves nothing.)

Errors
------
* The verifiers (``verify_inclusion``, ``verify_consistency``) return
  ``False`` for anything in the *values* that does not prove the claim:
  out-of-range index, ``old_size > new_size``, a missing, short, long or
  altered proof, a hash of the wrong length, a wrong root. They raise
  ``TypeError`` only for caller bugs in *types* (a size that is not an
  ``int``, a hash that is ``str`` rather than ``bytes``; ``bool`` is refused
  as an int).
* The generators (``inclusion_proof``, ``consistency_proof``) raise
  ``ValueError`` for impossible requests (index out of range,
  ``old_size > new_size``, fewer leaves than the tree size asked for).
* Consistency from the empty tree: ``consistency_proof(leaves, 0, n)`` is
  ``[]`` (the empty tree is a prefix of every tree; there is nothing to
  prove), and ``verify_consistency(0, n, old_root, new_root, [])`` is
  ``True`` exactly when ``old_root`` is the empty root ``SHA-256()`` and
  ``new_root`` is 32 bytes. Same size: the proof is ``[]`` and the roots
  must be equal. RFC 9162 only defines the proof for ``0 < old < new``.

Memory and time
---------------
``root`` and ``TreeBuilder`` keep one hash per set bit of the tree size (at
most 64), so the root of ten million events streams in constant memory.

The proof generators take any iterable of leaf hashes (a list, or a
generator reading database rows in id order) and pass over it once, holding
O(log n) hashes: they first work out which subtrees the proof needs (pure
arithmetic on the sizes), then hash each of those disjoint leaf ranges as the
leaves stream past. Time is O(n) per proof (each leaf up to the tree size is
hashed into one subtree). For very large logs, storing the roots of perfect
subtrees as they complete would make proofs O(log n); this module does not
need that to be correct.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
from collections.abc import Iterable, Sequence, Sized
from itertools import islice

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ProofError",
    "TreeBuilder",
    "consistency_proof",
    "consistency_to_json",
    "inclusion_proof",
    "inclusion_to_json",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof file (JSON) or checkpoint text that cannot be read."""


# -- hashing -----------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf (for the audit log, ``data = canonical(row)``)."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an inner node."""
    return hashlib.sha256(b"\x01" + bytes(left) + bytes(right)).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _is_hash(name: str, value: object) -> bool:
    """True if ``value`` is a 32-byte hash; False if bytes of another length; TypeError if not bytes."""
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return len(value) == HASH_SIZE


def _hashes(name: str, values: Iterable[bytes]) -> list[bytes] | None:
    """The proof as a list of bytes, or None if any element is not 32 bytes long."""
    if isinstance(values, (bytes, bytearray, str)):
        raise TypeError(f"{name} must be a list of hashes, not {type(values).__name__}")
    out = list(values)
    ok = True
    for i, v in enumerate(out):
        ok = _is_hash(f"{name}[{i}]", v) and ok
    return [bytes(v) for v in out] if ok else None


def _eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(bytes(a), bytes(b))


# -- the tree head -------------------------------------------------------------


class TreeBuilder:
    """The root of a growing tree, fed one leaf hash at a time, in O(log n) memory.

    It keeps the *frontier* (a "compact range" over ``[0, size)``): the roots
    of the perfect subtrees the leaves so far fall into, largest first, one
    per set bit of ``size``. Appending merges equal-sized subtrees like
    carrying in binary addition; the root folds the frontier from the right,
    which is exactly RFC 6962's MTH because its left subtree is always the
    largest power of two below ``n``.

    ``TreeBuilder(size, frontier)`` resumes from a saved ``(size, frontier)``.
    """

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()):
        _int("size", size)
        if size < 0:
            raise ValueError("size must be >= 0")
        hashes = _hashes("frontier", frontier)
        if hashes is None:
            raise ValueError("every frontier hash must be 32 bytes")
        if len(hashes) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} frontier hashes, not {len(hashes)}")
        self._size = size
        self._frontier = hashes

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """The perfect-subtree roots, left to right (what to save to resume later)."""
        return tuple(self._frontier)

    def append(self, leaf: bytes) -> None:
        """Add the next leaf *hash* (``leaf_hash(data)``, not the data)."""
        if not _is_hash("leaf", leaf):
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        node, n = bytes(leaf), self._size
        while n & 1:  # a subtree of the same size is waiting on the left: merge
            node = node_hash(self._frontier.pop(), node)
            n >>= 1
        self._frontier.append(node)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """MTH of the leaves appended so far (``EMPTY_ROOT`` for none)."""
        if not self._frontier:
            return EMPTY_ROOT
        node = self._frontier[-1]
        for left in reversed(self._frontier[:-1]):
            node = node_hash(left, node)
        return node


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH (RFC 6962 section 2.1) of a list or stream of leaf hashes, in O(log n) memory."""
    builder = TreeBuilder()
    builder.extend(leaf_hashes)
    return builder.root()


# -- proofs: which subtrees, then their hashes --------------------------------


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges ``[lo, hi)`` whose MTHs make PATH(index, D[size]), in proof order (leaf to root).

    RFC 6962 section 2.1.1: PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) if m < k,
    else PATH(m - k, D[k:n]) : MTH(D[0:k]). Walking down from the root finds the
    siblings root-first, so reverse at the end.
    """
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            out.append((mid, hi))
            hi = mid
        else:
            out.append((lo, mid))
            lo = mid
    out.reverse()
    return out


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs make PROOF(old, D[new]), in proof order.

    RFC 6962 section 2.1.2: PROOF(m, D[n]) = SUBPROOF(m, D[n], true), where
    SUBPROOF(m, D[m], true) = {} and SUBPROOF(m, D[m], false) = {MTH(D[m])};
    for m < n, with k the largest power of two below n:
    m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]);
    m > k:  SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
    """
    if old == 0 or old == new:
        return []
    out: list[tuple[int, int]] = []
    lo, hi, m, whole_old_tree = 0, new, old, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, whole_old_tree = lo + k, m - k, False
    if not whole_old_tree:
        out.append((lo, hi))  # SUBPROOF(m, D[m], false): this subtree comes first
    out.reverse()
    return out


def _hash_ranges(leaf_hashes: Iterable[bytes], ranges: list[tuple[int, int]]) -> list[bytes]:
    """MTH of each (disjoint) leaf range, in one pass over the leaves, holding O(log n) hashes."""
    results: list[bytes] = [b""] * len(ranges)
    leaves = iter(leaf_hashes)
    pos = 0
    for j in sorted(range(len(ranges)), key=lambda j: ranges[j][0]):
        lo, hi = ranges[j]
        if lo > pos:  # skip the leaves no proof element covers (the proved leaf, the old tree)
            next(islice(leaves, lo - pos, lo - pos), None)
        builder = TreeBuilder()
        builder.extend(islice(leaves, hi - lo))
        if builder.size != hi - lo:
            raise ValueError(f"the leaves ran out before leaf {hi - 1}")
        results[j] = builder.root()
        pos = hi
    return results


def _size_of(leaf_hashes: Iterable[bytes], tree_size: int | None) -> int:
    if tree_size is None:
        if not isinstance(leaf_hashes, Sized):
            raise TypeError("leaf_hashes has no len(): pass tree_size")
        return len(leaf_hashes)
    _int("tree_size", tree_size)
    if tree_size < 0:
        raise ValueError("tree_size must be >= 0")
    if isinstance(leaf_hashes, Sized) and tree_size > len(leaf_hashes):
        raise ValueError(f"tree_size {tree_size} is larger than the {len(leaf_hashes)} leaves given")
    return tree_size


def inclusion_proof(leaf_hashes: Iterable[bytes], index: int, tree_size: int | None = None) -> list[bytes]:
    """PATH(index, D[tree_size]) of RFC 6962 section 2.1.1: the audit path of leaf ``index``.

    ``leaf_hashes`` are the leaf hashes from leaf 0 on (a list, or any iterable
    when ``tree_size`` is given; only the first ``tree_size`` are read).
    ``tree_size`` defaults to ``len(leaf_hashes)``. ``index`` counts from 0
    (audit event id - 1). Raises ``ValueError`` unless ``0 <= index < tree_size``.
    """
    _int("index", index)
    size = _size_of(leaf_hashes, tree_size)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of {size} leaves")
    return _hash_ranges(leaf_hashes, _inclusion_ranges(index, size))


def consistency_proof(leaf_hashes: Iterable[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 6962 section 2.1.2: the tree of ``old_size`` is a prefix.

    ``[]`` when ``old_size`` is 0 or equal to ``new_size``. Raises ``ValueError``
    unless ``0 <= old_size <= new_size <= `` the number of leaves given.
    """
    _int("old_size", old_size)
    new = _size_of(leaf_hashes, new_size)
    if not 0 <= old_size <= new:
        raise ValueError(f"no consistency proof from size {old_size} to size {new}")
    return _hash_ranges(leaf_hashes, _consistency_ranges(old_size, new))


# -- verification (RFC 9162) -------------------------------------------------------


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True if ``proof`` shows leaf hash ``leaf_hash`` is leaf ``index`` of the tree ``(tree_size, root)``.

    RFC 9162 section 2.1.3.2. Take ``tree_size`` and ``root`` from a verified
    checkpoint. False for any bad value; TypeError for wrong types.
    """
    _int("index", index)
    _int("tree_size", tree_size)
    path = _hashes("proof", proof)
    leaf_ok, root_ok = _is_hash("leaf_hash", leaf_hash), _is_hash("root", root)  # both type-checked
    if not (leaf_ok and root_ok) or path is None:
        return False
    if not 0 <= index < tree_size:
        return False
    fn, sn, r = index, tree_size - 1, bytes(leaf_hash)
    for p in path:
        if sn == 0:  # the proof is longer than the path to the root
            return False
        if fn & 1 or fn == sn:  # p is a left sibling (or we are the last, unpaired node of a level)
            r = node_hash(p, r)
            if not fn & 1:  # climb past the levels where we have no sibling
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _eq(r, root)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """True if ``proof`` shows the tree ``(old_size, old_root)`` is a prefix of ``(new_size, new_root)``.

    RFC 9162 section 2.1.4.2, plus: equal sizes need an empty proof and equal
    roots; old size 0 needs an empty proof and ``old_root == EMPTY_ROOT``.
    Take sizes and roots from two verified checkpoints. False for any bad
    value; TypeError for wrong types.
    """
    _int("old_size", old_size)
    _int("new_size", new_size)
    path = _hashes("proof", proof)
    old_ok, new_ok = _is_hash("old_root", old_root), _is_hash("new_root", new_root)  # both type-checked
    if not (old_ok and new_ok) or path is None:
        return False
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and _eq(old_root, new_root)
    if old_size == 0:
        return not path and _eq(old_root, EMPTY_ROOT)
    if not path:
        return False
    if old_size & (old_size - 1) == 0:  # the old tree is a perfect subtree: its root is not sent
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _eq(fr, old_root) and _eq(sr, new_root)


# -- the JSON proof format (see docs/verify-proofs.md) ---------------------------


def inclusion_to_json(tree_size: int, leaf_index: int, leaf_hash: bytes, audit_path: Sequence[bytes],
                      root: bytes, leaf_data: bytes | None = None) -> dict:
    """An inclusion proof as a JSON-ready dict; ``leaf_data`` (the canonical event bytes) is optional."""
    out = {
        "tree_size": tree_size,
        "leaf_index": leaf_index,
        "leaf_hash": bytes(leaf_hash).hex(),
        "audit_path": [bytes(h).hex() for h in audit_path],
        "root": bytes(root).hex(),
    }
    if leaf_data is not None:
        out["leaf_data"] = bytes(leaf_data).decode("utf-8")
    return out


def consistency_to_json(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                        proof: Sequence[bytes]) -> dict:
    """A consistency proof as a JSON-ready dict."""
    return {
        "old_size": old_size,
        "new_size": new_size,
        "old_root": bytes(old_root).hex(),
        "new_root": bytes(new_root).hex(),
        "proof": [bytes(h).hex() for h in proof],
    }


def _field_int(obj: dict, key: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ProofError(f"{key!r} must be a non-negative integer")
    return v


def _field_hash(obj: dict | list, key: str | int, where: str | None = None) -> bytes:
    v = obj[key] if isinstance(obj, list) else obj.get(key)
    name = where or repr(key)
    if not isinstance(v, str):
        raise ProofError(f"{name} must be a hex string")
    try:
        h = bytes.fromhex(v)
    except ValueError:
        raise ProofError(f"{name} is not hex") from None
    if len(h) != HASH_SIZE:
        raise ProofError(f"{name} is {len(h)} bytes, not {HASH_SIZE}")
    return h


def _field_list(obj: dict, key: str) -> list[bytes]:
    v = obj.get(key)
    if not isinstance(v, list):
        raise ProofError(f"{key!r} must be a list of hex strings")
    return [_field_hash(v, i, f"{key}[{i}]") for i in range(len(v))]


def read_checkpoint_fields(text: str) -> tuple[int, bytes]:
    """``(events, root)`` from the text of a checkpoint. Does NOT check its signature.

    Verify the checkpoint with ``ssh-keygen -Y verify`` first: this only
    reads the ``events:`` and ``root:`` lines above the signature block.
    """
    message = text.split("-----BEGIN SSH SIGNATURE-----", 1)[0]
    fields = {}
    for line in message.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields.setdefault(key, value.strip())
    if "events" not in fields or not fields["events"].isdigit():
        raise ProofError("the checkpoint has no 'events:' line")
    if "root" not in fields:
        raise ProofError("the checkpoint has no 'root:' line (a v1 checkpoint, made before the Merkle tree)")
    return int(fields["events"]), _field_hash(fields, "root", "the checkpoint's root")


# -- command line ----------------------------------------------------------------------


def _pinned(args_size: int | None, args_root: str | None, checkpoint: str | None, what: str,
            proof_size: int, proof_root: bytes) -> tuple[int, bytes, list[str]]:
    """The (size, root) to trust: from a checkpoint or the command line; the proof's own values only with a warning."""
    notes = []
    if checkpoint is not None:
        with open(checkpoint, encoding="utf-8") as f:
            size, root_ = read_checkpoint_fields(f.read())
        notes.append(f"{what}: size and root read from {checkpoint} (its signature must be checked separately)")
    elif args_size is not None and args_root is not None:
        size, root_ = args_size, _field_hash({"r": args_root}, "r", f"the {what} root given")
    elif args_size is None and args_root is None:
        size, root_ = proof_size, proof_root
        notes.append(f"WARNING: {what} size and root taken from the proof itself: this only shows the proof is"
                     " well formed; pin them to a signed checkpoint to prove anything")
    else:
        raise ProofError(f"give both the {what} size and the {what} root, or neither")
    if (size, root_) != (proof_size, proof_root):
        raise ProofError(f"the proof is for {what} size {proof_size} root {proof_root.hex()},"
                         f" but the trusted {what} is size {size} root {root_.hex()}")
    return size, root_, notes


def _cmd_inclusion(args: argparse.Namespace) -> bool:
    with open(args.proof, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ProofError("the proof must be a JSON object")
    index, proof_size = _field_int(obj, "leaf_index"), _field_int(obj, "tree_size")
    leaf, path, proof_root = _field_hash(obj, "leaf_hash"), _field_list(obj, "audit_path"), _field_hash(obj, "root")
    size, trusted_root, notes = _pinned(args.size, args.root, args.checkpoint, "tree", proof_size, proof_root)
    for note in notes:
        print(note, file=sys.stderr)
    data = None
    if args.event is not None:
        with open(args.event, "rb") as f:
            data = f.read().removesuffix(b"\n")
    elif isinstance(obj.get("leaf_data"), str):
        data = obj["leaf_data"].encode("utf-8")
    if data is not None:
        if not _eq(leaf_hash(data), leaf):
            print("FAIL: the event bytes do not hash to leaf_hash", file=sys.stderr)
            return False
        try:  # iast audit convention: leaf i is the event with id i + 1
            event_id = json.loads(data)[0]
        except (ValueError, IndexError, KeyError, TypeError):
            event_id = None
        if isinstance(event_id, int) and event_id != index + 1:
            print(f"FAIL: the event has id {event_id} but sits at leaf {index} (expected id {index + 1})",
                  file=sys.stderr)
            return False
        print(f"event: {data.decode('utf-8', 'replace')}")
    ok = verify_inclusion(leaf, index, size, path, trusted_root)
    print(f"{'OK' if ok else 'FAIL'}: leaf {index} (event {index + 1}) {'is' if ok else 'is NOT shown to be'}"
          f" in the tree of {size} events with root {trusted_root.hex()}")
    return ok


def _cmd_consistency(args: argparse.Namespace) -> bool:
    with open(args.proof, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ProofError("the proof must be a JSON object")
    p_old, p_new = _field_int(obj, "old_size"), _field_int(obj, "new_size")
    p_old_root, p_new_root = _field_hash(obj, "old_root"), _field_hash(obj, "new_root")
    path = _field_list(obj, "proof")
    old, old_root, n1 = _pinned(args.old_size, args.old_root, args.old_checkpoint, "old", p_old, p_old_root)
    new, new_root, n2 = _pinned(args.new_size, args.new_root, args.new_checkpoint, "new", p_new, p_new_root)
    for note in n1 + n2:
        print(note, file=sys.stderr)
    ok = verify_consistency(old, new, old_root, new_root, path)
    print(f"{'OK' if ok else 'FAIL'}: the tree of {old} events {'is' if ok else 'is NOT shown to be'}"
          f" a prefix of the tree of {new} events")
    return ok


# RFC 6962 test vectors (google/certificate-transparency, transparency-dev/merkle).
_VECTOR_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
_VECTOR_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
_VECTOR_ROOT_6 = "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"
_VECTOR_PATH_5_OF_8 = ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                       "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                       "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]
_VECTOR_CONSISTENCY_6_8 = ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                           "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                           "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]


def _cmd_selftest(_args: argparse.Namespace) -> bool:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in _VECTOR_LEAVES]
    path = [bytes.fromhex(x) for x in _VECTOR_PATH_5_OF_8]
    cons = [bytes.fromhex(x) for x in _VECTOR_CONSISTENCY_6_8]
    r8, r6 = bytes.fromhex(_VECTOR_ROOT_8), bytes.fromhex(_VECTOR_ROOT_6)
    checks = [
        root(leaves) == r8,
        root(leaves[:6]) == r6,
        inclusion_proof(leaves, 5) == path,
        verify_inclusion(leaves[5], 5, 8, path, r8),
        not verify_inclusion(leaves[4], 5, 8, path, r8),
        consistency_proof(leaves, 6, 8) == cons,
        verify_consistency(6, 8, r6, r8, cons),
        not verify_consistency(6, 8, r8, r6, cons),
    ]
    ok = all(checks)
    print(f"{'OK' if ok else 'FAIL'}: RFC 6962 test vectors ({sum(checks)}/{len(checks)} checks)")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 merkle.py {inclusion,consistency,selftest} ...``: exit 0 verified, 1 not, 2 unreadable input."""
    ap = argparse.ArgumentParser(prog="merkle.py", description="Check iast-ssh audit log Merkle proofs offline.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    inc = sub.add_parser("inclusion", help="check that one event is in a checkpointed tree")
    inc.add_argument("proof", help="inclusion proof JSON")
    inc.add_argument("--checkpoint", help="a checkpoint file you have verified with ssh-keygen -Y verify")
    inc.add_argument("--size", type=int, help="trusted tree size (events:) instead of --checkpoint")
    inc.add_argument("--root", help="trusted root (hex) instead of --checkpoint")
    inc.add_argument("--event", help="file with the event's canonical bytes (instead of the proof's leaf_data)")
    con = sub.add_parser("consistency", help="check that an older checkpointed tree is a prefix of a newer one")
    con.add_argument("proof", help="consistency proof JSON")
    con.add_argument("--old-checkpoint")
    con.add_argument("--new-checkpoint")
    con.add_argument("--old-size", type=int)
    con.add_argument("--old-root")
    con.add_argument("--new-size", type=int)
    con.add_argument("--new-root")
    sub.add_parser("selftest", help="check this copy against the RFC 6962 test vectors")
    args = ap.parse_args(argv)
    run = {"inclusion": _cmd_inclusion, "consistency": _cmd_consistency, "selftest": _cmd_selftest}[args.cmd]
    try:
        return 0 if run(args) else 1
    except (OSError, ValueError) as e:  # ProofError, bad JSON, unreadable files
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
