"""The store's size limits on keys and values, checked by the clients before anything is sent.

Theory of operation
-------------------
The state machine refuses a key above ``KEY_BYTES_MAX`` bytes (UTF-8) and a value above
``VALUE_BYTES_MAX`` bytes (``kvstore.commands``, which the server runs on every write). A client that
sent such a request learnt it late and in one of two forms: a value somewhat too large came back from
the leader as a ``bad_request`` error, one far too large did not fit in a frame and raised
``FrameTooLarge`` from the encoder, naming the frame and not the limit. The clients (``kvstore.client``,
``kvstore.oneshot``, and so ``kv``) call the checks here first, so every size over the limit gives the
same error, ``TooLarge``, naming the limit, and nothing is sent.

The limits are defined here, and ``kvstore.commands`` (the state machine's command codec) imports them:
one definition for the store and its clients. This module imports only ``kvstore.frames``, so the
one-shot client stays quick to start.
"""
from __future__ import annotations

from .frames import FrameTooLarge

KEY_BYTES_MAX = 4096
"""Largest key, in bytes of its UTF-8 encoding."""
VALUE_BYTES_MAX = 1024 * 1024
"""Largest value (and cas ``expected``), in bytes, UTF-8 for text."""


class TooLarge(FrameTooLarge):
    """A key or value above the store's limit, refused before it was sent. A ``ValueError`` (our caller
    broke an API rule), and a ``FrameTooLarge``, which is what a value too large for a frame raised
    before these checks existed."""


def _size(data: object) -> int:
    """Bytes of a str (UTF-8) or bytes; 0 for anything else, which the encoder or the store refuses
    as before (a wrong type is not a size problem)."""
    if type(data) is str:
        # An ASCII str has one byte per character (isascii is O(1)); lone surrogates count as
        # 3 bytes here and are refused by the store later, as before.
        return len(data) if data.isascii() else len(data.encode("utf-8", "surrogatepass"))
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    return 0


def check_key(key: object, what: str = "key") -> None:
    """Raise ``TooLarge`` if ``key`` has more than ``KEY_BYTES_MAX`` bytes in UTF-8."""
    size = _size(key)
    if size > KEY_BYTES_MAX:
        raise TooLarge(f"{what} is too large: {size} bytes, the limit is {KEY_BYTES_MAX} bytes")


def check_value(value: object, what: str = "value") -> None:
    """Raise ``TooLarge`` if ``value`` has more than ``VALUE_BYTES_MAX`` bytes (UTF-8 for text)."""
    if value is None:
        return
    size = _size(value)
    if size > VALUE_BYTES_MAX:
        raise TooLarge(f"{what} is too large: {size} bytes, the limit is {VALUE_BYTES_MAX} bytes")
