"""``paxos.durable.DurableObjectHandler`` used after ``close()`` says so, and writes nowhere.

QA (session 29): ``close()`` closed both files but kept ``fd_next``, the number of the next one to write;
the next ``os.open`` of any file took that number, and ``save()`` wrote its record into that unrelated
file without an error.
"""
from __future__ import annotations

import os

import pytest

from paxos import durable


def test_save_after_close_raises_and_leaves_a_reused_descriptor_alone(tmp_path):
    handler = durable.DurableObjectHandler(str(tmp_path), "state")
    handler.save({"promised": 1})
    handler.close()
    other = tmp_path / "unrelated.txt"
    descriptor = os.open(other, os.O_RDWR | os.O_CREAT)  # (likely the number fd_next had)
    try:
        with pytest.raises(ValueError, match="closed"):
            handler.save({"promised": 2})
    finally:
        os.close(descriptor)
    assert other.read_bytes() == b""
    handler.close()  # still safe twice
    again = durable.DurableObjectHandler(str(tmp_path), "state")
    assert again.recovered == {"promised": 1}
    again.close()
