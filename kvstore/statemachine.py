"""The replicated dictionary: a deterministic state machine fed with decided commands.

Theory of operation
-------------------
Every replica applies the same decided commands (``kvstore.commands``) in the same slot order, so
``apply`` must be a pure function of (state, command bytes): no clock, no randomness, no I/O, no
iteration over anything whose order could differ between replicas (hashicorp/raft ``fsm.go`` states
the same contract). Same commands in, same entries, same results, same ``state_hash`` out.

State
  ``_entries``: ``key -> (value, version, mod_revision)``. One plain tuple per key, because a node
  must hold a million keys in a few hundred MiB: an object per key (even with ``__slots__``) would
  cost more than the tuple.

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
  * A command with ``request_id`` below the client's floor is a retry of something already answered:
    it gets ``{"error": "stale request"}`` and changes nothing (not even the table's LRU order).
  * The table is bounded. At most ``CLIENTS_MAX`` clients: when a new client would exceed it, the
    least recently used client (the one whose last command is oldest, tracked in command order and
    recorded as the revision at that command) is forgotten. At most ``RESULTS_PER_CLIENT_MAX`` results
    per client: when exceeded, the lowest request id is forgotten *and the client's floor is raised
    above it*, so a late retry of that request is answered "stale request" instead of being executed
    twice. A forgotten client loses that protection: a retry from it after eviction executes again,
    which is the price of a bounded table (clients retry for seconds, eviction takes 10,000 newer
    clients).

  Remembered results are stored compactly as ``(kind, rev, extra)`` tuples and rebuilt into fresh
  dicts for every caller, so no caller can change the table by mutating a result.

Snapshots (``snapshot``/``restore``) hold the format version, the revision, every entry in key order
and the dedup table in LRU order, so a restored replica answers retries exactly as the original. The
state hash covers the revision and the entries (not the dedup table), so it can be compared with a
model dictionary in tests and between replicas in ``status``.
"""
from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from typing import NamedTuple, Union

import cbor2

from .commands import (
    CLIENT_ID_BYTES_MAX,
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    CommandError,
    decode_command,
)

CLIENTS_MAX = 10_000
"""Clients remembered in the dedup table at most; the least recently used one is evicted beyond."""
RESULTS_PER_CLIENT_MAX = 4096
"""Results remembered per client at most; the lowest request id is dropped beyond."""
SNAPSHOT_FORMAT = 1
"""Version of the snapshot layout written by ``snapshot``; ``restore`` accepts only this one."""

Value = Union[str, bytes]

# Kinds of remembered results: (kind, rev, extra). extra is 0 for put, the number of deleted keys for
# delete, 1 or 0 (swapped or not) for cas.
_PUT = 0
_DELETE = 1
_CAS = 2

STALE_REQUEST = "stale request"


class SnapshotError(Exception):
    """The snapshot bytes are malformed, truncated or inconsistent (raised by ``restore``)."""


class Entry(NamedTuple):
    """One key as seen by readers."""

    key: str
    value: Value
    version: int       # 1 when created, +1 for each later put or successful cas
    mod_revision: int  # the revision of the last put or successful cas of this key


class _Client:
    """Dedup state of one client (few of these exist, so a small object is fine)."""

    __slots__ = ("floor", "last_revision", "results")

    def __init__(self, floor: int, last_revision: int, results: dict[int, tuple[int, int, int]]):
        self.floor = floor                  # highest ack_below seen: requests below it were answered
        self.last_revision = last_revision  # self.revision at this client's last command (LRU order)
        self.results = results              # request_id -> (kind, rev, extra), all >= floor


def _result_dict(stored: tuple[int, int, int]) -> dict:
    """The public result for a remembered ``(kind, rev, extra)``; always a new dict."""
    kind, rev, extra = stored
    if kind == _PUT:
        return {"rev": rev}
    if kind == _DELETE:
        return {"deleted": extra, "rev": rev}
    return {"ok": bool(extra), "rev": rev}


class StateMachine:
    """The dictionary plus its dedup table. Not thread-safe; one owner (the server's driver task)."""

    __slots__ = ("revision", "_entries", "_clients", "_hash_cache")

    def __init__(self) -> None:
        self.revision: int = 0
        self._entries: dict[str, tuple[Value, int, int]] = {}
        # client_id -> _Client, least recently used first. OrderedDict gives O(1) move_to_end and
        # popitem(last=False); a plain dict degrades when popped from the front over and over.
        self._clients: OrderedDict[bytes, _Client] = OrderedDict()
        # (revision, hex digest) of the last state_hash: entries change only together with the
        # revision, so the digest stays valid until the next executed write.
        self._hash_cache: tuple[int, str] | None = None

    # -------------------------------------------------------------------------------------------
    # writes

    def apply(self, command: bytes) -> tuple[tuple[bytes, int] | None, dict]:
        """Apply one decided command and return ``((client_id, request_id), result)``.

        Results: put ``{"rev": r}``; delete ``{"deleted": n, "rev": r}``; cas ``{"ok": bool, "rev": r}``;
        a stale retry ``{"error": "stale request"}``. A malformed command returns
        ``(None, {"error": "malformed command: ..."})`` and changes nothing. A duplicate of a remembered
        request returns (a copy of) its first result and changes no entry and no revision. Never
        raises on any command bytes; the caller answers whoever waits for the returned identity.
        """
        try:
            cmd = decode_command(command)
        except CommandError as exc:
            return None, {"error": f"malformed command: {exc}"}
        client_id = cmd.client_id
        request_id = cmd.request_id
        identity = (client_id, request_id)
        client = self._clients.get(client_id)
        if client is not None:
            stored = client.results.get(request_id)
            if stored is not None:
                self._touch(client_id, client, cmd.ack_below)
                return identity, _result_dict(stored)
            if request_id < client.floor:
                return identity, {"error": STALE_REQUEST}

        self.revision += 1
        rev = self.revision
        entries = self._entries
        key = cmd.key
        if cmd.op == "put":
            old = entries.get(key)
            entries[key] = (cmd.value, 1 if old is None else old[1] + 1, rev)
            stored = (_PUT, rev, 0)
        elif cmd.op == "delete":
            if cmd.prefix:
                # Sorted so the work done is the same on every replica; O(n) scan (no ordered index yet).
                doomed = sorted(k for k in entries if k.startswith(key))
                for k in doomed:
                    del entries[k]
                deleted = len(doomed)
            else:
                deleted = 0 if entries.pop(key, None) is None else 1
            stored = (_DELETE, rev, deleted)
        else:
            old = entries.get(key)
            expected = cmd.expected
            if expected is None:
                ok = old is None
            else:
                # Compare types first: "a" and b"a" are different values (and comparing str with
                # bytes warns under python -b).
                ok = old is not None and type(old[0]) is type(expected) and old[0] == expected
            if ok:
                entries[key] = (cmd.value, 1 if old is None else old[1] + 1, rev)
            stored = (_CAS, rev, 1 if ok else 0)

        if client is None:
            client = _Client(0, rev, {})
            self._clients[client_id] = client
            if len(self._clients) > CLIENTS_MAX:
                self._clients.popitem(last=False)  # the least recently used client, never the new one
        self._touch(client_id, client, cmd.ack_below)
        results = client.results
        results[request_id] = stored
        if len(results) > RESULTS_PER_CLIENT_MAX:
            oldest = min(results)
            del results[oldest]
            # Forgetting a result must not allow a second execution: a retry of it is now stale.
            client.floor = max(client.floor, oldest + 1)
        return identity, _result_dict(stored)

    def _touch(self, client_id: bytes, client: _Client, ack_below: int) -> None:
        """Record a command of ``client``: LRU position, last revision, floor and pruning."""
        self._clients.move_to_end(client_id)
        client.last_revision = self.revision
        if ack_below > client.floor:
            client.floor = ack_below
            results = client.results
            for request_id in [r for r in results if r < ack_below]:
                del results[request_id]

    # -------------------------------------------------------------------------------------------
    # reads (local; linearizability is the server's job)

    def get(self, key: str) -> Entry | None:
        """The entry for ``key``, or None if absent."""
        found = self._entries.get(key)
        return None if found is None else Entry(key, *found)

    def range(self, prefix: str = "") -> list[Entry]:
        """Every entry whose key starts with ``prefix``, in key order (an O(n) scan plus a sort)."""
        entries = self._entries
        keys = sorted(k for k in entries if k.startswith(prefix)) if prefix else sorted(entries)
        return [Entry(k, *entries[k]) for k in keys]

    def __len__(self) -> int:
        return len(self._entries)

    def clients_count(self) -> int:
        """Clients currently in the dedup table (for status and tests)."""
        return len(self._clients)

    def remembered(self, client_id: bytes) -> tuple[int, list[int]] | None:
        """``(floor, sorted remembered request ids)`` of a client, or None if it is not in the table."""
        client = self._clients.get(client_id)
        if client is None:
            return None
        return client.floor, sorted(client.results)

    # -------------------------------------------------------------------------------------------
    # hashing and snapshots

    def state_hash(self) -> str:
        """Hex SHA-256 over the revision and every (key, value, version, mod_revision) in key order.

        The dedup table is not included: two replicas with equal hashes hold the same data, and a
        model dictionary can be compared with it. Each entry is hashed as its own CBOR array, so the
        input is canonical (an encoding of the sorted list) regardless of how it is fed to the hash.

        Cost: O(n log n), about 2 s for a million keys, but cached until the next executed write.
        """
        cached = self._hash_cache
        if cached is not None and cached[0] == self.revision:
            return cached[1]
        digest = hashlib.sha256()
        entries = self._entries
        digest.update(cbor2.dumps(["kvstore-state", SNAPSHOT_FORMAT, self.revision, len(entries)]))
        dumps = cbor2.dumps
        update = digest.update
        for key in sorted(entries):
            value, version, mod_revision = entries[key]
            update(dumps([key, value, version, mod_revision]))
        self._hash_cache = (self.revision, digest.hexdigest())
        return self._hash_cache[1]

    def snapshot(self) -> bytes:
        """The whole state as CBOR bytes, for ``restore``.

        Layout: a map ``{"format": 1, "revision": r, "entries": [k, v, version, mod_revision, ...]
        (flat, key order), "clients": [[client_id, floor, last_revision, [request_id, kind, rev,
        extra, ...]], ...] (least recently used first, request ids ascending)}``. Flat lists keep the
        encoding fast (one ``cbor2.dumps``) and the memory overhead at one pointer per field. Equal
        command histories give byte-identical snapshots.
        """
        entries = self._entries
        flat: list = []
        extend = flat.extend
        for key in sorted(entries):
            value, version, mod_revision = entries[key]
            extend((key, value, version, mod_revision))
        clients = []
        for client_id, client in self._clients.items():
            results: list = []
            for request_id in sorted(client.results):
                results.append(request_id)
                results.extend(client.results[request_id])
            clients.append([client_id, client.floor, client.last_revision, results])
        return cbor2.dumps({"format": SNAPSHOT_FORMAT, "revision": self.revision,
                            "entries": flat, "clients": clients})

    @classmethod
    def restore(cls, data: bytes) -> "StateMachine":
        """Rebuild a state machine from ``snapshot()`` bytes.

        Validates everything (types, ranges, key order, dedup table consistency, no trailing bytes)
        and raises ``SnapshotError`` with a message naming the problem on anything malformed or
        truncated; never another exception for bad bytes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SnapshotError(f"snapshot must be bytes, not {type(data).__name__}")
        data = bytes(data)
        stream = io.BytesIO(data)
        try:
            top = cbor2.CBORDecoder(stream).decode()
        except Exception as exc:  # noqa: BLE001 -- any decode failure means the bytes are bad
            raise SnapshotError(f"snapshot is not valid CBOR ({type(exc).__name__}: {exc})") from None
        if stream.tell() != len(data):
            raise SnapshotError(f"snapshot has {len(data) - stream.tell()} trailing bytes")
        if type(top) is not dict or set(top) != {"format", "revision", "entries", "clients"}:
            raise SnapshotError("snapshot must be a map with keys format, revision, entries, clients")
        if type(top["format"]) is not int or top["format"] != SNAPSHOT_FORMAT:
            raise SnapshotError(f"unknown snapshot format {top['format']!r} (expected {SNAPSHOT_FORMAT})")
        revision = top["revision"]
        if type(revision) is not int or revision < 0:
            raise SnapshotError("snapshot revision must be a non-negative int")
        machine = cls()
        machine.revision = revision
        machine._entries = _restore_entries(top["entries"], revision)
        machine._clients = _restore_clients(top["clients"], revision)
        return machine


def _restore_entries(flat: object, revision: int) -> dict[str, tuple[Value, int, int]]:
    """Validate the flat entry list of a snapshot and build the entries dict (SnapshotError if bad)."""
    if type(flat) is not list or len(flat) % 4:
        raise SnapshotError("snapshot entries must be a flat list of (key, value, version, mod_revision)")
    entries: dict[str, tuple[Value, int, int]] = {}
    previous = None
    # UTF-8 uses at most 4 bytes per character, so only long strings need the (copying) encode.
    key_chars_safe = KEY_BYTES_MAX // 4
    value_chars_safe = VALUE_BYTES_MAX // 4
    for i in range(0, len(flat), 4):
        key, value, version, mod_revision = flat[i], flat[i + 1], flat[i + 2], flat[i + 3]
        where = f"snapshot entry {i // 4}"
        if type(key) is not str or not key:
            raise SnapshotError(f"{where}: key must be a non-empty str")
        if len(key) > key_chars_safe and len(key.encode("utf-8")) > KEY_BYTES_MAX:
            raise SnapshotError(f"{where}: key longer than {KEY_BYTES_MAX} bytes")
        if previous is not None and not key > previous:
            raise SnapshotError(f"{where}: keys not in strictly increasing order")
        previous = key
        value_type = type(value)
        if value_type is bytes:
            if len(value) > VALUE_BYTES_MAX:
                raise SnapshotError(f"{where}: value longer than {VALUE_BYTES_MAX} bytes")
        elif value_type is str:
            if len(value) > value_chars_safe and len(value.encode("utf-8")) > VALUE_BYTES_MAX:
                raise SnapshotError(f"{where}: value longer than {VALUE_BYTES_MAX} bytes")
        else:
            raise SnapshotError(f"{where}: value must be str or bytes")
        # Each version step happened at its own revision, so 1 <= version <= mod_revision <= revision.
        if type(version) is not int or type(mod_revision) is not int \
                or not 1 <= version <= mod_revision <= revision:
            raise SnapshotError(f"{where}: need ints with 1 <= version <= mod_revision <= revision")
        entries[key] = (value, version, mod_revision)
    return entries


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
