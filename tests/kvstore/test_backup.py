"""kvstore.backup without a cluster: the backup file, its checks, restoring a data directory from it,
and the client side of a save against a leader that answers badly.

Every damaged file must give one ``BackupError`` that says what is wrong, and a restore that fails
must leave ``--data-dir`` as it was (absent, or empty) with no half-made directory next to it. A
restored directory must open as a node opens it: a new cluster id and incarnation, no member record
(the restored nodes found the new cluster together), the state at the backup's slot, no membership
history.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kvstore import backup
from kvstore.backup import BACKUP_HEADER, BackupError, read_backup, restore_backup, save_backup, write_backup
from kvstore.commands import encode_delete, encode_put
from kvstore.statemachine import StateMachine
from kvstore.storage import Storage
from paxos.membership import Config, encode_change

PEERS = {1: ("127.0.0.1", 7101), 2: ("127.0.0.1", 7102), 3: ("127.0.0.1", 7103)}
CLIENT = b"c" * 16


def make_state(keys: int = 50, *, change_at: int | None = None) -> StateMachine:
    """A state machine with ``keys`` keys (one overwritten, one deleted), and optionally a membership
    change applied at slot ``change_at`` (removing node 3, as the old cluster did)."""
    sm = StateMachine()
    request = 0
    for i in range(keys + 1):
        request += 1
        sm.slot = request
        sm.apply(encode_put(CLIENT, request, request, f"key/{i:04d}", f"value-{i}"))
    request += 1
    sm.apply(encode_put(CLIENT, request, request, "key/0000", b"\x00binary"))
    request += 1
    sm.apply(encode_delete(CLIENT, request, request, f"key/{keys:04d}"))
    if change_at is not None:
        sm.slot = change_at
        sm.apply(encode_change(0, Config(node_ids=(1, 2), epoch=1, addresses={1: "127.0.0.1:1", 2: "127.0.0.1:2"})))
    return sm


def meta_of(sm: StateMachine, slot: int, cluster_id: str = "kv-old") -> dict:
    return {"cluster_id": cluster_id, "node": 2, "slot": slot, "revision": sm.revision, "keys": len(sm),
            "state_hash": sm.state_hash(), "snapshot_format": 3, "config": {"voters": [1, 2, 3], "epoch": 0}}


def make_backup(path: Path, keys: int = 50, *, slot: int = 60, change_at: int | None = None,
                cluster_id: str = "kv-old") -> StateMachine:
    """Write a valid backup of ``make_state(keys)`` at ``slot`` to ``path``; return its state machine."""
    sm = make_state(keys, change_at=change_at)
    write_backup(path, meta_of(sm, slot, cluster_id), sm.snapshot_chunks(entries_per_chunk=7))
    return sm


def rewrite(path: Path, change) -> None:
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))


def reseal(path: Path, meta: dict | None = None, data: bytes | None = None, slot: int | None = None) -> None:
    """Rewrite a backup with new meta and/or data and a checksum that matches them (a forger's or a
    bug's file: only the deeper checks can catch it)."""
    info = read_backup(path)
    raw = path.read_bytes()
    meta_bytes = json.dumps(meta if meta is not None else info.meta, sort_keys=True).encode()
    data = data if data is not None else raw[info.data_offset:]
    header = BACKUP_HEADER.pack(b"KVBACKUP", 1, info.slot if slot is None else slot, len(meta_bytes), len(data),
                                hashlib.sha256(meta_bytes + data).digest())
    path.write_bytes(header + meta_bytes + data)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".restoring-" in p.name)


# ---------------------------------------------------------------------------------------------------
# the file


def test_a_backup_reads_back_with_its_description_and_state(tmp_path):
    path = tmp_path / "b.kvbak"
    sm = make_backup(path)
    info = read_backup(path)
    assert info.slot == 60 and info.size == path.stat().st_size
    facts = info.describe()
    assert (facts["keys"], facts["revision"], facts["cluster_id"], facts["state_hash"]) == (
        len(sm), sm.revision, "kv-old", sm.state_hash())
    assert path.read_bytes()[:8] == b"KVBACKUP"
    assert not (tmp_path / "b.kvbak.part").exists()
    loaded = backup.load_state(info)
    assert loaded.state_hash() == sm.state_hash() and loaded.get("key/0000").value == b"\x00binary"


DAMAGE = [
    ("data byte flipped", lambda d: d.__setitem__(len(d) - 5, d[len(d) - 5] ^ 0x40), "SHA-256 does not match"),
    ("meta byte flipped", lambda d: d.__setitem__(BACKUP_HEADER.size + 3, d[BACKUP_HEADER.size + 3] ^ 0x01),
     "SHA-256 does not match"),
    ("checksum byte flipped", lambda d: d.__setitem__(40, d[40] ^ 0xFF), "SHA-256 does not match"),
    ("truncated", lambda d: d.__delitem__(slice(len(d) - 100, None)), "truncated, or the header's lengths"),
    ("bytes appended", lambda d: d.extend(b"more"), "bytes appended, or the header's lengths"),
    ("magic", lambda d: d.__setitem__(slice(0, 8), b"KVSNAP\r\n"), "not a kv backup"),
    ("format", lambda d: d.__setitem__(slice(8, 10), b"\x00\x07"), "backup format 7"),
    ("shorter than the header", lambda d: d.__delitem__(slice(20, None)),
     "a kv backup cut short: 20 bytes, shorter than the 62-byte header"),
    ("cut inside the magic", lambda d: d.__delitem__(slice(5, None)), "a kv backup cut short: 5 bytes"),
    ("short and foreign", lambda d: d.__setitem__(slice(None), b"hello"), "not a kv backup: 5 bytes"),
    ("data length byte changed", lambda d: d.__setitem__(29, d[29] ^ 0x01), "header's length fields are damaged"),
    ("meta length byte changed", lambda d: d.__setitem__(21, d[21] ^ 0x02), "header's length fields are damaged"),
    ("empty", lambda d: d.clear(), "0 bytes, shorter"),
    ("huge meta length", lambda d: d.__setitem__(slice(18, 22), b"\xff\xff\xff\xff"), "-byte description"),
]


@pytest.mark.parametrize("what,damage,message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_backup_is_refused_with_one_line_and_nothing_is_restored(tmp_path, what, damage, message):
    path = tmp_path / "b.kvbak"
    make_backup(path)
    rewrite(path, damage)
    with pytest.raises(BackupError, match=message) as caught:
        read_backup(path)
    assert "\n" not in str(caught.value)
    target = tmp_path / "restored" / "node-1"
    with pytest.raises(BackupError, match=message):
        restore_backup(path, target, 1, PEERS)
    assert not target.exists() and not (tmp_path / "restored").exists()


def test_a_sealed_file_whose_contents_are_wrong_is_still_refused(tmp_path):
    """A file whose checksum matches but whose insides do not (a bug, or a hand-made file): the slot
    of the header against the description's, the snapshot bytes themselves, the recorded state hash."""
    path = tmp_path / "b.kvbak"
    make_backup(path)
    target = tmp_path / "node-1"
    target.mkdir()  # an empty directory given as the target stays, empty

    reseal(path, slot=61)
    with pytest.raises(BackupError, match="header says slot 61, its description slot 60"):
        restore_backup(path, target, 1, PEERS)

    make_backup(path)
    reseal(path, data=b"\xa5not the snapshot")
    with pytest.raises(BackupError, match="checksum matches but the state inside is not valid"):
        restore_backup(path, target, 1, PEERS)

    make_backup(path)
    meta = read_backup(path).meta
    reseal(path, meta={**meta, "state_hash": "0" * 64})
    with pytest.raises(BackupError, match="does not match its description"):
        restore_backup(path, target, 1, PEERS)

    make_backup(path)
    reseal(path, meta={**meta, "keys": "many"})
    with pytest.raises(BackupError, match="'keys' is missing or not a valid int"):
        restore_backup(path, target, 1, PEERS)

    path.write_bytes(b"")
    os.remove(path)
    with pytest.raises(BackupError, match="no such file"):
        restore_backup(path, target, 1, PEERS)
    assert target.is_dir() and not any(target.iterdir())
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# restoring


def test_the_printed_serve_line_is_quoted_for_a_shell(tmp_path):
    """QA: a --data-dir with a space (or a cluster id with one) made a line that broke when pasted."""
    import shlex

    path = tmp_path / "b.kvbak"
    make_backup(path, slot=60, change_at=20)
    target = tmp_path / "r c"
    made = restore_backup(path, target, 1, PEERS, cluster_id="my cluster")
    assert shlex.split(made["serve"]) == [
        "kv", "serve", "--id", "1", "--peers", "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103",
        "--data-dir", str(target), "--cluster-id", "my cluster"]


def test_a_restored_directory_opens_as_a_new_node_of_a_new_cluster(tmp_path):
    path = tmp_path / "b.kvbak"
    sm = make_backup(path, slot=60, change_at=20)
    assert sm.changes, "the old state carries a membership change"
    made = [restore_backup(path, tmp_path / f"node-{i}", i, PEERS) for i in PEERS]
    cluster_ids = {m["cluster_id"] for m in made}
    assert len(cluster_ids) == 1, "every node restored alike derives the same cluster id"
    cluster_id = cluster_ids.pop()
    assert cluster_id.startswith("kv-restored-") and cluster_id != "kv-old"
    assert len({m["incarnation"] for m in made}) == 3, "each restored directory has its own incarnation"
    assert made[0]["serve"] == (f"kv serve --id 1 --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 "
                                f"--data-dir {tmp_path / 'node-1'} --cluster-id {cluster_id}")
    for i in PEERS:
        directory = tmp_path / f"node-{i}"
        assert sorted(p.name for p in directory.iterdir()) == [
            "LOCK", "log-00000000000000000060.wal", "meta.json", "snapshot-00000000000000000060.snap"]
        meta = json.loads((directory / "meta.json").read_text())
        assert "members" not in meta and "config" not in meta, "the nodes found the new cluster together"
        with Storage.open(directory, node_id=i, cluster_id=cluster_id) as storage:
            assert storage.snapshot_slot == 60 and storage.members is None
            assert storage.incarnation == made[i - 1]["incarnation"]
            assert storage.recovered.accepted == {} and storage.recovered.decided == {}
            slot, file, length = storage.open_snapshot()
            with file:
                restored = StateMachine.restore_stream(file, length)
        assert slot == 60
        assert restored.state_hash() == sm.state_hash() and len(restored) == len(sm)
        assert restored.changes == [], "the old cluster's membership history is not the new one's"
        with pytest.raises(Exception, match="belongs to node"):
            Storage.open(directory, node_id=i, cluster_id="kv-old")
    assert leftovers(tmp_path) == []


def test_restore_refuses_a_non_empty_target_the_old_cluster_id_and_an_id_outside_the_peers(tmp_path):
    path = tmp_path / "b.kvbak"
    make_backup(path)
    full = tmp_path / "full"
    full.mkdir()
    (full / "precious").write_text("keep me")
    with pytest.raises(BackupError, match="exists and is not empty"):
        restore_backup(path, full, 1, PEERS)
    assert [p.name for p in full.iterdir()] == ["precious"]
    with pytest.raises(BackupError, match="new cluster id"):
        restore_backup(path, tmp_path / "node-1", 1, PEERS, cluster_id="kv-old")
    with pytest.raises(BackupError, match="not one of the peers"):
        restore_backup(path, tmp_path / "node-1", 4, PEERS)
    made = restore_backup(path, tmp_path / "node-1", 1, PEERS, cluster_id="kv-new")
    assert made["cluster_id"] == "kv-new" and made["old_cluster_id"] == "kv-old"
    assert not (tmp_path / "node-2").exists() and leftovers(tmp_path) == []


def test_the_derived_cluster_id_depends_on_the_backup_and_the_peers(tmp_path):
    make_backup(tmp_path / "a.kvbak", keys=10)
    make_backup(tmp_path / "b.kvbak", keys=11)
    a, b = read_backup(tmp_path / "a.kvbak"), read_backup(tmp_path / "b.kvbak")
    assert backup.restored_cluster_id(a, PEERS) == backup.restored_cluster_id(a, dict(reversed(PEERS.items())))
    assert backup.restored_cluster_id(a, PEERS) != backup.restored_cluster_id(b, PEERS)
    assert backup.restored_cluster_id(a, PEERS) != backup.restored_cluster_id(a, {**PEERS, 3: ("127.0.0.1", 7104)})


# ---------------------------------------------------------------------------------------------------
# saving against a fake leader


class FakeLeader:
    """Answers ``call(session, offset)`` as the server does, with a hook to spoil one answer."""

    def __init__(self, sm: StateMachine, slot: int, spoil=None) -> None:
        self.data = sm.snapshot()
        self.sm = sm
        self.slot = slot
        self.spoil = spoil or (lambda result: result)
        self.calls = 0

    def __call__(self, session: int, offset: int) -> dict:
        self.calls += 1
        assert self.calls < 1000
        if session == 0:
            return {"session": 7, **{k: v for k, v in meta_of(self.sm, self.slot).items()}}
        piece = self.data[offset:offset + 100]
        result = {"offset": offset, "data": piece, "done": offset + len(piece) >= len(self.data)}
        if result["done"]:
            result.update(length=len(self.data), sha256=hashlib.sha256(self.data).hexdigest())
        return self.spoil(result)


def test_save_writes_what_the_leader_sends_in_pieces(tmp_path):
    sm = make_state(30)
    leader = FakeLeader(sm, 44)
    info = save_backup(leader, tmp_path / "b.kvbak")
    assert leader.calls > 5
    assert read_backup(tmp_path / "b.kvbak").sha256 == info.sha256
    assert backup.load_state(info).state_hash() == sm.state_hash() and info.slot == 44


@pytest.mark.parametrize("what,spoil,message", [
    ("a byte lost", lambda r: {**r, "data": r["data"][1:]} if r["offset"] == 200 else r, "arrived damaged"),
    ("another offset", lambda r: {**r, "offset": 0}, "answer for byte 100 of the backup is malformed"),
    ("a wrong checksum", lambda r: {**r, "sha256": "0" * 64} if r["done"] else r, "arrived damaged"),
    ("a wrong length", lambda r: {**r, "length": 5} if r["done"] else r, "arrived damaged"),
    ("no progress", lambda r: {**r, "data": b""} if r["offset"] == 300 else r, "sent no bytes at offset 300"),
    ("not bytes", lambda r: {**r, "data": "text"}, "is malformed"),
])
def test_a_save_that_goes_wrong_leaves_no_file_and_keeps_an_older_one(tmp_path, what, spoil, message):
    path = tmp_path / "b.kvbak"
    make_backup(path, keys=5)
    before = path.read_bytes()
    with pytest.raises(BackupError, match=message):
        save_backup(FakeLeader(make_state(30), 44, spoil), path)
    assert path.read_bytes() == before
    assert not (tmp_path / "b.kvbak.part").exists()
    with pytest.raises(BackupError, match="did not begin a backup"):
        save_backup(lambda session, offset: {"oops": 1}, tmp_path / "c.kvbak")
    assert not (tmp_path / "c.kvbak").exists() and not (tmp_path / "c.kvbak.part").exists()


def test_a_backup_file_and_a_new_data_directory_are_their_owners_only(tmp_path):
    """Both hold the whole store: a backup file is written 0600 and a data directory the store creates
    is 0700, whatever the umask lets other files be (QA: 0644 and 0755 under umask 022, readable by any
    local user). A directory that exists keeps the mode its owner gave it."""
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "b.kvb"
        make_backup(path)
        assert path.stat().st_mode & 0o777 == 0o600
        with Storage.open(tmp_path / "node", node_id=1, cluster_id="kv", fsync=False):
            pass
        assert (tmp_path / "node").stat().st_mode & 0o777 == 0o700
        (tmp_path / "shared").mkdir(mode=0o750)
        with Storage.open(tmp_path / "shared", node_id=1, cluster_id="kv", fsync=False):
            pass
        assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(old_umask)
