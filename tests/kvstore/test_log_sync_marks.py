"""Sync marks: recovery tells a torn, never-acknowledged tail from damage to durable records.

What is checked:

* Power cuts with reordered writeback (``Storage.crash_drop_unsynced(rng)``: every page of the
  unsynced region survives as written or becomes zeros) over a preallocated log with several batches
  written but not fsynced: the node always opens, and what it recovers is a prefix of what was
  written that holds every record that was fsynced. Several crash cycles per seed, so logs cut at
  open go on with new marks. Some seeds must leave a valid record after the damage, the case the
  older rule refused.
* A flipped byte below the largest sync mark (a record a later mark says was durable) is refused,
  with the file, the offset and the way out in the message; the file is left untouched. The
  residual window (damage to the newest fsynced batch that no later mark covers) is cut with a
  warning, as the module docstring says.
* A log written without marks (by an older version; built here with ``encode_records``) keeps the
  old rule: damage followed by a valid record is refused, a bad last record is cut. Appending to it
  adds marks.
* Marks never reach callers; a mark that claims more than the bytes before it is not believed;
  ``crash_drop_unsynced(rng)`` damages only the unsynced region, page by page, and keeps the size.

How: real files in ``tmp_path``; one ``random.Random(seed)`` per case, the seed in every failure
message (re-run one with ``-k`` and the seed list cut down). The file's records are read back with
``decode_log`` to compare with what was written.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import pytest

from kvstore.storage import (
    _FENCE,
    _FENCE_NO_SYNC,
    FENCE_BYTES,
    RECORD_HEADER,
    Storage,
    StorageError,
    _covering_mark,
    _encode_mark,
    decode_log,
    encode_records,
    log_file_name,
    place_records,
)
from paxos.actions import AcceptRecord, DecideRecord, DurableState, PromiseRecord
from paxos.ballot import Ballot

CLUSTER = "marks"
PREALLOC = 16 * 1024
SEEDS = range(150)


def placed(data: bytes, slot: int = 0, fence: bytes = _FENCE) -> bytes:
    """``data``, whole records from the start of ``log-<slot>.wal``, as the log holds them (each record's
    crc32 XORed with its place's mask: "Records know their place" in storage.py)."""
    return fence + bytes(place_records(data, FENCE_BYTES, slot))


def open_storage(path: Path, preallocate: int = PREALLOC, fsync: bool = True) -> Storage:
    return Storage.open(path, node_id=1, cluster_id=CLUSTER, preallocate=preallocate, fsync=fsync)


def log_path(path: Path) -> Path:
    logs = sorted(path.glob("log-*.wal"))
    assert len(logs) == 1, logs
    return logs[0]


def random_batch(rng: random.Random, slot: int) -> list:
    """One to eight records, values up to 3 KiB (so batches span pages and pages hold several)."""
    batch = []
    for _ in range(rng.randint(1, 8)):
        slot += 1
        value = (rng.randbytes(rng.choice([5, 40, 300, 3000])),)
        kind = rng.random()
        if kind < 0.1:
            batch.append(PromiseRecord(Ballot(rng.randint(1, 50), 1)))
        elif kind < 0.7:
            batch.append(AcceptRecord(slot, Ballot(3, 1), value))
        else:
            batch.append(DecideRecord(slot, value))
    return batch


def records_in_file(path: Path) -> list:
    return decode_log(log_path(path).read_bytes()).records


# ---- power cuts with reordered writeback ---------------------------------------------------------


def test_reordered_writeback_after_power_cuts_opens_and_keeps_every_durable_record(tmp_path):
    old_rule_would_refuse = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        data_dir = tmp_path / f"seed-{seed}"
        written: list = []  # every record handed to the log, in order, across crash cycles
        durable = 0  # how many of them were covered by a finished fsync
        slot = 0
        for cycle in range(3):
            storage = open_storage(data_dir)
            kept = records_in_file(data_dir)
            assert written[:len(kept)] == kept and len(kept) >= durable, (
                f"seed {seed} cycle {cycle}: recovered {len(kept)} records, {durable} were durable, "
                f"{len(written)} written; not a prefix holding every durable record")
            assert storage.recovered == DurableState.replay(kept), f"seed {seed} cycle {cycle}"
            written, durable = list(kept), len(kept)  # the rest is gone for good (cut at open)
            for _ in range(rng.randint(2, 7)):
                batch = random_batch(rng, slot)
                slot += len(batch)
                storage.append(batch)
                written += batch
                how = rng.random()
                if how < 0.3:
                    storage.sync()
                    durable = len(written)
                elif how < 0.5:
                    storage.fsync_through(storage.flush())
                    durable = len(written)
                else:
                    storage.flush()  # written, not durable
            storage.crash_drop_unsynced(rng, page_bytes=rng.choice([512, 4096]))
            scan = decode_log(log_path(data_dir).read_bytes())
            if scan.bad_reason is not None and scan.resync_offset is not None:
                old_rule_would_refuse += 1
                assert not scan.damage_is_durable, f"seed {seed} cycle {cycle}: a torn tail called durable"
        with open_storage(data_dir) as storage:  # the last crash, and the log works after it
            kept = records_in_file(data_dir)
            assert written[:len(kept)] == kept and len(kept) >= durable, f"seed {seed}: final recovery"
            storage.append([DecideRecord(slot + 1, (b"after",))])
            storage.sync()
        with open_storage(data_dir) as storage:
            assert records_in_file(data_dir) == kept + [DecideRecord(slot + 1, (b"after",))], f"seed {seed}"
    # The case this is about: a later batch on disk after zeros where an earlier one was.
    assert old_rule_would_refuse >= 20, f"only {old_rule_would_refuse} crashes left a valid record after damage"


def test_crash_drop_unsynced_with_rng_zeroes_whole_unsynced_pages_only(tmp_path):
    for seed in range(20):
        rng = random.Random(seed)
        data_dir = tmp_path / f"seed-{seed}"
        storage = open_storage(data_dir)
        storage.append(random_batch(rng, 0))
        storage.sync()
        synced = storage._synced_end
        storage.append(random_batch(rng, 100))
        storage.append(random_batch(rng, 200))
        storage.flush()
        before = log_path(data_dir).read_bytes()
        storage.crash_drop_unsynced(rng, page_bytes=512)
        after = log_path(data_dir).read_bytes()
        assert len(after) == len(before), f"seed {seed}: the file size is kept"
        assert after[:synced] == before[:synced], f"seed {seed}: durable bytes untouched"
        for page in range(synced - synced % 512, len(before), 512):
            low, high = max(page, synced), min(page + 512, len(before))
            assert after[low:high] in (before[low:high], bytes(high - low)), f"seed {seed} page {page}"


# ---- damage to durable records -------------------------------------------------------------------


def test_flipped_byte_below_the_largest_mark_is_refused(tmp_path):
    for seed in range(40):
        rng = random.Random(seed)
        data_dir = tmp_path / f"seed-{seed}"
        slot = 0
        with open_storage(data_dir) as storage:
            for _ in range(rng.randint(2, 5)):
                batch = random_batch(rng, slot)
                slot += len(batch)
                storage.append(batch)
                storage.sync()
        path = log_path(data_dir)
        original = path.read_bytes()
        scan = decode_log(original)
        marked = scan.marked_end
        assert marked is not None and marked > len(_covering_mark(0)), f"seed {seed}: {marked}"
        offset = rng.randrange(marked)
        damaged = bytearray(original)
        damaged[offset] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        with pytest.raises(StorageError) as excinfo:
            open_storage(data_dir)
        message = str(excinfo.value)
        start = record_start(original, offset)
        assert str(path) in message and f"corrupt at byte offset {start} " in message, (seed, offset, message)
        if offset < FENCE_BYTES + len(_covering_mark(0, PREALLOC, FENCE_BYTES)):
            assert "written whole" in message, (seed, offset, message)  # the fence or the first mark
        else:
            # (The scan stops at the first mark past the damage: any such mark settles it.)
            claimed = re.search(r"durable below byte offset (\d+)", message)
            assert claimed and start < int(claimed.group(1)) <= marked, (seed, offset, message)
        assert "restore it from a backup of this node, or replace the node" in message, (seed, message)
        assert 'docs/operations.md, "A damaged log"' in message and "Do not wipe" in message, (seed, message)
        assert path.read_bytes() == bytes(damaged), f"seed {seed}: refusing must not repair"


def record_start(buf: bytes, offset: int) -> int:
    """Start of the record (mark or Paxos record) holding byte ``offset`` of a clean log."""
    position = 0
    while True:
        (length, _crc) = RECORD_HEADER.unpack_from(buf, position)
        end = position + RECORD_HEADER.size + length
        if offset < end:
            return position
        position = end


def test_damage_to_the_newest_fsynced_batch_no_mark_covers_is_cut_with_a_warning(tmp_path, caplog):
    """The residual window: nothing after the last fsynced batch says it was durable, so damage in it
    looks like a torn write. It is cut, loudly."""
    first, last = [PromiseRecord(Ballot(1, 1))], [AcceptRecord(1, Ballot(1, 1), (b"x" * 50,)), DecideRecord(1, ())]
    with open_storage(tmp_path) as storage:
        storage.append(first)
        storage.sync()
        storage.append(last)
        storage.sync()
    path = log_path(tmp_path)
    data = bytearray(path.read_bytes())
    scan = decode_log(bytes(data))
    # (the last batch's mark also claims the file's length, preallocated: the long form)
    last_start = (FENCE_BYTES + len(_covering_mark(0, PREALLOC, FENCE_BYTES)) + len(encode_records(first))
                  + len(_encode_mark(1, 2)))
    assert scan.marked_end == last_start - len(_encode_mark(1, 2))  # its own mark covers what came before it
    data[last_start + RECORD_HEADER.size + 3] ^= 0x10  # inside the accept of the last batch
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="kvstore.storage"):
        with open_storage(tmp_path) as storage:
            assert storage.recovered == DurableState.replay(first)
    warning = " ".join(caplog.messages)
    assert str(path) in warning and f"at byte offset {last_start}" in warning, warning
    assert "dropping 1 valid records" in warning, warning  # the decide after the damaged accept


def test_a_mark_claiming_more_than_the_bytes_before_it_is_not_believed(tmp_path):
    """A client value can hold bytes that look like a mark; one that claims bytes after itself cannot
    be one this program wrote (only a file's first mark covers what follows it)."""
    records = [PromiseRecord(Ballot(1, 1)), AcceptRecord(1, Ballot(1, 1), (b"v",))]
    fresh = _covering_mark(0, 0, FENCE_BYTES)
    body = placed(fresh + encode_records(records))
    torn = b"\x00\x00\x01\x00garbage!"  # a record header whose payload never arrived
    # (placed where it lies: a value's bytes would have to guess their offset to pass for a mark)
    forged = bytes(place_records(_encode_mark(10**9), len(body + torn), 0))
    scan = decode_log(body + torn + forged)
    assert scan.good_bytes == len(body) and scan.resync_offset == len(body + torn)
    assert scan.marked_end == FENCE_BYTES + len(fresh) and not scan.damage_is_durable
    assert scan.dropped_records == 0  # a mark, believed or not, is no record
    # claims the damaged byte, and is after it: believed
    honest = bytes(place_records(_encode_mark(len(body) + 1), len(body + torn), 0))
    assert decode_log(body + torn + honest).damage_is_durable


# ---- logs without marks (an older version's) -----------------------------------------------------


def old_log_dir(tmp_path: Path, data: bytes) -> Path:
    """A data dir whose log was written by a version without sync marks."""
    open_storage(tmp_path, preallocate=0).close()
    log_path(tmp_path).write_bytes(data)
    return log_path(tmp_path)


OLD_RECORDS = [PromiseRecord(Ballot(2, 2))] + [AcceptRecord(s, Ballot(2, 2), (b"old-%d" % s,)) for s in range(1, 8)]


def test_old_log_with_damage_before_a_valid_record_is_refused_as_before(tmp_path):
    data = encode_records(OLD_RECORDS)
    start = len(encode_records(OLD_RECORDS[:3]))
    path = old_log_dir(tmp_path, data[:start] + bytes(20) + data[start + 20:])  # zeros, then records
    assert decode_log(path.read_bytes()).marked_end is None
    with pytest.raises(StorageError, match=f"corrupt at byte offset {start} .*valid record follows.*no sync marks"):
        open_storage(tmp_path, preallocate=0)


def test_old_log_with_a_torn_last_record_is_cut_as_before(tmp_path):
    data = encode_records(OLD_RECORDS)
    path = old_log_dir(tmp_path, data[:-4])
    with open_storage(tmp_path, preallocate=0) as storage:
        assert storage.recovered == DurableState.replay(OLD_RECORDS[:-1])
        assert path.read_bytes() == encode_records(OLD_RECORDS[:-1])
        # Appending converts it: the next batch starts with a mark covering the old records.
        storage.append([DecideRecord(1, (b"old-1",))])
        storage.sync()
    scan = decode_log(path.read_bytes())
    assert scan.marked_end == len(encode_records(OLD_RECORDS[:-1]))
    assert scan.records == OLD_RECORDS[:-1] + [DecideRecord(1, (b"old-1",))]


# ---- what marks are written ----------------------------------------------------------------------


def test_marks_are_written_when_the_synced_end_moved_and_never_reach_callers(tmp_path):
    fresh = _covering_mark(0, 0, FENCE_BYTES)
    a, b, c = [PromiseRecord(Ballot(1, 1))], [DecideRecord(1, (b"b",))], [DecideRecord(2, (b"c",))]
    with open_storage(tmp_path, preallocate=0) as storage:
        storage.append(a)
        storage.sync()  # durable through end_a; the fresh mark already covers the start: no mark
        end_a = FENCE_BYTES + len(fresh + encode_records(a))
        storage.append(b)
        end_b = storage.flush()  # the synced end moved past the last mark: a mark first
        storage.append(c)
        storage.flush()  # not synced since: no new mark
    expected = placed(fresh + encode_records(a) + _encode_mark(end_a) + encode_records(b) + encode_records(c))
    assert log_path(tmp_path).read_bytes() == expected
    assert end_b == FENCE_BYTES + len(fresh + encode_records(a) + _encode_mark(end_a) + encode_records(b))
    with open_storage(tmp_path, preallocate=0) as storage:
        assert storage.recovered == DurableState.replay(a + b + c)
    assert decode_log(expected).records == a + b + c


def test_without_fsync_no_marks_are_written(tmp_path):
    """With fsync off nothing is made durable, so no mark may say it was: not in a new log, and not
    when a log written with fsync on is reopened with it off (what it found was never fsynced)."""
    records = [PromiseRecord(Ballot(1, 1)), DecideRecord(1, (b"x",))]
    with open_storage(tmp_path / "new", preallocate=0, fsync=False) as storage:
        for record in records:
            storage.append([record])
            storage.sync()
    assert log_path(tmp_path / "new").read_bytes() == placed(encode_records(records), 0, _FENCE_NO_SYNC)
    with open_storage(tmp_path / "old", preallocate=0) as storage:
        storage.append(records[:1])
        storage.sync()
    with open_storage(tmp_path / "old", preallocate=0, fsync=False) as storage:
        storage.append(records[1:])
        storage.sync()
    expected = placed(_covering_mark(0, 0, FENCE_BYTES) + encode_records(records))
    assert log_path(tmp_path / "old").read_bytes() == expected


def test_a_rewritten_log_starts_with_a_mark_covering_it(tmp_path):
    records = [PromiseRecord(Ballot(1, 1))] + [AcceptRecord(s, Ballot(1, 1), (b"v%d" % s,)) for s in range(1, 9)]
    with open_storage(tmp_path) as storage:
        storage.append(records)
        state = DurableState.replay(records)
        state.compact(4)
        storage.write_snapshot(4, b"four", state)
    whole = (tmp_path / log_file_name(4)).read_bytes()
    data = whole.rstrip(b"\0")
    zeros = whole[len(data):]  # preallocated with the file, and claimed by its mark
    body = encode_records(DurableState.replay(records, snapshot_slot=4).records())
    assert data == placed(_covering_mark(len(body), PREALLOC, FENCE_BYTES) + body, 4) and len(zeros) >= PREALLOC
    scan = decode_log(whole, 4)
    assert scan.marked_end == len(data) and scan.claimed_size == len(data) + PREALLOC
    last_start = len(data) - len(encode_records(DurableState.replay(records, snapshot_slot=4).records()[-1:]))
    for what, damaged in [
        ("a flipped byte", data[:-2] + bytes([data[-2] ^ 1]) + data[-1:] + zeros),
        ("zeros where its last record was", data[:last_start] + bytes(len(data) - last_start) + zeros),
    ]:
        # The last record of the rewritten log is covered by its first mark, even with nothing after it.
        (tmp_path / log_file_name(4)).write_bytes(damaged)
        with pytest.raises(StorageError, match=f"offset {last_start} .*durable below byte offset {len(data)}"):
            open_storage(tmp_path)
        assert (tmp_path / log_file_name(4)).read_bytes() == damaged, what
