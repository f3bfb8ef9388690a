"""Crash cycles over every path that writes a log: no crash is ever refused, and no record an fsync
covered is lost (``kvstore.storage``: the length claims of "A log cut short" must hold through the
store's own cuts, so a crash must never look like a log cut short).

How: per seed, a real ``Storage`` with a preallocation of 0, 256, 512 or 4096 bytes goes through a few
open / write / end cycles. Writes: batches of accepts (some with their decide) of random sizes, made
durable by ``sync``, by ``flush`` + ``fsync_through``, or only flushed; some syncs first fail with
ENOSPC part-way (the batch is cut back and retried); now and then a snapshot compacts the log (a
rewritten log with its fence, first mark and zeros). A cycle ends with a power cut that drops the
unsynced bytes (``crash_drop_unsynced``), one that writes unsynced pages back in any order (with an
rng), or a clean close. Each reopen must succeed and hold every accept an fsync covered above the
snapshot. Seeded: ``random.Random(seed)``; a failure names its seed.
"""
from __future__ import annotations

import os
import random

import pytest

from kvstore.storage import Storage, StorageFull
from paxos.actions import AcceptRecord, DecideRecord, DurableState
from paxos.ballot import Ballot

from .test_storage import enospc_after

BALLOT = Ballot(1, 1)
SEEDS = range(40)


@pytest.mark.parametrize("seed", SEEDS)
def test_crash_cycles_never_refuse_and_never_lose_a_synced_accept(tmp_path, seed):
    rng = random.Random(seed)
    preallocate = rng.choice([0, 256, 512, 4096])
    durable: set[int] = set()  # slots whose accept an fsync covered
    slot = 0
    for cycle in range(rng.randint(2, 5)):
        storage = Storage.open(tmp_path, node_id=1, cluster_id="cycles", preallocate=preallocate)
        recovered = storage.recovered
        lost = sorted(s for s in durable if s > storage.snapshot_slot
                      and s not in recovered.accepted and s not in recovered.decided)
        assert not lost, f"seed {seed} cycle {cycle}: durable accepts lost at slots {lost}"
        for _ in range(rng.randint(1, 20)):
            slot += 1
            batch = [AcceptRecord(slot, BALLOT, (bytes(rng.randrange(1, 300)),))]
            if rng.random() < 0.3:
                batch.append(DecideRecord(slot, batch[0].value))
            storage.append(batch)
            how = rng.random()
            if how < 0.1:
                storage._write = enospc_after(rng.randrange(0, 20))  # (less than any batch: it fails)
                with pytest.raises(StorageFull):
                    storage.sync()
                storage._write = os.write
                storage.sync()
                durable.add(slot)
            elif how < 0.45:
                storage.sync()
                durable.add(slot)
            elif how < 0.65:
                storage.fsync_through(storage.flush())
                durable.add(slot)
            else:
                storage.flush()
            if rng.random() < 0.05:
                storage.sync()
                durable.add(slot)
                state = DurableState.replay([AcceptRecord(s, BALLOT, (b"x",))
                                             for s in range(storage.snapshot_slot + 1, slot + 1)],
                                            snapshot_slot=storage.snapshot_slot)
                cut = rng.randint(storage.snapshot_slot, slot)
                state.compact(cut)
                storage.write_snapshot(cut, b"snapshot", state)
        end = rng.random()
        if end < 0.4:
            storage.crash_drop_unsynced(rng, page_bytes=rng.choice([512, 4096]))
        elif end < 0.7:
            storage.crash_drop_unsynced()
        else:
            storage.close()
    with Storage.open(tmp_path, node_id=1, cluster_id="cycles", preallocate=preallocate) as storage:
        lost = sorted(s for s in durable if s > storage.snapshot_slot
                      and s not in storage.recovered.accepted and s not in storage.recovered.decided)
        assert not lost, f"seed {seed}: durable accepts lost at slots {lost}"
