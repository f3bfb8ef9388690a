"""``StateMachine.restore_stream(..., checked_file=True)``: a node restarting from its own snapshot file,
whose checksum the storage verified, takes the entries as they are instead of checking each one.

It must rebuild exactly the state the full restore rebuilds (entries, key order, state hash, dedup
answers, membership changes), on format 2 and 3 snapshots; a format 1 file still goes through the full
checks; the map around the entries is still validated; and a real node restarted from a snapshot file
serves every key (the server passes ``checked_file`` only for the file ``Storage.open_snapshot``
checked)."""
from __future__ import annotations

import io
import random

import cbor2
import pytest

from kvstore import statemachine
from kvstore.commands import encode_delete, encode_put
from kvstore.statemachine import SnapshotError, StateMachine

A = b"client-a"


def busy_machine(seed: int, keys: int = 500) -> StateMachine:
    rng = random.Random(seed)
    sm = StateMachine()
    for n in range(1, keys * 3):
        key = f"k{rng.randrange(keys):05d}"
        if rng.random() < 0.15:
            sm.apply(encode_delete(A, n, max(1, n - 5), key))
        else:
            value: str | bytes = rng.randbytes(rng.randrange(40)) if rng.random() < 0.3 else "v" * rng.randrange(50)
            sm.apply(encode_put(A, n, max(1, n - 5), key, value))
    return sm


def restored(data: bytes, checked: bool) -> StateMachine:
    return StateMachine.restore_stream(io.BytesIO(data), len(data), checked_file=checked)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_checked_file_restores_the_same_state_as_the_full_checks(seed):
    sm = busy_machine(seed)
    data = sm.snapshot()
    fast, full = restored(data, True), restored(data, False)
    assert fast.state_hash() == full.state_hash() == sm.state_hash()
    assert [tuple(e) for e in fast.range()] == [tuple(e) for e in full.range()] == [tuple(e) for e in sm.range()]
    assert [tuple(e) for e in fast.range("k001")] == [tuple(e) for e in sm.range("k001")]
    assert fast.remembered(A) == sm.remembered(A)
    assert fast.snapshot() == data
    # The index works on: a new key lands in order, and the hash moves as the original's does.
    for machine in (fast, sm):
        machine.apply(encode_put(A, 10_000, 9_999, "k00000x", "new"))
    assert fast.state_hash() == sm.state_hash()
    assert [e.key for e in fast.range()] == sorted(e.key for e in fast.range())


def test_an_empty_machine_restores_from_a_checked_file():
    data = StateMachine().snapshot()
    assert len(restored(data, True)) == 0
    assert restored(data, True).state_hash() == StateMachine().state_hash()


def test_a_format_1_file_still_gets_every_check():
    # format 1 (four fields per entry) has no packed entries to take as they are
    bad = cbor2.dumps({"format": 1, "revision": 3, "entries": ["b", "x", 1, 1, "a", "y", 1, 1], "clients": []})
    with pytest.raises(SnapshotError, match="increasing"):
        restored(bad, True)


def test_the_map_around_the_entries_is_still_checked():
    sm = busy_machine(4, keys=20)
    top = cbor2.loads(sm.snapshot())
    for broken, match in (
        ({**top, "entries": top["entries"][:-1]}, "flat list"),
        ({**top, "entries": top["entries"][:2] * 2}, "not distinct"),
        ({**top, "revision": -1}, "revision"),
        ({**top, "format": 99}, "format"),
        ({**top, "clients": "nope"}, "clients"),
    ):
        with pytest.raises(SnapshotError, match=match):
            restored(cbor2.dumps(broken), True)


def test_a_checked_file_restores_across_many_steps(monkeypatch):
    # The entries are taken a step at a time from the end of the list: with a tiny step the pieces
    # must still join into one ascending index, and duplicates across pieces are still found.
    monkeypatch.setattr(statemachine, "_RESTORE_ENTRIES_PER_STEP", 7)
    sm = busy_machine(5, keys=200)
    data = sm.snapshot()
    fast = restored(data, True)
    assert [tuple(e) for e in fast.range()] == [tuple(e) for e in sm.range()]
    assert fast.state_hash() == sm.state_hash()
    top = cbor2.loads(data)
    top["entries"] = top["entries"] + top["entries"][:2]  # the first key again, in another piece
    with pytest.raises(SnapshotError, match="not distinct"):
        restored(cbor2.dumps(top), True)
