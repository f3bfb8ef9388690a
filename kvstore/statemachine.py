"""The replicated dictionary: a deterministic state machine fed with decided commands.

Theory of operation
-------------------
Every replica applies the same decided commands (``kvstore.commands``) in the same slot order, so
``apply`` must be a pure function of (state, command bytes): no clock, no randomness, no I/O, no
iteration over anything whose order could differ between replicas (hashicorp/raft ``fsm.go`` states
the same contract). Same commands in, same entries, same results, same ``state_hash`` out.

State
  ``_entries``: ``key -> packed entry``, one ``bytes`` object per key: a 17-byte head (the value's
  type, 0 for bytes and 1 for str; the version; the mod_revision; ``_ENTRY_HEAD``), the entry's
  8-byte digest for ``state_hash`` (BLAKE2b of the key, the head and the value), then the value
  (UTF-8 for a str). A node must hold a million keys in a few hundred MiB: a tuple
  ``(value, version, mod_revision)`` costs the value object, the tuple and an int object per key
  (about 230 bytes with a 100-byte value), the packed form one object (160 bytes). Readers unpack on
  the way out (``get``, ``range``), which costs a slice and, for str, a decode. Keeping the digest
  saves hashing the replaced entry again on every write; its 8 bytes usually fit in the allocator's
  16-byte rounding (with 100-byte values they cost no memory at all).

  ``revision``: starts at 0 and grows by exactly one for every *executed* write command: put, delete
  and cas alike, including a cas that did not swap and a delete that found nothing. So each executed
  write command maps to one revision, which is the ``rev`` in its result. A put (or a successful cas)
  sets the key's ``mod_revision`` to that revision and its ``version`` to one more than before (1 for
  a new key; a deleted and recreated key starts again at 1). Commands that are not executed (a
  malformed command, a duplicate, a stale retry) leave the revision alone.

Exactly-once (the dedup table)
  A write carries ``(client_id, request_id, ack_below)``. For each client the table remembers the
  results of its requests at or above the highest ``ack_below`` seen (the client's *floor*): the
  client promised that everything below was answered, so those results are dropped.

  * A command whose ``(client_id, request_id)`` is remembered returns the first result again and
    changes no entry and no revision. This is what makes a client's retry safe after a leader change.
    If the remembered one was of another kind (a put, a delete, a cas), it is not a retry but a
    client id two clients share: it gets an error and changes nothing. (One of the same kind cannot
    be told from a retry; the clients draw a new id in a forked or unpickled copy.)
  * A command with ``request_id`` below the client's floor is a retry of something already answered:
    it gets ``{"error": "stale request"}`` and changes nothing (not even the table's LRU order).
  * The table is bounded. At most ``CLIENTS_MAX`` clients: when a new client would exceed it, the
    least recently used client (the one whose last command is oldest, tracked in command order and
    recorded as the revision at that command) is forgotten. At most ``RESULTS_MAX`` results in all:
    beyond, least recently used clients are forgotten until the table is under it again. At most
    ``RESULTS_PER_CLIENT_MAX`` results per client: when exceeded, the lowest request id is forgotten
    *and the client's floor is raised above it*, so a late retry of that request is answered "stale
    request" instead of being executed twice. A forgotten client loses that protection: a retry from it
    after eviction executes again, which is the price of a bounded table. Clients retry for seconds and
    eviction takes 10,000 newer clients, which short-lived clients (a ``kv`` command each) can bring in
    about a second (QA). So a forgotten client is refused from then on, once the cluster switched that on:
  * Client expiry (``expiry_on``; the feature command ``client-expiry`` switches it on, at one slot for
    every replica: ``kvstore.commands``). A client id made by ``frames.new_client_id`` carries a stamp
    (when it was made, in milliseconds). When a stamped client is forgotten, ``horizon`` becomes at least
    its stamp (the feature command starts it at the leader's clock, covering the clients forgotten
    before; or at 0 in a cluster that cannot have forgotten a client yet). A write of a client not in
    the table whose stamp is at or below ``horizon`` may be a retry
    of a forgotten client's write: it gets ``{"error": "expired client", "horizon": h}`` and changes
    nothing. A client that never sent that write before may draw a new id stamped above ``h`` and send
    it again (a client whose first write is refused so: its clock is behind, or it was idle and
    forgotten); one that did send it before cannot know whether it was applied, and says so. Ids
    without a stamp (older clients') are never refused, and not protected once forgotten.
  * The cluster's clock (``log_time``): the feature command's stamp, then each clock command's (the
    leader proposes one before a write of a client new to it when the last is a second old). A client
    not in the table stamped more than ``STAMP_AHEAD_MS`` above it, and more than ``RENEW_ROOM_MS``
    above the horizon, is refused too (``expired``, nothing changes): one stamp far ahead, once
    forgotten, would move the horizon there for good (QA: a forged 2**62 - 1). So the horizon stays
    within ``STAMP_AHEAD_MS`` of the cluster's clock, and moves beyond by ``RENEW_ROOM_MS`` per 10,000
    clients at most. Checked here, as every replica applies the write, not by the leader on arrival: a
    write that arrived before the switch applied, and was decided after it, went unchecked (QA).
  * The switch: the clients the table took while expiry was off were not checked. Those stamped more
    than ``STAMP_AHEAD_MS`` above the switch are forgotten and *banned* (``_banned``): every later write
    under their ids is refused, even once the clock has caught up with their stamps (QA: a client 25 s
    ahead, forgotten at the switch, had its late retry applied a second time 17 s later).

  Remembered results are stored compactly as ``(kind, rev, extra)`` tuples and rebuilt into fresh
  dicts for every caller, so no caller can change the table by mutating a result.

Key order
  ``_index`` (a ``_SortedKeys``) holds every key of ``_entries`` in sorted order, maintained on each
  insert and delete of a key (an update of an existing key does not touch it). It costs one pointer
  per key plus a bisect and a short memmove per new or deleted key, and it spares every ordered reader
  (snapshots, ``state_hash``, ``range``, prefix deletes) a sort of all keys: ``sorted()`` of a million
  keys holds the GIL for most of a second, longer than an election timeout.

Snapshots (``snapshot``/``freeze``/``restore``) hold the format version, the revision, every entry
in key order (as its packed bytes: nothing is unpacked or re-encoded on the way out) and the dedup
table in LRU order, so a restored replica answers retries exactly as the original.

Snapshots without stopping writes (copy-on-write)
  ``freeze()`` returns a ``FrozenState``: the state as of that moment, which later writes do not change,
  so a server goes on applying while it writes a big snapshot piece by piece. Freezing copies the list
  of the key index's blocks (one pointer per thousand keys: the index copies a block the view holds
  before changing it) and the dedup table; the entries dict is shared. Until the view is
  closed, a write saves a key's packed entry as it was at the freeze (in the view's ``saved`` journal)
  before the first change of that key, and the view reads ``saved`` before the live dict. A prefix
  delete of every key replaces the dict instead of clearing it: the view keeps the old one, which no
  write touches any more, and its journal is complete (later writes no longer journal for it).

The state hash covers the revision and the entries (not the dedup table), so it can be compared with
a model dictionary in tests and between replicas in ``status``.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import math
import operator
import struct
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Iterator
from heapq import heappop, heappush
from typing import Any, BinaryIO, NamedTuple

import cbor2

from paxos.membership import is_change

from .commands import (
    CLIENT_ID_BYTES_MAX,
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    Command,
    CommandError,
    decode_clock,
    decode_command,
    decode_feature,
)
from .frames import CLIENT_ID_STAMPED_BYTES, RENEW_ROOM_MS, STAMP_AHEAD_MS, client_id_stamp
from .wire import FEATURE_CLIENT_EXPIRY

CLIENTS_MAX = 10_000
"""Clients remembered in the dedup table at most; the least recently used one is evicted beyond."""
RESULTS_PER_CLIENT_MAX = 4096
"""Results remembered per client at most; the lowest request id is dropped beyond."""
RESULTS_MAX = 262_144
"""Results remembered for all clients together at most; least recently used clients are evicted beyond
(without it, 10,000 clients that never acknowledge could make the table hold 41 million results)."""
SNAPSHOT_FORMAT = 3
"""Version of the snapshot layout written by ``snapshot``. ``restore`` reads it and format 1 (each entry
as four fields: key, value, version, mod_revision), which servers before it wrote."""
SNAPSHOT_FORMATS_READ = (1, 2, 3)
_STATE_HASH_VERSION = 1  # part of what state_hash digests; independent of the snapshot layout

Value = str | bytes

# Kinds of remembered results: (kind, rev, extra). extra is 0 for put, the number of deleted keys for
# delete, 1 or 0 (swapped or not) for cas.
_PUT = 0
_DELETE = 1
_CAS = 2

STALE_REQUEST = "stale request"
EXPIRED_CLIENT = "expired client"
_KIND_OF_OP = {"put": _PUT, "delete": _DELETE, "cas": _CAS}
_OP_OF_KIND = {kind: op for op, kind in _KIND_OF_OP.items()}

SNAPSHOT_ENTRIES_PER_CHUNK = 20_000
# ... and a piece of entries holds about this many bytes at most (one entry at least): with 1 MiB values,
# 2,048 entries made a piece of 2 GB encoded at once in the node's event loop (a stall longer than an
# election timeout, and a leader change, at each snapshot: see kvstore.snapshots)
SNAPSHOT_BYTES_PER_CHUNK = 1 << 20
"""Default entries per ``snapshot_chunks`` piece: about 2.5 MB and a few ms of CPU each."""


def _array_header(length: int) -> bytes:
    """The CBOR head of a definite-length array (major type 4) of ``length`` items, minimal encoding."""
    if length < 24:
        return bytes((0x80 | length,))
    if length < 0x100:
        return bytes((0x98, length))
    if length < 0x10000:
        return b"\x99" + length.to_bytes(2, "big")
    if length < 0x100000000:
        return b"\x9a" + length.to_bytes(4, "big")
    return b"\x9b" + length.to_bytes(8, "big")


def _array_items(items: list[Any]) -> bytes:
    """The CBOR encoding of the items of ``items`` without the array head (one ``cbor2.dumps``).

    cbor2 encodes each item independently of its neighbours (no value sharing or string references
    by default), so concatenating these pieces under a head written by ``_array_header`` gives exactly
    the bytes ``cbor2.dumps`` would give for the whole array.
    """
    encoded = cbor2.dumps(items)
    head = _array_header(len(items))
    if not encoded.startswith(head):  # cbor2 changed its array encoding: refuse to write garbage
        raise AssertionError(f"unexpected CBOR array head {encoded[:9]!r} for {len(items)} items")
    return encoded[len(head):]


def _batches(blocks: list[list[str]], size: int) -> Iterator[list[str]]:
    """The keys of ``blocks`` in order, regrouped into lists of ``size`` (the last one shorter)."""
    pending: list[str] = []
    for block in blocks:
        pending += block
        while len(pending) >= size:
            yield pending[:size]
            del pending[:size]
    if pending:
        yield pending


class _SortedKeys:
    """The keys of the dictionary in sorted order, as a list of sorted blocks (like sortedcontainers).

    Blocks hold ``_LOAD`` to ``2 * _LOAD`` keys (fewer only after deletes, and a block below
    ``_LOAD // 4`` is merged with a neighbour), ``_maxes[i]`` is the last key of ``_blocks[i]``. Adding or
    removing a key is a bisect over the maxes plus a bisect and a memmove inside one block; iteration
    walks the blocks. Memory: about one pointer per key.

    Frozen views (``share``) hold the block lists themselves, not copies: until ``unshare``, a block
    that a view holds is copied before its first change (copy-on-write), so freezing costs one pointer
    per block instead of one per key (a million keys: 8 MB and ~20 ms of increfs, which touched every
    key object, at each snapshot, and as much again to free them).
    """

    __slots__ = ("_blocks", "_maxes", "_shared")
    _LOAD = 1000

    def __init__(self) -> None:
        self._blocks: list[list[str]] = []
        self._maxes: list[str] = []
        # id -> block, for the blocks of _blocks that frozen views hold too. Holding the block keeps
        # its id from being reused by a new list while it is here.
        self._shared: dict[int, list[str]] = {}

    @classmethod
    def from_sorted(cls, keys: list[str]) -> _SortedKeys:
        """An index of ``keys``, which must be strictly increasing already (not checked)."""
        index = cls()
        load = cls._LOAD
        index._blocks = [keys[i:i + load] for i in range(0, len(keys), load)]
        index._maxes = [block[-1] for block in index._blocks]
        return index

    def add(self, key: str) -> None:
        """Insert ``key``, which must not be present."""
        maxes = self._maxes
        if not maxes:
            self._blocks.append([key])
            maxes.append(key)
            return
        i = bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            block = self._owned(i) if self._shared else self._blocks[i]
            block.append(key)
            maxes[i] = key
        else:
            block = self._owned(i) if self._shared else self._blocks[i]
            insort(block, key)
        if len(block) > 2 * self._LOAD:
            half = self._LOAD
            self._blocks[i:i + 1] = [block[:half], block[half:]]
            maxes[i:i + 1] = [block[half - 1], block[-1]]

    def remove(self, key: str) -> None:
        """Remove ``key``, which must be present."""
        maxes = self._maxes
        blocks = self._blocks
        i = bisect_left(maxes, key)
        block = self._owned(i) if self._shared else blocks[i]
        j = bisect_left(block, key)
        del block[j]
        if not block:
            del blocks[i]
            del maxes[i]
            return
        if j == len(block):
            maxes[i] = block[-1]
        if len(block) < self._LOAD // 4 and len(blocks) > 1:
            k = i if i + 1 < len(blocks) else i - 1  # merge blocks k and k + 1
            merged = blocks[k] + blocks[k + 1]
            if len(merged) > 2 * self._LOAD:
                half = len(merged) // 2
                blocks[k:k + 2] = [merged[:half], merged[half:]]
                maxes[k:k + 2] = [merged[half - 1], merged[-1]]
            else:
                blocks[k:k + 2] = [merged]
                maxes[k:k + 2] = [merged[-1]]

    def _owned(self, i: int) -> list[str]:
        """Block ``i``, replaced by a copy first if a frozen view holds it (then no view holds it)."""
        block = self._blocks[i]
        if self._shared.pop(id(block), None) is not None:
            block = self._blocks[i] = block.copy()
        return block

    def clear(self) -> None:
        self._blocks = []
        self._maxes = []
        self._shared = {}  # views keep the old blocks; none of them is ours any more

    def blocks(self) -> list[list[str]]:
        """The sorted blocks themselves (do not modify them)."""
        return self._blocks

    def share(self) -> list[list[str]]:
        """The sorted blocks as of now, for a frozen view (do not modify them): the lists themselves,
        which this index leaves unchanged (it changes copies) until ``unshare``."""
        blocks = self._blocks
        self._shared.update(zip(map(id, blocks), blocks, strict=True))
        return list(blocks)

    def unshare(self) -> None:
        """No frozen view holds any of our blocks any more: change them in place again."""
        self._shared = {}

    def __iter__(self) -> Iterator[str]:
        for block in self._blocks:
            yield from block

    def __len__(self) -> int:
        return sum(map(len, self._blocks))

    def with_prefix(self, prefix: str, limit: int = 0) -> list[str]:
        """The keys starting with ``prefix``, in order (a bisect plus the matching keys); only the first
        ``limit`` if ``limit`` > 0, without looking at the rest."""
        if not prefix:
            return list(itertools.islice(self, limit)) if limit > 0 else list(self)
        found: list[str] = []
        blocks = self._blocks
        i = bisect_left(self._maxes, prefix)
        if i == len(blocks):
            return found
        j = bisect_left(blocks[i], prefix)
        for block in blocks[i:]:
            for position in range(j, len(block)):
                key = block[position]
                if not key.startswith(prefix):
                    return found
                found.append(key)
                if len(found) == limit:
                    return found
            j = 0
        return found


class SnapshotError(Exception):
    """The snapshot bytes are malformed, truncated or inconsistent (raised by ``restore``)."""


class RangeTooLarge(ValueError):
    """``StateMachine.range`` with ``chars_max``: the entries taken so far hold more than that."""


class Entry(NamedTuple):
    """One key as seen by readers."""

    key: str
    value: Value
    version: int       # 1 when created, +1 for each later put or successful cas
    mod_revision: int  # the revision of the last put or successful cas of this key


class _Client:
    """Dedup state of one client (few of these exist, so a small object is fine)."""

    __slots__ = ("floor", "last_revision", "results", "ids")

    def __init__(self, floor: int, last_revision: int, results: dict[int, tuple[int, int, int]]):
        self.floor = floor                  # highest ack_below seen: requests below it were answered
        self.last_revision = last_revision  # self.revision at this client's last command (LRU order)
        self.results = results              # request_id -> (kind, rev, extra), all >= floor
        # The keys of results as a min-heap: pruning below a new floor pops from it instead of
        # scanning every result (a client with hundreds of requests in flight moves its floor on
        # nearly every command).
        self.ids = sorted(results)


def _result_dict(stored: tuple[int, int, int]) -> dict[str, Any]:
    """The public result for a remembered ``(kind, rev, extra)``; always a new dict."""
    kind, rev, extra = stored
    if kind == _PUT:
        return {"rev": rev}
    if kind == _DELETE:
        return {"deleted": extra, "rev": rev}
    return {"ok": bool(extra), "rev": rev}


_ENTRY_HEAD = struct.Struct(">BQQ")
"""The head of a packed entry: value type (0 bytes, 1 str), version, mod_revision."""
_HEAD_BYTES = _ENTRY_HEAD.size
_DIGEST_BYTES = 8
_VALUE_AT = _HEAD_BYTES + _DIGEST_BYTES  # where the value starts in a packed entry
_DIGEST_MOD = 1 << (8 * _DIGEST_BYTES)
_blake2b = hashlib.blake2b


def _pack(key: str, value: Value, version: int, mod_revision: int) -> bytes:
    """One entry as stored in ``_entries``: head, digest, value (see the module docstring)."""
    if isinstance(value, str):
        head = _ENTRY_HEAD.pack(1, version, mod_revision)
        value = value.encode("utf-8")
    else:
        head = _ENTRY_HEAD.pack(0, version, mod_revision)
    return head + _digest(key, head, value) + value


def _digest(key: str, head: bytes, raw: bytes) -> bytes:
    """An entry's digest for ``state_hash``: BLAKE2b-64 of the key's length and UTF-8 bytes, the head
    (value type, version, mod_revision) and the value's bytes."""
    key_bytes = key.encode("utf-8")
    return _blake2b(len(key_bytes).to_bytes(4, "big") + key_bytes + head + raw, digest_size=_DIGEST_BYTES).digest()


def _unpack(packed: bytes) -> tuple[Value, int, int]:
    """``(value, version, mod_revision)`` of a packed entry."""
    kind, version, mod_revision = _ENTRY_HEAD.unpack_from(packed)
    raw = packed[_VALUE_AT:]
    return (raw.decode("utf-8") if kind else raw), version, mod_revision


def unpack_entry(packed: bytes) -> tuple[Value, int, int]:
    """``(value, version, mod_revision)`` of a packed entry (as ``StateMachine.watch_out`` holds them)."""
    return _unpack(packed)


def entry_mod_revision(packed: bytes) -> int:
    """The mod_revision of a packed entry, without unpacking its value."""
    mod_revision: int = _ENTRY_HEAD.unpack_from(packed)[2]
    return mod_revision


def _entry_digest(packed: bytes) -> int:
    """The digest a packed entry carries, as an int."""
    return int.from_bytes(packed[_HEAD_BYTES:_VALUE_AT], "big")


class StateMachine:
    """The dictionary plus its dedup table. Not thread-safe; one owner (the server's driver task)."""

    __slots__ = ("changes", "slot", "revision", "_entries", "_index", "_clients", "_results_total", "_hash_cache",
                 "_digest_sum", "_journals", "watch_out", "expiry_on", "horizon", "log_time", "_banned")

    def __init__(self) -> None:
        self.revision: int = 0
        self._entries: dict[str, bytes] = {}  # key -> packed entry
        self._index = _SortedKeys()  # the keys of _entries in sorted order
        # client_id -> _Client, least recently used first. OrderedDict gives O(1) move_to_end and
        # popitem(last=False); a plain dict degrades when popped from the front over and over.
        self._clients: OrderedDict[bytes, _Client] = OrderedDict()
        self._results_total = 0  # results remembered for all clients together (bounded by RESULTS_MAX)
        # (revision, hex digest) of the last state_hash: entries change only together with the
        # revision, so the digest stays valid until the next executed write.
        self._hash_cache: tuple[int, str] | None = None
        # Sum (mod 2**64) of the digests the entries carry, kept up to date by every write (state_hash)
        self._digest_sum = 0
        # The ``saved`` dicts of open FrozenStates: key -> packed entry (None: absent) at the freeze.
        self._journals: list[dict[str, bytes | None]] = []
        # Membership changes applied (paxos.membership): (slot, command), in slot order. Snapshots carry
        # them, so that a node restarting or installing from a snapshot rebuilds the core's schedule
        # of configurations (kvstore.server: Node._schedule_for). ``slot`` is the slot being applied,
        # set by the learner before each slot's commands.
        self.changes: list[tuple[int, bytes]] = []
        self.slot = 0
        # While a list (kvstore.watches: the node has watches or keeps a history), every write appends
        # what it changed, flat: ``key, packed entry`` for a key set, ``key, revision`` for a key deleted,
        # in the order of the changes (two items per change, not a tuple: a node keeps 50,000 of them,
        # and a tuple each was 3 MiB more). None: nothing is recorded.
        self.watch_out: list[str | bytes | int] | None = None
        # Client expiry (see "Exactly-once" above): switched on by the feature command, never off; the
        # highest stamp of a client forgotten since (or the feature command's stamp)
        self.expiry_on = False
        self.horizon = 0
        self.log_time = 0  # the cluster's clock: the newest stamp of a feature or clock command
        self._banned: set[bytes] = set()  # client ids forgotten at the switch, refused for good (see above)

    # -------------------------------------------------------------------------------------------
    # writes

    def apply(self, command: bytes, decoded: Command | None = None) -> tuple[tuple[bytes, int] | None, dict[str, Any]]:
        """Apply one decided command and return ``((client_id, request_id), result)``.

        Results: put ``{"rev": r}``; delete ``{"deleted": n, "rev": r}``; cas ``{"ok": bool, "rev": r}``;
        a stale retry ``{"error": "stale request"}``. A malformed command returns
        ``(None, {"error": "malformed command: ..."})`` and changes nothing. A duplicate of a remembered
        request returns (a copy of) its first result and changes no entry and no revision. Never
        raises on any command bytes; the caller answers whoever waits for the returned identity.
        """
        if decoded is not None:
            cmd = decoded  # the caller built ``command`` from it (the leader's own proposals)
        else:
            try:
                cmd = decode_command(command)
            except CommandError as exc:
                if is_change(command):  # a membership change: the core's; we only keep it for snapshots
                    self.changes.append((self.slot, bytes(command)))
                    return None, {"config": True}
                feature = decode_feature(command)
                if feature is not None:
                    return None, self._switch_on(*feature)
                clock = decode_clock(command)
                if clock is not None:
                    if self.expiry_on and clock > self.log_time:
                        self.log_time = clock
                    return None, {"clock": clock}
                return None, {"error": f"malformed command: {exc}"}
        client_id = cmd.client_id
        request_id = cmd.request_id
        identity = (client_id, request_id)
        client = self._clients.get(client_id)
        if client is not None:
            stored = client.results.get(request_id)
            if stored is not None:
                self._touch(client_id, client, cmd.ack_below)  # (as for a retry: replicas of every version agree)
                if stored[0] != _KIND_OF_OP[cmd.op]:
                    # Not a retry: another command under a remembered identity, which only a client id
                    # that two clients share makes (QA: a process forked after its client was made).
                    # Its first result would answer a write that was never applied: refuse it instead.
                    return identity, {"error": f"request {request_id} of this client id was a "
                                               f"{_OP_OF_KIND[stored[0]]}, this one is a {cmd.op}: two clients "
                                               f"share one client id; this write was not applied"}
                return identity, _result_dict(stored)
            if request_id < client.floor:
                return identity, {"error": STALE_REQUEST}
        elif self.expiry_on:
            stamp = client_id_stamp(client_id)
            if stamp is not None:
                horizon = self.horizon
                if (stamp <= horizon or (stamp > self.log_time + STAMP_AHEAD_MS and stamp > horizon + RENEW_ROOM_MS)
                        or client_id in self._banned):
                    return identity, {"error": EXPIRED_CLIENT, "horizon": max(horizon, self.log_time)}

        self.revision += 1
        rev = self.revision
        entries = self._entries
        key = cmd.key
        journals = self._journals
        value = cmd.value
        if cmd.op == "put":
            assert value is not None  # a put carries its value (decode_command and encode_write check it)
            old = entries.get(key)
            if journals:
                self._save(key, old)
            if old is None:
                self._index.add(key)
                new = entries[key] = _pack(key, value, 1, rev)
            else:
                new = entries[key] = _pack(key, value, _ENTRY_HEAD.unpack_from(old)[1] + 1, rev)
            self._rehash(old, new)
            out = self.watch_out
            if out is not None:
                out.append(key)
                out.append(new)
            stored = (_PUT, rev, 0)
        elif cmd.op == "delete":
            if cmd.prefix:
                # In key order, so the work done is the same on every replica.
                doomed = self._index.with_prefix(key)
                out = self.watch_out
                if out is not None:
                    for k in doomed:
                        out.append(k)
                        out.append(rev)
                if len(doomed) == len(entries):
                    # A new dict rather than clear(): an open FrozenState goes on reading the old one,
                    # which nothing changes any more, so its journal is complete: stop adding to it
                    # (a later write of a key it lists would otherwise reach it through the journal).
                    self._entries = {}
                    self._journals = []
                    self._index.clear()
                    self._digest_sum = 0
                else:
                    remove = self._index.remove
                    for k in doomed:
                        if journals:
                            self._save(k, entries[k])
                        self._rehash(entries[k], None)
                        del entries[k]
                        remove(k)
                deleted = len(doomed)
            else:
                if journals:
                    self._save(key, entries.get(key))
                gone = entries.pop(key, None)
                if gone is None:
                    deleted = 0
                else:
                    self._index.remove(key)
                    self._rehash(gone, None)
                    deleted = 1
                    out = self.watch_out
                    if out is not None:
                        out.append(key)
                        out.append(rev)
            stored = (_DELETE, rev, deleted)
        else:
            old = entries.get(key)
            old_value, old_version, _ = _unpack(old) if old is not None else (None, 0, 0)
            expected = cmd.expected
            if expected is None:
                ok = old is None
            else:
                # Compare types first: "a" and b"a" are different values (and comparing str with
                # bytes warns under python -b).
                ok = old is not None and type(old_value) is type(expected) and old_value == expected
            if ok:
                assert value is not None  # a cas carries its new value (decode_command and encode_write check it)
                if journals:
                    self._save(key, old)
                if old is None:
                    self._index.add(key)
                new = entries[key] = _pack(key, value, old_version + 1, rev)
                self._rehash(old, new)
                out = self.watch_out
                if out is not None:
                    out.append(key)
                    out.append(new)
            stored = (_CAS, rev, 1 if ok else 0)

        if client is None:
            client = _Client(0, rev, {})
            self._clients[client_id] = client
            if len(self._clients) > CLIENTS_MAX:
                self._evict_lru_client()  # never the new one: it is the most recent
        self._touch(client_id, client, cmd.ack_below)
        results = client.results
        results[request_id] = stored  # new: a remembered request returned above
        heappush(client.ids, request_id)
        self._results_total += 1
        if len(results) > RESULTS_PER_CLIENT_MAX:
            oldest = heappop(client.ids)
            del results[oldest]
            self._results_total -= 1
            # Forgetting a result must not allow a second execution: a retry of it is now stale.
            client.floor = max(client.floor, oldest + 1)
        while self._results_total > RESULTS_MAX:
            # One client holds at most RESULTS_PER_CLIENT_MAX < RESULTS_MAX results, so this stops
            # before it reaches the client just served (the most recently used).
            self._evict_lru_client()
        return identity, _result_dict(stored)

    def _evict_lru_client(self) -> None:
        """Forget the least recently used client and its results (see "Exactly-once" above)."""
        client_id, client = self._clients.popitem(last=False)
        self._results_total -= len(client.results)
        if self.expiry_on:
            stamp = client_id_stamp(client_id)
            if stamp is not None and stamp > self.horizon:
                self.horizon = stamp

    def knows(self, client_id: bytes) -> bool:
        """Whether the dedup table holds ``client_id`` (the leader asks before a write of a new client)."""
        return client_id in self._clients

    def _switch_on(self, name: str, stamp: int) -> dict[str, Any]:
        """Apply a feature command (``kvstore.commands.encode_feature``): the same on every replica."""
        if name != FEATURE_CLIENT_EXPIRY:
            return {"error": f"malformed command: unknown feature {name!r}"}
        if not self.expiry_on:  # (a second one, proposed by two leaders in turn, changes nothing)
            self.expiry_on = True
            # The horizon starts at the switch's stamp, which covers the clients forgotten before; but at 0
            # if none can have been (a client joins the table with a write it executes, so none was
            # forgotten while the revision is CLIENTS_MAX or less: a new cluster). A horizon 2 s above the
            # switch, to cover clocks ahead, refused the new clients of a new cluster's first seconds, and
            # a write retried across the switch then said its outcome was unknown (tests).
            if self.revision > CLIENTS_MAX:
                self.horizon = max(self.horizon, stamp)
            self.log_time = max(self.log_time, stamp)
            # The clients the table took while it was off were not checked: one stamped far ahead of the
            # switch would move the horizon there once forgotten (QA: a forged 2**62 - 1, written during a
            # rolling upgrade). Forget them now, leaving the horizon, and ban them: a late retry of theirs
            # is refused (and reported as outcome unknown), a new write of theirs draws a new id.
            ahead = [client_id for client_id in self._clients
                     if (s := client_id_stamp(client_id)) is not None and s > stamp + STAMP_AHEAD_MS]
            for client_id in ahead:
                self._results_total -= len(self._clients.pop(client_id).results)
                self._banned.add(client_id)
        return {"feature": name}

    def _touch(self, client_id: bytes, client: _Client, ack_below: int) -> None:
        """Record a command of ``client``: LRU position, last revision, floor and pruning."""
        self._clients.move_to_end(client_id)
        client.last_revision = self.revision
        if ack_below > client.floor:
            client.floor = ack_below
            results, ids = client.results, client.ids
            while ids and ids[0] < ack_below:
                del results[heappop(ids)]
                self._results_total -= 1

    # -------------------------------------------------------------------------------------------
    # reads (local; linearizability is the server's job)

    def get(self, key: str) -> Entry | None:
        """The entry for ``key``, or None if absent."""
        found = self._entries.get(key)
        return None if found is None else Entry(key, *_unpack(found))

    def range(self, prefix: str = "", limit: int = 0) -> list[Entry]:
        """Every entry whose key starts with ``prefix``, in key order (O(log n + matches)); only the first
        ``limit`` if ``limit`` > 0, without looking at the rest."""
        entries = self._entries
        return [Entry(k, *_unpack(entries[k])) for k in self._index.with_prefix(prefix, limit)]

    def range_items(self, prefix: str = "", limit: int = 0, *, values: bool = True, meta: bool = False,
                    items_max: int = 0, bytes_min_max: int = 0) -> list[list[Value | int]]:
        """``range(prefix, limit)`` as the items of a range answer (``kvstore.waiters.read_reply``): per
        entry ``[key]``, with its value if ``values``, then version and mod_revision if ``meta``; built
        straight from the packed entries (an ``Entry`` per key cost as much again: this runs in the
        node's event loop).

        ``items_max`` > 0: raise ``RangeTooLarge`` if more than that many entries match (and ``limit``
        does not cut them to that), having looked at one more key, not at the rest. ``bytes_min_max`` > 0:
        raise ``RangeTooLarge`` as soon as the items taken hold more than that many bytes by a lower
        bound (each key's ``len``, at most its UTF-8 bytes, and each value's UTF-8 bytes), without
        building the rest: a range that cannot fit in a frame is refused unbuilt."""
        entries = self._entries
        if items_max > 0 and not 0 < limit <= items_max:
            keys = self._index.with_prefix(prefix, items_max + 1)
            if len(keys) > items_max:
                raise RangeTooLarge(f"more than {items_max:,} entries")
        else:
            keys = self._index.with_prefix(prefix, limit)
        if not values and not meta:
            if bytes_min_max > 0 and sum(map(len, keys)) > bytes_min_max:
                raise RangeTooLarge(f"its {len(keys)} keys alone hold more than {bytes_min_max} bytes")
            return [[key] for key in keys]
        head = _ENTRY_HEAD.unpack_from
        value_at = _VALUE_AT
        bound = bytes_min_max if bytes_min_max > 0 else math.inf
        items: list[list[Value | int]] = []
        size = 0
        for key in keys:
            packed = entries[key]
            kind, version, mod_revision = head(packed)
            if values:
                raw = packed[value_at:]
                size += len(key) + len(raw)
                value = raw.decode("utf-8") if kind else raw
                items.append([key, value, version, mod_revision] if meta else [key, value])
            else:
                size += len(key)
                items.append([key, version, mod_revision])
            if size > bound:
                raise RangeTooLarge(f"{len(items)} of its {len(keys)} entries already hold more than "
                                    f"{bytes_min_max} bytes")
        return items

    def __len__(self) -> int:
        return len(self._entries)

    def clients_count(self) -> int:
        """Clients currently in the dedup table (for status and tests)."""
        return len(self._clients)

    def results_count(self) -> int:
        """Results currently remembered for all clients together (at most ``RESULTS_MAX`` after a write)."""
        return self._results_total

    def remembered(self, client_id: bytes) -> tuple[int, list[int]] | None:
        """``(floor, sorted remembered request ids)`` of a client, or None if it is not in the table."""
        client = self._clients.get(client_id)
        if client is None:
            return None
        return client.floor, sorted(client.results)

    # -------------------------------------------------------------------------------------------
    # hashing and snapshots

    def state_hash(self) -> str:
        """Hex SHA-256 over the revision, the key count and the sum of one digest per entry.

        Each entry ``(key, value, version, mod_revision)`` is hashed once, when it is written
        (BLAKE2b-64, ``_digest``), and its packed form carries the digest; the digests are added
        modulo 2**64, so the result does not depend on order and each write keeps it up to date in
        O(1) without hashing the entry it replaces. Equal states give equal hashes on every replica;
        the dedup table is not included (two replicas with equal hashes hold the same data). This is
        a check against divergence (a bug, a damaged file), not a defence against a forger.
        """
        cached = self._hash_cache
        if cached is not None and cached[0] == self.revision:
            return cached[1]
        digest = hashlib.sha256(cbor2.dumps(["kvstore-state", _STATE_HASH_VERSION, self.revision,
                                             len(self._entries), self._digest_sum.to_bytes(_DIGEST_BYTES, "big")]))
        self._hash_cache = (self.revision, digest.hexdigest())
        return self._hash_cache[1]

    def _rehash(self, old: bytes | None, new: bytes | None) -> None:
        total = self._digest_sum
        if old is not None:
            total -= int.from_bytes(old[_HEAD_BYTES:_VALUE_AT], "big")
        if new is not None:
            total += int.from_bytes(new[_HEAD_BYTES:_VALUE_AT], "big")
        self._digest_sum = total % _DIGEST_MOD

    def snapshot(self) -> bytes:
        """The whole state as CBOR bytes, for ``restore``: ``b"".join(self.snapshot_chunks())``.

        The layout (format 2) is described at ``FrozenState.chunks``. Flat lists keep the encoding fast
        and the memory overhead at one pointer per field; entries go out packed, as stored. Equal
        command histories give byte-identical snapshots.

        This holds the whole encoding in memory at once and runs to completion without a pause; a
        server with a big state should ``freeze()`` and stream ``FrozenState.chunks`` instead.
        """
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self, entries_per_chunk: int = SNAPSHOT_ENTRIES_PER_CHUNK) -> Iterator[bytes]:
        """The bytes of ``snapshot()`` as a generator of pieces, of the state as of the first ``next()``.

        A shorthand for ``freeze()`` and ``FrozenState.chunks``, closing the view when the generator
        ends or is closed. Writes between pieces are fine: they do not show in the pieces.
        """
        if type(entries_per_chunk) is not int or entries_per_chunk < 1:
            raise ValueError(f"entries_per_chunk must be a positive int, not {entries_per_chunk!r}")
        with self.freeze() as frozen:
            yield from frozen.chunks(entries_per_chunk)

    def freeze(self) -> FrozenState:
        """The state as of now, for a snapshot written while writes go on (see the module docstring).

        Costs a pointer per block of the key index plus a copy of the dedup table. Close the view
        (``close()``, or use it as a context manager) when done: until then every write pays for a dict
        lookup, the entries it replaces are kept, and the first change of each index block copies it.
        """
        saved: dict[str, bytes | None] = {}
        frozen = FrozenState(self, saved)
        self._journals.append(saved)
        return frozen

    def _save(self, key: str, packed: bytes | None) -> None:
        """Before the first change of ``key`` while views are open: keep what each view must see.

        A key absent now (``packed`` None) needs nothing: if it was absent at a freeze, that view does
        not list it; if it was present, its entry was saved when it went away.
        """
        if packed is None:
            return
        for saved in self._journals:
            if key not in saved:
                saved[key] = packed

    def _release(self, saved: dict[str, bytes | None]) -> None:
        journals = self._journals
        for i, journal in enumerate(journals):
            if journal is saved:
                del journals[i]
                break
        if not journals:
            # Every open view is gone, or holds only blocks from before a delete of every key
            # (which replaced all of ours): none of our blocks is held any more.
            self._index.unshare()

    @classmethod
    def restore(cls, data: bytes) -> StateMachine:
        """Rebuild a state machine from ``snapshot()`` bytes.

        Validates everything (types, ranges, key order, dedup table consistency, no trailing bytes)
        and raises ``SnapshotError`` with a message naming the problem on anything malformed or
        truncated; never another exception for bad bytes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SnapshotError(f"snapshot must be bytes, not {type(data).__name__}")
        return cls.restore_stream(io.BytesIO(data), len(data))

    @classmethod
    def restore_stream(cls, stream: BinaryIO, length: int, *, checked_file: bool = False) -> StateMachine:
        """``restore`` of the ``length`` snapshot bytes that ``stream`` (a binary file) holds from its
        current position. A server restoring from its snapshot file uses this: decoding from the file
        never holds the whole encoding next to everything decoded from it (a million keys: ~130 MB
        less at the peak of a restart).

        ``checked_file``: the bytes are this node's own snapshot file, whose checksum the storage
        verified when it opened it (``Storage.open_snapshot``). Every snapshot was validated entry by
        entry before it became a file (made here from applied commands, or restored from a peer's or a
        backup's bytes first), so the entries of a format 2+ file are taken as they are, without the
        per-entry checks (about half of a restart's time at a million keys). The map around them is
        still checked, and the dedup table and membership changes are validated as always."""
        start = stream.tell()
        try:
            top = cbor2.CBORDecoder(stream).decode()
        except Exception as exc:  # noqa: BLE001 -- any decode failure means the bytes are bad
            raise SnapshotError(f"snapshot is not valid CBOR ({type(exc).__name__}: {exc})") from None
        used = stream.tell() - start
        if used != length:
            raise SnapshotError(f"snapshot has {length - used} trailing bytes" if used < length
                                else f"snapshot runs {used - length} bytes past its end")
        if type(top) is not dict or set(top) - {"changes", "expiry"} != {"format", "revision", "entries", "clients"}:
            raise SnapshotError("snapshot must be a map with keys format, revision, entries, clients "
                                "(and changes, from format 3; expiry once client expiry is on)")
        layout = top["format"]
        if type(layout) is not int or layout not in SNAPSHOT_FORMATS_READ:
            raise SnapshotError(f"unknown snapshot format {layout!r} (this version reads "
                                f"{', '.join(map(str, SNAPSHOT_FORMATS_READ))})")
        revision = top["revision"]
        if type(revision) is not int or revision < 0:
            raise SnapshotError("snapshot revision must be a non-negative int")
        machine = cls()
        machine.revision = revision
        # pop: _restore_entries empties the flat list as it goes, and nothing else may keep it alive.
        if checked_file and layout >= 2:
            restore_entries = _adopt_packed_entries
        else:
            restore_entries = _restore_packed_entries if layout >= 2 else _restore_entries
        machine._entries, machine._index = restore_entries(top.pop("entries"), revision)
        # (the digests' sum without a Python call per entry: slice each digest out, read it big endian)
        digests = map(operator.itemgetter(slice(_HEAD_BYTES, _VALUE_AT)), machine._entries.values())
        machine._digest_sum = sum(map(int.from_bytes, digests)) % _DIGEST_MOD
        machine._clients = _restore_clients(top["clients"], revision)
        machine.changes = _restore_changes(top.get("changes", []))
        if "expiry" in top:
            machine.expiry_on = True
            machine.horizon, machine.log_time, machine._banned = _restore_expiry(top["expiry"])
        # An older snapshot may hold more than RESULTS_MAX: the next executed command evicts down to it.
        machine._results_total = sum(len(c.results) for c in machine._clients.values())
        return machine


class FrozenState:
    """A state machine's state as of ``StateMachine.freeze()``; later writes do not change it.

    ``chunks`` gives the snapshot bytes of that state in pieces. Only the owner of the state machine
    (one thread: the server's event loop) may call it, between writes; it reads the live entries
    first and the ``saved`` journal after, so it also stays right if a write lands in between.
    """

    __slots__ = ("revision", "count", "_owner", "_entries", "_blocks", "_clients", "_saved", "_closed", "_changes",
                 "_expiry")

    def __init__(self, owner: StateMachine, saved: dict[str, bytes | None]) -> None:
        self._owner = owner
        self.revision = owner.revision
        self._entries = owner._entries
        self.count = len(owner._entries)
        self._blocks = owner._index.share()  # the blocks themselves: copy-on-write, see _SortedKeys
        self._changes = list(owner.changes)
        # client expiry: [horizon, log_time, banned ids in order], None while off
        self._expiry = [owner.horizon, owner.log_time, sorted(owner._banned)] if owner.expiry_on else None
        # The dedup table in LRU order, each client's results copied (the live ones change).
        self._clients = [(client_id, client.floor, client.last_revision, dict(client.results))
                         for client_id, client in owner._clients.items()]
        self._saved = saved
        self._closed = False

    def close(self) -> None:
        """Stop the copy-on-write journal (idempotent); ``chunks`` may not be used afterwards."""
        if not self._closed:
            self._closed = True
            self._owner._release(self._saved)
            self._saved = {}

    def __enter__(self) -> FrozenState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chunks(self, entries_per_chunk: int = SNAPSHOT_ENTRIES_PER_CHUNK,
               bytes_per_chunk: int = SNAPSHOT_BYTES_PER_CHUNK, *, expiry: bool = True) -> Iterator[bytes]:
        """The snapshot bytes of the frozen state, in pieces of about ``entries_per_chunk`` entries (or
        remembered dedup results) each, and a piece of entries of about ``bytes_per_chunk`` bytes at most
        (one entry at least); their concatenation is ``snapshot()`` as of the freeze.

        Layout (format 2): a map ``{"format": 2, "revision": r, "entries": [key, packed, ...] (flat, key
        order; packed is the entry as stored, digest included: see the module docstring), "clients": [[client_id, floor,
        last_revision, [request_id, kind, rev, extra, ...]], ...] (least recently used first, request
        ids ascending)}``, then (format 3) ``"changes": [[slot, command], ...]`` and, once client expiry is
        on, ``"expiry": [horizon, log_time, [banned client id, ...]]``, exactly as one ``cbor2.dumps`` of
        that map would encode it. Equal command histories give byte-identical snapshots.

        ``expiry=False`` leaves ``"expiry"`` out (a backup: it restores with the older versions'
        ``kv snapshot restore`` too, and a cluster restored from it switches expiry on by itself).
        """
        if type(entries_per_chunk) is not int or entries_per_chunk < 1:
            raise ValueError(f"entries_per_chunk must be a positive int, not {entries_per_chunk!r}")
        dumps = cbor2.dumps
        state = self._expiry if expiry else None
        # (five keys; six with "expiry", written only once it is on: an older node installs the others)
        yield b"".join((b"\xa5" if state is None else b"\xa6", dumps("format"), dumps(SNAPSHOT_FORMAT),
                        dumps("revision"),
                        dumps(self.revision), dumps("entries"), _array_header(2 * self.count)))
        for keys in _batches(self._blocks, entries_per_chunk):
            if self._closed:
                raise RuntimeError("FrozenState used after close()")
            # The live entry first, then the journal: a key changed since the freeze is in the
            # journal by then (it is saved before it changes).
            values = list(map(self._entries.get, keys))
            saved = self._saved
            if saved:
                values = [saved[key] if key in saved else value for key, value in zip(keys, values, strict=True)]
            flat: list[Any] = [None] * (2 * len(keys))
            flat[0::2] = keys
            flat[1::2] = values
            if None in values:  # a key of the frozen order without an entry: a bug, not a snapshot
                raise RuntimeError("FrozenState lost an entry (a write bypassed the journal)")
            sizes = [len(value) for value in values if value is not None]  # (None: refused above)
            if sum(sizes) <= bytes_per_chunk:
                yield _array_items(flat)
            else:  # large values: in pieces of about bytes_per_chunk (the same bytes, cut elsewhere)
                start, size = 0, 0
                for i, value_size in enumerate(sizes):
                    size += value_size
                    if size >= bytes_per_chunk:
                        yield _array_items(flat[2 * start:2 * i + 2])
                        start, size = i + 1, 0
                if start < len(sizes):
                    yield _array_items(flat[2 * start:])
            del flat, values
        clients = self._clients
        yield dumps("clients") + _array_header(len(clients))
        batch: list[Any] = []
        batch_results = 0
        for client_id, floor, last_revision, stored in clients:
            results: list[Any] = []
            for request_id in sorted(stored):
                results.append(request_id)
                results.extend(stored[request_id])
            batch.append([client_id, floor, last_revision, results])
            batch_results += len(stored) + 1
            if batch_results >= entries_per_chunk:
                yield _array_items(batch)
                batch = []
                batch_results = 0
        if batch:
            yield _array_items(batch)
        yield dumps("changes") + dumps([[slot, command] for slot, command in self._changes])
        if state is not None:
            yield dumps("expiry") + dumps(state)


def _restore_expiry(expiry: object) -> tuple[int, int, set[bytes]]:
    """Client expiry's state in a snapshot: ``[horizon, log_time, [banned client id, ...]]``."""
    if (type(expiry) is not list or len(expiry) != 3 or type(expiry[2]) is not list
            or any(type(x) is not int or not 0 <= x < 2**64 for x in expiry[:2])):
        raise SnapshotError("snapshot expiry must be [horizon, log_time, [banned client ids]]")
    banned = expiry[2]
    if (len(banned) > CLIENTS_MAX or any(type(b) is not bytes or len(b) != CLIENT_ID_STAMPED_BYTES for b in banned)
            or banned != sorted(set(banned))):
        raise SnapshotError(f"snapshot expiry's banned client ids must be at most {CLIENTS_MAX} stamped ids, "
                            "in order")
    return expiry[0], expiry[1], set(banned)


def _restore_changes(changes: object) -> list[tuple[int, bytes]]:
    """The membership changes of a snapshot: ``[[slot, command bytes], ...]`` in slot order."""
    if type(changes) is not list:
        raise SnapshotError("snapshot changes must be an array")
    out: list[tuple[int, bytes]] = []
    for i, item in enumerate(changes):
        if (type(item) is not list or len(item) != 2 or type(item[0]) is not int or item[0] < 1
                or type(item[1]) is not bytes or not is_change(item[1])):
            raise SnapshotError(f"snapshot change {i} must be [slot, membership change command]")
        if out and item[0] < out[-1][0]:
            raise SnapshotError(f"snapshot change {i} is out of slot order")
        out.append((item[0], item[1]))
    return out


_RESTORE_ENTRIES_PER_STEP = 20_000
"""Entries taken off the end of the decoded flat list at a time by ``_restore_entries``."""


def _check_snapshot_key(key: object, following: str | None, index: int) -> None:
    """Raise SnapshotError unless ``key`` is a non-empty str within the key limit that sorts strictly
    before ``following`` (the key after it; the restore walks backwards)."""
    if type(key) is not str or not key:
        raise SnapshotError(f"snapshot entry {index}: key must be a non-empty str")
    if len(key) > KEY_BYTES_MAX // 4 and len(key.encode("utf-8")) > KEY_BYTES_MAX:
        # (UTF-8 uses at most 4 bytes per character, so only long strings need the copying encode)
        raise SnapshotError(f"snapshot entry {index}: key longer than {KEY_BYTES_MAX} bytes")
    if following is not None and not key < following:
        raise SnapshotError(f"snapshot entry {index}: keys not in strictly increasing order")


def _restore_entries(flat: object, revision: int) -> tuple[dict[str, bytes], _SortedKeys]:
    """Validate the flat entry list of a snapshot and build the entries dict and the key index.

    Raises SnapshotError if anything is bad. Consumes ``flat``: entries are taken off its end a step at a
    time and the list shrinks as they go, so the decoded list (one pointer per field, 32 MB at a
    million keys) and the dict being built are not both whole at the peak. Walking backwards means the
    order check compares each key with the one after it.
    """
    if type(flat) is not list or len(flat) % 4:
        raise SnapshotError("snapshot entries must be a flat list of (key, value, version, mod_revision)")
    entries: dict[str, bytes] = {}
    keys_descending: list[str] = []
    following = None  # the key after the current one (already checked)
    # UTF-8 uses at most 4 bytes per character, so only long strings need the (copying) encode.
    value_chars_safe = VALUE_BYTES_MAX // 4
    step = 4 * _RESTORE_ENTRIES_PER_STEP
    while flat:
        base = max(0, len(flat) - step)
        piece = flat[base:]
        del flat[base:]  # the list shrinks (and reallocates smaller) as it empties
        for i in range(len(piece) - 4, -1, -4):
            key, value, version, mod_revision = piece[i], piece[i + 1], piece[i + 2], piece[i + 3]
            where = f"snapshot entry {(base + i) // 4}"
            _check_snapshot_key(key, following, (base + i) // 4)
            following = key
            value_type = type(value)
            if value_type is bytes:
                if len(value) > VALUE_BYTES_MAX:
                    raise SnapshotError(f"{where}: value longer than {VALUE_BYTES_MAX} bytes")
            elif value_type is str:
                try:
                    encoded_length = len(value.encode("utf-8")) if len(value) > value_chars_safe else 0
                except UnicodeEncodeError:
                    raise SnapshotError(f"{where}: value is not valid Unicode") from None
                if encoded_length > VALUE_BYTES_MAX:
                    raise SnapshotError(f"{where}: value longer than {VALUE_BYTES_MAX} bytes")
            else:
                raise SnapshotError(f"{where}: value must be str or bytes")
            # Each version step happened at its own revision, so 1 <= version <= mod_revision <= revision.
            if type(version) is not int or type(mod_revision) is not int \
                    or not 1 <= version <= mod_revision <= revision:
                raise SnapshotError(f"{where}: need ints with 1 <= version <= mod_revision <= revision")
            # Insertion order of the dict does not matter: every ordered reader goes through the index.
            try:
                entries[key] = _pack(key, value, version, mod_revision)
            except (UnicodeEncodeError, struct.error):
                raise SnapshotError(f"{where}: value is not valid Unicode or a number is too large") from None
            keys_descending.append(key)
        del piece
    keys_descending.reverse()
    return entries, _SortedKeys.from_sorted(keys_descending)


def _restore_packed_entries(flat: object, revision: int) -> tuple[dict[str, bytes], _SortedKeys]:
    """``_restore_entries`` for format 2, whose flat list is ``[key, packed, ...]``: each packed entry is
    checked (head, value type, UTF-8, sizes, 1 <= version <= mod_revision <= revision, its digest) and
    kept as is."""
    if type(flat) is not list or len(flat) % 2:
        raise SnapshotError("snapshot entries must be a flat list of (key, packed entry)")
    entries: dict[str, bytes] = {}
    keys_descending: list[str] = []
    following = None  # the key after the current one (already checked)
    unpack_head = _ENTRY_HEAD.unpack_from
    step = 2 * _RESTORE_ENTRIES_PER_STEP
    while flat:
        base = max(0, len(flat) - step)
        piece = flat[base:]
        del flat[base:]
        for i in range(len(piece) - 2, -1, -2):
            key, packed = piece[i], piece[i + 1]
            _check_snapshot_key(key, following, (base + i) // 2)
            following = key
            if type(packed) is not bytes or len(packed) < _VALUE_AT:
                raise SnapshotError(f"snapshot entry {(base + i) // 2}: packed entry must be bytes of at least "
                                    f"{_VALUE_AT}")
            kind, version, mod_revision = unpack_head(packed)
            if kind > 1:
                raise SnapshotError(f"snapshot entry {(base + i) // 2}: unknown value type {kind}")
            if len(packed) - _VALUE_AT > VALUE_BYTES_MAX:
                raise SnapshotError(f"snapshot entry {(base + i) // 2}: value longer than {VALUE_BYTES_MAX} bytes")
            if not 1 <= version <= mod_revision <= revision:
                raise SnapshotError(f"snapshot entry {(base + i) // 2}: need 1 <= version <= mod_revision "
                                    f"<= revision")
            raw = packed[_VALUE_AT:]
            if kind:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise SnapshotError(f"snapshot entry {(base + i) // 2}: value is not valid UTF-8") from None
            if _digest(key, packed[:_HEAD_BYTES], raw) != packed[_HEAD_BYTES:_VALUE_AT]:
                raise SnapshotError(f"snapshot entry {(base + i) // 2}: the entry's digest does not match it")
            entries[key] = packed
            keys_descending.append(key)
        del piece
    keys_descending.reverse()
    return entries, _SortedKeys.from_sorted(keys_descending)


def _adopt_packed_entries(flat: object, revision: int) -> tuple[dict[str, bytes], _SortedKeys]:
    """The entries dict and key index of a format 2+ flat list ``[key, packed, ...]`` from a snapshot
    file whose checksum was verified (``StateMachine.restore_stream``, ``checked_file``): built with
    whole-list operations, no Python code per entry. Consumes ``flat``."""
    if type(flat) is not list or len(flat) % 2:
        raise SnapshotError("snapshot entries must be a flat list of (key, packed entry)")
    entries: dict[str, bytes] = {}
    key_pieces: list[list[str]] = []
    step = 2 * _RESTORE_ENTRIES_PER_STEP
    while flat:  # a step at a time from the end, as _restore_entries does, so the list shrinks as we go
        base = max(0, len(flat) - step)
        piece = flat[base:]
        del flat[base:]
        keys = piece[0::2]
        entries.update(zip(keys, piece[1::2], strict=True))
        key_pieces.append(keys)
        del piece
    keys = list(itertools.chain.from_iterable(reversed(key_pieces)))
    del key_pieces
    if len(entries) != len(keys):
        raise SnapshotError("snapshot keys are not distinct")
    return entries, _SortedKeys.from_sorted(keys)


def _restore_clients(clients: object, revision: int) -> OrderedDict[bytes, _Client]:
    """Validate the dedup table of a snapshot and rebuild it in LRU order (SnapshotError if bad)."""
    if type(clients) is not list or len(clients) > CLIENTS_MAX:
        raise SnapshotError(f"snapshot clients must be a list of at most {CLIENTS_MAX}")
    table: OrderedDict[bytes, _Client] = OrderedDict()
    previous_last = 0
    for index, item in enumerate(clients):
        where = f"snapshot client {index}"
        if type(item) is not list or len(item) != 4:
            raise SnapshotError(f"{where}: must be [client_id, floor, last_revision, results]")
        client_id, floor, last_revision, flat = item
        if type(client_id) is not bytes or not 1 <= len(client_id) <= CLIENT_ID_BYTES_MAX:
            raise SnapshotError(f"{where}: client_id must be 1 to {CLIENT_ID_BYTES_MAX} bytes")
        if client_id in table:
            raise SnapshotError(f"{where}: duplicate client_id")
        if type(floor) is not int or floor < 0:
            raise SnapshotError(f"{where}: floor must be a non-negative int")
        # LRU order is command order, and the revision never goes down along it.
        if type(last_revision) is not int or not previous_last <= last_revision <= revision:
            raise SnapshotError(f"{where}: last_revision out of order or above the revision")
        previous_last = last_revision
        if type(flat) is not list or len(flat) % 4 or len(flat) > 4 * RESULTS_PER_CLIENT_MAX:
            raise SnapshotError(f"{where}: results must be a flat list of at most "
                                f"{RESULTS_PER_CLIENT_MAX} (request_id, kind, rev, extra)")
        results: dict[int, tuple[int, int, int]] = {}
        previous_request = floor - 1
        for i in range(0, len(flat), 4):
            request_id, kind, rev, extra = flat[i], flat[i + 1], flat[i + 2], flat[i + 3]
            if type(request_id) is not int or request_id <= previous_request:
                raise SnapshotError(f"{where}: request ids must be ascending ints at or above the floor")
            previous_request = request_id
            if type(rev) is not int or not 1 <= rev <= revision or type(extra) is not int:
                raise SnapshotError(f"{where}: result of request {request_id} has a bad rev or extra")
            if not ((kind == _PUT and extra == 0) or (kind == _DELETE and extra >= 0)
                    or (kind == _CAS and extra in (0, 1))) or type(kind) is not int:
                raise SnapshotError(f"{where}: result of request {request_id} has a bad kind")
            results[request_id] = (kind, rev, extra)
        table[client_id] = _Client(floor, last_revision, results)
    return table
