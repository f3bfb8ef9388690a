"""One PySyncObj node holding a replicated dict (``pysyncobj.batteries.ReplDict``), for compare.py.

PySyncObj has no network client protocol: applications call the replicated object inside one of the
member processes. So the fair measurement of its best case is from *inside the leader process*, with
asynchronous calls (``ReplDict.set(key, value, callback=...)``) that keep N calls in flight: no client
network hop at all, which favours PySyncObj over the stores that are measured through a client.

Every member runs this script. Each waits for a leader; the member that leads runs the sweep (for each
in-flight level, puts of ``--val-size`` byte values for ``--seconds``), writes the results as JSON to
``--result`` and keeps serving until the parent kills it. The others only serve. Each process exits by
itself after ``--max-seconds``.

``--journal FILE`` turns on PySyncObj's file journal (``SyncObjConf(journalFile=...)``). Note that in
PySyncObj 0.3 the journal is an mmap'd file that is written but not flushed per entry (no fsync): it
survives a process crash, not a power loss, unlike a store that fsyncs before acknowledging.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from typing import Any


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--self", dest="self_addr", required=True)
    ap.add_argument("--partners", required=True, help="comma list of the other members")
    ap.add_argument("--journal", default="", help="journal file (empty: in-memory log)")
    ap.add_argument("--result", required=True, help="where the leader writes its JSON results")
    ap.add_argument("--levels", default="1,16,64,256")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--val-size", type=int, default=100)
    ap.add_argument("--key-space", type=int, default=100_000)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--no-batch", action="store_true",
                    help="appendEntriesUseBatch=False: send entries at once instead of every appendEntriesPeriod")
    args = ap.parse_args()

    from hdrh.histogram import HdrHistogram
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplDict

    started = time.monotonic()
    hard_end = started + args.max_seconds
    conf = SyncObjConf(journalFile=args.journal or None, dynamicMembershipChange=False,
                       commandsQueueSize=1_000_000,
                       appendEntriesUseBatch=not args.no_batch)
    d = ReplDict()
    obj = SyncObj(args.self_addr, [p for p in args.partners.split(",") if p], consumers=[d], conf=conf)

    while time.monotonic() < hard_end:
        if obj._getLeader() is not None and obj.isReady():
            break
        time.sleep(0.05)
    # Give a fresh leader a moment to be sure; the non-leaders serve until killed.
    time.sleep(0.5)
    if not obj._isLeader():
        while time.monotonic() < hard_end:
            time.sleep(0.5)
        return 0

    value = ("0123456789abcdef" * (args.val_size // 16 + 1))[: args.val_size]
    rng = random.Random(1)

    def run_level(level: int) -> dict[str, Any]:
        # A function per level, so that a late callback of an earlier level (its wait timed out) still
        # counts into that level's state and not into the next one's.
        hist = HdrHistogram(1, 60_000_000, 3)
        lock = threading.Lock()
        done = threading.Event()
        state = {"ok": 0, "errors": {}, "in_flight": 0, "last": 0.0}
        end = time.perf_counter() + args.seconds
        count_max = 50_000_000

        def issue() -> None:
            key = str(rng.randrange(args.key_space)).zfill(8)
            t0 = time.perf_counter()

            def callback(result, error, t0=t0) -> None:
                now = time.perf_counter()
                with lock:
                    if error == FAIL_REASON.SUCCESS:
                        state["ok"] += 1
                        hist.record_value(min(60_000_000, max(1, int((now - t0) * 1e6))))
                        state["last"] = now
                    else:
                        name = f"FAIL_REASON.{error}"
                        state["errors"][name] = state["errors"].get(name, 0) + 1
                    go_on = now < end and state["ok"] < count_max
                    if not go_on:
                        state["in_flight"] -= 1
                        if state["in_flight"] == 0:
                            done.set()
                if go_on:
                    issue()

            d.set(key, value, callback=callback)

        t_start = time.perf_counter()
        with lock:
            state["in_flight"] = level
        for _ in range(level):
            issue()
        done.wait(timeout=args.seconds + 30)
        elapsed = max(1e-9, (state["last"] or time.perf_counter()) - t_start)
        return {
            "in_flight": level, "ok": state["ok"], "errors": state["errors"],
            "error_count": sum(state["errors"].values()), "elapsed_s": elapsed,
            "throughput_ops_s": round(state["ok"] / elapsed, 1),
            "p50_ms": hist.get_value_at_percentile(50) / 1000 if state["ok"] else None,
            "p99_ms": hist.get_value_at_percentile(99) / 1000 if state["ok"] else None,
        }

    results = [run_level(level) for level in [int(x) for x in args.levels.split(",")]]
    tmp = args.result + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"leader": args.self_addr, "journal": bool(args.journal), "batch": not args.no_batch,
                   "results": results, "pysyncobj_version": _version()}, f)
    os.replace(tmp, args.result)
    while time.monotonic() < hard_end:
        time.sleep(0.5)
    return 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pysyncobj")
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
