"""Durable puts on a real local cluster: 3 nodes against the 1-node ceiling.

Starts ``python -m kv_cli serve`` processes on 127.0.0.1 (OS-assigned ports, temporary data directories,
fsync on unless told otherwise), drives them with ``kvstore.loadgen`` at 1, 16 and 256 requests in flight
(100-byte values, closed loop, one client connection that pipelines), and prints throughput, p50 and p99
for 3 nodes and for 1 node (the same code path without replication: the ceiling), and the ratio
3-node / 1-node. Results (with the machine facts) go to ``bench/results/store_bench-*.json``.

    python bench/store_bench.py            # about a minute
    python bench/store_bench.py --quick    # about 25 s

``LocalKv`` (the process manager) is reused by ``compare.py`` and ``memory_bench.py``.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import benchargs  # noqa: E402  (beside this script: python bench/SCRIPT.py puts bench/ on sys.path)

from kvstore.client import Client, KVError  # noqa: E402
from kvstore.loadgen import LoadSpec, machine_facts, run_load_sync  # noqa: E402


def free_ports(count: int) -> list[int]:
    """Ports the OS hands out for 127.0.0.1 (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def server_defaults() -> dict:
    from kvstore.server import ServerOptions

    o = ServerOptions()
    return {"batch_count_max": o.batch_count_max, "window": o.window, "tick_seconds": o.tick_seconds,
            "snapshot_every": o.snapshot_every}


class LocalKv:
    """``size`` ``kv serve`` processes on loopback. Use as a context manager; ``close`` kills them by PID."""

    def __init__(self, size: int, extra_args: list[str] | None = None, root: str | None = None) -> None:
        self.size = size
        self.extra_args = list(extra_args or [])
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="kvbench-")
        self.root = Path(root or self._tmp.name)
        self.ports = dict(zip(range(1, size + 1), free_ports(size), strict=True))
        self.peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.ports.items())
        self.endpoints = [f"127.0.0.1:{p}" for p in self.ports.values()]
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, node_id: int) -> None:
        with open(self.root / f"node-{node_id}.log", "ab") as log:
            cmd = [sys.executable, "-m", "kv_cli", "serve", "--id", str(node_id), "--peers", self.peers,
                   "--data-dir", str(self.root / f"node-{node_id}"), *self.extra_args]
            self.procs[node_id] = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)

    def start_all(self) -> LocalKv:
        for node_id in self.ports:
            self.start(node_id)
        return self

    def wait_leader(self, deadline_s: float = 30.0) -> int:
        """Poll until exactly one node says it leads; return its id."""
        deadline = time.monotonic() + deadline_s
        with Client(self.endpoints, timeout=1.0) as c:
            while time.monotonic() < deadline:
                for node_id, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"node {node_id} exited with {proc.returncode}; see {self.root}")
                statuses = c.cluster_status()
                leaders = [s["id"] for s in statuses if s.get("reachable") and s.get("is_leader")]
                if len(leaders) == 1:
                    return leaders[0]
                time.sleep(0.1)
        raise RuntimeError(f"no leader within {deadline_s}s; logs in {self.root}")

    def wait_serving(self, key: str, deadline_s: float = 60.0) -> float:
        """Poll a linearizable get of ``key`` until it answers; return the seconds it took.

        Polled finely, as bench/restart_ab.py does: the client's own back-off between retries (pauses
        up to 0.5 s) would count as restart time. Wait for a port to listen (5 ms steps), then ask with
        0.3 s deadlines."""
        t0 = time.monotonic()
        addresses = [(host, int(port)) for host, port in (e.rsplit(":", 1) for e in self.endpoints)]
        listening = False
        while not listening and time.monotonic() - t0 < deadline_s:
            for address in addresses:
                try:
                    socket.create_connection(address, timeout=0.1).close()
                    listening = True
                    break
                except OSError:
                    pass
            else:
                time.sleep(0.005)
        with Client(self.endpoints, timeout=0.3) as c:
            while time.monotonic() - t0 < deadline_s:
                try:
                    c.get(key)
                    return time.monotonic() - t0
                except (KVError, OSError):
                    time.sleep(0.005)
        raise RuntimeError(f"the cluster did not serve a get within {deadline_s}s")

    def pid(self, node_id: int) -> int:
        return self.procs[node_id].pid

    def rss_mib(self, node_id: int) -> float | None:
        try:
            with open(f"/proc/{self.pid(node_id)}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def kill(self, node_id: int) -> None:
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self, node_id: int) -> None:
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def close(self) -> None:
        for node_id in list(self.procs):
            self.stop(node_id)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalKv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drive(endpoints: list[str], in_flight: int, seconds: float, *, conns: int = 1, val_size: int = 100,
          op: str = "put") -> dict:
    """One closed-loop run; returns the result dict (without the per-second timeline)."""
    spec = LoadSpec(endpoints=endpoints, clients=in_flight, conns=min(conns, in_flight), total=None,
                    duration=seconds, val_size=val_size, key_space_size=100_000, op=op, warmup=2,
                    timeout=10.0)
    return run_load_sync(spec).to_dict(timeline=False)


def store_series(size: int, levels: list[int], seconds: float, extra_args: list[str] | None = None,
                 conns: int = 1, label: str | None = None, log=print) -> list[dict]:
    """Start a ``size``-node cluster, drive it at each in-flight level, stop it; one row per level."""
    rows = []
    with LocalKv(size, extra_args) as kv:
        kv.start_all()
        kv.wait_leader()
        for n in levels:
            r = drive(kv.endpoints, n, seconds, conns=conns)
            row = {"system": label or f"kv {size} node(s)", "nodes": size, "in_flight": n,
                   "throughput_ops_s": r["throughput_ops_s"], "p50_ms": r["latency_ms"]["p50"],
                   "p99_ms": r["latency_ms"]["p99"], "errors": r["error_count"], "ok": r["ok"],
                   "server_args": extra_args or []}
            log(f"  {row['system']:<28} in flight {n:>4}: {row['throughput_ops_s']:9.1f} ops/s  "
                f"p50 {fmt_ms(row['p50_ms'])}  p99 {fmt_ms(row['p99_ms'])}  errors {row['errors']}")
            rows.append(row)
    return rows


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:8.2f} ms"


def save_results(name: str, data: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s per point instead of 5 s")
    ap.add_argument("--seconds", type=benchargs.positive_float, default=None, help="seconds per point")
    ap.add_argument("--levels", type=benchargs.positive_int_list, default=[1, 16, 256],
                    help="requests in flight, comma list")
    ap.add_argument("--conns", type=benchargs.positive_int, default=1, help="client connections")
    ap.add_argument("--fsync", choices=["always", "off"], default="always")
    args = ap.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    levels = args.levels
    from kvstore import runtime

    runtime.tune_gc()  # as `kv bench` does: this process is the load generator
    extra = ["--fsync", args.fsync]
    print(f"store_bench: durable puts (fsync {args.fsync}), 100-byte values, {seconds:g} s per point, "
          f"{args.conns} connection(s)", flush=True)
    three = store_series(3, levels, seconds, extra, args.conns)
    one = store_series(1, levels, seconds, extra, args.conns)
    print()
    print(f"{'in flight':>9}  {'3-node ops/s':>12} {'p50 ms':>8} {'p99 ms':>8}   {'1-node ops/s':>12} "
          f"{'p50 ms':>8} {'p99 ms':>8}   {'3/1':>5}")
    for a, b in zip(three, one, strict=True):
        ratio = a["throughput_ops_s"] / b["throughput_ops_s"] if b["throughput_ops_s"] else float("nan")
        print(f"{a['in_flight']:>9}  {a['throughput_ops_s']:>12.1f} {a['p50_ms'] or 0:>8.2f} {a['p99_ms'] or 0:>8.2f}"
              f"   {b['throughput_ops_s']:>12.1f} {b['p50_ms'] or 0:>8.2f} {b['p99_ms'] or 0:>8.2f}   {ratio:>5.2f}")
    path = save_results("store_bench", {"machine": machine_facts(), "server": server_defaults(),
                                        "fsync": args.fsync, "seconds_per_point": seconds,
                                        "three_nodes": three, "one_node": one})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
