"""A log cut short from its end is refused (``kvstore.storage``, "A log cut short"): the sync marks of a
preallocated log claim the length the file had when an fsync made it durable, which is ahead of the
records, so a file that lost its end (truncated at a record boundary: the scan alone sees a clean,
shorter log) is shorter than a claim that survived, and the node refuses to start instead of voting
without the votes it lost. The store's own cuts (a torn tail at open, a batch cut back after ENOSPC,
the crash seam) keep the length, so a crash never trips the check.

How: real ``Storage`` directories; the cut is ``Path.write_bytes`` of a prefix, as a file system that
loses the end of a file leaves it. Compared with what the scan alone makes of the same prefix.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvstore.storage import FENCE_BYTES, Storage, StorageError, decode_log, log_file_name
from paxos.actions import AcceptRecord, DecideRecord, DurableState, PromiseRecord
from paxos.ballot import Ballot

from .logwalk import record_starts

BALLOT = Ballot(2, 1)
PREALLOC = 4096


def open_storage(path: Path, preallocate: int = PREALLOC) -> Storage:
    return Storage.open(path, node_id=1, cluster_id="cut", preallocate=preallocate)


def batches(count: int) -> list[list]:
    return [[AcceptRecord(slot, BALLOT, (b"v%03d" % slot * 20,)), DecideRecord(slot - 1, ())] if slot > 1
            else [PromiseRecord(BALLOT), AcceptRecord(1, BALLOT, (b"first",))] for slot in range(1, count + 1)]


def written(path: Path, count: int, preallocate: int = PREALLOC) -> Path:
    with open_storage(path, preallocate) as storage:
        for batch in batches(count):
            storage.append(batch)
            storage.sync()
    return path / log_file_name(0)


def test_a_log_cut_short_below_what_its_marks_claim_is_refused_wherever_it_is_cut(tmp_path):
    log = written(tmp_path, 12)
    data = log.read_bytes()
    claimed = decode_log(data).claimed_size
    records_end = len(data.rstrip(b"\0"))
    assert records_end < claimed <= len(data)  # the marks claim the zeros ahead of the records too
    # (a cut inside the fence or right after it leaves no mark: it is refused as damage to the first
    # bytes, written whole, test_storage.py's cut-anywhere test; here the cuts that leave a mark)
    boundaries = [start for start in record_starts(data) if start > FENCE_BYTES]
    cuts = boundaries + [records_end, records_end + 1, claimed - 1] + random.Random(7).sample(
        range(FENCE_BYTES + 1, claimed), 20)
    for cut in cuts:
        log.write_bytes(data[:cut])
        with pytest.raises(StorageError, match=f"log {log} is {cut} bytes long, but a sync mark .* says it was "
                                               f"{claimed} bytes long .*its end was cut off"):
            open_storage(tmp_path)
        assert log.read_bytes() == data[:cut], cut  # refused, nothing "repaired"
    # What the scan alone makes of a cut at a record boundary: a clean, shorter log (the previous rule
    # started the node with the votes it still had).
    scan = decode_log(data[:boundaries[-1]])
    assert scan.bad_reason is None and len(scan.records) < len(decode_log(data).records)
    log.write_bytes(data)
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay([r for b in batches(12) for r in b])


def test_a_rewritten_log_cut_at_a_record_boundary_is_refused(tmp_path):
    """A log written whole (a compaction) starts with a mark covering all of it: that is its claim."""
    records = [r for b in batches(10) for r in b]
    with open_storage(tmp_path, preallocate=0) as storage:
        storage.append(records)
        storage.sync()
        state = DurableState.replay(records)
        state.compact(3)
        storage.write_snapshot(3, b"three", state)
    log = tmp_path / log_file_name(3)
    data = log.read_bytes()
    last = record_starts(data)[-1]
    assert decode_log(data[:last], 3).bad_reason is None  # the scan alone: clean
    log.write_bytes(data[:last])
    with pytest.raises(StorageError, match="its end was cut off"):
        open_storage(tmp_path, preallocate=0)


def test_the_stores_own_cuts_and_crashes_keep_the_length_its_marks_claim(tmp_path):
    """A torn tail cut at open, and power cuts (the crash seam, both ways), leave a log that opens again
    and again: each cut keeps the file as long as any mark claims."""
    for seed in range(6):
        path = tmp_path / f"seed-{seed}"
        rng = random.Random(seed)
        storage = open_storage(path)
        kept: list = []
        for batch in batches(rng.randrange(3, 9)):
            storage.append(batch)
            storage.sync()
            kept += batch
        storage.append([AcceptRecord(99, BALLOT, (b"never synced" * rng.randrange(1, 400),))])
        storage.flush()
        storage.crash_drop_unsynced(rng if seed % 2 else None)
        for _ in range(2):  # the second open sees what the first one's cut left
            with open_storage(path) as storage:
                assert 99 not in storage.recovered.accepted or seed % 2, seed
                assert DurableState.replay(kept).accepted.items() <= storage.recovered.accepted.items(), seed
            log = path / log_file_name(0)
            assert len(log.read_bytes()) >= decode_log(log.read_bytes()).claimed_size, seed


def test_without_preallocation_marks_claim_no_more_than_the_records(tmp_path):
    """The residual window, stated: a log without preallocated space has nothing ahead of its records
    for a mark to claim, so a cut at a record boundary is not seen (docs/operations.md)."""
    log = written(tmp_path, 6, preallocate=0)
    data = log.read_bytes()
    assert decode_log(data).claimed_size <= record_starts(data)[-1]
    log.write_bytes(data[:record_starts(data)[-1]])
    with open_storage(tmp_path, preallocate=0) as storage:
        assert len(storage.recovered.decided) < 5


def test_a_log_that_grew_past_its_zeros_is_refused_wherever_it_is_cut(tmp_path):
    """Records never go past what a mark before them claims: before a batch that would reach beyond the
    largest claim (past the preallocated zeros, or one batch larger than all of them: a catch-up after a
    restart) the file grows and is fsynced, and the batch's own mark claims the new length. So a cut
    anywhere below the file's length leaves a mark that sees it. Regression (QA): a 3.2 MB catch-up batch
    written past the 1 MiB zeros, then small batches; a cut inside the big batch took every mark that
    claimed more, and the node started without the big batch and the small ones after it, all fsynced."""
    sizes = [10, 3000, 200, 5 * PREALLOC, 50, 50, 2 * PREALLOC, 10] + [300] * 12
    with open_storage(tmp_path) as storage:
        for slot, size in enumerate(sizes, start=1):
            storage.append([AcceptRecord(slot, BALLOT, (b"%d" % slot * size,))])
            if slot % 3:
                storage.sync()
            else:  # the server's way: write, then fsync up to the end in a worker thread
                storage.fsync_through(storage.flush())
    log = tmp_path / log_file_name(0)
    data = log.read_bytes()
    length = len(data)
    assert length > 7 * PREALLOC  # it grew past its zeros several times
    starts = [start for start in record_starts(data) if start > FENCE_BYTES]
    cuts = sorted(set(starts + random.Random(3).sample(range(FENCE_BYTES + 1, length), 300)))
    for cut in cuts:
        log.write_bytes(data[:cut])
        with pytest.raises(StorageError, match="its end was cut off|corrupt at byte offset"):
            open_storage(tmp_path)
    log.write_bytes(data)
    with open_storage(tmp_path) as storage:
        assert sorted(storage.recovered.accepted) == list(range(1, len(sizes) + 1))
