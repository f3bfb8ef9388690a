"""The data directory of one node: a checksummed append-only log of Paxos records plus snapshots.

Theory of operation
===================

What it owns. Everything the node must still know after a crash: the records the core asked to
persist (``paxos.actions`` ``PromiseRecord``/``AcceptRecord``/``DecideRecord``) and the newest
snapshot of the state machine. ``Storage.open`` recovers them into ``recovered`` (a ``DurableState``)
and ``snapshot``; the server builds its ``Replica`` and ``StateMachine`` from those.

Files in the data directory::

    meta.json                         {"format": 1, "node_id": N, "cluster_id": "...", "incarnation": "...",
                                      "members": {"1": "<incarnation>", ...}} (kvstore.identity): written
                                      at creation, rewritten (atomically) when the members are recorded
    LOCK                              flock()ed while a Storage is open (one process per directory)
    snapshot-<slot:020d>.snap         header + state machine bytes covering slots 1..slot
    log-<slot:020d>.wal               the records appended after the snapshot at ``slot``
    *.tmp                             a file being written; never read, deleted on open

A log is named after the snapshot slot it starts after (``log-00000000000000000000.wal`` before the
first snapshot), so the name alone says which snapshot a log belongs to.

Log records. Each record is ``length`` (4 bytes, big endian) + ``crc32(payload) ^ position_mask(slot,
offset)`` (4 bytes, big endian, ``zlib.crc32``; see "Records know their place") + ``payload``, a
compact CBOR array::

    [0, [ballot_number, ballot_node_id]]                          PromiseRecord
    [1, slot, [ballot_number, ballot_node_id], [bytes, ...]]      AcceptRecord
    [2, slot, [bytes, ...]]                                       DecideRecord
    [3, durable_end]                                              sync mark (internal, see below)
    [3, durable_end, size]                                        sync mark claiming a length too

Group commit. ``append`` only encodes and buffers. ``sync`` joins the buffer into one ``write`` and
makes it durable with one ``fdatasync`` (skipped when the Storage was opened with ``fsync=False``).
The caller (the server driver) calls ``sync`` once per ``Actions`` and sends nothing before it
returns (docs/design.md, "the order of work"). The pipelined server splits it: ``flush`` writes,
``fsync_through`` (in a worker thread) makes durable.

Sync marks. A mark ``[3, durable_end]`` means: bytes ``[0, durable_end)`` of this file were made
durable by a successful fdatasync before this record was written. ``append`` puts one in front of a
batch's first records whenever the log's synced end has moved past the last mark written (15 or 28
bytes per group commit; none while nothing new was fsynced); it reads ``_synced_end``, which
``fsync_through`` advances in its worker thread, and a stale value only claims less. A log this
Storage creates or rewrites whole (the first, empty log; ``compact_log``'s rewrite; the rewrite that
finishes an interrupted compaction) starts with a mark covering the whole file, itself included: the
file is fsynced before it is renamed into place, so all of it is durable once it has its name. With
``fsync=False`` no mark is written (nothing is made durable). Marks are never handed to callers
(``LogScan.records``, ``recovered``). A mark can only be believed where this module could have
written it: at offset 0, or claiming no more than the bytes before it.

A log cut short. Marks could not tell a log cut at a record boundary (a file system that loses the
end of a file; a truncation by hand) from a shorter log: the cut takes the marks that would prove its
lost end was durable, and the scan sees a clean log, so the node would start without votes it may
have promised to keep. So a mark also claims a length: ``[3, durable_end, size]`` says the file was
at least ``size`` bytes long when the fsync that made ``durable_end`` durable began (fdatasync commits
a length that grew, so that length is durable). With preallocation the file is longer than its
records (the zeros ahead), so the claim reaches past every record the mark's batch and the next ones
write, and a surviving mark sees the cut: a file shorter than the largest length a believed mark
claims (``LogScan.claimed_size``; the first mark of a file written whole claims all of it) is refused
at open, like damage to durable bytes. A new log, first or rewritten, comes with its preallocated
zeros and a first mark claiming them, so the claim covers a log from its first record. For the claim
to hold, the store never makes a log shorter than its marks claim: a torn tail or zeros cut at open
keep the file's length up to the largest claim (a hole of zeros), a batch cut back after ENOSPC keeps
the length it had, and preallocation that fails gives back only zeros past every claim. The claim is
written only when it says more than ``durable_end`` (the long form, 28 bytes; otherwise the short
form as before). Records never go past the largest length a mark before them claims: ``append``
finds a batch that would (it outgrows the zeros ahead, or it is larger than all of them, as a catch-up
can be), grows the file and fsyncs it first (``_grow_durably``: one more fdatasync), and puts a mark
claiming the new length in front of it. Usually nothing grows there: the next step of zeros is written
once half of those ahead are used (``_reserve``), and a group commit's fsync makes it durable first;
when a small batch grows the file all the same (the fsyncs are slower than writing half a step), the
step doubles, up to ``PREALLOCATE_STEP_MAX``.
So for every cut below the file's length a mark survives that claims more. What stays open: without
preallocation (``preallocate=0``) there is nothing ahead of the records to claim, so a cut at a record
boundary still passes; and the batches written while the disk has no room for the zeros go unclaimed
until a later growth succeeds.

Records know their place. A record's checksum is the crc32 of its payload XORed with a mask made of
the log's slot (``log-<slot>.wal``) and the record's byte offset in it (``position_mask``: the crc32
of the two as 8-byte ints, made odd so that it is never 0). A checksum of the payload alone passes a
whole record wherever it lies, so a disk that writes a block to the wrong place (a misdirected write),
returns a stale block, or a block of another file, would hand recovery a valid record where another
was: the moved record read twice, the covered one silently gone. With the mask such a block fails its
check where it lies: damage, judged by the rule below (refused when a mark says it was durable). It
also makes a client value that holds record-shaped bytes much harder to pass for a record (or a
mark) when a scan looks past damage: it would have to guess its own offset. The cost is one crc32 of
16 bytes per record written and read. ``place_records`` applies the masks to a batch once its offset
is known (``_write_pending``: the batch's mark, if any, goes in front, so offsets are known only
then). A log of an older version has no masks (its first valid record checks only without one):
recovery reads it so (``LogScan.placed`` is None) and this version goes on appending to it without
masks, so a file never mixes the two; its next rewrite (a compaction) writes the masked form. Every
log this version creates (the first one, a rewrite) has masks, fsync or not, and starts with a fence
(``_FENCE``, 19 bytes, no record of this version): what the version before reads as a sync mark at
offset 0 claiming far more than the file holds, so that it refuses such a log as damaged durable
bytes. Without the fence it found no valid record in it and cut it all as a torn tail: a rollback
would have wiped the node's votes. A log written with fsync on has its covering mark right after the
fence, both written whole (fsynced before the file got its name), so damage to either is durable
damage (``LogScan.damaged_start``); a log written with fsync off has the other fence
(``_FENCE_NO_SYNC``) and its first record may be torn like any other. A founded member's log that
holds a fence (or the start of one) alone was cut short and is refused like an empty one.

Disk format. The presence of marks versions the log: a log with at least one mark was written by
this version and is read with the rule below; a log with none (an older version's) is read with the
older rule, unchanged, and gains marks with its next batch, so an older data directory opens as
before. An older program must not read a log this version wrote or appended to (the version before
cut the appended records as a torn tail): ``meta.json`` says format 2 (3 from client expiry on) from
this version's first open on, before anything is written, and every older program refuses that at open
(``FORMAT_VERSION``).

Preallocated log space (``Storage.open(..., preallocate=N)``, the server's default is 1 MiB). Growing
a file changes its size, so an fdatasync after an append must also commit the file system's journal;
overwriting bytes the file already has does not. So the log keeps up to ``N`` bytes of zeros written
ahead of its last record and writes records over them (``_reserve``); a new log comes with them.
The end of the log is then the end of its records, not of the file: recovery reads records until the
first bad one, and if nothing but zeros follows (and no sync mark covers those bytes), that is the
unused space (``LogScan.zero_tail``), kept for later records. Zeros are never a record (a record's
length is never 0), so the torn-tail rule below is unchanged; it only skips the trailing zeros when
it looks for a valid record after damage. Without preallocation, trailing zeros are cut off at open,
down to the length the marks claim (see "A log cut short").

Snapshot and compaction (``write_snapshot(slot, data, state)``), in this order:

1. ``sync()`` the current log, so it holds every record handed to ``append``.
2. Write ``snapshot-<slot>.snap.tmp``, fsync it, rename it to ``snapshot-<slot>.snap``, fsync the dir.
3. Write ``state.records()`` (slots above ``slot`` only) to ``log-<slot>.wal.tmp``, fsync, rename to
   ``log-<slot>.wal``, fsync the dir; switch appends to the new log.
4. Delete older snapshots and older logs; fsync the dir.

Recovery (``open``) uses the newest snapshot ``S`` and ``log-S.wal``; if ``log-S.wal`` is missing it
uses the newest log older than ``S`` and then finishes step 3 itself. Why every crash point is safe:

* before the snapshot rename (step 2): the ``.tmp`` is deleted; old snapshot + old log, unchanged.
* after the snapshot rename, before the log rename: new snapshot ``S`` + old log. The old log holds
  every record since the old snapshot (step 1 synced it), so replaying it with ``snapshot_slot=S``
  (which drops slots at or below ``S`` and keeps the highest promise) gives exactly the compacted state.
* after the log rename: new snapshot + new log; leftovers of step 4 are deleted on open.

A file is renamed into place only after it was fsynced, so a renamed snapshot that fails its checksum
(or is short) is real damage, not a crash artefact: ``open`` refuses with ``StorageError``. A
``log-N.wal`` newer than the newest snapshot, or a snapshot with no log at or below it, is damage too.

Torn tail versus durable damage. ``open`` reads the log record by record. At the first bad record
(short header, zero or huge length, payload running past end of file, CRC mismatch, or a payload that
is not a well-formed record) at byte offset ``O``, it looks at every valid record after ``O`` too (each
later offset with a sane length, the payload inside the file, a matching CRC and a decodable payload
starts one; from there on it reads record by record). Let ``D`` be the largest mark found anywhere in
the file, before or after ``O``.

* ``O < D``: the damaged bytes were durable (an fsync covered them, and the node may have answered
  for the records in them). ``StorageError`` naming the file, ``O``, the reason and ``D``, with the way
  out: restore the data dir from a backup of this node, or replace the node (docs/operations.md, "A
  damaged log"). Never wipe it: a wiped acceptor forgets its promises and accepted values, and a
  cluster of such nodes can decide two values for a slot.
* ``O >= D`` and the file has a mark: no fsync is known to cover the bad bytes, so nothing in them
  was acknowledged. That is what a crash leaves, including a power cut after which the unsynced pages
  reached the disk in any order (a later batch on disk after zeros where an earlier one was): the file
  is cut at ``O`` (valid records after it go too), the cut is fsynced, and a warning names the file,
  ``O``, the bytes cut and the number of valid records dropped.
* No mark in the file (an older version's log): the older rule. If a valid record follows the damage,
  ``StorageError`` (the damage may be in durable data); otherwise the bad bytes are a torn tail and
  are cut as above.

What recovery keeps is then fsynced (``open`` fdatasyncs the log even when nothing was cut): a
process that crashed before its fsync may have left its last writes in the page cache only, and the
next mark will say they are durable. Then the log goes on at ``O`` (or at its records' end).

What marks cannot tell (the residual window, liveness and safety costs stated honestly):

* Damage to the newest fsynced batch(es) that no later mark covers (the bytes between the largest
  mark and the true synced end: the last group commit before a crash, until the next batch writes its
  mark) looks exactly like a torn write. It is cut, with the warning above, not refused. If those
  records were acknowledged and the disk (not a crash) damaged them, this node forgets them; that is
  the damage a checksum alone cannot place. Shrinking the window would cost an extra write and fsync
  per group commit.
* A client value is stored verbatim inside records, so it can contain bytes that form a valid mark.
  Found by the scan inside a torn record, such a forged mark can claim bytes past the damage (up to
  its own offset; one that claims more is not believed), or a length past the file's end, and turn a
  torn tail into a refusal: a liveness cost (an operator is needed), never a lost record. Logs without
  marks had the same problem with any valid-looking record. In a log whose records know their place,
  such bytes would also have to guess their own offset.

Errors. ``StorageError`` for damage, misuse of the directory, or I/O errors that change nothing
(opening, listing, reading, deleting a file). Its subclasses:

* ``StorageFull``: a write (not an fsync) failed with ``ENOSPC``. The log is cut back to where the
  failed batch began (zeros from there, the file keeping its length: recovery sees everything synced
  before, then zeros), the batch stays buffered, and a later ``sync`` retries it; the node refuses writes
  meanwhile. A snapshot or rewritten log that hits ENOSPC (writing or renaming) leaves the old files
  in place. ENOSPC while writing the preallocated zeros only logs a warning (no preallocation then).
* ``DiskFailed``: an fsync failed (the log's fdatasync in ``sync`` or ``fsync_through`` or at open, a
  file's fsync before its rename, the fsync after cutting a torn tail, any directory fsync), whatever
  its errno, ENOSPC included; or a write (of the log, its preallocated zeros, a snapshot, a rewritten
  log, the meta file) or a rename failed with anything but ENOSPC. After a failed fsync Linux may
  have dropped the dirty pages and reports the error once: a retried fsync can "succeed" without the
  data (PostgreSQL's "fsyncgate", 2018). So nothing is retried: the Storage is broken for good,
  ``failure`` holds the message (the file, the error, what to do), and every later call raises
  ``DiskFailed`` with it. The node must stop voting at once and restart; recovery reads what the disk
  really holds.

Test seams. ``_write`` and ``_fdatasync`` are instance attributes (defaulting to ``os.write`` and
``os.fdatasync``) that a test may replace, e.g. with a write that fails with ``ENOSPC``.
``crash_drop_unsynced()`` truncates the log to its last fsync and closes, which is what a power cut
may do; ``crash_drop_unsynced(rng)`` instead zeroes a random subset of the unsynced pages and keeps
the file size (reordered writeback). Failpoints (``kvstore.failpoints``, which lists them):
``write_log``; ``fsync_log``, ``fsync_file``, ``fsync_dir`` and the generic ``fsync``, right before
every fsync; ``before_fsync``, ``after_fsync``; ``before_snapshot_rename``, ``after_snapshot_rename``,
``before_log_rename``, ``after_log_rename``.

Threads. One owner calls the Storage, one call at a time (the server's driver task, possibly via
``trio.to_thread``). Some methods may also run in a worker thread while the owner goes on:

* ``fsync_through`` (one worker at a time) concurrently with the owner's ``append``, ``flush`` and
  ``log_bytes``, and with ``write_snapshot_file``: it touches only the log's file descriptor,
  ``_synced_end`` and ``_synced_size`` (which only grow; ``append`` reads them for its sync mark, and a
  stale value is only conservative), ``failure``, and the zeros ahead of the records (``_zeros_ahead``).
  Those it writes at or past ``_allocated`` under ``_zeros_lock``, which the owner also holds to write
  zeros, to write records past ``_allocated`` (a full disk refused the zeros) and to cut the log back;
  the owner's other writes stay below ``_allocated``, which only grows.
* ``write_snapshot_file`` (one at a time) concurrently with ``append``, ``flush`` and
  ``fsync_through``: it touches only snapshot files, ``failure``, and at its end the snapshot slot.
* ``write_compaction`` (between the owner's ``begin_compaction`` and ``finish_compaction``)
  concurrently with ``append``, ``flush`` and ``fsync_through``: it writes the new log's temp file, and
  reads the records ``append`` adds to the compaction's tail (whole appends, one ``list.extend`` each);
  ``delete_superseded`` (after ``finish_compaction``) likewise: it deletes older snapshots and logs.

None may overlap ``sync``, ``write_snapshot``, ``compact_log``, ``close`` or
``crash_drop_unsynced``, which write or replace the log. ``failure`` is set by one str assignment
in whichever thread fails; the owner's next call sees it.

Never: pickle; write a file in place that must survive a crash (every such file goes through
temp + fsync + rename + fsync dir); return before an fsync the caller asked for; retry an fsync.
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import random
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, overload

import cbor2

from paxos.actions import AcceptRecord, DecideRecord, DurableState, PromiseRecord, Record, unpack_value
from paxos.ballot import Ballot

from . import failpoints
from .identity import new_incarnation

__all__ = [
    "Storage",
    "StorageError",
    "StorageFull",
    "DiskFailed",
    "OutOfDescriptors",
    "encode_records",
    "place_records",
    "decode_log",
    "LogScan",
    "log_file_name",
    "snapshot_file_name",
]

log = logging.getLogger(__name__)

# meta.json's "format". Every version of kv refuses a directory whose format it does not read, at open,
# before it touches a file. Format 1: the versions up to the sync marks and the log fence; format 2: this
# one. A directory of format 1 is read as it is and its meta.json says 2 from the first open on, before
# anything is written: an older version then refuses it ("data format version 2, this program reads
# 1") instead of reading a log this version appended to (QA: one cut the appended records as a torn tail
# and lost acknowledged writes; older ones cut the whole log once this version had compacted it).
# Format 3: the same files, marked by the versions with client expiry (kvstore.statemachine), so that an
# older version refuses the directory instead of replaying its log by the older rules: QA, a node
# downgraded by mistake applied the forgotten clients' retries that the cluster had refused, served
# them on serializable reads, and wrote them into a snapshot without the expiry that the new version
# then loaded (a replica diverged for good).
FORMAT_VERSION = 3
FORMATS_READ = (1, 2, 3)
# The most zeros a log keeps ahead of its records: the preallocation step doubles up to this while
# records outrun the fsyncs that make its growth durable (see Storage.append)
PREALLOCATE_STEP_MAX = 64 << 20
META_NAME = "meta.json"
LOCK_NAME = "LOCK"
TMP_SUFFIX = ".tmp"

RECORD_HEADER = struct.Struct(">II")  # payload length, crc32(payload) (XOR the place's mask: place_records)
_PLACE = struct.Struct(">QQ")  # what a record's place mask is made of: the log's slot, the record's offset
_pack_place = _PLACE.pack
RECORD_BYTES_MAX = 1 << 30  # a longer length field is damage, not a record (bounds memory on recovery)
_HEADER_BYTES = RECORD_HEADER.size
_unpack_header = RECORD_HEADER.unpack_from

SNAPSHOT_MAGIC = b"KVSNAP\r\n"  # \r\n: a text-mode copy that mangles line ends breaks the magic
SNAPSHOT_VERSION = 1
SNAPSHOT_HEADER = struct.Struct(">8sHQQI")  # magic, version, slot, data length, crc32(data)

_TAG_PROMISE = 0
_TAG_ACCEPT = 1
_TAG_DECIDE = 2
_TAG_SYNC_MARK = 3  # internal to this module: never among the records handed to callers

_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{20})\.snap$")
_LOG_RE = re.compile(r"^log-(\d{20})\.wal$")

_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise _io_error(f"cannot read the size of {path}", exc) from exc


def recorded_config(data_dir: str | Path, node_id: int) -> tuple[dict[int, str], str] | None:
    """What ``data_dir`` recorded of its cluster when node ``node_id`` founded or joined it (meta.json,
    read without taking the directory's lock): the members' addresses as ``{id: "host:port"}`` and the
    cluster id; None if it holds no such record for that node (a new directory, another node's, one
    from before the record, an unreadable one)."""
    try:
        meta = json.loads((Path(data_dir) / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_id") != node_id or not isinstance(meta.get("cluster_id"), str):
        return None
    config = meta.get("config")
    addresses = config.get("addresses") if isinstance(config, dict) else None
    if not isinstance(addresses, dict):
        return None
    try:
        members = {int(member): str(address) for member, address in addresses.items()}
    except ValueError:
        return None
    return (members, meta["cluster_id"]) if node_id in members else None


_DAMAGED_DIR_ADVICE = ("Do not start it as it is: restore the data dir from a backup of this node, or replace the "
                       "node (kv member remove {node_id}, then add a new member under a new id); see "
                       "docs/operations.md, \"A damaged log\"")


def foreign_data_dir(path: str | Path, owner: object, cluster: object, node_id: int, cluster_id: str) -> str:
    """Why node ``node_id`` of ``cluster_id`` may not use the data directory ``path``, whose meta.json
    names node ``owner`` of ``cluster``."""
    text = (f"data dir {path} belongs to node {owner!r} of cluster {cluster!r}, "
            f"not node {node_id} of cluster {cluster_id!r}")
    if owner == node_id and isinstance(cluster, str):
        # (kv snapshot restore names the cluster it makes kv-restored-...: its kv serve line has the id)
        text += f": to run it, give --cluster-id {cluster}"
    return text


class StorageError(Exception):
    """The data directory is damaged, belongs to someone else, or an I/O operation failed."""


class StorageFull(StorageError):
    """A write (not an fsync) failed with ENOSPC; nothing durable was lost, but nothing new is durable.
    The Storage stays usable: the batch is kept and a later ``sync`` retries it."""


class OutOfDescriptors(StorageError):
    """A new file (a snapshot, a rewritten log) could not be created: the process or the system has no
    file descriptor left (EMFILE, ENFILE). Nothing on disk changed and the Storage stays usable; the
    caller may try again later (see kvstore.descriptors)."""


class DiskFailed(StorageError):
    """An fsync failed (whatever its errno, ENOSPC included), or a write failed with an error other
    than ENOSPC. What the disk holds is unknown and a retried fsync may "succeed" without the data
    (fsyncgate), so the Storage is broken for good: every later call raises ``DiskFailed`` with the
    same message (``Storage.failure``). The node must stop voting and restart; recovery then reads
    what the disk really holds."""


# The way out, in every DiskFailed message.
_WHAT_TO_DO = (
    "this node stopped voting; restart it once the disk is fixed: recovery reads what the disk really "
    "holds; if the disk is lost, see docs/operations.md"
)


def snapshot_file_name(slot: int) -> str:
    return f"snapshot-{slot:020d}.snap"


def log_file_name(slot: int) -> str:
    return f"log-{slot:020d}.wal"


# --------------------------------------------------------------------------------------------------
# Record encoding


def _value_item(value: tuple[bytes, ...] | bytes) -> tuple[bytes, ...]:
    # Checked on the way in: a record we cannot decode later would look like corruption and stop
    # the node from starting, so a caller bug must fail here, loudly. A packed value (the replica
    # keeps applied slots' values so: Replica.durable_state(packed=True)) is unpacked here, one record
    # at a time, and written as any other.
    commands = unpack_value(value)
    for command in commands:
        if not isinstance(command, bytes):
            raise TypeError(f"a value must be a tuple of bytes, got an element {command!r}")
    return commands


def _slot_item(slot: int) -> int:
    if type(slot) is not int or slot < 0:
        raise TypeError(f"a slot must be a non-negative int, got {slot!r}")
    return slot


def _ballot_item(ballot: Ballot) -> list[int]:
    return [ballot.number, ballot.node_id]


def _record_item(record: object) -> list[object]:
    if isinstance(record, AcceptRecord):
        return [_TAG_ACCEPT, _slot_item(record.slot), _ballot_item(record.ballot), _value_item(record.value)]
    if isinstance(record, DecideRecord):
        return [_TAG_DECIDE, _slot_item(record.slot), _value_item(record.value)]
    if isinstance(record, PromiseRecord):
        return [_TAG_PROMISE, _ballot_item(record.ballot)]
    raise TypeError(f"not a durable record: {record!r}")


def encode_records(records: Iterable[object], at: int | None = None, file_slot: int = 0) -> bytes:
    """The log bytes for ``records``: each framed as length, crc32, CBOR payload; joined once. With
    ``at``, placed at byte ``at`` of ``log-<file_slot>.wal`` (each crc32 XORed with its place's mask:
    what ``place_records`` does, in the same pass).

    Raises ``TypeError`` for anything that is not a well-formed record (nothing is returned then).
    """
    # One encoder for the whole batch: creating an encoder per record (cbor2.dumps) costs more than
    # encoding a small record. The payload boundaries come from the stream position.
    stream = io.BytesIO()
    encode = cbor2.CBOREncoder(stream).encode
    tell = stream.tell
    ends: list[int] = []
    for record in records:
        encode(_record_item(record))
        ends.append(tell())
    pack = RECORD_HEADER.pack
    crc32 = zlib.crc32
    parts: list[bytes | memoryview] = []
    with stream.getbuffer() as body:
        start = 0
        if at is None:
            for end in ends:
                payload = body[start:end]
                parts.append(pack(end - start, crc32(payload)))
                parts.append(payload)
                start = end
        else:
            offset = at  # where the record's header goes: its payload's start plus the headers before it
            for end in ends:
                payload = body[start:end]
                parts.append(pack(end - start, crc32(payload) ^ position_mask(file_slot, offset)))
                parts.append(payload)
                offset += _HEADER_BYTES + end - start
                start = end
        out = b"".join(parts)
        for part in parts:
            if isinstance(part, memoryview):
                part.release()  # the buffer export must end before the BytesIO is freed
    return out


LOG_REWRITE_CHUNK_BYTES = 1 << 20
"""Bytes written at a time when a log is rewritten (``Storage._install_log``)."""

_ZEROS = memoryview(bytes(256 << 10))
"""Zeros written ahead of the log's records, a piece at a time (``Storage._write_zeros``)."""


def _encoded_groups(records: Iterable[object]) -> Iterator[bytes]:
    """``encode_records(records)`` in pieces of about ``LOG_REWRITE_CHUNK_BYTES`` (joined, the same bytes).
    A record is one slot, whose batch may hold hundreds of commands: pieces are cut by size."""
    parts: list[bytes] = []
    size = 0
    for record in records:
        part = encode_records((record,))
        parts.append(part)
        size += len(part)
        if size >= LOG_REWRITE_CHUNK_BYTES:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)


def position_mask(file_slot: int, offset: int) -> int:
    """What a record's crc32 is XORed with at byte ``offset`` of ``log-<file_slot>.wal`` (see "Records
    know their place" in the module docstring). Always odd, so never 0: a record checks either with
    its place or without one (a log of an older version), never both."""
    return zlib.crc32(_pack_place(file_slot, offset)) | 1


def place_records(data: bytes | bytearray, start: int, file_slot: int) -> bytearray:
    """``data`` (whole records as ``encode_records`` or ``_encode_mark`` frame them, with the crc32 of
    their payload) made to check only at byte ``start`` of ``log-<file_slot>.wal`` and after: each
    record's crc32 XORed with its place's ``position_mask``. A ``bytearray`` is changed in place."""
    out = data if type(data) is bytearray else bytearray(data)
    unpack = _unpack_header
    pack_into = RECORD_HEADER.pack_into
    pos = 0
    end = len(out)
    while pos < end:  # bounded: every pass moves past one whole record (>= 9 bytes)
        length, crc = unpack(out, pos)
        pack_into(out, pos, length, crc ^ position_mask(file_slot, start + pos))
        pos += _HEADER_BYTES + length
    return out


class _SyncMark:
    """A sync mark read from a log: bytes [0, durable_end) of the file were durable before it was
    written, and the file was at least ``size`` bytes long then, durably (see "Sync marks" and "A
    log cut short" in the module docstring; ``size`` is ``durable_end`` in the short form)."""

    __slots__ = ("durable_end", "size")

    def __init__(self, durable_end: int, size: int = 0) -> None:
        self.durable_end = durable_end
        self.size = max(size, durable_end)


def _encode_mark(durable_end: int, size: int = 0, at: int | None = None, file_slot: int = 0) -> bytes:
    """The log bytes of one sync mark: ``[3, durable_end]`` (15 bytes, 19 for a log over 4 GiB) when
    ``size`` (the file's durable length it claims) is not above ``durable_end``, else
    ``[3, durable_end, size]`` (28 bytes, both ints 8 bytes wide). With ``at``, placed at byte ``at``
    of ``log-<file_slot>.wal`` (as ``place_records`` would).

    The int is always written 4 bytes wide (8 from 4 GiB on), valid CBOR if not the shortest, so
    that recovery can decode a mark with one length test instead of a CBOR decoder.
    """
    if size > durable_end:
        payload = b"\x83\x03\x1b" + durable_end.to_bytes(8, "big") + b"\x1b" + size.to_bytes(8, "big")
    elif durable_end < 1 << 32:
        payload = b"\x82\x03\x1a" + durable_end.to_bytes(4, "big")
    else:
        payload = b"\x82\x03\x1b" + durable_end.to_bytes(8, "big")
    crc = zlib.crc32(payload) if at is None else zlib.crc32(payload) ^ position_mask(file_slot, at)
    return RECORD_HEADER.pack(len(payload), crc) + payload


def _covering_mark(content_bytes: int, zeros: int = 0, before: int = 0) -> bytes:
    """The mark that starts a file written whole (then fsynced and renamed into place), after the
    ``before`` bytes of its fence: it covers them, itself and the ``content_bytes`` that follow it, and
    claims the ``zeros`` preallocated after them (the long form, always 28 bytes, when there are any)."""
    if zeros:
        total = before + content_bytes + len(_encode_mark(0, 1))
        return _encode_mark(total, total + zeros)
    total = before + content_bytes + len(_encode_mark(0))
    if total >= 1 << 32:  # the wider form, which itself stays wide
        total = before + content_bytes + len(_encode_mark(1 << 32))
    return _encode_mark(total)


# The first bytes of every log whose records know their place (see "Records know their place"): what
# the version before reads as a sync mark at offset 0 claiming about 5.4e18 durable bytes, so that it
# refuses such a log (damage below a mark: its checksums fail on the masked records) rather than take
# them for a torn tail and cut them all. This version skips it: the log's records start after it. With
# fsync on the first of them is the log's covering mark, and fence and mark were written whole (fsynced
# before the file got its name): damage to either is damage to durable bytes. A log written with fsync
# off starts with the other fence, and its first record may be torn like any later one.
_FENCE = _encode_mark(int.from_bytes(b"KVPLACED", "big"))
_FENCE_NO_SYNC = _encode_mark(int.from_bytes(b"KVPLACE0", "big"))
FENCE_BYTES = len(_FENCE)
assert len(_FENCE_NO_SYNC) == FENCE_BYTES


def _believed(mark: _SyncMark, offset: int, first: int = 0) -> bool:
    """Whether a mark found at ``offset`` can be one this module wrote: a mark in a batch claims at
    most the bytes before it; only the mark that starts a file written whole (at ``first``: 0, or
    after the fence) covers what follows."""
    return offset == first or mark.durable_end <= offset


class _BadRecord(ValueError):
    pass


def _decode_ballot(item: object) -> Ballot:
    if type(item) is not list or len(item) != 2:
        raise _BadRecord(f"ballot is not a pair: {item!r}")
    number, node_id = item
    if type(number) is not int or type(node_id) is not int or number < 0 or node_id < 0:
        raise _BadRecord(f"ballot fields are not non-negative ints: {item!r}")
    return Ballot(number, node_id)


def _decode_slot(item: object) -> int:
    if type(item) is not int or item < 0:
        raise _BadRecord(f"slot is not a non-negative int: {item!r}")
    return item


def _decode_value(item: object) -> tuple[bytes, ...]:
    if type(item) is not list:
        raise _BadRecord(f"value is not an array: {item!r}")
    for command in item:
        if type(command) is not bytes:
            raise _BadRecord(f"value element is not a byte string: {command!r}")
    return tuple(item)


_MARK_TAG_BYTE = bytes([_TAG_SYNC_MARK])  # after 0x82 or 0x83 (a CBOR array of 2 or 3): a sync mark's tag
_MARK_ARRAY_BYTES = (0x82, 0x83)
_crc32 = zlib.crc32
def _decode_mark(payload: bytes) -> _SyncMark:
    """A sync mark from a payload starting with 0x82 0x03 (``[3, ...]``), as ``_encode_mark`` writes
    it, without a CBOR decoder (a mark per group commit would otherwise add a decoder's cost per
    batch to recovery)."""
    size = len(payload)
    if payload[0] == 0x82 and ((size == 7 and payload[2] == 0x1A) or (size == 11 and payload[2] == 0x1B)):
        return _SyncMark(int.from_bytes(payload[3:], "big"))
    if size == 20 and payload[0] == 0x83 and payload[2] == 0x1B and payload[11] == 0x1B:
        return _SyncMark(int.from_bytes(payload[3:11], "big"), int.from_bytes(payload[12:], "big"))
    raise _BadRecord(f"not a sync mark: {payload!r}")


def _decode_payload(payload: bytes) -> Record:
    """One Paxos record from its CBOR payload; ``_BadRecord`` if the bytes are not exactly one record
    (a sync mark included: ``_record_at`` decodes those with ``_decode_mark``)."""
    stream = io.BytesIO(payload)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types on garbage; all mean "not a record"
        raise _BadRecord(f"undecodable CBOR ({exc})") from None
    if stream.tell() != len(payload):
        raise _BadRecord("trailing bytes after the CBOR item")
    if type(item) is not list or not item:
        raise _BadRecord("payload is not a non-empty array")
    tag = item[0]
    if type(tag) is int:
        if tag == _TAG_ACCEPT and len(item) == 4:
            return AcceptRecord(_decode_slot(item[1]), _decode_ballot(item[2]), _decode_value(item[3]))
        if tag == _TAG_DECIDE and len(item) == 3:
            return DecideRecord(_decode_slot(item[1]), _decode_value(item[2]))
        if tag == _TAG_PROMISE and len(item) == 2:
            return PromiseRecord(_decode_ballot(item[1]))
    raise _BadRecord(f"unknown record shape (tag {tag!r}, {len(item)} fields)")


def _record_at(buf: bytes, offset: int, placed: int | None) -> tuple[Record | _SyncMark, int] | str:
    """The record starting at ``offset`` and the offset after it, or a reason why there is none.
    ``placed``: the log's slot if its records know their place (``place_records``), None if not (a
    log of an older version).

    A sync mark comes back as ``_SyncMark``. (Recovery runs this once per record: module-level
    names instead of attribute look-ups, and marks decoded without a CBOR decoder.)
    """
    end = len(buf)
    start = offset + _HEADER_BYTES
    if start > end:
        return f"short header ({end - offset} of {_HEADER_BYTES} bytes)"
    length, crc = _unpack_header(buf, offset)
    if length == 0 or length > RECORD_BYTES_MAX:
        # Zero matters: an all-zero header has crc32(b"") == 0, so it would otherwise "match".
        return f"implausible length {length}"
    stop = start + length
    if stop > end:
        return f"payload of {length} bytes runs past the end of the file ({end - start} left)"
    payload = buf[start:stop]
    if placed is not None:
        crc ^= position_mask(placed, offset)
    if _crc32(payload) != crc:
        return "checksum mismatch"
    try:
        if payload[1:2] == _MARK_TAG_BYTE and payload[0] in _MARK_ARRAY_BYTES:
            return _decode_mark(payload), stop
        return _decode_payload(payload), stop
    except _BadRecord as exc:
        return f"bad payload: {exc}"


def _valid_record_after(buf: bytes, offset: int, last: int, placed: int | None) -> int | None:
    """The first offset above ``offset`` and below ``last`` where a whole valid record starts, or None.

    ``last`` bounds the search: a record starts with a non-zero length, so it starts before the
    trailing zeros (a preallocated log may end in a megabyte of them) and at least a header before
    the end of the file.
    """
    end = len(buf)
    unpack_from = RECORD_HEADER.unpack_from
    header_size = RECORD_HEADER.size
    # Bounded by the file size; the cheap length test skips almost every offset before any CRC work.
    for candidate in range(offset + 1, last):
        length, _crc = unpack_from(buf, candidate)
        if length == 0 or length > end - candidate - header_size:
            continue
        if not isinstance(_record_at(buf, candidate, placed), str):
            return candidate
    return None


def _placed_of(buf: bytes, file_slot: int) -> int | None:
    """Whether the records of a log named for ``file_slot`` know their place: ``file_slot`` if it starts
    with the fence or its first valid record checks with its place, None if that one checks only
    without (a log of an older version, which goes on without, until a compaction rewrites it) or
    the file holds no valid record at all."""
    if (buf.startswith(_FENCE) or buf.startswith(_FENCE_NO_SYNC)
            or not isinstance(_record_at(buf, FENCE_BYTES, file_slot), str)):
        return file_slot
    if not isinstance(_record_at(buf, 0, None), str):
        return None
    # The first record is damaged: the first valid one after it tells (rare, so the slow way).
    last = min(len(buf) - RECORD_HEADER.size, len(buf.rstrip(b"\0")))
    for candidate in range(1, last):
        length, _crc = _unpack_header(buf, candidate)
        if length == 0 or length > len(buf) - candidate - _HEADER_BYTES:
            continue
        if not isinstance(_record_at(buf, candidate, file_slot), str):
            return file_slot
        if not isinstance(_record_at(buf, candidate, None), str):
            return None
    return None


class LogScan:
    """What ``decode_log`` found: the good records, where they end, and the damage after them if any.

    ``records`` are the Paxos records before the damage (never sync marks). ``bad_reason`` is None
    for a clean log. Otherwise the bytes from ``good_bytes`` on are bad; ``resync_offset`` is where
    the first valid record after them starts, or None. ``dropped_records`` counts the valid Paxos
    records found after the damage. ``zero_tail`` counts the zero bytes after the records of a clean
    log: space the log preallocated and never used (or zeros a file system left after a power cut);
    never a record. ``marked_end`` is the largest ``durable_end`` of the sync marks found anywhere
    in the file, before or after the damage (None: the file has no mark, it was written by an older
    version). After damage the scan stops at the first mark beyond ``good_bytes``: the verdict is
    known then.

    ``damage_is_durable`` is the verdict: the damage may hold records that were durable, so the node
    must not start; otherwise the bad bytes are a tail to cut (see the module docstring). ``placed``:
    the log's slot if its records know their place, None if not (``_placed_of``). ``claimed_size``:
    the largest file length the believed marks say was durable (0: none says), which the file must
    still have ("A log cut short" in the module docstring). ``damaged_start``: the damage is in the
    fence or the first mark of a log written whole (durable bytes, whatever the marks say).
    """

    __slots__ = ("records", "good_bytes", "bad_reason", "resync_offset", "zero_tail", "marked_end",
                 "dropped_records", "placed", "claimed_size", "damaged_start")

    def __init__(self, records: list[Record], good_bytes: int, bad_reason: str | None, resync_offset: int | None,
                 zero_tail: int = 0, marked_end: int | None = None, dropped_records: int = 0,
                 placed: int | None = None, claimed_size: int = 0, damaged_start: bool = False) -> None:
        self.damaged_start = damaged_start
        self.placed = placed
        self.claimed_size = claimed_size
        self.records = records
        self.good_bytes = good_bytes
        self.bad_reason = bad_reason
        self.resync_offset = resync_offset
        self.zero_tail = zero_tail
        self.marked_end = marked_end
        self.dropped_records = dropped_records

    @property
    def damage_is_durable(self) -> bool:
        if self.bad_reason is None:
            return False
        if self.damaged_start:
            return True
        if self.marked_end is None:  # a log without marks: the rule of older versions
            return self.resync_offset is not None
        return self.good_bytes < self.marked_end


def decode_log(buf: bytes, file_slot: int = 0) -> LogScan:
    """Parse a whole log file's bytes (of ``log-<file_slot>.wal``); see the module docstring for the
    torn-tail rule."""
    placed = _placed_of(buf, file_slot)
    claims = [0]
    scan = _decode_log(buf, placed, claims)
    scan.placed = placed
    scan.claimed_size = claims[0]
    return scan


def _decode_log(buf: bytes, placed: int | None, claims: list[int]) -> LogScan:
    """``decode_log`` for a log whose place masks are known; ``claims[0]`` becomes the largest size
    a believed mark claims."""
    records: list[Record] = []
    append = records.append
    marked_end: int | None = None
    first = offset = 0 if placed is None else FENCE_BYTES  # (the fence is no record of this version)
    end = len(buf)
    reason: str | None = None
    written_whole = placed is not None and not buf.startswith(_FENCE_NO_SYNC)
    if written_whole and not buf.startswith(_FENCE):
        # (found placed by its records: the fence, durable with the first mark that covers it, is damaged)
        reason = "bad fence (the first bytes of a log whose records know their place)"
        offset = 0
    elif written_whole and end <= first:
        reason = "its first sync mark is missing (the file ends with its fence)"
    while reason is None and offset < end:  # bounded: every pass advances by a whole record (>= 9 bytes)
        found = _record_at(buf, offset, placed)
        if isinstance(found, str):
            reason = found
            break
        record, after = found
        if isinstance(record, _SyncMark):
            if _believed(record, offset, first):
                if marked_end is None or record.durable_end > marked_end:
                    marked_end = record.durable_end
                if record.size > claims[0]:
                    claims[0] = record.size
        else:
            append(record)
        offset = after
    if reason is None:
        return LogScan(records, offset, None, None, marked_end=marked_end)
    damage = offset
    if marked_end is not None and marked_end > damage:
        # Only a file's first mark can claim bytes after itself (a log written whole): damage inside
        # such a file, zeros included, is damage to durable bytes.
        return LogScan(records, damage, reason, None, marked_end=marked_end)
    if written_whole and damage <= first:
        # The fence or the covering mark after it: written whole and fsynced before the file had its
        # name, so never torn by a crash (a cut inside them took the mark that would say so).
        return LogScan(records, damage, reason, None, marked_end=marked_end, damaged_start=True)
    if buf.count(0, offset) == end - offset:
        # Only zeros follow: no record starts with a zero length, so none hides in there.
        return LogScan(records, offset, None, None, zero_tail=end - offset, marked_end=marked_end)
    # Damage at ``offset``. Look at every valid record after it: a mark there may say that the
    # damaged bytes were durable.
    last = min(end - RECORD_HEADER.size, len(buf.rstrip(b"\0")))
    resync: int | None = None
    dropped = 0
    position = damage
    while (candidate := _valid_record_after(buf, position, last, placed)) is not None:
        if resync is None:
            resync = candidate
        position = candidate
        while position < end:  # bounded as above: whole records, then a bad one
            found = _record_at(buf, position, placed)
            if isinstance(found, str):
                break
            record, after = found
            if type(record) is _SyncMark:
                if _believed(record, position, first):
                    if record.size > claims[0]:
                        claims[0] = record.size
                    if marked_end is None or record.durable_end > marked_end:
                        marked_end = record.durable_end
                        if marked_end > damage:  # durable damage: nothing later changes the verdict
                            return LogScan(records, damage, reason, resync,
                                           marked_end=marked_end, dropped_records=dropped)
            else:
                dropped += 1
            position = after
        if position >= end:
            break
    return LogScan(records, damage, reason, resync, marked_end=marked_end, dropped_records=dropped)


# --------------------------------------------------------------------------------------------------
# Small file helpers


def _why_no_marks(scan: LogScan) -> str:
    """Why a log has no sync mark to go by: an older version's, or this version's whose first one is
    damaged and no later one survived."""
    return "written by an older version" if scan.placed is None else "its first one is damaged, and no later one"


def _holds_nothing(path: Path) -> bool:
    """Whether the log at ``path`` is empty, or holds a fence or the start of one alone (see ``_FENCE``):
    a log of this version cut short before its first mark."""
    size = _file_size(path)
    if 0 < size <= FENCE_BYTES:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _io_error(f"cannot read {path}", exc) from exc
        return _FENCE.startswith(data) or _FENCE_NO_SYNC.startswith(data)
    return size == 0


def _starts_with_zeros(path: Path) -> bool:
    """Whether the log at ``path`` begins with a zero record length (4 zero bytes): a log of this version
    begins with its fence, one of an older version with a record whose length is not zero."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise _io_error(f"cannot read {path}", exc) from exc
    return len(head) == 4 and not any(head)


def _fsync_dir(path: Path) -> None:
    """fsync the directory ``path``. ``OSError`` from opening it is ``_DirOpenError`` (not a disk
    failure: e.g. too many open files); from the fsync, a plain ``OSError``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise _DirOpenError(exc.errno, f"cannot open directory {path} to fsync it: {exc.strerror}") from exc
    try:
        failpoints.hit("fsync")
        failpoints.hit("fsync_dir")
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirOpenError(OSError):
    pass


@overload
def _check_snapshot(path: Path, slot: int, *, keep: Literal[False] = False) -> int: ...
@overload
def _check_snapshot(path: Path, slot: int, *, keep: Literal[True]) -> bytes: ...
def _check_snapshot(path: Path, slot: int, *, keep: bool = False) -> int | bytes:
    """Check a renamed snapshot file (header and checksum), reading it in 1 MiB pieces; return the
    length of its state machine bytes, which follow the header (``keep``: return those bytes instead).
    ``StorageError`` if it is damaged.
    """
    damage = None
    kept: list[bytes] = []
    with open(path, "rb") as file:
        head = file.read(SNAPSHOT_HEADER.size)
        if len(head) < SNAPSHOT_HEADER.size:
            damage = f"shorter than its {SNAPSHOT_HEADER.size}-byte header ({len(head)} bytes)"
        else:
            magic, version, header_slot, length, crc = SNAPSHOT_HEADER.unpack(head)
            if magic != SNAPSHOT_MAGIC:
                damage = f"bad magic {magic!r}"
            elif version != SNAPSHOT_VERSION:
                damage = f"unknown snapshot format version {version}"
            elif header_slot != slot:
                damage = f"header says slot {header_slot}, the file name says {slot}"
            else:
                size, actual = 0, 0
                while chunk := file.read(1 << 20):
                    size += len(chunk)
                    actual = zlib.crc32(chunk, actual)
                    if keep:
                        kept.append(chunk)
                if length != size:
                    damage = f"header says {length} data bytes, the file has {size}"
                elif actual != crc:
                    damage = "checksum mismatch"
                else:
                    return b"".join(kept) if keep else length
    raise StorageError(
        f"snapshot {path} is damaged: {damage}. It was fsynced before it was renamed into place, so "
        f"this is real damage, not a crash; refusing to start. Do not wipe the data dir (its log holds "
        f"this node's promises and accepted values, which a wiped acceptor forgets): restore it from a "
        f"backup of this node, or replace the node; see docs/operations.md, \"A damaged snapshot\""
    )


def _read_snapshot(path: Path, slot: int) -> bytes:
    """The state machine bytes of a renamed snapshot file; ``StorageError`` if it is damaged."""
    return _check_snapshot(path, slot, keep=True)


def _io_error(message: str, exc: OSError) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageFull(f"{message}: no space left on device")
    return StorageError(f"{message}: {exc}")


# --------------------------------------------------------------------------------------------------
# Storage


COMPACTION_TAIL_ROUNDS = 3
"""Rounds in which ``write_compaction`` also writes what was appended meanwhile ..."""
COMPACTION_TAIL_RECORDS_MIN = 64
COMPACTION_TAIL_BYTES_MIN = 1 << 20
"""... while at least this many records, or bytes of them, are waiting (less is left to ``finish_compaction``)."""

REWRITE_ZEROS_MAX = 1 << 20
"""Zeros ``Storage.finish_compaction`` adds when the records it writes reach past those ``write_compaction``
wrote (a step's worth): more are written ahead by the next ``fsync_through``, in the committer's thread."""


class _Compaction:
    """A compaction under way (``Storage.begin_compaction`` .. ``finish_compaction``)."""

    __slots__ = ("slot", "state", "tail", "tail_written", "tail_bytes", "fd", "tmp", "room", "content", "zeros")

    def __init__(self, slot: int, state: DurableState) -> None:
        self.slot = slot
        self.state: DurableState | None = state  # what the log must hold above ``slot`` (then dropped)
        self.tail: list[object] = []  # the records appended since begin_compaction, in order
        self.tail_written = 0  # ... how many of them write_compaction wrote too
        self.tail_bytes = 0  # ... and the bytes they took in the old log (about what they take here)
        self.fd: int | None = None  # the new log's temp file, once write_compaction opened it
        self.tmp: Path | None = None
        self.room = 0  # where its records start: after the fence and the room for its covering mark
        self.content = 0  # bytes of records write_compaction wrote
        self.zeros = 0  # the zeros it starts with, claimed by its covering mark


class Storage:
    """One node's data directory; build it with ``Storage.open``. See the module docstring."""

    recovered: DurableState

    def __init__(self, path: Path, *, fsync: bool, lock_fd: int, preallocate: int = 0) -> None:
        # Private: use Storage.open, which recovers the directory first.
        self.path = path
        # Bytes of zeros to keep written ahead of the log's end (0: none; nothing with fsync off).
        self._preallocate = preallocate if fsync else 0
        self._allocated = 0  # the log file's size: its records, then zeros
        self._preallocation_failing = False  # the last preallocation found the disk full (warned once)
        # Held by whoever writes at or past ``_allocated`` (zeros, or records past them) or cuts the file:
        # ``fsync_through`` writes the zeros ahead in the committer's thread (``_zeros_ahead``).
        self._zeros_lock = threading.Lock()
        self.recovered = DurableState()
        self._found_snapshot: tuple[int, int] | None = None  # (slot, data length) found at open
        # Identity (kvstore.identity), from meta.json: this directory's incarnation, the members'
        # incarnations once the cluster is founded (None before), and whether the directory predates
        # incarnations (it got one at this open and records members as they say Hello).
        self._meta: dict[str, Any] = {}
        self.incarnation = ""
        self.members: dict[int, str] | None = None
        self.identity_legacy = False
        self._snapshot_slot = 0
        self._snapshot_bytes = 0
        self._fsync_enabled = fsync
        self._lock_fd: int | None = lock_fd
        self._log_fd: int | None = None
        self._log_path = path / log_file_name(0)
        self._log_end = 0  # bytes of the current log file that hold whole, written records
        self._log_kept = 0  # ... of them the last rewrite (a compaction) kept: the log above the snapshot
        self._compaction: _Compaction | None = None  # a compaction in two steps under way
        self._synced_end = 0  # bytes of the current log file known durable (only grows per log file)
        self._marked_end = 0  # the largest sync mark in the current log: a new one is due once above it
        # The current log's length when its last fsync began (durable once it returned; the file never
        # gets shorter than that: see "A log cut short"), and the largest length a mark in it claims
        self._synced_size = 0
        self._marked_size = 0
        self._placed: int | None = None  # the current log's slot if its records know their place, else None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # Set once, by the first fsync failure or non-ENOSPC write failure (see DiskFailed); the
        # message every later call raises. Written by a worker thread too (fsync_through,
        # write_snapshot_file): one str assignment, read by the owner at its next call.
        self.failure: str | None = None
        self._closed = False
        # Test seams (see the module docstring): instance attributes so one test can replace them.
        self._write = os.write
        self._fdatasync = _fdatasync

    # ---- opening and recovery ------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str | Path, *, node_id: int, cluster_id: str, fsync: bool = True,
             preallocate: int = 0) -> Storage:
        """Open (creating on first use) and recover the data directory of ``node_id`` in ``cluster_id``.

        ``preallocate``: keep this many bytes of zeros written ahead of the log's end (see "Preallocated
        log space" in the module docstring); 0 appends to the file's end.

        Returns a Storage whose ``recovered`` and ``snapshot`` hold what was durable (and is now
        fsynced); a log tail that no sync mark covers has been cut off (and logged). Raises
        ``StorageError`` if the directory belongs to another node or cluster, is in use by another
        process, is not empty but has no meta file, or is damaged (the message names the file, the
        byte offset for log damage, and the way out); ``DiskFailed`` if an fsync fails (or a write, but
        for ENOSPC, which is ``StorageFull``).
        """
        if type(node_id) is not int or node_id < 1:
            raise ValueError(f"node_id must be a positive int, got {node_id!r}")
        if type(preallocate) is not int or preallocate < 0:
            raise ValueError(f"preallocate must be an int >= 0, got {preallocate!r}")
        if not isinstance(cluster_id, str) or not cluster_id:
            raise ValueError(f"cluster_id must be a non-empty str, got {cluster_id!r}")
        path = Path(data_dir)
        try:
            created = not path.exists()
            # The node's own directory: it holds the whole store, so only its owner may read it (as etcd's
            # 0700). An existing one keeps the mode its owner gave it.
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _io_error(f"cannot open data dir {path}", exc) from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            raise StorageError(f"data dir {path} is in use by another process ({exc})") from exc
        storage = cls(path, fsync=fsync, lock_fd=lock_fd, preallocate=preallocate)
        try:
            if created:
                try:
                    storage._sync_dir(path.resolve().parent)  # the new directory's entry in its parent
                except OSError as exc:  # it could not be opened (a failed fsync is DiskFailed)
                    raise _io_error(f"cannot open the parent of data dir {path}", exc) from exc
            storage._recover(node_id, cluster_id)
        except BaseException:
            storage.close()
            raise
        return storage

    def _recover(self, node_id: int, cluster_id: str) -> None:
        path = self.path
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise _io_error(f"cannot list data dir {path}", exc) from exc

        # The meta file first: touch nothing in a directory that belongs to another node.
        if META_NAME in names:
            self._check_meta(node_id, cluster_id)
        else:
            unexpected = sorted(n for n in names if n != LOCK_NAME and not n.endswith(TMP_SUFFIX))
            if unexpected:
                raise StorageError(
                    f"data dir {path} has no {META_NAME} but is not empty ({', '.join(unexpected[:5])}); "
                    f"refusing to initialise it"
                )
            self._write_meta(node_id, cluster_id)

        # Leftover temp files are writes a crash cut short; they were never renamed, so never used.
        try:
            removed_tmp = False
            for name in names:
                if name.endswith(TMP_SUFFIX):
                    log.info("removing leftover temp file %s", path / name)
                    # (missing_ok: meta.json.tmp left by a crash in the first open is gone already, reused
                    # and renamed by _write_meta above: such a node could never start again)
                    (path / name).unlink(missing_ok=True)
                    removed_tmp = True
            if removed_tmp:
                self._sync_dir()
        except OSError as exc:
            raise _io_error(f"cannot remove temp files in {path}", exc) from exc
        names = [name for name in names if not name.endswith(TMP_SUFFIX)]
        snapshot_slots = sorted(int(m.group(1)) for m in map(_SNAPSHOT_RE.match, names) if m)
        log_slots = sorted(int(m.group(1)) for m in map(_LOG_RE.match, names) if m)

        snapshot_slot = snapshot_slots[-1] if snapshot_slots else 0
        if snapshot_slots:
            length = _check_snapshot(path / snapshot_file_name(snapshot_slot), snapshot_slot)
            self._found_snapshot = (snapshot_slot, length)
            self._snapshot_slot = snapshot_slot
            self._snapshot_bytes = length

        newer = [s for s in log_slots if s > snapshot_slot]
        if newer:
            raise StorageError(
                f"data dir {path}: log {log_file_name(newer[0])} is newer than the newest snapshot "
                f"(slot {snapshot_slot}); its snapshot is missing. {_DAMAGED_DIR_ADVICE.format(node_id=node_id)}"
            )
        # A member's directory (meta.json names the members: it took part in a cluster) whose log is gone
        # or empty, with no snapshot either: its promises and accepted values were lost (a deleted or
        # truncated file). Starting would make it an acceptor that forgot its votes, which can decide
        # two values for one slot; refuse, as for damaged durable bytes. (A new log of this version is
        # never empty: it starts with the fence and a sync mark, unless written with fsync off; a log
        # holding the fence alone was cut short to it.)
        #
        # The same for the log that follows a snapshot (a compaction writes it whole, fence and mark first,
        # and fsyncs it before it gets its name, as the first log): the promise and the votes since the
        # snapshot are in it alone. And for a log whose first bytes are zeros: no log of this version or
        # an older one starts so (the fence, or an older version's first record, whose length is not
        # zero), so its beginning was wiped, and the rest may have gone with it (QA: a log emptied or
        # zero-filled after a snapshot started silently, and the node voted without 200 acknowledged
        # writes).
        founded = META_NAME in names and self.members is not None and not self.identity_legacy
        amnesia = None
        if founded and not snapshot_slots and not log_slots:
            amnesia = f"its log {log_file_name(0)} is missing"
        elif founded and log_slots and self._fsync_enabled:
            current = path / log_file_name(log_slots[-1])
            if _holds_nothing(current):
                amnesia = f"its log {current.name} is empty"
            elif _starts_with_zeros(current):
                amnesia = f"its log {current.name} begins with zeros (its first bytes, written whole, are wiped)"
        if amnesia is not None:
            raise StorageError(
                f"data dir {path} belongs to a member of cluster {cluster_id!r}, but {amnesia}: the promises "
                f"and accepted values this node answered with are gone. Do not start it as it is (an "
                f"acceptor that forgets its votes can break consensus): restore the data dir from a backup "
                f"of this node, or replace the node (kv member remove {node_id}, then add a new member under a "
                f"new id); see docs/operations.md, \"A damaged log\"")
        if log_slots:
            log_slot = log_slots[-1]
        elif snapshot_slots:
            raise StorageError(f"data dir {path}: snapshot at slot {snapshot_slot} but no log at or below it. "
                               f"{_DAMAGED_DIR_ADVICE.format(node_id=node_id)}")
        else:
            log_slot = 0
            # A new log starts with the fence and a sync mark (covering the two): "this version wrote me".
            # With preallocation, its zeros come with it and the mark claims them (see "A log cut short").
            first = _FENCE_NO_SYNC
            if self._fsync_enabled:
                mark = _covering_mark(0, self._preallocate, FENCE_BYTES)
                first = _FENCE + bytes(place_records(mark, FENCE_BYTES, 0)) + bytes(self._preallocate)
            self._write_file_atomically(log_file_name(0), first, None, None)

        log_path = path / log_file_name(log_slot)
        scan = self._read_log(log_path, log_slot)
        self.recovered = DurableState.replay(scan.records, snapshot_slot=snapshot_slot)
        # What recovery found counts as durable (_read_log fsynced it): it is all a later crash can be
        # measured against. After a cut no kept mark may cover the kept records: a new one is due.
        marked_end = (scan.marked_end or 0) if scan.bad_reason is None else 0
        self._open_log(log_path, durable=True, end=scan.good_bytes, marked_end=marked_end, placed=scan.placed,
                       marked_size=scan.claimed_size)

        if log_slot != snapshot_slot:
            # A crash between the snapshot rename and the log rename: finish that compaction now.
            log.info("finishing an interrupted compaction: rewriting %s", log_file_name(snapshot_slot))
            self._install_log(snapshot_slot, self.recovered.records)
        try:
            self._delete_older_than(snapshot_slot)
        except OSError as exc:
            raise _io_error(f"cannot delete old snapshots and logs in {path}", exc) from exc

    def _check_meta(self, node_id: int, cluster_id: str) -> None:
        meta_path = self.path / META_NAME
        try:
            meta = json.loads(meta_path.read_bytes())
            version, owner, cluster = meta["format"], meta["node_id"], meta["cluster_id"]
            incarnation = meta.get("incarnation")
            members = meta.get("members")
            if incarnation is not None and (type(incarnation) is not str or not incarnation):
                raise TypeError(f"incarnation {incarnation!r} is not a non-empty string")
            if members is not None:
                members = {int(k): str(v) for k, v in members.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"meta file {meta_path} is unreadable: {exc!r}") from exc
        if version not in FORMATS_READ:
            newer = type(version) is int and version > FORMAT_VERSION
            raise StorageError(
                f"meta file {meta_path}: data format version {version!r}, this program reads "
                f"{', '.join(map(str, FORMATS_READ))}" + ("; a newer version of kv wrote this directory: run that "
                                                           "version (a downgrade is refused)" if newer else "")
            )
        if owner != node_id or cluster != cluster_id:
            raise StorageError(foreign_data_dir(self.path, owner, cluster, node_id, cluster_id))
        self._meta = meta
        if version != FORMAT_VERSION:
            # Before anything else is written (see FORMAT_VERSION): from now on older versions refuse it.
            meta["format"] = FORMAT_VERSION
            self._save_meta()
            log.info("data dir %s: upgraded from format %s to %s (older versions of kv refuse it from now on)",
                     self.path, version, FORMAT_VERSION)
        if incarnation is None:
            # Made by a version without incarnations: this directory is the acceptor it always was, in
            # a cluster founded before incarnations. It records only itself; the other members'
            # incarnations are recorded as their Hellos arrive (trust on first use, kvstore.identity).
            self.identity_legacy = True
            meta["incarnation"] = new_incarnation()
            members = {node_id: meta["incarnation"]}
            meta["members"] = {str(node_id): meta["incarnation"]}
            self._save_meta()
        self.incarnation = meta["incarnation"]
        self.members = members

    def _write_meta(self, node_id: int, cluster_id: str) -> None:
        self._meta = {"format": FORMAT_VERSION, "node_id": node_id, "cluster_id": cluster_id,
                      "incarnation": new_incarnation()}
        self.incarnation = self._meta["incarnation"]
        self._save_meta()

    def _save_meta(self) -> None:
        text = json.dumps(self._meta, sort_keys=True).encode() + b"\n"
        self._write_file_atomically(META_NAME, text, None, None)

    def record_members(self, members: dict[int, str], config: dict[str, Any] | None = None) -> None:
        """Record the members' incarnations (``kvstore.identity``) durably in meta.json: at founding,
        and as a directory older than incarnations learns its peers. With ``config``, also the
        configuration this directory starts from (``paxos.membership.Config.to_dict()``: the bootstrap
        configuration at founding, the newest one when joining; see ``bootstrap_config``). Raises
        ``StorageError`` (or ``DiskFailed``) if meta.json cannot be rewritten."""
        self._check_usable()
        self._meta["members"] = {str(k): v for k, v in sorted(members.items())}
        if config is not None:
            self._meta["config"] = config
        self._save_meta()
        self.members = dict(members)

    @property
    def bootstrap_config(self) -> dict[str, Any] | None:
        """The configuration recorded by ``record_members(..., config=...)``, or None."""
        config = self._meta.get("config")
        return config if isinstance(config, dict) else None

    def _read_log(self, log_path: Path, log_slot: int) -> LogScan:
        """Scan ``log_path``, cut a tail that is not durable (and, without preallocation, trailing
        zeros), and make what is kept durable (an fdatasync: a process that crashed before its fsync
        left its writes in the page cache, and a sync mark written from now on will say they are
        durable). Returns the scan: ``records`` and ``good_bytes`` are what is kept.
        ``StorageError`` on damage to durable records; ``DiskFailed`` if the fsync fails.
        """
        try:
            buf = log_path.read_bytes()
        except OSError as exc:
            raise _io_error(f"cannot read log {log_path}", exc) from exc
        scan = decode_log(buf, log_slot)
        cut = scan.good_bytes
        if scan.damage_is_durable:
            raise StorageError(self._damage_message(log_path, scan))
        if len(buf) < scan.claimed_size:
            raise StorageError(
                f"log {log_path} is {len(buf)} bytes long, but a sync mark in it says it was {scan.claimed_size} "
                f"bytes long when an fsync made it durable: its end was cut off, and with it records this node "
                f"may have acknowledged (votes it may have promised to keep). Do not start it as it is: "
                f"restore the data dir from a backup of this node, or replace the node (kv member remove, then "
                f"add a new member under a new id); see docs/operations.md, \"A damaged log\"")
        # Never shorter than a mark says the file was durably: zeros (a hole) stand for what is cut below
        # that, so that the next open finds the length every mark claims ("A log cut short").
        keep = max(cut, scan.claimed_size)
        if scan.bad_reason is None and (not scan.zero_tail or self._preallocate or keep >= len(buf)):
            # Clean (a preallocated log keeps its zeros for later records, and any log the zeros a mark
            # says were durable): make it durable as read.
            if self._fsync_enabled and cut:
                try:
                    fd = os.open(log_path, os.O_WRONLY)
                except OSError as exc:
                    raise _io_error(f"cannot open log {log_path}", exc) from exc
                try:
                    self._fsync(fd, f"fdatasync of log {log_path} at open", "fsync_log", self._fdatasync)
                finally:
                    os.close(fd)
            return scan
        if scan.bad_reason is None:
            log.info("log %s: cutting %d bytes of zeros after the last record", log_path, len(buf) - keep)
        elif scan.marked_end is None:
            log.warning(
                "log %s: cutting a torn tail of %d bytes at byte offset %d (%s); the log has no sync "
                "marks (%s)", log_path, len(buf) - cut, cut, scan.bad_reason, _why_no_marks(scan),
            )
        else:
            log.warning(
                "log %s: cutting a torn tail of %d bytes at byte offset %d (%s), dropping %d valid records "
                "after it: no sync mark says any of it was durable (the marks cover bytes below %d), so no "
                "record in it was acknowledged", log_path, len(buf) - cut, cut, scan.bad_reason,
                scan.dropped_records, scan.marked_end,
            )
        try:
            fd = os.open(log_path, os.O_WRONLY)
            try:
                os.ftruncate(fd, cut)
                if keep > cut:
                    os.ftruncate(fd, keep)
                if self._fsync_enabled:
                    self._fsync(fd, f"fsync of log {log_path} after cutting its tail at byte offset {cut}",
                                "fsync_file", self._fdatasync)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _io_error(f"cannot cut the torn tail of {log_path} at byte offset {cut}", exc) from exc
        return scan

    @staticmethod
    def _damage_message(log_path: Path, scan: LogScan) -> str:
        offset = scan.good_bytes
        if scan.damaged_start:
            why = ("the log's first bytes (its fence and first sync mark) were written whole and made durable "
                   "before the file got its name")
        elif scan.marked_end is not None:
            why = (f"a sync mark says the log was durable below byte offset {scan.marked_end}, so the "
                   f"damaged bytes were once durable")
        else:
            why = (f"a valid record follows at byte offset {scan.resync_offset} and the log has no sync "
                   f"marks ({_why_no_marks(scan)}), so the damaged bytes may have been durable")
        return (
            f"log {log_path} is corrupt at byte offset {offset} ({scan.bad_reason}); {why}: records this "
            f"node may have acknowledged (promises, accepted values) are damaged, refusing to start. Do not "
            f"wipe the data dir (an acceptor that forgets its promises can break consensus): restore it from a "
            f"backup of this node, or replace the node; see docs/operations.md, \"A damaged log\""
        )

    # ---- file plumbing -----------------------------------------------------------------------------

    def _fail(self, what: str, exc: OSError) -> DiskFailed:
        """Mark the Storage broken (the first failure's message stays) and return the DiskFailed to raise."""
        if self.failure is None:
            self.failure = f"{what} failed ({exc}); {_WHAT_TO_DO}"
        return DiskFailed(self.failure)

    def _fsync(self, fd: int, what: str, point: str, call: Callable[[int], None]) -> None:
        """``call(fd)`` (an fsync or fdatasync) after the failpoints ``fsync`` and ``point``; any
        ``OSError`` breaks the Storage (``DiskFailed``, naming ``what``)."""
        try:
            failpoints.hit("fsync")
            failpoints.hit(point)
            call(fd)
        except OSError as exc:
            raise self._fail(what, exc) from exc

    def _write_failed(self, what: str, exc: OSError) -> StorageError:
        """The error for a failed write of a file other than the log: ``StorageFull`` for ENOSPC
        (nothing changed that counts), ``DiskFailed`` for anything else (breaks the Storage)."""
        if exc.errno == errno.ENOSPC:
            return StorageFull(f"{what}: no space left on device")
        return self._fail(what, exc)

    def _sync_dir(self, path: Path | None = None) -> None:
        """fsync the data dir (or ``path``); a failed fsync breaks the Storage (``DiskFailed``)."""
        if not self._fsync_enabled:
            return
        path = self.path if path is None else path
        try:
            _fsync_dir(path)
        except _DirOpenError:
            raise
        except OSError as exc:
            raise self._fail(f"fsync of directory {path}", exc) from exc

    def _write_zeros_at_offset(self, fd: int, count: int) -> None:
        """Write ``count`` zeros at ``fd``'s offset, ``_ZEROS`` at a time."""
        for piece in range(0, count, len(_ZEROS)):
            self._write_all(fd, _ZEROS[:min(count - piece, len(_ZEROS))])

    def _write_all(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        written = 0
        while written < len(data):  # bounded: every pass writes at least one byte or raises
            count = self._write(fd, view[written:])
            if count <= 0:
                raise OSError(errno.EIO, f"write returned {count}")
            written += count

    def _write_file_atomically(self, name: str, data: bytes | Callable[[int], None], before: str | None,
                               after: str | None) -> None:
        """Write ``name`` by temp file, fsync, rename, fsync dir; failpoints around the rename.

        ``data`` is the file's bytes, or a function that writes them to the descriptor it is given.
        """
        final = self.path / name
        fd, tmp = self._create_tmp(name)
        try:
            try:
                try:
                    if callable(data):
                        data(fd)
                    else:
                        self._write_all(fd, data)
                except OSError as exc:
                    raise self._write_failed(f"cannot write {tmp}", exc) from exc
                if self._fsync_enabled:
                    # fsync, not fdatasync: the new file's metadata must be durable before the rename.
                    self._fsync(fd, f"fsync of {tmp}", "fsync_file", os.fsync)
            finally:
                os.close(fd)
        except BaseException:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # on open, a leftover .tmp is deleted anyway
            raise
        self._put_in_place(tmp, final, before, after)

    def _create_tmp(self, name: str) -> tuple[int, Path]:
        """Create (or truncate) the temp file ``name`` + ``TMP_SUFFIX``; its descriptor and path.
        ``OutOfDescriptors`` if the process has no descriptor left, ``StorageError`` otherwise."""
        tmp = self.path / (name + TMP_SUFFIX)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), tmp
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise OutOfDescriptors(f"cannot create {tmp}: {exc.strerror}") from exc
            raise _io_error(f"cannot create {tmp}", exc) from exc

    def _put_in_place(self, tmp: Path, final: Path, before: str | None, after: str | None) -> None:
        """Rename the written and synced ``tmp`` to ``final`` and fsync the directory (failpoints
        ``before`` and ``after`` the rename); ``tmp`` is deleted if the rename fails."""
        try:
            try:
                if before:
                    failpoints.hit(before)
                os.replace(tmp, final)
            except OSError as exc:
                raise self._write_failed(f"cannot rename {tmp} to {final}", exc) from exc
        except BaseException:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # on open, a leftover .tmp is deleted anyway
            raise
        # Renamed: the file is in place but maybe not durably, and this Storage may still point at
        # the file it replaced (a log). A failure from here on breaks the Storage: only a fresh
        # recovery knows which files count.
        try:
            self._sync_dir()
        except _DirOpenError as exc:
            raise self._fail(f"fsync of directory {self.path} after renaming {final}", exc) from exc
        if after:
            try:
                failpoints.hit(after)
            except OSError as exc:
                raise self._fail(f"renaming {final}", exc) from exc

    def _open_log(self, log_path: Path, *, durable: bool, end: int | None = None, marked_end: int = 0,
                  placed: int | None, marked_size: int = 0) -> None:
        """Append to ``log_path`` from now on, at ``end`` (its records' end; default: the file's end);
        ``durable``: the records count as fsynced (and the file's length); ``marked_end``: the largest
        sync mark it holds, ``marked_size`` the largest length one claims; ``placed``: its slot if its
        records know their place (``place_records``), None if not."""
        try:
            fd = os.open(log_path, os.O_WRONLY)
            try:
                size = os.fstat(fd).st_size
                end = size if end is None else end
                os.lseek(fd, end, os.SEEK_SET)  # writes go on from here (over preallocated zeros)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            raise _io_error(f"cannot open log {log_path}", exc) from exc
        if self._log_fd is not None:
            os.close(self._log_fd)
        self._log_fd = fd
        self._log_path = log_path
        self._log_end = end
        self._allocated = size
        self._synced_end = end if durable else 0
        self._marked_end = marked_end
        self._placed = placed
        self._synced_size = size if durable else 0
        self._marked_size = marked_size

    def _reserve(self, count: int) -> None:
        """With preallocation: make sure zeros are written (not yet fsynced) past ``count`` more bytes.

        Overwriting bytes that are already part of the file changes no metadata, so an fdatasync then
        flushes only the data: it skips the journal commit that growing the file costs (about 20% of
        a small fsync with three nodes sharing a disk, measured in docs/benchmarks.md). The zeros
        go out in steps of ``preallocate`` bytes, with one write and, at the next fsync, one journal
        commit per step. A failure here (a full disk) only means no preallocation this time: the
        records' own write then reports what it must.

        The next step goes out once the records have used half of the zeros ahead, not all of them: the
        next fsync then makes the new length durable, and later marks claim it, before any record
        reaches it. Waiting until the zeros ran out made the batch that did grow the file durably itself
        (``_grow_durably``: an fdatasync in the node's event loop, once per step; gray-failure QA:
        0.5-5 s during which the node answered nothing, on a slow disk). ``_grow_durably`` is left for a
        batch that outruns that, one larger than half the zeros (a catch-up can be), or fsyncs slower
        than writing half of them (``append`` then raises the step).

        ``sync`` reserves before its write; the pipelined server's ``flush`` does not: its
        ``fsync_through``, in the committer's thread, writes the zeros just before its fdatasync
        (``_zeros_ahead``), so that a step of megabytes of zeros is not written in the event loop
        (with 1 MiB values, steps of 8-64 MiB stalled it for 0.1-0.8 s: bench/big_values.py).
        """
        need = self._log_end + count
        if not self._preallocate or need + self._preallocate // 2 <= self._allocated:
            return
        with self._zeros_lock:
            self._write_zeros(max(need, self._allocated) + self._preallocate)

    def _zeros_ahead(self) -> None:
        """``_reserve`` for ``fsync_through``, which may run in a worker thread while the owner appends.

        Safe beside the owner's writes: the owner writes records without the lock only below
        ``_allocated`` (a batch stays below what the marks claim, which is at most the length an fsync
        saw, zeros included, or it grows the file first under the lock), and these zeros go at or past
        ``_allocated`` and past every record written, under the lock."""
        if not self._preallocate or self._log_end + self._preallocate // 2 <= self._allocated:
            return
        with self._zeros_lock:
            self._write_zeros(max(self._log_end, self._allocated) + self._preallocate)

    def _write_zeros(self, target: int) -> bool:
        """Write zeros after the records and the zeros already there, up to byte ``target``; True if
        written, False (a warning logged, nothing preallocated) if the disk has no room for them.
        Called with ``_zeros_lock`` held."""
        # Zeros go after the records, never over them: after a preallocation that failed (a full disk),
        # records were written past the zeros (``_allocated`` < ``_log_end``), and writing zeros from
        # ``_allocated`` again would erase records already fsynced and acknowledged.
        start = max(self._allocated, self._log_end)
        assert self._log_fd is not None
        try:
            # A piece at a time: a write holds the file's inode lock, so the owner's next records (its
            # write of the same file) wait for at most one piece of the worker's zeros, not a step of
            # 16-64 MiB (0.1-0.4 s in the event loop with 1 MiB values: bench/big_values.py).
            written, size = 0, target - start
            while written < size:  # bounded: every pass writes at least one byte or raises
                n = os.pwrite(self._log_fd, _ZEROS[:min(size - written, len(_ZEROS))], start + written)
                if n <= 0:
                    raise OSError(errno.EIO, f"pwrite returned {n}")
                written += n
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise self._fail(f"preallocating {target - start} bytes of log {self._log_path}", exc) from exc
            if not self._preallocation_failing:  # (once until a preallocation succeeds again; the
                # batch that found the disk full tries twice: _reserve, then _grow_durably)
                log.warning("log %s: cannot preallocate %d bytes (%s); writing without", self._log_path,
                            target - start, exc)
            self._preallocation_failing = True
            try:
                os.ftruncate(self._log_fd, start)  # (the zeros written past it, if any; never a record)
            except OSError:
                pass  # the zeros stay; they are not records, and recovery reads past them
            self._allocated = start
            return False
        self._allocated = target
        self._preallocation_failing = False
        return True

    def _install_log(self, slot: int, records: Callable[[], Iterable[object]]) -> None:
        """Make the log ``log-<slot>.wal`` hold ``records()`` (atomically) and append to it from now on.

        The records are encoded and written a group at a time (``LOG_REWRITE_CHUNK_BYTES``), never joined
        into one buffer: the log above a snapshot of a million keys is tens of MB, and building it whole
        (the encoder's stream, the joined bytes and the bytes with the mark in front: three copies) put
        a spike of that size on the node's peak memory at every snapshot.
        """
        if self._compaction is not None:
            raise StorageError(f"a compaction of {self.path} to slot {self._compaction.slot} is under way")
        name = log_file_name(slot)
        marked_end = marked_size = 0

        def write(fd: int) -> None:
            nonlocal marked_end, marked_size
            # It is fsynced before it gets its name: a mark at its front may cover all of it. The mark
            # holds the file's length, known at the end: room for it first, the mark written last. Its
            # width depends on that length (wider from 4 GiB on): if the room was too small, write again.
            # With preallocation its zeros are written too, and the mark claims them ("A log cut short").
            zeros = self._preallocate if self._fsync_enabled else 0
            mark_room = len(_covering_mark(0, zeros, FENCE_BYTES)) if self._fsync_enabled else 0
            while True:  # at most twice: the second pass leaves the widest room
                room = FENCE_BYTES + mark_room  # the fence, then the mark
                os.lseek(fd, room, os.SEEK_SET)
                content = 0
                for chunk in _encoded_groups(records()):
                    self._write_all(fd, place_records(chunk, room + content, slot))
                    content += len(chunk)
                if not self._fsync_enabled:
                    os.lseek(fd, 0, os.SEEK_SET)
                    self._write_all(fd, _FENCE_NO_SYNC)
                    return
                mark = _covering_mark(content, zeros, FENCE_BYTES)
                if len(mark) == mark_room:
                    break
                os.ftruncate(fd, 0)
                mark_room = len(mark)
            if zeros:
                self._write_all(fd, bytes(zeros))
            os.lseek(fd, 0, os.SEEK_SET)
            self._write_all(fd, _FENCE + place_records(mark, FENCE_BYTES, slot))
            marked_end = room + content
            marked_size = marked_end + zeros

        self._write_file_atomically(name, write, "before_log_rename", "after_log_rename")
        self._switch_to_log(self.path / name, slot, marked_end, marked_size)

    def _switch_to_log(self, path: Path, slot: int, marked_end: int, marked_size: int) -> None:
        """Append to the log just renamed into place (``marked_end``, ``marked_size``: its covering mark's;
        0 with fsync off) from now on. A failure here breaks the Storage: the old log is superseded on
        disk, and records appended to it would be lost at the next open."""
        try:
            # With fsync off nothing this Storage wrote is durable, not even a rewritten log.
            self._open_log(path, durable=self._fsync_enabled, end=marked_end or None, marked_end=marked_end,
                           placed=slot, marked_size=marked_size)
        except StorageError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else OSError(errno.EIO, str(exc))
            raise self._fail(f"opening {path} after renaming it into place", cause) from exc
        self._log_kept = self._log_end

    def _delete_older_than(self, slot: int) -> None:
        """Delete snapshots and logs of slots below ``slot`` (superseded by the ones at ``slot``)."""
        removed = False
        for name in os.listdir(self.path):
            match = _SNAPSHOT_RE.match(name) or _LOG_RE.match(name)
            if match and int(match.group(1)) < slot:
                (self.path / name).unlink()
                removed = True
        if removed:
            self._sync_dir()

    def _check_usable(self) -> None:
        if self.failure is not None:
            raise DiskFailed(self.failure)
        if self._closed:
            raise StorageError(f"storage of {self.path} is closed")

    # ---- the interface -------------------------------------------------------------------------

    @property
    def log_bytes(self) -> int:
        """Bytes of the current log file that hold written records (its preallocated zeros not counted,
        nor a batch still buffered: one a full disk refused stays buffered, and is not in the file)."""
        return self._log_end

    @property
    def log_bytes_kept(self) -> int:
        """``log_bytes`` when the log was last rewritten (``compact_log``, ``write_snapshot``): what the
        compaction kept above the snapshot; 0 for a log this Storage only opened or appended to."""
        return self._log_kept

    @property
    def snapshot_slot(self) -> int:
        """Slot of the newest snapshot (0: none yet)."""
        return self._snapshot_slot

    @property
    def snapshot_bytes(self) -> int:
        """Bytes of the newest snapshot's data (0: none yet)."""
        return self._snapshot_bytes

    def read_snapshot(self) -> tuple[int, bytes] | None:
        """The newest snapshot as ``(slot, data)``, read from its file, or None if there is none.

        Snapshots live on disk only: a large state machine's snapshot is as big as the state itself,
        too much to keep twice in memory. ``DiskFailed`` if the Storage is broken.
        """
        if self.failure is not None:
            raise DiskFailed(self.failure)
        if self._snapshot_slot == 0:
            return None
        slot = self._snapshot_slot
        return slot, _read_snapshot(self.path / snapshot_file_name(slot), slot)

    @property
    def snapshot(self) -> tuple[int, bytes] | None:
        """The snapshot found at open as ``(slot, bytes)`` (read from its file), until ``release_snapshot``
        or a newer snapshot; None if there was none. A large state machine should stream it with
        ``open_snapshot`` instead: the bytes are as big as the state."""
        if self._found_snapshot is None:
            return None
        slot = self._found_snapshot[0]
        return slot, _read_snapshot(self.path / snapshot_file_name(slot), slot)

    def open_snapshot(self) -> tuple[int, io.BufferedReader, int] | None:
        """The snapshot found at open as ``(slot, file, length)``: ``file`` is open at its state machine
        bytes, ``length`` of them (checked at open; the caller closes it). For a restore that decodes
        from the file instead of holding all the bytes and everything decoded from them at once.
        None if there is no snapshot to restore (see ``snapshot``). ``DiskFailed`` if the Storage is broken."""
        if self.failure is not None:
            raise DiskFailed(self.failure)
        if self._found_snapshot is None:
            return None
        slot, length = self._found_snapshot
        try:
            file = open(self.path / snapshot_file_name(slot), "rb")
            file.seek(SNAPSHOT_HEADER.size)
        except OSError as exc:
            raise _io_error(f"cannot read snapshot {snapshot_file_name(slot)}", exc) from exc
        return slot, file, length

    def release_snapshot(self) -> None:
        """Forget the snapshot found at open (the caller has restored its state machine from it)."""
        self._found_snapshot = None

    def release_recovered(self) -> None:
        """Forget the values recovered at open (the caller's replica holds what it needs of them, in
        its own form): keeping them would keep every command of the log as it was read until the node
        stops. The promise, the snapshot slot and the configurations stay."""
        recovered = self.recovered
        self.recovered = DurableState(promised=recovered.promised, snapshot_slot=recovered.snapshot_slot,
                                      configs=recovered.configs)

    def append(self, records: Iterable[object]) -> None:
        """Encode ``records`` and buffer them; no record is written until ``flush`` or ``sync``.

        With preallocation, records that would reach past every length the log's marks claim first grow
        the file (zeros, then an fdatasync: see "A log cut short"); if that fdatasync fails, the Storage
        is broken and the batch's ``flush`` or ``sync`` raises ``DiskFailed``.

        Raises ``TypeError`` for something that is not a well-formed ``paxos.actions`` record (before
        buffering any of them), ``StorageError`` if the Storage is closed or broken.
        """
        self._check_usable()
        pending = self._pending
        placed = self._placed
        at = self._log_end + self._pending_bytes
        mark = b""
        mark_end = mark_size = 0
        if not pending and self._fsync_enabled:
            # A batch's first append: a sync mark goes in front if the synced end moved past the last
            # mark. fsync_through may move _synced_end and _synced_size on meanwhile: each value read is
            # a completed fsync's, so each claim holds; a stale one only claims less, and the next
            # batch's mark says the rest. Deciding here, not when the batch is written, fixes every
            # record's offset now, so that its place's mask goes in with its crc32.
            mark_size = self._synced_size
            mark_end = self._synced_end
            if mark_end > self._marked_end:
                mark = _encode_mark(mark_end, mark_size, None if placed is None else at, placed or 0)
        if type(records) is not list:
            records = list(records)  # (encoded twice when a growth's mark takes the place of this one)
        data = encode_records(records, None if placed is None else at + len(mark), placed or 0)
        claimed = max(self._marked_size, mark_size if mark else 0)
        if data and self._preallocate and at + len(mark) + len(data) >= claimed:
            # These records would reach what no mark claims yet: grow the file durably first, and put a
            # mark claiming the new length in front of them (see "A log cut short").
            try:
                grown = self._grow_durably(at + len(mark) + len(data))
            except DiskFailed:
                grown = False  # (recorded in ``failure``: the batch's flush, sync or fsync raises it)
            if grown and self._preallocate < PREALLOCATE_STEP_MAX:
                if len(data) < self._preallocate // 2:
                    # A batch smaller than half the zeros ahead outran them: the fsyncs that make the next
                    # step durable take longer than writing half a step (a slow disk under load; gray-failure
                    # QA: an fdatasync of 1-8 s in the node's event loop each time). Keep twice as many
                    # zeros ahead from now on, so that the step gives the fsyncs time.
                    step, why = 2 * self._preallocate, "records outran the fsyncs that make its growth durable"
                else:
                    # A batch as large as half the zeros ahead (large values: 1 MiB puts, a catch-up):
                    # with a step that size, every such batch grew the file itself, each an fdatasync in
                    # the event loop, stalling it past an election timeout when the disk was busy (3-4
                    # leader changes in 30 s of 1 MiB puts, bench/big_values.py). Keep at least twice the
                    # batch ahead from now on: the zeros then go out half a step early (``_reserve``) and
                    # the group commit's fsync, in its thread, makes them durable before records reach them.
                    step, why = 1 << (2 * len(data) - 1).bit_length(), f"a batch of {len(data)} bytes"
                self._preallocate = min(step, PREALLOCATE_STEP_MAX)
                log.info("log %s: %s; keeping %d KiB of zeros ahead from now on", self._log_path, why,
                         self._preallocate >> 10)
            if grown:
                mark_end, mark_size = self._synced_end, self._synced_size
                claim = _encode_mark(mark_end, mark_size, None if placed is None else at, placed or 0)
                if len(claim) != len(mark):
                    data = encode_records(records, None if placed is None else at + len(claim), placed or 0)
                mark = claim
        if data:
            if mark:
                data = mark + data
                self._marked_end = mark_end
                if mark_size > self._marked_size:
                    self._marked_size = mark_size
            pending.append(data)
            self._pending_bytes += len(data)
            if self._compaction is not None:
                self._compaction.tail.extend(records)  # (the new log gets them too: finish_compaction)
                self._compaction.tail_bytes += len(data)

    def _grow_durably(self, end: int) -> bool:
        """Before records are appended up to byte ``end`` past every length a mark claims: make the file
        longer than ``end`` (zeros to ``end`` + ``preallocate``, unless it is already) and fdatasync it,
        so that the mark ``append`` puts in front of them may claim that length. False (nothing claimed)
        if the disk has no room for the zeros. Owner thread; it may overlap ``fsync_through``'s
        fdatasync, and both only raise ``_synced_end`` and ``_synced_size``."""
        with self._zeros_lock:
            if self._allocated <= end and not self._write_zeros(end + self._preallocate):
                return False
        written_end = self._log_end
        self._fdatasync_log()  # the file's length (and every record written) durable: _synced_size
        if written_end > self._synced_end:
            self._synced_end = written_end
        return True

    def sync(self) -> None:
        """Write everything appended since the last sync in one write, then fdatasync once.

        When this returns, every record appended so far is durable (with ``fsync=False`` it is only
        written). Raises ``StorageFull`` if the write fails with ENOSPC: the log is cut back to where
        this batch began and the batch stays buffered for the next ``sync``. Raises ``DiskFailed`` if
        the fdatasync fails (any errno, ENOSPC included) or the write fails otherwise: the Storage is
        then broken for good (restart and recover).
        """
        self._check_usable()
        self._write_pending(reserve=True)
        if self._fsync_enabled and self._synced_end < self._log_end:
            self._fdatasync_log()
            self._synced_end = self._log_end

    def flush(self) -> int:
        """Write everything appended so far to the log in one write (no fsync); return the log's end.

        The pipelined server calls this from its driver and ``fsync_through(end)`` from a worker
        thread, so that it can go on appending while the disk syncs. Raises ``StorageFull`` on ENOSPC
        (the log is cut back to where this batch began, the batch stays buffered) and ``DiskFailed``
        on any other write error (the Storage is then broken).
        """
        self._check_usable()
        self._write_pending(reserve=False)
        return self._log_end

    def _write_pending(self, *, reserve: bool) -> None:
        """Write the buffered batch at the log's end (owner thread only; see ``sync``/``flush``), with
        the zeros ahead first if ``reserve``."""
        assert self._log_fd is not None
        if not self._pending:
            return
        start = self._log_end
        # (the batch's mark, if any, and every record's place were fixed by append)
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        if reserve:
            self._reserve(len(data))
        # Past the zeros (a full disk refused them), or cut back after a failure: not while
        # fsync_through writes zeros there (``_zeros_ahead``). ``_allocated`` only grows meanwhile, so
        # a stale value only takes the lock.
        lock = self._zeros_lock
        locked = start + len(data) > self._allocated and lock.acquire()
        try:
            try:
                failpoints.hit("write_log")
                self._write_all(self._log_fd, data)
            except OSError as exc:
                locked = locked or lock.acquire()
                self._cut_back(start, len(data), exc)
            self._log_end = start + len(data)
        finally:
            if locked:
                lock.release()
        self._pending.clear()
        self._pending_bytes = 0

    def _fdatasync_log(self) -> None:
        """fdatasync the current log; any failure breaks the Storage (``DiskFailed``). Touches only the
        descriptor, ``failure`` and ``_synced_size`` (``fsync_through`` runs it in a worker thread)."""
        fd = self._log_fd
        assert fd is not None
        # What was written before the fdatasync began, zeros ahead included, is durable once it returns
        # (fdatasync commits a length that grew). Both only grow while a worker syncs: the owner's
        # cuts keep the file's length (_cut_back), and write or preallocate only after the file has grown.
        size = self._allocated if self._allocated > self._log_end else self._log_end
        try:
            failpoints.hit("before_fsync")
            failpoints.hit("fsync")
            failpoints.hit("fsync_log")
            self._fdatasync(fd)
            failpoints.hit("after_fsync")
        except OSError as exc:
            raise self._fail(f"fdatasync of log {self._log_path}", exc) from exc
        if size > self._synced_size:
            self._synced_size = size

    def fsync_through(self, end: int) -> None:
        """Make the log durable at least up to byte ``end`` (one fdatasync; no-op with fsync off or if
        it is durable that far already).

        May run in one worker thread at a time while the owner thread calls ``append``, ``flush`` and
        ``log_bytes`` (and while ``write_snapshot_file`` runs in another worker thread): it touches only
        the log's file descriptor, ``_synced_end``, ``_synced_size`` and ``failure``, and the zeros ahead
        under ``_zeros_lock`` (``_zeros_ahead``: ``_allocated``), and reads ``_log_path`` for the
        message. ``sync``, ``write_snapshot``, ``compact_log`` and ``close`` replace or close the log
        and must not overlap it. Any fdatasync error (ENOSPC included) breaks the Storage and raises
        ``DiskFailed``: what was written since the last good fsync may or may not be on disk (nothing
        of it was acknowledged), so the node must stop voting and recover. ``DiskFailed`` too if the
        Storage is broken already; ``StorageError`` if it is closed.
        """
        if self.failure is not None:
            raise DiskFailed(self.failure)
        if self._log_fd is None:
            raise StorageError(f"storage of {self.path} is closed")
        if not self._fsync_enabled or self._synced_end >= end:
            return
        self._zeros_ahead()  # (the zeros this fdatasync makes durable, for the next batches: see _reserve)
        self._fdatasync_log()
        if end > self._synced_end:
            self._synced_end = end

    def _cut_back(self, start: int, length: int, exc: OSError) -> None:
        """After a failed write of a batch at ``start``: on ENOSPC truncate the log there and raise
        ``StorageFull``; on any other error break the Storage and raise ``DiskFailed``."""
        where = f"appending {length} bytes to log {self._log_path} at byte offset {start}"
        if exc.errno != errno.ENOSPC:
            raise self._fail(where, exc) from exc
        assert self._log_fd is not None
        try:
            # No fsync of the cut: it would likely fail like the write did, and it is not needed. If
            # the cut bytes come back after a crash they are whole records nobody was told about (a
            # legal acceptor state, like a lost reply) or a torn tail, which open cuts off. The next
            # successful sync's fsync makes the cut durable along with the retried batch. The file keeps
            # its length (zeros where the batch was: a hole, no space needed): a mark may claim that
            # length was durable, and a log shorter than a claim is refused at open ("A log cut short").
            length_before = os.fstat(self._log_fd).st_size
            os.ftruncate(self._log_fd, start)
            if length_before > start:
                os.ftruncate(self._log_fd, length_before)
            os.lseek(self._log_fd, start, os.SEEK_SET)  # the retry writes the batch here again
        except OSError as cut_exc:
            raise self._fail(f"{where} (no space left) and then cutting the log back", cut_exc) from exc
        self._log_end = start
        self._allocated = max(start, length_before)
        raise StorageFull(
            f"{where}: no space left on device; the log was cut back to {start} bytes (everything "
            f"synced before is intact); the batch was not written"
        ) from exc

    def write_snapshot(self, slot: int, data: bytes, state: DurableState) -> None:
        """Store ``data`` as the snapshot through ``slot`` and compact the log to ``state`` above it.

        ``state`` is what storage must hold now (``replica.durable_state()``); its ``snapshot_slot``
        must not be above ``slot`` (else slots between would be lost; ``ValueError``). ``slot`` must
        not be below the current snapshot slot (``ValueError``). Steps and crash safety: see the module
        docstring. Raises ``StorageFull`` if a write fails with ENOSPC (the Storage stays usable),
        ``DiskFailed`` if an fsync fails or a write fails otherwise (the Storage is broken),
        ``StorageError`` for other I/O errors; the directory then still recovers to the old or the new
        snapshot with a matching log.
        """
        self._check_usable()
        if slot < self.snapshot_slot:
            raise ValueError(f"snapshot slot {slot} is below the current snapshot slot {self.snapshot_slot}")
        if state.snapshot_slot > slot:
            raise ValueError(f"state is compacted through slot {state.snapshot_slot}, above the snapshot {slot}")
        # Step 1: the old log alone must be complete, so "new snapshot + old log" is a valid state.
        self.sync()
        # Step 2, then steps 3 and 4.
        self.write_snapshot_file(slot, data)
        self.compact_log(slot, state)

    def write_snapshot_file(self, slot: int, pieces: bytes | bytearray | memoryview | Iterable[bytes]) -> None:
        """Step 2 of ``write_snapshot`` on its own, streamed: write the snapshot through ``slot`` from
        ``pieces`` (bytes, or an iterable of bytes pieces, e.g. ``StateMachine.snapshot_chunks()``),
        fsync, rename into place, fsync the directory.

        For a server that keeps working while a large snapshot is written: it may run in a worker
        thread while the owner appends, flushes and fsyncs the log (it touches only snapshot files).
        Until ``compact_log(slot, state)`` follows, recovery uses this snapshot with the older log,
        which is correct (see the module docstring). Raises ``ValueError`` if ``slot`` is below the
        current snapshot slot; ``StorageFull`` (usable), ``DiskFailed`` (broken) or ``StorageError`` on
        I/O errors, as ``write_snapshot``.
        """
        self._check_usable()
        if slot < self.snapshot_slot:
            raise ValueError(f"snapshot slot {slot} is below the current snapshot slot {self.snapshot_slot}")
        if isinstance(pieces, (bytes, bytearray, memoryview)):
            pieces = (bytes(pieces),)

        def write(fd: int) -> None:
            # The header holds the length and CRC of what follows: write a placeholder, stream the
            # pieces, then fill the header in.
            self._write_all(fd, bytes(SNAPSHOT_HEADER.size))
            length, crc = 0, 0
            for piece in pieces:
                self._write_all(fd, piece)
                length += len(piece)
                crc = zlib.crc32(piece, crc)
            header = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, slot, length, crc)
            if os.pwrite(fd, header, 0) != len(header):
                raise OSError(errno.EIO, "short write of the snapshot header")
            written.append(length)

        written: list[int] = []
        self._write_file_atomically(snapshot_file_name(slot), write, "before_snapshot_rename",
                                    "after_snapshot_rename")
        self._found_snapshot = None
        self._snapshot_slot = slot
        self._snapshot_bytes = written[-1]

    def compact_log(self, slot: int, state: DurableState) -> None:
        """Steps 3 and 4 of ``write_snapshot``, after ``write_snapshot_file(slot, ...)``: rewrite the log
        as ``state`` above ``slot`` and delete older snapshots and logs.

        The caller must not append, flush or fsync the log concurrently, and must have made durable
        everything it appended (``state`` is what storage must hold now). Errors as ``write_snapshot``.
        """
        self._check_usable()
        if slot != self.snapshot_slot:
            raise ValueError(f"compact_log({slot}) but the newest snapshot is at slot {self.snapshot_slot}")
        if state.snapshot_slot > slot:
            raise ValueError(f"state is compacted through slot {state.snapshot_slot}, above the snapshot {slot}")
        self.sync()
        compacted = DurableState.replay(state.records(), snapshot_slot=slot)
        self._install_log(slot, compacted.records)
        try:
            self._delete_older_than(slot)
        except OSError as exc:
            raise _io_error(f"cannot delete old snapshots and logs in {self.path}", exc) from exc

    # ---- compaction in two steps -----------------------------------------------------------------
    #
    # ``compact_log`` rewrites the log while its caller waits, and nothing may be appended meanwhile: the
    # server's driver waited, so the node neither sent nor answered heartbeats for as long (with 1 MiB
    # values the log above a snapshot was 25-540 MB, 0.1-1.5 s of rewrite, and each snapshot cost a leader
    # change: bench/big_values.py). In two steps the owner goes on appending while a worker thread writes
    # the bulk to the new file; what was appended meanwhile is added at the end, in the owner's short
    # second step, and the file is put in place as ``compact_log`` would.

    def begin_compaction(self, slot: int, state: DurableState) -> None:
        """Owner: start compacting the log to ``state`` above ``slot`` (the newest snapshot's slot, as for
        ``compact_log``; ``state`` holds everything appended so far). From now on every record appended
        is also kept for the new log. Then ``write_compaction`` (a worker thread), then
        ``finish_compaction`` (the owner); ``abandon_compaction`` if either fails."""
        self._check_usable()
        if slot != self.snapshot_slot:
            raise ValueError(f"begin_compaction({slot}) but the newest snapshot is at slot {self.snapshot_slot}")
        if state.snapshot_slot > slot:
            raise ValueError(f"state is compacted through slot {state.snapshot_slot}, above the snapshot {slot}")
        if self._compaction is not None:
            raise StorageError(f"a compaction of {self.path} to slot {self._compaction.slot} is under way")
        self._compaction = _Compaction(slot, state)

    def write_compaction(self) -> None:
        """Worker thread, while the owner appends, flushes and fsyncs the log: write what the new log holds
        above the snapshot to its temp file, after room for its fence and covering mark, and fdatasync it.
        It touches only that file (and ``failure``). Raises as ``compact_log`` (nothing is in place yet:
        ``abandon_compaction`` deletes the file)."""
        compaction = self._compaction
        if compaction is None or compaction.state is None:
            raise StorageError("write_compaction without begin_compaction")
        records = DurableState.replay(compaction.state.records(), snapshot_slot=compaction.slot).records
        compaction.state = None
        fd, tmp = self._create_tmp(log_file_name(compaction.slot))
        compaction.fd, compaction.tmp = fd, tmp
        compaction.zeros = self._preallocate if self._fsync_enabled else 0
        # (the covering mark's width: 28 bytes with zeros, else 15 below 4 GiB; finish_compaction checks)
        compaction.room = FENCE_BYTES + (len(_covering_mark(0, compaction.zeros, FENCE_BYTES))
                                         if self._fsync_enabled else 0)
        try:
            os.lseek(fd, compaction.room, os.SEEK_SET)
            for chunk in _encoded_groups(records()):
                self._write_all(fd, place_records(chunk, compaction.room + compaction.content, compaction.slot))
                compaction.content += len(chunk)
        except OSError as exc:
            raise self._write_failed(f"cannot write {tmp}", exc) from exc
        if self._fsync_enabled:  # (the bulk now, so that the owner's fsync in finish_compaction is short)
            self._fsync(fd, f"fdatasync of {tmp}", "fsync_file", self._fdatasync)
        # Then what was appended meanwhile, a few rounds, so that what is left for the owner's step is
        # what one round's write took (with 1 MiB values the tail after the bulk was 10-60 MB: 0.1-0.3 s
        # of encoding and writing in the event loop). The owner extends the tail with whole appends
        # (one list.extend each), so a prefix taken here is whole appends too.
        written_bytes = 0
        for _ in range(COMPACTION_TAIL_ROUNDS):
            taken, taken_bytes = len(compaction.tail), compaction.tail_bytes  # (a stale count: one round less)
            if (taken - compaction.tail_written < COMPACTION_TAIL_RECORDS_MIN
                    and taken_bytes - written_bytes < COMPACTION_TAIL_BYTES_MIN):
                break
            data = encode_records(compaction.tail[compaction.tail_written:taken],
                                  compaction.room + compaction.content, compaction.slot)
            try:
                self._write_all(fd, data)
            except OSError as exc:
                raise self._write_failed(f"cannot write {tmp}", exc) from exc
            compaction.content += len(data)
            compaction.tail_written, written_bytes = taken, taken_bytes
            if self._fsync_enabled:
                self._fsync(fd, f"fdatasync of {tmp}", "fsync_file", self._fdatasync)
        if compaction.zeros:
            # The zeros ahead, a whole step of them, here rather than in the owner's step: the records
            # left for finish_compaction go over their start (QA: with 1 MiB of zeros and a step grown to
            # 32 MiB, the first batch after the switch grew the log in the event loop).
            try:
                self._write_zeros_at_offset(fd, compaction.zeros)
            except OSError as exc:
                raise self._write_failed(f"cannot write {tmp}", exc) from exc
            if self._fsync_enabled:
                self._fsync(fd, f"fdatasync of {tmp}", "fsync_file", self._fdatasync)

    def finish_compaction(self) -> bool:
        """Owner, with no ``fsync_through`` running and nothing staged (as for ``compact_log``): add the
        records appended since ``begin_compaction`` to the new log, write its zeros, fence and covering
        mark, fsync it, put it in place and append to it from now on; then ``delete_superseded`` (the
        older snapshots and logs, in a worker thread). Returns False (nothing changed, the compaction
        abandoned) if the covering mark would not fit its room (a log past 4 GiB): the caller compacts
        with ``compact_log`` then. Raises as ``compact_log``."""
        compaction = self._compaction
        if compaction is None or compaction.fd is None or compaction.tmp is None:
            raise StorageError("finish_compaction without write_compaction")
        try:
            self._check_usable()
            self.sync()  # (the old log stays complete until the new one is in place)
            fd, tmp, slot = compaction.fd, compaction.tmp, compaction.slot
            at = compaction.room + compaction.content
            rest = compaction.tail[compaction.tail_written:]
            data = encode_records(rest, at, slot) if rest else b""
            end = at + len(data)
            # The records go over the start of the zeros write_compaction wrote after its own; more only
            # if they reach past them (the covering mark's form needs zeros after the records).
            zeros_end = at + compaction.zeros
            more_zeros = REWRITE_ZEROS_MAX if compaction.zeros and end >= zeros_end else 0
            zeros = zeros_end - end if end < zeros_end else more_zeros
            mark = _covering_mark(end - compaction.room, zeros, FENCE_BYTES)
            if self._fsync_enabled and FENCE_BYTES + len(mark) != compaction.room:
                self.abandon_compaction()
                return False
            try:
                os.lseek(fd, at, os.SEEK_SET)
                self._write_all(fd, data)
                self._write_zeros_at_offset(fd, more_zeros)
                os.lseek(fd, 0, os.SEEK_SET)
                if self._fsync_enabled:
                    self._write_all(fd, _FENCE + place_records(mark, FENCE_BYTES, slot))
                else:
                    self._write_all(fd, _FENCE_NO_SYNC)
            except OSError as exc:
                raise self._write_failed(f"cannot write {tmp}", exc) from exc
            if self._fsync_enabled:
                # fsync, not fdatasync: the new file's metadata must be durable before the rename.
                self._fsync(fd, f"fsync of {tmp}", "fsync_file", os.fsync)
            os.close(fd)
            compaction.fd = None
            self._put_in_place(tmp, self.path / log_file_name(slot), "before_log_rename", "after_log_rename")
        except BaseException:
            self.abandon_compaction()
            raise
        self._compaction = None
        self._switch_to_log(self.path / log_file_name(slot), slot, end if self._fsync_enabled else 0,
                            end + zeros if self._fsync_enabled else 0)
        return True

    def delete_superseded(self) -> None:
        """Delete the snapshots and logs below the newest snapshot (after ``finish_compaction``: unlinking
        a snapshot and a log of hundreds of MB took 0.1-0.3 s, so the server does it in a worker thread).
        It touches only those files and the directory, so it may run beside ``append``, ``flush`` and
        ``fsync_through``; not beside another compaction. Raises ``StorageError`` if one cannot be
        deleted (what is left is deleted at the next compaction or open)."""
        try:
            self._delete_older_than(self.snapshot_slot)
        except OSError as exc:
            raise _io_error(f"cannot delete old snapshots and logs in {self.path}", exc) from exc

    def abandon_compaction(self) -> None:
        """Forget a compaction under way (no-op if none): close and delete its temp file. The log stays
        as it is (appends went on to it); the next snapshot compacts it."""
        compaction, self._compaction = self._compaction, None
        if compaction is None:
            return
        if compaction.fd is not None:
            try:
                os.close(compaction.fd)
            except OSError:
                pass
        if compaction.tmp is not None:
            try:
                compaction.tmp.unlink(missing_ok=True)
            except OSError:
                pass  # on open, a leftover .tmp is deleted anyway

    def crash_drop_unsynced(self, rng: random.Random | None = None, page_bytes: int = 4096) -> None:
        """Test seam: act like a power cut, then close; reopen the directory to see what survived.
        Buffered records are dropped.

        Without ``rng``: the log is cut back to its last fsync: the bytes written after it are gone,
        and the file has the length it had at that fsync (zeros past its records). With a
        ``random.Random``: unsynced pages are written back in any order,
        so every ``page_bytes`` page of the file (aligned to file offsets) that holds bytes of the
        unsynced region ``[synced end, file size)`` independently keeps those bytes as written or has
        them zeroed, each with probability 1/2; the file size is kept (the size may reach the disk
        before the data).
        """
        self._check_usable()
        assert self._log_fd is not None
        if page_bytes < 1:
            raise ValueError(f"page_bytes must be >= 1, got {page_bytes}")
        if rng is None:
            # What the last fsync made durable stays: the records through _synced_end and the length
            # the file had (the zeros ahead); bytes written since over that length go back to zeros.
            size = os.fstat(self._log_fd).st_size
            keep = max(self._synced_end, self._synced_size)
            os.ftruncate(self._log_fd, self._synced_end)
            if min(size, keep) > self._synced_end:
                os.ftruncate(self._log_fd, min(size, keep))
        else:
            size = os.fstat(self._log_fd).st_size
            page = self._synced_end - self._synced_end % page_bytes
            while page < size:  # bounded: one pass per page of the unsynced region
                low, high = max(page, self._synced_end), min(page + page_bytes, size)
                if rng.random() < 0.5:
                    os.pwrite(self._log_fd, bytes(high - low), low)
                page += page_bytes
        self._pending.clear()
        self._pending_bytes = 0
        self.close()

    def close(self) -> None:
        """Release the files and the directory lock. Idempotent. Does not sync: records appended since
        the last ``sync`` are discarded (they were never durable, so nobody may rely on them)."""
        if self._closed:
            return
        self._closed = True
        self.abandon_compaction()
        self._pending.clear()
        self._pending_bytes = 0
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Storage({str(self.path)!r}, snapshot_slot={self.snapshot_slot}, log_bytes={self.log_bytes}, "
            f"closed={self._closed})"
        )
