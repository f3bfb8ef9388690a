"""Deterministic simulation of 3- and 5-replica clusters under faults (see ``paxos_sim``).

What is checked and how: each seed drives a ``Simulation`` through a few hundred random events
(deliver, drop, duplicate, tick, crash, restart, partition, heal, submit, read, compact, snapshot
transfer, and in ``disk_faults`` mode disks that fail a write); after every event the simulator
checks safety (one decided value per slot ever, applied logs are prefixes of the decided log, only
submitted commands are decided, reads see every earlier applied slot, a Promise, HeartbeatAck or
Accepted leaves only with its record stored, a value first seen decided is durable on a majority).
Then a liveness phase (no faults; crashed and fenced nodes restarted) requires commands given to the
leader to be decided everywhere within a bound. A failure names the seed and prints
``pytest tests/sim --seed N``.

``early_accepts`` runs the core with ``Options(early_accepts=True)`` behind a model of the server's
committer: batches wait on fsyncs in flight (staged in order, completed by "fsync_done" events, several
at once, held back by slow disks) while their node keeps working, and a leader's Accepts leave before
the fsync with ``decided_slot`` capped at the mark the simulator reports with ``note_durable``.

``membership`` changes the configuration under the same faults (adds, promotions, removals of
followers and leaders, one-change replacements, wiped disks whose node is refused by its peers'
incarnation check until its machine rejoins under a new id) and checks after every step that each
node's configuration schedule is the one its decided log defines and that a decision rests on a
majority of the slot's voters; after healing, a further change must take effect everywhere.

The suite runs fixed seed ranges in every mode (the default event mix, ``early_accepts``,
``postpone_elections``, ``compact_often``, ``disk_faults`` alone and with the latter two,
``membership`` alone and with ``disk_faults``, ``compact_often`` or ``early_accepts``), every line
of ``failing_seeds.txt``, and a time-boxed batch of fresh seeds over every mode (``SIM_SECONDS``,
default 20). The batch fails on the first failing seed and prints the line to add to
``failing_seeds.txt``; it writes nothing into the source tree (a record of failing seeds goes to
pytest's temporary directory, or appended to the file ``SIM_FAILED_SEEDS`` names, outside the tree).
Six deliberately broken variants show the checks have teeth: a shell that sends before it
persists, a leader that ignores P2c when re-proposing, a shell that swallows disk errors, a shell
that reports batches durable before their fsync, so that early Accepts are not capped, membership
changes that take effect at once instead of alpha slots later, and shells that let a wiped node vote
under its old id.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from paxos_sim import LivenessFailure, SafetyViolation, Simulation

from paxos.membership import ConfigSchedule
from paxos.replica import Options, Replica

STEPS = 400
FIXED_SEEDS = range(1, 201)
FAILING_SEEDS_FILE = Path(__file__).with_name("failing_seeds.txt")
SOURCE_TREE = Path(__file__).resolve().parents[2]

# A mode is "" (the default event mix) or Simulation flags joined by "+", e.g. "disk_faults+early_accepts".
MODE_FLAGS = ("compact_often", "postpone_elections", "early_accepts", "disk_faults", "membership")
# The modes every engine runs (tests/sim/test_classic_engine.py runs these with the classic engine,
# whose members are fixed), and those only the core runs.
BATCH_MODES = ("", "compact_often", "postpone_elections", "early_accepts", "disk_faults",
               "disk_faults+early_accepts", "disk_faults+compact_often")
MEMBERSHIP_BATCH_MODES = ("membership", "membership+disk_faults", "membership+compact_often",
                          "membership+early_accepts")


def _mode_options(mode: str) -> dict:
    """The ``Simulation`` keyword arguments of a mode; ValueError for an unknown flag."""
    flags = mode.split("+") if mode else []
    unknown = [flag for flag in flags if flag not in MODE_FLAGS]
    if unknown:
        raise ValueError(f"unknown mode flag(s) {unknown}: use {' '.join(MODE_FLAGS)}, joined by '+'")
    return {flag: True for flag in flags}


def _failing_seeds(membership: bool = False) -> list[tuple[int, int, str, int]]:
    """Lines ``<nodes> <seed> [mode] [steps=N]`` (see ``_mode_options``; no mode: the default event mix;
    no steps: ``STEPS``) as ``(nodes, seed, mode, steps)``. Lines of a membership mode only with
    ``membership`` (the classic engine, which shares this list, has fixed members)."""
    out = []
    for line in FAILING_SEEDS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            nodes, seed, *rest = line.split()
            steps = STEPS
            if rest and rest[-1].startswith("steps="):
                steps = int(rest.pop()[len("steps="):])
            assert len(rest) <= 1, f"bad line in failing_seeds.txt: {line!r}"
            mode = rest[0] if rest else ""
            if membership or "membership" not in _mode_options(mode):
                out.append((int(nodes), int(seed), mode, steps))
    return out


@pytest.mark.sim_seeds(FIXED_SEEDS)
def test_three_replicas_stay_safe_and_live(sim_seed):
    Simulation(sim_seed, nodes=3, steps=STEPS).run()


@pytest.mark.sim_seeds(FIXED_SEEDS)
def test_five_replicas_stay_safe_and_live(sim_seed):
    Simulation(sim_seed, nodes=5, steps=STEPS).run()


@pytest.mark.sim_seeds(range(1, 101))
@pytest.mark.parametrize("nodes", [3, 5])
def test_early_accepts_behind_pipelined_fsyncs_stay_safe_and_live(sim_seed, nodes):
    """Options.early_accepts, carried out as kvstore.server's committer does: a leader's Accepts leave
    before its fsync (Actions.send_early), every other effect of a batch waits for the fsync that
    covers it, and nodes keep working while fsyncs are in flight (slow disks, crashes that lose the
    staged batches, compactions that wait for them). Every safety check holds after every step, a
    decision a follower learns from an early Accept included, and the cluster is live after."""
    Simulation(sim_seed, nodes=nodes, steps=STEPS, early_accepts=True).run()


@pytest.mark.sim_batch
def test_early_accepts_runs_decide_while_fsyncs_are_in_flight_and_cap_what_accepts_announce():
    """early_accepts means something only if its runs stage batches behind an fsync in flight (also
    batches without records, and up to several at a time), complete several with one fsync, slow a
    disk, crash nodes with batches staged, make compactions and snapshot installs wait, send early
    Accepts whose decided_slot the cap held below the core's, and have followers learn decisions from
    early Accepts."""
    totals: dict[str, int] = {}
    staged_max = 0
    for seed in range(1, 21):
        for nodes in (3, 5):
            sim = Simulation(seed, nodes=nodes, steps=STEPS, early_accepts=True)
            sim.run_faults()
            staged_max = max(staged_max, sim.stats["staged_max"])
            for name, value in sim.stats.items():
                totals[name] = totals.get(name, 0) + value
    for name in ("fsync_done", "fsyncs_grouped", "staged_behind", "fsync_stall", "crash_during_fsync",
                 "waited_for_staged", "early_accepts_sent", "early_accepts_behind", "learned_from_early_accepts"):
        assert totals[name] > 0, f"no {name} in 40 early_accepts runs: {totals}"
    assert staged_max >= 3, f"never more than {staged_max} batches staged at a node in 40 early_accepts runs"


@pytest.mark.sim_batch
def test_early_accepts_that_announce_decisions_not_yet_durable_are_caught():
    """BROKEN on purpose (uncapped_early_accepts): the shell reports the core's decided slot durable
    before the fsync, so early Accepts announce decisions that count the leader's own accept while it
    is still staged. A follower that learns one may apply a value that a crash of the leader
    un-chooses. The durable-majority check catches it the moment the follower learns it. First caught
    today: on 3 nodes seed 23 (the leader's disk is slow; node 2's Accepted of slot 1 completes a
    majority in the leader's memory; the Accept of the next command tells node 2 that slot 1 is
    decided while only node 2 holds it), on 5 nodes seed 7. (Of seeds 1-400, 30 are caught on 3
    nodes and 7 on 5, hence the wider range there.) The same seeds with the cap pass."""
    for nodes, limit in ((3, 100), (5, 200)):
        found = _first_violation(limit, nodes=nodes, uncapped_early_accepts=True)
        assert found is not None, f"early Accepts without the cap went unnoticed for {limit} seeds on {nodes} nodes"
        seed, report = found
        assert "uncapped_early_accepts" in report and f"pytest tests/sim --seed {seed}" in report
        assert "learned from an Accept's decided_slot" in report and "hold it durably" in report, report
        Simulation(seed, nodes=nodes, steps=STEPS, early_accepts=True).run()


@pytest.mark.sim_seeds(range(1, 101))
@pytest.mark.parametrize("nodes", [3, 5])
def test_postponed_elections_stay_safe_and_live(sim_seed, nodes):
    """kvstore.server postpones a node's elections while it applies a backlog (lazy learners): nodes
    that postpone at random under faults keep every safety check, and the cluster is live after."""
    sim = Simulation(sim_seed, nodes=nodes, steps=STEPS, postpone_elections=True)
    sim.run()
    if sim_seed == 1:
        assert sim.stats["postponed"] > 0, "the mode never postponed an election"


@pytest.mark.sim_seeds(range(1, 101))
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("mode", ["disk_faults", "disk_faults+early_accepts", "disk_faults+compact_often"])
def test_failed_disks_fence_their_node_and_stay_safe_and_live(sim_seed, nodes, mode):
    """disk_faults: now and then a node's write fails (a random prefix of the batch stored, or a
    snapshot half renamed) and the node is fenced, as kvstore.server's _stop_voting does, until a
    restart recovers it from its storage. Every safety check holds after every step (a fenced node
    lets nothing out, so no message and no decision relies on a record its disk may not hold), and
    with the disks healed and the fenced nodes restarted the cluster is live. (That these runs fail
    disks of every kind is checked by the next test.)"""
    Simulation(sim_seed, nodes=nodes, steps=STEPS, **_mode_options(mode)).run()


@pytest.mark.sim_batch
def test_disk_faults_fail_leaders_followers_and_snapshots_with_every_kind_of_prefix():
    """disk_faults means something only if its runs fail the disk of leaders and of followers, in
    batches (storing none, some or all of their records, also after early Accepts left, and with
    batches staged behind the failing fsync) and in snapshot writes, and restart the fenced nodes."""
    totals: dict[str, int] = {}
    for seed in range(1, 21):
        for nodes in (3, 5):
            for mode in ("disk_faults", "disk_faults+early_accepts"):
                sim = Simulation(seed, nodes=nodes, steps=STEPS, **_mode_options(mode))
                sim.run_faults()
                for name, value in sim.stats.items():
                    totals[name] = totals.get(name, 0) + value
    for name in ("disk_failures", "disk_failed_leaders", "disk_failures_prefix_empty",
                 "disk_failures_prefix_partial", "disk_failures_prefix_whole",
                 "disk_failures_after_early_accepts", "staged_behind_failed_fsync", "disk_failures_in_snapshots",
                 "fenced_restarts"):
        assert totals[name] > 0, f"no {name} in 80 disk_faults runs: {totals}"
    assert totals["disk_failures"] > totals["disk_failed_leaders"], "only leaders' disks failed"


@pytest.mark.sim_seeds(range(1, 301))
@pytest.mark.parametrize("nodes", [3, 5])
def test_aggressive_compaction_stays_safe_and_live(sim_seed, nodes):
    """compact_often: compaction ten times as frequent under faults, then a liveness phase in which
    every node keeps compacting at its own slots while messages are delayed and nodes pause (a long
    snapshot write) and then handle their queued ticks, messages and snapshots as one batch, as the
    kvstore driver does. Every command must still be decided and applied everywhere."""
    Simulation(sim_seed, nodes=nodes, steps=STEPS, compact_often=True).run()


@pytest.mark.sim_batch
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


def _one_entry_catchups(seed: int) -> Options:
    """The default simulation options, but catch-up answers of one entry (by count for odd seeds, by
    bytes for even ones: ``catchup_bytes_max``): a candidate one decided slot behind an acceptor is then
    far behind it (Replica._on_prepare). Every third seed asks pre-votes first (rules 39 and 40 together:
    a far-behind asker's pre-votes are answered with catch-up too)."""
    return Options(heartbeat_ticks=1, election_timeout_ticks=4, window=8, batch_count_max=4,
                   catchup_entries_max=1 if seed % 2 else 256, catchup_bytes_max=4 << 20 if seed % 2 else 1,
                   lazy_decide=seed % 2 == 1, thrifty=seed % 4 >= 2, pre_vote=seed % 3 == 0)


@pytest.mark.sim_seeds(range(1, 101))
@pytest.mark.parametrize("nodes", [3, 5])
def test_candidates_far_behind_get_catch_up_instead_of_promises_and_stay_safe_and_live(sim_seed, nodes):
    """An acceptor that knows more than ``catchup_entries_max`` slots decided above a candidate's
    first_slot does not promise (its Promise would carry all of them: QA, a Promise of 650 MB); it
    sends the first of them, and the candidate gives up that election and catches up. Not promising is
    always safe; liveness is that a candidate catches up and wins later, or a node ahead wins."""
    Simulation(sim_seed, nodes=nodes, steps=STEPS, options=_one_entry_catchups(sim_seed)).run()


@pytest.mark.sim_batch
def test_one_entry_catchups_refuse_promises_to_candidates_far_behind():
    refused = behind = 0
    for seed in range(1, 41):
        for nodes in (3, 5):
            sim = Simulation(seed, nodes=nodes, steps=STEPS, options=_one_entry_catchups(seed)).run()
            for node in sim.nodes.values():
                counters = node.replica.status()["counters"]
                refused += counters.get("prepare_far_behind", 0)
                behind += counters.get("election_behind", 0)
    assert refused > 0 and behind > 0, "no Prepare was ever refused as far behind in 80 runs"


@pytest.mark.parametrize("nodes,seed,mode,steps", _failing_seeds(membership=True), ids=lambda v: str(v))
def test_seeds_that_once_failed_now_pass(nodes, seed, mode, steps):
    Simulation(seed, nodes=nodes, steps=steps, **_mode_options(mode)).run()


def _failed_seeds_record(tmp_path: Path) -> Path:
    """Where the random batch records a failing seed: ``$SIM_FAILED_SEEDS`` (e.g. a CI artifact),
    which must lie outside the source tree, else a file in this test's temporary directory."""
    named = os.environ.get("SIM_FAILED_SEEDS")
    if not named:
        return tmp_path / "failed_seeds.txt"
    path = Path(named).resolve()
    if path.is_relative_to(SOURCE_TREE):
        pytest.fail(f"SIM_FAILED_SEEDS={named} is inside the source tree {SOURCE_TREE}: a test run must not "
                    f"write there; name a path outside it", pytrace=False)
    return path


@pytest.mark.sim_batch
def test_fresh_random_seeds_for_a_time_box(tmp_path):
    """Fresh seeds, in every mode of BATCH_MODES and MEMBERSHIP_BATCH_MODES and on 3 and 5 nodes in turn,
    until SIM_SECONDS pass.

    The first failing seed fails the test: the message holds the simulator's report (seed, replay
    command, trace) and the line to add to failing_seeds.txt, which this test never writes itself;
    the line is also appended to a record outside the source tree (see ``_failed_seeds_record``).
    """
    seconds = float(os.environ.get("SIM_SECONDS", "20"))
    steps = int(os.environ.get("SIM_STEPS", str(STEPS)))  # longer runs for a soak (QA: a bug found only at 1,200)
    record = _failed_seeds_record(tmp_path)
    deadline = time.monotonic() + seconds
    chooser = random.SystemRandom()
    ran = []
    failure = None
    for count in range(1_000_000):  # bounded; the time box normally ends it
        if time.monotonic() >= deadline:
            break
        nodes = 3 if count % 2 == 0 else 5
        modes = BATCH_MODES + MEMBERSHIP_BATCH_MODES
        mode = modes[count // 2 % len(modes)]  # every mode on both sizes
        seed = chooser.randrange(1_000_000, 2**48)
        ran.append((nodes, seed, mode))
        try:
            Simulation(seed, nodes=nodes, steps=steps, **_mode_options(mode)).run()
        except AssertionError as error:  # SafetyViolation, LivenessFailure, or an assert in the core
            failure = error
            break
    if failure is not None:
        nodes, seed, mode = ran[-1]
        line = f"{nodes} {seed} {mode}".rstrip() + (f" steps={steps}" if steps != STEPS else "")
        with record.open("a") as f:
            f.write(f"{line}  # {type(failure).__name__}, found by the random batch\n")
        pytest.fail(f"random seed failed after {len(ran) - 1} passed; add this line to "
                    f"tests/sim/failing_seeds.txt (with what went wrong and where it was fixed):\n"
                    f"{line}\n(also recorded in {record})\n\n{type(failure).__name__}: {failure}", pytrace=False)
    print(f"random batch: {len(ran)} seeds in {seconds:g}s: "
          + " ".join(f"{n}n:{s}{':' + m if m else ''}" for n, s, m in ran))
    assert ran, "the time box ran no seed at all"


@pytest.mark.parametrize("mode", ["", "disk_faults+early_accepts", "membership+disk_faults"])
def test_same_seed_replays_the_same_run(mode):
    """Determinism: everything comes from the seed, so a failure replays exactly."""
    first = Simulation(7, nodes=3, steps=STEPS, **_mode_options(mode)).run()
    second = Simulation(7, nodes=3, steps=STEPS, **_mode_options(mode)).run()
    assert first.decided == second.decided
    assert list(first.trace) == list(second.trace)
    assert first.stats == second.stats


@pytest.mark.sim_batch
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
def test_shell_that_swallows_disk_errors_is_caught_within_60_seeds():
    """The bug of issue 15: a failed fsync's error is caught and dropped with its batch, and the node
    goes on from its memory. Both durability checks catch it when it matters, without waiting for a
    crash to forget what was lost. On 3 nodes (seeds as of pre-votes in two seeds of three): seed 3
    first, a follower whose accept was swallowed answers the retransmitted Accept as a duplicate,
    without persisting, which the message check catches as the Accepted leaves; seed 35, a leader whose
    own accept was swallowed decides with one follower's acceptance, which the durable-majority check
    catches. Without these two checks no seed of 1-100 is caught, on 3 or 5 nodes. The same seeds with
    the node fenced (disk_faults) pass."""
    first: dict[str, int] = {}
    for seed in range(1, 61):
        try:
            Simulation(seed, nodes=3, steps=STEPS, swallow_disk_errors=True).run()
        except SafetyViolation as violation:
            report = str(violation)
            assert "swallow_disk_errors" in report and f"pytest tests/sim --seed {seed}" in report
            check = ("durable majority" if "hold it durably" in report
                     else "message" if "not durable at its sender" in report else "other")
            first.setdefault(check, seed)
        except LivenessFailure:
            continue
        if "durable majority" in first and "message" in first:
            break
    assert "durable majority" in first, f"no decision on a swallowed acceptance in 60 seeds: {first}"
    assert "message" in first, f"no message answered from a swallowed record in 60 seeds: {first}"
    for seed in sorted(set(first.values())):
        Simulation(seed, nodes=3, steps=STEPS, disk_faults=True).run()


@pytest.mark.sim_batch
def test_shell_that_sends_before_persisting_is_caught_within_300_seeds():
    """A crash after Promise/Accepted left but before the record was stored breaks P1a's memory."""
    found = _first_violation(300, nodes=3, send_before_persist=True)
    assert found is not None, "sending before persisting went unnoticed for 300 seeds"
    seed, report = found
    assert "send_before_persist" in report
    Simulation(seed, nodes=3, steps=STEPS).run()  # the same seed with the contract kept passes


# ---------------------------------------------------------------- membership changes


@pytest.mark.sim_seeds(range(1, 201))
@pytest.mark.parametrize("nodes", [3, 5])
def test_membership_changes_under_faults_stay_safe_and_live(sim_seed, nodes):
    """membership: under the default faults, the leader changes the configuration (adds learners,
    promotes, removes voters and learners, the leader itself included, and replaces a voter by a
    learner in one change), nodes lose their disks and come back under their old id, refused by their
    peers' incarnation check, until their machine rejoins under a new id as a learner and is promoted.
    After every step every node's schedule is the one its decided prefix defines, and a value first
    seen decided is held by a majority of the voters of the slot's configuration (with the usual
    checks); a removed leader hands over or steps down within an election timeout. After healing, a
    leader decides commands, a change takes effect on every member, and a command after it is
    decided everywhere."""
    Simulation(sim_seed, nodes=nodes, steps=STEPS, membership=True).run()


@pytest.mark.sim_seeds(range(1, 51))
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("mode", ["membership+disk_faults", "membership+compact_often", "membership+early_accepts"])
def test_membership_changes_with_failing_disks_compaction_or_early_accepts(sim_seed, nodes, mode):
    """The same with failing disks (fenced nodes), with compaction ten times as frequent (snapshots
    carry the configuration schedule; a joiner starts from one), or behind pipelined fsyncs."""
    Simulation(sim_seed, nodes=nodes, steps=STEPS, **_mode_options(mode)).run()


@pytest.mark.sim_batch
def test_membership_runs_make_every_kind_of_change_and_the_core_answers_each():
    """The membership checks mean something only if the runs propose every kind of change, wipe
    disks and refuse the wiped nodes' messages, rejoin a wiped machine under a new id and promote it,
    install snapshots whose schedule holds a change, and if the core, in turn, prepares again for a
    new voter, hands over with Campaign, ignores a raced change, ignores a learner's vote and keeps
    its learners from campaigning."""
    totals: dict[str, int] = {}
    counters: dict[str, int] = {}
    for seed in range(1, 21):
        for nodes in (3, 5):
            sim = Simulation(seed, nodes=nodes, steps=STEPS, membership=True).run()
            for name, value in sim.stats.items():
                totals[name] = totals.get(name, 0) + value
            for node in sim.nodes.values():
                if node.replica is not None:
                    for name, value in node.replica.status()["counters"].items():
                        counters[name] = counters.get(name, 0) + value
    for name in ("change_add", "change_promote", "change_remove_voter", "change_remove_leader",
                 "change_remove_learner", "change_replace", "change_remove_wiped", "change_rejoin",
                 "change_promote_rejoined", "joined", "rejoined", "wipes", "dropped_by_incarnation",
                 "liveness_changes", "snapshots_installed_with_changes", "crash", "partition"):
        assert totals[name] > 0, f"no {name} in 40 membership runs: {totals}"
    for name in ("config_changes", "reelect_for_config", "transfer_sent", "campaigned_on_transfer",
                 "config_change_ignored", "accepted_not_voter", "not_voter_no_election"):
        assert counters.get(name, 0) > 0, f"no {name} in the cores of 40 membership runs: {counters}"


class ImmediateSchedule(ConfigSchedule):
    """BROKEN on purpose: a change governs from the slot right after its own, whatever alpha says."""

    def apply(self, slot, command):
        if not super().apply(slot, command):
            return False
        _effective, source, config = self._entries.pop()
        self._entries.append((source + 1, source, config))
        return True


def _immediate(schedule: ConfigSchedule) -> ImmediateSchedule:
    return ImmediateSchedule([(source + 1 if source else effective, source, config)
                              for effective, source, config in schedule.entries])


class ImmediateChangeReplica(Replica):
    """BROKEN on purpose: membership changes take effect at once (``ImmediateSchedule``), while the
    leader still opens up to alpha slots past its decided prefix. A slot opened under the old voters
    before the change was applied is governed by the new ones: no joint quorum covers it. The
    simulator judges it by its own rule (``schedule_class``: a decision needs a majority of the
    voters the variant says govern the slot)."""

    schedule_class = ImmediateSchedule

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._schedule = _immediate(self._schedule)
        self._refresh_members()

    def install_snapshot(self, snapshot_slot, configs=()):
        super().install_snapshot(snapshot_slot, configs)
        self._schedule = _immediate(self._schedule)
        self._refresh_members()

    def _on_accepted(self, m):
        # A slot opened under the old voters may hear from one the new configuration dropped: keep the
        # thrifty bookkeeping whole, so that only the broken rule is tested.
        if m.sender not in self._preferred:
            self._preferred.append(m.sender)
        super()._on_accepted(m)


@pytest.mark.sim_batch
def test_membership_changes_that_take_effect_at_once_are_caught():
    """BROKEN on purpose (ImmediateChangeReplica): a change decided at slot s governs from s + 1. The
    leader opened slots after s under the old voters before it applied the change, and decides one
    with a majority of them that is not a majority of the new voters: the durable-majority check
    catches it the moment it is decided. First caught today: on 3 nodes seed 2 (the removal of node
    3, decided at slot 3, governs slot 4 at once; leader 2 had opened slot 4 under {1, 2, 3} and
    decides it with the votes of 2 and 3, one voter of {1, 2}), on 5 nodes seed 115 (seed 83 before seeds
    3 and 4 mod 5 held resends back: Options.patient_resends). Of seeds 1-100, 11 are caught on 3 nodes
    and 1 or 2 on 5, hence the wider range there. Caught only by that check: a
    second leader deciding another value in such a slot needs a leader change inside the window with
    quorums that do not meet, and no seed of 1-300 on 3 nodes or 1-200 on 5 shows one. The same
    seeds with the alpha rule pass."""
    for nodes, limit in ((3, 60), (5, 160)):
        found = _first_violation(limit, nodes=nodes, membership=True, replica_class=ImmediateChangeReplica)
        assert found is not None, f"changes taking effect at once went unnoticed for {limit} seeds on {nodes} nodes"
        seed, report = found
        assert "ImmediateChangeReplica" in report and f"pytest tests/sim --seed {seed}" in report
        assert "of the slot's configuration" in report, report
        Simulation(seed, nodes=nodes, steps=STEPS, membership=True).run()


@pytest.mark.sim_batch
def test_a_wiped_node_that_votes_under_its_old_id_is_caught():
    """BROKEN on purpose (skip_incarnation_check): the shells do not compare incarnations, so a node
    that lost its disk comes back under its old id, empty, and takes part again: it answers Prepares
    without the promises and acceptances it made before, and its Accepted sent before the wipe still
    counts. First caught today: on 3 nodes seed 24 (node 2 is wiped while its Accepted of slot 1 is on
    its way; leader 3 counts it and decides slot 1 while only 3 holds it: the durable-majority check),
    on 5 nodes seed 7. Of seeds 1-100, 3 are caught on 3 nodes and 11 on 5, hence the wider range on
    3; without the durable-majority check, 5 nodes seed 63 ends with two values decided for slot 1.
    The same seeds with the check pass."""
    for nodes, limit in ((3, 100), (5, 60)):
        found = _first_violation(limit, nodes=nodes, skip_incarnation_check=True)
        assert found is not None, (f"a wiped node voting under its old id went unnoticed for {limit} seeds "
                                   f"on {nodes} nodes")
        seed, report = found
        assert "skip_incarnation_check" in report and f"pytest tests/sim --seed {seed}" in report
        Simulation(seed, nodes=nodes, steps=STEPS, membership=True).run()
