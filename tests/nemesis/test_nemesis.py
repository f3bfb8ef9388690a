"""Our own Jepsen: a real 3-node cluster under faults, with a recorded history checked for linearizability.

Each scenario starts three ``kv serve`` processes, runs four recording clients on shared keys for a
bounded time while a nemesis injects one family of faults from a seeded schedule, then ends the same way
(``workload.finish_and_check``): heal, read all, SIGKILL every node at once, restart, read all, check
the history with ``tests/checker/linearizability.py``, check every acknowledged unique-key write is
there and the replicas agree on ``state_hash`` at one ``applied_slot``.

Faults: SIGKILL + restart (mostly the leader; snapshots every 200 commands so restarts also cross
compactions and snapshot transfers); SIGSTOP/SIGCONT well past the election timeout (0.3-0.6 s);
two of three nodes down (one killed, one stopped): nothing may succeed meanwhile; and peer links through
the userspace proxy (``proxy.py``): blackholed links, isolated nodes, asymmetric one-way partitions,
delays, dropped connections. Network namespaces with real link-down partitions are in
``test_netns.py``.

Engines (issue 18): every scenario runs for both Paxos engines, ``kv serve --engine core`` (the
Multi-Paxos core) and ``--engine classic`` (one essential-paxos instance per slot), as the ``[core]``
and ``[classic]`` cases; the run ends by checking that every node reports the engine under test. The
classic cases have a shorter fault phase (the ``duration`` parameter: about 60 % of the core's) to keep
CI in budget; the faults, the checks and the ending are the same (docs/testing.md).

Replay: every failure message starts with ``[NEMESIS_SEED=N]``; ``NEMESIS_SEED=N pytest
tests/nemesis -k '<scenario> and <engine>'`` replays the same fault schedule and client choices (the
interleaving of real processes is not reproducible, so a replay is a strong hint, not a guarantee).
"""
from __future__ import annotations

import random

import pytest
import trio

from ..checker.linearizability import History
from .cluster import NemesisCluster
from .proxy import PeerProxies
from .workload import finish_and_check, nemesis_seconds, nemesis_seed, run_workload

pytestmark = pytest.mark.slow


async def _run_scenario(tmp_path, nemesis, *, duration: float, engine: str = "core", proxies: bool = False,
                        extra_args: list[str] | None = None, client_timeout: float = 8.0, after=None,
                        make_cluster=None):
    seed = nemesis_seed()
    duration = nemesis_seconds(duration)
    print(f"NEMESIS_SEED={seed} engine={engine} duration={duration}s")
    rng = random.Random(seed)
    cluster = (make_cluster or NemesisCluster)(tmp_path, extra_args=extra_args, engine=engine)
    history = History(clock=trio.current_time)
    events: list[tuple[float, str]] = []
    try:
        async with trio.open_nursery() as nursery:
            if proxies:
                cluster.proxies = PeerProxies(cluster.addresses)
                await nursery.start(cluster.proxies.run)
            cluster.start_all()
            await cluster.wait_leader()
            stop_at = trio.current_time() + duration
            stats = None

            async def workload() -> None:
                nonlocal stats
                stats = await run_workload(cluster.endpoints, history, random.Random(rng.random()),
                                           duration=duration, timeout=client_timeout)

            nemesis_rng = random.Random(rng.random())
            async with trio.open_nursery() as inner:
                inner.start_soon(workload)
                await nemesis(cluster, nemesis_rng, stop_at, events)
            print("nemesis events:", [(round(t, 2), e) for t, e in events])
            if after is not None:
                after(history, stats, events, seed)
            await finish_and_check(cluster, history, stats, seed)
            nursery.cancel_scope.cancel()
    except AssertionError as exc:
        if "NEMESIS_SEED" in str(exc):
            raise
        raise AssertionError(f"[NEMESIS_SEED={seed}] {exc}") from exc
    finally:
        cluster.close()


def _note(events, text: str) -> None:
    events.append((trio.current_time(), text))


async def _sleep_until_or(stop_at: float, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop_at``; False if the nemesis time is over."""
    await trio.sleep(max(0.0, min(seconds, stop_at - trio.current_time())))
    return trio.current_time() < stop_at


async def kill_nemesis(cluster: NemesisCluster, rng: random.Random, stop_at: float, events) -> None:
    while await _sleep_until_or(stop_at, rng.uniform(1.0, 3.0)):
        leader = await cluster.leader()
        victim = leader if leader is not None and rng.random() < 0.7 else rng.choice(cluster.ids)
        _note(events, f"SIGKILL {victim}{' (leader)' if victim == leader else ''}")
        cluster.kill(victim)
        await trio.sleep(rng.uniform(0.3, 3.0))
        _note(events, f"restart {victim}")
        cluster.start(victim)
    cluster.heal()


async def pause_nemesis(cluster: NemesisCluster, rng: random.Random, stop_at: float, events) -> None:
    while await _sleep_until_or(stop_at, rng.uniform(1.0, 2.5)):
        leader = await cluster.leader()
        victim = leader if leader is not None and rng.random() < 0.7 else rng.choice(cluster.ids)
        _note(events, f"SIGSTOP {victim}{' (leader)' if victim == leader else ''}")
        cluster.pause(victim)
        await trio.sleep(rng.uniform(1.5, 4.0))  # several election timeouts
        _note(events, f"SIGCONT {victim}")
        cluster.resume(victim)
    cluster.heal()


TWO_DOWN_SECONDS = 7.0


async def two_down_nemesis(cluster: NemesisCluster, rng: random.Random, stop_at: float, events) -> None:
    await trio.sleep(3.0)
    a, b = rng.sample(cluster.ids, 2)
    _note(events, f"down: SIGKILL {a}, SIGSTOP {b}")
    cluster.kill(a)
    cluster.pause(b)
    await trio.sleep(TWO_DOWN_SECONDS)
    _note(events, f"up: restart {a}, SIGCONT {b}")
    cluster.start(a)
    cluster.resume(b)
    await _sleep_until_or(stop_at, stop_at - trio.current_time())
    cluster.heal()


def _nothing_succeeds_without_quorum(history, stats, events, seed) -> None:
    down = next(t for t, e in events if e.startswith("down"))
    up = next(t for t, e in events if e.startswith("up"))
    # A request that began after both nodes were gone and ended before they were back cannot have
    # succeeded: neither a write nor a linearizable read can be confirmed by one node of three.
    impossible = [op for op in history.ops()
                  if not op.unknown and op.invoke > down and op.complete < up]
    assert not impossible, (f"operations succeeded with two of three nodes down: "
                            f"{[o.describe() for o in impossible[:5]]}")
    during = [op for op in history.ops() if op.invoke > down and op.invoke < up]
    assert stats.unknown + stats.failed > 0, "no operation failed or timed out while two nodes were down"
    assert during, "no operation was even attempted while two nodes were down"


async def proxy_nemesis(cluster: NemesisCluster, rng: random.Random, stop_at: float, events) -> None:
    proxies = cluster.proxies
    ids = cluster.ids
    while await _sleep_until_or(stop_at, rng.uniform(0.5, 2.0)):
        leader = await cluster.leader()
        target = leader if leader is not None and rng.random() < 0.6 else rng.choice(ids)
        others = [i for i in ids if i != target]
        fault = rng.choice(["isolate", "one_way", "cut_pair", "delay", "drop", "minority_in"])
        if fault == "isolate":
            proxies.isolate(target)
            what = f"isolate {target}"
        elif fault == "one_way":  # target can hear the others but they cannot hear it
            for o in others:
                proxies.set_mode(target, o, "blackhole")
            what = f"one-way: {target} -> others blackholed"
        elif fault == "minority_in":  # the others cannot reach target; target's messages get out
            for o in others:
                proxies.set_mode(o, target, "blackhole")
            what = f"one-way: others -> {target} blackholed"
        elif fault == "cut_pair":
            o = rng.choice(others)
            proxies.set_mode(target, o, "blackhole")
            proxies.set_mode(o, target, "blackhole")
            what = f"cut link {target} <-> {o}"
        elif fault == "delay":
            delay = rng.uniform(0.05, 0.4)
            for o in others:
                proxies.set_mode(target, o, "delay", delay)
                proxies.set_mode(o, target, "delay", delay)
            what = f"delay links of {target} by {delay:.2f}s"
        else:
            for (src, dst) in proxies.links:
                if rng.random() < 0.5:
                    proxies.drop(src, dst)
            what = "drop connections"
        _note(events, what)
        await trio.sleep(rng.uniform(1.0, 4.0))
        _note(events, "heal")
        proxies.heal()
    proxies.heal()
    assert not any(link.mismatched_hello for link in proxies.links.values()), "a node dialed the wrong proxy"


# (engine, seconds of faults): the classic engine's runs are shorter (CI time; docs/testing.md).
@pytest.mark.parametrize("engine,duration", [("core", 25), ("classic", 15)], ids=["core", "classic"])
async def test_sigkill_and_restart_mostly_the_leader(tmp_path, engine, duration):
    await _run_scenario(tmp_path, kill_nemesis, duration=duration, engine=engine,
                        extra_args=["--snapshot-every", "200"])


@pytest.mark.parametrize("engine,duration", [("core", 20), ("classic", 12)], ids=["core", "classic"])
async def test_sigstop_longer_than_the_election_timeout(tmp_path, engine, duration):
    await _run_scenario(tmp_path, pause_nemesis, duration=duration, engine=engine)


@pytest.mark.parametrize("engine", ["core", "classic"])
async def test_two_of_three_down_fails_requests_and_never_returns_wrong_data(tmp_path, engine):
    # The same length for both engines: 3 s of service, 7 s with two nodes down, 4 s to recover.
    await _run_scenario(tmp_path, two_down_nemesis, duration=14, engine=engine, client_timeout=3.0,
                        after=_nothing_succeeds_without_quorum)


@pytest.mark.parametrize("engine,duration", [("core", 30), ("classic", 18)], ids=["core", "classic"])
async def test_proxy_partitions_delays_and_dropped_connections(tmp_path, engine, duration):
    await _run_scenario(tmp_path, proxy_nemesis, duration=duration, engine=engine, proxies=True)
