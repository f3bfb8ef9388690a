"""Walking a log file's bytes in tests: where its records start (the framing of ``kvstore.storage``)."""
from __future__ import annotations

from kvstore.storage import RECORD_HEADER


def record_starts(buf: bytes) -> list[int]:
    """The byte offsets where the records of ``buf`` start, walking their length fields up to the first
    zero length (preallocated space) or the end."""
    starts, position = [], 0
    while position + RECORD_HEADER.size <= len(buf):
        (length, _crc) = RECORD_HEADER.unpack_from(buf, position)
        if length == 0:
            break
        starts.append(position)
        position += RECORD_HEADER.size + length
    return starts
