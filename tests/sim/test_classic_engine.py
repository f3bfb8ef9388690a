"""The classic engine (``paxos.classic.ClassicReplica``) through the simulator's checks, modes and seeds.

What is checked and how: ``Simulation(seed, ..., replica_class=ClassicReplica)`` runs the same event
mix, faults and modes as the core's runs in ``test_simulation.py``, with the same checks after every
step (one decided value per slot ever, applied logs are prefixes of the decided log, only submitted
commands are decided, reads see every earlier applied slot, a Promise, HeartbeatAck or Accepted leaves
only with its record stored, a value first seen decided is durable on a majority) and the same
liveness phases. The seed ranges are smaller than the core's so that this file adds about a minute of
CPU on a two-core machine: seeds 1-100 in every mode of ``BATCH_MODES`` (the default mix,
``early_accepts``, ``postpone_elections``, ``compact_often``, ``disk_faults`` alone and with the latter
two) on 3 and 5 nodes, every line of ``failing_seeds.txt`` (found with the core; run with this engine
as extra coverage) and of ``CLASSIC_FAILING_SEEDS`` below, a determinism check, and a time-boxed batch
of fresh seeds over every mode (``SIM_CLASSIC_SECONDS``, default 4).

The broken variants show that the checks bite this engine too: a classic leader whose slot proposers
are fed the election's promises without their accepted values (P2c ignored), a shell that sends
before it persists, a shell that swallows disk errors, and a shell that lets early Accepts announce
decisions before the fsync that makes them durable (``uncapped_early_accepts``). And the
``sim_batch`` tests check that the runs exercise what the engine adds: elections won and lost by
functional's rules (a higher heartbeat, a quorum of NACKs, the adapter's own step-downs), promises not
counted behind a snapshot, snapshots installed, reads served, retransmissions, and in
``early_accepts`` mode batches staged behind fsyncs in flight.

Replay a failure with ``pytest tests/sim --seed N`` (it runs seed N in every mode for both engines);
a failing fresh seed is reported with the line to add to ``CLASSIC_FAILING_SEEDS``.
"""
from __future__ import annotations

import os
import random
import time

import pytest
from paxos_sim import LivenessFailure, SafetyViolation, Simulation
from test_simulation import BATCH_MODES, STEPS, _failing_seeds, _mode_options

from paxos.classic import ClassicReplica

SEEDS = range(1, 101)

# Seeds that once failed with this engine: (nodes, seed, mode), with what went wrong and where it was
# fixed. The random batch below prints the line to add.
CLASSIC_FAILING_SEEDS: list[tuple[int, int, str]] = [
    # The liveness phase took a leader for stable while a node still campaigned above its ballot (no
    # pre-vote here); that campaign deposed it and the commands it had in flight were lost, never
    # retried (test harness: _stable_leader also needs every member's promise at the leader's ballot).
    (5, 50707654816568, ""),
]


def run(seed: int, nodes: int, mode: str = "", **kwargs) -> Simulation:
    return Simulation(seed, nodes=nodes, steps=STEPS, replica_class=ClassicReplica,
                      **_mode_options(mode), **kwargs).run()


@pytest.mark.sim_seeds(SEEDS)
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("mode", BATCH_MODES, ids=lambda m: m or "default")
def test_classic_engine_stays_safe_and_live(sim_seed, nodes, mode):
    run(sim_seed, nodes, mode)


@pytest.mark.parametrize("nodes,seed,mode", [line[:3] for line in _failing_seeds()] + CLASSIC_FAILING_SEEDS,
                         ids=lambda v: str(v))
def test_seeds_that_once_failed_pass_with_the_classic_engine(nodes, seed, mode):
    run(seed, nodes, mode)


def test_same_seed_replays_the_same_classic_run():
    """Determinism: the engine takes its randomness only from the rng the simulator passes in."""
    first = run(7, 3, "disk_faults+early_accepts")
    second = run(7, 3, "disk_faults+early_accepts")
    assert first.decided == second.decided
    assert list(first.trace) == list(second.trace)
    assert first.stats == second.stats


def _totals(seeds, nodes_list, mode: str = "", faults_only: bool = True) -> tuple[dict, dict, int]:
    """Simulator stats and the nodes' engine counters, summed over runs; and the slots decided."""
    stats: dict[str, int] = {}
    counters: dict[str, int] = {}
    decided = 0
    for seed in seeds:
        for nodes in nodes_list:
            sim = Simulation(seed, nodes=nodes, steps=STEPS, replica_class=ClassicReplica, **_mode_options(mode))
            if faults_only:
                sim.run_faults()
            else:
                sim.run()
            decided += len(sim.decided)
            for name, value in sim.stats.items():
                stats[name] = stats.get(name, 0) + value
            for node in sim.nodes.values():
                if node.replica is not None:
                    for name, value in node.replica.status()["counters"].items():
                        counters[name] = counters.get(name, 0) + value
    return stats, counters, decided


@pytest.mark.sim_batch
def test_classic_runs_exercise_every_event_and_functionals_leadership_rules():
    """The checks mean something only if the runs crash, partition, compact, snapshot and decide, and
    if leadership changes hands in every way the engine has: elections won, leaders demoted by a
    higher heartbeat, by a quorum of NACKs, by promising a higher ballot or by hearing no majority for
    an election timeout (CheckQuorum), NACKs that re-prepare a candidate at once, and undecided slots
    retransmitted."""
    stats, counters, decided = _totals(range(1, 41), (3, 5))
    for name in ("crash", "restart", "partition", "compact", "snapshots_installed", "reads_served",
                 "dropped_by_partition", "drop", "duplicate"):
        assert stats[name] > 0, f"no {name} in 80 classic runs: {stats}"
    for name in ("elections_won", "leadership_lost", "stepped_down_promise", "stepped_down_no_quorum",
                 "nack_received", "below_log_start", "late_accepted", "stale_promise"):
        assert counters.get(name, 0) > 0, f"no {name} in 80 classic runs: {counters}"
    assert decided > 100, f"only {decided} slots decided in 80 fault-phase classic runs"
    assert counters["sent_Accept"] > counters["slots_decided"], "no Accept was ever retransmitted"


@pytest.mark.sim_batch
def test_classic_compaction_runs_install_snapshots_and_meet_promisers_ahead_of_the_candidate():
    """compact_often means something for this engine only if its runs install snapshots (also
    mid-batch), pause nodes, give candidates promises they cannot count (election_behind), and drop
    repeated Accepteds that a higher acceptance superseded in the same batch (seed 75 of compact_often
    on 3 nodes sent one the compacted log no longer backed, before ``superseded_accepted``)."""
    stats, counters, _ = _totals(range(1, 31), (3, 5), "compact_often", faults_only=False)
    for name in ("compact", "snapshots_installed", "snapshots_installed_mid_batch", "pauses"):
        assert stats[name] > 0, f"no {name} in 60 classic compact_often runs: {stats}"
    for name in ("election_behind", "superseded_accepted"):
        assert counters.get(name, 0) > 0, f"no {name} in 60 classic compact_often runs: {counters}"


@pytest.mark.sim_batch
def test_classic_disk_fault_runs_fail_leaders_followers_and_snapshots_with_every_kind_of_prefix():
    """As the core's: disk_faults means something only if its runs fail the disks of leaders and
    followers, in batches (storing none, some or all of their records, also after early Accepts
    left) and in snapshot writes, and restart the fenced nodes."""
    totals: dict[str, int] = {}
    for mode in ("disk_faults", "disk_faults+early_accepts"):
        stats, _, _ = _totals(range(1, 21), (3, 5), mode)
        for name, value in stats.items():
            totals[name] = totals.get(name, 0) + value
    for name in ("disk_failures", "disk_failed_leaders", "disk_failures_prefix_empty",
                 "disk_failures_prefix_partial", "disk_failures_prefix_whole",
                 "disk_failures_after_early_accepts", "disk_failures_in_snapshots", "fenced_restarts"):
        assert totals[name] > 0, f"no {name} in 80 classic disk_faults runs: {totals}"
    assert totals["disk_failures"] > totals["disk_failed_leaders"], "only leaders' disks failed"


@pytest.mark.sim_batch
def test_classic_early_accepts_runs_decide_while_fsyncs_are_in_flight_and_cap_what_accepts_announce():
    """As the core's: early_accepts (Options.early_accepts behind pipelined fsyncs) means something
    for this engine only if its runs stage batches behind fsyncs in flight, group them, slow disks,
    crash nodes with batches staged, make compactions wait, cap what early Accepts announce and have
    followers learn decisions from early Accepts."""
    stats, _, _ = _totals(range(1, 21), (3, 5), "early_accepts")
    for name in ("fsync_done", "fsyncs_grouped", "staged_behind", "fsync_stall", "crash_during_fsync",
                 "waited_for_staged", "early_accepts_sent", "early_accepts_behind", "learned_from_early_accepts"):
        assert stats[name] > 0, f"no {name} in 40 classic early_accepts runs: {stats}"


@pytest.mark.sim_batch
@pytest.mark.parametrize("nodes,limit", [(3, 100), (5, 300)])
def test_classic_early_accepts_that_announce_decisions_not_yet_durable_are_caught(nodes, limit):
    """BROKEN on purpose (uncapped_early_accepts): the shell reports the decided slot durable before
    the fsync, so the classic leader's early Accepts announce decisions that count its own staged
    acceptance. The durable-majority check catches it when a follower learns one. Rarer on 5 nodes,
    for both engines (first caught today: seed 44 on 3 nodes, 176 on 5). The same seed with the cap
    passes."""
    found = _first_violation(limit, nodes=nodes, replica_class=ClassicReplica, uncapped_early_accepts=True)
    assert found is not None, f"uncapped early Accepts went unnoticed for {limit} classic seeds on {nodes} nodes"
    seed, report = found
    assert "uncapped_early_accepts" in report and f"pytest tests/sim --seed {seed}" in report
    assert "learned from an Accept's decided_slot" in report and "hold it durably" in report, report
    run(seed, nodes, "early_accepts")


class SkipsP2cClassicReplica(ClassicReplica):
    """BROKEN on purpose: every slot proposer of a new leader is fed the election quorum's promises
    without the values they report, so it proposes the no-op where P2c (Paxos Made Simple, section
    2.2) requires the value accepted at the highest ballot."""

    def _open_slot(self, slot, value, reports):
        super()._open_slot(slot, value, {})


def _first_violation(limit: int, **kwargs) -> tuple[int, str] | None:
    for seed in range(1, limit + 1):
        try:
            Simulation(seed, steps=STEPS, **kwargs).run()
        except SafetyViolation as violation:
            return seed, str(violation)
        except LivenessFailure:
            continue
    return None


@pytest.mark.sim_batch
@pytest.mark.parametrize("nodes", [3, 5])
def test_classic_leader_that_skips_p2c_is_caught_within_300_seeds(nodes):
    found = _first_violation(300, nodes=nodes, replica_class=SkipsP2cClassicReplica)
    assert found is not None, "a classic leader that ignores accepted values went unnoticed for 300 seeds"
    seed, report = found
    assert f"pytest tests/sim --seed {seed}" in report and "SkipsP2cClassicReplica" in report
    run(seed, nodes)  # the unbroken engine passes the same seed


@pytest.mark.sim_batch
def test_classic_engine_behind_a_shell_that_sends_before_persisting_is_caught():
    """The persist-then-send contract is the shell's half of practical's persistence protocol."""
    found = _first_violation(300, nodes=3, replica_class=ClassicReplica, send_before_persist=True)
    assert found is not None, "sending before persisting went unnoticed for 300 classic seeds"
    seed, report = found
    assert "send_before_persist" in report
    run(seed, 3)


@pytest.mark.sim_batch
def test_classic_engine_behind_a_shell_that_swallows_disk_errors_is_caught_by_both_durability_checks():
    first: dict[str, int] = {}
    for seed in range(1, 61):
        try:
            run(seed, 3, swallow_disk_errors=True)
        except SafetyViolation as violation:
            report = str(violation)
            check = ("durable majority" if "hold it durably" in report
                     else "message" if "not durable at its sender" in report else "other")
            first.setdefault(check, seed)
        except LivenessFailure:
            continue
        if "durable majority" in first and "message" in first:
            break
    assert "durable majority" in first and "message" in first, f"in 60 classic seeds: {first}"
    for seed in sorted(set(first.values())):
        run(seed, 3, "disk_faults")  # the same seeds with the node fenced pass


@pytest.mark.sim_batch
def test_fresh_random_seeds_for_a_time_box_with_the_classic_engine():
    """Fresh seeds in every mode of BATCH_MODES on 3 and 5 nodes in turn, until SIM_CLASSIC_SECONDS
    (default 4) pass. The first failing seed fails the test with the line to add to
    CLASSIC_FAILING_SEEDS; nothing is written anywhere."""
    seconds = float(os.environ.get("SIM_CLASSIC_SECONDS", "4"))
    deadline = time.monotonic() + seconds
    chooser = random.SystemRandom()
    ran = []
    for count in range(1_000_000):
        if time.monotonic() >= deadline:
            break
        nodes = 3 if count % 2 == 0 else 5
        mode = BATCH_MODES[count // 2 % len(BATCH_MODES)]
        seed = chooser.randrange(1_000_000, 2**48)
        ran.append((nodes, seed, mode))
        try:
            run(seed, nodes, mode)
        except AssertionError as error:
            pytest.fail(f"random seed failed after {len(ran) - 1} passed; add this line to "
                        f"CLASSIC_FAILING_SEEDS in tests/sim/test_classic_engine.py (with what went wrong "
                        f"and where it was fixed):\n({nodes}, {seed}, {mode!r}),\n\n"
                        f"{type(error).__name__}: {error}", pytrace=False)
    print(f"classic random batch: {len(ran)} seeds in {seconds:g}s: "
          + " ".join(f"{n}n:{s}{':' + m if m else ''}" for n, s, m in ran))
    assert ran, "the time box ran no seed at all"
