"""Durable: crash-safe storage of one Python object in two alternating files.

Theory of operation
-------------------
Python 3 drop-in for ``durable.py`` of essential-paxos 2.0. A Paxos acceptor must not reply before
its ``promised_id``/``accepted_id``/``accepted_value`` are on stable storage (see
``paxos.practical.Acceptor.persisted``). ``DurableObjectHandler`` stores such a small object so that a
crash at any instant leaves either the new or the previous version readable:

* Two files, ``<id>_a.durable`` and ``<id>_b.durable``. Saves alternate between them, so a save that
  is torn by a crash can only damage the file being written; the other holds the previous version.
* Each file holds one record: ``md5(rest) [16 bytes] | serial number [8, big-endian] |
  payload length [8, big-endian] | payload``. The digest detects torn or corrupted writes; the serial
  number tells which of two valid files is newer; the length detects truncation.
* A write goes to offset 0 without truncating the file (stale bytes past the record are ignored
  because the length says where it ends), then the file is flushed to the device
  (``os.fdatasync``, or ``F_FULLFSYNC`` on macOS, or ``os.fsync``). When a file is first created, the
  directory is fsynced too, so that the file's name survives a crash.
* Recovery reads both files and keeps the valid one with the highest serial; if neither is valid but
  one is non-empty, data was lost and ``UnrecoverableFailure`` is raised rather than silently
  starting empty.

The payload is a pickle, because that is the on-disk format of essential-paxos 2.0 and this module
exists for compatibility with it. Unpickling runs code chosen by whoever wrote the file, so only
read files that this process's own user wrote. The key-value store never uses this module (it keeps
its own CBOR log, see ``kvstore.storage``). Together with ``paxos.functional``'s clock, this module is
one of the two documented exceptions to the rule that ``paxos`` does no I/O.

A file written by essential-paxos 2.0 on Python 2 loads as Python 2's own ``pickle`` would, with one
difference: a Python 2 ``str`` comes back as a ``str`` decoded as Latin-1 (``encoding="latin1"``, as
the ``pickle`` docs advise for Python 2 data), so a byte string that is not ASCII loads instead of
raising ``UnicodeDecodeError``; ``value.encode("latin-1")`` gives back its bytes.
"""

import hashlib
import os
import pickle
import struct

__all__ = [
    "DurabilityFailure",
    "UnrecoverableFailure",
    "FileCorrupted",
    "HashMismatch",
    "FileTruncated",
    "read",
    "write",
    "DurableObjectHandler",
]

_DIGEST_BYTES = 16  # md5
_HEADER = struct.Struct(">QQ")  # serial number, payload length


class DurabilityFailure(Exception):
    """Base class of every error of this module."""


class UnrecoverableFailure(DurabilityFailure):
    """Both files are unreadable and at least one is not empty: the saved state is lost."""


class FileCorrupted(DurabilityFailure):
    """A file does not hold one complete, valid record."""


class HashMismatch(FileCorrupted):
    """The record is complete but its md5 digest does not match (corrupted or torn write)."""


class FileTruncated(FileCorrupted):
    """The file ends before the header or the payload is complete."""


def _sync(fd: int) -> None:
    """Flush a file's data to the device, with the strongest call the platform offers."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
        return
    try:
        import fcntl
    except ImportError:  # Windows
        os.fsync(fd)
        return
    if hasattr(fcntl, "F_FULLFSYNC"):
        # On macOS fsync only reaches the drive's cache; F_FULLFSYNC reaches the platter.
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


def _read_exactly(fd: int, count: int) -> bytes:
    """Read up to ``count`` bytes from ``fd``, looping over short reads; fewer means end of file."""
    chunks = []
    remaining = count
    # Each successful read shrinks ``remaining``; an empty read (end of file) stops the loop.
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read(fd: int) -> tuple[int, object]:
    """Read the record of an open file and return ``(serial_number, object)``.

    Raises ``FileTruncated`` if the header or payload is incomplete (an empty file included) and
    ``HashMismatch`` if the digest is wrong. The file position is reset to 0 first.
    """
    os.lseek(fd, 0, os.SEEK_SET)

    digest = _read_exactly(fd, _DIGEST_BYTES)
    header = _read_exactly(fd, _HEADER.size)
    if len(digest) != _DIGEST_BYTES or len(header) != _HEADER.size:
        raise FileTruncated()

    serial_number: int
    payload_length: int
    serial_number, payload_length = _HEADER.unpack(header)
    # A corrupted length field may claim petabytes: compare it with the file size before reading,
    # so that damage is reported as damage instead of a MemoryError.
    available = os.fstat(fd).st_size - _DIGEST_BYTES - _HEADER.size
    if payload_length > available:
        raise FileTruncated()
    payload = _read_exactly(fd, payload_length)
    if len(payload) != payload_length or payload_length == 0:
        raise FileTruncated()

    if hashlib.md5(header + payload).digest() != digest:
        raise HashMismatch()

    loaded: object = pickle.loads(payload, encoding="latin1")  # Python 2's str (see the module docstring)
    return serial_number, loaded


def write(fd: int, serial_number: int, pyobject: object) -> None:
    """Write ``pyobject`` with ``serial_number`` as one record at offset 0 of ``fd`` and sync it.

    The file is not truncated: bytes after the record are ignored by ``read``. When this returns,
    the record is on stable storage (as far as the platform's sync call promises).
    """
    payload = pickle.dumps(pyobject, pickle.HIGHEST_PROTOCOL)
    header = _HEADER.pack(serial_number, len(payload))
    record = b"".join([hashlib.md5(header + payload).digest(), header, payload])

    os.lseek(fd, 0, os.SEEK_SET)
    written = 0
    # os.write may write less than asked; each pass writes at least one byte or raises.
    while written < len(record):
        written += os.write(fd, record[written:])
    _sync(fd)


class DurableObjectHandler:
    """Saves and recovers one object under ``dirname`` in ``<object_id>_a.durable``/``_b.durable``.

    Attributes: ``fn_a``, ``fn_b`` (paths), ``fd_a``, ``fd_b`` (open descriptors), ``fd_next``
    (where the next save goes), ``serial`` (the serial number of the next save) and ``recovered``
    (the object found when the handler was opened, or ``None``; reset by ``save``).
    """

    def __init__(self, dirname: str, object_id: object) -> None:
        """Open (creating if needed) the two files of ``object_id`` and recover the saved object.

        Raises ``Exception`` if ``dirname`` is not a directory and ``UnrecoverableFailure`` if the
        files exist but neither holds a valid record.
        """
        if not os.path.isdir(dirname):
            raise Exception("Invalid directory: " + str(dirname))

        self.fn_a = os.path.join(dirname, f"{object_id!s}_a.durable")
        self.fn_b = os.path.join(dirname, f"{object_id!s}_b.durable")

        created = not (os.path.exists(self.fn_a) and os.path.exists(self.fn_b))

        flags = os.O_CREAT | os.O_RDWR | getattr(os, "O_BINARY", 0)
        self.fd_a: int | None = os.open(self.fn_a, flags)  # None once closed
        self.fd_b: int | None = os.open(self.fn_b, flags)

        if created:
            # A new file's name lives in the directory; sync it so the file survives a crash.
            self._sync_directory(dirname)

        self.fd_next: int | None = None  # both set by recover()
        self.serial: int | None = None
        self.recovered: object = None
        self.recover()

    @staticmethod
    def _sync_directory(dirname: str) -> None:
        """fsync a directory where the platform allows it (not on Windows)."""
        if not hasattr(os, "O_DIRECTORY"):
            return
        dir_fd = os.open(dirname, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _try_read(fd: int) -> tuple[int, object] | None:
        """Return ``(serial, object)`` or ``None`` if the file holds no valid record."""
        try:
            return read(fd)
        except FileCorrupted:
            return None

    def recover(self) -> object:
        """Load the newest valid record; set ``serial``, ``fd_next`` and ``recovered``; return the object.

        Returns ``None`` for a fresh pair of empty files. Raises ``UnrecoverableFailure`` when neither
        file is valid but one has content (the state existed and is lost).
        """
        assert self.fd_a is not None and self.fd_b is not None, "recover() after close()"
        record_a = self._try_read(self.fd_a)
        record_b = self._try_read(self.fd_b)

        if record_a is not None and record_b is not None:
            # Both valid: the newer wins, and the older file is the one to overwrite next.
            if record_a[0] > record_b[0]:
                winner, self.fd_next = record_a, self.fd_b
            else:
                winner, self.fd_next = record_b, self.fd_a
        elif record_a is not None:
            winner, self.fd_next = record_a, self.fd_b
        elif record_b is not None:
            winner, self.fd_next = record_b, self.fd_a
        else:
            if os.fstat(self.fd_a).st_size == 0 and os.fstat(self.fd_b).st_size == 0:
                self.serial = 1
                self.fd_next = self.fd_a
                self.recovered = None
                return None
            raise UnrecoverableFailure(f"Unable to recover from either file: {self.fn_a}, {self.fn_b}")

        self.serial = winner[0] + 1
        self.recovered = winner[1]
        return self.recovered

    def save(self, obj: object) -> None:
        """Durably save ``obj``, overwriting the older of the two files; return when it is synced.
        ``ValueError`` after ``close()``."""
        if self.fd_next is None or self.serial is None:
            # (QA: close() left fd_next at the old number, and a save after it wrote into whatever file
            # had reused that descriptor, without an error)
            raise ValueError(f"save() on a closed DurableObjectHandler ({self.fn_a}, {self.fn_b})")
        write(self.fd_next, self.serial, obj)

        self.serial += 1
        self.fd_next = self.fd_b if self.fd_next == self.fd_a else self.fd_a
        self.recovered = None

    def close(self) -> None:
        """Close both files. Safe to call more than once; ``save()`` after it raises ``ValueError``."""
        self.fd_next = None
        if self.fd_a is not None:
            os.close(self.fd_a)
            self.fd_a = None
        if self.fd_b is not None:
            os.close(self.fd_b)
            self.fd_b = None
