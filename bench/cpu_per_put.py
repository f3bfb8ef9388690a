"""Where the CPU of a put goes, per process: 1 node against 3 nodes (or any sizes), one run.

For each cluster size, a fresh local cluster of this tree (``ab_cluster.TreeCluster``: ``kv serve`` with
its defaults, fsync always) is loaded by ``kvstore.loadgen`` (``kv bench``'s engine) in a process of
its own, at ``--in-flight`` requests on one connection. Over a window in the middle of the load it
reads, for every server and the load process, the on-CPU time (``/proc/PID/stat``) and the time spent
runnable but waiting for a CPU (``/proc/PID/task/*/schedstat``), and prints both per put, with the
cores in use and the ceiling this CPU cost sets: ``cores / (CPU seconds per put)``, the rate at which
every core would be busy with nothing else to do. When the 3-node ceiling is below 0.8 of the 1-node
rate, issue 20's "3 nodes >= 0.8 of 1 node" cannot be met on this machine by scheduling alone: the
CPU per put must drop.

    python bench/cpu_per_put.py                     # sizes 1 and 3, twice each, 256 in flight: ~1 min
    python bench/cpu_per_put.py --sizes 1,3,5 --rounds 1
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ab_cluster  # noqa: E402  (beside this script)

REPO = HERE.parent
TICKS = os.sysconf("SC_CLK_TCK")
LOAD = r"""
import json, sys
from kvstore import runtime
from kvstore.loadgen import LoadSpec, run_load_sync
runtime.tune_gc()  # as kv bench does
spec = LoadSpec(endpoints=sys.argv[1].split(","), clients=int(sys.argv[2]), conns=1, total=None,
                duration=float(sys.argv[3]), key_space_size=100000, warmup=200)
result = run_load_sync(spec)
print(json.dumps({"ok": result.ok, "throughput": result.throughput, "errors": sum(result.errors.values())}))
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def waiting_seconds(pid: int) -> float:
    """Time the process's threads spent runnable, waiting for a CPU (schedstat's second field)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return total / 1e9


def measure(size: int, in_flight: int, load_s: float, window_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="kv-cpu-") as root:
        cluster = ab_cluster.TreeCluster(REPO, Path(root), size)
        cluster.start_all()
        try:
            leader = cluster.wait_leader()
            load = subprocess.Popen([sys.executable, "-c", LOAD, ",".join(cluster.endpoints), str(in_flight),
                                     str(load_s)], stdout=subprocess.PIPE, cwd=REPO)
            try:
                time.sleep((load_s - window_s) / 2)
                pids = {("leader" if i == leader else f"node {i}"): p.pid for i, p in cluster.procs.items()}
                pids["client"] = load.pid
                before = {name: (cpu_seconds(pid), waiting_seconds(pid)) for name, pid in pids.items()}
                started = time.monotonic()
                time.sleep(window_s)
                after = {name: (cpu_seconds(pid), waiting_seconds(pid)) for name, pid in pids.items()}
                elapsed = time.monotonic() - started
                out, _ = load.communicate(timeout=load_s + 60)
            finally:
                if load.poll() is None:
                    load.kill()
                    load.wait()
            result = json.loads(out)
        finally:
            cluster.close()
    puts = result["throughput"] * elapsed
    per_put = {name: ((after[name][0] - before[name][0]) / puts, (after[name][1] - before[name][1]) / puts)
               for name in pids}
    cpu_total = sum(c for c, _ in per_put.values())
    return {"size": size, "throughput": result["throughput"], "errors": result["errors"], "per_put": per_put,
            "cores_used": cpu_total * result["throughput"], "ceiling": (os.cpu_count() or 1) / cpu_total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="CPU per put per process, by cluster size (see the docstring).")
    ap.add_argument("--sizes", default="1,3", help="cluster sizes, comma list (default 1,3)")
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2, help="rounds over the sizes (default 2)")
    ap.add_argument("--seconds", type=float, default=8.0, help="load per point; measured over its middle 5 s")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.in_flight < 1 or args.rounds < 1 or args.seconds < 6:
        ap.error("sizes of at least 1, --in-flight and --rounds of at least 1, --seconds of at least 6")
    print(f"cpu_per_put: {args.in_flight} in flight, fsync always, {os.cpu_count()} CPUs; us per put: "
          "on-CPU time, then [runnable but waiting for a CPU]", flush=True)
    rows = []
    for round_no in range(1, args.rounds + 1):
        for size in sizes:
            row = measure(size, args.in_flight, args.seconds, 5.0)
            rows.append(row)
            parts = ", ".join(f"{name} {1e6 * c:.1f} [{1e6 * w:.1f}]" for name, (c, w) in row["per_put"].items())
            print(f"round {round_no}, {size} node(s): {row['throughput']:.0f} puts/s ({row['errors']} errors); "
                  f"{parts}; total {1e6 * sum(c for c, _ in row['per_put'].values()):.1f} us, "
                  f"{row['cores_used']:.2f} cores busy, CPU ceiling {row['ceiling']:.0f} puts/s", flush=True)
    by_size: dict[int, list[dict]] = {}
    for row in rows:
        by_size.setdefault(row["size"], []).append(row)
    if 1 in by_size:
        one = max(r["throughput"] for r in by_size[1])
        for size, found in sorted(by_size.items()):
            if size == 1:
                continue
            best = max(r["throughput"] for r in found)
            ceiling = min(r["ceiling"] for r in found)
            print(f"{size} nodes / 1 node: {best / one:.2f} (best vs best); the {size}-node CPU ceiling is "
                  f"{ceiling / one:.2f} of the 1-node rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
