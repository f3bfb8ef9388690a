"""Backup and restore: ``kv snapshot save`` and ``kv snapshot restore`` (etcdctl / etcdutl habits).

Theory of operation
-------------------
**What a backup holds.** The state machine (``kvstore.statemachine`` snapshot bytes: every entry, the
dedup table and the membership changes) as of one applied slot ``S`` of the leader, plus a small JSON
description. It holds no Paxos state (no promises, no accepted values): a backup seeds a *new* cluster,
it never brings back an acceptor.

**Consistency: a read barrier, then a frozen view.** ``kv snapshot save`` asks the leader to begin
(``wire.BackupRequest`` with session 0). The leader runs a linearizable read through the core, exactly
as a client's read goes (``events.Read``): the core confirms its leadership with a majority and names
a read index at or above every slot decided before; once the state machine has applied that index,
the read is answered, and at that very moment (in the driver, inside the answer) the state machine is
frozen (``StateMachine.freeze``, copy-on-write) at its applied slot ``S``. So the backup holds every
write acknowledged before the save began, whichever node acknowledged it; writes after the freeze go
on and do not show in it.

**Transfer: the client pulls, both sides in bounded memory.** The reply to the begin names a session.
The client then asks for the next piece (``session``, ``offset``); the leader encodes pieces of
``PIECE_ENTRIES`` entries from the frozen view (yielding to the driver between pieces) until it has
``CHUNK_BYTES`` (1 MiB, far below the 8 MiB frame limit) and answers with them. The client writes each
piece to ``FILE.part`` before it asks for the next, so neither side holds more than a chunk and a
piece (about 1 MiB with ordinary values; a piece of the largest values can be bigger, as in the
node's own snapshots). The same offset again is a retry and gets the same bytes. The last answer says
``done`` with the length and SHA-256 of all the bytes; the client checks both against what it wrote,
completes the header, fsyncs and renames ``FILE.part`` to ``FILE``. A session ends when it is done or
after ``SESSION_IDLE_SECONDS`` without a request (its frozen view is then released); at most
``SESSIONS_MAX`` unfinished ones at a time. A session lives on the node that began it: if that node
goes away mid-transfer the save fails with one line and is run again.

**The file** (``BACKUP_FORMAT`` 1)::

    header   62 bytes: magic b"KVBACKUP", format (u16), slot (u64), meta length (u32),
             data length (u64), SHA-256 of meta + data (32 bytes); big endian
    meta     JSON: format, cluster_id, node (the leader that made it), slot, revision, keys,
             state_hash, snapshot_format, config (the configuration then), saved_at
    data     the state machine snapshot bytes (StateMachine.restore_stream reads them)

``read_backup`` checks everything before anything is used: the magic, the format, that the file is
exactly as long as the header says, the SHA-256, the meta's fields and its slot against the header's.
``load_state`` then decodes the state machine (every entry checked) and compares its ``state_hash``
with the one recorded at the freeze. Any failure is a ``BackupError`` with a one-line message.

**Restore: a new cluster, founded as any new cluster is.** ``restore_backup`` makes the data directory
of node ``ID`` of the cluster ``--peers`` describes:

* a new cluster id (``--cluster-id``, else ``kv-restored-`` and 8 hex digits derived from the backup's
  checksum and the peer list, so every node restored from the same file with the same ``--peers``
  derives the same one; never the old cluster's id): peers refuse each other's Hello across cluster
  ids, so a restored node never talks to the old cluster;
* a new incarnation (``meta.json``, as for any new directory) and no member record: the nodes found
  the new cluster together on first start (``kvstore.identity``: every member must be up and
  unfounded), and record the ``--peers`` configuration as the bootstrap one (epoch 0). The membership
  changes in the backup are dropped from the state machine: they described the old cluster, and
  replayed on the new bootstrap configuration they would rebuild the old members;
* the snapshot file at slot ``S`` and an empty log above it (through ``kvstore.storage``, so the files
  are exactly what a node writes itself). Every restored node then starts at slot ``S`` with the
  same state, and slots above ``S`` are fresh Paxos instances: nothing decided is at stake.

Why founding and not a recorded member list: each node is restored on its own host, without the
others' incarnations, and founding is the one path a new cluster already takes, with its rule that
every member be present (a node started empty instead of restored would found with them and catch up
by snapshot from the leader, like any node that lags; restore every node). The directory is built
under a temporary name next to ``--data-dir``, checked by opening it as a node would, and renamed into
place only when whole; on any error it is removed and ``--data-dir`` is left as it was (absent or
empty). A non-empty ``--data-dir`` is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shlex
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import trio

from paxos.actions import DurableState

from . import wire
from .endpoints import format_endpoint
from .events import Read
from .frames import BACKUP_END_OFFSET
from .statemachine import SNAPSHOT_FORMAT, SnapshotError, StateMachine
from .storage import Storage, StorageError
from .waiters import ReadRequest, read_reply

if TYPE_CHECKING:
    import _hashlib

    from .clients import ClientConn
    from .server import Node
    from .statemachine import FrozenState

__all__ = [
    "BackupError", "BackupInfo", "BackupService", "read_backup", "load_state", "write_backup", "save_backup",
    "restore_backup", "restored_cluster_id", "BACKUP_MAGIC", "BACKUP_FORMAT", "BACKUP_HEADER", "CHUNK_BYTES",
]

log = logging.getLogger("kvstore.server")

BACKUP_MAGIC = b"KVBACKUP"
BACKUP_FORMAT = 1
BACKUP_HEADER = struct.Struct(">8sHQIQ32s")  # magic, format, slot, meta length, data length, sha256
META_BYTES_MAX = 1 << 20  # a longer meta length in a header is damage
CHUNK_BYTES = 1 << 20  # snapshot bytes per answer (a frame may hold 8 MiB)
PIECE_ENTRIES = 256  # entries encoded at a time from the frozen view, between driver batches
SESSIONS_MAX = 4  # unfinished backups at a time on one node
END_OFFSET = BACKUP_END_OFFSET
"""A ``BackupRequest`` offset no backup reaches: it asks the node to end the session now (a client that
failed or was interrupted; else the session would count against ``SESSIONS_MAX`` until it idled out)."""
SESSION_IDLE_SECONDS = 30.0  # a session without a request for this long is dropped (its view released)
REAP_SECONDS = 1.0
# The linearizable read that serves as the barrier reads this key ("" is never a key: nothing is read)
BARRIER_KEY = ""
READ_BYTES = 1 << 20  # file reads while checking a backup


class BackupError(Exception):
    """A backup cannot be made, read or restored; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------------
# The file


@dataclass(frozen=True)
class BackupInfo:
    """A backup file that passed ``read_backup``: its header, its meta and where its data is."""

    path: Path
    slot: int
    meta: dict[str, Any]
    data_offset: int
    data_length: int
    sha256: str  # hex, of meta + data (the header's checksum)
    size: int  # bytes of the whole file

    def describe(self) -> dict[str, Any]:
        """What ``kv snapshot status`` and ``save`` print."""
        meta = self.meta
        return {"file": str(self.path), "format": BACKUP_FORMAT, "slot": self.slot, "revision": meta["revision"],
                "keys": meta["keys"], "state_hash": meta["state_hash"], "cluster_id": meta["cluster_id"],
                "node": meta["node"], "saved_at": meta.get("saved_at"), "bytes": self.size, "sha256": self.sha256}


_META_FIELDS = {"cluster_id": str, "node": int, "slot": int, "revision": int, "keys": int, "state_hash": str,
                "snapshot_format": int}


def _check_meta(meta: object, where: str) -> dict[str, Any]:
    if type(meta) is not dict:
        raise BackupError(f"{where}: the description is not a JSON object")
    for name, kind in _META_FIELDS.items():
        value = meta.get(name)
        # The type is exactly ``kind``: an int is one when kind is int, a str one when kind is str.
        if type(value) is not kind or (isinstance(value, int) and value < 0) or (isinstance(value, str) and not value):
            raise BackupError(f"{where}: the description's {name!r} is missing or not a valid {kind.__name__}")
    return meta


def write_backup(path: str | os.PathLike[str], meta: dict[str, Any], pieces: Iterable[bytes]) -> BackupInfo:
    """Write a backup file from ``meta`` and the snapshot bytes ``pieces`` (an iterable of bytes):
    to ``PATH.part`` first, then fsync, rename over ``path`` and fsync the directory. On any error
    (an exception from ``pieces`` included) ``PATH.part`` is removed and ``path`` is untouched."""
    path = Path(path)
    meta = _check_meta(dict(meta), str(path))
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    if len(meta_bytes) > META_BYTES_MAX:
        raise BackupError(f"the description of the backup is {len(meta_bytes)} bytes, more than {META_BYTES_MAX}")
    tmp = path.with_name(path.name + ".part")
    checksum = hashlib.sha256(meta_bytes)
    length = 0
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the whole store: its owner's only
        except OSError as exc:
            raise BackupError(f"cannot write {tmp}: {exc.strerror or exc}") from None
        try:
            _write_all(fd, bytes(BACKUP_HEADER.size) + meta_bytes, tmp)
            for piece in pieces:
                _write_all(fd, piece, tmp)
                checksum.update(piece)
                length += len(piece)
            header = BACKUP_HEADER.pack(BACKUP_MAGIC, BACKUP_FORMAT, meta["slot"], len(meta_bytes), length,
                                        checksum.digest())
            try:
                os.pwrite(fd, header, 0)
                os.fsync(fd)
            except OSError as exc:
                raise BackupError(f"cannot write {tmp}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise BackupError(f"cannot rename {tmp} to {path}: {exc.strerror or exc}") from None
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    _fsync_dir(path.absolute().parent)
    size = BACKUP_HEADER.size + len(meta_bytes) + length
    return BackupInfo(path, meta["slot"], meta, BACKUP_HEADER.size + len(meta_bytes), length,
                      checksum.hexdigest(), size)


def _write_all(fd: int, data: bytes, where: Path) -> None:
    view = memoryview(data)
    written = 0
    try:
        while written < len(view):  # bounded: each pass writes at least one byte or raises
            count = os.write(fd, view[written:])
            if count <= 0:
                raise OSError(0, f"write returned {count}")
            written += count
    except OSError as exc:
        raise BackupError(f"cannot write {where}: {exc.strerror or exc}") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise BackupError(f"cannot fsync directory {path}: {exc.strerror or exc}") from None


def read_backup(path: str | os.PathLike[str]) -> BackupInfo:
    """Check a backup file whole (header, length, SHA-256, description) and describe it. Reads the
    file once, ``READ_BYTES`` at a time. ``BackupError`` (one line) for anything wrong."""
    path = Path(path)
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise BackupError(f"{path}: no such file") from None
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    with file:
        try:
            size = os.fstat(file.fileno()).st_size
            head = file.read(BACKUP_HEADER.size)
            if len(head) < BACKUP_HEADER.size:
                # A file that begins as one does (QA: 5 bytes "KVBAC" was "not a kv backup") was cut short.
                started = bool(head) and (head.startswith(BACKUP_MAGIC) or BACKUP_MAGIC.startswith(head))
                raise BackupError(f"{path} is {'a kv backup cut short' if started else 'not a kv backup'}: {size} "
                                  f"bytes, shorter than the {BACKUP_HEADER.size}-byte header")
            magic, version, slot, meta_length, data_length, digest = BACKUP_HEADER.unpack(head)
            if magic != BACKUP_MAGIC:
                raise BackupError(f"{path} is not a kv backup (it does not start with {BACKUP_MAGIC.decode()}; "
                                  f"make one with kv snapshot save)")
            if version != BACKUP_FORMAT:
                raise BackupError(f"{path}: backup format {version}, this version of kv reads format {BACKUP_FORMAT}")
            if meta_length > META_BYTES_MAX:
                raise BackupError(f"{path} is damaged: its header gives a {meta_length}-byte description")
            expected = BACKUP_HEADER.size + meta_length + data_length
            if size != expected:
                raise BackupError(_length_mismatch(path, file, size, expected, digest))
            meta_bytes = file.read(meta_length)
            checksum = hashlib.sha256(meta_bytes)
            remaining = data_length
            while remaining > 0:  # bounded: the file's length was checked above
                chunk = file.read(min(READ_BYTES, remaining))
                if not chunk:
                    raise BackupError(f"{path} is damaged: it ended while being read (changed meanwhile?)")
                checksum.update(chunk)
                remaining -= len(chunk)
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    if checksum.digest() != digest:
        raise BackupError(f"{path} is damaged: its SHA-256 does not match its contents (it changed after it "
                          f"was saved); use another backup")
    try:
        meta = json.loads(meta_bytes)
    except ValueError:
        raise BackupError(f"{path} is damaged: its description is not JSON") from None
    meta = _check_meta(meta, str(path))
    if meta["slot"] != slot:
        raise BackupError(f"{path} is damaged: its header says slot {slot}, its description slot {meta['slot']}")
    return BackupInfo(path, slot, meta, BACKUP_HEADER.size + meta_length, data_length, checksum.hexdigest(), size)


def _length_mismatch(path: Path, file: BinaryIO, size: int, expected: int, digest: bytes) -> str:
    """Why a file is not as long as its header says: cut short, bytes appended, or (the SHA-256 of all it
    holds after the header matches) a header whose length fields are damaged (QA: one changed length byte
    read as "truncated")."""
    file.seek(BACKUP_HEADER.size)
    checksum = hashlib.sha256()
    while chunk := file.read(READ_BYTES):  # bounded: the file's length
        checksum.update(chunk)
    if checksum.digest() == digest:
        return (f"{path} is damaged: its header's lengths say {expected} bytes, the file has {size}, and what "
                f"follows the header matches its SHA-256: the header's length fields are damaged; use another backup")
    what = "truncated" if size < expected else "bytes appended"
    return (f"{path} is damaged: its header says {expected} bytes, the file has {size} ({what}, or the header's "
            f"lengths are damaged); use another backup")


def load_state(info: BackupInfo) -> StateMachine:
    """Decode the state machine of a checked backup, from the file as it goes, and compare its
    ``state_hash`` with the one recorded when it was frozen. ``BackupError`` if anything is wrong."""
    try:
        with open(info.path, "rb") as file:
            file.seek(info.data_offset)
            sm = StateMachine.restore_stream(file, info.data_length)
    except OSError as exc:
        raise BackupError(f"cannot read {info.path}: {exc.strerror or exc}") from None
    except SnapshotError as exc:
        raise BackupError(f"{info.path}: its checksum matches but the state inside is not valid ({exc})") from None
    if sm.state_hash() != info.meta["state_hash"] or len(sm) != info.meta["keys"]:
        raise BackupError(f"{info.path}: the state inside does not match its description (state hash "
                          f"{sm.state_hash()[:16]}, {len(sm)} keys; recorded {info.meta['state_hash'][:16]}, "
                          f"{info.meta['keys']} keys)")
    return sm


# ---------------------------------------------------------------------------------------------------
# Saving (the client side)


def save_backup(call: Callable[[int, int], dict[str, Any]], path: str | os.PathLike[str]) -> BackupInfo:
    """``kv snapshot save``: make a backup of the cluster in ``path``.

    ``call(session, offset)`` sends one ``BackupRequest`` and returns its result (``Client.backup``): it
    raises the client's errors, which reach the caller as they are. ``BackupError`` if the leader's
    answers do not add up (a length or checksum that does not match what arrived) or the file cannot
    be written; either way no file is left at ``path`` (an older one there stays as it was).
    """
    parent = Path(path).absolute().parent
    if not parent.is_dir():  # before the leader freezes anything for us
        raise BackupError(f"cannot write {path}: there is no directory {parent}")
    begin = call(0, 0)
    session = begin.get("session")
    if type(session) is not int or session < 1:
        raise BackupError(f"the leader did not begin a backup (it answered {sorted(begin)})")
    meta = {name: begin.get(name) for name in _META_FIELDS}
    meta["config"] = begin.get("config")
    meta["format"] = BACKUP_FORMAT
    meta["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = _check_meta(meta, "the leader's answer")

    def pieces() -> Iterator[bytes]:
        offset = 0
        received = hashlib.sha256()
        while True:  # bounded: every answer moves the offset on, or is the last (else BackupError)
            result = call(session, offset)
            data, done = result.get("data"), result.get("done")
            if result.get("offset") != offset or type(data) is not bytes or type(done) is not bool:
                raise BackupError(f"the leader's answer for byte {offset} of the backup is malformed")
            if data:
                received.update(data)
                offset += len(data)
                yield data
            if done:
                if result.get("length") != offset or result.get("sha256") != received.hexdigest():
                    raise BackupError(f"the backup arrived damaged: {offset} bytes with SHA-256 "
                                      f"{received.hexdigest()[:16]}, the leader sent {result.get('length')} "
                                      f"with {str(result.get('sha256'))[:16]}; run kv snapshot save again")
                return
            if not data:
                raise BackupError(f"the leader sent no bytes at offset {offset} and did not say done")

    try:
        return write_backup(path, meta, pieces())
    except BaseException:
        end_session(call, session)
        raise


def end_session(call: Callable[[int, int], Any], session: int) -> None:
    """Ask the node to end backup ``session`` (``END_OFFSET``): its client failed or was interrupted. Best
    effort: an error (the node went away) is ignored, as the node drops the session on its own later.
    QA: four failed or interrupted saves and dumps kept every backup of the node refused for 30 s."""
    try:
        call(session, END_OFFSET)
    except Exception:  # noqa: BLE001 - best effort, see the docstring
        pass


# ---------------------------------------------------------------------------------------------------
# Restoring


def restored_cluster_id(info: BackupInfo, peers: dict[int, tuple[str, int]]) -> str:
    """The default id of the cluster restored from ``info`` onto ``peers``: the same for every node
    restored from the same file with the same ``--peers``."""
    text = info.sha256 + "|" + ",".join(f"{member}={format_endpoint(*peers[member])}" for member in sorted(peers))
    return "kv-restored-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def _check_target(target: Path) -> None:
    try:
        if target.is_dir():
            if any(target.iterdir()):
                raise BackupError(f"data dir {target} exists and is not empty; a restore makes a new data "
                                  f"directory (give an absent or empty one)")
        elif target.exists():
            raise BackupError(f"{target} exists and is not a directory")
    except OSError as exc:
        raise BackupError(f"cannot look at {target}: {exc.strerror or exc}") from None


def restore_backup(path: str | os.PathLike[str], data_dir: str | os.PathLike[str], node_id: int,
                   peers: dict[int, tuple[str, int]], cluster_id: str | None = None) -> dict[str, Any]:
    """``kv snapshot restore``: make the data directory of node ``node_id`` of a new cluster whose
    founding members are ``peers`` (``{id: (host, port)}``) from the backup at ``path``; see the module
    docstring. Returns what was made (cluster id, incarnation, slot, ...). ``BackupError`` (one line)
    if the backup is damaged, the target is not absent or empty, or anything fails; ``data_dir`` is
    then as it was."""
    if node_id not in peers:
        raise BackupError(f"node {node_id} is not one of the peers {sorted(peers)}")
    info = read_backup(path)
    old_cluster = info.meta["cluster_id"]
    cluster_id = cluster_id or restored_cluster_id(info, peers)
    if cluster_id == old_cluster:
        raise BackupError(f"the restored cluster needs a new cluster id: the backup is of cluster {old_cluster!r}, "
                          f"and a restored node must never talk to the old cluster's nodes")
    target = Path(data_dir)
    _check_target(target)
    sm = load_state(info)
    # The new cluster's configuration is --peers, founded at epoch 0: the old cluster's membership
    # changes would rebuild its members on top of it (kvstore.server: Node.schedule_for).
    sm.changes = []
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=parent))
    except OSError as exc:
        raise BackupError(f"cannot create a directory next to {target}: {exc.strerror or exc}") from None
    slot = info.slot
    try:
        try:
            with Storage.open(tmp, node_id=node_id, cluster_id=cluster_id) as storage:
                if slot > 0:
                    storage.write_snapshot_file(slot, sm.snapshot_chunks())
                    storage.compact_log(slot, DurableState())
                incarnation = storage.incarnation
            del sm
            # Open it as the node will: the snapshot's checksum, the log, the meta file.
            with Storage.open(tmp, node_id=node_id, cluster_id=cluster_id) as check:
                if check.snapshot_slot != slot or check.members is not None or check.incarnation != incarnation:
                    raise BackupError(f"the restored directory did not read back as written (snapshot slot "
                                      f"{check.snapshot_slot}, expected {slot})")
        except StorageError as exc:
            raise BackupError(f"cannot write the restored data dir: {exc}") from None
        _check_target(target)
        try:
            os.rename(tmp, target)  # over an empty directory too
        except OSError as exc:
            raise BackupError(f"cannot rename {tmp} to {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
    peer_text = ",".join(f"{member}={format_endpoint(*peers[member])}" for member in sorted(peers))
    return {"node": node_id, "data_dir": str(target), "cluster_id": cluster_id, "old_cluster_id": old_cluster,
            "incarnation": incarnation, "slot": slot, "revision": info.meta["revision"], "keys": info.meta["keys"],
            "state_hash": info.meta["state_hash"], "peers": peer_text,
            # (quoted for a shell: QA pasted a --data-dir with a space, and the line broke)
            "serve": shlex.join(["kv", "serve", "--id", str(node_id), "--peers", peer_text, "--data-dir", str(target),
                                 "--cluster-id", cluster_id])}


# ---------------------------------------------------------------------------------------------------
# Serving backups (the leader's side)


class BackupRefused(Exception):
    """A refused ``BackupRequest``: ``code`` is a wire error code, the message one line for the user."""

    def __init__(self, message: str, code: str = wire.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


class _Barrier:
    """Stands in for a client connection for the barrier read: the node answers it (``reply``) in the
    driver once the read index is applied, and that is where the state machine is frozen."""

    closed = False

    def __init__(self, node: Node) -> None:
        self.node = node
        self.done = trio.Event()
        self.answer: object = None
        self.abandoned = False  # the task stopped waiting: a late answer must not freeze anything
        self.frozen: FrozenState | None = None
        self.facts: dict[str, Any] = {}

    def reply(self, message: object) -> None:
        if self.done.is_set():
            return
        if type(message) is wire.OkReply and not self.abandoned:
            node = self.node
            learner = node.learner
            sm = learner.sm
            self.facts = {"slot": learner.applied_slot, "revision": sm.revision, "keys": len(sm),
                          "state_hash": sm.state_hash(), "cluster_id": node.options.cluster_id,
                          "node": node.node_id, "snapshot_format": SNAPSHOT_FORMAT,
                          "config": node.replica.config.to_dict()}
            self.frozen = sm.freeze()
        self.answer = message
        self.done.set()

    def reply_frame(self, frame: bytes) -> None:  # the ClientConn interface
        self.reply(wire.decode_body(frame[4:]))

    def reply_read(self, sm: StateMachine, request: ReadRequest) -> None:
        self.reply(read_reply(sm, request))


@dataclass
class _Session:
    """One backup being handed out: the frozen view, the pieces not yet asked for, the checksum so far."""

    id: int
    frozen: FrozenState | None  # None once every piece was encoded (or the session ended)
    pieces: Iterator[bytes] | None  # the frozen view's chunks() generator
    touched: float
    sent: int = 0  # bytes handed out
    buffer: bytearray = field(default_factory=bytearray)  # encoded, not handed out yet
    checksum: _hashlib.HASH = field(default_factory=hashlib.sha256)
    last: dict[str, Any] | None = None  # the last answer, for a retry of the same offset
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def finished(self) -> bool:
        return self.frozen is None

    def release(self) -> None:
        if self.frozen is not None:
            self.frozen.close()
            self.frozen = None
            self.pieces = None


class BackupService:
    """The backups node ``node`` (a ``kvstore.server.Node``) hands out; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sessions: dict[int, _Session] = {}
        self._reaping = False

    def handle(self, conn: ClientConn, request: wire.BackupRequest) -> None:
        self.node.nursery.start_soon(self._serve, conn, request)

    async def _serve(self, conn: ClientConn, request: wire.BackupRequest) -> None:
        node = self.node
        try:
            if request.session == 0:
                result = await self._begin()
            else:
                result = await self._next(request.session, request.offset)
            reply: wire.OkReply | wire.ErrorReply = wire.OkReply(id=request.id, result=result)
        except BackupRefused as exc:
            reply = wire.ErrorReply(id=request.id, code=exc.code, message=str(exc),
                                    leader=node._leader_hint() if exc.code == wire.NOT_LEADER else None)
        except Exception as exc:  # a bug here must cost this backup, never the node (it runs in its nursery)
            log.exception("backup request %s failed", request)
            reply = wire.ErrorReply(id=request.id, code=wire.BAD_REQUEST, leader=None,
                                    message=f"the backup failed on the leader ({type(exc).__name__}: {exc}); "
                                            f"see its log")
        conn.reply(reply)
        node._send_replies()

    async def _begin(self) -> dict[str, Any]:
        node = self.node
        if node._fenced:
            raise BackupRefused(f"this node's disk failed: {node.disk_error}", wire.DISK_FAILED)
        if not node.replica.is_leader:
            raise BackupRefused("not the leader", wire.NOT_LEADER)
        unfinished = sum(1 for s in self.sessions.values() if not s.finished)
        if unfinished >= SESSIONS_MAX:
            raise BackupRefused(f"{unfinished} backups are being saved from this node already; wait for them "
                                f"(an abandoned one ends after {SESSION_IDLE_SECONDS:g} s without requests)")
        barrier = _Barrier(node)
        node._post_event(Read(barrier, wire.GetRequest(id=0, key=BARRIER_KEY, linearizable=True)))
        with trio.move_on_after(node.options.request_timeout_seconds + 1.0):
            await barrier.done.wait()
        if not barrier.done.is_set():
            barrier.abandoned = True
            raise BackupRefused("the leader could not confirm its leadership in time for the backup", wire.TIMEOUT)
        answer = barrier.answer
        if type(answer) is wire.ErrorReply:
            raise BackupRefused(answer.message if answer.code != wire.NOT_LEADER else "not the leader", answer.code)
        session_id = secrets.randbits(52) | 1
        while session_id in self.sessions:  # bounded: at most a few sessions exist
            session_id = secrets.randbits(52) | 1
        frozen = barrier.frozen
        assert frozen is not None  # the barrier's OkReply froze the state machine
        # (without client expiry's horizon: a backup restores with older versions too; docs/operations.md)
        pieces = frozen.chunks(PIECE_ENTRIES, expiry=False)
        self.sessions[session_id] = _Session(session_id, frozen, pieces, trio.current_time())
        node.counters["backups_begun"] += 1
        log.info("backup %d begins at slot %d (%d keys)", session_id, barrier.facts["slot"], barrier.facts["keys"])
        if not self._reaping:
            self._reaping = True
            node.nursery.start_soon(self._reap)
        return {"session": session_id, "chunk_bytes": CHUNK_BYTES, **barrier.facts}

    async def _next(self, session_id: int, offset: int) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        if offset == END_OFFSET:  # the client gave up on it (ended already, or unknown here: the same)
            if session is not None:
                async with session.lock:
                    self._drop(session)
                log.info("backup %d ended by its client", session_id)
            return {"offset": offset, "ended": True}
        if session is None:
            raise BackupRefused(f"no backup session {session_id} on this node (it ended, waited more than "
                                f"{SESSION_IDLE_SECONDS:g} s for a request, or began on another node); "
                                f"run kv snapshot save (or kv dump) again")
        async with session.lock:
            session.touched = trio.current_time()
            last = session.last
            if last is not None and offset == last["offset"]:
                return last  # a retry
            if offset != session.sent:
                raise BackupRefused(f"backup session {session_id}: asked for byte {offset}, the next one is "
                                    f"{session.sent}")
            buffer = session.buffer
            try:
                while len(buffer) < CHUNK_BYTES and session.pieces is not None:  # bounded by the view's size
                    piece = next(session.pieces, None)
                    if piece is None:
                        session.release()
                        break
                    buffer += piece
                    await trio.sleep(0)  # the driver runs between pieces
            except RuntimeError as exc:  # the frozen view broke: a bug, reported, not a crash
                self._drop(session)
                raise BackupRefused(f"backup session {session_id} failed: {exc}") from None
            data = bytes(buffer[:CHUNK_BYTES])
            del buffer[:CHUNK_BYTES]
            session.checksum.update(data)
            session.sent += len(data)
            result: dict[str, Any] = {"offset": offset, "data": data, "done": session.finished and not buffer}
            if result["done"]:
                result["length"] = session.sent
                result["sha256"] = session.checksum.hexdigest()
                if last is None or not last["done"]:
                    self.node.counters["backups_sent"] += 1
                    log.info("backup %d sent: %d bytes", session_id, session.sent)
            session.last = result
            return result

    def _drop(self, session: _Session) -> None:
        session.release()
        self.sessions.pop(session.id, None)

    async def _reap(self) -> None:
        """Drop sessions nobody asked anything of for ``SESSION_IDLE_SECONDS`` (runs while any exist)."""
        try:
            while self.sessions:  # ends once the last session is dropped
                await trio.sleep(REAP_SECONDS)
                now = trio.current_time()
                for session in list(self.sessions.values()):
                    if not session.lock.locked() and now - session.touched > SESSION_IDLE_SECONDS:
                        if not session.finished:
                            log.warning("backup %d dropped: no request for %g s", session.id, SESSION_IDLE_SECONDS)
                        self._drop(session)
        finally:
            self._reaping = False
