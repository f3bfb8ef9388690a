"""The two Paxos engines alone, in process: commands decided per second of CPU, and exact messages and
persist batches per command (``compare.py --engines`` runs this after its live part).

Three replicas of one engine (``paxos.replica.Replica``, the core; ``paxos.classic.ClassicReplica``,
one essential-paxos instance per slot) exchange messages through an in-process FIFO network with no
loss, as ``bench/core_bench.py`` does: each round the leader gets ``k`` new commands, packs them into
one slot (``batch_count_max = k``), and every message is delivered until the network is empty; records
are "persisted" by appending to a list. Options are the engines' defaults (no thrifty Accepts, no lazy
decides, no early Accepts), so the counts are those of ``tests/paxos/test_classic_costs.py``. What is
left is the CPU each engine spends per slot and per command. Rounds alternate the engines, each
measured for ``seconds``; the ratio is the median over rounds of classic / core within a round.

    python bench/engine_cpu.py [--seconds 0.5] [--rounds 7] [--levels 1,16,64,256]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import benchargs  # noqa: E402  (beside this script: python bench/SCRIPT.py puts bench/ on sys.path)

from paxos.classic import ClassicReplica  # noqa: E402
from paxos.replica import Config, Options, Replica  # noqa: E402

ENGINES = {"core": Replica, "classic": ClassicReplica}


class _World:
    """Three replicas of one engine on a lossless FIFO network, counting messages and persist batches."""

    def __init__(self, engine_class, per_round: int) -> None:
        config = Config(node_ids=(1, 2, 3))
        options = Options(heartbeat_ticks=2, election_timeout_ticks=10, window=32, batch_count_max=per_round)
        self.replicas = {i: engine_class(i, config, rng=random.Random(i), options=options) for i in config.node_ids}
        self.network: deque = deque()
        self.messages = 0
        self.persist_batches = 0
        for _ in range(1000):
            for replica in self.replicas.values():
                replica.tick()
                self._collect(replica)
            self._deliver_all()
            leaders = [r for r in self.replicas.values() if r.is_leader]
            if len(leaders) == 1:
                self.leader = leaders[0]
                break
        else:
            raise RuntimeError("no leader elected")
        self.counter = 0

    def _collect(self, replica) -> None:
        actions = replica.take_actions()
        if actions.persist:
            self.persist_batches += 1  # one fsync in a store
        self.messages += len(actions.send) + len(actions.send_early)
        self.network.extend(actions.send_early)
        self.network.extend(actions.send)

    def _deliver_all(self) -> None:
        network, replicas = self.network, self.replicas
        while network:
            to, message = network.popleft()
            replicas[to].receive(message)
            self._collect(replicas[to])

    def round(self, per_round: int) -> None:
        leader = self.leader
        before = leader.applied_slot
        for _ in range(per_round):
            self.counter += 1
            leader.propose(b"set k%d v" % self.counter)
        self._collect(leader)
        self._deliver_all()
        if leader.applied_slot <= before:
            raise RuntimeError("no progress in a fault-free round")


def exact_costs(engine: str, per_round: int, rounds: int = 20) -> tuple[float, float]:
    """Messages and persist batches per command, steady state (the election not counted)."""
    world = _World(ENGINES[engine], per_round)
    world.messages = world.persist_batches = 0
    for _ in range(rounds):
        world.round(per_round)
    commands = rounds * per_round
    return world.messages / commands, world.persist_batches / commands


def commands_per_second(engine: str, per_round: int, seconds: float) -> float:
    world = _World(ENGINES[engine], per_round)
    start = time.perf_counter()
    deadline = start + seconds
    done = 0
    while time.perf_counter() < deadline:
        world.round(per_round)
        done += per_round
    return done / (time.perf_counter() - start)


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def measure(levels: list[int], seconds: float, rounds: int, log=print) -> list[dict]:
    rows = []
    for k in levels:
        rates: dict[str, list[float]] = {e: [] for e in ENGINES}
        ratios = []
        for r in range(rounds):
            order = list(ENGINES) if r % 2 == 0 else list(ENGINES)[::-1]
            got = {e: commands_per_second(e, k, seconds) for e in order}
            for e, v in got.items():
                rates[e].append(v)
            ratios.append(got["classic"] / got["core"])
        for e in ENGINES:
            messages, batches = exact_costs(e, k)
            row = {"engine": e, "per_round": k, "commands_s": median(rates[e]),
                   "commands_s_min": min(rates[e]), "commands_s_max": max(rates[e]),
                   "x_core": 1.0 if e == "core" else median(ratios),
                   "messages_per_command": messages, "persist_batches_per_command": batches}
            rows.append(row)
            log(f"  in process {e:<8} {k:>4} per round: {row['commands_s']:>10,.0f} commands/s "
                f"(x core {row['x_core']:.2f}; {messages:.3f} messages, {batches:.3f} persist batches per command)")
    return rows


HEADERS = ["engine", "commands per round", "commands/s", "x core", "range", "messages/command",
           "persist batches/command"]


def table(rows: list[dict]) -> list[list[str]]:
    return [[r["engine"], str(r["per_round"]), f"{r['commands_s']:,.0f}", f"{r['x_core']:.2f}",
             f"{r['commands_s_min']:,.0f}-{r['commands_s_max']:,.0f}", f"{r['messages_per_command']:.3f}",
             f"{r['persist_batches_per_command']:.3f}"]
            for r in sorted(rows, key=lambda r: (r["engine"] != "core", r["per_round"]))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=benchargs.positive_float, default=0.5, help="seconds per engine per round")
    ap.add_argument("--rounds", type=benchargs.positive_int, default=7)
    ap.add_argument("--levels", type=benchargs.positive_int_list, default=[1, 16, 64, 256],
                    help="commands per round, comma list")
    args = ap.parse_args(argv)
    rows = measure(args.levels, args.seconds, args.rounds)
    print()
    for row in [HEADERS, *table(rows)]:
        print("  ".join(f"{c:>12}" for c in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
