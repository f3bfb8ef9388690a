"""Three Multi-Paxos replicas in one process, with the messages passed between them by hand.

Run it from the repository root (it needs the ``paxos`` package installed or on the path):

    python examples/three_replicas.py

This is the example that docs/learning.md walks through. It builds three ``paxos.replica.Replica``
objects and plays the shell for all of them: it carries out each ``Actions`` batch in the contract
order (persist, then send, then apply), keeps every node's durable records in a list (its "disk")
and applies decided commands to a dict per node (its state machine). The network is a FIFO queue
of ``(sender, receiver, message)``; the script decides which messages get lost. Nothing is
concurrent: one message is delivered at a time, then the receiver's ``take_actions()`` is carried
out at once.

The story, in four acts:

1. Node 1's election timer fires first and it wins the election at Ballot(1, 1).
2. One write, ``x=1``, from ``propose()`` to ``apply`` on all three nodes (slot 1).
3. Trouble: leader 1 gets ``y=2`` decided in slot 2 but its links fail before it can say so, and its
   ``z=3`` (slot 3) reaches nobody. Node 2 takes over at Ballot(2, 2), re-proposes ``y=2``, opens
   slots 3, 4 and 5 for ``v=4``, ``u=5``, ``t=6`` (the Accept for slot 4 is lost) and crashes before
   any reply arrives. The grid printed at the end of act 3 is the state before the leader change.
4. The leader change: node 3 runs for Ballot(3, 3); node 1, back online, steps down and promises.
   Node 3 keeps the decided ``y=2`` (slot 2), re-proposes ``v=4`` accepted at the highest ballot
   (slot 3) over node 1's ``z=3``, fills slot 4 with a no-op, re-proposes ``t=6`` (slot 5), and puts
   the new command ``w=7`` in slot 6. Node 2 restarts from its disk and catches up.

Everything is deterministic: each replica gets a ``random.Random`` drawn from one seeded generator,
used only for its election timeout (``election_timeout_ticks`` plus a random part below it). The
story depends on the order in which the timers fire, so the script checks that order and stops
with an error if a different seed or core changes it.
"""
from __future__ import annotations

import random
import sys
from collections import deque
from dataclasses import dataclass, field

from paxos.actions import AcceptRecord, Actions, DurableState
from paxos.ballot import Ballot
from paxos.messages import (
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Decide,
    Heartbeat,
    HeartbeatAck,
    Nack,
    Prepare,
    Promise,
)
from paxos.replica import Config, Options, Replica

SEED = 6
NODES = (1, 2, 3)

# The Replica method that handles each message type (Replica.receive dispatches with a `match`).
HANDLERS = {
    Prepare: "_on_prepare",
    Promise: "_on_promise",
    Accept: "_on_accept",
    Accepted: "_on_accepted",
    Nack: "_on_nack",
    Decide: "_on_decide",
    Heartbeat: "_on_heartbeat",
    HeartbeatAck: "_on_heartbeat_ack",
    CatchupRequest: "_on_catchup_request",
    CatchupReply: "_on_catchup_reply",
}


@dataclass
class Outcome:
    """What the story produced, for the walkthrough's test to check."""

    # The state before the leader change of act 4: slot -> node -> (ballot or None, value, decided).
    grid_before: dict = field(default_factory=dict)
    # What the new leader proposed at its ballot, per slot (read from its AcceptRecords).
    picked: dict = field(default_factory=dict)
    picked_ballot: Ballot | None = None
    # At the end: node -> {slot: batch} as applied by that node's state machine, and its dict.
    logs: dict = field(default_factory=dict)
    kv: dict = field(default_factory=dict)


def show(value: tuple) -> str:
    """A batch as the walkthrough writes it: ``x=1``, or ``no-op`` for the empty batch."""
    return " ".join(command.decode() for command in value) if value else "no-op"


class Cluster:
    """The hand-made shell and network for three replicas."""

    def __init__(self, seed: int, out=print) -> None:
        self.out = out
        self.config = Config(node_ids=NODES)
        # defaults: thrifty, lazy_decide and early_accepts are all off. check_quorum (on by default)
        # is turned off: the story needs a cut-off leader that goes on believing it leads (act 4).
        self.options = Options(check_quorum=False)
        self._seeds = random.Random(seed)  # one generator; each replica gets its own child
        self.disk: dict[int, list] = {n: [] for n in NODES}  # durable records, in order
        self.kv: dict[int, dict] = {n: {} for n in NODES}  # the state machine of each node
        self.log: dict[int, dict] = {n: {} for n in NODES}  # slot -> batch, as applied
        self.replicas: dict[int, Replica] = {n: self._build(n, None) for n in NODES}
        self.network: deque = deque()  # (sender, receiver, message), delivered first in first out
        self.cut: set[int] = set()  # nodes whose links are down: messages to or from them are lost
        self.crashed: set[int] = set()
        self.lost_quietly = 0

    def _build(self, node: int, state: DurableState | None) -> Replica:
        rng = random.Random(self._seeds.randrange(2**32))
        return Replica(node, self.config, rng=rng, state=state, options=self.options)

    # ------------------------------------------------------------- the shell: the contract order

    def carry_out(self, node: int, actions: Actions, indent: str = "        ") -> None:
        """Persist, then send, then apply: the order of the ``Actions`` docstring."""
        for record in actions.persist:
            self.disk[node].append(record)  # here the real shell appends and fsyncs
            self.out(f"{indent}persist {record}")
        for to, message in _group(actions.send):
            self.out(f"{indent}send    {message} -> {', '.join(map(str, to))}")
            for receiver in to:
                self.network.append((node, receiver, message))
        for slot, batch in actions.apply:
            self.log[node][slot] = batch
            for command in batch:
                key, _, value = command.decode().partition("=")
                self.kv[node][key] = value
            self.out(f"{indent}apply   slot {slot}: {show(batch)}  (node {node}'s dict: {self.kv[node]})")
        for read_id, _ in actions.reads:
            self.out(f"{indent}answer read {read_id}")
        if actions.dropped_proposals:
            self.out(f"{indent}dropped (tell the clients to retry elsewhere): {actions.dropped_proposals}")

    def take(self, node: int, why: str) -> None:
        self.out(f"  [node {node}] take_actions()  ({why})")
        self.carry_out(node, self.replicas[node].take_actions())

    # ------------------------------------------------------------- inputs

    def propose(self, node: int, command: bytes) -> None:
        accepted = self.replicas[node].propose(command)
        self.out(f"  [node {node}] propose({command!r}) -> {accepted}   (Replica.propose only queues it)")
        self.take(node, "Replica.take_actions -> _fill_window -> _open_slot")

    def deliver_next(self) -> None:
        sender, receiver, message = self.network.popleft()
        # A message already on the wire still arrives after its sender crashed; one to a crashed
        # node, or to or from a node whose links are down, is lost.
        if receiver in self.crashed or {sender, receiver} & self.cut:
            self.out(f"  {sender} -> {receiver}  {message}\n        LOST")
            return
        replica = self.replicas[receiver]
        before = replica.status()
        self.out(f"  {sender} -> {receiver}  {message}\n        node {receiver}: Replica.{HANDLERS[type(message)]}")
        replica.receive(message)
        self._say_changes(receiver, before, replica.status())
        self.carry_out(receiver, replica.take_actions())

    def deliver_all(self) -> None:
        while self.network:
            self.deliver_next()

    def deliver_until(self, condition) -> None:
        while not condition():
            self.deliver_next()

    def lose(self, predicate) -> None:
        """The network loses the queued messages that match ``predicate(sender, receiver, message)``."""
        kept = deque()
        for item in self.network:
            if predicate(*item):
                self.out(f"  {item[0]} -> {item[1]}  {item[2]}\n        LOST")
            else:
                kept.append(item)
        self.network = kept

    def tick_until_election(self) -> int:
        """Tick every running node once per round until one's election timer fires; return that node.

        The candidate's actions are not taken yet (the caller does, after changing the network if
        the story needs it). Messages made by other ticks are delivered at the end of each round;
        while nobody leads, those are only a cut-off leader's heartbeats, which are lost.
        """
        running = [n for n in NODES if n not in self.crashed]
        for round_number in range(1, 10 * self.options.election_timeout_ticks):
            for node in running:
                replica = self.replicas[node]
                replica.tick()
                if replica.status()["role"] == "candidate":
                    self.out(f"  [node {node}] tick() #{round_number}: no leader heard for "
                             f"{round_number} ticks, the election timer fires -> Replica._start_election")
                    if self.lost_quietly:
                        self.out(f"        (meanwhile {self.lost_quietly} heartbeats and retransmissions "
                                 f"of a cut-off leader were lost)")
                        self.lost_quietly = 0
                    return node
                self._carry_out_quietly(node, replica.take_actions())
        raise AssertionError("no election timer fired")

    def tick_all(self, count: int) -> None:
        """``count`` rounds of ticks on every running node; what the ticks send joins the network."""
        for round_number in range(1, count + 1):
            for node in NODES:
                if node in self.crashed:
                    continue
                self.replicas[node].tick()
                actions = self.replicas[node].take_actions()
                if actions:
                    self.out(f"  [node {node}] tick() #{round_number} -> take_actions()")
                    self.carry_out(node, actions)

    def _carry_out_quietly(self, node: int, actions: Actions) -> None:
        assert not actions.persist and not actions.apply, "a quiet tick changed durable state"
        for to, message in actions.send:
            if {node, to} & (self.cut | self.crashed):
                self.lost_quietly += 1
            else:
                self.network.append((node, to, message))

    # ------------------------------------------------------------- faults

    def crash(self, node: int) -> None:
        """The process dies: its memory is gone; its disk (``self.disk[node]``) stays."""
        self.crashed.add(node)
        self.out(f"  node {node} CRASHES (its records on disk stay; messages to it are lost)")

    def restart(self, node: int) -> None:
        """Rebuild the replica from its durable records, as ``kvstore`` does after a crash."""
        self.crashed.discard(node)
        state = DurableState.replay(self.disk[node])
        self.kv[node], self.log[node] = {}, {}  # no snapshot here: the state machine starts empty
        self.replicas[node] = self._build(node, state)
        self.out(f"  node {node} RESTARTS from its {len(self.disk[node])} records: promised "
                 f"{state.promised}, decided slots {sorted(state.decided)}, accepted slots {sorted(state.accepted)}")
        self.take(node, "the decided slots recovered from disk are applied again")

    # ------------------------------------------------------------- reporting

    def _say_changes(self, node: int, before: dict, after: dict) -> None:
        if after["role"] != before["role"]:
            ballot = self.replicas[node].ballot
            self.out(f"        node {node}: {before['role']} -> {after['role']} (promised {ballot})")
        for name, count in after["counters"].items():
            if count > before["counters"].get(name, 0):
                self.out(f"        node {node}: counter {name} + 1")

    def grid(self) -> dict:
        """slot -> node -> (ballot accepted or None, value, decided at that node), from durable state.

        A crashed node's cell is what its disk holds; a running node's is its ``durable_state()``.
        """
        states = {n: DurableState.replay(self.disk[n]) if n in self.crashed
                  else self.replicas[n].durable_state() for n in NODES}
        slots = sorted({s for st in states.values() for s in (*st.accepted, *st.decided)})
        out = {}
        for slot in slots:
            out[slot] = {}
            for node, st in states.items():
                if slot in st.accepted:
                    ballot, value = st.accepted[slot]
                    out[slot][node] = (ballot, st.decided.get(slot, value), slot in st.decided)
                elif slot in st.decided:
                    out[slot][node] = (None, st.decided[slot], True)
        return out

    def print_grid(self, grid: dict) -> None:
        self.out("  slot | " + " | ".join(f"node {n}{' (crashed)' if n in self.crashed else ''}"
                                          for n in NODES))
        for slot, cells in grid.items():
            row = []
            for node in NODES:
                cell = cells.get(node)
                if cell is None:
                    row.append("-")
                else:
                    ballot, value, decided = cell
                    text = f"{ballot} {show(value)}" if ballot is not None else show(value)
                    row.append(text + (", decided" if decided else ""))
            self.out(f"  {slot:>4} | " + " | ".join(row))


def _group(send: list) -> list:
    """Group a broadcast (one message object to several nodes) into one line of the trace."""
    groups: list = []
    for to, message in send:
        if groups and groups[-1][1] is message:
            groups[-1][0].append(to)
        else:
            groups.append(([to], message))
    return groups


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"the story went another way than docs/learning.md tells: {what}")


def main(seed: int = SEED, out=print) -> Outcome:
    cluster = Cluster(seed, out)
    outcome = Outcome()
    r = cluster.replicas

    out("=== Act 1: an election. Nobody leads; every node ticks until one's election timer fires.")
    candidate = cluster.tick_until_election()
    _expect(candidate == 1, f"node {candidate} ran first, not node 1")
    cluster.take(1, "the candidate's promise to itself is persisted before its Prepare leaves")
    cluster.deliver_all()
    _expect(r[1].is_leader and r[1].ballot == Ballot(1, 1), "node 1 did not win at Ballot(1, 1)")

    out("\n=== Act 2: one write, x=1, from propose() to apply on every node.")
    cluster.propose(1, b"x=1")
    cluster.deliver_all()
    _expect(all(cluster.log[n] == {1: (b"x=1",)} for n in NODES), "x=1 is not applied at slot 1 everywhere")

    out("\n=== Act 3: trouble.")
    out("--- Leader 1 proposes y=2 (slot 2). Node 2's Accepted arrives and slot 2 is decided at node 1 ...")
    cluster.propose(1, b"y=2")
    cluster.deliver_next()  # Accept -> 2
    cluster.deliver_next()  # Accept -> 3
    cluster.deliver_next()  # Accepted 2 -> 1: decided at node 1, which queues a Decide
    out("--- ... and then node 1's links fail: the Decide for slot 2 and node 3's Accepted are lost.")
    cluster.cut.add(1)
    cluster.deliver_all()
    out("--- Leader 1, cut off and unaware of it, proposes z=3 (slot 3); its Accepts are lost.")
    cluster.propose(1, b"z=3")
    cluster.deliver_all()
    out("--- Nodes 2 and 3 hear no leader; node 2's timer fires first.")
    candidate = cluster.tick_until_election()
    _expect(candidate == 2, f"node {candidate} ran second, not node 2")
    cluster.take(2, "Prepare for every slot from first_slot = decided_slot + 1 = 2")
    cluster.deliver_until(lambda: r[2].is_leader)
    _expect(r[2].ballot == Ballot(2, 2), "node 2 did not win at Ballot(2, 2)")
    out("--- Leader 2 gets three commands, one batch each: v=4 (slot 3), u=5 (slot 4), t=6 (slot 5).")
    for command in (b"v=4", b"u=5", b"t=6"):
        cluster.propose(2, command)
    out("--- The network loses the Accept for slot 4, and node 2 crashes before any reply comes back;")
    out("    the messages it sent before the crash still arrive.")
    cluster.lose(lambda sender, receiver, m: isinstance(m, Accept) and m.slot == 4)
    cluster.crash(2)
    cluster.deliver_all()

    out("\n--- The grid before the leader change: (ballot, value) each node accepted, per slot.")
    outcome.grid_before = cluster.grid()
    cluster.print_grid(outcome.grid_before)

    out("\n=== Act 4: the leader change. Node 3 hears nobody (node 1 is cut off, node 2 is down).")
    candidate = cluster.tick_until_election()
    _expect(candidate == 3, f"node {candidate} ran third, not node 3")
    out("--- Just then node 1's links come back (node 1 still believes it leads at Ballot(1, 1)).")
    cluster.cut.discard(1)
    cluster.take(3, "Prepare(Ballot(3, 3), first_slot=2) to nodes 1 and 2")
    cluster.deliver_all()
    _expect(r[3].is_leader and r[3].ballot == Ballot(3, 3), "node 3 did not win at Ballot(3, 3)")
    outcome.picked_ballot = r[3].ballot
    outcome.picked = {rec.slot: rec.value for rec in cluster.disk[3]
                      if isinstance(rec, AcceptRecord) and rec.ballot == r[3].ballot}
    out("--- A new command goes to the first slot above the re-proposed ones.")
    cluster.propose(3, b"w=7")
    cluster.deliver_all()
    out("--- Node 2 restarts from its disk; the leader's next heartbeat tells it what is decided.")
    cluster.restart(2)
    cluster.tick_all(r[3].options.heartbeat_ticks)
    cluster.deliver_all()

    out("\n=== The end: every node's applied log and dict.")
    for node in NODES:
        log = ", ".join(f"{slot}: {show(batch)}" for slot, batch in sorted(cluster.log[node].items()))
        out(f"  node {node}: {log}   dict {cluster.kv[node]}")
    outcome.logs = {n: dict(cluster.log[n]) for n in NODES}
    outcome.kv = {n: dict(cluster.kv[n]) for n in NODES}
    return outcome


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else SEED)
