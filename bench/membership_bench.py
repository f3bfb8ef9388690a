"""Writes per second and latency across a membership change, and while a learner catches up.

    python bench/membership_bench.py                          # 3 nodes, add + promote a 4th under writes
    python bench/membership_bench.py --preload-keys 1000000   # the same after loading 1M keys (a learner's
                                                              # catch-up is then a ~100 MB snapshot)

One run, one script, so the figures are ratios against the same run's "before" window (these machines
are noisy). A real local cluster of ``kv serve`` processes (fsync on, 127.0.0.1, ports from the OS);
``--inflight`` writers on one client keep putting; mid-run node 4 is added with ``member_add``, started
with ``kv serve --join`` and promoted as soon as the leader allows it. Reports, for the windows before,
during (from the add to the promotion) and after: puts/s and p50/p99 latency; and the longest gap
between two acknowledged writes during the change, against the election timeout (the leader must not
stall longer than that): a table, or with ``--json`` the result as JSON (every figure). Bounded:
``--seconds`` of load and timeouts on every wait; nodes are ended by PID.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from ab_cluster import free_ports  # bench/ is on the path when this script runs

from kvstore.client import connect

ELECTION_TIMEOUT_S = 30 * 0.01  # kv serve's defaults: 30 ticks of 10 ms


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = dict(zip((1, 2, 3, 4), free_ports(4), strict=True))
        self.procs: dict[int, subprocess.Popen] = {}

    def endpoint(self, node: int) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def start(self, node: int, *args: str) -> None:
        log = open(self.root / f"node-{node}.log", "ab")
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "kv_cli", "serve", "--id", str(node), "--data-dir", str(self.root / f"node-{node}"),
             *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def start_founders(self) -> None:
        peers = ",".join(f"{i}={self.endpoint(i)}" for i in (1, 2, 3))
        for node in (1, 2, 3):
            self.start(node, "--peers", peers)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def summary(latencies: list[float], seconds: float) -> dict:
    if not latencies or seconds <= 0:
        return {"puts_per_s": 0.0, "p50_ms": None, "p99_ms": None, "count": 0}
    ordered = sorted(latencies)
    return {"puts_per_s": round(len(ordered) / seconds, 1), "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 2),
            "count": len(ordered)}


async def preload(endpoints: list[str], keys: int) -> float:
    started = time.perf_counter()
    async with connect(endpoints, timeout=30) as kv:
        value = "x" * 100
        next_key = 0
        shown = started

        async def writer() -> None:
            nonlocal next_key, shown
            while next_key < keys:
                i = next_key
                next_key += 1
                await kv.put(f"pre/{i:08d}", value)
                if time.perf_counter() - shown > 5:
                    shown = time.perf_counter()
                    print(f"  preloaded {next_key:,} of {keys:,} keys", file=sys.stderr)

        async with trio.open_nursery() as nursery:
            for _ in range(256):
                nursery.start_soon(writer)
    return time.perf_counter() - started


async def run(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="kv-membership-bench-"))
    cluster = Cluster(root)
    marks: dict[str, float] = {}
    done: list[tuple[float, float]] = []  # (completed at, latency)
    try:
        cluster.start_founders()
        founders = [cluster.endpoint(i) for i in (1, 2, 3)]
        async with connect(founders, timeout=30) as kv:
            with trio.fail_after(60):
                while True:
                    try:
                        await kv.put("warm", "up")
                        break
                    except Exception:  # noqa: BLE001 -- no leader yet
                        await trio.sleep(0.2)
        preload_s = await preload(founders, args.preload_keys) if args.preload_keys else 0.0

        async with connect(founders, timeout=30) as kv:
            stop_at = trio.current_time() + args.seconds
            counter = 0

            async def writer() -> None:
                nonlocal counter
                while trio.current_time() < stop_at:
                    counter += 1
                    began = trio.current_time()
                    await kv.put(f"w/{counter % 100_000}", "v" * 100)
                    now = trio.current_time()
                    done.append((now, now - began))

            async def change() -> None:
                await trio.sleep(args.seconds / 3)
                marks["add"] = trio.current_time()
                await kv.member_add(4, cluster.endpoint(4))
                marks["added"] = trio.current_time()
                cluster.start(4, "--join", ",".join(founders))
                last = ""
                with trio.move_on_after(args.catch_up_seconds):
                    while True:
                        try:
                            await kv.member_promote(4)
                            marks["promoted"] = trio.current_time()
                            return
                        except Exception as exc:  # noqa: BLE001 -- lagging or not answering yet
                            last = str(exc)
                            if "behind" not in last and "not answered" not in last:
                                raise
                            await trio.sleep(0.1)
                # Not caught up in time: the figures then cover the catch-up window, as they stand.
                marks["promote_gave_up"] = trio.current_time()
                marks["promoted"] = marks["promote_gave_up"]
                print(f"  node 4 was not caught up after {args.catch_up_seconds:g} s: {last}", file=sys.stderr)

            async with trio.open_nursery() as nursery:
                for _ in range(args.inflight):
                    nursery.start_soon(writer)
                nursery.start_soon(change)
        start = min(t for t, _ in done) if done else 0.0
        end = max(t for t, _ in done) if done else 0.0
        add, promoted = marks.get("add", end), marks.get("promoted", end)
        before = [lat for t, lat in done if t < add]
        during = [lat for t, lat in done if add <= t <= promoted]
        after = [lat for t, lat in done if t > promoted]
        times = sorted(t for t, _ in done if add <= t <= promoted + 1.0)
        gaps = [(b - a, a) for a, b in itertools.pairwise(times)]
        gap, gap_at = max(gaps, default=(0.0, add))
        result = {
            "preload_keys": args.preload_keys, "preload_seconds": round(preload_s, 1),
            "inflight": args.inflight, "seconds": args.seconds,
            "change_seconds": round(promoted - add, 2),
            "before": summary(before, add - start), "during": summary(during, promoted - add),
            "after": summary(after, end - promoted),
            "longest_gap_ms": round(gap * 1e3, 1), "election_timeout_ms": ELECTION_TIMEOUT_S * 1e3,
            "longest_gap_starts_after_add_s": round(gap_at - add, 2),
            "marks_after_add_s": {k: round(v - add, 2) for k, v in marks.items()},
        }
        b = result["before"]["puts_per_s"] or 1.0
        result["ratios"] = {
            "during_over_before_puts": round(result["during"]["puts_per_s"] / b, 2),
            "after_over_before_puts": round(result["after"]["puts_per_s"] / b, 2),
            "longest_gap_over_election_timeout": round(gap / ELECTION_TIMEOUT_S, 2),
        }
        return result
    finally:
        cluster.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def format_table(result: dict) -> str:
    """The result as a small table (windows as rows) and the change's figures under it."""
    lines = [f"{'window':<8} {'puts/s':>9} {'x before':>8} {'p50 ms':>8} {'p99 ms':>8} {'puts':>8}"]
    before = result["before"]["puts_per_s"]
    for window in ("before", "during", "after"):
        w = result[window]
        ratio = f"{w['puts_per_s'] / before:.2f}" if before else "-"
        lines.append(f"{window:<8} {w['puts_per_s']:>9.1f} {ratio:>8} "
                     + " ".join("-".rjust(8) if w[k] is None else f"{w[k]:>8.2f}" for k in ("p50_ms", "p99_ms"))
                     + f" {w['count']:>8}")
    over_timeout = result["ratios"]["longest_gap_over_election_timeout"]
    lines.append(f"change (add to promotion): {result['change_seconds']:.2f} s; longest gap between acknowledged "
                 f"writes {result['longest_gap_ms']:.1f} ms = {over_timeout:.2f} x the election timeout "
                 f"({result['election_timeout_ms']:g} ms), "
                 f"{result['longest_gap_starts_after_add_s']:.2f} s after the add")
    if result["preload_keys"]:
        lines.append(f"preloaded {result['preload_keys']} keys in {result['preload_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="load duration (default 15)")
    parser.add_argument("--inflight", type=int, default=64, help="concurrent writers (default 64)")
    parser.add_argument("--preload-keys", type=int, default=0, help="keys to load before (default 0)")
    parser.add_argument("--catch-up-seconds", type=float, default=60.0,
                        help="how long to keep trying to promote the learner (default 60)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.inflight < 1 or args.preload_keys < 0:
        parser.error("--seconds > 0, --inflight >= 1 and --preload-keys >= 0")
    result = trio.run(run, args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
