"""Tests of kvstore.failpoints' error actions and flag-file condition, and of the storage sites they reach.

How: ``KV_FAILPOINTS`` is set with pytest's ``monkeypatch`` and read with ``failpoints.reload()`` (an
autouse fixture reloads the clean environment afterwards, so no other test sees a failpoint). The
parser is checked on good and malformed values; ``hit`` is called directly; then a real ``Storage``
in ``tmp_path`` is driven to each named I/O site and the injected ``OSError`` must come out of it
(how the storage classifies it is tested in ``test_storage_disk_faults.py``).
"""
from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kvstore import failpoints
from kvstore.failpoints import Failpoint
from kvstore.storage import Storage
from paxos.actions import AcceptRecord, DurableState, PromiseRecord
from paxos.ballot import Ballot


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


def test_parse_actions_and_flag_paths():
    assert failpoints.parse("a=eio, b=enospc@/tmp/x y,c=exit@rel/p@th") == {
        "a": Failpoint("eio", None),
        "b": Failpoint("enospc", "/tmp/x y"),
        "c": Failpoint("exit", "rel/p@th"),
    }


@pytest.mark.parametrize("value", ["a", "=eio", "a=EIO", "a=eio@", "a=eio @ ", "a=@/tmp/f", "a=fail", "a=sleep",
                                   "a=sleep0", "a=sleep-5", "a=sleep60001", "a=sleep1.5", "a=sleep05"])
def test_malformed_values_are_a_value_error_at_reload(monkeypatch, value):
    failpoints.reload()
    monkeypatch.setenv(failpoints.ENV_VAR, value)
    with pytest.raises(ValueError, match=failpoints.ENV_VAR):
        failpoints.reload()


@pytest.mark.parametrize("action, code", [("eio", errno.EIO), ("enospc", errno.ENOSPC)])
def test_error_actions_raise_oserror_naming_the_failpoint(monkeypatch, action, code):
    configure(monkeypatch, f"fsync_dir={action}")
    failpoints.hit("fsync_file")  # another point: nothing happens
    for _ in range(3):  # every hit fails, not only the first
        with pytest.raises(OSError) as excinfo:
            failpoints.hit("fsync_dir")
        assert excinfo.value.errno == code
        assert "fsync_dir" in str(excinfo.value)


def test_flag_file_turns_the_action_on_and_off(monkeypatch, tmp_path):
    flag = tmp_path / "flag"
    configure(monkeypatch, f"fsync=eio@{flag}")
    failpoints.hit("fsync")  # no flag: the disk is fine
    flag.touch()
    with pytest.raises(OSError, match="fsync"):
        failpoints.hit("fsync")
    flag.unlink()
    failpoints.hit("fsync")  # healed


def test_a_sleep_action_slows_its_caller_and_goes_on(monkeypatch, tmp_path):
    """``sleepN``: a slow disk, N milliseconds in the calling thread, then the real call goes on."""
    import time

    flag = tmp_path / "slow"
    configure(monkeypatch, f"fsync_log=sleep120@{flag}")
    assert failpoints._active["fsync_log"] == Failpoint("sleep120", str(flag))
    started = time.monotonic()
    failpoints.hit("fsync_log")  # no flag: no delay
    assert time.monotonic() - started < 0.1
    flag.touch()
    started = time.monotonic()
    assert failpoints.hit("fsync_log") is None  # returns: nothing fails
    assert time.monotonic() - started >= 0.12


def test_no_failpoints_means_an_empty_table(monkeypatch):
    failpoints.reload()
    assert failpoints._active == {}
    failpoints.hit("fsync")


# ---- each storage site reaches its failpoint ------------------------------------------------------


def records(n: int = 3) -> list:
    return [PromiseRecord(Ballot(1, 1))] + [AcceptRecord(s, Ballot(1, 1), (b"v%d" % s,)) for s in range(1, n + 1)]


def open_storage(path: Path, preallocate: int = 0) -> Storage:
    return Storage.open(path, node_id=1, cluster_id="fp", preallocate=preallocate)


def sync_batch(storage: Storage) -> None:
    storage.append(records())
    storage.sync()


def flush_and_fsync(storage: Storage) -> None:
    storage.append(records())
    storage.fsync_through(storage.flush())


def flush_only(storage: Storage) -> None:
    storage.append(records())
    storage.flush()


def snapshot_file(storage: Storage) -> None:
    storage.write_snapshot_file(3, b"snap")


def snapshot_and_compaction(storage: Storage) -> None:
    storage.write_snapshot(3, b"snap", DurableState(snapshot_slot=3))


SITES = [
    # (failpoint, what reaches it)
    ("write_log", sync_batch),
    ("write_log", flush_only),
    ("fsync_log", sync_batch),
    ("fsync_log", flush_and_fsync),
    ("fsync_file", snapshot_file),
    ("fsync_dir", snapshot_file),
    ("fsync_file", snapshot_and_compaction),
    ("fsync", sync_batch),
    ("fsync", flush_and_fsync),
    ("fsync", snapshot_file),
]


@pytest.mark.parametrize("point, action", [(p, a) for p, a in SITES], ids=[f"{p}-{a.__name__}" for p, a in SITES])
def test_each_storage_site_hits_its_failpoint(monkeypatch, tmp_path, point, action):
    storage = open_storage(tmp_path)
    try:
        sync_batch(storage)  # something durable first
        configure(monkeypatch, f"{point}=eio")
        with pytest.raises(OSError) as excinfo:  # StorageError is no OSError: look at the cause
            try:
                action(storage)
            except Exception as exc:
                raise exc.__cause__ if isinstance(exc.__cause__, OSError) else AssertionError(exc) from exc
        assert excinfo.value.errno == errno.EIO and point in str(excinfo.value)
    finally:
        storage.close()


def test_open_hits_the_directory_and_meta_fsyncs(monkeypatch, tmp_path):
    for point in ("fsync_dir", "fsync_file", "fsync"):
        configure(monkeypatch, f"{point}=eio")
        with pytest.raises(Exception) as excinfo:
            open_storage(tmp_path / point)
        assert point in str(excinfo.value) or point in str(excinfo.value.__cause__), (point, excinfo.value)
