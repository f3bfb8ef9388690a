"""A/B benchmark: this tree against an earlier revision, in one run, alternating.

Machines here are noisy (2 cores, shared), so a figure only means something as a ratio against a
baseline measured in the same run. This script checks out ``--baseline REV`` into a temporary git
worktree, then, for each round, runs the same load against a fresh local cluster of each tree (server
*and* client code from that tree), alternating A and B so that drift in the machine's load hits both.

    python bench/ab.py --baseline 4f3e7bd --nodes 3 --inflight 1,16,256 --rounds 2
    python bench/ab.py --baseline 4f3e7bd --api blocking --inflight 1,8   # the blocking Client, in threads

Prints, per in-flight level, the median throughput, p50 and CPU per put (servers and client together,
on-CPU time from ``/proc/PID/task/*/schedstat``) of each tree and the ratio B/A (B = this tree). CPU per
put is the steadiest of the three on a shared machine: other tenants slow every step down but do not
add work. Every run is bounded: ``--requests`` per point, and a timeout per subprocess.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
AB_CLUSTER = HERE / "bench" / "ab_cluster.py"  # the cluster of one tree's nodes (uses that tree's client)

# Runs inside a subprocess with PYTHONPATH set to one tree: start a cluster of that tree (ab_cluster.py),
# drive it with that tree's client, print one JSON line per in-flight level. Only the trees' public
# client API (kvstore.client) is used, nothing from their tests/.
_LOAD = r'''
import importlib.util, json, os, shutil, sys, tempfile, time
from contextlib import AsyncExitStack
from pathlib import Path
import trio
from kvstore.client import connect

spec = importlib.util.spec_from_file_location("ab_cluster", sys.argv[4])  # from this checkout, see there
ab_cluster = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab_cluster)

async def load(endpoints, inflight, total):
    lat = []
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connect(endpoints, timeout=30))
                 for _ in range(min(4, inflight))]
        per = max(1, total // inflight)
        async def worker(w):
            kv = conns[w % len(conns)]
            for i in range(per):
                started = time.perf_counter()
                await kv.put(f"k{w}-{i}", "x" * 100)
                lat.append(time.perf_counter() - started)
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(inflight):
                nursery.start_soon(worker, w)
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {"ops": len(lat) / elapsed, "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}

def load_blocking(endpoints, inflight, total):
    # the blocking Client (kvstore.client.Client), one thread per request in flight, sharing one Client
    import threading
    from kvstore.client import Client
    lat = []
    per = max(1, total // inflight)
    with Client(endpoints, timeout=30) as kv:
        def worker(w):
            mine = []
            for i in range(per):
                started = time.perf_counter()
                kv.put(f"k{w}-{i}", "x" * 100)
                mine.append(time.perf_counter() - started)
            lat.extend(mine)
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(inflight)]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {"ops": len(lat) / elapsed, "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}

def cpu_s(pid):
    # on-CPU time of every thread of a process, from the scheduler (exact, unlike tick samples)
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9

nodes, levels, total = int(sys.argv[1]), [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
api = sys.argv[5]
root = Path(tempfile.mkdtemp(prefix="kv-ab-"))
cluster = ab_cluster.TreeCluster(Path.cwd(), root, nodes)
try:
    cluster.start_all()
    cluster.wait_leader(deadline_s=30)
    pids = [p.pid for p in cluster.procs.values()] + [os.getpid()]
    for inflight in levels:
        n = total if inflight > 1 else max(200, total // 20)
        before = [cpu_s(pid) for pid in pids]
        if api == "blocking":
            row = load_blocking(cluster.endpoints, inflight, n)
        else:
            row = trio.run(load, cluster.endpoints, inflight, n)
        used = sum(cpu_s(pid) for pid in pids) - sum(before)
        row["cpu_us"] = used / n * 1e6  # servers and client together, per put
        print(json.dumps({"inflight": inflight, **row}), flush=True)
finally:
    cluster.close()
    shutil.rmtree(root, ignore_errors=True)
'''


ATTEMPTS = 3


def run_tree(tree: Path, nodes: int, levels: str, total: int, api: str = "async") -> dict[int, dict]:
    """One round against ``tree``; a failed run (an old revision may have bugs since fixed) is retried
    on a fresh cluster, at most ``ATTEMPTS`` times in all, and each failure is reported."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    for attempt in range(1, ATTEMPTS + 1):
        out = subprocess.run([sys.executable, "-c", _LOAD, str(nodes), levels, str(total), str(AB_CLUSTER), api],
                             cwd=tree, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode == 0:
            rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            return {row["inflight"]: row for row in rows}
        lines = out.stderr.strip().splitlines() or ["?"]
        errors = [line.strip(" |") for line in lines if "Error" in line or "Unavailable" in line]
        last_line = errors[-1] if errors else lines[-1]
        print(f"  load against {tree} failed (attempt {attempt}/{ATTEMPTS}): {last_line}", flush=True)
    raise SystemExit(f"load against {tree} failed {ATTEMPTS} times; last error:\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against (A)")
    parser.add_argument("--candidate", help="git revision to measure (B); default: this working tree (which "
                                            "others may be editing)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--inflight", default="1,16,256")
    parser.add_argument("--requests", type=int, default=10_000, help="puts per point (1 in flight: 1/20 of it)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--api", choices=("async", "blocking"), default="async",
                        help="the client that drives the load: async (connect(), a trio task per request in "
                             "flight) or blocking (Client, a thread per request in flight)")
    args = parser.parse_args()
    try:
        levels = [int(x) for x in args.inflight.split(",")]
    except ValueError:
        parser.error(f"--inflight wants a comma list of numbers, not {args.inflight!r}")
    if min(levels, default=0) < 1 or args.requests < 1 or args.rounds < 1 or args.nodes < 1:
        parser.error("--nodes, --inflight levels, --requests and --rounds must be at least 1")
    for rev in filter(None, (args.baseline, args.candidate)):
        known = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                               capture_output=True)
        if known.returncode != 0:
            parser.error(f"{rev!r} is not a revision of this repository")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(base), args.baseline],
                       check=True, capture_output=True)
        candidate = HERE
        if args.candidate:
            candidate = Path(tmp) / "candidate"
            subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(candidate), args.candidate],
                           check=True, capture_output=True)
        try:
            results: dict[str, list] = {"A": [], "B": []}
            for round_no in range(args.rounds):
                # A B, then B A, ...: whatever the run order favours (a warmer page cache, a quieter
                # neighbour) does not always favour the same tree.
                order = [("A", base), ("B", candidate)]
                for name, tree in (order if round_no % 2 == 0 else order[::-1]):
                    print(f"round {round_no + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                    results[name].append(run_tree(tree, args.nodes, args.inflight, args.requests, args.api))
        finally:
            for tree in {base, candidate} - {HERE}:
                subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    print(f"A = {args.baseline}, B = {args.candidate or 'this tree'}; {args.nodes} nodes, 100-byte puts, "
          f"fsync always, {args.api} client, "
          f"median of {args.rounds} rounds in A B, B A, ... order, nproc={os.cpu_count()}")
    print("cpu us/put: on-CPU time of the servers and the client together (schedstat), per put; steadier "
          "than throughput on a shared machine")
    print(f"{'in flight':>9} {'A ops/s':>9} {'B ops/s':>9} {'B/A':>6} {'A p50 ms':>9} {'B p50 ms':>9} {'B/A':>6} "
          f"{'A cpu us':>9} {'B cpu us':>9} {'B/A':>6}")
    for inflight in levels:
        def med(name: str, key: str, inflight: int = inflight) -> float:
            return statistics.median(r[inflight][key] for r in results[name])
        a_ops, b_ops = med("A", "ops"), med("B", "ops")
        a_p50, b_p50 = med("A", "p50_ms"), med("B", "p50_ms")
        a_cpu, b_cpu = med("A", "cpu_us"), med("B", "cpu_us")
        print(f"{inflight:>9} {a_ops:>9.0f} {b_ops:>9.0f} {b_ops / a_ops:>6.2f} {a_p50:>9.2f} {b_p50:>9.2f} "
              f"{b_p50 / a_p50:>6.2f} {a_cpu:>9.0f} {b_cpu:>9.0f} {b_cpu / a_cpu:>6.2f}")


if __name__ == "__main__":
    main()
