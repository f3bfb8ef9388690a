"""The client's two ways of sending puts, side by side in one run: ``await kv.put()`` from many trio
tasks (what users write) against ``submit_put`` callbacks (what ``kv bench`` uses).

    python bench/client_paths.py --nodes 1 --inflight 256 --requests 40000 --rounds 3

Starts one local cluster of this tree (``ab_cluster.py``), then alternates the two paths round by round
against it and prints, per path, the median throughput and the client process's own on-CPU time per
put (``/proc/self/task/*/schedstat``), and the ratios await/submit. Client CPU per put is the figure
that a change to the client moves; throughput depends on the servers sharing the machine's cores too.
Bounded: ``--requests`` puts per round, a minute per round at most.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab_cluster  # noqa: E402  (beside this script)

from kvstore.client import connect  # noqa: E402

ROUND_LIMIT_S = 60.0


def own_cpu_s() -> float:
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


async def awaiting(endpoints: list[str], inflight: int, total: int, value: str) -> int:
    done = 0
    async with connect(endpoints, timeout=30) as kv:
        per = max(1, total // inflight)

        async def worker(w: int) -> None:
            nonlocal done
            for i in range(per):
                await kv.put(f"a{w}-{i}", value)
                done += 1

        with trio.move_on_after(ROUND_LIMIT_S):
            async with trio.open_nursery() as nursery:
                for w in range(inflight):
                    nursery.start_soon(worker, w)
    return done


async def submitting(endpoints: list[str], inflight: int, total: int, value: str) -> int:
    done = 0
    sent = 0
    finished = trio.Event()
    async with connect(endpoints, timeout=30) as kv:
        def launch() -> None:
            nonlocal sent
            sent += 1
            kv.submit_put(f"s{sent}", value, on_done)

        def on_done(outcome: object) -> None:
            nonlocal done
            if isinstance(outcome, BaseException):
                raise outcome
            done += 1
            if sent < total:
                launch()
            elif done == total:
                finished.set()

        for _ in range(min(inflight, total)):
            launch()
        with trio.move_on_after(ROUND_LIMIT_S):
            await finished.wait()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["await", "submit"], help="run one path only (for a profiler)")
    args = parser.parse_args()
    value = "x" * 100
    here = Path(__file__).resolve().parent.parent
    if args.rounds < 1 or args.requests < 1 or args.inflight < 1 or args.nodes < 1:
        parser.error("--nodes, --inflight, --requests and --rounds must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="kv-client-paths-"))
    cluster = ab_cluster.TreeCluster(here, root, args.nodes)
    rows: dict[str, list[tuple[float, float]]] = {"await": [], "submit": []}
    try:
        cluster.start_all()
        cluster.wait_leader(deadline_s=30)
        for round_no in range(args.rounds):
            order = [(name, fn) for name, fn in (("await", awaiting), ("submit", submitting))
                     if args.only in (None, name)]
            for name, fn in order if round_no % 2 == 0 else order[::-1]:
                cpu0, t0 = own_cpu_s(), time.perf_counter()
                done = trio.run(fn, cluster.endpoints, args.inflight, args.requests, value)
                elapsed, cpu = time.perf_counter() - t0, own_cpu_s() - cpu0
                rows[name].append((done / elapsed, cpu / max(1, done) * 1e6))
                print(f"round {round_no + 1}: {name:6} {done / elapsed:9.0f} puts/s, "
                      f"client {cpu / max(1, done) * 1e6:6.1f} us/put", file=sys.stderr, flush=True)
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    med = {name: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for name, v in rows.items() if v}
    print(f"{args.nodes} node(s), {args.inflight} in flight, 100-byte puts, median of {args.rounds} rounds")
    if args.only:
        return
    for name, (ops, cpu) in med.items():
        print(f"  {name:6} {ops:9.0f} puts/s   client {cpu:6.1f} us/put")
    print(f"  await/submit: throughput {med['await'][0] / med['submit'][0]:.2f}, client CPU per put "
          f"{med['await'][1] / med['submit'][1]:.2f}")


if __name__ == "__main__":
    main()
