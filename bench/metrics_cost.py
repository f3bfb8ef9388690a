"""What Prometheus metrics cost: durable puts with ``kv serve --metrics-addr`` (scraped) against without.

One run, alternating: for each round, a fresh 3-node cluster without metrics, then one with every node
serving /metrics on its own port while a scraper fetches all three pages every ``--scrape-seconds``
(harsher than Prometheus's default 15 s, so that the exposition cost shows). Each cluster is driven by
``kvstore.loadgen`` (100-byte puts, closed loop, one connection) at each in-flight level for
``--seconds``. Alternating rounds spread the machine's drift over both modes. Printed: each mode's
median throughput per level over the rounds and the ratio on/off (the target, reported and never
asserted, is >= 0.97), and the three servers' CPU time per put (from /proc) with its ratio, which a
busy shared machine disturbs less than throughput. Results with the machine facts go to
``bench/results/metrics_cost-*.json``.

    python bench/metrics_cost.py               # 3 rounds, 16 and 256 in flight, 5 s per point: ~2 min
    python bench/metrics_cost.py --quick       # 2 rounds, 2 s per point
    python bench/compare.py --metrics          # the same, from compare.py

The counters behind the metrics (requests by op and outcome, the fsync and slot-size histograms) are
kept whether or not metrics are served (plain integers, like the node's other counters), so this
measures serving and scraping them; the cost of keeping them was counted once in instructions
against the commit before them (callgrind; docs/benchmarks.md, "Metrics")
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchargs  # noqa: E402  (beside this script: python bench/SCRIPT.py puts bench/ on sys.path)
import store_bench  # noqa: E402

from kvstore.loadgen import machine_facts  # noqa: E402

TARGET_RATIO = 0.97


class MetricsKv(store_bench.LocalKv):
    """A ``LocalKv`` whose nodes also serve /metrics, each on a port the OS handed out."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.metrics_ports = dict(zip(self.ports, store_bench.free_ports(size), strict=True))

    def start(self, node_id: int) -> None:
        with open(self.root / f"node-{node_id}.log", "ab") as log:
            cmd = [sys.executable, "-m", "kv_cli", "serve", "--id", str(node_id), "--peers", self.peers,
                   "--data-dir", str(self.root / f"node-{node_id}"),
                   "--metrics-addr", f"127.0.0.1:{self.metrics_ports[node_id]}"]
            self.procs[node_id] = subprocess.Popen(cmd, cwd=store_bench.REPO, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)


class Scraper(threading.Thread):
    """Fetch every node's /metrics every ``period`` seconds until stopped; counts pages and bytes."""

    def __init__(self, ports: list[int], period: float) -> None:
        super().__init__(daemon=True)
        self.ports, self.period = ports, period
        self.stop_event = threading.Event()
        self.pages = self.bytes = self.errors = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            for port in self.ports:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                        self.bytes += len(response.read())
                    self.pages += 1
                except OSError:
                    self.errors += 1


def cpu_seconds(pids) -> float:
    """User plus system CPU seconds the processes ``pids`` have used (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def one_cluster(metrics: bool, levels: list[int], seconds: float, scrape_seconds: float, log) -> list[dict]:
    kv = MetricsKv(3) if metrics else store_bench.LocalKv(3)
    rows = []
    with kv:
        kv.start_all()
        kv.wait_leader()
        scraper = Scraper(list(kv.metrics_ports.values()), scrape_seconds) if metrics else None
        if scraper is not None:
            scraper.start()
        try:
            pids = [kv.pid(i) for i in kv.ports]
            for n in levels:
                cpu_before = cpu_seconds(pids)
                r = store_bench.drive(kv.endpoints, n, seconds)
                cpu_us = (cpu_seconds(pids) - cpu_before) * 1e6 / max(1, r["ok"])
                rows.append({"metrics": metrics, "in_flight": n, "throughput_ops_s": r["throughput_ops_s"],
                             "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
                             "errors": r["error_count"], "server_cpu_us_per_op": round(cpu_us, 1)})
                log(f"  metrics {'on ' if metrics else 'off'} in flight {n:>4}: {r['throughput_ops_s']:9.1f} ops/s  "
                    f"p50 {store_bench.fmt_ms(r['latency_ms']['p50'])}  "
                    f"p99 {store_bench.fmt_ms(r['latency_ms']['p99'])}  "
                    f"servers' CPU {cpu_us:6.1f} us/put")
        finally:
            if scraper is not None:
                scraper.stop_event.set()
                scraper.join(timeout=10)
                rows.append({"scrapes": scraper.pages, "scrape_bytes": scraper.bytes, "scrape_errors": scraper.errors})
    return rows


def compare_metrics(levels: list[int], seconds: float, rounds: int, scrape_seconds: float = 1.0, log=print) -> dict:
    """Alternate clusters without and with metrics ``rounds`` times; medians and on/off ratios per level."""
    runs: list[dict] = []
    for i in range(rounds):
        log(f"round {i + 1}/{rounds}")
        for metrics in (False, True):
            runs.extend(one_cluster(metrics, levels, seconds, scrape_seconds, log))
    summary = []
    for n in levels:
        def median(field: str, metrics: bool, n: int = n) -> float:
            return statistics.median(r[field] for r in runs if r.get("in_flight") == n and r["metrics"] == metrics)

        off, on = median("throughput_ops_s", False), median("throughput_ops_s", True)
        cpu_off, cpu_on = median("server_cpu_us_per_op", False), median("server_cpu_us_per_op", True)
        summary.append({"in_flight": n, "off_ops_s": round(off, 1), "on_ops_s": round(on, 1),
                        "ratio": round(on / off, 3) if off else None,
                        "cpu_off_us": cpu_off, "cpu_on_us": cpu_on,
                        # puts per CPU second, on against off: the throughput ratio a CPU-bound server would see
                        "cpu_ratio": round(cpu_off / cpu_on, 3) if cpu_on else None})
    scrapes = sum(r.get("scrapes", 0) for r in runs)
    page_bytes = sum(r.get("scrape_bytes", 0) for r in runs) // max(1, scrapes)
    return {"levels": levels, "seconds": seconds, "rounds": rounds, "scrape_seconds": scrape_seconds,
            "runs": runs, "summary": summary, "scrapes": scrapes, "page_bytes": page_bytes,
            "machine": machine_facts()}


def report(result: dict, log=print) -> None:
    log("")
    log(f"metrics on (scraped every {result['scrape_seconds']:g} s, {result['scrapes']} scrapes, "
        f"~{result['page_bytes']} bytes a page) against off, median of {result['rounds']} rounds:")
    for row in result["summary"]:
        verdict = "ok" if row["ratio"] is not None and row["ratio"] >= TARGET_RATIO else "BELOW TARGET"
        log(f"  in flight {row['in_flight']:>4}: off {row['off_ops_s']:9.1f}  on {row['on_ops_s']:9.1f} ops/s  "
            f"ratio {row['ratio']}  (target >= {TARGET_RATIO}: {verdict});  servers' CPU per put off "
            f"{row['cpu_off_us']:.1f} us, on {row['cpu_on_us']:.1f} us: puts per CPU second ratio {row['cpu_ratio']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds, 2 s per point")
    ap.add_argument("--seconds", type=benchargs.positive_float, default=None,
                    help="seconds per point (default 5, quick 2)")
    ap.add_argument("--rounds", type=benchargs.positive_int, default=None,
                    help="alternations of off and on (default 3, quick 2)")
    ap.add_argument("--levels", type=benchargs.positive_int_list, default=[16, 256],
                    help="requests in flight, comma list")
    ap.add_argument("--scrape-seconds", type=float, default=1.0, help="seconds between scrapes of every node")
    args = ap.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (2 if args.quick else 3)
    levels = args.levels
    result = compare_metrics(levels, seconds, rounds, args.scrape_seconds)
    report(result)
    path = store_bench.save_results("metrics_cost", result)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
