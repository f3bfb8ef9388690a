"""Throughput of the pure Multi-Paxos core (``paxos.replica``), no I/O, no faults.

Three replicas exchange messages through an in-process FIFO network with no loss. Each round the
client side hands the leader ``batch`` new commands, the leader's ``take_actions()`` packs them into
slots (``batch_count_max = batch``), and every message in flight is delivered until the network is
empty; the round's commands are then decided and applied on all three replicas. Records are "persisted"
by appending to a list, so the figure is the cost of the protocol logic alone: an upper bound for the
real server, which adds fsync, framing and sockets.

Run: ``python bench/core_bench.py [--seconds S]``. Prints commands decided per second; asserts nothing.
"""
from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections import deque

import benchargs  # noqa: E402  (beside this script: python bench/SCRIPT.py puts bench/ on sys.path)

from paxos.replica import Config, Options, Replica


def _elect(replicas: dict, network: deque, storage: dict) -> Replica:
    for _ in range(1000):
        for replica in replicas.values():
            replica.tick()
            _collect(replica, network, storage)
        _deliver_all(replicas, network, storage)
        leaders = [r for r in replicas.values() if r.is_leader]
        if len(leaders) == 1:
            return leaders[0]
    raise RuntimeError("no leader elected")


def _collect(replica: Replica, network: deque, storage: dict) -> int:
    actions = replica.take_actions()
    storage[replica.node_id].extend(actions.persist)  # persist first, as the contract says
    for to, message in actions.send:
        network.append((to, message))
    return sum(len(batch) for _, batch in actions.apply)


def _deliver_all(replicas: dict, network: deque, storage: dict) -> int:
    applied = 0
    for _ in range(10_000_000):
        if not network:
            return applied
        to, message = network.popleft()
        replicas[to].receive(message)
        applied += _collect(replicas[to], network, storage)
    raise RuntimeError("network did not drain")


def run(batch: int, seconds: float) -> tuple[int, float]:
    config = Config(node_ids=(1, 2, 3))
    options = Options(heartbeat_ticks=2, election_timeout_ticks=10, window=32, batch_count_max=batch)
    replicas = {i: Replica(i, config, rng=random.Random(i), options=options) for i in config.node_ids}
    network: deque = deque()
    storage = {i: [] for i in config.node_ids}
    leader = _elect(replicas, network, storage)
    decided_at_leader = 0
    counter = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(batch):
            counter += 1
            leader.propose(b"set k%d v" % counter)
        leader_applied_before = leader.applied_slot
        _collect(leader, network, storage)
        _deliver_all(replicas, network, storage)
        if leader.applied_slot <= leader_applied_before:
            raise RuntimeError("no progress in a fault-free round")
        decided_at_leader = counter
        for records in storage.values():  # keep memory flat over a long run
            records.clear()
    elapsed = time.perf_counter() - start
    return decided_at_leader, elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=benchargs.positive_float, default=3.0, help="duration of each measurement")
    args = parser.parse_args(argv)
    print(f"core_bench: 3 replicas, in-process network, no faults, window=32; "
          f"Python {platform.python_version()} on {platform.machine()} ({platform.processor() or 'no processor name'})")
    for batch in (1, 100):
        commands, elapsed = run(batch, args.seconds)
        print(f"  batch {batch:>3}: {commands:>9} commands decided in {elapsed:.2f}s = "
              f"{commands / elapsed:>10,.0f} commands/s")


if __name__ == "__main__":
    sys.exit(main())
