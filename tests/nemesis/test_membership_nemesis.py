"""Membership changes under faults, with real processes (issue 17, "How to show it").

Two tests, each a real cluster of ``kv serve`` processes on 127.0.0.1 whose members change through the
log while clients write:

* ``test_membership_changes_under_kills_and_pauses``: three founders (``kv serve --peers``). A
  *membership* task grows and shrinks the voters between 3 and 4, a bounded number of times: add a
  learner (``member_add``), start it empty with ``kv serve --id N --join ...``, promote it once it
  caught up (``member_promote``; refusals such as "slots behind" or "has not answered the leader yet"
  are retried), then remove a voter (``member_remove``): the first removal is always the leader's (these
  two steps always run, whatever the time), the later ones pick the leader or another voter from the
  seeded schedule; a removed process is stopped
  once the change governs. Now and then (seeded) a learner is added, joined and removed again while it
  catches up (at most once a run), or the leader is moved (``move_leader``) before a removal. Ids are
  never reused. Meanwhile a *fault* task SIGKILLs (and restarts) or SIGSTOPs (and resumes) one member
  at a time, mostly the leader, learners mid-join included, and four recording clients run the usual
  workload (``workload.run_workload``). The run ends as every nemesis
  run does (``workload.finish_and_check``: heal, read all, SIGKILL every node at once, restart, read
  all, the history linearizable, every acknowledged unique-key write present, all members at one
  ``state_hash`` and ``applied_slot``), after checking that the members the nodes report are the ones
  the schedule made. At most one member is down at a time and there are always at least 3 voters, so
  every configuration keeps a live majority; a refusal the schedule does not expect fails the test.

* ``test_walk_1_3_5_3_under_writes``: ONE founder (``kv serve --id 1 --peers 1=...``), grown to 3 and
  then 5 voters (add, join, promote each), then shrunk to 3 by removing the leader and one more voter,
  with two writers putting fresh keys the whole time. At the end every acknowledged key has its value
  on every remaining node (serializable reads node by node), the nodes agree on ``state_hash`` at one
  ``applied_slot``, and each reports the same 3-voter configuration.

Replay: the seed is printed at the start (``NEMESIS_SEED=N``) and starts every failure message;
``NEMESIS_SEED=N pytest tests/nemesis/test_membership_nemesis.py`` replays the same schedule (real
processes, so the interleaving is not reproducible: a strong hint, not a guarantee).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import trio

from kvstore.client import KVError, RequestError, Unavailable, connect

from ..checker.linearizability import History
from ..integration.harness import free_ports
from .cluster import REPO, NemesisCluster
from .workload import finish_and_check, nemesis_seconds, nemesis_seed, run_workload

pytestmark = pytest.mark.slow

# Refusals a membership step may meet under faults and retries (anything else fails the test):
RETRYABLE = (
    "a membership change is in progress",  # the previous change does not govern yet
    "has not answered the leader yet",  # promote: the learner is not running yet, or a new leader
    "slots behind the leader",  # promote: the learner is catching up
    "already a member", "already a voter", "is not a member",  # a retried request that had succeeded
    "leadership is being handed over",  # a removed leader or a move-leader is handing over
    "was not decided within",  # a majority was not up for 10 s (the outcome is then checked)
    "another membership change won the race",  # our own retry raced our first attempt
    "not the leader",
    "cannot hand leadership to node", "after the handover began",  # move-leader under faults
    "no answer from the cluster", "did not answer",  # Unavailable: a paused or killed leader
    "no node could serve the request",  # Unavailable: the nodes answered, none could (no leader yet)
    "no majority would be left",  # remove: a voter that stays has not answered the leader (killed, paused)
    "has not answered the leader for",  # move-leader or promote to a node paused or killed just now
    # Unavailable, outcome unknown: the connection to the leader was lost, or it did not answer, once the
    # change went out (a client never sends one twice); until_done reads the configuration before retrying
    "may or may not have been carried out",
)


class MemberCluster(NemesisCluster):
    """A ``NemesisCluster`` whose members change. ``addresses`` holds the current members only (so
    ``ids``, ``endpoints``, ``statuses``, ``heal`` and ``finish_and_check`` cover exactly them);
    ``planned`` holds an address for every id the test may ever use, so clients can be given all
    of them up front. A node that joined is (re)started with ``--join``, never with ``--peers``."""

    def __init__(self, root, founders: int, spares: int, *, extra_args: list[str] | None = None) -> None:
        ports = free_ports(founders + spares)
        self.planned = {i: ("127.0.0.1", p) for i, p in zip(range(1, founders + spares + 1), ports, strict=True)}
        super().__init__(root, founders, addresses={i: self.planned[i] for i in range(1, founders + 1)},
                         extra_args=extra_args)
        self.joined: set[int] = set()
        self.removed: set[int] = set()
        self.next_id = founders + 1

    @property
    def every_endpoint(self) -> list[str]:
        return [f"{h}:{p}" for h, p in self.planned.values()]

    def start(self, node_id: int, *, env: dict[str, str] | None = None, join: list[str] | None = None) -> None:
        if node_id not in self.joined:
            super().start(node_id, env=env)
            return
        assert not self.alive(node_id), f"node {node_id} runs"
        others = join or [self.endpoint(i) for i in self.ids if i != node_id]
        log = open(self.log_path(node_id), "ab")
        full_env = dict(os.environ)
        full_env.pop("KV_FAILPOINTS", None)
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "kv_cli", "serve", "--id", str(node_id), "--join", ",".join(others),
               "--data-dir", str(self.data_dir(node_id)), *self.extra_args]
        self.procs[node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env=full_env, cwd=str(REPO))
        self.paused.discard(node_id)
        self.killed.discard(node_id)
        log.close()

    def new_id(self) -> int:
        node_id = self.next_id
        assert node_id in self.planned, "the test planned too few ids"
        self.next_id += 1
        return node_id

    def admit(self, node_id: int) -> None:
        """``node_id`` was added as a learner: it is a member from now on; start it with ``--join``."""
        self.addresses[node_id] = self.planned[node_id]
        self.joined.add(node_id)
        self.start(node_id)

    def drop(self, node_id: int) -> None:
        """``node_id`` was removed: stop its process for good."""
        self.kill(node_id)
        del self.addresses[node_id]
        self.removed.add(node_id)

    async def leader_status(self) -> dict | None:
        """The status of the member that says it leads with the highest ballot (None if none does)."""
        statuses = await self.statuses(timeout=0.5)
        leaders = [(tuple(s["ballot"] or ()), i) for i, s in statuses.items() if s and s.get("is_leader")]
        return statuses[max(leaders)[1]] if leaders else None


class Schedule:
    """What the membership and fault tasks did, for the failure message and the final checks."""

    def __init__(self, seed: int, cluster: MemberCluster) -> None:
        self.seed = seed
        self.cluster = cluster
        self.events: list[tuple[float, str]] = []
        self.refusals: list[str] = []
        self.voters: list[int] = list(cluster.ids)

    def note(self, text: str) -> None:
        self.events.append((round(trio.current_time(), 2), text))

    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"[NEMESIS_SEED={self.seed}] {message}\nevents: {self.events}\n"
                              f"refusals: {self.refusals[-10:]}\n{self.cluster.logs_tail()}")


async def until_done(schedule: Schedule, client, op: str, node: int, done, *, address: str = "",
                     leader_is: int | None = None, deadline_s: float = 40.0) -> dict:
    """Send admin ``op`` until ``done(config)`` holds for the leader's newest configuration (as its
    status reports it; with ``leader_is``, once that node leads); each refusal must be one the
    schedule expects. Returns that configuration."""
    cluster = schedule.cluster
    with trio.move_on_after(deadline_s):
        while True:
            view = await cluster.leader_status()
            if view is not None and done(view["config"]) and leader_is in (None, view["id"]):
                return view["config"]
            try:
                await client.admin(op, node, address)
            except (RequestError, Unavailable) as exc:
                text = str(exc)
                schedule.refusals.append(f"{op} {node}: {text}")
                if not any(known in text for known in RETRYABLE):
                    raise schedule.fail(f"{op} {node} was refused for an unexpected reason: {text}") from None
                await trio.sleep(0.2)
    raise schedule.fail(f"{op} {node} did not take effect within {deadline_s} s")


async def settle(schedule: Schedule, *, without: int | None = None, deadline_s: float = 30.0) -> dict:
    """Wait until a leader (other than ``without``) reports no change in progress; its status."""
    with trio.move_on_after(deadline_s):
        while True:
            view = await schedule.cluster.leader_status()
            if view is not None and view["id"] != without and not view["change_in_progress"]:
                return view
            await trio.sleep(0.1)
    raise schedule.fail(f"no leader{'' if without is None else f' other than {without}'} with the change in "
                        f"effect within {deadline_s} s")


async def grow(schedule: Schedule, client, node_id: int) -> None:
    """Add ``node_id`` as a learner, start it with ``--join``, promote it once it has caught up."""
    cluster = schedule.cluster
    address = "{}:{}".format(*cluster.planned[node_id])
    schedule.note(f"member add {node_id}")
    await until_done(schedule, client, "member_add", node_id,
                     lambda c: node_id in c["learners"] or node_id in c["voters"], address=address)
    schedule.note(f"join {node_id}")
    cluster.admit(node_id)
    schedule.note(f"member promote {node_id}")
    await until_done(schedule, client, "member_promote", node_id, lambda c: node_id in c["voters"])
    schedule.voters.append(node_id)
    schedule.note(f"voters {sorted(schedule.voters)}")


async def shrink(schedule: Schedule, client, node_id: int) -> None:
    """Remove ``node_id``; stop its process once the change governs and another node leads."""
    schedule.note(f"member remove {node_id}")
    await until_done(schedule, client, "member_remove", node_id,
                     lambda c: node_id not in c["voters"] and node_id not in c["learners"])
    await settle(schedule, without=node_id)
    schedule.cluster.drop(node_id)
    if node_id in schedule.voters:
        schedule.voters.remove(node_id)
    schedule.note(f"stopped {node_id}; voters {sorted(schedule.voters)}")


# ---------------------------------------------------------------------------------------------------
# the nemesis


async def membership_task(schedule: Schedule, rng: random.Random, stop_at: float, changes_max: int) -> None:
    """Up to ``changes_max`` steps. The first two always run: grow 3 -> 4 voters, then remove the
    leader. Then, while the time lasts: with 3 voters grow to 4 (or, once a run, add a learner and
    remove it while it catches up); with 4, remove the leader or another voter, or move the leader
    elsewhere first."""
    cluster = schedule.cluster
    async with connect(cluster.every_endpoint, timeout=15) as client:
        learners_removed = 0
        for step in range(changes_max):
            if step >= 2 and trio.current_time() >= stop_at:
                break
            await trio.sleep(rng.uniform(0.2, 1.0))
            roll = rng.random()
            if len(schedule.voters) <= 3:
                node_id = cluster.new_id()
                if step >= 2 and roll < 0.25 and not learners_removed:
                    await add_and_remove_a_learner(schedule, client, node_id)
                    learners_removed += 1
                else:
                    await grow(schedule, client, node_id)
                continue
            leader = (await settle(schedule))["id"]  # a leader, with the last change in effect
            if step >= 2 and roll < 0.2:
                target = rng.choice([v for v in schedule.voters if v != leader])
                schedule.note(f"move-leader {leader} -> {target}")
                await until_done(schedule, client, "move_leader", target, lambda c: True,
                                 leader_is=target)
                continue
            if step == 1 or roll < 0.6:
                victim = leader  # the first removal is always the leader's (as of a moment ago)
            else:
                victim = rng.choice([v for v in schedule.voters if v != leader])
            schedule.note(f"remove {victim}, {'the leader' if victim == leader else f'the leader is {leader}'}")
            await shrink(schedule, client, victim)


async def add_and_remove_a_learner(schedule: Schedule, client, node_id: int) -> None:
    """Add ``node_id`` as a learner, start it with ``--join``, and remove it again while it catches up."""
    cluster = schedule.cluster
    schedule.note(f"member add {node_id} (a learner to remove)")
    await until_done(schedule, client, "member_add", node_id, lambda c: node_id in c["learners"],
                     address="{}:{}".format(*cluster.planned[node_id]))
    schedule.note(f"join {node_id}")
    cluster.admit(node_id)
    with trio.move_on_after(10):  # until it runs as a learner (unless a fault holds it down that long)
        while not ((s := await cluster.status(node_id)) and s.get("role") == "learner"):
            await trio.sleep(0.1)
    await shrink(schedule, client, node_id)


async def fault_task(schedule: Schedule, rng: random.Random, stop_at: float) -> None:
    """One member at a time: SIGKILL and restart, or SIGSTOP and SIGCONT; mostly the leader."""
    cluster = schedule.cluster
    while trio.current_time() < stop_at:
        await trio.sleep(rng.uniform(0.8, 2.0))
        if trio.current_time() >= stop_at:
            break
        view = await cluster.leader_status()
        leader = view["id"] if view is not None else None
        running = [i for i in cluster.ids if cluster.alive(i)]
        if not running:
            continue
        victim = leader if leader in running and rng.random() < 0.6 else rng.choice(running)
        how = rng.choice(["kill", "pause"])
        down = rng.uniform(0.5, 2.5)
        if how == "kill":
            schedule.note(f"SIGKILL {victim}{' (leader)' if victim == leader else ''}")
            cluster.kill(victim)
        else:
            schedule.note(f"SIGSTOP {victim}{' (leader)' if victim == leader else ''}")
            cluster.pause(victim)
        await trio.sleep(down)
        if victim not in cluster.addresses:
            schedule.note(f"({victim} was removed meanwhile)")
            continue
        if how == "kill":
            schedule.note(f"restart {victim}")
            cluster.start(victim)
        else:
            schedule.note(f"SIGCONT {victim}")
            cluster.resume(victim)


NEMESIS_SECONDS = nemesis_seconds(15.0)
CHANGES_MAX = 6


async def test_membership_changes_under_kills_and_pauses(tmp_path):
    seed = nemesis_seed()
    print(f"NEMESIS_SEED={seed}")
    rng = random.Random(seed)
    cluster = MemberCluster(tmp_path, founders=3, spares=CHANGES_MAX, extra_args=["--snapshot-every", "200"])
    schedule = Schedule(seed, cluster)
    history = History(clock=trio.current_time)
    stats = None
    try:
        cluster.start_all()
        await cluster.wait_leader()
        stop_at = trio.current_time() + NEMESIS_SECONDS
        workload_rng, membership_rng, fault_rng = (random.Random(rng.random()) for _ in range(3))

        async def workload() -> None:
            nonlocal stats
            stats = await run_workload(cluster.every_endpoint, history, workload_rng, duration=NEMESIS_SECONDS)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(workload)
            nursery.start_soon(fault_task, schedule, fault_rng, stop_at)
            await membership_task(schedule, membership_rng, stop_at, CHANGES_MAX)
        print("events:", schedule.events)
        print("refusals met and retried:", schedule.refusals)

        cluster.heal()
        view = await settle(schedule)
        config = view["config"]
        if sorted(config["voters"]) != sorted(schedule.voters) or config["learners"]:
            raise schedule.fail(f"the leader reports voters {config['voters']} and learners {config['learners']}; "
                                f"the schedule made voters {sorted(schedule.voters)} and no learner")
        assert sorted(cluster.ids) == sorted(schedule.voters)
        added = [e for _t, e in schedule.events if e.startswith("member promote")]
        removed = [e for _t, e in schedule.events if e.startswith("member remove")]
        assert added and removed, schedule.events
        assert any(e.endswith("the leader") for _t, e in schedule.events), "no removal of the leader"
        await finish_and_check(cluster, history, stats, seed)
        statuses = await cluster.statuses()
        configs = {i: (sorted(s["config"]["voters"]), s["config"]["epoch"]) for i, s in statuses.items()}
        if len(set(map(str, configs.values()))) != 1:
            raise schedule.fail(f"the members disagree on the configuration: {configs}")
    except AssertionError as exc:
        if "NEMESIS_SEED" in str(exc):
            raise
        raise AssertionError(f"[NEMESIS_SEED={seed}] {exc}\nevents: {schedule.events}") from exc
    finally:
        cluster.close()


# ---------------------------------------------------------------------------------------------------
# 1 -> 3 -> 5 -> 3


async def writer(cluster: MemberCluster, name: str, acked: dict, failures: list, stop: trio.Event) -> None:
    """Put fresh keys until ``stop``; ``acked`` gets every acknowledged one."""
    n = 0
    async with connect(cluster.every_endpoint, timeout=10) as client:
        while not stop.is_set():
            n += 1
            key, value = f"{name}/{n:05d}", f"{name}-{n}"
            try:
                await client.put(key, value)
            except KVError as exc:
                failures.append(f"{key}: {exc}")
                continue
            acked[key] = value


async def test_walk_1_3_5_3_under_writes(tmp_path):
    seed = nemesis_seed()
    print(f"NEMESIS_SEED={seed}")
    rng = random.Random(seed)
    cluster = MemberCluster(tmp_path, founders=1, spares=4)
    schedule = Schedule(seed, cluster)
    acked: dict[str, str] = {}
    failures: list[str] = []
    sizes = []
    try:
        cluster.start_all()
        await cluster.wait_leader()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for w in ("w1", "w2"):
                nursery.start_soon(writer, cluster, w, acked, failures, stop)
            async with connect(cluster.every_endpoint, timeout=15) as client:
                for node_id in (2, 3, 4, 5):
                    await grow(schedule, client, node_id)
                    sizes.append(len(schedule.voters))
                view = await settle(schedule)
                leader = view["id"]
                others = [v for v in schedule.voters if v != leader]
                # The leader goes first or second, as the seed says.
                order = [leader, rng.choice(others)] if rng.random() < 0.5 else [rng.choice(others), leader]
                schedule.note(f"shrink order {order}")
                for node_id in order:
                    await shrink(schedule, client, node_id)
                    sizes.append(len(schedule.voters))
                written = len(acked)
                with trio.move_on_after(10):
                    while len(acked) < written + 20:  # the 3 remaining voters take writes
                        await trio.sleep(0.05)
            stop.set()
        print("events:", schedule.events)
        print(f"{len(acked)} writes acknowledged, {len(failures)} failed: {failures[:5]}")
        assert sizes == [2, 3, 4, 5, 4, 3], sizes
        assert len(acked) >= written + 20, f"no writes after the walk: {len(acked)} acknowledged, {written} before"

        statuses = await cluster.wait_converged(deadline_s=30)
        assert sorted(statuses) == sorted(schedule.voters) and len(statuses) == 3
        for node_id, status in statuses.items():
            config = status["config"]
            assert (sorted(config["voters"]), config["learners"]) == (sorted(schedule.voters), []), (node_id, config)
        assert len({s["config"]["epoch"] for s in statuses.values()}) == 1
        for node_id in statuses:
            async with connect([cluster.endpoint(node_id)], timeout=10) as one:
                held = dict(await one.list("w", consistency="s"))
            missing = {k: v for k, v in acked.items() if held.get(k) != v}
            assert not missing, (f"node {node_id} lacks {len(missing)} acknowledged keys, e.g. "
                                 f"{list(missing.items())[:5]}")
    except AssertionError as exc:
        if "NEMESIS_SEED" in str(exc):
            raise
        raise AssertionError(f"[NEMESIS_SEED={seed}] {exc}\nevents: {schedule.events}\n{cluster.logs_tail()}") from exc
    finally:
        cluster.close()


# ---------------------------------------------------------------------------------------------------
# joining through a member that missed the add


async def test_join_through_a_member_that_missed_the_add(tmp_path):
    """``kv serve --id 3 --join L,1``, where L is a member that missed ``kv member add 3``: L is a learner
    that was down when node 3 was added and came back on another port (``--peers 2=HOST:OTHER_PORT``:
    the others dial the address the configuration names, so nothing reaches it, and a learner never
    campaigns); its configuration does not name node 3. The join must not take the first answer's "not
    a member" for the last word while a member it was given, node 1, the leader, knows node 3. Node 3
    joins and catches up; L still has not heard of it. (Regression: ``kv serve --join`` exited 1 with
    "node 3 is not a member of the cluster ... add it first" from the first member that answered.)"""
    cluster = MemberCluster(tmp_path, founders=1, spares=2)
    try:
        cluster.start_all()
        await cluster.wait_leader()
        async with connect([cluster.endpoint(1)], timeout=10) as client:
            await client.member_add(2, "{}:{}".format(*cluster.planned[2]))
            cluster.admit(2)
            with trio.fail_after(30):
                while not ((s := await cluster.status(2)) and s.get("role") == "learner" and s["decided_slot"] > 0):
                    await trio.sleep(0.1)
            cluster.kill(2)
            await client.member_add(3, "{}:{}".format(*cluster.planned[3]))
            await client.put("after-the-add", "yes")

        cluster.addresses[2] = ("127.0.0.1", free_ports(1)[0])  # where it listens now (status, clients)
        # kv serve refuses --peers that give a node another address than its directory recorded (the
        # members would never reach it there): this test wants exactly such a node, so it rewrites the record
        meta_path = cluster.data_dir(2) / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["config"]["addresses"]["2"] = cluster.endpoint(2)
        meta_path.write_text(json.dumps(meta))
        log = open(cluster.log_path(2), "ab")
        cluster.procs[2] = subprocess.Popen(
            [sys.executable, "-m", "kv_cli", "serve", "--id", "2", "--peers", f"2={cluster.endpoint(2)}",
             "--data-dir", str(cluster.data_dir(2))], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
        log.close()
        with trio.fail_after(30):
            while (stale := await cluster.status(2)) is None:
                await trio.sleep(0.1)
        assert 3 not in stale["config"]["learners"], stale["config"]

        cluster.addresses[3] = cluster.planned[3]
        cluster.joined.add(3)
        cluster.start(3, join=[cluster.endpoint(2), cluster.endpoint(1)])
        joined = None
        with trio.move_on_after(30):
            while not (joined and joined.get("role") == "learner"
                       and joined["applied_slot"] >= stale["applied_slot"] + 2):
                assert cluster.alive(3), f"kv serve --join exited:\n{cluster.log_path(3).read_text()[-2000:]}"
                joined = await cluster.status(3)
                await trio.sleep(0.1)
        assert joined and joined.get("role") == "learner", cluster.logs_tail()
        assert 3 not in (await cluster.status(2))["config"]["learners"], "L caught up: the case was not exercised"
    finally:
        cluster.close()
