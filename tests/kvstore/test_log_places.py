"""Records know their place: a log record's checksum holds its log and its byte offset, so a record
that is whole and valid but not where it was written (a misdirected write, a stale block the disk
returned, a block of another log file) is damage, not a record (``kvstore.storage``, "Records know their
place").

How: real ``Storage`` directories in a temporary dir; the damage is made by copying whole records'
bytes over others with ``Path.write_bytes``, as a disk that puts a block in the wrong place would.
Each case is checked against what the previous format (a crc32 of the payload alone) let through: the
moved record read as valid, the record it covered silently gone. Logs of that format still open, go
on in it, and come back in the new one at their next rewrite.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.storage import (
    FENCE_BYTES,
    RECORD_HEADER,
    Storage,
    StorageError,
    _decode_log,
    decode_log,
    encode_records,
    log_file_name,
    place_records,
    position_mask,
)
from paxos.actions import AcceptRecord, DecideRecord, DurableState, PromiseRecord
from paxos.ballot import Ballot

from .logwalk import record_starts

BALLOT = Ballot(3, 1)


def open_storage(path: Path) -> Storage:
    return Storage.open(path, node_id=1, cluster_id="places", preallocate=0)


def accepts(first: int, count: int) -> list:
    """Accepts of equal encoded size (one-byte slots below 24, same-size values): interchangeable blocks."""
    return [AcceptRecord(slot, BALLOT, (b"value-%02d" % slot,)) for slot in range(first, first + count)]


def written(path: Path, batches: list[list]) -> Path:
    """A data dir whose log holds ``batches``, one sync each (so later batches carry marks covering
    the earlier ones); returns the log's path."""
    with open_storage(path) as storage:
        for batch in batches:
            storage.append(batch)
            storage.sync()
    (log,) = path.glob("log-*.wal")
    return log


def test_a_record_written_over_another_of_the_same_size_is_refused(tmp_path):
    first, second = [PromiseRecord(BALLOT), *accepts(1, 4)], [DecideRecord(1, (b"value-01",))]
    log = written(tmp_path, [first, second])
    data = bytearray(log.read_bytes())
    starts = record_starts(bytes(data))
    # starts: the fence, the fresh log's mark, the promise, accepts 1-4, the second batch's mark, the decide
    one, three = starts[3], starts[5]
    size = starts[4] - starts[3]
    assert starts[6] - starts[5] == size
    data[three:three + size] = data[one:one + size]  # accept 1's block where accept 3's was
    log.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=f"corrupt at byte offset {three} .checksum mismatch.*durable below"):
        open_storage(tmp_path)
    assert log.read_bytes() == bytes(data)  # refused, nothing "repaired"
    # What the crc32 of the payload alone (the previous format) made of it: accept 1 twice, accept 3 gone.
    # (The same log in that format: no fence, no masks.)
    plain = bytearray(log.read_bytes())
    for start in starts[1:]:
        (length, crc) = RECORD_HEADER.unpack_from(plain, start)
        RECORD_HEADER.pack_into(plain, start, length, crc ^ position_mask(0, start))
    plain[three:three + size] = plain[one:one + size]
    scan = decode_log(bytes(plain[FENCE_BYTES:]))
    assert scan.placed is None and scan.bad_reason is None
    assert 3 not in DurableState.replay(scan.records).accepted


def test_a_block_of_another_log_at_the_same_offset_is_refused(tmp_path):
    """The log's slot is part of the place: log-0's record at offset X is no record of log-9 at X."""
    records = [PromiseRecord(BALLOT), *accepts(1, 12)]
    with open_storage(tmp_path) as storage:
        storage.append(records)
        storage.sync()
        state = DurableState.replay(records)
        state.compact(9)
        old = (tmp_path / log_file_name(0)).read_bytes()
        storage.write_snapshot(9, b"nine", state)
        storage.append(accepts(13, 3))
        storage.sync()
    log = tmp_path / log_file_name(9)
    data = bytearray(log.read_bytes())
    starts = record_starts(bytes(data))
    victim = starts[3]  # accept 11 in the rewritten log (after its fence, its mark and the promise)
    size = starts[4] - starts[3]
    assert victim in record_starts(old) and record_starts(old)[record_starts(old).index(victim) + 1] - victim == size
    data[victim:victim + size] = old[victim:victim + size]  # log-0's record at the same offset
    log.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=f"corrupt at byte offset {victim} .checksum mismatch"):
        open_storage(tmp_path)


def test_logs_of_the_previous_format_open_go_on_as_they_are_and_are_rewritten_with_places(tmp_path):
    records = [PromiseRecord(BALLOT), *accepts(1, 6)]
    with open_storage(tmp_path):
        pass
    log0 = tmp_path / log_file_name(0)
    log0.write_bytes(encode_records(records))  # as the previous format wrote it (and without marks)
    more = accepts(7, 2)
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records)
        storage.append(more)
        storage.sync()
    scan = decode_log(log0.read_bytes())
    assert scan.placed is None and scan.records == records + more  # went on in its own format
    with open_storage(tmp_path) as storage:
        state = DurableState.replay(records + more)
        state.compact(4)
        storage.write_snapshot(4, b"four", state)
        storage.append(accepts(9, 1))
        storage.sync()
    rewritten = (tmp_path / log_file_name(4)).read_bytes()
    scan = decode_log(rewritten, 4)
    assert scan.placed == 4 and scan.bad_reason is None
    assert scan.records == DurableState.replay(records + more, snapshot_slot=4).records() + accepts(9, 1)
    assert decode_log(rewritten, 5).bad_reason == "checksum mismatch"  # placed for log-4, not for log-5
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(records + more + accepts(9, 1), snapshot_slot=4)


def test_the_version_before_refuses_a_log_of_this_one_instead_of_cutting_it(tmp_path):
    """A rollback must not wipe votes: read by the previous version's rules (``decode_log``'s mode for a
    log without masks, unchanged), a log of this version starts with a mark claiming far more than the
    file, so its masked records are damage below a mark: refused. (Without the fence, those rules
    found no valid record at all and cut the whole log as a torn tail.)"""
    log = written(tmp_path, [[PromiseRecord(BALLOT), *accepts(1, 3)], accepts(4, 2)])
    data = log.read_bytes()
    claims = [0]
    as_before = _decode_log(data, None, claims)  # the rules of a log without masks
    assert as_before.records == [] and as_before.damage_is_durable, as_before.bad_reason
    assert as_before.marked_end is not None and as_before.marked_end > len(data)
    without_fence = _decode_log(data[FENCE_BYTES:], None, [0])
    assert without_fence.records == [] and not without_fence.damage_is_durable  # what the fence prevents


def test_place_records_gives_each_record_the_mask_of_its_own_offset():
    data = encode_records(accepts(1, 3))
    starts = record_starts(data)
    placed = place_records(data, 1000, 7)
    for start in starts:
        (length, crc) = RECORD_HEADER.unpack_from(placed, start)
        (_, plain_crc) = RECORD_HEADER.unpack_from(data, start)
        assert crc == plain_crc ^ position_mask(7, 1000 + start) and crc != plain_crc
    assert bytes(place_records(placed, 1000, 7)) == data  # the mask is its own inverse
