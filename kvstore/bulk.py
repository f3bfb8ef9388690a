"""Bulk load and dump: JSON lines into and out of the store (``kv load FILE``, ``kv dump``).

Theory of operation
-------------------
**The format.** One JSON object per line, UTF-8 ("JSON lines")::

    {"key": "user/1", "value": "Ada"}
    {"key": "blob/7", "value": "AAEC/w==", "value_encoding": "base64"}

Keys are text: the store's keys are Unicode strings of 1 to ``KEY_BYTES_MAX`` UTF-8 bytes, so a key
needs no encoding. A value is text, or bytes written as base64 with ``"value_encoding": "base64"``
(the fields ``kv get -w json`` prints). ``dump`` writes one line per key, in key order, with
``json.dumps(..., ensure_ascii=False)``: dumping, loading into an empty cluster and dumping again gives
the same bytes, and a text value never comes back as bytes or the other way round.

``load`` refuses anything else and names the line (``BulkInputError``): a line that is not UTF-8 or
not JSON, not an object, a field given twice, a missing or empty key, a missing value, a value that
is not a string, an unknown field (a misspelt ``value_encoding`` would otherwise store base64 text as
the value), bad base64, a key or a value over the store's limits. Blank lines are skipped.

**load.** The input is read in ``READ_BYTES`` pieces in a worker thread (a slow pipe never stalls the
client's tasks) and parsed line by line; each put goes out with ``AsyncClient.submit_put``: no task
waits per request, and at most ``in_flight`` puts are outstanding on the one connection, holding
``IN_FLIGHT_BYTES_MAX`` of keys and values at most (one put more when none is out): a count alone let
256 values of 1 MiB go out at once, more than the cluster writes within a put's timeout, and the load
of a dump with large values failed (QA). Two puts of
the same key are never in flight together: a put retried after a leader change could otherwise land
after a later line's put of that key, and the last line of a key must win.

The first bad line or failed put stops the sending. The puts already sent are waited for; then
``BulkError`` says what stopped the load, at which line, and how many lines were written
(acknowledged) before it. Nothing after the stopping point was sent, except puts already in flight,
whose outcomes are counted too. A put is idempotent, so a load that stopped can be run again from the
line it names.

**dump.** Consistent at one slot: it begins a backup session on the leader (``kvstore.backup``: a
read barrier, then a copy-on-write frozen view of the state machine) and pulls the snapshot bytes one
chunk (1 MiB) at a time, decoding the entries as they arrive (``SnapshotEntries``), so neither side
holds more than a chunk and the dump never stops the cluster's writes. Every write acknowledged before
the dump began is in it, later ones are not. The last answer carries the length and SHA-256 of all
the bytes, checked as ``kv snapshot save`` checks them, and the entries decoded must be as many as the
leader announced. On a TLS cluster with an ACL a backup session needs the ``readwrite`` permission.
The leader drops a session nobody asked anything of for 30 s: a consumer of the output that stops
reading that long ends the dump with an error.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import trio

from .commands import KEY_BYTES_MAX, VALUE_BYTES_MAX
from .frames import BACKUP_END_OFFSET as END_OFFSET
from .statemachine import _unpack

READ_BYTES = 1 << 20
"""Bytes read from the input at a time."""
LINE_BYTES_MAX = 6 * (KEY_BYTES_MAX + VALUE_BYTES_MAX) + 1024
"""The longest line ``load`` reads: the largest key and value with every character escaped (``\\u00XX``)."""
TOO_LONG = (f"longer than {LINE_BYTES_MAX} bytes, the most a key and a value within the store's limits take "
            "with every character escaped")
IN_FLIGHT_DEFAULT = 256
IN_FLIGHT_BYTES_MAX = 4 << 20
"""Bytes of keys and values ``load`` keeps in flight at most (see the module docstring)."""
PROGRESS_SECONDS = 0.2
FIELDS = ("key", "value", "value_encoding")
SNAPSHOT_FORMATS = (2, 3)
"""Snapshot layouts ``dump`` decodes (``kvstore.statemachine.FrozenState.chunks``: entries as packed bytes)."""


class BulkInputError(ValueError):
    """Line ``line`` of the input is not a record ``load`` accepts."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


class BulkError(Exception):
    """A load or dump that stopped; the message says where, why and what was written."""


# ---------------------------------------------------------------------------------------------------
# The format


def format_record(key: str, value: str | bytes) -> bytes:
    """One JSON line (with its newline) for ``key`` and ``value``, as ``dump`` writes it."""
    if type(value) is bytes:
        record: dict[str, str] = {"key": key, "value": base64.b64encode(value).decode("ascii"),
                                  "value_encoding": "base64"}
    else:
        record = {"key": key, "value": str(value)}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


# The common line, as dump writes it and most tools would: an object of exactly a text key and a text
# value, neither with an escape or a control character. Such a line means exactly the two strings
# between the quotes, so it skips the JSON decoder (a third of the CPU per line); any other line,
# valid or not, goes through json.loads and the checks below.
_PLAIN_LINE = re.compile(r'\{"key": ?"([^"\\\x00-\x1f]+)", ?"value": ?"([^"\\\x00-\x1f]*)"\}[ \t\r]*')


class _DuplicateField(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateField(name)
            seen.add(name)
    return obj


def parse_line(line: bytes, number: int) -> tuple[str, str | bytes] | None:
    """The ``(key, value)`` of input line ``number``; None for a blank line.

    Raises ``BulkInputError`` (naming the line and the problem) for anything else than a record of
    the format in the module docstring within the store's limits.
    """
    if number == 1 and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]  # a UTF-8 byte order mark, as some editors write one: not part of the record
    if not line.strip():
        return None
    if len(line) > LINE_BYTES_MAX:
        raise BulkInputError(number, TOO_LONG)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BulkInputError(number, f"not UTF-8 (byte {exc.start + 1})") from None
    plain = _PLAIN_LINE.fullmatch(text)
    if plain is not None:
        key, text_value = plain.group(1, 2)
        # (UTF-8 takes at most 4 bytes a character: only long strings need the copying encode)
        if len(key) * 4 > KEY_BYTES_MAX and len(key.encode("utf-8")) > KEY_BYTES_MAX:
            raise BulkInputError(number, f"key is {len(key.encode('utf-8'))} bytes, more than the store's "
                                         f"limit of {KEY_BYTES_MAX}")
        if len(text_value) * 4 > VALUE_BYTES_MAX and len(text_value.encode("utf-8")) > VALUE_BYTES_MAX:
            raise BulkInputError(number, f"value is {len(text_value.encode('utf-8'))} bytes, more than the "
                                         f"store's limit of {VALUE_BYTES_MAX}")
        return key, text_value
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateField as exc:
        raise BulkInputError(number, f"the field {str(exc)!r} appears twice") from None
    except json.JSONDecodeError as exc:
        raise BulkInputError(number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise BulkInputError(number, f"not valid JSON ({exc})") from None
    if type(obj) is not dict:
        raise BulkInputError(number, 'expected a JSON object like {"key": "k", "value": "v"}, not '
                                     f"a {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise BulkInputError(number, f"unknown field {unknown[0]!r} (the fields are key, value and value_encoding)")
    key = obj.get("key")
    if key is None:
        raise BulkInputError(number, 'missing "key"')
    if type(key) is not str:
        raise BulkInputError(number, f'"key" must be a string, not {_json_type(key)}')
    if not key:
        raise BulkInputError(number, '"key" must not be empty')
    try:
        key_bytes = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BulkInputError(number, '"key" is not valid Unicode (a lone surrogate escape)') from None
    if key_bytes > KEY_BYTES_MAX:
        raise BulkInputError(number, f"key is {key_bytes} bytes, more than the store's limit of {KEY_BYTES_MAX}")
    if "value" not in obj:
        raise BulkInputError(number, 'missing "value"')
    raw = obj["value"]
    if type(raw) is not str:
        raise BulkInputError(number, f'"value" must be a string (bytes as base64 with "value_encoding": '
                                     f'"base64"), not {_json_type(raw)}')
    encoding = obj.get("value_encoding")
    value: str | bytes
    if encoding is None:
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            raise BulkInputError(number, '"value" is not valid Unicode (a lone surrogate escape)') from None
        value = raw
    elif encoding == "base64":
        try:
            value = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BulkInputError(number, f'"value" is not valid base64 ({exc})') from None
        size = len(value)
    else:
        raise BulkInputError(number, f'"value_encoding" must be "base64" (or absent for text), not {encoding!r}')
    if size > VALUE_BYTES_MAX:
        raise BulkInputError(number, f"value is {size} bytes, more than the store's limit of {VALUE_BYTES_MAX}")
    return key, value


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------------
# load


@dataclass
class LoadSummary:
    """What a load did so far; the caller may read it at any time (on Ctrl-C too)."""

    lines: int = 0  # lines read and parsed (blank ones included)
    records: int = 0  # records found (sent, unless dry_run)
    written: int = 0  # puts acknowledged
    failed: int = 0  # puts that failed
    sent_through: int = 0  # the line of the last record sent
    bytes_read: int = 0
    bytes_done: int = 0  # of the lines read whose record was written or that held none (the progress bar's)
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def keys_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "records": self.records, "written": self.written, "failed": self.failed,
                "bytes": self.bytes_read, "bytes_done": self.bytes_done, "seconds": round(self.seconds, 3),
                "keys_per_s": round(self.keys_per_s, 1)}


class _Window:
    """The puts in flight: how many, which keys, and the failures; wakes the sender when one ends."""

    def __init__(self, summary: LoadSummary) -> None:
        self.summary = summary
        self.count = 0
        self.bytes = 0  # of the keys and values in flight
        self.keys: set[str] = set()
        self.failures: list[tuple[int, str, BaseException]] = []  # (line, key, error)
        self.waiting = False
        self.moved = trio.Event()

    def done_callback(self, number: int, key: str, size: int, line_bytes: int) -> Callable[[object], None]:
        def done(outcome: object) -> None:
            self.count -= 1
            self.bytes -= size
            self.keys.discard(key)
            if isinstance(outcome, BaseException):
                self.failures.append((number, key, outcome))
                self.summary.failed += 1
            else:
                self.summary.written += 1
                self.summary.bytes_done += line_bytes
            if self.waiting:
                self.waiting = False
                self.moved.set()
        return done

    async def wait(self) -> None:
        """Until a put in flight ends."""
        self.waiting = True
        await self.moved.wait()
        self.moved = trio.Event()


async def load(client: Any, source: BinaryIO, *, in_flight: int = IN_FLIGHT_DEFAULT,
               summary: LoadSummary | None = None, progress: Callable[[LoadSummary], None] | None = None,
               name: str = "FILE") -> LoadSummary:
    """Put every record of ``source`` (a binary file of JSON lines) through ``client`` (an
    ``AsyncClient``), at most ``in_flight`` at a time. ``client`` None checks the input only.

    Returns the summary when every record was written. Raises ``BulkError`` when a line is bad or a
    put failed, after the puts in flight ended, with a message that names the line and says how many
    were written; ``summary`` (if given) holds the counts as they go. ``progress(summary)`` is called
    every ``PROGRESS_SECONDS`` and at the end. ``name``: the input's name in the command the messages
    suggest for going on from a line (``tail -n +N NAME | kv load -``).
    """
    if in_flight < 1:
        raise ValueError("in_flight must be at least 1")
    summary = summary if summary is not None else LoadSummary()
    summary.started = time.monotonic()
    window = _Window(summary)
    input_error: BulkInputError | None = None
    read_error: OSError | None = None
    submit = client.submit_put if client is not None else None

    async def report() -> None:
        while True:
            await trio.sleep(PROGRESS_SECONDS)
            summary.seconds = time.monotonic() - summary.started
            if progress is not None:
                progress(summary)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        carry = b""
        number = 0
        try:
            while not window.failures:
                try:
                    data = await trio.to_thread.run_sync(source.read, READ_BYTES)
                except OSError as exc:
                    read_error = exc
                    break
                if not data:
                    lines = [carry] if carry else []
                    carry = b""
                else:
                    summary.bytes_read += len(data)
                    lines = (carry + data).split(b"\n")
                    carry = lines.pop()
                for line in lines:
                    number += 1
                    record = parse_line(line, number)
                    summary.lines = number
                    line_bytes = len(line) + 1  # (the last line may lack its newline: the bar ends at 100 % anyway)
                    if record is None:
                        summary.bytes_done += line_bytes
                        continue
                    summary.records += 1
                    if submit is None:
                        summary.bytes_done += line_bytes
                        continue
                    key, value = record
                    size = len(key) + len(value)
                    while (window.count >= in_flight or key in window.keys
                           or (window.count and window.bytes + size > IN_FLIGHT_BYTES_MAX)):
                        if window.failures:
                            break
                        await window.wait()
                    if window.failures:
                        summary.records -= 1  # not sent
                        break
                    window.count += 1
                    window.bytes += size
                    window.keys.add(key)
                    try:
                        submit(key, value, window.done_callback(number, key, size, line_bytes))
                    except Exception as exc:  # noqa: BLE001 - refused before it was sent (too large)
                        window.count -= 1
                        window.bytes -= size
                        window.keys.discard(key)
                        window.failures.append((number, key, exc))
                        summary.failed += 1
                        break
                    summary.sent_through = number
                if not data:
                    break
                if len(carry) > LINE_BYTES_MAX and not window.failures:  # (the lines before it went out)
                    raise BulkInputError(number + 1, TOO_LONG)
        except BulkInputError as exc:
            input_error = exc
        while window.count:  # bounded: every put in flight ends by the client's timeout
            await window.wait()
        nursery.cancel_scope.cancel()
    summary.seconds = time.monotonic() - summary.started
    if progress is not None:
        progress(summary)
    if window.failures:
        raise BulkError(_failure_message(window.failures, summary, name))
    if input_error is not None:
        raise BulkError(f"{input_error}; {_written_before(summary, input_error.line, name, dry=client is None)}")
    if read_error is not None:
        raise BulkError(f"cannot read the input after line {summary.lines}: {read_error.strerror or read_error}; "
                        f"{records_text(summary.written)} {'was' if summary.written == 1 else 'were'} written, "
                        f"up to line {summary.lines}")
    return summary


def records_text(count: int) -> str:
    """``1 record``, ``2 records``."""
    return f"{count} record{'' if count == 1 else 's'}"


def _written_before(summary: LoadSummary, line: int, name: str, *, dry: bool) -> str:
    if dry:
        before = (f"the {records_text(summary.records)} before it {'is' if summary.records == 1 else 'are'} valid"
                  if summary.records else "no record before it")
        return f"checked only (nothing written); {before}"
    if line <= 1:
        return "nothing was written; fix the line and load again"
    was = "was" if summary.written == 1 else "were"
    lines = "line 1" if line == 2 else f"lines 1 to {line - 1}"
    return (f"{records_text(summary.written)} ({lines}) {was} written before it, nothing after it; "
            f"fix the line and load from it again: tail -n +{line} {name} | kv load -")


def _failure_message(failures: list[tuple[int, str, BaseException]], summary: LoadSummary, name: str) -> str:
    failures = sorted(failures, key=lambda f: f[0])
    line, key, error = failures[0]
    text = str(error) or type(error).__name__
    unknown = sum(1 for f in failures if getattr(f[2], "outcome_unknown", False))
    more = ""
    if len(failures) > 1:
        shown = ", ".join(str(f[0]) for f in failures[1:6])
        more = f"; {len(failures) - 1} more failed (lines {shown}{', ...' if len(failures) > 6 else ''})"
    note = ""
    if unknown:
        note = f"; {unknown} of the failed puts may or may not have been applied"
    return (f"line {line} (key {key!r}): the put failed: {text}{more}{note}; {summary.written} of the "
            f"{summary.records} records sent were written, and nothing after line {summary.sent_through} was sent; "
            f"a put is idempotent, so load again from line {line}: tail -n +{line} {name} | kv load -")


# ---------------------------------------------------------------------------------------------------
# dump


class SnapshotEntries:
    """Decodes the entries of state machine snapshot bytes as they arrive, piece by piece.

    The layout is ``FrozenState.chunks``'s (formats 2 and 3): a CBOR map whose first three fields are
    ``format``, ``revision`` and ``entries``, the last a flat array ``[key, packed entry, ...]`` in key
    order. ``feed`` returns the ``(key, value)`` pairs completed by the bytes given; what follows the
    entries (the dedup table, membership changes) is skipped. ``BulkError`` for anything else.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.format: int | None = None
        self.revision: int | None = None
        self.count: int | None = None  # entries announced
        self.decoded = 0

    @property
    def finished(self) -> bool:
        return self.count is not None and self.decoded == self.count

    def feed(self, data: bytes) -> list[tuple[str, str | bytes]]:
        if self.finished:
            return []
        buffer = self._buffer
        buffer += data
        pos = 0
        if self.count is None:
            header = self._header(buffer)
            if header is None:
                if len(buffer) > 4096:
                    raise BulkError("the leader's snapshot does not begin as this kv dump expects")
                return []
            pos = header
        out: list[tuple[str, str | bytes]] = []
        count = self.count
        assert count is not None
        end = len(buffer)
        view = memoryview(buffer)
        try:
            while self.decoded < count:
                key_head = _cbor_head(buffer, pos)
                if key_head is None:
                    break
                major, length, at = key_head
                if major != 3:
                    raise BulkError(f"entry {self.decoded} of the leader's snapshot has no text key")
                if at + length > end:
                    break
                value_head = _cbor_head(buffer, at + length)
                if value_head is None:
                    break
                vmajor, vlength, vat = value_head
                if vmajor != 2:
                    raise BulkError(f"entry {self.decoded} of the leader's snapshot is not a packed entry")
                if vat + vlength > end:
                    break
                key = str(view[at:at + length], "utf-8")
                value = _unpack(bytes(view[vat:vat + vlength]))[0]
                out.append((key, value))
                self.decoded += 1
                pos = vat + vlength
        finally:
            view.release()
        if self.decoded == count:
            buffer.clear()  # the rest is the dedup table and the changes: not needed
        else:
            del buffer[:pos]
        return out

    def _header(self, buffer: bytearray) -> int | None:
        """Parse ``{format, revision, entries: [`` from the start; the position after, None if incomplete."""
        head = _cbor_head(buffer, 0)
        if head is None:
            return None
        if head[0] != 5:
            raise BulkError("the leader's snapshot is not a CBOR map")
        pos = head[2]
        fields: dict[str, int] = {}
        for name in ("format", "revision", "entries"):
            text = _cbor_head(buffer, pos)
            if text is None or text[2] + text[1] > len(buffer):
                return None
            if text[0] != 3 or bytes(buffer[text[2]:text[2] + text[1]]) != name.encode():
                raise BulkError(f"the leader's snapshot lacks its {name!r} field where this kv dump expects it")
            item = _cbor_head(buffer, text[2] + text[1])
            if item is None:
                return None
            major = item[0]
            if major != (4 if name == "entries" else 0):
                raise BulkError(f"the leader's snapshot has a malformed {name!r} field")
            fields[name] = item[1]
            pos = item[2]
            if name == "format" and item[1] not in SNAPSHOT_FORMATS:
                raise BulkError(f"the leader sends snapshot format {item[1]}; this kv dump reads formats "
                                f"{', '.join(map(str, SNAPSHOT_FORMATS))} (use a kv of the servers' version)")
        if fields["entries"] % 2:
            raise BulkError("the leader's snapshot has an odd entries array")
        self.format = fields["format"]
        self.revision = fields["revision"]
        self.count = fields["entries"] // 2
        return pos


def _cbor_head(buffer: bytearray | bytes, pos: int) -> tuple[int, int, int] | None:
    """``(major type, argument, position after the head)`` of the CBOR item at ``pos``; None if the
    head is not complete yet. BulkError for an indefinite length (the snapshot never uses one)."""
    if pos >= len(buffer):
        return None
    initial = buffer[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info > 27:
        raise BulkError("the leader's snapshot uses a CBOR encoding this kv dump does not read")
    size = 1 << (info - 24)
    if pos + 1 + size > len(buffer):
        return None
    return major, int.from_bytes(buffer[pos + 1:pos + 1 + size], "big"), pos + 1 + size


@dataclass
class DumpSummary:
    """What a dump wrote; ``slot`` and ``revision`` are where the store was frozen for it."""

    keys: int = 0  # records written
    keys_total: int = 0  # keys in the store at the freeze (the prefix filter may write fewer)
    slot: int = 0
    revision: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "keys_total": self.keys_total, "slot": self.slot, "revision": self.revision,
                "bytes": self.bytes_written, "seconds": round(self.seconds, 3),
                "keys_per_s": round(self.keys_per_s, 1)}


async def dump(client: Any, write: Callable[[bytes], Awaitable[object]], *, prefix: str = "",
               summary: DumpSummary | None = None,
               progress: Callable[[DumpSummary, int], None] | None = None) -> DumpSummary:
    """Write every entry of the store (those whose key starts with ``prefix``) as JSON lines, in key
    order, through ``await write(data)``, consistent at one slot (see the module docstring).

    ``client`` is an ``AsyncClient``; its errors (``Unavailable``, ``RequestError``: for instance not
    allowed by the ACL) reach the caller as they are. ``BulkError`` when the leader's answers do not
    add up. ``progress(summary, entries_decoded)`` is called after each chunk.
    """
    summary = summary if summary is not None else DumpSummary()
    summary.started = time.monotonic()
    begin = await client.backup(0, 0)
    session = begin.get("session")
    if type(session) is not int or session < 1:
        raise BulkError(f"the leader did not begin a dump (it answered {sorted(begin)})")
    for name in ("slot", "revision", "keys"):
        if type(begin.get(name)) is not int:
            raise BulkError(f"the leader's answer lacks the {name!r} of the dump")
    summary.slot, summary.revision, summary.keys_total = begin["slot"], begin["revision"], begin["keys"]
    try:
        await _dump_session(client, write, prefix, summary, progress, session)
    except BaseException:
        # The node would hold the session (and its frozen state) until it idled out: end it now.
        with trio.move_on_after(2) as scope:
            scope.shield = True  # (also when we are being cancelled: Ctrl-C)
            try:
                await client.backup(session, END_OFFSET)
            except Exception:  # noqa: BLE001 - best effort: the node drops it later anyway
                pass
        raise
    return summary


async def _dump_session(client: Any, write: Callable[[bytes], Awaitable[object]], prefix: str, summary: DumpSummary,
                        progress: Callable[[DumpSummary, int], None] | None, session: int) -> None:
    """``dump`` after the leader began ``session``."""
    entries = SnapshotEntries()
    received = hashlib.sha256()
    offset = 0
    while True:  # bounded: every answer moves the offset on, or is the last (else BulkError)
        result = await client.backup(session, offset)
        data, done = result.get("data"), result.get("done")
        if result.get("offset") != offset or type(data) is not bytes or type(done) is not bool:
            raise BulkError(f"the leader's answer for byte {offset} of the dump is malformed")
        if data:
            received.update(data)
            offset += len(data)
            lines = [format_record(key, value) for key, value in entries.feed(data) if key.startswith(prefix)]
            if lines:
                chunk = b"".join(lines)
                await write(chunk)
                summary.keys += len(lines)
                summary.bytes_written += len(chunk)
        summary.seconds = time.monotonic() - summary.started
        if progress is not None:
            progress(summary, entries.decoded)
        if done:
            break
        if not data:
            raise BulkError(f"the leader sent no bytes at offset {offset} and did not say done")
    if result.get("length") != offset or result.get("sha256") != received.hexdigest():
        raise BulkError(f"the dump arrived damaged: {offset} bytes with SHA-256 {received.hexdigest()[:16]}, the "
                        f"leader sent {result.get('length')} with {str(result.get('sha256'))[:16]}")
    if not entries.finished or entries.decoded != summary.keys_total or entries.revision != summary.revision:
        raise BulkError(f"the dump holds {entries.decoded} entries at revision {entries.revision}, the leader "
                        f"announced {summary.keys_total} at revision {summary.revision}")


__all__ = ["BulkError", "BulkInputError", "DumpSummary", "LoadSummary", "SnapshotEntries", "dump", "format_record",
           "load", "parse_line"]
