"""Messages exchanged by Multi-Paxos replicas.

Every message is a frozen dataclass with keyword fields and a ``sender`` node id. The core sees node
ids, never addresses or bytes; the shell (``kvstore``) turns these into frames and back, and checks
that ``sender`` matches the peer link a message arrived on.

A slot's value is a *batch*: a tuple of opaque command bytes. The empty tuple is the no-op a new leader
uses to fill a hole in the log.

| message        | from -> to           | purpose                                                          |
|----------------|----------------------|------------------------------------------------------------------|
| Prepare        | candidate -> all     | phase 1a for every slot >= first_slot                            |
| Promise        | acceptor -> candidate| phase 1b: promise + what it accepted/decided at slots >= first_slot |
| Accept         | leader -> all        | phase 2a for one slot (value = a batch of commands)              |
| Accepted       | acceptor -> leader   | phase 2b                                                         |
| Nack           | acceptor -> proposer | your ballot is below my promise (demotes a stale leader)         |
| Decide         | leader -> all        | every slot <= decided_slot that you accepted at `ballot` is decided |
| Heartbeat      | leader -> all        | I still lead; carries decided_slot; `seq` numbers read-index rounds |
| HeartbeatAck   | acceptor -> leader   | my promise is still `ballot` (confirms leadership for reads)     |
| CatchupRequest | lagging -> any       | send me decided values from first_slot on                        |
| CatchupReply   | any -> lagging       | decided values, or: I compacted them, install my snapshot        |
| Campaign       | leader -> one voter  | leadership transfer: you are caught up, start an election now     |
| PreVote        | would-be candidate -> all | would you take part in an election now? (``Options.pre_vote``) |
| PreVoteReply   | any -> would-be candidate | yes (no leader heard for an election timeout, not far ahead) or no |
"""
from __future__ import annotations

from dataclasses import dataclass

from .ballot import Ballot

Value = tuple[bytes, ...]  # a batch of opaque commands; () is a no-op


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedEntry:
    """What an acceptor accepted at one slot (carried in a Promise)."""

    slot: int
    ballot: Ballot
    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class DecidedEntry:
    """A slot whose value is known to be chosen."""

    slot: int
    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    sender: int
    ballot: Ballot
    first_slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Promise:
    sender: int
    ballot: Ballot
    first_slot: int
    accepted: tuple[AcceptedEntry, ...]  # for slots >= first_slot
    decided: tuple[DecidedEntry, ...]  # for slots >= first_slot
    snapshot_slot: int  # slots <= snapshot_slot were compacted away by this acceptor


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    sender: int
    ballot: Ballot
    slot: int
    value: Value
    decided_slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    sender: int
    ballot: Ballot
    slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Nack:
    sender: int
    ballot: Ballot  # the ballot that was rejected
    promised: Ballot  # the acceptor's promise, which is higher


@dataclass(frozen=True, slots=True, kw_only=True)
class Decide:
    sender: int
    ballot: Ballot
    decided_slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    sender: int
    ballot: Ballot
    decided_slot: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAck:
    sender: int
    ballot: Ballot
    seq: int
    decided_slot: int = 0  # the acceptor's decided slot: how far behind it is (learner promotion)


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchupRequest:
    sender: int
    first_slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchupReply:
    sender: int
    entries: tuple[DecidedEntry, ...]  # consecutive slots from the requested first_slot
    snapshot_slot: int  # the sender's compaction point; > requested first_slot - 1 means "install my snapshot"


@dataclass(frozen=True, slots=True, kw_only=True)
class Campaign:
    sender: int
    ballot: Ballot  # the leader's ballot: a stale transfer (a newer ballot was promised) is ignored
    decided_slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PreVote:
    sender: int
    ballot: Ballot  # the ballot the sender would campaign with (not in use: nobody promises it)
    decided_slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PreVoteReply:
    sender: int
    ballot: Ballot  # the PreVote's, echoed
    granted: bool


Message = (
    Prepare | Promise | Accept | Accepted | Nack | Decide | Heartbeat | HeartbeatAck | CatchupRequest | CatchupReply
    | Campaign | PreVote | PreVoteReply
)
MESSAGE_TYPES = (
    Prepare, Promise, Accept, Accepted, Nack, Decide, Heartbeat, HeartbeatAck, CatchupRequest, CatchupReply,
    Campaign, PreVote, PreVoteReply,
)
