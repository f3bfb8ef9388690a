"""A recorded run of the Multi-Paxos core, for a picture of Paxos at work (``kv trace``).

Theory of operation
-------------------
``TraceRun`` is a tiny world of N ``paxos.replica.Replica`` nodes and an in-memory network, driven
by one ``random.Random(seed)``: the same seed gives the same run, message for message. Time is a
whole number of *steps*. At each step, in this order:

1. the scenario's script acts (a client command, a crash, a restart, a partition, a heal);
2. every message due at this step is delivered, in the order it was sent (a message takes
   ``LATENCY_STEPS`` steps, drawn at random); one whose receiver is down, or cut off from its sender
   by a partition, when it arrives is lost (dropped) instead;
3. every ``TICK_STEPS`` steps each running node gets one ``tick()`` (its heartbeat and election timer).

After each input the node's ``take_actions()`` is carried out at once, in contract order: ``persist``
(appended to the node's disk: a list of records), then ``send`` (each message joins the network), then
``apply`` (the node's log of decided values). A crash throws the ``Replica`` away; a restart builds a
new one from ``DurableState.replay`` of its disk, as a real node recovers from its log.

Everything is recorded for the drawing (``paxos.trace_html``): each message as a ``Flight`` (sender,
receiver, sent and arrival step, and whether it arrived), and each event on a node's lifeline as a
``Mark`` (crash, restart, partition and heal, a node becoming candidate or leader or stepping down, a
client command, a slot applied). The run also checks the first rule of Paxos as it goes: no slot is
ever decided with two values (``AssertionError`` naming the slot otherwise).

Scenarios (``SCENARIOS``): ``round`` (an election, then one command through Accept, Accepted and
Decide), ``leader-change`` (the leader crashes with a command in flight; another node is elected,
re-proposes what it learns from the promises, and the old leader comes back and catches up) and
``random`` (a seeded schedule of crashes, restarts, partitions and commands, then a healed cluster
settles). Every loop is bounded by a step limit.

Pure like the rest of ``paxos``: no clock, no I/O, no module-level ``random``.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .actions import DurableState, Record
from .ballot import Ballot
from .messages import (
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Decide,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Prepare,
    Promise,
    Value,
)
from .replica import Config, Options, Replica

__all__ = ["Flight", "Mark", "Trace", "TraceRun", "SCENARIOS", "run_scenario", "describe", "show_value",
           "TICK_STEPS", "LATENCY_STEPS"]

TICK_STEPS = 4  # steps between two ticks of a node
LATENCY_STEPS = (1, 3)  # a message takes this many steps, inclusive, drawn at random


@dataclass(frozen=True)
class Flight:
    """One message on the network."""

    src: int
    dst: int
    sent_at: int
    arrived_at: int  # when it was delivered or lost (or would have arrived: see ``fate``)
    message: Message
    fate: str  # "delivered", "lost" (receiver down or cut off), "in flight" (the run ended first)

    @property
    def kind(self) -> str:
        return type(self.message).__name__


@dataclass(frozen=True)
class Mark:
    """Something that happened at one step, on one node's lifeline (``node`` None: the whole network)."""

    time: int
    node: int | None
    kind: str  # crash, restart, partition, heal, candidate, leader, follower, command, applied, replayed
    text: str
    slot: int = 0  # applied / replayed: the slot


@dataclass
class Trace:
    """What a run did, for ``paxos.trace_html.render``."""

    title: str
    seed: int
    nodes: tuple[int, ...]
    flights: list[Flight] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    decided: dict[int, Value] = field(default_factory=dict)  # slot -> batch, decided somewhere
    end: int = 0


def show_value(batch: Value) -> str:
    """A batch as people write it: ``x=1``, ``x=1, y=2``, or ``no-op`` for the empty batch."""
    if not batch:
        return "no-op"
    return ", ".join(c.decode("utf-8", "replace") if isinstance(c, (bytes, bytearray)) else str(c) for c in batch)


def _ballot(b: Ballot) -> str:
    return f"({b.number},{b.node_id})"


def describe(message: Message) -> str:
    """A short label for a message arrow (the full ``repr`` goes in the tooltip)."""
    match message:
        case Prepare():
            return f"Prepare {_ballot(message.ballot)} from s{message.first_slot}"
        case Promise():
            slots = ",".join(f"s{e.slot}" for e in message.accepted)
            return f"Promise {_ballot(message.ballot)}" + (f" had {slots}" if slots else "")
        case Accept():
            return f"Accept s{message.slot} {_ballot(message.ballot)} {show_value(message.value)}"
        case Accepted():
            return f"Accepted s{message.slot}"
        case Nack():
            return f"Nack {_ballot(message.ballot)} < {_ballot(message.promised)}"
        case Decide():
            return f"Decide ≤s{message.decided_slot}"
        case Heartbeat():
            return f"Heartbeat ≤s{message.decided_slot}"
        case HeartbeatAck():
            return "HeartbeatAck"
        case CatchupRequest():
            return f"Catch-up? from s{message.first_slot}"
        case CatchupReply():
            if message.entries:
                return f"Catch-up s{message.entries[0].slot}-s{message.entries[-1].slot}"
            return "Catch-up (nothing)"
    return type(message).__name__


class TraceRun:
    """The world of one recorded run (see the module docstring)."""

    def __init__(self, seed: int, *, nodes: int = 3, options: Options = Options()) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.node_ids = tuple(range(1, nodes + 1))
        self.config = Config(node_ids=self.node_ids)
        self.options = options
        self.time = 0
        self.disks: dict[int, list[Record]] = {n: [] for n in self.node_ids}  # each node's durable records
        self.applied: dict[int, dict[int, Value]] = {n: {} for n in self.node_ids}  # slot -> batch, as applied
        self.learned: dict[int, set[int]] = {n: set() for n in self.node_ids}  # slots applied before, crashes or not
        self.replicas: dict[int, Replica] = {}
        self.roles: dict[int, str] = {}
        self.down: set[int] = set()
        self.groups: list[frozenset[int]] | None = None  # a partition: who can reach whom
        self.network: list[tuple[int, int, int, int, Message, int]] = []  # (arrive_at, seq, src, dst, message, sent_at)
        self._seq = 0
        self.flights: list[Flight] = []
        self.marks: list[Mark] = []
        self.decided: dict[int, Value] = {}
        self.commands = 0
        for n in self.node_ids:
            self._build(n)

    # ---------------------------------------------------------------- the nodes

    def _build(self, node: int) -> None:
        state = DurableState.replay(self.disks[node]) if self.disks[node] else None
        rng = random.Random(self.rng.randrange(2**32))
        self.replicas[node] = Replica(node, self.config, rng=rng, state=state, options=self.options)
        self.roles[node] = "follower"
        self._carry_out(node)  # a restarted node applies the decided slots it recovered

    def _carry_out(self, node: int) -> None:
        """Take the node's actions and carry them out: persist, then send, then apply."""
        replica = self.replicas[node]
        actions = replica.take_actions()
        self.disks[node].extend(actions.persist)
        for to, message in [*actions.send_early, *actions.send]:
            low, high = LATENCY_STEPS
            arrive_at = self.time + self.rng.randint(low, high)
            self._seq += 1
            self.network.append((arrive_at, self._seq, node, to, message, self.time))
        for slot, batch in actions.apply:
            self._learn(node, slot, batch)
        self._note_role(node)

    def _learn(self, node: int, slot: int, batch: Value) -> None:
        known = self.decided.setdefault(slot, batch)
        assert known == batch, f"safety: slot {slot} decided as {known!r} and as {batch!r}"
        replayed = slot in self.learned[node]  # a restarted node applies its log again
        self.learned[node].add(slot)
        self.applied[node][slot] = batch
        kind = "replayed" if replayed else "applied"
        self.marks.append(Mark(self.time, node, kind, f"s{slot} = {show_value(batch)}", slot))

    def _note_role(self, node: int) -> None:
        replica = self.replicas[node]
        role = replica.status()["role"]
        if role == self.roles[node]:
            return
        self.roles[node] = role
        ballot = _ballot(replica.ballot)
        text = {"candidate": f"candidate {ballot}", "leader": f"leader {ballot}"}.get(role, "follower")
        self.marks.append(Mark(self.time, node, role, text))

    # ---------------------------------------------------------------- the world's steps

    def _reachable(self, a: int, b: int) -> bool:
        return self.groups is None or any(a in g and b in g for g in self.groups)

    def step(self) -> None:
        """Deliver what is due now, tick if it is time, then move on one step."""
        due = sorted(m for m in self.network if m[0] == self.time)
        self.network = [m for m in self.network if m[0] != self.time]
        for arrive_at, _, src, dst, message, sent_at in due:
            if dst in self.down or not self._reachable(src, dst):
                self.flights.append(Flight(src, dst, sent_at, arrive_at, message, "lost"))
                continue
            self.flights.append(Flight(src, dst, sent_at, arrive_at, message, "delivered"))
            self.replicas[dst].receive(message)
            self._carry_out(dst)
        if self.time % TICK_STEPS == 0:
            for node in self.node_ids:
                if node not in self.down:
                    self.replicas[node].tick()
                    self._carry_out(node)
        self.time += 1

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def run_until(self, done: Callable[[], bool], limit: int) -> bool:
        """Step until ``done()`` holds, at most ``limit`` steps; whether it came to hold."""
        for _ in range(limit):
            if done():
                return True
            self.step()
        return done()

    # ---------------------------------------------------------------- what a scenario may do

    def leader(self) -> int | None:
        """The running node that leads, if exactly one does."""
        leaders = [n for n in self.node_ids if n not in self.down and self.replicas[n].is_leader]
        return leaders[0] if len(leaders) == 1 else None

    def applied_through(self, slot: int, nodes: Iterable[int] | None = None) -> bool:
        running = [n for n in self.node_ids if n not in self.down] if nodes is None else nodes
        return all(all(s in self.applied[n] for s in range(1, slot + 1)) for n in running)

    def settled(self, command: bytes) -> bool:
        """``command`` is decided, and every running node has applied every slot decided so far."""
        return (any(command in batch for batch in self.decided.values())
                and self.applied_through(max(self.decided)))

    def propose(self, text: str) -> bool:
        """A client hands ``text`` to the leader; False if no node leads now."""
        leader = self.leader()
        if leader is None:
            return False
        self.commands += 1
        self.marks.append(Mark(self.time, leader, "command", f"client: {text}"))
        self.replicas[leader].propose(text.encode())
        self._carry_out(leader)
        return True

    def crash(self, node: int) -> None:
        self.down.add(node)
        self.marks.append(Mark(self.time, node, "crash", "crash"))
        self.applied[node] = {}  # its state machine was in memory

    def restart(self, node: int) -> None:
        self.down.discard(node)
        self.marks.append(Mark(self.time, node, "restart", "restart from disk"))
        self._build(node)

    def partition(self, *groups: Iterable[int]) -> None:
        self.groups = [frozenset(g) for g in groups]
        text = " | ".join("{" + ",".join(map(str, sorted(g))) + "}" for g in self.groups)
        self.marks.append(Mark(self.time, None, "partition", f"partition {text}"))

    def heal(self) -> None:
        self.groups = None
        self.marks.append(Mark(self.time, None, "heal", "network healed"))

    def trace(self, title: str) -> Trace:
        pending = [Flight(src, dst, sent_at, arrive_at, message, "in flight")
                   for arrive_at, _, src, dst, message, sent_at in sorted(self.network)]
        return Trace(title=title, seed=self.seed, nodes=self.node_ids, flights=self.flights + pending,
                     marks=list(self.marks), decided=dict(sorted(self.decided.items())), end=self.time)


# -------------------------------------------------------------------- scenarios

ELECTION_STEPS_MAX = 400  # an election normally takes 10-20 ticks (40-80 steps)
SETTLE_STEPS_MAX = 200


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"trace scenario: {what} did not happen within its step limit")


def _elect(run: TraceRun) -> int:
    _need(run.run_until(lambda: run.leader() is not None, ELECTION_STEPS_MAX), "an election")
    leader = run.leader()
    assert leader is not None, "run_until saw a leader, and nothing stepped since"
    return leader


def scenario_round(seed: int, nodes: int = 3) -> Trace:
    """An election (Prepare, Promise), then one command decided (Accept, Accepted, Decide)."""
    run = TraceRun(seed, nodes=nodes)
    _elect(run)
    run.run(2)
    run.propose("x=1")
    _need(run.run_until(lambda: run.applied_through(1), SETTLE_STEPS_MAX), "slot 1 applied everywhere")
    run.run(4)
    return run.trace("one round: an election, then x=1 decided")


def scenario_leader_change(seed: int, nodes: int = 3) -> Trace:
    """A decided command; a second one in flight when the leader crashes; a new leader takes over and
    re-proposes what the promises report; the old leader restarts from its disk and catches up."""
    run = TraceRun(seed, nodes=nodes)
    first = _elect(run)
    run.propose("x=1")
    _need(run.run_until(lambda: run.applied_through(1), SETTLE_STEPS_MAX), "slot 1 applied everywhere")
    run.run(2)
    run.propose("y=2")
    run.run(2)  # its Accepts are on the wire...
    run.crash(first)  # ...when the leader dies
    _need(run.run_until(lambda: run.leader() not in (None, first), ELECTION_STEPS_MAX), "a new leader")
    run.propose("z=3")
    _need(run.run_until(lambda: run.settled(b"z=3"), SETTLE_STEPS_MAX), "z=3 applied by the running nodes")
    run.run(4)
    run.restart(first)
    _need(run.run_until(lambda: run.settled(b"z=3"), ELECTION_STEPS_MAX), "the restarted node caught up")
    run.run(4)
    return run.trace(f"leader change: node {first} crashes with y=2 in flight")


def scenario_random(seed: int, nodes: int = 3, steps: int = 240) -> Trace:
    """A seeded schedule of faults and commands for ``steps`` steps, then a healed cluster settles."""
    run = TraceRun(seed, nodes=nodes)
    faults = random.Random(seed ^ 0x5EED)  # the schedule's own generator: the world's stays as it is
    for _ in range(steps):
        roll = faults.random()
        if roll < 0.05:
            run.propose(f"c{run.commands + 1}={faults.randrange(100)}")
        elif roll < 0.06 and len(run.down) < (nodes - 1) // 2:
            run.crash(faults.choice([n for n in run.node_ids if n not in run.down]))
        elif roll < 0.075 and run.down:
            run.restart(faults.choice(sorted(run.down)))
        elif roll < 0.08 and run.groups is None:
            alone = faults.choice(run.node_ids)
            run.partition({alone}, set(run.node_ids) - {alone})
        elif roll < 0.09 and run.groups is not None:
            run.heal()
        run.step()
    if run.groups is not None:
        run.heal()
    for node in sorted(run.down):
        run.restart(node)
    _elect(run)
    last = f"c{run.commands + 1}=last"
    run.propose(last)
    _need(run.run_until(lambda: run.settled(last.encode()), ELECTION_STEPS_MAX),
          "every node applied every decided slot")
    run.run(4)
    return run.trace(f"random faults, seed {seed}")


SCENARIOS = {"round": scenario_round, "leader-change": scenario_leader_change, "random": scenario_random}


def run_scenario(name: str, seed: int, nodes: int = 3) -> Trace:
    """Run scenario ``name`` (a key of ``SCENARIOS``) for ``seed``; raises KeyError for an unknown name."""
    return SCENARIOS[name](seed, nodes)
