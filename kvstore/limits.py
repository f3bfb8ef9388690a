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

The same checks refuse, before anything is sent, what the server would refuse as a protocol error
(and close the connection for, taking every other request on it along): a key or prefix that is not a
``str`` or a value that is not ``str`` or ``bytes`` (``TypeError``), and text holding a lone surrogate,
which no UTF-8 encoder takes (``ValueError``).
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


def _text_size(text: str, what: str) -> int:
    """Bytes of ``text`` in UTF-8; ``ValueError`` for a lone surrogate (no UTF-8 encoder takes one)."""
    if text.isascii():  # one byte per character (isascii is O(1))
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid text: it holds a lone surrogate ({text[exc.start]!r} at index "
                         f"{exc.start}), which UTF-8 cannot encode") from None


def check_key(key: object, what: str = "key") -> None:
    """Raise ``TypeError`` if ``key`` is not a ``str``, ``ValueError`` if it is not valid text, and
    ``TooLarge`` if it has more than ``KEY_BYTES_MAX`` bytes in UTF-8."""
    if type(key) is not str:
        raise TypeError(f"{what} must be a str, got {type(key).__name__}")
    size = _text_size(key, what)
    if size > KEY_BYTES_MAX:
        raise TooLarge(f"{what} is too large: {size} bytes, the limit is {KEY_BYTES_MAX} bytes")


def check_value(value: object, what: str = "value", *, optional: bool = False) -> None:
    """Raise ``TypeError`` if ``value`` is not ``str`` or ``bytes`` (None is allowed when
    ``optional``: cas's "absent"), ``ValueError`` if it is text that is not valid, and ``TooLarge``
    if it has more than ``VALUE_BYTES_MAX`` bytes (UTF-8 for text)."""
    if type(value) is str:
        size = _text_size(value, what)
    elif isinstance(value, (bytes, bytearray)):
        size = len(value)
    elif value is None and optional:
        return
    else:
        raise TypeError(f"{what} must be str or bytes, got {type(value).__name__}")
    if size > VALUE_BYTES_MAX:
        raise TooLarge(f"{what} is too large: {size} bytes, the limit is {VALUE_BYTES_MAX} bytes")
