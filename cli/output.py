"""Output formats of ``kv``: simple (etcdctl-like lines), json (readable), table (plain aligned text).

JSON keeps UTF-8 text as strings; a binary value is base64-encoded and flagged, e.g.
``{"key": "k", "value": "aGk=", "value_encoding": "base64"}``. Tables are plain text with no colours
or box drawing, so they paste and pipe cleanly.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any


class OutputFormat(str, enum.Enum):
    simple = "simple"
    json = "json"
    table = "table"


MISSING = "-"


def value_fields(value: str | bytes, name: str = "value") -> dict[str, Any]:
    """JSON fields for one value: text as is, bytes as base64 with ``<name>_encoding``."""
    if isinstance(value, bytes):
        return {name: _b64(value), f"{name}_encoding": "base64"}
    return {name: value}


def _b64(data: bytes) -> str:
    import binascii  # (base64 costs more to import, for the same function)

    return binascii.b2a_base64(data, newline=False).decode("ascii")


def jsonable(value: Any) -> Any:
    """Make a status-like structure JSON-safe (bytes -> base64 text, tuples -> lists, keys -> str)."""
    if isinstance(value, bytes):
        return "base64:" + _b64(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class OutputFailed(Exception):
    """Standard output cannot be written: closed before ``kv`` started (``kv get k >&-``) or failing
    (``kv status >/dev/full``). Reported as one line, exit 1 (``kv_cli.common.reporting_errors``). A
    reader that went away (``BrokenPipeError``) is not this: that one exits 1 without a word, as click does."""


def echo(message: str | bytes = "", *, err: bool = False, nl: bool = True) -> None:
    """Print ``message`` and a newline to stdout (stderr with ``err``): text as text, bytes unchanged on
    the binary stream. As ``typer.echo``, minus its stripping of ANSI escape sequences when the output
    is not a terminal: a value is printed exactly as stored. Unlike it, a closed or failing stdout is an
    error (``OutputFailed``), not silence; a failing stderr is ignored (there is nowhere left to say so)."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # Python's stand-in for a descriptor closed at start (kv get k >&-)
        if err:
            return
        raise OutputFailed("cannot write the output: standard output is closed")
    data = (bytes(message) if isinstance(message, (bytes, bytearray)) else message.encode(
        stream.encoding or "utf-8", stream.errors or "strict")) + (b"\n" if nl else b"")
    try:
        _write(stream, data)
    except BrokenPipeError:
        if not err:
            raise
    except OSError as exc:
        if not err:
            raise OutputFailed(f"cannot write the output: {exc.strerror or exc}") from None


def _write(stream: Any, data: bytes) -> None:
    stream.flush()  # what was printed before comes first
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's captured stream)
        fd = -1
    if fd < 0:
        binary = stream.buffer
        binary.write(data)
        binary.flush()
        return
    # Straight to the descriptor, to the last byte: CPython's buffered stdout, when a reader closes the
    # pipe in the middle of a large write (kv get big | head -c1), sometimes takes the partial write
    # and drops the rest without an error (exit 0 with the output cut); os.write raises BrokenPipeError.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def print_json(data: Any) -> None:
    import json

    echo(json.dumps(data, indent=2, ensure_ascii=False))


def cell(value: Any) -> str:
    """One table cell: printable, single-line text."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + _b64(value)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(cell(v) for v in value) + ")"
    text = str(value)
    if text.isprintable():
        return text
    # escape newlines, tabs and other control characters so each row stays one line
    return text.encode("unicode_escape").decode("ascii")


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: East Asian wide and fullwidth characters (CJK, most emoji)
    take two, combining marks none, the rest one. (len() counts characters, and misaligned a table of
    CJK keys.) Plain ASCII, the common case, is measured without looking at each character."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Plain aligned text: a header line, a dashes line, one line per row; columns aligned by display
    width."""
    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [display_width(h) for h in headers]
    for row in text_rows:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], display_width(text))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c + " " * (w - display_width(c)) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    echo(render_table(headers, rows))


def echo_value(value: str | bytes) -> None:
    """Print a value in simple format: text as a line, bytes raw (plus a newline), like etcdctl."""
    echo(value)
