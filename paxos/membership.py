"""Membership: who votes at each slot, and how that changes through the log.

Theory of operation
-------------------
A ``Config`` names the *voters* (the acceptors whose majority decides a slot), the *learners* (nodes
that receive the log and snapshots, promise and accept like anyone, and count toward no quorum), and,
opaque to the core, each member's address and incarnation (the shell's business: how to reach it and
which data directory it is; see ``kvstore.identity``). ``epoch`` counts the changes, and ``retired``
holds the ids of members removed so far: an id is never given to a new member again, so that a
node's id names one machine and one data directory for the life of the cluster (logs, metrics and an
operator's notes about node 4 never mix two nodes). Reusing one would not be unsafe (a new member has
a new incarnation, which the shell checks), only confusing; ``add_learner`` refuses it.

A change is an ordinary command in an ordinary slot, decided like any other (``encode_change``). It
names the epoch it changes, so two changes raced by two operators cannot both apply: at apply time a
change whose base epoch is not the newest one scheduled is ignored by every replica alike. A change
decided at slot ``s`` governs the slots from ``s + alpha`` on (Lamport, "Paxos Made Simple", section
3, and "Paxos Made Moderately Complex", where alpha is the window), which gives the rules the
``Replica`` follows:

1. **Every slot has one configuration, and every replica computes the same one.** ``config(i)`` is the
   base configuration updated by the changes decided in slots ``<= i - alpha``, in slot order. Those
   slots are decided, and decided values never differ between replicas.
2. **A leader opens slot ``i`` only once it knows ``config(i)``**: when every slot up to ``i - alpha``
   is decided. So at most alpha slots are open beyond the decided prefix.
3. **Within one slot it is plain Paxos with the acceptors of ``config(i)``.** Phase 1 counts: the
   leader re-proposes at slot ``i`` from promises that include a majority of ``config(i)``'s voters,
   and a slot is decided when a majority of ``config(i)``'s voters accepted it at one ballot. A
   promise covers every slot from ``first_slot`` on, so one Prepare serves every configuration; when a
   leader reaches a slot whose voters' majority did not promise its ballot (a new voter it never heard
   from), it runs phase 1 again at a higher ballot before opening that slot.
4. **A read is confirmed by a majority of every configuration that governs an open or future slot**, so
   that any leader that could have decided something newer shares a voter with the confirming round.

Safety then reduces to single-decree Paxos per slot: the acceptors of slot ``i`` are fixed (rule 1),
nobody counts a vote or a promise toward slot ``i`` from outside ``config(i)`` (rule 3), and nobody
uses ``config(i)`` before it is fixed (rule 2). No joint quorums are needed and any configuration may
follow any other; the store still allows one change in flight at a time, which is easier to reason
about for an operator (``Replica.change_in_progress``).

What alpha costs: pipelining is capped at alpha slots past the decided prefix, and a change takes
effect alpha slots after its own. An idle leader fills those slots with no-ops at once, so a change is
in effect one round trip after it is decided.

Liveness needs a majority of the voters of every configuration that governs an undecided slot: when
adding a voter, add it as a learner first and promote it once it caught up (``kv member promote``).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Config", "ConfigSchedule", "ScheduleEntry", "CHANGE_PREFIX", "encode_change", "decode_change", "is_change",
           "refuse_change_command"]

# Commands that change the configuration start with these bytes (a state machine must skip them; its
# own commands never start with a zero byte). The rest is JSON: {"base": epoch, "config": {...}}.
CHANGE_PREFIX = b"\x00paxos-config\x00"
ALPHA_DEFAULT = 16


def _check_ids(ids: Iterable[object], what: str) -> tuple[int, ...]:
    given = tuple(ids)
    if len(set(given)) != len(given):
        raise ValueError(f"duplicate node ids in {what} {given!r}")
    checked = []
    for node_id in given:
        # Ballot.ZERO uses node id 0, so real ids start at 1 (see paxos.ballot).
        if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id < 1:
            raise ValueError(f"node ids must be ints >= 1, got {node_id!r}")
        checked.append(node_id)
    return tuple(checked)


@dataclass(frozen=True)
class Config:
    """The cluster's members: a value, replicated through the log (see the module docstring)."""

    node_ids: tuple[int, ...] = (1, 2, 3)  # the voters
    learners: tuple[int, ...] = ()
    epoch: int = 0
    alpha: int = ALPHA_DEFAULT
    addresses: dict[int, str] = field(default_factory=dict, compare=True)  # node id -> "host:port" (shell's)
    incarnations: dict[int, str] = field(default_factory=dict, compare=True)  # node id -> incarnation (shell's)
    retired: tuple[int, ...] = ()  # ids of members removed so far, ascending: never a member again

    def __post_init__(self) -> None:
        voters = _check_ids(self.node_ids, "voters")
        learners = _check_ids(self.learners, "learners")
        if not voters:
            raise ValueError("a cluster needs at least one voter")
        both = set(voters) & set(learners)
        if both:
            raise ValueError(f"node {min(both)} is both a voter and a learner")
        retired = tuple(sorted(set(_check_ids(self.retired, "retired ids"))))
        back = set(retired) & (set(voters) | set(learners))
        if back:
            raise ValueError(f"node {min(back)} was removed before: it cannot be a member again")
        object.__setattr__(self, "retired", retired)
        if not isinstance(self.alpha, int) or self.alpha < 1:
            raise ValueError(f"alpha must be an int >= 1, got {self.alpha!r}")
        if not isinstance(self.epoch, int) or self.epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {self.epoch!r}")
        members = set(voters) | set(learners)
        for name in ("addresses", "incarnations"):
            table = {int(k): str(v) for k, v in dict(getattr(self, name)).items()}
            strays = set(table) - members
            if strays:
                raise ValueError(f"{name} names node {min(strays)}, which is not a member")
            object.__setattr__(self, name, table)
        object.__setattr__(self, "node_ids", voters)
        object.__setattr__(self, "learners", learners)

    # ------------------------------------------------------------------ questions

    @property
    def members(self) -> tuple[int, ...]:
        """Voters, then learners."""
        return self.node_ids + self.learners

    @property
    def quorum_size(self) -> int:
        """A majority of the voters: any two majorities share a voter (Paxos Made Simple, 2.2)."""
        return len(self.node_ids) // 2 + 1

    def is_voter(self, node_id: int) -> bool:
        return node_id in self.node_ids

    def is_quorum(self, ids: Iterable[int]) -> bool:
        """Do ``ids`` include a majority of the voters? (Learners and strangers count for nothing.)"""
        voters = self.node_ids
        return sum(1 for n in set(ids) if n in voters) >= self.quorum_size

    def role(self, node_id: int) -> str | None:
        if node_id in self.node_ids:
            return "voter"
        if node_id in self.learners:
            return "learner"
        return None

    # ------------------------------------------------------------------ changes (each makes epoch + 1)

    def add_learner(self, node_id: int, address: str = "", incarnation: str = "") -> Config:
        if node_id in self.members:
            raise ValueError(f"node {node_id} is already a member ({self.role(node_id)})")
        if node_id in self.retired:
            raise ValueError(f"node {node_id} was a member and was removed; ids are never reused: "
                             f"give the new member a new id (above {max(self.members + self.retired)})")
        return self._next(learners=self.learners + (node_id,),
                          addresses={**self.addresses, **({node_id: address} if address else {})},
                          incarnations={**self.incarnations, **({node_id: incarnation} if incarnation else {})})

    def promote(self, node_id: int) -> Config:
        if node_id in self.node_ids:
            raise ValueError(f"node {node_id} is already a voter")
        if node_id not in self.learners:
            raise ValueError(f"node {node_id} is not a member; add it as a learner first")
        return self._next(node_ids=self.node_ids + (node_id,),
                          learners=tuple(n for n in self.learners if n != node_id))

    def remove(self, node_id: int) -> Config:
        if node_id not in self.members:
            raise ValueError(f"node {node_id} is not a member")
        if self.node_ids == (node_id,):
            raise ValueError(f"node {node_id} is the last voter; a cluster needs at least one")
        return self._next(node_ids=tuple(n for n in self.node_ids if n != node_id),
                          learners=tuple(n for n in self.learners if n != node_id),
                          addresses={k: v for k, v in self.addresses.items() if k != node_id},
                          incarnations={k: v for k, v in self.incarnations.items() if k != node_id},
                          retired=self.retired + (node_id,))

    def with_incarnation(self, node_id: int, incarnation: str) -> Config:
        """Record a member's incarnation (used once, when a new cluster's founding is agreed)."""
        if node_id not in self.members:
            raise ValueError(f"node {node_id} is not a member")
        return self._next(incarnations={**self.incarnations, node_id: incarnation})

    def _next(self, **changes: Any) -> Config:  # fields of Config, checked by replace()
        return replace(self, epoch=self.epoch + 1, **changes)

    # ------------------------------------------------------------------ plain values

    def to_dict(self) -> dict[str, Any]:
        data = {"voters": list(self.node_ids), "learners": list(self.learners), "epoch": self.epoch,
                "alpha": self.alpha,
                "addresses": {str(k): v for k, v in sorted(self.addresses.items())},
                "incarnations": {str(k): v for k, v in sorted(self.incarnations.items())}}
        if self.retired:  # (only then: a configuration without removals encodes as before this field)
            data["retired"] = list(self.retired)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Raises ValueError on anything malformed (it may come from a file or the network)."""
        try:
            return cls(node_ids=tuple(data["voters"]), learners=tuple(data.get("learners", ())),
                       epoch=data["epoch"], alpha=data.get("alpha", ALPHA_DEFAULT),
                       addresses={int(k): v for k, v in dict(data.get("addresses", {})).items()},
                       incarnations={int(k): v for k, v in dict(data.get("incarnations", {})).items()},
                       retired=tuple(data.get("retired", ())))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a configuration: {exc!r}") from None


# A ConfigSchedule entry: (effective_slot, source_slot, config).
ScheduleEntry = tuple[int, int, Config]


def encode_change(base_epoch: int, config: Config) -> bytes:
    """The command that replaces the configuration of epoch ``base_epoch`` with ``config``."""
    body = json.dumps({"base": base_epoch, "config": config.to_dict()}, sort_keys=True, separators=(",", ":"))
    return CHANGE_PREFIX + body.encode()


def is_change(command: bytes) -> bool:
    return command[:1] == b"\x00" and command.startswith(CHANGE_PREFIX)


def refuse_change_command(command: bytes) -> None:
    """``propose``'s check (both engines): ``ValueError`` for a command that starts with ``CHANGE_PREFIX``,
    which every replica would apply as a change of members, past ``propose_change``'s checks."""
    if is_change(command):
        raise ValueError("a command may not start with paxos.membership.CHANGE_PREFIX (it would change the "
                         "members); use propose_change for a change")


def decode_change(command: bytes) -> tuple[int, Config]:
    """``(base_epoch, config)``; raises ValueError when the command is not a well-formed change."""
    if not is_change(command):
        raise ValueError("not a configuration change")
    try:
        data = json.loads(command[len(CHANGE_PREFIX):])
        base = data["base"]
        if not isinstance(base, int) or isinstance(base, bool):
            raise ValueError("base epoch is not an int")
        return base, Config.from_dict(data["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed configuration change: {exc}") from None


class ConfigSchedule:
    """Which configuration governs each slot: entries ``(effective_slot, source_slot, config)``.

    The first entry governs from slot 1 (or from the snapshot on); a change decided at ``source_slot``
    adds an entry governing from ``source_slot + alpha``. Entries are in slot order.
    """

    def __init__(self, entries: Iterable[ScheduleEntry]) -> None:
        ordered = sorted((int(e), int(s), c) for e, s, c in entries)
        if not ordered:
            raise ValueError("a schedule needs at least one configuration")
        self._entries: list[ScheduleEntry] = ordered

    @classmethod
    def initial(cls, config: Config) -> ConfigSchedule:
        return cls([(1, 0, config)])

    @property
    def entries(self) -> tuple[ScheduleEntry, ...]:
        return tuple(self._entries)

    @property
    def latest(self) -> Config:
        return self._entries[-1][2]

    def for_slot(self, slot: int) -> Config:
        found = self._entries[0][2]
        for effective, _source, config in self._entries:
            if effective > slot:
                break
            found = config
        return found

    def from_slot(self, slot: int) -> list[Config]:
        """Every configuration that governs some slot ``>= slot``."""
        out = [self.for_slot(slot)]
        out.extend(c for e, _s, c in self._entries if e > slot)
        return out

    def members_from(self, slot: int) -> set[int]:
        return {n for c in self.from_slot(slot) for n in c.members}

    @property
    def latest_effective(self) -> int:
        """The slot from which the latest configuration governs."""
        return self._entries[-1][0]

    def apply(self, slot: int, command: bytes) -> bool:
        """A decided command at ``slot`` (applied in slot order). Returns True if it changed the schedule.

        A change based on an epoch other than the newest one is ignored (raced or retried); a
        malformed one too. Every replica sees the same decided commands, so every replica ignores the
        same ones.
        """
        try:
            base, config = decode_change(command)
        except ValueError:
            return False
        latest = self.latest
        if base != latest.epoch or config.epoch != base + 1 or config.alpha != latest.alpha:
            return False
        self._entries.append((slot + latest.alpha, slot, config))
        return True

    def through(self, slot: int) -> tuple[ScheduleEntry, ...]:
        """The entries a snapshot at ``slot`` must carry: changes decided at or below it, minus those
        that govern only slots at or below it."""
        kept = [e for e in self._entries if e[1] <= slot]
        return tuple(_prune(kept, slot))

    def forget_through(self, slot: int) -> None:
        """Slots up to ``slot`` are compacted: nobody needs their configurations any more."""
        self._entries = _prune(self._entries, slot)

    def to_list(self) -> list[list[Any]]:
        return [[e, s, c.to_dict()] for e, s, c in self._entries]

    @classmethod
    def from_list(cls, data: Iterable[Any]) -> ConfigSchedule:
        try:
            return cls([(int(e), int(s), Config.from_dict(c)) for e, s, c in data])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a configuration schedule: {exc}") from None


def _prune(entries: list[ScheduleEntry], slot: int) -> list[ScheduleEntry]:
    """Drop entries that govern only slots ``<= slot`` (the last one starting at or below ``slot + 1``
    still governs ``slot + 1``)."""
    start = 0
    for i, (effective, _s, _c) in enumerate(entries):
        if effective <= slot + 1:
            start = i
    return list(entries[start:])
