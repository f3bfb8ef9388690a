"""paxos.durable: the record format and crash recovery with two alternating files.

Files live in pytest's ``tmp_path``. Checked: the byte layout (md5 | serial | length | pickle), that
``read`` classifies every truncation and byte flip as ``FileCorrupted`` (never returns wrong data),
that saves alternate a, b, a, and that recovery picks the newest valid file, falls back to the
other one when the newest is damaged, and refuses to start when both are damaged.
"""

import hashlib
import os
import pickle
import struct

import pytest

from paxos import durable


def open_fd(path):
    return os.open(path, os.O_CREAT | os.O_RDWR)


@pytest.fixture
def fd(tmp_path):
    descriptor = open_fd(tmp_path / "record")
    yield descriptor
    os.close(descriptor)


def test_write_layout(fd, tmp_path):
    durable.write(fd, 7, {"promised": (1, "A")})
    data = (tmp_path / "record").read_bytes()
    payload = pickle.dumps({"promised": (1, "A")}, pickle.HIGHEST_PROTOCOL)
    assert data[16:24] == struct.pack(">Q", 7)
    assert data[24:32] == struct.pack(">Q", len(payload))
    assert data[32:] == payload
    assert data[:16] == hashlib.md5(data[16:]).digest()
    assert durable.read(fd) == (7, {"promised": (1, "A")})


def test_rewrite_with_smaller_object_ignores_stale_tail(fd):
    durable.write(fd, 1, "x" * 1000)
    durable.write(fd, 2, "y")
    assert durable.read(fd) == (2, "y")


def test_every_truncation_is_detected(tmp_path):
    path = tmp_path / "full"
    descriptor = open_fd(path)
    durable.write(descriptor, 3, ("state", 42))
    os.close(descriptor)
    full = path.read_bytes()
    for cut in range(len(full)):
        piece = tmp_path / f"cut{cut}"
        piece.write_bytes(full[:cut])
        descriptor = open_fd(piece)
        try:
            with pytest.raises(durable.FileTruncated):
                durable.read(descriptor)
        finally:
            os.close(descriptor)


def test_every_byte_flip_is_detected(tmp_path):
    path = tmp_path / "full"
    descriptor = open_fd(path)
    durable.write(descriptor, 3, ("state", 42))
    os.close(descriptor)
    full = path.read_bytes()
    for index in range(len(full)):
        damaged = bytearray(full)
        damaged[index] ^= 0x01
        piece = tmp_path / "flipped"
        piece.write_bytes(bytes(damaged))
        descriptor = open_fd(piece)
        try:
            with pytest.raises(durable.FileCorrupted):
                durable.read(descriptor)
        finally:
            os.close(descriptor)


def test_exception_hierarchy():
    assert issubclass(durable.UnrecoverableFailure, durable.DurabilityFailure)
    assert issubclass(durable.HashMismatch, durable.FileCorrupted)
    assert issubclass(durable.FileTruncated, durable.FileCorrupted)
    assert issubclass(durable.FileCorrupted, durable.DurabilityFailure)


def test_fresh_handler_and_reopen_without_save(tmp_path):
    handler = durable.DurableObjectHandler(str(tmp_path), "obj")
    assert (handler.recovered, handler.serial, handler.fd_next) == (None, 1, handler.fd_a)
    assert handler.fn_a == os.path.join(str(tmp_path), "obj_a.durable")
    assert handler.fn_b == os.path.join(str(tmp_path), "obj_b.durable")
    handler.close()
    again = durable.DurableObjectHandler(str(tmp_path), "obj")
    assert (again.recovered, again.serial) == (None, 1)
    again.close()


def test_saves_alternate_and_newest_is_recovered(tmp_path):
    handler = durable.DurableObjectHandler(str(tmp_path), 5)
    handler.save("one")
    assert os.path.getsize(handler.fn_a) > 0 and os.path.getsize(handler.fn_b) == 0
    handler.save("two")
    handler.save("three")
    assert handler.serial == 4
    handler.close()
    with open(handler.fn_a, "rb") as f_a, open(handler.fn_b, "rb") as f_b:
        serial_a = struct.unpack(">Q", f_a.read()[16:24])[0]
        serial_b = struct.unpack(">Q", f_b.read()[16:24])[0]
    assert (serial_a, serial_b) == (3, 2)

    reopened = durable.DurableObjectHandler(str(tmp_path), 5)
    assert reopened.recovered == "three"
    assert reopened.serial == 4 and reopened.fd_next == reopened.fd_b
    reopened.save("four")
    assert reopened.recovered is None
    reopened.close()
    assert durable.DurableObjectHandler(str(tmp_path), 5).recovered == "four"


def test_damaged_newest_file_falls_back_to_previous(tmp_path):
    handler = durable.DurableObjectHandler(str(tmp_path), "obj")
    handler.save("old")
    handler.save("new")  # in _b
    handler.close()
    with open(handler.fn_b, "r+b") as f:
        f.seek(40)
        f.write(b"\xff")  # inside the payload
    reopened = durable.DurableObjectHandler(str(tmp_path), "obj")
    assert reopened.recovered == "old"
    assert reopened.serial == 2 and reopened.fd_next == reopened.fd_b  # overwrite the damaged one
    reopened.close()


def test_damaged_older_file_is_ignored(tmp_path):
    handler = durable.DurableObjectHandler(str(tmp_path), "obj")
    handler.save("old")
    handler.save("new")
    handler.close()
    with open(handler.fn_a, "wb") as f:
        f.write(b"\0" * 10)
    reopened = durable.DurableObjectHandler(str(tmp_path), "obj")
    assert reopened.recovered == "new"
    reopened.close()


def test_both_files_damaged_is_unrecoverable(tmp_path):
    handler = durable.DurableObjectHandler(str(tmp_path), "obj")
    handler.save("old")
    handler.save("new")
    handler.close()
    for name in (handler.fn_a, handler.fn_b):
        with open(name, "wb") as f:
            f.write(b"\0")
    with pytest.raises(durable.UnrecoverableFailure):
        durable.DurableObjectHandler(str(tmp_path), "obj")


def test_bad_directory_is_refused(tmp_path):
    with pytest.raises(Exception, match="Invalid directory"):
        durable.DurableObjectHandler(str(tmp_path / "missing"), "obj")


def test_close_is_idempotent(tmp_path):
    handler = durable.DurableObjectHandler(str(tmp_path), "obj")
    handler.close()
    handler.close()
    assert handler.fd_a is None and handler.fd_b is None


def test_a_python_2_file_with_a_byte_string_that_is_not_ascii_loads(tmp_path):
    """essential-paxos 2.0 on Python 2 pickled a ``str`` holding bytes as BINSTRING. QA (a library
    embedder): such a file raised ``UnicodeDecodeError`` at recovery, neither its object nor a
    ``DurabilityFailure``. It loads now as Latin-1 text, whose encoding gives back the bytes."""
    payload = b"\x80\x02U\x03\xc3\xa9xq\x00."  # Python 2: pickle.dumps('\xc3\xa9x', 2)
    header = struct.pack(">QQ", 5, len(payload))
    (tmp_path / "acc_a.durable").write_bytes(hashlib.md5(header + payload).digest() + header + payload)
    (tmp_path / "acc_b.durable").write_bytes(b"")
    handler = durable.DurableObjectHandler(str(tmp_path), "acc")
    try:
        assert handler.recovered == "\xc3\xa9x" and handler.serial == 6  # the next save's serial
        assert handler.recovered.encode("latin-1") == b"\xc3\xa9x"
    finally:
        handler.close()
