"""Concurrent clients that record a history, and the checks every nemesis run ends with.

``run_workload`` starts ``clients`` trio tasks, each with its own ``AsyncClient`` (so its own
client_id), for a bounded time. Each picks operations from a seeded ``random.Random``: puts, linearizable
gets, cas (expecting the value it last saw) and a few deletes on a small set of shared keys, so
operations conflict; plus puts of fresh unique keys (``u<process>-<n>``), which make a lost write
obvious. Every written value is unique. Each operation is recorded in a ``tests.checker.linearizability``
``History``: invoked before the request, completed after the reply; ``Unavailable`` with
``outcome_unknown`` makes a write's outcome unknown; a write never sent, or a read that got no answer,
is dropped (it constrains nothing).

``finish_and_check`` is the common ending: heal, read every key (recorded in the history), SIGKILL all
nodes at once, restart, read everything again (recorded too, and equal to the reads before the crash),
check the history with the checker, check every acknowledged unique-key write is present, and wait
until all replicas report the same ``state_hash`` at the same ``applied_slot`` (and name the engine the
cluster was started with). Failures carry the nemesis seed and the path of the saved history.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import trio

from kvstore.client import RequestError, Unavailable, connect

from ..checker.linearizability import History, check, history_to_json

SHARED_KEYS = ("a", "b", "c", "d")


def nemesis_seconds(base: float) -> float:
    """A run's time under faults: ``base`` times ``NEMESIS_SCALE`` from the environment (default 1; a soak
    sets e.g. 4, QA found no way to lengthen the runs without patching the tests)."""
    scale = float(os.environ.get("NEMESIS_SCALE", "1"))
    if not scale > 0:
        raise ValueError(f"NEMESIS_SCALE must be a number above 0, got {scale!r}")
    return base * scale


def nemesis_seed() -> int:
    """``NEMESIS_SEED`` from the environment (to replay a schedule), else a fresh random seed."""
    text = os.environ.get("NEMESIS_SEED")
    return int(text) if text else random.SystemRandom().randrange(2**32)


@dataclass
class Stats:
    ok: int = 0
    unknown: int = 0
    failed: int = 0
    request_errors: list = field(default_factory=list)
    acked_unique: dict = field(default_factory=dict)  # key -> value, acknowledged puts of unique keys
    attempted_unique: dict = field(default_factory=dict)  # key -> value, every put of a unique key tried


async def _client(process: int, endpoints: list[str], history: History, rng: random.Random,
                  stop_at: float, timeout: float, stats: Stats) -> None:
    last_seen: dict[str, object] = {}
    n = 0
    async with connect(endpoints, timeout=timeout) as kv:
        while trio.current_time() < stop_at:
            n += 1
            value = f"p{process}-{n}"
            roll = rng.random()
            key = rng.choice(SHARED_KEYS)
            if roll < 0.35:
                kind, args = "put", {"value": value}
            elif roll < 0.70:
                kind, args = "get", {}
            elif roll < 0.85:
                kind, args = "cas", {"expected": last_seen.get(key), "value": value}
            elif roll < 0.90:
                kind, args = "delete", {}
            else:
                key = f"u{process}-{n}"
                kind, args = "put", {"value": value}
                stats.attempted_unique[key] = value
            op = history.invoke(process, kind, key, **args)
            try:
                if kind == "put":
                    await kv.put(key, args["value"])
                    result = None
                    last_seen[key] = args["value"]
                elif kind == "get":
                    result = await kv.get(key)
                    last_seen[key] = result
                elif kind == "cas":
                    result = await kv.cas(key, args["expected"], args["value"])
                    if result:
                        last_seen[key] = args["value"]
                else:
                    result = await kv.delete(key)
                    last_seen[key] = None
            except Unavailable as exc:
                if kind != "get" and exc.outcome_unknown:
                    history.unknown(op)
                    stats.unknown += 1
                else:
                    history.fail(op)
                    stats.failed += 1
                continue
            except RequestError as exc:
                history.fail(op)
                stats.request_errors.append(f"{kind} {key}: {exc.code}: {exc}")
                continue
            history.ok(op, result)
            stats.ok += 1
            if kind == "put" and key.startswith("u"):
                stats.acked_unique[key] = args["value"]


async def run_workload(endpoints: list[str], history: History, rng: random.Random, *, duration: float,
                       clients: int = 4, timeout: float = 8.0) -> Stats:
    """Run ``clients`` recording clients for ``duration`` seconds (each op's own timeout can extend it)."""
    stats = Stats()
    stop_at = trio.current_time() + duration
    async with trio.open_nursery() as nursery:
        for p in range(1, clients + 1):
            nursery.start_soon(_client, p, endpoints, history, random.Random(rng.random()), stop_at, timeout, stats)
    return stats


async def read_all(history: History, endpoints: list[str], process: str, keys) -> dict:
    """Read every key with a linearizable get, recording each read; retries until it gets answers."""
    values = {}
    async with connect(endpoints, timeout=30) as kv:
        for key in sorted(keys):
            op = history.invoke(process, "get", key)
            try:
                values[key] = await kv.get(key)
            except Unavailable:
                history.fail(op)
                raise
            history.ok(op, values[key])
    return values


def _fail(seed: int, root, message: str, history: History | None = None) -> AssertionError:
    saved = ""
    if history is not None:
        path = root / "history.json"
        path.write_text(history_to_json(history.ops()))
        saved = f"\nhistory saved to {path} (tests.checker.linearizability.history_from_json + check to replay)"
    return AssertionError(f"[NEMESIS_SEED={seed}] {message}{saved}")


async def finish_and_check(cluster, history: History, stats: Stats, seed: int, *, min_ok: int = 20) -> None:
    """Heal, read, crash everything at once, restart, read, check history, acks and convergence. A node
    whose process ended by itself during the run (not killed by the nemesis) fails it too."""
    exits = cluster.unexpected_exits()
    if exits:
        raise _fail(seed, cluster.root, "a node's process ended by itself during the run: " + "; ".join(exits))
    cluster.heal()
    await cluster.wait_leader(deadline_s=40)
    keys = {op.key for op in history.ops()} | set(SHARED_KEYS)
    before = await read_all(history, cluster.endpoints, "final-before-crash", keys)

    cluster.kill_all_at_once()
    cluster.start_all()
    await cluster.wait_leader(deadline_s=40)
    after = await read_all(history, cluster.endpoints, "final-after-restart", keys)

    if stats.request_errors:
        raise _fail(seed, cluster.root, f"unexpected request errors: {stats.request_errors[:5]}")
    if stats.ok < min_ok:
        raise _fail(seed, cluster.root, f"only {stats.ok} operations succeeded; the workload made no progress")
    if before != after:
        changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
        raise _fail(seed, cluster.root, f"values changed across a crash of every node: {changed}", history)
    lost = {k: v for k, v in stats.acked_unique.items() if after.get(k) != v}
    if lost:
        raise _fail(seed, cluster.root, f"{len(lost)} acknowledged writes lost, e.g. {list(lost.items())[:5]}", history)
    invented = {k: v for k, v in after.items()
                if k.startswith("u") and v is not None and stats.attempted_unique.get(k) != v}
    if invented:
        raise _fail(seed, cluster.root, f"values nobody wrote: {invented}", history)

    verdict = check(history.ops(), max_states=1_000_000)
    if verdict.ok is not True:
        what = "NOT LINEARIZABLE" if verdict.ok is False else "checker gave up (inconclusive)"
        raise _fail(seed, cluster.root, f"{what}: {verdict.explanation}", history)

    statuses = await cluster.wait_converged(deadline_s=40)
    slots = {s["applied_slot"] for s in statuses.values()}
    assert len(slots) == 1
    cluster.assert_engine(statuses)
    print(f"nemesis seed {seed} ({cluster.engine} engine): {stats.ok} ok, {stats.unknown} unknown, "
          f"{stats.failed} failed; "
          f"{len(history)} ops checked; converged at slot {slots.pop()}")
