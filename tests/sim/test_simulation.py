"""Deterministic simulation of 3- and 5-replica clusters under faults (see ``paxos_sim``).

What is checked and how: each seed drives a ``Simulation`` through a few hundred random events
(deliver, drop, duplicate, tick, crash, restart, partition, heal, submit, read, compact, snapshot
transfer); after every event the simulator checks safety (one decided value per slot ever, applied
logs are prefixes of the decided log, only submitted commands are decided, reads see every earlier
applied slot). Then a liveness phase (no faults) requires commands given to the leader to be decided
everywhere within a bound. A failure names the seed and prints ``pytest tests/sim --seed N``.

The suite runs a fixed seed list, every seed in ``failing_seeds.txt``, and a time-boxed batch of fresh
seeds (``SIM_SECONDS``, default 20). Two deliberately broken variants show the checks have teeth:
a shell that sends before it persists, and a leader that ignores P2c when re-proposing.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from paxos.replica import Replica
from paxos_sim import LivenessFailure, SafetyViolation, Simulation

STEPS = 400
FIXED_SEEDS = range(1, 201)
FAILING_SEEDS_FILE = Path(__file__).with_name("failing_seeds.txt")


MODES = {"": {}, "compact_often": {"compact_often": True}, "postpone_elections": {"postpone_elections": True}}


def _failing_seeds() -> list[tuple[int, int, str]]:
    """Lines ``<nodes> <seed> [mode]``; mode is a key of MODES (none: the default event mix)."""
    out = []
    for line in FAILING_SEEDS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            nodes, seed, *mode = line.split()
            assert len(mode) <= 1 and (mode[0] if mode else "") in MODES, f"bad line in failing_seeds.txt: {line!r}"
            out.append((int(nodes), int(seed), mode[0] if mode else ""))
    return out


@pytest.mark.sim_seeds(FIXED_SEEDS)
def test_three_replicas_stay_safe_and_live(sim_seed):
    Simulation(sim_seed, nodes=3, steps=STEPS).run()


@pytest.mark.sim_seeds(FIXED_SEEDS)
def test_five_replicas_stay_safe_and_live(sim_seed):
    Simulation(sim_seed, nodes=5, steps=STEPS).run()


@pytest.mark.sim_seeds(range(1, 101))
@pytest.mark.parametrize("nodes", [3, 5])
def test_accepts_sent_before_the_leaders_own_fsync_stay_safe(sim_seed, nodes):
    """kvstore.server lets Accept leave before its fsync; crashes during that fsync must stay safe."""
    sim = Simulation(sim_seed, nodes=nodes, steps=STEPS, early_accepts=True)
    sim.run()
    if sim_seed == 1:
        assert sim.stats["crash_during_fsync"] > 0, "the mode never crashed a node during an fsync"


@pytest.mark.sim_seeds(range(1, 101))
@pytest.mark.parametrize("nodes", [3, 5])
def test_postponed_elections_stay_safe_and_live(sim_seed, nodes):
    """kvstore.server postpones a node's elections while it applies a backlog (lazy learners): nodes
    that postpone at random under faults keep every safety check, and the cluster is live after."""
    sim = Simulation(sim_seed, nodes=nodes, steps=STEPS, postpone_elections=True)
    sim.run()
    if sim_seed == 1:
        assert sim.stats["postponed"] > 0, "the mode never postponed an election"


@pytest.mark.sim_seeds(range(1, 301))
@pytest.mark.parametrize("nodes", [3, 5])
def test_aggressive_compaction_stays_safe_and_live(sim_seed, nodes):
    """compact_often: compaction ten times as frequent under faults, then a liveness phase in which
    every node keeps compacting at its own slots while messages are delayed and nodes pause (a long
    snapshot write) and then handle their queued ticks, messages and snapshots as one batch, as the
    kvstore driver does. Every command must still be decided and applied everywhere."""
    Simulation(sim_seed, nodes=nodes, steps=STEPS, compact_often=True).run()


def test_aggressive_compaction_exercises_snapshots_pauses_and_elections_behind_a_snapshot():
    """compact_often means something only if its runs install snapshots (also mid-batch), pause
    nodes, and make candidates meet a promiser whose snapshot is ahead of them."""
    totals: dict[str, int] = {}
    behind = 0
    for seed in range(1, 41):
        for nodes in (3, 5):
            sim = Simulation(seed, nodes=nodes, steps=STEPS, compact_often=True).run()
            behind += sum(n.replica.status()["counters"].get("election_behind", 0) for n in sim.nodes.values())
            for name, value in sim.stats.items():
                totals[name] = totals.get(name, 0) + value
    for name in ("compact", "snapshots_installed", "snapshots_installed_mid_batch", "pauses"):
        assert totals[name] > 0, f"no {name} in 80 compact_often runs: {totals}"
    assert behind > 0, "no candidate was ever behind a promiser's snapshot in 80 compact_often runs"


@pytest.mark.parametrize("nodes,seed,mode", _failing_seeds(), ids=lambda v: str(v))
def test_seeds_that_once_failed_now_pass(nodes, seed, mode):
    Simulation(seed, nodes=nodes, steps=STEPS, **MODES[mode]).run()


@pytest.mark.sim_batch
def test_fresh_random_seeds_for_a_time_box():
    """Fresh seeds until SIM_SECONDS pass; a failing seed is appended to failing_seeds.txt."""
    seconds = float(os.environ.get("SIM_SECONDS", "20"))
    deadline = time.monotonic() + seconds
    chooser = random.SystemRandom()
    ran = []
    for count in range(1_000_000):  # bounded; the time box normally ends it
        if time.monotonic() >= deadline:
            break
        nodes = 3 if count % 2 == 0 else 5
        mode = "compact_often" if count % 4 >= 2 else ""  # both event mixes, both sizes
        seed = chooser.randrange(1_000_000, 2**48)
        ran.append((nodes, seed, mode))
        try:
            Simulation(seed, nodes=nodes, steps=STEPS, **MODES[mode]).run()
        except AssertionError:
            with FAILING_SEEDS_FILE.open("a") as f:
                f.write(f"{nodes} {seed} {mode}  # found by the random batch ({mode or 'default'} mode)\n")
            raise
    print(f"random batch: {len(ran)} seeds in {seconds:g}s: "
          + " ".join(f"{n}n:{s}{':' + m if m else ''}" for n, s, m in ran))
    assert ran, "the time box ran no seed at all"


def test_same_seed_replays_the_same_run():
    """Determinism: everything comes from the seed, so a failure replays exactly."""
    first = Simulation(7, nodes=3, steps=STEPS).run()
    second = Simulation(7, nodes=3, steps=STEPS).run()
    assert first.decided == second.decided
    assert list(first.trace) == list(second.trace)
    assert first.stats == second.stats


def test_fixed_seeds_exercise_every_kind_of_event():
    """The checks mean something only if the runs crash, partition, compact, snapshot and decide."""
    totals: dict[str, int] = {}
    decided = 0
    for seed in range(1, 41):
        for nodes in (3, 5):
            sim = Simulation(seed, nodes=nodes, steps=STEPS)
            sim.run_faults()
            decided += len(sim.decided)
            for name, value in sim.stats.items():
                totals[name] = totals.get(name, 0) + value
    for name in ("crash", "restart", "partition", "compact", "snapshots_installed", "reads_served",
                 "dropped_by_partition", "drop", "duplicate"):
        assert totals[name] > 0, f"no {name} in 80 runs: {totals}"
    assert decided > 100, f"only {decided} slots decided in 80 fault-phase runs"


class SkipsP2cReplica(Replica):
    """BROKEN on purpose: a new leader keeps reported decided values but replaces every value that was
    only accepted with a no-op, ignoring P2c (Paxos Made Simple, section 2.2)."""

    def _reproposals(self, promises):
        values = super()._reproposals(promises)
        decided = {entry.slot for promise in promises.values() for entry in promise.decided}
        return {slot: (value if slot in decided else ()) for slot, value in values.items()}


def _first_violation(limit: int, **kwargs) -> tuple[int, str] | None:
    for seed in range(1, limit + 1):
        try:
            Simulation(seed, steps=STEPS, **kwargs).run()
        except SafetyViolation as violation:
            return seed, str(violation)
        except LivenessFailure:
            continue  # a broken variant may also stall; we are looking for a safety violation
    return None


@pytest.mark.sim_batch
@pytest.mark.parametrize("nodes", [3, 5])
def test_leader_that_skips_p2c_is_caught_within_300_seeds(nodes):
    found = _first_violation(300, nodes=nodes, replica_class=SkipsP2cReplica)
    assert found is not None, "a leader that ignores accepted values went unnoticed for 300 seeds"
    seed, report = found
    assert f"pytest tests/sim --seed {seed}" in report
    Simulation(seed, nodes=nodes, steps=STEPS).run()  # the correct replica passes the same seed


@pytest.mark.sim_batch
def test_shell_that_sends_before_persisting_is_caught_within_300_seeds():
    """A crash after Promise/Accepted left but before the record was stored breaks P1a's memory."""
    found = _first_violation(300, nodes=3, send_before_persist=True)
    assert found is not None, "sending before persisting went unnoticed for 300 seeds"
    seed, report = found
    assert "send_before_persist" in report
    Simulation(seed, nodes=3, steps=STEPS).run()  # the same seed with the contract kept passes
