"""Write commands: the opaque bytes that the Paxos core carries from the leader to every replica.

Theory of operation
-------------------
A command is one definite-length CBOR array (cbor2), compact on purpose because every byte is
persisted and sent to every replica::

    put:    [1, client_id, request_id, ack_below, key, value]
    delete: [2, client_id, request_id, ack_below, key, prefix]
    cas:    [3, client_id, request_id, ack_below, key, expected, new]

The first element, the op code, also versions the format: a new kind of command gets a new code and
old replicas reject it as malformed instead of misreading it.

One more command is not a write: ``[16, name, stamp]`` switches a feature of the state machine on
(``encode_feature``; the leader proposes it once every member says it has the feature, see
``kvstore.members``). ``decode_command`` refuses it like any unknown op code; the state machine asks
``decode_feature`` then. A replica older than the feature takes it for a malformed command and changes
nothing, which is why it is proposed only when no such replica is left. ``[17, stamp]`` (``encode_clock``)
is the leader's clock, which the state machine checks new clients' stamps against once client expiry
is on (``kvstore.statemachine``): proposed only then, before a write of a client new to the leader when
the last one is more than a second old.

``(client_id, request_id)`` names the request for exactly-once execution; ``ack_below`` says that
every request of this client below it was answered, so the state machine may forget those results.
A request cannot be answered before it is sent, so ``ack_below <= request_id`` always holds.

Two error families (STYLE.md section 5):

* ``encode_*`` are called by our own server with values a client sent (``encode_write`` turns a
  wire write request into command bytes with them). Bad values (a key too long, a value of the wrong
  type) raise ``ValueError`` with a clear message, so the server can refuse the request before it is
  proposed.
* ``decode_command`` reads bytes that came out of the log. They may be damaged or written by a buggy or
  hostile peer, so it validates everything and raises ``CommandError`` (and nothing else). cbor2
  happily turns tags into datetimes, Decimals, UUIDs and so on, so the decoded types are never
  trusted. As the last check the validated fields are encoded again and must give back exactly the
  input bytes: only the canonical encoding that ``encode_*`` produce is accepted (no trailing bytes, no
  indefinite lengths, no tags, no non-minimal integers). That keeps "same bytes, same command" true on
  every replica.

This module does no I/O and uses no clock or randomness.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import cbor2

from . import wire

# (defined there so the clients check them without us; "X as X": re-exported as commands.X too)
from .limits import KEY_BYTES_MAX as KEY_BYTES_MAX
from .limits import VALUE_BYTES_MAX as VALUE_BYTES_MAX

CLIENT_ID_BYTES_MAX = 64
"""Largest client id, in bytes; a client id has at least one byte."""
INT_MAX = 2**64 - 1
"""Largest request_id / ack_below: CBOR's unsigned integer range, so no bignum tags are ever needed."""

OP_PUT = 1
OP_DELETE = 2
OP_CAS = 3
OP_FEATURE = 16  # [16, name, stamp]: not a write (see the module docstring)
OP_CLOCK = 17  # [17, stamp]: not a write either (see the module docstring)
_OP_NAMES: dict[int, Literal["put", "delete", "cas"]] = {OP_PUT: "put", OP_DELETE: "delete", OP_CAS: "cas"}
# Element count of each command's array, including the op code.
_OP_LENGTHS = {OP_PUT: 6, OP_DELETE: 6, OP_CAS: 7}

Value = str | bytes


class CommandError(Exception):
    """The bytes are not a well-formed command (raised by ``decode_command`` only)."""


class Command(NamedTuple):
    """One decoded, validated write command (immutable).

    ``value`` is the value to store for put, the new value for cas, and None for delete.
    ``expected`` is only meaningful for cas (None: swap only if the key is absent).
    ``prefix`` is only meaningful for delete (True: delete every key that starts with ``key``).

    A NamedTuple rather than a frozen dataclass: every follower builds one per command it applies,
    and a frozen dataclass costs ~2 us to build (one ``object.__setattr__`` per field), a tuple ~0.5.
    """

    op: Literal["put", "delete", "cas"]
    client_id: bytes
    request_id: int
    ack_below: int
    key: str
    value: Value | None = None
    expected: Value | None = None
    prefix: bool = False


# -----------------------------------------------------------------------------------------------
# validation shared by encode (ValueError) and decode (CommandError)

def _check_ids(client_id: object, request_id: object, ack_below: object) -> str | None:
    """Return a description of what is wrong with the request identity, or None if it is valid."""
    if type(client_id) is not bytes:
        return f"client_id must be bytes, not {type(client_id).__name__}"
    if not 1 <= len(client_id) <= CLIENT_ID_BYTES_MAX:
        return f"client_id must have 1 to {CLIENT_ID_BYTES_MAX} bytes, not {len(client_id)}"
    # type(...) is int rejects bool (a subclass of int) and int subclasses alike.
    if type(request_id) is not int or not 0 <= request_id <= INT_MAX:
        return "request_id must be an int in [0, 2**64)"
    if type(ack_below) is not int or not 0 <= ack_below <= INT_MAX:
        return "ack_below must be an int in [0, 2**64)"
    if ack_below > request_id:
        # The request itself is not answered yet, so the client cannot have acknowledged it.
        return f"ack_below ({ack_below}) must not exceed request_id ({request_id})"
    return None


def _utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8; raises UnicodeEncodeError on lone surrogates."""
    return len(text.encode("utf-8"))


def _check_key(key: object, *, allow_empty: bool = False) -> str | None:
    """Return a description of what is wrong with ``key``, or None if it is valid."""
    if type(key) is not str:
        return f"key must be str, not {type(key).__name__}"
    if not key and not allow_empty:
        return "key must not be empty"
    try:
        size = _utf8_len(key)
    except UnicodeEncodeError:
        return "key is not valid Unicode (lone surrogate)"
    if size > KEY_BYTES_MAX:
        return f"key has {size} bytes in UTF-8, more than {KEY_BYTES_MAX}"
    return None


def key_problem(key: object) -> str | None:
    """What is wrong with ``key`` as a key to read or write (not str, empty, over ``KEY_BYTES_MAX`` bytes in
    UTF-8, a lone surrogate), or None: a ``get`` is refused for what a ``put`` would be."""
    return _check_key(key)


def prefix_problem(prefix: object) -> str | None:
    """As ``key_problem`` for the prefix of a ``list``, which may be empty (every key)."""
    return _check_key(prefix, allow_empty=True)


def _check_value(value: object, what: str) -> str | None:
    """Return a description of what is wrong with a value (str or bytes), or None if it is valid."""
    if type(value) is bytes:
        size = len(value)
    elif type(value) is str:
        try:
            # isascii() is O(1) in CPython; an ASCII str has one byte per character, so skip the copy.
            size = len(value) if value.isascii() else _utf8_len(value)
        except UnicodeEncodeError:
            return f"{what} is not valid Unicode (lone surrogate)"
    else:
        return f"{what} must be str or bytes, not {type(value).__name__}"
    if size > VALUE_BYTES_MAX:
        return f"{what} has {size} bytes, more than {VALUE_BYTES_MAX}"
    return None


def _first_error(*problems: str | None) -> str | None:
    for problem in problems:
        if problem is not None:
            return problem
    return None


def _head(n: int) -> int:
    """Bytes of the minimal CBOR head that carries ``n`` (an unsigned int, or a string's length)."""
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 0x100000000 else 9


def _dumps(items: list[object]) -> bytes:
    # Plain cbor2 defaults: definite lengths, minimal integers, text for str, bytes for bytes. The
    # decoder compares against exactly this encoding, so both sides must use this one function.
    return cbor2.dumps(items)


# -----------------------------------------------------------------------------------------------
# encode

def encode_put(client_id: bytes, request_id: int, ack_below: int, key: str, value: Value) -> bytes:
    """Encode ``put key value``. Raises ValueError if any argument is invalid."""
    if (type(client_id) is bytes and 0 < len(client_id) <= CLIENT_ID_BYTES_MAX
            and type(request_id) is int and type(ack_below) is int and 0 <= ack_below <= request_id <= INT_MAX
            and type(key) is str and key.isascii() and 0 < len(key) <= KEY_BYTES_MAX
            and ((type(value) is str and value.isascii()) or type(value) is bytes) and len(value) <= VALUE_BYTES_MAX):
        # The common case (the leader encodes every put it proposes), checked inline; the same rules
        # as the checks below, which name the problem when this does not accept outright.
        return _dumps([OP_PUT, client_id, request_id, ack_below, key, value])
    problem = _first_error(_check_ids(client_id, request_id, ack_below), _check_key(key),
                           _check_value(value, "value"))
    if problem is not None:
        raise ValueError(problem)
    return _dumps([OP_PUT, client_id, request_id, ack_below, key, value])


def encode_delete(client_id: bytes, request_id: int, ack_below: int, key: str, prefix: bool = False) -> bytes:
    """Encode ``delete key`` (or, with ``prefix=True``, delete every key starting with ``key``).

    An empty ``key`` is allowed only with ``prefix=True``, where it means every key.
    Raises ValueError if any argument is invalid.
    """
    problem = _first_error(
        _check_ids(client_id, request_id, ack_below),
        None if type(prefix) is bool else f"prefix must be bool, not {type(prefix).__name__}",
        _check_key(key, allow_empty=prefix is True),
    )
    if problem is not None:
        raise ValueError(problem)
    return _dumps([OP_DELETE, client_id, request_id, ack_below, key, prefix])


def encode_cas(client_id: bytes, request_id: int, ack_below: int, key: str, expected: Value | None,
               new: Value) -> bytes:
    """Encode ``cas key expected new``: set ``key`` to ``new`` only if its value equals ``expected``.

    ``expected=None`` means "only if the key is absent". Raises ValueError if any argument is invalid.
    """
    problem = _first_error(
        _check_ids(client_id, request_id, ack_below), _check_key(key),
        None if expected is None else _check_value(expected, "expected"),
        _check_value(new, "new value"),
    )
    if problem is not None:
        raise ValueError(problem)
    return _dumps([OP_CAS, client_id, request_id, ack_below, key, expected, new])


def encode_write(request: wire.PutRequest | wire.DeleteRequest | wire.CasRequest) -> tuple[bytes, Command]:
    """A client's write request (``wire.PutRequest``, ``DeleteRequest`` or ``CasRequest``) -> the command
    bytes to propose and the ``Command`` they decode to (the leader applies its own proposals from it
    without decoding the bytes again). Raises ValueError as ``encode_*`` do."""
    if isinstance(request, wire.PutRequest):
        data = encode_put(request.client_id, request.request_id, request.ack_below, request.key, request.value)
        return data, Command("put", request.client_id, request.request_id, request.ack_below,
                             request.key, request.value)
    if isinstance(request, wire.DeleteRequest):
        data = encode_delete(request.client_id, request.request_id, request.ack_below, request.key, request.prefix)
        return data, Command("delete", request.client_id, request.request_id, request.ack_below,
                             request.key, prefix=request.prefix)
    if isinstance(request, wire.CasRequest):
        data = encode_cas(request.client_id, request.request_id, request.ack_below, request.key,
                          request.expected, request.new)
        return data, Command("cas", request.client_id, request.request_id, request.ack_below,
                             request.key, request.new, request.expected)
    raise TypeError(f"{type(request).__name__} is not a write request")


def encode_feature(name: str, stamp: int) -> bytes:
    """The command that switches feature ``name`` (``wire.FEATURES``) on; ``stamp``: a clock reading of
    the leader, in milliseconds since the epoch (for ``client-expiry``: the horizon it starts from)."""
    if type(name) is not str or not 0 < len(name) <= 64 or type(stamp) is not int or not 0 <= stamp <= INT_MAX:
        raise ValueError(f"a feature is a short name and a stamp in [0, 2**64), not {name!r}, {stamp!r}")
    return _dumps([OP_FEATURE, name, stamp])


def encode_clock(stamp: int) -> bytes:
    """The command that tells every replica the leader's clock: ``stamp`` milliseconds since the epoch."""
    if type(stamp) is not int or not 0 <= stamp <= INT_MAX:
        raise ValueError(f"a clock stamp is an int in [0, 2**64), not {stamp!r}")
    return _dumps([OP_CLOCK, stamp])


def _small_command(data: object, head: bytes) -> list[object] | None:
    """The items of a clock or feature command: canonical CBOR starting with ``head`` (the array's head
    and the op code), else None."""
    if type(data) is not bytes or not data.startswith(head):
        return None
    try:
        items = cbor2.loads(data)
    except Exception:  # noqa: BLE001 -- not CBOR: not such a command
        return None
    return items if type(items) is list and len(items) == data[0] - 0x80 and _dumps(items) == data else None


def decode_clock(data: bytes) -> int | None:
    """The stamp of a clock command (``encode_clock``), None for any other bytes."""
    items = _small_command(data, b"\x82\x11")  # (an array of 2 and the op code)
    if items is not None and type(items[1]) is int and 0 <= items[1] <= INT_MAX:
        return items[1]
    return None


def decode_feature(data: bytes) -> tuple[str, int] | None:
    """``(name, stamp)`` of a feature command (``encode_feature``), None for any other bytes."""
    items = _small_command(data, b"\x83\x10")  # (an array of 3 and the op code)
    if (items is not None and type(items[1]) is str and 0 < len(items[1]) <= 64
            and type(items[2]) is int and 0 <= items[2] <= INT_MAX):
        return items[1], items[2]
    return None


# -----------------------------------------------------------------------------------------------
# decode

def decode_command(data: bytes) -> Command:
    """Decode and validate command bytes taken from the log.

    Returns a ``Command``. Raises ``CommandError`` (and no other exception) if ``data`` is not exactly
    the canonical encoding of a valid command. The error message is deterministic: it depends on the
    bytes only, never on the cbor2 version's wording.
    """
    if type(data) is not bytes:
        raise CommandError(f"command must be bytes, not {type(data).__name__}")
    try:
        items = cbor2.loads(data)
    except Exception:  # noqa: BLE001 -- cbor2 raises many types on garbage; all mean "not CBOR"
        raise CommandError("command is not valid CBOR") from None
    if type(items) is not list or not items:
        raise CommandError("command must be a non-empty CBOR array")
    if len(items) == 6 and type(items[0]) is int and items[0] == OP_PUT:
        # The common case, checked inline (every follower decodes every put it applies). Anything
        # this does not accept outright goes through the general checks below for its exact error.
        _, client_id, request_id, ack_below, key, value = items
        # Canonical means minimal heads and nothing else: any other encoding of these same values
        # (a longer head, an indefinite length, a tag, trailing bytes) is longer, so comparing the
        # length with the canonical one proves it without encoding the command again.
        if (type(client_id) is bytes and 0 < len(client_id) <= CLIENT_ID_BYTES_MAX
                and type(request_id) is int and type(ack_below) is int and 0 <= ack_below <= request_id <= INT_MAX
                and type(key) is str and key.isascii() and 0 < len(key) <= KEY_BYTES_MAX
                and ((type(value) is str and value.isascii()) or type(value) is bytes)
                and len(value) <= VALUE_BYTES_MAX
                and len(data) == 2 + _head(len(client_id)) + len(client_id) + _head(request_id) + _head(ack_below)
                + _head(len(key)) + len(key) + _head(len(value)) + len(value)):
            return Command("put", client_id, request_id, ack_below, key, value, None, False)
    op_code = items[0]
    if type(op_code) is not int or op_code not in _OP_NAMES:
        raise CommandError("unknown command op code")
    if len(items) != _OP_LENGTHS[op_code]:
        raise CommandError(f"{_OP_NAMES[op_code]} command must have {_OP_LENGTHS[op_code]} elements")
    client_id, request_id, ack_below, key = items[1:5]
    value = expected = None
    prefix = False
    if op_code == OP_PUT:
        value = items[5]
        problem = _first_error(_check_ids(client_id, request_id, ack_below), _check_key(key),
                               _check_value(value, "value"))
    elif op_code == OP_DELETE:
        prefix = items[5]
        problem = _first_error(
            _check_ids(client_id, request_id, ack_below),
            None if type(prefix) is bool else "prefix must be bool",
            _check_key(key, allow_empty=prefix is True),
        )
    else:
        expected, value = items[5], items[6]
        problem = _first_error(
            _check_ids(client_id, request_id, ack_below), _check_key(key),
            None if expected is None else _check_value(expected, "expected"),
            _check_value(value, "new value"),
        )
    if problem is not None:
        raise CommandError(problem)
    # Every field has a plain type now, so this encode cannot fail. Comparing bytes rejects trailing
    # data, tags (e.g. a bignum or string-reference tag that decoded to a plain int or str),
    # indefinite lengths and non-minimal heads: one command has exactly one encoding.
    if _dumps(items) != data:
        raise CommandError("command is not in canonical encoding")
    return Command(op=_OP_NAMES[op_code], client_id=client_id, request_id=request_id, ack_below=ack_below,
                   key=key, value=value, expected=expected, prefix=prefix)
