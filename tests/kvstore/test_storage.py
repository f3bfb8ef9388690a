"""Tests of kvstore.storage: the data directory survives crashes, torn writes and full disks.

How: every test works in pytest's ``tmp_path``. Durability is checked by closing (or "crashing") a
Storage and opening the directory again, then comparing ``recovered`` with ``DurableState.replay`` of
the records that must have survived. Torn writes are made by truncating the log file at chosen byte
offsets (every offset of the last record, and hypothesis-chosen offsets in random logs); corruption by
flipping bytes; a full disk by replacing the Storage's ``_write``/``_fdatasync`` seams with fakes that
raise ENOSPC. Logs written here start with a sync mark (``FRESH``) and later batches may carry one;
the sync-mark rules themselves are tested in ``test_log_sync_marks.py``, fsync and write failures in
``test_storage_disk_faults.py``. Real process crashes use ``KV_FAILPOINTS`` in a child interpreter, which dies with
``os._exit(1)`` at the named point; the parent then recovers the directory.
"""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvstore import failpoints
from kvstore.storage import (
    _FENCE,
    _FENCE_NO_SYNC,
    FENCE_BYTES,
    RECORD_HEADER,
    DiskFailed,
    Storage,
    StorageError,
    StorageFull,
    _covering_mark,
    _encode_mark,
    encode_records,
    log_file_name,
    place_records,
    snapshot_file_name,
)
from paxos.actions import AcceptRecord, DecideRecord, DurableState, PromiseRecord, pack_value
from paxos.ballot import Ballot

CLUSTER = "test"
# A log this version creates starts with a sync mark covering itself (see "Sync marks" in storage.py).
FRESH_RAW = _covering_mark(0, 0, FENCE_BYTES)  # (after the fence that every log of this version starts with)


def placed(data: bytes, slot: int = 0, fence: bytes = _FENCE) -> bytes:
    """``data``, whole records from the start of ``log-<slot>.wal`` after its fence, as the log holds them:
    the fence, then each record's crc32 XORed with its place's mask ("Records know their place" in
    storage.py)."""
    return fence + bytes(place_records(data, FENCE_BYTES, slot))


FRESH = placed(FRESH_RAW)


def open_storage(path: Path, node_id: int = 1, cluster_id: str = CLUSTER, fsync: bool = True) -> Storage:
    return Storage.open(path, node_id=node_id, cluster_id=cluster_id, fsync=fsync)


def sample_records(count: int, ballot: Ballot = Ballot(1, 1)) -> list:
    """A promise, then alternating accepts and decides with distinct values per slot."""
    records: list = [PromiseRecord(ballot)]
    for slot in range(1, count + 1):
        value = (f"cmd-{slot}".encode(), b"\x00" * (slot % 5))
        records.append(AcceptRecord(slot, ballot, value))
        if slot % 2 == 0:
            records.append(DecideRecord(slot, value))
    return records


def record_ends(records: list, base: int = len(FRESH)) -> list[int]:
    """Byte offset in the log after each record (the log holds exactly ``FRESH`` and
    ``encode_records(records)``, or with ``base=0`` only the records)."""
    ends = []
    total = base
    for record in records:
        total += len(encode_records([record]))
        ends.append(total)
    return ends


def only_log(path: Path) -> Path:
    logs = sorted(path.glob("log-*.wal"))
    assert len(logs) == 1, logs
    return logs[0]


# ---- round trips ---------------------------------------------------------------------------------


def test_fresh_dir_is_initialised_empty(tmp_path):
    data_dir = tmp_path / "new" / "node1"
    with open_storage(data_dir) as storage:
        assert storage.recovered == DurableState()
        assert storage.snapshot is None
        assert storage.snapshot_slot == 0
        assert storage.log_bytes == len(FRESH)
    assert (data_dir / log_file_name(0)).read_bytes() == FRESH
    assert sorted(p.name for p in data_dir.iterdir()) == ["LOCK", log_file_name(0), "meta.json"]


def test_append_sync_reopen_gives_the_same_durable_state(tmp_path):
    records = sample_records(40)
    with open_storage(tmp_path) as storage:
        # Several batches, each one group commit.
        for start in range(0, len(records), 7):
            storage.append(records[start:start + 7])
            storage.sync()
        # The first log's mark, the records, and a sync mark before each batch after the first.
        batches = len(range(0, len(records), 7))
        assert storage.log_bytes == len(FRESH) + len(encode_records(records)) + (batches - 1) * len(_encode_mark(1))
        log_bytes = storage.log_bytes
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records)
        assert storage.log_bytes == log_bytes
        # The reopened log keeps growing where it ended.
        more = [PromiseRecord(Ballot(2, 3)), AcceptRecord(41, Ballot(2, 3), ())]
        storage.append(more)
        storage.sync()
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records + more)
        assert storage.recovered.promised == Ballot(2, 3)
        assert storage.recovered.accepted[41] == (Ballot(2, 3), ())


def test_a_reopened_log_keeps_one_object_for_a_value_accepted_then_decided(tmp_path):
    """The log holds a decided value twice (its accept, then its decide); recovery must not keep two
    equal copies of it in memory (with 1M keys, ~30 MB more after a restart than before it). A decided
    value that differs from the one accepted stays its own."""
    ballot = Ballot(1, 1)
    same = (b"put a", b"put b")
    records = [PromiseRecord(ballot), AcceptRecord(1, ballot, same), DecideRecord(1, same),
               AcceptRecord(2, ballot, (b"lost",)), DecideRecord(2, (b"chosen elsewhere",)),
               DecideRecord(3, (b"never accepted here",))]
    with open_storage(tmp_path) as storage:
        storage.append(records)
        storage.sync()
    with open_storage(tmp_path) as storage:
        recovered = storage.recovered
        assert recovered == DurableState.replay(records)
        assert recovered.decided[1] == same and recovered.decided[1] is recovered.accepted[1][1]
        assert recovered.decided[2] == (b"chosen elsewhere",) and recovered.accepted[2] == (ballot, (b"lost",))
        assert recovered.decided[3] == (b"never accepted here",)


def test_a_log_rewritten_from_packed_values_reads_back_as_tuples(tmp_path):
    """``Replica.durable_state(packed=True)`` hands compaction the applied slots' values as kept (one
    ``bytes`` each, ``pack_value``); the rewritten log holds them as any value, and the directory
    reopens with the tuples. Bytes that are not a packed value are refused like any bad value."""
    records = sample_records(30)
    with open_storage(tmp_path) as storage:
        storage.append(records)
        storage.sync()
        state = DurableState.replay(records)
        state.compact(20)
        packed = DurableState(promised=state.promised, snapshot_slot=state.snapshot_slot,
                              accepted={s: (b, pack_value(v)) for s, (b, v) in state.accepted.items()},
                              decided={s: pack_value(v) for s, v in state.decided.items()})
        storage.write_snapshot(20, b"state machine at 20", packed)
        with pytest.raises(TypeError):
            storage.append([DecideRecord(31, b"not a packed value")])
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records, snapshot_slot=20)
        assert all(type(v) is tuple for v in storage.recovered.decided.values())


def test_one_write_and_one_fsync_per_sync(tmp_path):
    storage = open_storage(tmp_path)
    writes, fsyncs = [], []

    def counting_write(fd, data):
        writes.append(len(data))
        return os.write(fd, data)

    def counting_fsync(fd):
        fsyncs.append(fd)
        os.fsync(fd)

    storage._write = counting_write
    storage._fdatasync = counting_fsync
    for record in sample_records(300):
        storage.append([record])
    storage.sync()
    assert len(writes) == 1 and len(fsyncs) == 1
    storage.sync()  # nothing new: nothing to write or fsync
    assert len(writes) == 1 and len(fsyncs) == 1
    storage.close()


def test_append_rejects_bad_records_before_buffering(tmp_path):
    with open_storage(tmp_path) as storage:
        with pytest.raises(TypeError):
            storage.append([PromiseRecord(Ballot(1, 1)), AcceptRecord(1, Ballot(1, 1), ("not bytes",))])
        with pytest.raises(TypeError):
            storage.append(["not a record"])
        assert storage.log_bytes == len(FRESH)


def test_fsync_off_still_writes(tmp_path):
    records = sample_records(5)
    with open_storage(tmp_path, fsync=False) as storage:
        storage.append(records)
        storage.sync()
    with open_storage(tmp_path, fsync=False) as storage:
        assert storage.recovered == DurableState.replay(records)


def test_close_is_idempotent_and_later_calls_fail(tmp_path):
    storage = open_storage(tmp_path)
    storage.close()
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.append([PromiseRecord(Ballot(1, 1))])
    with pytest.raises(StorageError, match="closed"):
        storage.sync()


def test_second_open_of_the_same_dir_is_refused(tmp_path):
    with open_storage(tmp_path):
        with pytest.raises(StorageError, match="in use"):
            open_storage(tmp_path)
    open_storage(tmp_path).close()  # the lock went with the close


# ---- meta ----------------------------------------------------------------------------------------


def test_dir_of_another_node_or_cluster_is_refused(tmp_path):
    open_storage(tmp_path, node_id=2, cluster_id="a").close()
    with pytest.raises(StorageError) as excinfo:
        open_storage(tmp_path, node_id=1, cluster_id="b")
    message = str(excinfo.value)
    assert "belongs to node 2 of cluster 'a', not node 1 of cluster 'b'" in message
    assert str(tmp_path) in message
    with pytest.raises(StorageError, match="node 2 of cluster 'a', not node 2 of cluster 'b': to run it, give "
                                           "--cluster-id a"):
        open_storage(tmp_path, node_id=2, cluster_id="b")
    with pytest.raises(StorageError, match="node 2 of cluster 'a', not node 3 of cluster 'a'"):
        open_storage(tmp_path, node_id=3, cluster_id="a")
    open_storage(tmp_path, node_id=2, cluster_id="a").close()


def test_non_empty_dir_without_meta_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StorageError, match="no meta.json but is not empty"):
        open_storage(tmp_path)
    assert not (tmp_path / "meta.json").exists()


def test_unreadable_meta_is_refused(tmp_path):
    open_storage(tmp_path).close()
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(StorageError, match="meta.json is unreadable"):
        open_storage(tmp_path)


# ---- snapshots and compaction --------------------------------------------------------------------


def test_snapshot_and_compaction_then_reopen(tmp_path):
    records = sample_records(30)
    storage = open_storage(tmp_path)
    storage.append(records)
    storage.sync()
    state = DurableState.replay(records)
    state.compact(20)
    storage.write_snapshot(20, b"state machine at 20", state)
    assert storage.snapshot is None  # a written snapshot lives on disk only, not twice in memory
    assert storage.read_snapshot() == (20, b"state machine at 20")
    assert storage.snapshot_slot == 20
    compacted_bytes = storage.log_bytes
    compacted = encode_records(state.records())
    assert compacted_bytes == FENCE_BYTES + len(_covering_mark(len(compacted), 0, FENCE_BYTES)) + len(compacted)
    # Appends after the snapshot go to the new log.
    later = [AcceptRecord(31, Ballot(1, 1), (b"later",))]
    storage.append(later)
    storage.sync()
    storage.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "LOCK", log_file_name(20), "meta.json", snapshot_file_name(20),
    ]
    with open_storage(tmp_path) as storage:
        assert storage.snapshot == (20, b"state machine at 20")
        expected = DurableState.replay(records + later, snapshot_slot=20)
        assert storage.recovered == expected
        assert min(storage.recovered.accepted) == 21
        assert min(storage.recovered.decided) == 22
        assert storage.recovered.promised == Ballot(1, 1)


def _compact_with_writes_seen(tmp_path, monkeypatch, records, chunk_bytes):
    """Compact a log holding ``records`` at slot 5 with ``LOG_REWRITE_CHUNK_BYTES = chunk_bytes``;
    returns the sizes of the writes to the rewritten log's temp file, and the state written."""
    import kvstore.storage as storage_module

    monkeypatch.setattr(storage_module, "LOG_REWRITE_CHUNK_BYTES", chunk_bytes)
    storage = open_storage(tmp_path)
    storage.append(records)
    storage.sync()
    state = DurableState.replay(records)
    state.compact(5)
    writes: list[int] = []
    real_write = storage._write

    def counting_write(fd, data):
        writes.append(len(data))
        return real_write(fd, data)

    storage._write = counting_write
    storage.write_snapshot(5, b"five", state)
    storage.close()
    return writes, state


def test_log_rewrite_is_written_in_pieces_never_whole(tmp_path, monkeypatch):
    records = sample_records(200)
    writes, state = _compact_with_writes_seen(tmp_path, monkeypatch, records, chunk_bytes=256)
    content = encode_records(state.records())
    largest_record = max(len(encode_records([r])) for r in state.records())
    # snapshot file, log pieces, the mark; no single write of the log's content
    log_writes = writes[1:]
    assert len(log_writes) > 10
    assert max(log_writes) < 256 + largest_record
    # The same bytes as a rewrite written whole: the mark covering the file, then the records.
    expected = placed(_covering_mark(len(content), 0, FENCE_BYTES) + content, 5)
    assert (tmp_path / log_file_name(5)).read_bytes() == expected
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records, snapshot_slot=5)


def test_log_rewrite_widens_its_mark_when_the_length_needs_it(tmp_path, monkeypatch):
    """A log over 4 GiB needs the 8-byte form of the mark, 4 bytes longer than the room left for it:
    the rewrite starts again with the room it needs. (Played with a mark that widens from 1 KB.)"""
    import kvstore.storage as storage_module

    def wide_from_1k(content_bytes, zeros=0, before=0):
        assert zeros == 0  # (no preallocation here)
        if content_bytes < 1024:
            return _covering_mark(content_bytes, 0, before)
        total = before + content_bytes + len(_encode_mark(1 << 32))
        payload = b"\x82\x03\x1b" + total.to_bytes(8, "big")
        return RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload

    monkeypatch.setattr(storage_module, "_covering_mark", wide_from_1k)
    records = sample_records(200)
    _writes, state = _compact_with_writes_seen(tmp_path, monkeypatch, records, chunk_bytes=256)
    content = encode_records(state.records())
    data = (tmp_path / log_file_name(5)).read_bytes()
    assert data == placed(wide_from_1k(len(content), 0, FENCE_BYTES) + content, 5)
    assert len(data) == FENCE_BYTES + len(_covering_mark(len(content))) + 4 + len(content)
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records, snapshot_slot=5)
        assert storage.log_bytes == len(data)


def test_log_rewrite_without_fsync_has_no_mark(tmp_path):
    records = sample_records(50)
    with open_storage(tmp_path, fsync=False) as storage:
        storage.append(records)
        state = DurableState.replay(records)
        state.compact(5)
        storage.write_snapshot(5, b"five", state)
    # (the fence of a log written without fsync: its first record may be torn like any other)
    assert (tmp_path / log_file_name(5)).read_bytes() == placed(encode_records(state.records()), 5, _FENCE_NO_SYNC)


def test_second_snapshot_replaces_the_first(tmp_path):
    records = sample_records(30)
    with open_storage(tmp_path) as storage:
        storage.append(records)
        state = DurableState.replay(records)  # write_snapshot syncs the buffered records itself
        state.compact(10)
        storage.write_snapshot(10, b"ten", state)
        state.compact(25)
        storage.write_snapshot(25, b"twenty-five", state)
    assert sorted(p.name for p in tmp_path.glob("*.*")) == [log_file_name(25), "meta.json", snapshot_file_name(25)]
    with open_storage(tmp_path) as storage:
        assert storage.snapshot == (25, b"twenty-five")
        assert storage.recovered == DurableState.replay(records, snapshot_slot=25)


def test_write_snapshot_rejects_going_backwards(tmp_path):
    with open_storage(tmp_path) as storage:
        storage.write_snapshot(10, b"ten", DurableState(snapshot_slot=10))
        with pytest.raises(ValueError):
            storage.write_snapshot(5, b"five", DurableState(snapshot_slot=5))
        with pytest.raises(ValueError):
            storage.write_snapshot(12, b"twelve", DurableState(snapshot_slot=15))


def test_leftover_temp_snapshot_is_ignored_and_deleted(tmp_path):
    records = sample_records(4)
    with open_storage(tmp_path) as storage:
        storage.append(records)
        storage.sync()
    leftover = tmp_path / (snapshot_file_name(3) + ".tmp")
    leftover.write_bytes(b"half a snapsh")
    with open_storage(tmp_path) as storage:
        assert storage.snapshot is None
        assert storage.recovered == DurableState.replay(records)
    assert not leftover.exists()


def test_damaged_renamed_snapshot_is_refused(tmp_path):
    with open_storage(tmp_path) as storage:
        storage.write_snapshot(7, b"seven" * 10, DurableState(snapshot_slot=7))
    snap = tmp_path / snapshot_file_name(7)
    blob = bytearray(snap.read_bytes())
    blob[-3] ^= 0x40
    snap.write_bytes(bytes(blob))
    damaged = r"snapshot .*snapshot-00000000000000000007\.snap is damaged: checksum"
    with pytest.raises(StorageError, match=damaged) as excinfo:
        open_storage(tmp_path)
    message = str(excinfo.value)
    assert "restore it from a backup of this node, or replace the node" in message and "docs/operations.md" in message
    assert "catch up from its peers" not in message  # a wiped acceptor loses acknowledged writes
    snap.write_bytes(bytes(blob[:10]))
    with pytest.raises(StorageError, match="is damaged: shorter than"):
        open_storage(tmp_path)


def test_open_snapshot_gives_the_file_at_its_data_until_released(tmp_path):
    """What a server restores from: the snapshot found at open, as a file positioned at its state
    machine bytes and their length (checked at open, not held in memory)."""
    with open_storage(tmp_path) as storage:
        assert storage.open_snapshot() is None  # nothing yet
        storage.write_snapshot(7, b"seven" * 10, DurableState(snapshot_slot=7))
        assert storage.open_snapshot() is None  # written now: nothing found at open to restore
    with open_storage(tmp_path) as storage:
        slot, file, length = storage.open_snapshot()
        with file:
            assert (slot, length) == (7, 50) and file.read() == b"seven" * 10
        assert storage.snapshot == (7, b"seven" * 10)
        storage.release_snapshot()
        assert storage.open_snapshot() is None and storage.snapshot is None
        assert storage.read_snapshot() == (7, b"seven" * 10)  # still on disk, for peers


def test_snapshot_renamed_but_log_not_yet_rewritten_recovers(tmp_path):
    """The crash between steps 2 and 3 of compaction, built by hand: new snapshot, old log only."""
    records = sample_records(12)
    with open_storage(tmp_path) as storage:
        storage.append(records)
        storage.sync()
    old_log = (tmp_path / log_file_name(0)).read_bytes()
    with open_storage(tmp_path) as storage:
        state = DurableState.replay(records)
        state.compact(8)
        storage.write_snapshot(8, b"eight", state)
    # Put the directory back to "after the snapshot rename": the old log, no new log.
    (tmp_path / log_file_name(8)).unlink()
    (tmp_path / log_file_name(0)).write_bytes(old_log)
    with open_storage(tmp_path) as storage:
        assert storage.snapshot == (8, b"eight")
        assert storage.recovered == DurableState.replay(records, snapshot_slot=8)
    # Recovery finished the compaction.
    assert sorted(p.name for p in tmp_path.glob("*.*")) == [log_file_name(8), "meta.json", snapshot_file_name(8)]


def test_log_newer_than_every_snapshot_is_refused(tmp_path):
    open_storage(tmp_path).close()
    (tmp_path / log_file_name(9)).write_bytes(b"")
    with pytest.raises(StorageError, match="newer than the newest snapshot") as refused:
        open_storage(tmp_path)
    # and says what to do (QA: it did not)
    assert "restore the data dir from a backup of this node, or replace the node (kv member remove 1" in str(
        refused.value)


def test_a_snapshot_without_its_log_is_refused_saying_what_to_do(tmp_path):
    records = sample_records(10)
    with open_storage(tmp_path) as storage:
        storage.append(records)
        storage.sync()
        storage.write_snapshot(8, b"eight", DurableState.replay(records))
    (tmp_path / log_file_name(8)).unlink()
    with pytest.raises(StorageError, match="snapshot at slot 8 but no log at or below it. Do not start it as it is: "
                                           "restore the data dir from a backup of this node"):
        open_storage(tmp_path)


# ---- torn tails and corruption -------------------------------------------------------------------


def write_log(tmp_path: Path, records: list) -> Path:
    with open_storage(tmp_path) as storage:
        storage.append(records)
        storage.sync()
    return only_log(tmp_path)


def test_torn_tail_is_cut_at_every_offset_of_the_last_record(tmp_path, caplog):
    records = sample_records(6)
    log_path = write_log(tmp_path, records)
    full = log_path.read_bytes()
    ends = record_ends(records)
    last_start = ends[-2]
    assert ends[-1] == len(full)
    for cut in range(last_start, len(full)):
        log_path.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kvstore.storage"):
            with open_storage(tmp_path) as storage:
                assert storage.recovered == DurableState.replay(records[:-1]), cut
                assert storage.log_bytes == last_start
        assert log_path.stat().st_size == last_start
        # Torn bytes that are all zeros (the start of a length field) look like unused log space:
        # cut just the same, without the warning.
        torn = any(full[last_start:cut])
        assert any("torn tail" in message for message in caplog.messages) == torn, cut


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path):
    records = sample_records(3)
    log_path = write_log(tmp_path, records)
    good = log_path.stat().st_size
    with open(log_path, "ab") as f:
        f.write(b"\x00" * 4096)  # what some file systems leave after a power cut
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records)
    assert log_path.stat().st_size == good


def test_log_works_after_cutting_a_torn_tail(tmp_path):
    records = sample_records(5)
    log_path = write_log(tmp_path, records)
    full = log_path.read_bytes()
    log_path.write_bytes(full[:-3])
    more = [DecideRecord(99, (b"after the cut",))]
    with open_storage(tmp_path) as storage:
        storage.append(more)
        storage.sync()
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records[:-1] + more)


def test_flipped_byte_in_a_middle_record_is_refused_with_file_and_offset(tmp_path):
    """The records were fsynced and a later batch's sync mark says so: damage to them is refused."""
    records = sample_records(6)
    log_path = write_log(tmp_path, records)
    later = [DecideRecord(7, (b"seven",))]
    with open_storage(tmp_path) as storage:  # the next batch starts with a mark covering the first
        storage.append(later)
        storage.sync()
    full = log_path.read_bytes()
    ends = record_ends(records)
    assert full == placed(FRESH_RAW + encode_records(records) + _encode_mark(ends[-1]) + encode_records(later))
    victim = 3  # a record with whole records after it
    start, end = ends[victim - 1], ends[victim]
    for offset in range(start, end):
        damaged = bytearray(full)
        damaged[offset] ^= 0x01
        log_path.write_bytes(bytes(damaged))
        with pytest.raises(StorageError) as excinfo:
            open_storage(tmp_path)
        message = str(excinfo.value)
        assert str(log_path) in message, offset
        assert f"corrupt at byte offset {start} " in message, (offset, message)
        assert f"durable below byte offset {ends[-1]}" in message, (offset, message)
        assert "docs/operations.md" in message and "restore it from a backup" in message, message
        # Refusing must not "repair" anything.
        assert log_path.read_bytes() == bytes(damaged)


def test_garbage_record_in_the_middle_is_refused(tmp_path):
    """A record with a correct CRC but a payload that is not a record still counts as corruption."""
    first, rest = sample_records(1), sample_records(4)[1:]
    bogus_payload = b"\xa0"  # an empty CBOR map
    bogus = RECORD_HEADER.pack(len(bogus_payload), zlib.crc32(bogus_payload)) + bogus_payload
    log_path = write_log(tmp_path, [])
    log_path.write_bytes(encode_records(first) + bogus + encode_records(rest))
    with pytest.raises(StorageError, match=f"corrupt at byte offset {len(encode_records(first))} .*bad payload"):
        open_storage(tmp_path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(
        st.one_of(
            st.builds(PromiseRecord, st.builds(Ballot, st.integers(0, 2**40), st.integers(0, 9))),
            st.builds(
                AcceptRecord,
                st.integers(0, 2**33),
                st.builds(Ballot, st.integers(0, 2**40), st.integers(0, 9)),
                st.lists(st.binary(max_size=40), max_size=4).map(tuple),
            ),
            st.builds(DecideRecord, st.integers(0, 300), st.lists(st.binary(max_size=40), max_size=4).map(tuple)),
        ),
        max_size=25,
    ),
    cut_fraction=st.floats(0, 1),
)
@example(records=[], cut_fraction=0.5625)  # (found in CI: a log cut to its fence alone)
def test_cut_anywhere_recovers_the_longest_whole_prefix(tmp_path_factory, records, cut_fraction):
    data_dir = tmp_path_factory.mktemp("cut")
    log_path = write_log(data_dir, records)
    full = log_path.read_bytes()
    assert full == placed(FRESH_RAW + encode_records(records))
    cut = int(len(full) * cut_fraction)
    log_path.write_bytes(full[:cut])
    if FENCE_BYTES <= cut < len(FRESH):
        # Inside the log's first mark: written whole (fsynced before the file had its name), so damage.
        with pytest.raises(StorageError, match="written whole"):
            open_storage(data_dir)
        return
    whole = sum(1 for end in record_ends(records) if end <= cut)
    # (Random values cannot hold a whole record with a matching CRC, so the "valid record after the
    # damage" rule never fires here: every cut is a torn tail.)
    with open_storage(data_dir) as storage:
        assert storage.recovered == DurableState.replay(records[:whole])
    kept = (record_ends(records)[whole - 1] if whole else len(FRESH) if cut >= len(FRESH)
            else FENCE_BYTES if cut >= FENCE_BYTES else 0)  # (a log cut inside its fence goes on without one)
    assert log_path.read_bytes() == full[:kept]


# ---- preallocated log space -----------------------------------------------------------------------

PREALLOC = 4096


def open_preallocated(path: Path, preallocate: int = PREALLOC) -> Storage:
    return Storage.open(path, node_id=1, cluster_id=CLUSTER, preallocate=preallocate)


# A preallocated log's first mark also claims the zeros that come with the new file ("A log cut short")
PFRESH_RAW = _covering_mark(0, PREALLOC, FENCE_BYTES)
PFRESH = placed(PFRESH_RAW)


def test_preallocated_log_writes_records_over_zeros_and_recovers_them(tmp_path):
    first, second = sample_records(4), [DecideRecord(9, (b"nine",)), PromiseRecord(Ballot(7, 1))]
    with open_preallocated(tmp_path) as storage:
        storage.append(first)
        storage.sync()
        end = storage.log_bytes
        data = only_log(tmp_path).read_bytes()
        assert data[:end] == placed(PFRESH_RAW + encode_records(first))
        # zeros ahead: the new log came with PREALLOC of them, and the batch fit in them
        assert len(data) == len(PFRESH) + PREALLOC and data[end:] == bytes(len(data) - end)
        storage.append(second)
        storage.sync()
    size = only_log(tmp_path).stat().st_size
    with open_preallocated(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(first + second)
        # the records' end (with the first log's mark and the mark before the second batch, which also
        # claims the file's length: the long form), not the file's
        assert storage.log_bytes == len(PFRESH + encode_records(first + second) + _encode_mark(1, 2))
        third = [AcceptRecord(10, Ballot(7, 1), (b"ten",))]
        storage.append(third)  # goes on right after the records, over the zeros
        storage.sync()
    assert only_log(tmp_path).stat().st_size == size  # it fit in the space already there
    with open_preallocated(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(first + second + third)


def test_preallocated_log_grows_in_steps_when_a_batch_does_not_fit(tmp_path):
    with open_preallocated(tmp_path, preallocate=512) as storage:
        records = []
        for slot in range(1, 40):
            batch = [AcceptRecord(slot, Ballot(1, 1), (b"v" * 100,))]
            records += batch
            storage.append(batch)
            storage.flush()
            storage.fsync_through(storage.log_bytes)
            size = only_log(tmp_path).stat().st_size
            # between half the step and a step and a half of zeros ahead (see Storage._reserve)
            assert storage.log_bytes + 256 - 200 < size <= storage.log_bytes + 512 + 256 + 200
    with open_preallocated(tmp_path, preallocate=512) as storage:
        assert storage.recovered == DurableState.replay(records)


@pytest.fixture
def grown(monkeypatch) -> list[int]:
    """The ends each ``Storage._grow_durably`` call grew the log for (an fdatasync in ``append``)."""
    from kvstore.storage import Storage

    ends: list[int] = []
    real = Storage._grow_durably

    def counting(self, end):
        ends.append(end)
        return real(self, end)

    monkeypatch.setattr(Storage, "_grow_durably", counting)
    return ends


def test_the_zeros_ahead_grow_before_records_reach_them_so_appends_never_fsync(tmp_path, grown):
    """The next step of zeros is written once half of those ahead are used, and the group commit's next
    fsync makes that length durable, so no small batch has to grow the file and fsync it itself in
    ``append`` (gray-failure QA: that fdatasync ran in the node's event loop once per step, 0.5-5 s on
    a slow disk, during which the node answered nothing). Only fsync_through's fdatasyncs run."""
    with open_preallocated(tmp_path, preallocate=4096) as storage:
        records = []
        for slot in range(1, 400):  # about 45 KB: ten steps of zeros
            batch = [AcceptRecord(slot, Ballot(1, 1), (b"v" * 100,))]
            records += batch
            storage.append(batch)
            storage.fsync_through(storage.flush())  # the server's way
        assert only_log(tmp_path).stat().st_size > 10 * 4096
        assert grown == []
        big = [AcceptRecord(400, Ballot(1, 1), (b"w" * 5000,))]  # larger than the zeros ahead: grows itself
        records += big
        storage.append(big)
        storage.fsync_through(storage.flush())
        assert len(grown) == 1
    with open_preallocated(tmp_path, preallocate=4096) as storage:
        assert storage.recovered == DurableState.replay(records)


def test_records_that_outrun_the_fsyncs_double_the_zeros_kept_ahead(tmp_path, grown):
    """When small batches reach past what the marks claim (the fsyncs that make the zeros ahead durable
    are slower than writing half of them: a slow disk under load), each growth is an fdatasync in
    ``append``, in the node's event loop; the step then doubles (up to PREALLOCATE_STEP_MAX), so that
    such growths become rare (gray-failure QA, second run: 1-8 s stalls, one per half MiB, at 2 IOPS)."""
    from kvstore.storage import PREALLOCATE_STEP_MAX

    records = []
    with open_preallocated(tmp_path, preallocate=4096) as storage:
        for slot in range(1, 301):  # ~150 KB, never an fsync_through between: the fsyncs never keep up
            batch = [AcceptRecord(slot, Ballot(1, 1), (b"v" * 400,))]
            records += batch
            storage.append(batch)
            storage.flush()
        assert storage._preallocate >= 32 * 4096
        assert len(grown) <= 8, grown  # (about 75 with a fixed step of 4 KiB)
        assert PREALLOCATE_STEP_MAX == 64 << 20
        storage.sync()
    with open_preallocated(tmp_path, preallocate=4096) as storage:
        assert storage.recovered == DurableState.replay(records)


def test_batches_as_large_as_the_zeros_ahead_grow_the_log_once_not_each_time(tmp_path, grown):
    """Large values: every batch is larger than half the zeros kept ahead. Each used to grow the file
    itself (``_grow_durably``: zeros and an fdatasync in ``append``, the node's event loop), and with
    the disk busy those stalls cost leaders (3-4 changes in 30 s of 1 MiB puts, bench/big_values.py).
    The first such batch raises the step to twice its size; later ones find durable zeros ahead."""
    records = []
    with open_preallocated(tmp_path, preallocate=4096) as storage:
        for slot in range(1, 41):
            batch = [AcceptRecord(slot, Ballot(1, 1), (bytes([slot]) * 5000,))]
            records += batch
            storage.append(batch)
            storage.fsync_through(storage.flush())  # the server's way: the fsync in the group commit
        assert len(grown) == 1, grown  # (40 with the step left at 4 KiB)
        assert storage._preallocate == 16384
    with open_preallocated(tmp_path, preallocate=4096) as storage:
        assert storage.recovered == DurableState.replay(records)


def test_the_pipelined_flush_leaves_the_zeros_ahead_to_fsync_through(tmp_path, grown):
    """``flush`` (the driver, in the event loop) writes records only; ``fsync_through`` (the committer's
    thread) writes the next step of zeros right before its fdatasync, which makes them durable. With 1
    MiB values the steps were megabytes of zeros written in the event loop: stalls of 0.1-0.8 s and
    leader changes (bench/big_values.py)."""
    import os

    with open_preallocated(tmp_path, preallocate=4096) as storage:
        path = only_log(tmp_path)
        size = path.stat().st_size
        records = []
        for slot in range(1, 200):
            batch = [AcceptRecord(slot, Ballot(1, 1), (b"v" * 300,))]
            records += batch
            storage.append(batch)
            end = storage.flush()
            assert os.stat(path).st_size == size  # no zeros from the flush
            storage.fsync_through(end)
            size = os.stat(path).st_size
            assert size >= end + 2048  # half a step of zeros ahead at least, after each fsync
        assert grown == []  # and no batch had to grow the file itself
    with open_preallocated(tmp_path, preallocate=4096) as storage:
        assert storage.recovered == DurableState.replay(records)


def test_zeros_written_by_a_worker_fsync_never_cover_records_the_owner_writes_meanwhile(tmp_path):
    """The server's threads: the owner appends and flushes while a worker runs ``fsync_through`` (and
    writes zeros ahead) as fast as it can. Every record is recovered."""
    import threading

    records = []
    done = threading.Event()
    ends: list[int] = []
    errors: list[BaseException] = []

    with open_preallocated(tmp_path, preallocate=1024) as storage:
        def worker():
            try:
                while not done.is_set() or ends:
                    if ends:
                        storage.fsync_through(ends.pop())
            except BaseException as exc:  # (reported by the assert below)
                errors.append(exc)

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            for slot in range(1, 1500):
                batch = [AcceptRecord(slot, Ballot(1, 1), (bytes([slot % 251]) * (50 + slot % 700),))]
                records += batch
                storage.append(batch)
                ends.append(storage.flush())
        finally:
            done.set()
            thread.join(30)
        assert not errors, errors
        storage.sync()
    with open_preallocated(tmp_path, preallocate=1024) as storage:
        assert storage.recovered == DurableState.replay(records)


def test_a_preallocation_that_fails_never_writes_zeros_over_synced_records(tmp_path, monkeypatch):
    """A nearly full disk: writing the zeros ahead fails with ENOSPC (while smaller record writes still
    fit), so records go on past the zeros. The next preallocation must start after those records: it
    used to start where the zeros had ended and overwrite fsynced records with zeros, which recovery
    then cut as a torn tail (QA: acknowledged writes lost on a shared tmpfs that filled up)."""
    import kvstore.storage as storage_module

    real_pwrite = storage_module.os.pwrite
    full = {"on": False}

    def pwrite(fd, data, offset):  # only preallocation uses pwrite: it fails while the disk is "full"
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(storage_module.os, "pwrite", pwrite)
    records = []
    with open_preallocated(tmp_path, preallocate=512) as storage:
        for slot in range(1, 61):
            full["on"] = 20 <= slot < 40  # zeros cannot be written for a while; records still can
            batch = [AcceptRecord(slot, Ballot(1, 1), (b"v" * 100,))]
            records += batch
            storage.append(batch)
            storage.sync()
            assert storage.failure is None
    with open_preallocated(tmp_path, preallocate=512) as storage:
        assert storage.recovered == DurableState.replay(records)


def test_opening_a_preallocated_log_without_preallocation_keeps_the_zeros_its_marks_claim(tmp_path):
    records = sample_records(3)
    with open_preallocated(tmp_path) as storage:
        storage.append(records)
        storage.sync()
    before = only_log(tmp_path).read_bytes()
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records)
    # The first mark says the file was this long, durably: a shorter one would be a log cut short.
    written = placed(PFRESH_RAW + encode_records(records))
    assert only_log(tmp_path).read_bytes() == before == written + bytes(len(before) - len(written))


def test_torn_record_before_preallocated_zeros_is_cut_at_every_offset(tmp_path, caplog):
    """A crash in the middle of writing a record over the zeros leaves part of it, then zeros."""
    records = sample_records(6)
    with open_preallocated(tmp_path) as storage:
        storage.append(records)
        storage.sync()
    log_path = only_log(tmp_path)
    full = log_path.read_bytes()
    ends = record_ends(records, base=len(PFRESH))
    last_start = ends[-2]
    for cut in range(last_start, ends[-1]):
        if not any(full[cut:ends[-1]]):
            continue  # the record ends in zeros, so zeroing from here leaves it whole
        log_path.write_bytes(full[:cut] + bytes(len(full) - cut))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kvstore.storage"):
            with open_preallocated(tmp_path) as storage:
                assert storage.recovered == DurableState.replay(records[:-1]), cut
                assert storage.log_bytes == last_start
                storage.append(records[-1:])  # the log goes on where the good records end
                storage.sync()
        torn = any(full[last_start:cut])  # all zeros: unused space, no warning (see the test above)
        assert any("torn tail" in message for message in caplog.messages) == torn, cut
        with open_preallocated(tmp_path) as storage:
            assert storage.recovered == DurableState.replay(records), cut


def test_damage_before_a_valid_record_is_refused_with_a_large_zero_tail(tmp_path):
    """Middle corruption is still found, and the search for a later record skips the zeros."""
    records = sample_records(6)
    with open_preallocated(tmp_path, preallocate=4 << 20) as storage:
        storage.append(records)
        storage.sync()
    log_path = only_log(tmp_path)
    data = bytearray(log_path.read_bytes())
    assert len(data) > 4 << 20
    data[FENCE_BYTES + RECORD_HEADER.size + 1] ^= 0xFF  # inside the first record's payload (after the fence)
    log_path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=f"corrupt at byte offset {FENCE_BYTES} .*written whole"):
        open_preallocated(tmp_path)


def test_crash_drop_unsynced_with_preallocation_loses_only_unsynced_records(tmp_path):
    synced = sample_records(5)
    storage = open_preallocated(tmp_path)
    storage.append(synced)
    storage.sync()
    storage.append([AcceptRecord(77, Ballot(5, 1), (b"never synced",))])
    storage.flush()
    storage.crash_drop_unsynced()
    with open_preallocated(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(synced)


def test_full_disk_while_preallocating_still_writes_the_records(tmp_path, monkeypatch, caplog):
    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    # more than the new log's zeros: the next ones must be written, and cannot
    records = sample_records(3) + [AcceptRecord(9, Ballot(1, 1), (b"z" * 2 * PREALLOC,))]
    with caplog.at_level(logging.WARNING, logger="kvstore.storage"):
        with open_preallocated(tmp_path) as storage:
            storage.append(records)
            storage.sync()
            storage.append(sample_records(2))  # the disk still full: no new warning
            storage.sync()
    # once while the disk stays full (QA: twice per batch, from _reserve and then _grow_durably)
    assert sum("cannot preallocate" in message for message in caplog.messages) == 1, caplog.messages
    monkeypatch.undo()
    assert only_log(tmp_path).read_bytes().startswith(placed(PFRESH_RAW + encode_records(records)))
    with open_preallocated(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records + sample_records(2))


def test_enospc_on_write_with_preallocation_cuts_back_and_the_retry_lands_in_place(tmp_path):
    first = sample_records(2)
    storage = open_preallocated(tmp_path)
    storage.append(first)
    storage.sync()
    synced_size = only_log(tmp_path).stat().st_size  # the records and the zeros ahead, durable
    storage._write = enospc_after(7)  # a partial record, then the disk is full
    second = [DecideRecord(3, (b"three",))]
    storage.append(second)
    with pytest.raises(StorageFull):
        storage.sync()
    storage._write = os.write
    storage.sync()
    storage.close()
    # The retried batch starts with a mark covering the first batch (and the length the file had), as
    # the failed attempt did.
    mark = _encode_mark(len(PFRESH + encode_records(first)), synced_size)
    assert only_log(tmp_path).read_bytes().startswith(placed(
        PFRESH_RAW + encode_records(first) + mark + encode_records(second)))
    with open_preallocated(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(first + second)


def test_preallocate_must_be_a_non_negative_int(tmp_path):
    with pytest.raises(ValueError, match="preallocate"):
        open_preallocated(tmp_path, preallocate=-1)


# ---- crashes and full disks ----------------------------------------------------------------------


def test_crash_drop_unsynced_loses_only_unsynced_records(tmp_path):
    synced = sample_records(5)
    storage = open_storage(tmp_path)
    storage.append(synced)
    storage.sync()
    storage.append([AcceptRecord(77, Ballot(5, 1), (b"never synced",))])
    storage.crash_drop_unsynced()
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(synced)


def test_crash_drop_unsynced_without_fsync_loses_writes(tmp_path):
    """With fsync off, sync only writes: a power cut may take everything written since open."""
    kept = sample_records(3)
    with open_storage(tmp_path) as storage:
        storage.append(kept)
        storage.sync()
    storage = open_storage(tmp_path, fsync=False)
    storage.append([PromiseRecord(Ballot(9, 2))])
    storage.sync()
    storage.crash_drop_unsynced()
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(kept)


def enospc_after(byte_budget: int):
    """A fake ``os.write`` that writes at most ``byte_budget`` bytes in all, then fails with ENOSPC."""
    left = [byte_budget]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        count = os.write(fd, bytes(data[:left[0]]))
        left[0] -= count
        return count

    return write


@pytest.mark.parametrize("budget", [0, 1, 20])
def test_enospc_on_write_raises_storage_full_and_keeps_synced_records(tmp_path, budget):
    synced = sample_records(4)
    storage = open_storage(tmp_path)
    storage.append(synced)
    storage.sync()
    good = only_log(tmp_path).read_bytes()
    storage._write = enospc_after(budget)  # the partial write leaves `budget` bytes behind, then fails
    lost = [AcceptRecord(50, Ballot(3, 1), (b"x" * 100,))]
    storage.append(lost)
    with pytest.raises(StorageFull, match="no space left on device"):
        storage.sync()
    # Cut back to whole records: zeros where the partial batch was (the file keeps its length, which
    # a mark may claim was durable)
    assert only_log(tmp_path).read_bytes() == good + bytes(budget)
    storage.close()
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(synced)


def test_sync_after_enospc_retries_the_batch(tmp_path):
    storage = open_storage(tmp_path)
    first = sample_records(2)
    storage.append(first)
    storage.sync()
    storage._write = enospc_after(5)
    second = [DecideRecord(3, (b"three",))]
    storage.append(second)
    with pytest.raises(StorageFull):
        storage.sync()
    storage._write = os.write  # space was freed
    storage.sync()
    storage.close()
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(first + second)


def test_enospc_on_fsync_breaks_the_storage(tmp_path):
    """ENOSPC from fdatasync (delayed allocation) is an fsync failure like any other: not retryable."""
    storage = open_storage(tmp_path)
    first = sample_records(2)
    storage.append(first)
    storage.sync()

    def full_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    storage._fdatasync = full_fsync
    second = [DecideRecord(3, (b"three",))]
    storage.append(second)
    with pytest.raises(DiskFailed) as excinfo:
        storage.sync()
    assert storage.failure == str(excinfo.value)
    storage._fdatasync = os.fsync  # a retry that would "succeed" must not be tried
    with pytest.raises(DiskFailed):
        storage.sync()
    storage.close()
    with open_storage(tmp_path) as storage:  # the written batch may or may not be there: both legal
        assert storage.recovered in (DurableState.replay(first), DurableState.replay(first + second))


def test_other_io_error_breaks_the_storage(tmp_path):
    storage = open_storage(tmp_path)

    def eio(fd, data):
        raise OSError(errno.EIO, "Input/output error")

    storage._write = eio
    storage.append(sample_records(1))
    with pytest.raises(DiskFailed) as excinfo:
        storage.sync()
    assert not isinstance(excinfo.value, StorageFull)
    storage._write = os.write
    with pytest.raises(DiskFailed, match="restart it once the disk is fixed"):
        storage.sync()
    storage.close()


def test_enospc_while_writing_a_snapshot_keeps_the_old_state(tmp_path):
    records = sample_records(10)
    storage = open_storage(tmp_path)
    storage.append(records)
    storage.sync()
    storage._write = enospc_after(0)
    state = DurableState.replay(records)
    state.compact(6)
    with pytest.raises(StorageFull):
        storage.write_snapshot(6, b"six", state)
    assert storage.snapshot is None
    storage.close()
    assert not list(tmp_path.glob("*.tmp"))
    with open_storage(tmp_path) as storage:
        assert storage.snapshot is None
        assert storage.recovered == DurableState.replay(records)


# ---- failpoints: real process exits ---------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from kvstore.storage import Storage
    from paxos.actions import AcceptRecord, DecideRecord, DurableState, PromiseRecord, pack_value
    from paxos.ballot import Ballot

    records = [PromiseRecord(Ballot(4, 2))]
    records += [AcceptRecord(s, Ballot(4, 2), (b"v%d" % s,)) for s in range(1, 11)]
    records += [DecideRecord(s, (b"v%d" % s,)) for s in range(1, 9)]
    storage = Storage.open(sys.argv[1], node_id=2, cluster_id="fp")
    storage.append(records)
    storage.sync()
    if sys.argv[2] == "snapshot":
        state = DurableState.replay(records)
        state.compact(6)
        storage.write_snapshot(6, b"snapshot at six", state)
    if sys.argv[2] == "two-step":  # the server's way: the log is compacted while records are appended
        state = DurableState.replay(records)
        state.compact(6)
        storage.write_snapshot_file(6, b"snapshot at six")
        storage.begin_compaction(6, state)
        storage.append([AcceptRecord(s, Ballot(4, 2), (b"w%d" % s,)) for s in (11, 12)])
        storage.fsync_through(storage.flush())
        if len(sys.argv) > 3:
            open(sys.argv[3], "w").close()  # (a failpoint "...@FLAG" fires from here on)
        storage.write_compaction()
        storage.append([DecideRecord(11, (b"w11",))])
        storage.fsync_through(storage.flush())
        storage.finish_compaction()
        storage.delete_superseded()
    storage.close()
    print("survived")
    """
)

CHILD_RECORDS = (
    [PromiseRecord(Ballot(4, 2))]
    + [AcceptRecord(s, Ballot(4, 2), (b"v%d" % s,)) for s in range(1, 11)]
    + [DecideRecord(s, (b"v%d" % s,)) for s in range(1, 9)]
)
CHILD_TWO_STEP_RECORDS = CHILD_RECORDS + [AcceptRecord(s, Ballot(4, 2), (b"w%d" % s,)) for s in (11, 12)] + [
    DecideRecord(11, (b"w11",))]


def run_child(data_dir: Path, mode: str, failpoint: str, flag: Path | None = None) -> subprocess.CompletedProcess:
    """The child writes CHILD_RECORDS in ``mode`` and dies at ``failpoint`` (with ``flag``: only once the
    child has created that file)."""
    env = dict(os.environ, KV_FAILPOINTS=f"{failpoint}=exit" + (f"@{flag}" if flag else ""))
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir), mode, *([str(flag)] if flag else [])], env=env,
        capture_output=True, text=True, timeout=60,
    )


def test_failpoint_after_fsync_exits_and_the_record_is_durable(tmp_path):
    result = run_child(tmp_path, "log", "after_fsync")
    assert result.returncode == 1, result.stderr
    assert "survived" not in result.stdout
    with Storage.open(tmp_path, node_id=2, cluster_id="fp") as storage:
        assert storage.recovered == DurableState.replay(CHILD_RECORDS)


def test_failpoint_before_fsync_exits_and_recovery_gives_a_prefix(tmp_path):
    result = run_child(tmp_path, "log", "before_fsync")
    assert result.returncode == 1, result.stderr
    with Storage.open(tmp_path, node_id=2, cluster_id="fp") as storage:
        # The write reached the page cache, so a process crash (unlike a power cut) keeps it; either
        # way the result must be one of the two states.
        assert storage.recovered in (DurableState(), DurableState.replay(CHILD_RECORDS))


@pytest.mark.parametrize(
    "failpoint, snapshot_expected",
    [
        ("before_snapshot_rename", None),
        ("after_snapshot_rename", (6, b"snapshot at six")),
        ("before_log_rename", (6, b"snapshot at six")),
        ("after_log_rename", (6, b"snapshot at six")),
    ],
)
def test_crash_at_each_compaction_step_recovers_a_consistent_state(tmp_path, failpoint, snapshot_expected):
    result = run_child(tmp_path, "snapshot", failpoint)
    assert result.returncode == 1, result.stderr
    with Storage.open(tmp_path, node_id=2, cluster_id="fp") as storage:
        assert storage.snapshot == snapshot_expected
        slot = storage.snapshot_slot
        assert storage.recovered == DurableState.replay(CHILD_RECORDS, snapshot_slot=slot)
    # Recovery tidied up: one snapshot at most, one log, no temp files.
    names = sorted(p.name for p in tmp_path.glob("*.*"))
    expected = [log_file_name(6), "meta.json", snapshot_file_name(6)] if snapshot_expected else [
        log_file_name(0), "meta.json",
    ]
    assert names == expected


@pytest.mark.parametrize("failpoint", ["fsync_file", "before_log_rename", "after_log_rename", "none"])
def test_a_crash_in_a_two_step_compaction_recovers_every_record_appended_meanwhile(tmp_path, failpoint):
    """The server compacts in two steps (``begin_compaction``, ``write_compaction`` in a worker thread,
    ``finish_compaction``) and appends meanwhile: a crash at any step recovers the snapshot and every
    record synced before it, those appended during the compaction included; recovery tidies up."""
    flag = tmp_path.parent / f"{tmp_path.name}.flag"  # (the compaction's fsyncs, not meta.json's)
    result = run_child(tmp_path, "two-step", failpoint, flag if failpoint == "fsync_file" else None)
    if failpoint == "none":
        assert result.returncode == 0 and "survived" in result.stdout, result.stderr
    else:
        assert result.returncode == 1, result.stderr
    with Storage.open(tmp_path, node_id=2, cluster_id="fp") as storage:
        assert storage.snapshot == (6, b"snapshot at six")
        # (at fsync_file the child dies writing the bulk, before it appends the last record)
        appended = CHILD_TWO_STEP_RECORDS[:-1] if failpoint == "fsync_file" else CHILD_TWO_STEP_RECORDS
        assert storage.recovered == DurableState.replay(appended, snapshot_slot=6)
    names = sorted(p.name for p in tmp_path.glob("*.*"))
    assert names in ([log_file_name(0), "meta.json", snapshot_file_name(6)],
                     [log_file_name(6), "meta.json", snapshot_file_name(6)])
    if failpoint in ("after_log_rename", "none"):
        assert log_file_name(6) in names


def _compaction_begun(tmp_path: Path, records: list, synced: int, slot: int) -> Storage:
    """A preallocated Storage holding ``records[:synced]``, a snapshot file at ``slot`` and a two-step
    compaction to it begun (``begin_compaction``), as the server starts one."""
    storage = open_preallocated(tmp_path)
    storage.append(records[:synced])
    storage.sync()
    storage.write_snapshot_file(slot, b"snap")
    state = DurableState.replay(records[:synced])
    state.compact(slot)
    storage.begin_compaction(slot, state)
    return storage


def test_a_two_step_compaction_beside_a_worker_that_fsyncs(tmp_path):
    """The server's threads: the owner appends and flushes, a worker fsyncs, another writes the
    compaction's bulk; the owner then finishes it. The new log holds the snapshot's state and every
    record appended meanwhile; appends go on to it; the older files are gone."""
    import threading

    records = sample_records(40)
    storage = _compaction_begun(tmp_path, records, 30, 20)
    errors: list[BaseException] = []

    def write():
        try:
            storage.write_compaction()
        except BaseException as exc:  # (reported by the assert below)
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    for record in records[30:38]:  # appended while the bulk is written
        storage.append([record])
        storage.fsync_through(storage.flush())
    writer.join(30)
    assert not errors, errors
    assert storage.finish_compaction() is True
    assert storage.log_bytes_kept == storage.log_bytes
    assert log_file_name(0) in [p.name for p in tmp_path.glob("*.*")]  # (deleted by delete_superseded)
    storage.delete_superseded()
    storage.append(records[38:])
    storage.sync()
    storage.close()
    assert sorted(p.name for p in tmp_path.glob("*.*")) == [log_file_name(20), "meta.json", snapshot_file_name(20)]
    with open_preallocated(tmp_path) as reopened:
        assert reopened.snapshot == (20, b"snap")
        assert reopened.recovered == DurableState.replay(records, snapshot_slot=20)


def test_an_abandoned_compaction_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    """A compaction that cannot finish (here: the covering mark would not fit its room, as past 4 GiB)
    is abandoned: its temp file goes, the log keeps every record, ``compact_log`` still works."""
    import kvstore.storage as storage_module

    records = sample_records(30)
    storage = _compaction_begun(tmp_path, records, 25, 20)
    storage.write_compaction()
    assert list(tmp_path.glob("*" + storage_module.TMP_SUFFIX))
    storage.append(records[25:])
    storage.fsync_through(storage.flush())
    real = storage_module._covering_mark
    monkeypatch.setattr(storage_module, "_covering_mark", lambda *a: real(*a) + b"x")
    assert storage.finish_compaction() is False
    monkeypatch.setattr(storage_module, "_covering_mark", real)
    assert not list(tmp_path.glob("*" + storage_module.TMP_SUFFIX))
    with pytest.raises(StorageError, match="without write_compaction"):
        storage.finish_compaction()
    whole = DurableState.replay(records)
    whole.compact(20)
    storage.compact_log(20, whole)
    storage.close()
    with open_preallocated(tmp_path) as reopened:
        assert reopened.recovered == DurableState.replay(records, snapshot_slot=20)


def test_without_failpoints_the_child_finishes(tmp_path):
    result = run_child(tmp_path, "snapshot", "some_other_point")
    assert result.returncode == 0, result.stderr
    assert "survived" in result.stdout


def test_failpoint_spec_parsing():
    assert failpoints.parse("") == {}
    assert failpoints.parse(" a=exit , b=exit,") == {"a": ("exit", None), "b": ("exit", None)}
    with pytest.raises(ValueError):
        failpoints.parse("a")
    with pytest.raises(ValueError):
        failpoints.parse("a=explode")
    with pytest.raises(ValueError):
        failpoints.parse("=exit")


def test_streamed_snapshot_then_compaction_recovers_like_write_snapshot(tmp_path):
    """write_snapshot_file(slot, pieces) + compact_log(slot, state) store what write_snapshot does;
    the pieces are joined on disk (the server streams a large state machine this way)."""
    records = sample_records(30)
    storage = open_storage(tmp_path)
    storage.append(records)
    storage.sync()
    storage.write_snapshot_file(20, iter([b"state ", b"machine ", b"at 20"]))
    state = DurableState.replay(records)
    state.compact(20)
    storage.compact_log(20, state)
    storage.close()
    reopened = open_storage(tmp_path)
    assert reopened.snapshot == (20, b"state machine at 20")
    expected = DurableState.replay(records)
    expected.compact(20)
    assert reopened.recovered == expected
    reopened.close()


def test_crash_between_streamed_snapshot_and_compaction_keeps_later_records(tmp_path):
    """The server goes on appending while the snapshot file is written. If it dies before
    compact_log, recovery uses the new snapshot with the old log, records written after included."""
    records = sample_records(30)
    storage = open_storage(tmp_path)
    storage.append(records[:25])
    storage.sync()
    storage.write_snapshot_file(20, b"snap")
    storage.append(records[25:])  # appended after the snapshot file was renamed into place
    storage.sync()
    storage.close()  # "crash": no compact_log
    reopened = open_storage(tmp_path)
    assert reopened.snapshot == (20, b"snap")
    expected = DurableState.replay(records)
    expected.compact(20)
    assert reopened.recovered == expected
    reopened.close()


@pytest.mark.parametrize("snapshot", [False, True])
@pytest.mark.parametrize("damage", ["emptied", "zero-filled", "begins with zeros", "a few zero bytes"])
def test_a_members_log_emptied_or_wiped_with_zeros_is_refused_with_or_without_a_snapshot(tmp_path, damage, snapshot):
    """QA: a node's log after a snapshot, emptied or overwritten with zeros at its full size (and a first
    log zero-filled), started without a word: the promise and the votes since the snapshot were gone,
    and the node voted without 200 acknowledged writes. A log of this version begins with its fence (an
    older version's with a record whose length is not zero): one that is empty or begins with zeros is
    refused as a lost log. The same directory undamaged opens, with its records."""
    records = sample_records(30)
    with Storage.open(tmp_path, node_id=1, cluster_id=CLUSTER) as storage:
        storage.record_members({1: storage.incarnation, 2: "0123456789abcdef"})
        storage.append(records[:20])
        storage.sync()
        if snapshot:
            state = DurableState.replay(records[:20])
            storage.write_snapshot(20, b"state machine at 20", state)
        storage.append(records[20:])
        storage.sync()
    log_path = only_log(tmp_path)
    assert log_path.name == log_file_name(20 if snapshot else 0)
    saved = log_path.read_bytes()
    with Storage.open(tmp_path, node_id=1, cluster_id=CLUSTER) as storage:  # undamaged: opens
        assert storage.recovered != DurableState()
    data = {"emptied": b"", "zero-filled": bytes(len(saved)),
            "begins with zeros": bytes(4096) + saved[4096:], "a few zero bytes": bytes(5)}[damage]
    log_path.write_bytes(data)
    what = "is empty" if damage == "emptied" else "begins with zeros"
    with pytest.raises(StorageError, match=f"its log {log_path.name} {what}.*the promises and accepted values"):
        Storage.open(tmp_path, node_id=1, cluster_id=CLUSTER)
    assert log_path.read_bytes() == data  # left as it was found


@pytest.mark.parametrize("damage", ["deleted", "emptied", "cut to its fence", "cut inside its fence"])
def test_a_members_log_that_is_gone_or_empty_is_refused_not_started_afresh(tmp_path, damage):
    """QA: two nodes whose logs were deleted (or truncated to nothing) started with no promises and no
    accepted values, elected each other and served a state that diverged from the third node's. A
    directory whose meta.json names the members (it took part in a cluster) and that has neither a
    snapshot nor a log with anything in it is refused; a directory that never joined starts afresh."""
    records = sample_records(3)
    with Storage.open(tmp_path, node_id=1, cluster_id=CLUSTER) as storage:
        storage.record_members({1: storage.incarnation, 2: "0123456789abcdef"})
        storage.append(records)
        storage.sync()
    log_path = only_log(tmp_path)
    if damage == "deleted":
        log_path.unlink()
    else:
        cut = {"emptied": 0, "cut to its fence": FENCE_BYTES, "cut inside its fence": FENCE_BYTES - 5}[damage]
        log_path.write_bytes(log_path.read_bytes()[:cut])
    with pytest.raises(StorageError, match=f"is {'missing' if damage == 'deleted' else 'empty'}: the promises"):
        Storage.open(tmp_path, node_id=1, cluster_id=CLUSTER)
    fresh = tmp_path / "fresh"  # founded nothing yet: a lost first log is only a crash during creation
    with Storage.open(fresh, node_id=1, cluster_id=CLUSTER):
        pass
    only_log(fresh).unlink()
    with Storage.open(fresh, node_id=1, cluster_id=CLUSTER) as storage:
        assert storage.recovered == DurableState()


def test_a_node_killed_while_it_first_wrote_its_meta_file_starts_again(tmp_path):
    """A crash during the very first open, at the fsync of meta.json's temp file: the next open wrote a
    new meta.json through the same temp name, then failed to delete the leftover it had listed ("cannot
    remove temp files": the node could never start again without a hand in its directory)."""
    flag = tmp_path.parent / f"{tmp_path.name}.flag"
    flag.touch()
    result = run_child(tmp_path, "log", "fsync_file", flag)
    assert result.returncode == 1 and "survived" not in result.stdout, result.stderr
    assert (tmp_path / "meta.json.tmp").exists() and not (tmp_path / "meta.json").exists()
    with Storage.open(tmp_path, node_id=2, cluster_id="fp") as storage:
        assert storage.recovered == DurableState()
    assert not (tmp_path / "meta.json.tmp").exists()


def test_write_compaction_also_writes_the_records_appended_meanwhile_leaving_the_rest_to_finish(tmp_path):
    """With 1 MiB values 10-60 MB were appended while the bulk was written: encoding and writing them in
    the owner's step took 0.1-0.3 s of the event loop. ``write_compaction`` writes what was appended
    meanwhile too (a few rounds, at least COMPACTION_TAIL_RECORDS_MIN records each); ``finish_compaction``
    only what came after its last round."""
    from kvstore.storage import COMPACTION_TAIL_RECORDS_MIN

    records = sample_records(20) + [AcceptRecord(s, Ballot(2, 1), (b"t%d" % s,)) for s in range(21, 221)]
    storage = _compaction_begun(tmp_path, records, 20, 10)
    for record in records[20:200]:  # appended before the worker looks at the tail
        storage.append([record])
    storage.fsync_through(storage.flush())
    storage.write_compaction()
    assert 180 >= COMPACTION_TAIL_RECORDS_MIN and storage._compaction.tail_written == 180
    storage.append(records[200:])
    storage.fsync_through(storage.flush())
    assert storage.finish_compaction() is True
    storage.delete_superseded()
    storage.close()
    with open_preallocated(tmp_path) as reopened:
        assert reopened.recovered == DurableState.replay(records, snapshot_slot=10)


def test_a_tail_of_few_large_records_is_written_by_the_worker_too(tmp_path):
    """QA: with 1 MiB values a compaction's tail was under 64 records, so the worker wrote none of it and
    up to 63 MiB were left to finish_compaction, in the event loop. A round also runs for a tail of
    COMPACTION_TAIL_BYTES_MIN bytes."""
    from kvstore.storage import COMPACTION_TAIL_BYTES_MIN, COMPACTION_TAIL_RECORDS_MIN

    big = [AcceptRecord(s, Ballot(2, 1), (bytes([s]) * (COMPACTION_TAIL_BYTES_MIN // 8),)) for s in range(21, 31)]
    base = sample_records(20)
    records = base + big
    storage = _compaction_begun(tmp_path, records, len(base), 10)
    for record in big:  # ten records, over a MiB
        storage.append([record])
    storage.fsync_through(storage.flush())
    storage.write_compaction()
    assert len(big) < COMPACTION_TAIL_RECORDS_MIN and storage._compaction.tail_written == len(big)
    assert storage.finish_compaction() is True
    storage.close()
    with open_preallocated(tmp_path) as reopened:
        assert reopened.recovered == DurableState.replay(records, snapshot_slot=10)


def test_a_log_compacted_in_two_steps_keeps_a_step_of_zeros_ahead(tmp_path, grown):
    """QA: the new log came with 1 MiB of zeros while the step had grown to 32 MiB, so the first batch
    after the switch grew the log in the event loop (zeros and an fdatasync). write_compaction writes a
    whole step, and the records finish_compaction adds go over its start."""
    storage = open_preallocated(tmp_path, preallocate=4096)
    records = [AcceptRecord(s, Ballot(1, 1), (bytes([s]) * 100_000,)) for s in range(1, 11)]
    storage.append(records)  # a batch larger than the step: the step grows to twice it
    storage.sync()
    step = storage._preallocate
    assert step >= 2 << 20 and len(grown) == 1  # (more than the 1 MiB a new log came with)
    storage.write_snapshot_file(5, b"snap")
    state = DurableState.replay(records)
    state.compact(5)
    storage.begin_compaction(5, state)
    storage.write_compaction()
    storage.append([AcceptRecord(11, Ballot(1, 1), (b"x" * 1000,))])  # left for finish_compaction
    storage.fsync_through(storage.flush())
    assert storage.finish_compaction() is True
    storage.delete_superseded()
    assert only_log(tmp_path).stat().st_size >= storage.log_bytes + step - 2000
    storage.append([AcceptRecord(12, Ballot(1, 1), (b"y" * (step // 2 + 300_000),))])
    storage.fsync_through(storage.flush())
    assert len(grown) == 1  # (no growth of the new log in the owner's thread)
    storage.close()
    with open_preallocated(tmp_path, preallocate=4096) as reopened:
        assert 12 in reopened.recovered.accepted and 4 not in reopened.recovered.accepted


def test_a_new_log_that_cannot_be_opened_after_its_rename_breaks_the_storage(tmp_path, monkeypatch):
    """QA: the compacted log was renamed into place, then opening it failed (no descriptor left): the
    Storage stayed usable and appended to the superseded log, whose records the next open ignores. Now
    the Storage is broken (DiskFailed), for compact_log and finish_compaction alike."""
    import kvstore.storage as storage_module

    for two_step in (False, True):
        where = tmp_path / str(two_step)
        records = sample_records(30)
        storage = _compaction_begun(where, records, 25, 20) if two_step else open_preallocated(where)
        if two_step:
            storage.write_compaction()
        else:
            storage.append(records[:25])
            storage.sync()
            storage.write_snapshot_file(20, b"snap")

        def no_descriptor(*args, **kwargs):
            raise StorageError("cannot open log") from OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(storage, "_open_log", no_descriptor)
        state = DurableState.replay(records[:25])
        state.compact(20)
        with pytest.raises(storage_module.DiskFailed, match="after renaming it into place"):
            storage.finish_compaction() if two_step else storage.compact_log(20, state)
        assert storage.failure is not None
        with pytest.raises(storage_module.DiskFailed):
            storage.append(records[25:])
        storage.close()
