"""Disk faults in kvstore.storage: a failed fsync is never retried, a full disk on a write is.

What is checked: every fsync site (the log's fdatasync in ``sync`` and in ``fsync_through``, a file's
fsync before its rename for snapshots, rewritten logs and the meta file, the fsync after recovery cuts
a torn tail, every directory fsync), failing with EIO and with ENOSPC, raises ``DiskFailed`` whose
message names the file, the error and what to do; afterwards every call raises ``DiskFailed`` with the
same message (``Storage.failure``), even once the disk works again (after fsyncgate a retried fsync
may "succeed" without the data). A write that fails with ENOSPC raises ``StorageFull`` and the Storage
stays usable: once space frees, ``sync`` succeeds and the records are durable. A write that fails
with anything else is ``DiskFailed``.

How: faults come from ``kvstore.failpoints`` (``KV_FAILPOINTS`` set with ``monkeypatch`` and read with
``failpoints.reload()``; flag files turn them on and off) or from the Storage's ``_write`` seam; each
test works in ``tmp_path`` and reopens the directory to see what is durable.
"""
from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from kvstore import failpoints
from kvstore.storage import DiskFailed, Storage, StorageError, StorageFull, log_file_name
from paxos.actions import AcceptRecord, DurableState, PromiseRecord
from paxos.ballot import Ballot

CLUSTER = "faults"
ERRORS = {"eio": "Input/output error", "enospc": "No space left on device"}


@pytest.fixture(autouse=True)
def clean_failpoints(monkeypatch):
    monkeypatch.delenv(failpoints.ENV_VAR, raising=False)
    failpoints.reload()
    yield
    monkeypatch.delenv(failpoints.ENV_VAR, raising=False)
    failpoints.reload()


def configure(monkeypatch, value: str) -> None:
    monkeypatch.setenv(failpoints.ENV_VAR, value)
    failpoints.reload()


def clear(monkeypatch) -> None:
    monkeypatch.delenv(failpoints.ENV_VAR, raising=False)
    failpoints.reload()


def open_storage(path: Path, preallocate: int = 0) -> Storage:
    return Storage.open(path, node_id=1, cluster_id=CLUSTER, preallocate=preallocate)


def batch(first_slot: int, count: int = 3) -> list:
    return [AcceptRecord(s, Ballot(2, 1), (b"value-%d" % s,)) for s in range(first_slot, first_slot + count)]


FIRST = [PromiseRecord(Ballot(2, 1))] + batch(1)


def later_calls(storage: Storage) -> list:
    """Every call a server makes on its Storage, each as a thunk."""
    state = DurableState.replay(FIRST)
    return [
        ("append", lambda: storage.append(batch(50))),
        ("sync", storage.sync),
        ("flush", storage.flush),
        ("fsync_through", lambda: storage.fsync_through(storage.log_bytes + 1)),
        ("write_snapshot_file", lambda: storage.write_snapshot_file(60, b"snap")),
        ("compact_log", lambda: storage.compact_log(storage.snapshot_slot, state)),
        ("write_snapshot", lambda: storage.write_snapshot(70, b"snap", state)),
        ("read_snapshot", storage.read_snapshot),
        ("open_snapshot", storage.open_snapshot),
        ("crash_drop_unsynced", storage.crash_drop_unsynced),
    ]


def assert_broken_for_good(monkeypatch, storage: Storage, message: str) -> None:
    assert storage.failure == message
    clear(monkeypatch)  # the disk "works" again: no retry may be tried anyway
    for name, call in later_calls(storage):
        with pytest.raises(DiskFailed) as excinfo:
            call()
        assert str(excinfo.value) == message, name
    storage.close()


def assert_message(message: str, file_part: str, action: str) -> None:
    assert file_part in message, message
    assert ERRORS[action] in message, message
    assert "restart it once the disk is fixed" in message and "docs/operations.md" in message, message


# ---- the sites of a running Storage ----------------------------------------------------------------


def log_sync(storage: Storage) -> None:
    storage.append(batch(10))
    storage.sync()


def log_fsync_through(storage: Storage) -> None:
    storage.append(batch(10))
    storage.fsync_through(storage.flush())


def snapshot_file(storage: Storage) -> None:
    storage.write_snapshot_file(4, b"snapshot through 4")


def rewritten_log(storage: Storage) -> None:
    storage.compact_log(4, DurableState.replay(FIRST))


RUNNING_SITES = [
    # (failpoint, file named in the message, setup before the fault, the call that meets it)
    ("fsync_log", log_file_name(0), None, log_sync),
    ("fsync_log", log_file_name(0), None, log_fsync_through),
    ("fsync_file", "snapshot-00000000000000000004.snap.tmp", None, snapshot_file),
    ("fsync_dir", "directory", None, snapshot_file),  # after the snapshot's rename
    ("fsync_file", log_file_name(4) + ".tmp", snapshot_file, rewritten_log),
    ("fsync_dir", "directory", snapshot_file, rewritten_log),  # after the log's rename
    ("fsync", log_file_name(0), None, log_sync),
    ("fsync", log_file_name(0), None, log_fsync_through),
    ("fsync", "snapshot-00000000000000000004.snap.tmp", None, snapshot_file),
]


@pytest.mark.parametrize("action", ["eio", "enospc"])
@pytest.mark.parametrize("point, file_part, setup, call", RUNNING_SITES,
                         ids=[f"{p}-{c.__name__}" for p, _, _, c in RUNNING_SITES])
def test_fsync_failure_breaks_the_storage_for_good(monkeypatch, tmp_path, action, point, file_part, setup, call):
    storage = open_storage(tmp_path)
    storage.append(FIRST)
    storage.sync()
    if setup is not None:
        setup(storage)
    configure(monkeypatch, f"{point}={action}")
    with pytest.raises(DiskFailed) as excinfo:
        call(storage)
    assert not isinstance(excinfo.value, StorageFull)
    message = str(excinfo.value)
    assert_message(message, file_part, action)
    assert_broken_for_good(monkeypatch, storage, message)
    with open_storage(tmp_path) as reopened:  # recovery reads what the disk holds: at least FIRST
        assert all(reopened.recovered.accepted.get(r.slot) == (r.ballot, r.value)
                   for r in FIRST[1:] if r.slot > reopened.snapshot_slot)


def test_directory_fsync_when_deleting_old_files_breaks_the_storage(monkeypatch, tmp_path):
    storage = open_storage(tmp_path)
    storage.append(FIRST)
    storage.sync()
    snapshot_file(storage)
    calls = []
    real = Storage._sync_dir

    def second_dir_fsync_fails(self, path=None):
        calls.append(path)
        if len(calls) == 2:  # after the log rename (1), the one after deleting old files (2)
            configure(monkeypatch, "fsync_dir=eio")
        return real(self, path)

    monkeypatch.setattr(Storage, "_sync_dir", second_dir_fsync_fails)
    with pytest.raises(DiskFailed) as excinfo:
        rewritten_log(storage)
    assert len(calls) == 2
    assert_message(str(excinfo.value), str(tmp_path), "eio")
    assert_broken_for_good(monkeypatch, storage, str(excinfo.value))


def test_fsync_failure_in_a_worker_thread_stops_the_owner(monkeypatch, tmp_path):
    """fsync_through fails in a worker while the owner appends and flushes (the pipelined server's
    pattern): the owner's calls during the fsync work, every one after it raises DiskFailed."""
    storage = open_storage(tmp_path)
    storage.append(FIRST)
    end = storage.flush()
    in_fsync, proceed = threading.Event(), threading.Event()

    def slow_failing_fdatasync(fd):
        in_fsync.set()
        assert proceed.wait(10)
        raise OSError(errno.EIO, "Input/output error")

    storage._fdatasync = slow_failing_fdatasync
    errors = []

    def worker():
        try:
            storage.fsync_through(end)
        except DiskFailed as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    assert in_fsync.wait(10)
    storage.append(batch(10))  # the owner goes on while the disk syncs
    assert storage.flush() > end
    proceed.set()
    thread.join()
    assert len(errors) == 1
    assert_message(str(errors[0]), log_file_name(0), "eio")
    assert_broken_for_good(monkeypatch, storage, str(errors[0]))


# ---- the sites of open -----------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["eio", "enospc"])
@pytest.mark.parametrize("point, file_part", [("fsync_file", "meta.json.tmp"), ("fsync_dir", "directory")])
def test_fsync_failure_while_initialising_a_dir_refuses_to_open(monkeypatch, tmp_path, action, point, file_part):
    configure(monkeypatch, f"{point}={action}")
    with pytest.raises(DiskFailed) as excinfo:
        open_storage(tmp_path / "new")
    assert_message(str(excinfo.value), file_part, action)
    clear(monkeypatch)
    open_storage(tmp_path / "new").close()  # the lock was released; a fixed disk opens


@pytest.mark.parametrize("action", ["eio", "enospc"])
def test_fsync_failure_after_cutting_a_torn_tail_refuses_to_open(monkeypatch, tmp_path, action):
    with open_storage(tmp_path) as storage:
        storage.append(FIRST)
        storage.sync()
    log_path = tmp_path / log_file_name(0)
    log_path.write_bytes(log_path.read_bytes()[:-3])  # a torn last record
    configure(monkeypatch, f"fsync_file={action}")
    with pytest.raises(DiskFailed) as excinfo:
        open_storage(tmp_path)
    assert_message(str(excinfo.value), f"{log_path} after cutting its tail", action)
    clear(monkeypatch)
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(FIRST[:-1])


@pytest.mark.parametrize("action", ["eio", "enospc"])
def test_log_fdatasync_at_open_failing_refuses_to_open(monkeypatch, tmp_path, action):
    """Open makes the log it found durable (a crashed process may have left its last writes in the
    page cache only, and later sync marks will say they are durable): that fdatasync is checked too."""
    with open_storage(tmp_path) as storage:
        storage.append(FIRST)
        storage.sync()
    configure(monkeypatch, f"fsync_log={action}")
    with pytest.raises(DiskFailed) as excinfo:
        open_storage(tmp_path)
    assert_message(str(excinfo.value), f"{tmp_path / log_file_name(0)} at open", action)
    clear(monkeypatch)
    with open_storage(tmp_path) as storage:
        assert storage.recovered == DurableState.replay(FIRST)


@pytest.mark.parametrize("action", ["eio", "enospc"])
def test_fsync_failure_after_removing_temp_files_refuses_to_open(monkeypatch, tmp_path, action):
    open_storage(tmp_path).close()
    (tmp_path / "snapshot-00000000000000000009.snap.tmp").write_bytes(b"half")
    configure(monkeypatch, f"fsync_dir={action}")
    with pytest.raises(DiskFailed) as excinfo:
        open_storage(tmp_path)
    assert_message(str(excinfo.value), "directory", action)


# ---- writes: ENOSPC is retryable, anything else is not ---------------------------------------------


@pytest.mark.parametrize("via", ["sync", "flush"])
def test_write_enospc_is_storage_full_and_sync_succeeds_once_space_frees(monkeypatch, tmp_path, via):
    flag = tmp_path / "disk-full"
    storage = open_storage(tmp_path / "data", preallocate=4096)
    storage.append(FIRST)
    storage.sync()
    configure(monkeypatch, f"write_log=enospc@{flag}")
    flag.touch()
    second = batch(10)
    written = storage.log_bytes
    storage.append(second)
    for _ in range(2):  # still full: still StorageFull, never DiskFailed
        with pytest.raises(StorageFull, match="no space left on device"):
            storage.sync() if via == "sync" else storage.flush()
    assert storage.failure is None
    # The refused batch is not in the file, so not in its size (kv status's log_size; QA: it was)
    assert storage.log_bytes == written
    flag.unlink()  # space freed
    storage.sync()
    storage.close()
    with open_storage(tmp_path / "data", preallocate=4096) as storage:
        assert storage.recovered == DurableState.replay(FIRST + second)


def test_write_eio_is_disk_failed(monkeypatch, tmp_path):
    storage = open_storage(tmp_path)
    storage.append(FIRST)
    storage.sync()
    configure(monkeypatch, "write_log=eio")
    storage.append(batch(10))
    with pytest.raises(DiskFailed) as excinfo:
        storage.flush()
    assert_message(str(excinfo.value), log_file_name(0), "eio")
    assert_broken_for_good(monkeypatch, storage, str(excinfo.value))


@pytest.mark.parametrize("code, error", [(errno.ENOSPC, StorageFull), (errno.EIO, DiskFailed)])
def test_snapshot_write_error(tmp_path, code, error):
    storage = open_storage(tmp_path)
    storage.append(FIRST)
    storage.sync()

    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    storage._write = failing_write
    with pytest.raises(error):
        storage.write_snapshot_file(4, b"snapshot")
    storage._write = os.write
    assert not list(tmp_path.glob("*.tmp"))
    if error is StorageFull:  # usable: a later snapshot succeeds
        assert storage.failure is None
        storage.write_snapshot_file(4, b"snapshot")
        assert storage.read_snapshot() == (4, b"snapshot")
    else:
        with pytest.raises(DiskFailed):
            storage.sync()
    storage.close()


def test_preallocation_eio_is_disk_failed_but_enospc_is_not(monkeypatch, tmp_path):
    real_pwrite = os.pwrite
    for code, expect_failed in ((errno.ENOSPC, False), (errno.EIO, True)):
        data_dir = tmp_path / str(code)

        def failing_pwrite(fd, data, offset, code=code):
            raise OSError(code, os.strerror(code))

        storage = open_storage(data_dir, preallocate=4096)
        monkeypatch.setattr(os, "pwrite", failing_pwrite)
        # more than the zeros the new log came with: the next ones must be written
        storage.append(FIRST + [AcceptRecord(2, Ballot(2, 1), (b"x" * 8192,))])
        try:
            if expect_failed:
                with pytest.raises(DiskFailed, match="preallocating"):
                    storage.sync()
            else:
                storage.sync()
        finally:
            monkeypatch.setattr(os, "pwrite", real_pwrite)
            storage.close()


def test_closed_storage_is_storage_error_not_disk_failed(tmp_path):
    storage = open_storage(tmp_path)
    storage.close()
    for call in (storage.sync, storage.flush, lambda: storage.fsync_through(10)):
        with pytest.raises(StorageError, match="closed") as excinfo:
            call()
        assert not isinstance(excinfo.value, DiskFailed)
