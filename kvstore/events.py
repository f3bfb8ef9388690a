"""The inputs the node's driver takes: typed values, one small class per kind.

Theory of operation
-------------------
Everything that reaches the driver (``kvstore.server.Node._driver``) travels on one memory channel, and
the driver dispatches on the type with ``match``. What is posted:

* a Paxos message from a peer (``paxos.messages.*``), posted as the message object the wire decoder
  made: no wrapper, because on a follower nearly every input is one;
* ``Proposal``: a client's write, turned into command bytes by the connection's reader task;
* ``Read``: a client's linearizable read;
* ``Wake``: nothing for the core; a serializable read waits for the apply queue (``WAKE``, the one value);
* ``Tick``: ``count`` logical ticks from the ticker;
* ``SnapshotReceived``, ``SnapshotRestored``, ``SnapshotWritten``, ``SnapshotAdoptable``,
  ``CompactionWritten`` (each a ``SnapshotStep``): the steps of a snapshot (``kvstore.snapshots``) that
  must run in the driver;
* a ``list`` of the above: what one reader task read at once, in order (one channel item for the lot).

Proposals, reads and peer messages are the hot path (thousands a second), so their classes are plain
``__slots__`` classes (no dataclass machinery, no per-instance dict) and the driver tests the most
frequent kinds first. Nothing here does anything: these are values.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import wire
    from .commands import Command
    from .statemachine import StateMachine
    from .waiters import Replier

__all__ = [
    "Proposal", "Read", "Wake", "WAKE", "Tick",
    "SnapshotStep", "SnapshotReceived", "SnapshotRestored", "SnapshotWritten", "SnapshotAdoptable",
    "CompactionWritten",
]


class Proposal:
    """A client's write, to be proposed by the core (``Replica.propose``).

    ``command`` is the command bytes (``kvstore.commands``) and ``decoded`` what they decode to, kept so
    that the leader applies its own proposal without decoding it again. ``request_key`` is the write's
    ``(client_id, request_id)``, its name for exactly-once execution; ``wire_id`` is the id on the
    client's frame, which its reply on ``conn`` must carry.
    """

    __slots__ = ("command", "decoded", "request_key", "conn", "wire_id")

    def __init__(self, command: bytes, decoded: Command, request_key: tuple[bytes, int], conn: Replier,
                 wire_id: int) -> None:
        self.command = command
        self.decoded = decoded
        self.request_key = request_key
        self.conn = conn
        self.wire_id = wire_id


class Read:
    """A client's linearizable read (``GetRequest`` or ``ListRequest``), answered on ``conn``."""

    __slots__ = ("conn", "request")

    def __init__(self, conn: Replier, request: wire.GetRequest | wire.ListRequest) -> None:
        self.conn = conn
        self.request = request


class Wake:
    """Nothing for the core: the driver wakes and looks at its apply queue (a serializable read waits)."""

    __slots__ = ()


WAKE = Wake()


class Tick:
    """``count`` logical ticks of the core (a follower's ticker delivers a few at once)."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class SnapshotStep:
    """A step of a snapshot that must run in the driver (one base class, so the driver tests once)."""

    __slots__ = ()


class SnapshotReceived(SnapshotStep):
    """Every chunk of a peer's snapshot through ``slot`` arrived: ``data`` is the whole file."""

    __slots__ = ("slot", "data")

    def __init__(self, slot: int, data: bytes) -> None:
        self.slot = slot
        self.data = data


class SnapshotRestored(SnapshotStep):
    """A peer's snapshot through ``slot`` (``data``) was restored into ``sm`` in a worker thread; the
    driver installs it (the core and the log jump to it)."""

    __slots__ = ("slot", "data", "sm")

    def __init__(self, slot: int, data: bytes, sm: StateMachine) -> None:
        self.slot = slot
        self.data = data
        self.sm = sm


class SnapshotWritten(SnapshotStep):
    """Our own snapshot file through ``slot`` is durable; the driver compacts the core and the log."""

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        self.slot = slot


class CompactionWritten(SnapshotStep):
    """The bulk of the log compacted through ``slot`` is written to its new file (in a worker thread,
    ``Storage.write_compaction``); the driver adds what was appended since and puts it in place."""

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        self.slot = slot


class SnapshotAdoptable(SnapshotStep):
    """The leader's snapshot through ``slot``, restored into ``sm`` and written as our snapshot file (a
    lazy learner's, see ``kvstore.learners``); ``started`` is when that began (``time.perf_counter``)."""

    __slots__ = ("slot", "sm", "started")

    def __init__(self, slot: int, sm: StateMachine, started: float) -> None:
        self.slot = slot
        self.sm = sm
        self.started = started
