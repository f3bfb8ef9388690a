"""Tests of ``StateMachine.snapshot_chunks``, ``freeze`` (snapshots while writes go on) and the sorted
key index behind them.

How:
* A reference encoder (build the whole map from ``range()`` and the dedup table, one ``cbor2.dumps``;
  entries packed by this file's own ``pack``) is compared byte for byte with the joined pieces, for 0
  keys, sizes around the chunk boundary (small ``entries_per_chunk``), array lengths around every CBOR
  head size, str and bytes values and a dedup table with several clients.
* A frozen view's pieces, pulled one at a time between writes of every kind (puts, overwrites, cas,
  single and prefix deletes, a delete of every key, dedup traffic), join to the snapshot taken at the
  freeze; the writes themselves are unaffected.
* Format 1 snapshots (what earlier versions wrote) still restore to the same state.
* Restoring the joined pieces gives the same hash, snapshot and dedup answers; restore is also run
  with a tiny step so its progressive consumption of the decoded list crosses many steps.
* The index (``_SortedKeys``) is checked against a sorted set under random adds and removes with a tiny
  block size, so splits, merges and emptied blocks all happen.
* Views share the index's blocks (copy-on-write): with a tiny block size, random writes that split and
  merge blocks two open views hold leave both views' snapshots intact; a view closed first does not end
  the protection of another's blocks.
"""
from __future__ import annotations

import hashlib
import random
import struct

import cbor2
import pytest

from kvstore import statemachine
from kvstore.commands import encode_cas, encode_delete, encode_put
from kvstore.statemachine import SnapshotError, StateMachine, _array_header, _SortedKeys

A = b"client-a"
B = b"client-b"


def pack(key: str, value, version: int, mod_revision: int) -> bytes:
    """A packed entry as format 2 stores it: type (0 bytes, 1 str), version, mod_revision, then a
    BLAKE2b-64 digest of the key's length and bytes, those fields and the value, then the value."""
    raw = value if type(value) is bytes else value.encode("utf-8")
    head = struct.pack(">BQQ", 0 if type(value) is bytes else 1, version, mod_revision)
    key_bytes = key.encode("utf-8")
    digest = hashlib.blake2b(len(key_bytes).to_bytes(4, "big") + key_bytes + head + raw, digest_size=8)
    return head + digest.digest() + raw


def reference_snapshot(sm: StateMachine) -> bytes:
    """The format 2 snapshot of ``sm``, built the slow and obvious way: one ``cbor2.dumps`` of the map."""
    flat: list = []
    for entry in sm.range():
        flat.extend((entry.key, pack(entry.key, entry.value, entry.version, entry.mod_revision)))
    return cbor2.dumps({"format": 3, "revision": sm.revision, "entries": flat, "clients": _clients(sm),
                        "changes": [[s, c] for s, c in sm.changes]})


def reference_snapshot_v1(sm: StateMachine) -> bytes:
    """The format 1 snapshot of ``sm`` (what earlier versions wrote): four fields per entry."""
    flat: list = []
    for entry in sm.range():
        flat.extend((entry.key, entry.value, entry.version, entry.mod_revision))
    return cbor2.dumps({"format": 1, "revision": sm.revision, "entries": flat, "clients": _clients(sm)})


def _clients(sm: StateMachine) -> list:
    clients = []
    for client_id, client in sm._clients.items():
        results: list = []
        for request_id in sorted(client.results):
            results.append(request_id)
            results.extend(client.results[request_id])
        clients.append([client_id, client.floor, client.last_revision, results])
    return clients


def machine(keys: int, clients: int = 3, seed: int = 0) -> StateMachine:
    """``keys`` keys (inserted in random order, str and bytes values of varied length, some updated
    twice) written by ``clients`` clients, plus a few deletes, so the dedup table is not empty."""
    rng = random.Random(seed)
    sm = StateMachine()
    rids = {}
    names = [f"k/{rng.randrange(10**9):09d}/{i}" for i in range(keys)]
    rng.shuffle(names)
    client_ids = [b"c%d" % i for i in range(max(clients, 1))]

    def write(command_for):
        client = rng.choice(client_ids)
        rid = rids.get(client, 0) + 1
        rids[client] = rid
        sm.apply(command_for(client, rid))

    for i, key in enumerate(names):
        value = rng.randbytes(rng.randrange(0, 40)) if i % 2 else "v" * rng.randrange(0, 40) + "é"
        write(lambda c, r, key=key, value=value: encode_put(c, r, 0, key, value))
        if i % 5 == 0:
            write(lambda c, r, key=key: encode_put(c, r, 0, key, b"again"))
    write(lambda c, r: encode_delete(c, r, 0, "no-such-key"))
    return sm


@pytest.mark.parametrize("per_chunk", [1, 3, 4, 7])
@pytest.mark.parametrize("keys", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 21, 29])
def test_joined_chunks_are_byte_identical_to_the_one_call_encoding(keys, per_chunk):
    sm = machine(keys, seed=keys)
    pieces = list(sm.snapshot_chunks(per_chunk))
    assert all(type(p) is bytes for p in pieces)
    joined = b"".join(pieces)
    assert joined == reference_snapshot(sm) == sm.snapshot()
    # Pieces: the head, one per batch of entries, the clients head, then the client batches.
    entry_pieces = -(-keys // per_chunk)
    assert len(pieces) >= 2 + entry_pieces


def test_empty_machine_snapshot_is_unchanged():
    sm = StateMachine()
    assert b"".join(sm.snapshot_chunks()) == sm.snapshot() == reference_snapshot(sm)
    assert sm.snapshot() == cbor2.dumps({"format": 3, "revision": 0, "entries": [], "clients": [], "changes": []})
    assert StateMachine.restore(sm.snapshot()).state_hash() == sm.state_hash()


@pytest.mark.parametrize("keys", [11, 12, 127, 128, 32767, 32768])
def test_entry_array_heads_of_every_size_match_cbor2(keys):
    # 2 * keys items: 10/12 (1-byte head vs 2), 126/128 (2 vs 3), 32766/32768 (3 vs 5 bytes).
    sm = StateMachine()
    for i in range(keys):
        sm.apply(encode_put(A, i + 1, i + 1, f"key{i:06d}", b"x" if i % 3 else "y"))
    assert b"".join(sm.snapshot_chunks(1000)) == reference_snapshot(sm)


@pytest.mark.parametrize("length", [0, 1, 23, 24, 255, 256, 65535, 65536, 70000])
def test_array_header_matches_cbor2(length):
    encoded = cbor2.dumps([0] * length)
    assert encoded == _array_header(length) + b"\x00" * length


def test_array_header_of_huge_lengths():
    assert _array_header(2**32 - 1) == b"\x9a\xff\xff\xff\xff"
    assert _array_header(2**32) == b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00"


def test_dedup_table_split_across_pieces_and_restored():
    sm = StateMachine()
    # Many clients, some with many remembered results, so client batches split at several places.
    for c in range(40):
        client = b"client-%02d" % c
        for rid in range(1, (c % 7) * 3 + 2):
            sm.apply(encode_put(client, rid, 0, f"key{c % 9}", b"v%d" % rid if rid % 2 else f"s{rid}"))
    sm.apply(encode_put(b"client-05", 1, 0, "key5", b"dup"))  # a duplicate: LRU order changes
    for per_chunk in (1, 2, 5, 11, 20_000):
        assert b"".join(sm.snapshot_chunks(per_chunk)) == reference_snapshot(sm)
    restored = StateMachine.restore(b"".join(sm.snapshot_chunks(3)))
    assert restored.snapshot() == sm.snapshot()
    assert [restored.remembered(b"client-%02d" % c) for c in range(40)] == \
        [sm.remembered(b"client-%02d" % c) for c in range(40)]


def test_restore_of_joined_chunks_keeps_state_and_answers_retries():
    sm = machine(50, clients=2, seed=7)
    first = encode_put(A, 1, 0, "k", "v1")
    sm.apply(first)
    cas_like = encode_put(B, 1, 0, "j", b"bytes")
    sm.apply(cas_like)
    sm.apply(encode_put(A, 2, 2, "k", "v2"))  # A's floor is 2: request 1 was answered
    data = b"".join(sm.snapshot_chunks(4))
    restored = StateMachine.restore(data)
    assert restored.state_hash() == sm.state_hash()
    assert restored.range() == sm.range() and restored.revision == sm.revision
    assert b"".join(restored.snapshot_chunks(4)) == data
    revision = restored.revision
    assert restored.apply(cas_like)[1] == sm.apply(cas_like)[1]  # remembered: first result again
    assert restored.apply(first)[1] == {"error": "stale request"}
    assert restored.revision == revision
    # Both continue identically, including ordered reads and prefix deletes through the index.
    for command in [encode_put(A, 3, 0, "k/zzz", "new"), encode_delete(A, 4, 0, "k/1", prefix=True),
                    encode_delete(B, 2, 0, "j")]:
        assert restored.apply(command) == sm.apply(command)
    assert restored.range("k/") == sm.range("k/")
    assert restored.snapshot() == sm.snapshot() == reference_snapshot(sm)


def test_restore_in_many_small_steps(monkeypatch):
    monkeypatch.setattr(statemachine, "_RESTORE_ENTRIES_PER_STEP", 3)
    sm = machine(40, seed=3)
    restored = StateMachine.restore(sm.snapshot())
    assert restored.snapshot() == sm.snapshot()
    assert restored.state_hash() == sm.state_hash()
    # The order check also works across step boundaries.
    top = cbor2.loads(sm.snapshot())
    flat = top["entries"]
    for swap in (5, 6, 8):  # swap entries swap and swap + 1 (the step boundary is every 3 entries)
        bad = list(flat)
        bad[4 * swap:4 * swap + 8] = flat[4 * swap + 4:4 * swap + 8] + flat[4 * swap:4 * swap + 4]
        with pytest.raises(SnapshotError, match="increasing"):
            StateMachine.restore(cbor2.dumps({**top, "entries": bad}))


def test_writes_between_pieces_do_not_show_in_the_snapshot():
    sm = machine(30, seed=1)
    twin = StateMachine.restore(sm.snapshot())
    expected = sm.snapshot()
    keys = [entry.key for entry in sm.range()]
    pieces = sm.snapshot_chunks(3)
    taken = [next(pieces)]
    writes = [
        encode_put(A, 100, 0, keys[0], "changed"),          # overwrite (twice)
        encode_put(A, 101, 0, keys[0], b"again"),
        encode_put(A, 102, 0, "a-new-key", "v"),             # insert in front of everything
        encode_delete(A, 103, 0, keys[-1]),                  # delete a key not yet written out
        encode_cas(A, 104, 0, keys[5], None, "no swap"),    # a cas that does not swap
        encode_cas(A, 105, 0, "zz-new", None, "created"),   # a cas that creates
        encode_delete(A, 106, 0, "k/", prefix=True),         # the keys of machine() all start with k/
        encode_put(B, 1, 0, keys[3], "back again"),          # recreated after the prefix delete
    ]
    for command in writes:
        assert sm.apply(command) == twin.apply(command)  # writes behave as without a snapshot
        taken.append(next(pieces))
    taken.extend(pieces)
    assert b"".join(taken) == expected
    assert sm.snapshot() == twin.snapshot() == reference_snapshot(twin)
    assert sm._journals == []  # the generator ended: nothing is journaled any more


def test_a_delete_of_every_key_keeps_the_frozen_dict():
    sm = machine(12, seed=4)
    expected = sm.snapshot()
    with sm.freeze() as frozen:
        sm.apply(encode_delete(A, 50, 0, "", prefix=True))
        assert len(sm) == 0
        sm.apply(encode_put(A, 51, 0, "k/fresh", "v"))
        assert b"".join(frozen.chunks(5)) == expected
    assert [entry.key for entry in sm.range()] == ["k/fresh"]


def test_two_views_and_a_closed_one():
    sm = machine(10, seed=5)
    first_bytes = sm.snapshot()
    first = sm.freeze()
    sm.apply(encode_put(A, 60, 0, "k/x", "one"))
    second_bytes = sm.snapshot()
    second = sm.freeze()
    sm.apply(encode_put(A, 61, 0, "k/x", "two"))
    sm.apply(encode_delete(A, 62, 0, "k/x"))
    assert b"".join(second.chunks(4)) == second_bytes
    assert b"".join(first.chunks(4)) == first_bytes
    first.close()
    first.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        list(first.chunks(4))
    second.close()
    assert sm._journals == []


def test_format_1_snapshots_still_restore():
    sm = machine(25, clients=2, seed=6)
    old = StateMachine.restore(reference_snapshot_v1(sm))
    assert old.state_hash() == sm.state_hash()
    assert old.snapshot() == sm.snapshot()
    assert [old.remembered(c) for c in (b"c0", b"c1")] == [sm.remembered(c) for c in (b"c0", b"c1")]


def test_reads_between_pieces_are_fine():
    sm = machine(20, seed=2)
    expected = sm.snapshot()
    pieces = []
    for piece in sm.snapshot_chunks(2):
        pieces.append(piece)
        sm.range("k/")
        sm.state_hash()
        sm.get("k")
    assert b"".join(pieces) == expected


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_entries_per_chunk_must_be_positive(bad):
    with pytest.raises(ValueError):
        next(StateMachine().snapshot_chunks(bad))


def test_sorted_keys_index_against_a_sorted_set(monkeypatch):
    monkeypatch.setattr(_SortedKeys, "_LOAD", 4)  # blocks of 4..8: splits and merges all the time
    rng = random.Random(5)
    index = _SortedKeys()
    model: set[str] = set()
    universe = [f"{rng.choice('abc')}{rng.randrange(300)}" for _ in range(400)]
    for step in range(6000):
        key = rng.choice(universe)
        # Phases: mostly adds, then mostly removes, so blocks fill, split, drain and merge.
        adding = rng.random() < (0.8 if (step // 1500) % 2 == 0 else 0.2)
        if adding and key not in model:
            index.add(key)
            model.add(key)
        elif not adding and key in model:
            index.remove(key)
            model.remove(key)
        if step % 50 == 0:
            assert list(index) == sorted(model) and len(index) == len(model)
            assert all(0 < len(b) <= 8 for b in index.blocks())
            assert index._maxes == [b[-1] for b in index.blocks()]
            for prefix in ("", "a", "b1", "c29", "zz"):
                assert index.with_prefix(prefix) == sorted(k for k in model if k.startswith(prefix))
    rebuilt = _SortedKeys.from_sorted(sorted(model))
    assert list(rebuilt) == list(index)


def test_prefix_delete_of_everything_and_of_a_part():
    sm = machine(30, seed=9)
    keys = [e.key for e in sm.range()]
    some = keys[3][:4]
    result = sm.apply(encode_delete(A, 1, 0, some, prefix=True))[1]
    assert result["deleted"] == sum(k.startswith(some) for k in keys)
    assert [e.key for e in sm.range()] == [k for k in keys if not k.startswith(some)]
    sm.apply(encode_delete(A, 2, 0, "", prefix=True))
    assert sm.range() == [] and len(sm) == 0
    sm.apply(encode_put(A, 3, 0, "back", "v"))
    assert [e.key for e in sm.range()] == ["back"]
    assert sm.snapshot() == reference_snapshot(sm)


def test_writes_after_a_delete_of_every_key_do_not_leak_into_the_view():
    """A delete of every key swaps in a new dict and leaves the view the old one; later writes to the
    same keys (recreated, then overwritten) must not reach the view through its journal."""
    sm = machine(12, seed=8)
    keys = [entry.key for entry in sm.range()]
    expected = sm.snapshot()
    with sm.freeze() as frozen:
        sm.apply(encode_put(A, 70, 0, keys[0], "before the delete"))  # journaled
        sm.apply(encode_delete(A, 71, 0, "", prefix=True))
        for rq, value in ((72, "recreated"), (73, "overwritten"), (74, "again")):
            sm.apply(encode_put(A, rq, 0, keys[1], value))
            sm.apply(encode_put(A, rq + 10, 0, keys[0], value))
        assert b"".join(frozen.chunks(5)) == expected
    assert [entry.value for entry in sm.range()] == ["again", "again"]


def test_frozen_views_share_index_blocks_and_keep_them_through_splits_and_merges(monkeypatch):
    """A view holds the index's blocks themselves (copy-on-write) instead of copies. With blocks of 4
    to 8 keys, random inserts, overwrites and deletes after two freezes split, drain and merge blocks
    both views hold; each view still gives the snapshot taken at its freeze, the live index stays
    sorted, and a twin fed the same writes without views ends byte-identical."""
    monkeypatch.setattr(_SortedKeys, "_LOAD", 4)
    rng = random.Random(11)
    sm, twin = StateMachine(), StateMachine()
    universe = [f"k{rng.randrange(10**6):06d}" for _ in range(160)]
    rid = 0

    def write() -> None:
        nonlocal rid
        rid += 1
        key = rng.choice(universe)
        if rng.random() < 0.4:
            command = encode_delete(A, rid, 0, key)
        else:
            command = encode_put(A, rid, 0, key, rng.choice(["v", b"w", "x" * rng.randrange(30)]))
        assert sm.apply(command) == twin.apply(command)

    for _ in range(150):
        write()
    first_expected = sm.snapshot()
    first = sm.freeze()
    assert all(a is b for a, b in zip(first._blocks, sm._index.blocks(), strict=True))  # shared, not copied
    first_pieces = first.chunks(3)
    first_taken = [next(first_pieces)]
    for _ in range(60):
        write()
        first_taken.append(next(first_pieces, b""))
    second_expected = sm.snapshot()
    with sm.freeze() as second:
        for _ in range(200):
            write()
        assert b"".join(second.chunks(2)) == second_expected
    for _ in range(60):  # more writes while only the first view is open
        write()
        first_taken.append(next(first_pieces, b""))
    first_taken.extend(first_pieces)
    assert b"".join(first_taken) == first_expected
    first.close()
    assert sm._index._shared == {}  # no view left: blocks change in place again
    blocks = sm._index.blocks()
    assert list(sm._index) == sorted(e.key for e in twin.range()) == [e.key for e in sm.range()]
    assert sm._index._maxes == [b[-1] for b in blocks] and all(0 < len(b) <= 8 for b in blocks)
    assert sm.snapshot() == twin.snapshot() == reference_snapshot(twin)


def test_a_view_closed_first_leaves_the_other_views_blocks_protected():
    """Two views over the same index blocks; the later one closes first. Inserts and deletes after that
    must still leave the earlier view's blocks alone (copy-on-write ends only when no view is open)."""
    sm = machine(30, seed=12)
    keys = [entry.key for entry in sm.range()]
    expected = sm.snapshot()
    first = sm.freeze()
    sm.freeze().close()
    for rq, key in enumerate(["a-front", "k/middle", "zz-end"], start=80):
        sm.apply(encode_put(A, rq, 0, key, "new"))
    for rq, key in enumerate(keys[::3], start=90):
        sm.apply(encode_delete(A, rq, 0, key))
    assert b"".join(first.chunks(4)) == expected
    first.close()
    assert sm._index._shared == {}
