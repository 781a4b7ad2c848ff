"""Verify the hash chain and build the Merkle leaves from event rows, whatever stores them.

Pure: it takes the stored rows (``[id, ts, kind, user, role, serial, key_id,
source, data, prev_hash, hash]``, oldest first, in batches) from any
backend and checks them; the store only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from ca.audit import merkle
from ca.audit.chain import GENESIS, canonical, chain_hash
from ca.errors import ChainBroken


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` checked: the number of events and the head of the chain."""

    count: int
    head: str
    checkpoint_count: int | None = None
    root: str = ""  # Merkle root over all events (hex)


def verify_rows(
    batches: Iterable[Sequence[tuple]],
    *,
    checkpoint_count: int | None = None,
    checkpoint_head: str | None = None,
    checkpoint_root: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Walk the whole chain; raise :class:`ChainBroken` naming the first bad event.

    With a checkpoint (``checkpoint_count`` events ending in
    ``checkpoint_head``), also catch a log cut short before that point,
    and a rewrite of everything up to it. ``progress`` is called with the
    size of each batch once it is checked.
    """
    prev, expect, head_at_checkpoint, root_at_checkpoint = GENESIS, 1, None, None
    tree = merkle.TreeBuilder()
    for rows in batches:
        for row in rows:
            event_id = row[0]
            if event_id != expect:
                raise ChainBroken(
                    f"event {expect} is missing: the log jumps from event {expect - 1} to {event_id}", expect
                )
            if row[9] != prev:
                raise ChainBroken(
                    f"event {event_id}: its prev_hash does not match event {event_id - 1}"
                    f" (event {event_id - 1} was changed, or rows were removed or inserted)",
                    event_id,
                )
            if chain_hash(prev, row) != row[10]:
                raise ChainBroken(f"event {event_id}: its contents do not match its hash (the row was changed)",
                                  event_id)
            prev = row[10]
            tree.append(merkle.leaf_hash(canonical(row)))
            if event_id == checkpoint_count:
                head_at_checkpoint = prev
                root_at_checkpoint = tree.root().hex()
            expect += 1
        if progress:
            progress(len(rows))
    count = expect - 1
    if checkpoint_count is not None:
        if count < checkpoint_count:
            raise ChainBroken(
                f"the log was truncated: the checkpoint covers {checkpoint_count} events, the log has {count}",
                count + 1,
            )
        if checkpoint_count > 0 and (head_at_checkpoint != checkpoint_head or (
                checkpoint_root is not None and root_at_checkpoint != checkpoint_root)):
            raise ChainBroken(
                f"event {checkpoint_count}: the chain does not match the checkpoint"
                f" (events up to {checkpoint_count} were rewritten)",
                checkpoint_count,
            )
    return VerifyReport(count, prev, checkpoint_count, tree.root().hex())


def leaf_hashes(batches: Iterable[Sequence[tuple]], upto: int) -> Iterator[bytes]:
    """The Merkle leaf hashes of events 1..``upto`` from their rows, in order (raises if any is missing)."""
    expect = 1
    for rows in batches:
        for row in rows:
            if row[0] != expect:
                raise ChainBroken(f"event {expect} is missing", expect)
            expect += 1
            yield merkle.leaf_hash(canonical(row))
    if expect - 1 != upto:
        raise ChainBroken(f"the log has {expect - 1} events, fewer than {upto}", expect)
