"""Steady writes of large values (1 MiB by default) to a fresh 3-node cluster: do leaders hold?

    python bench/big_values.py [--nodes 3] [--writers 4] [--value-kib 1024] [--keys 200] [--seconds 30]

No fault is injected: the cluster should keep its leader for the whole run. The script counts what
says otherwise: leader changes seen by a poller (every 0.1 s), the cores' elections and check-quorum
step-downs, and the writers' worst put. A node whose event loop stalls past an election timeout (0.3 s)
loses its leadership or deposes the leader; session 23 saw 3-4 changes in 30 s here, with puts of up
to 2.5 s. Also reports puts/s, MiB/s, p50/p99 and each node's peak RSS. Every run stops by itself
(``--seconds``) and kills only the servers it started.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from store_bench import LocalKv  # noqa: E402  (beside this script)

from kvstore.client import KVError, connect  # noqa: E402


def _rss_peak_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _run(cluster: LocalKv, args: argparse.Namespace) -> dict[str, object]:
    value = os.urandom(args.value_kib * 1024)
    latencies: list[float] = []
    failed = 0
    leaders_seen: list[tuple[float, int | None]] = []
    deadline = trio.current_time() + args.seconds

    async with connect(cluster.endpoints, timeout=10.0) as kv:
        async def writer(w: int) -> None:
            nonlocal failed
            i = w
            while trio.current_time() < deadline:
                t0 = time.perf_counter()
                try:
                    await kv.put(f"big/{i % args.keys:05d}", value)
                except KVError:
                    failed += 1
                else:
                    latencies.append(time.perf_counter() - t0)
                i += args.writers

        async def poller() -> None:
            async with connect(cluster.endpoints, timeout=1.0) as watch:
                while trio.current_time() < deadline:
                    leader = None
                    for endpoint in cluster.endpoints:
                        try:
                            with trio.move_on_after(0.5):
                                status = await watch.status(endpoint)
                                if status.get("is_leader"):
                                    leader = status.get("id")
                        except KVError:
                            pass
                    if leader is not None and (not leaders_seen or leaders_seen[-1][1] != leader):
                        leaders_seen.append((trio.current_time(), leader))
                    await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller)
            for w in range(args.writers):
                nursery.start_soon(writer, w)

        counters: dict[str, int] = {}
        for endpoint in cluster.endpoints:
            status = await kv.status(endpoint)
            for name in ("elections", "stepped_down_no_quorum", "stepped_down_nack", "pre_vote_granted",
                         "became_leader"):
                counters[name] = counters.get(name, 0) + int(status["core_counters"].get(name, 0))
            if args.all_counters:
                print(endpoint, {k: v for k, v in sorted(status["core_counters"].items()) if v})
                print(endpoint, {k: v for k, v in sorted(status["counters"].items()) if v})
    latencies.sort()
    n = len(latencies)
    return {
        "puts": n, "failed": failed,
        "puts_per_s": n / args.seconds, "mib_per_s": n * args.value_kib / 1024 / args.seconds,
        "p50_ms": 1000 * latencies[n // 2] if n else None,
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else None,
        "max_ms": 1000 * latencies[-1] if n else None,
        "over_300ms": sum(1 for x in latencies if x > 0.3),
        "leader_changes": max(0, len(leaders_seen) - 1),
        **counters,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--writers", type=int, default=4, help="trio tasks each awaiting one put at a time")
    parser.add_argument("--value-kib", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=200, help="keys overwritten in turn")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--all-counters", action="store_true", help="print every node's counters at the end")
    parser.add_argument("--root", help="keep the data directories and logs here (default: a temporary one)")
    args = parser.parse_args()
    if args.nodes < 1 or args.writers < 1 or args.value_kib < 1 or args.keys < 1 or args.seconds <= 0:
        parser.error("--nodes, --writers, --value-kib, --keys and --seconds must be positive")
    if args.root:
        Path(args.root).mkdir(parents=True, exist_ok=True)
    with LocalKv(args.nodes, root=args.root) as cluster:
        cluster.start_all()
        cluster.wait_leader()
        result = trio.run(_run, cluster, args)
        peaks = [_rss_peak_mib(proc.pid) for proc in cluster.procs.values()]
    print(f"{args.nodes} nodes, {args.writers} writers of {args.value_kib} KiB values over {args.keys} keys, "
          f"{args.seconds:g} s")
    for name, figure in result.items():
        shown = f"{figure:.1f}" if isinstance(figure, float) else str(figure)
        print(f"  {name:24} {shown}")
    print(f"  {'peak_rss_mib':24} " + " / ".join(f"{p:.0f}" for p in peaks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
