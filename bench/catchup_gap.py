"""What a follower far behind pays per Accept while it catches up: this tree against an earlier revision.

A member that joins a busy cluster (or a node back after a long pause) holds a gap: it missed slots 1..GAP
and gets the leader's Accepts for the slots after, each announcing the slots below it decided. Until its
catch-up fills the gap, every Accept, Heartbeat and Decide tells it of decided slots it cannot apply yet.
QA (session 27): the core looked at every slot it had accepted above its decided prefix on each such
message, work growing with the gap, so a new member under ~450 writes/s stalled for seconds at a time
and made no progress for 60-90 s. This script times exactly that: one ``paxos.replica.Replica`` (a
follower of 3), ``receive`` + ``take_actions`` of ``--accepts`` Accepts above a gap of ``--gap`` slots,
per tree in a subprocess of its own (the baseline from a ``git worktree``), rounds alternating; then the
catch-up of the gap, to check both trees end with every slot decided.

    python bench/catchup_gap.py --baseline ddc93c4~1 --rounds 3

Printed: microseconds per Accept over the first and the last thousand Accepts (the median over rounds),
per tree, and candidate/baseline. Bounded: ``--accepts`` messages per round and tree.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, random, sys, time
sys.path.insert(0, sys.argv[1])
from paxos.ballot import Ballot
from paxos.messages import Accept, CatchupReply, DecidedEntry
from paxos.replica import Config, Replica
gap, count = int(sys.argv[2]), int(sys.argv[3])
r = Replica(2, Config(node_ids=(1, 2, 3)), rng=random.Random(0))
b = Ballot(1, 1)
times = []
for i in range(count):
    slot = gap + 1 + i
    started = time.perf_counter()
    r.receive(Accept(sender=1, ballot=b, slot=slot, value=(b"x" * 100,), decided_slot=slot - 1))
    r.take_actions()
    times.append(time.perf_counter() - started)
r.receive(CatchupReply(sender=1, entries=tuple(DecidedEntry(slot=s, value=(b"c",)) for s in range(1, gap + 1)),
                       snapshot_slot=0))
r.take_actions()
first, last = times[:1000], times[-1000:]
print(json.dumps({"first_us": sum(first) / len(first) * 1e6, "last_us": sum(last) / len(last) * 1e6,
                  "decided": r.decided_slot, "expected": gap + count - 1}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare against (A)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap", type=int, default=5000, help="slots the follower missed")
    parser.add_argument("--accepts", type=int, default=20000, help="Accepts it gets above the gap")
    args = parser.parse_args()
    if args.accepts < 1000 or args.gap < 1 or args.rounds < 1:
        parser.error("--accepts must be at least 1000, --gap and --rounds at least 1")
    with tempfile.TemporaryDirectory(prefix="catchup-gap-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(base), args.baseline],
                       check=True, capture_output=True)
        try:
            trees = {"A": base, "B": HERE}
            results: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
            for r in range(args.rounds):
                for label in ("AB" if r % 2 == 0 else "BA"):
                    print(f"round {r + 1}/{args.rounds}: {label} ({trees[label]})", file=sys.stderr)
                    started = time.monotonic()
                    done = subprocess.run([sys.executable, "-c", _CHILD, str(trees[label]), str(args.gap),
                                           str(args.accepts)], check=True, capture_output=True, text=True,
                                          timeout=1800)
                    out = json.loads(done.stdout)
                    if out["decided"] != out["expected"]:
                        sys.exit(f"tree {label} ended with decided slot {out['decided']}, not {out['expected']}")
                    for name in ("first_us", "last_us"):
                        results[label].setdefault(name, []).append(out[name])
                    print(f"  {time.monotonic() - started:.0f} s", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(base)], capture_output=True)
    print(f"a follower {args.gap} slots behind, {args.accepts} Accepts above the gap; median of {args.rounds} "
          f"rounds; A = {args.baseline}, B = this tree; both end with every slot decided")
    print(f"{'us per Accept':28s} {'A':>10s} {'B':>10s} {'B/A':>8s}")
    for name, label in (("first_us", "the first 1,000 Accepts"), ("last_us", "the last 1,000 Accepts")):
        a = statistics.median(results["A"][name])
        b = statistics.median(results["B"][name])
        print(f"{label:28s} {a:10.1f} {b:10.1f} {b / a:8.4f}")


if __name__ == "__main__":
    main()
