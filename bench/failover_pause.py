"""How long writes through the async client stop when the leader is paused: this tree against an earlier one.

A leader that stops answering without closing its connections (SIGSTOP here; a frozen VM, a host cut
off) is replaced by the others within about one election timeout (0.3 s by default). The clients
connected to it wait for their requests' attempt timeout (1.67 s with the default 5 s timeout) before
they try another node, unless they notice sooner (``kvstore.client.PROBE_SILENCE_SECONDS``). This
script measures what a writer sees: a 3-node cluster of each tree (``bench/ab_cluster.py``), writers
doing ``await kv.put`` on one ``connect()`` (``--inflight`` tasks; or threads each with a blocking
``Client``, ``--api blocking``), and ``--cycles`` times: the leader
is SIGSTOPped, and the pause is the time from the stop to the first acknowledgement of a put *sent* after
it (a put answered by the old leader just before the stop arrives after it: counted, it read as a pause
of 0 s; so each pause includes one put's latency, about a millisecond); the old leader is resumed once
the writes go on, and the next cycle waits until it has caught up.

    python bench/failover_pause.py --baseline HEAD~1 --rounds 2 --cycles 5

Printed: per tree and in-flight level, the median and the largest pause over all cycles, and
candidate/baseline. Bounded: every wait has a deadline, ``--cycles`` stops per round.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
AB_CLUSTER = HERE / "bench" / "ab_cluster.py"

# Runs with PYTHONPATH and the working directory set to one tree; that tree's client and nodes.
_CHILD = r'''
import importlib.util, json, os, shutil, signal, sys, tempfile, threading, time
from pathlib import Path
import trio
from kvstore.client import Client, KVError, connect

spec = importlib.util.spec_from_file_location("ab_cluster", sys.argv[1])
ab_cluster = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab_cluster)
inflight, cycles, api = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

async def leader_of(kv, endpoints):
    for _ in range(200):
        for endpoint in endpoints:
            try:
                with trio.move_on_after(0.5):
                    status = await kv.status(endpoint)
                    if status.get("is_leader"):
                        return status["id"]
            except KVError:  # (the paused node, or one that cannot answer yet: ask the next)
                pass
        await trio.sleep(0.05)
    raise RuntimeError("no leader")

async def run(cluster):
    pauses = []
    acked = []
    stop = trio.Event()
    done = threading.Event()

    def blocking_writer(w):
        with Client(cluster.endpoints) as blocking:  # (the default timeout; one client per thread)
            i = 0
            while not done.is_set():
                started = time.monotonic()
                blocking.put(f"b{w}-{i}", "x" * 100)
                acked.append((started, time.monotonic()))
                i += 1

    async with connect(cluster.endpoints) as kv:  # (the default timeout: attempts of 1.67 s)
        async def writer(w):
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                await kv.put(f"w{w}-{i}", "x" * 100)
                acked.append((started, time.monotonic()))
                i += 1
        async with trio.open_nursery() as nursery:
            for w in range(inflight):
                if api == "async":
                    nursery.start_soon(writer, w)
                else:
                    nursery.start_soon(trio.to_thread.run_sync, blocking_writer, w)
            for _ in range(cycles):
                await trio.sleep(1.0)
                leader = await leader_of(kv, cluster.endpoints)
                proc = cluster.procs[leader]
                os.kill(proc.pid, signal.SIGSTOP)
                stopped = time.monotonic()
                count = len(acked)
                with trio.fail_after(20):
                    while not any(sent > stopped for sent, _ in acked[count:]):
                        await trio.sleep(0.005)
                first = min(answered for sent, answered in acked[count:] if sent > stopped)
                pauses.append(first - stopped)
                await trio.sleep(0.5)
                os.kill(proc.pid, signal.SIGCONT)
                await trio.sleep(1.5)  # (it rejoins as a follower and catches up)
            stop.set()
            done.set()
    return pauses

root = Path(tempfile.mkdtemp(prefix="kv-failover-"))
cluster = ab_cluster.TreeCluster(Path.cwd(), root, 3)
try:
    cluster.start_all()
    cluster.wait_leader(deadline_s=30)
    print(json.dumps({"pauses": trio.run(run, cluster)}), flush=True)
finally:
    for proc in cluster.procs.values():
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except OSError:
            pass
    cluster.close()
    shutil.rmtree(root, ignore_errors=True)
'''


def run_tree(tree: Path, inflight: int, cycles: int, api: str) -> list[float]:
    env = {**__import__("os").environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(AB_CLUSTER), str(inflight), str(cycles), api],
                         cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"the run against {tree} failed:\n{out.stderr[-3000:]}")
    line = next(line for line in out.stdout.splitlines() if line.startswith("{"))
    return json.loads(line)["pauses"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare against (A)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=5, help="leader pauses per round and tree")
    parser.add_argument("--inflight", default="1,64", help="writer tasks, comma-separated levels")
    parser.add_argument("--api", default="async", help="async (tasks on one connect()), blocking (threads, "
                        "each with a kvstore.client.Client), or both, comma-separated")
    args = parser.parse_args()
    levels = [int(x) for x in args.inflight.split(",")]
    apis = args.api.split(",")
    if args.rounds < 1 or not 1 <= args.cycles <= 50 or any(not 1 <= level <= 1024 for level in levels):
        parser.error("--rounds at least 1, --cycles 1-50, --inflight levels 1-1024")
    if not apis or any(api not in ("async", "blocking") for api in apis):
        parser.error("--api: async, blocking, or both")
    with tempfile.TemporaryDirectory(prefix="failover-pause-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(base), args.baseline],
                       check=True, capture_output=True)
        try:
            trees = {"A": base, "B": HERE}
            pauses: dict[tuple[str, str, int], list[float]] = {}
            for r in range(args.rounds):
                for label in ("AB" if r % 2 == 0 else "BA"):
                    for api in apis:
                        for level in levels:
                            print(f"round {r + 1}/{args.rounds}: {label}, {api}, {level} in flight", file=sys.stderr,
                                  flush=True)
                            pauses.setdefault((label, api, level), []).extend(
                                run_tree(trees[label], level, args.cycles, api))
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(base)], capture_output=True)
    print(f"baseline A = {args.baseline}, candidate B = this tree; {args.rounds} rounds x {args.cycles} leader pauses")
    print("| client | in flight | A median s | A max s | B median s | B max s | B/A median |")
    print("|---|---|---|---|---|---|---|")
    for api in apis:
        for level in levels:
            a, b = pauses[("A", api, level)], pauses[("B", api, level)]
            print(f"| {api} | {level} | {statistics.median(a):.3f} | {max(a):.3f} | {statistics.median(b):.3f} "
                  f"| {max(b):.3f} | **{statistics.median(b) / statistics.median(a):.2f}x** |")


if __name__ == "__main__":
    main()
