"""``kvstore.groupcommit.GroupCommit``: where a batch is fsynced, and in what order batches are carried out.

How: a ``GroupCommit`` on a fake node (it records the batches it is told to carry out and the disk
failures it is told of) and a fake storage (it records each fsync and can be made slow or failing); a
real trio run for the committer task, whose fsync runs in a worker thread. Checks:

* inline: with nothing staged and fast fsyncs, ``stage`` fsyncs at once and says "carry it out now";
  a batch of ``DecideRecord``s alone is never fsynced, nor written: its records go first in the next
  batch's write, or once they waited a whole tick, or when many wait, or before a log rewrite; the
  durable decided slot follows;
* staged: once fsyncs average above ``inline_fsync_seconds_max`` a batch goes to the committer, which fsyncs
  once for every batch staged meanwhile and carries them out in order; while one is staged, the next
  (even one needing no fsync) is staged behind it, and ``wait_carried_out`` returns when all are done;
* a failed fsync in the committer fences the node and carries out none of its batches.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from types import SimpleNamespace

import trio

from kvstore.groupcommit import GroupCommit
from kvstore.storage import StorageError
from paxos.actions import Actions, DecideRecord, PromiseRecord
from paxos.ballot import Ballot

FAST_S = 0.0015


class FakeStorage:
    def __init__(self) -> None:
        self.records: list = []
        self.end = 0
        self.fsyncs: list[tuple[int, bool]] = []  # (end, in the trio thread)
        self.gate: threading.Event | None = None  # set: fsyncs wait for it (in the worker thread)
        self.fail = False

    def append(self, records) -> None:
        self.records.extend(records)

    def flush(self) -> int:
        self.end += 100
        return self.end

    def fsync_through(self, end: int) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise StorageError("fsync failed (injected)")
        self.fsyncs.append((end, threading.current_thread() is threading.main_thread()))


class FakeNode:
    def __init__(self, inline_fsync_seconds_max: float = FAST_S) -> None:
        self.storage = FakeStorage()
        self.counters: dict = defaultdict(int)
        self.options = SimpleNamespace(fsync=True, inline_fsync_seconds_max=inline_fsync_seconds_max)
        self._fenced = False
        self.carried: list = []
        self.failures: list = []

    def _carry_out(self, actions) -> None:
        self.carried.append(actions)

    def _stop_voting(self, exc) -> None:
        self._fenced = True
        self.failures.append(exc)

    def _send_replies(self) -> None:
        pass


def _promise(n: int, decided_slot: int = 0) -> Actions:
    return Actions(persist=[PromiseRecord(Ballot(n, 1))], decided_slot=decided_slot)


def _decides_only(slot: int, decided_slot: int = 0) -> Actions:
    return Actions(persist=[DecideRecord(slot, (b"x",))], decided_slot=decided_slot)


async def test_with_nothing_staged_and_fast_fsyncs_a_batch_is_fsynced_and_carried_out_inline():
    node = FakeNode()
    commit = GroupCommit(node, durable_decided_slot=0)
    assert commit.stage(_promise(1, decided_slot=4)) is True
    assert node.storage.fsyncs == [(100, True)], "not fsynced in the trio thread"
    assert commit.durable_decided_slot == 4 and commit.pending_batches == 0
    assert node.counters["inline_batches"] == 1 and node.counters["fsyncs"] == 1


async def test_with_inline_fsyncs_disabled_even_the_first_fsync_goes_to_the_committer():
    """``inline_fsync_seconds_max = 0`` disables inline fsyncs: before any fsync was timed the average is
    0 too, which must not count as a fast disk."""
    node = FakeNode(inline_fsync_seconds_max=0.0)
    commit = GroupCommit(node, durable_decided_slot=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit.run)
        assert commit.stage(_promise(1, decided_slot=1)) is False
        with trio.fail_after(10):
            await commit.wait_carried_out()
        nursery.cancel_scope.cancel()
    assert [in_trio for _, in_trio in node.storage.fsyncs] == [False], "fsynced in the trio thread"
    assert node.counters["inline_batches"] == 0 and commit.durable_decided_slot == 1


async def test_a_batch_of_decide_records_alone_is_not_fsynced():
    node = FakeNode()
    commit = GroupCommit(node, durable_decided_slot=0)
    commit.fsync_seconds_ewma = 1.0  # a slow disk: yet nothing waits for it
    assert commit.stage(_decides_only(3, decided_slot=3)) is True
    assert node.storage.fsyncs == [] and commit.durable_decided_slot == 3
    # nor written yet: the records wait for the next batch's write
    assert node.storage.records == [] and node.storage.end == 0
    assert commit.deferred_records == [DecideRecord(3, (b"x",))]


async def test_deferred_decide_records_go_first_in_the_next_batchs_one_write():
    node = FakeNode()
    commit = GroupCommit(node, durable_decided_slot=0)
    commit.stage(_decides_only(3, decided_slot=3))
    commit.stage(_decides_only(4, decided_slot=4))
    assert commit.stage(_promise(2, decided_slot=4)) is True
    assert node.storage.records == [DecideRecord(3, (b"x",)), DecideRecord(4, (b"x",)), PromiseRecord(Ballot(2, 1))]
    assert node.storage.end == 100, "one write for the lot"
    assert node.storage.fsyncs == [(100, True)] and commit.deferred_records == []
    assert node.counters["records"] == 3


async def test_deferred_decide_records_are_written_once_they_waited_a_whole_tick():
    node = FakeNode()
    commit = GroupCommit(node, durable_decided_slot=0)
    commit.stage(_promise(1))
    commit.stage(_decides_only(3))
    commit.note_tick()  # a batch was written during this tick: the records may wait for the next one
    assert node.storage.records == [PromiseRecord(Ballot(1, 1))]
    commit.note_tick()  # a whole tick without a batch: written now, without an fsync
    assert node.storage.records == [PromiseRecord(Ballot(1, 1)), DecideRecord(3, (b"x",))]
    assert node.storage.end == 200 and node.storage.fsyncs == [(100, True)]
    assert commit.deferred_records == []


async def test_many_deferred_decide_records_are_written_without_waiting():
    from kvstore.groupcommit import DEFERRED_RECORDS_MAX

    node = FakeNode()
    commit = GroupCommit(node, durable_decided_slot=0)
    for slot in range(1, DEFERRED_RECORDS_MAX + 1):
        commit.stage(_decides_only(slot))
    assert len(node.storage.records) == DEFERRED_RECORDS_MAX and commit.deferred_records == []
    assert node.storage.fsyncs == []


async def test_wait_carried_out_hands_deferred_records_to_the_storage_before_a_rewrite():
    node = FakeNode()
    commit = GroupCommit(node, durable_decided_slot=0)
    commit.stage(_decides_only(3))
    await commit.wait_carried_out()
    assert node.storage.records == [DecideRecord(3, (b"x",))] and commit.deferred_records == []


async def test_slow_fsyncs_send_batches_to_the_committer_which_fsyncs_once_for_all_in_order():
    node = FakeNode()
    commit = GroupCommit(node, durable_decided_slot=0)
    commit.fsync_seconds_ewma = 10 * FAST_S
    node.storage.gate = threading.Event()
    batches = [_promise(1, decided_slot=1), _promise(2, decided_slot=2), _decides_only(1, decided_slot=3)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit.run)
        assert commit.stage(batches[0]) is False
        await trio.sleep(0.05)  # the committer took the first and waits for its fsync
        # staged behind it: the second, and the third though it needs no fsync (order is kept)
        assert commit.stage(batches[1]) is False
        assert commit.stage(batches[2]) is False
        assert commit.pending_batches == 3 and node.carried == []
        node.storage.gate.set()
        with trio.fail_after(10):
            await commit.wait_carried_out()
        nursery.cancel_scope.cancel()
    assert node.carried == batches
    assert [in_trio for _, in_trio in node.storage.fsyncs] == [False, False], "fsynced in the trio thread"
    assert [end for end, _ in node.storage.fsyncs] == [100, 200], "one fsync for the batches staged meanwhile"
    assert commit.durable_decided_slot == 3 and commit.pending_batches == 0


async def test_a_failed_fsync_in_the_committer_fences_and_carries_out_nothing():
    node = FakeNode(inline_fsync_seconds_max=0.0)  # always the committer
    commit = GroupCommit(node, durable_decided_slot=0)
    commit.fsync_seconds_ewma = FAST_S
    node.storage.fail = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit.run)
        assert commit.stage(_promise(1, decided_slot=1)) is False
        with trio.fail_after(10):
            await commit.wait_carried_out()
        nursery.cancel_scope.cancel()
    assert node.carried == [] and len(node.failures) == 1 and commit.durable_decided_slot == 0
