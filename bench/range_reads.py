"""What one range read costs the node that answers it: this tree against an earlier revision, in one run.

A node builds and encodes each read's answer in its event loop, so a read that takes 0.5 s holds the
heartbeats and the Accepts of that node for 0.5 s (QA, session 26: one ``kv get --prefix ""`` of 63 MB
cost a leader election). This script times exactly that step, ``kvstore.waiters.read_reply`` and the
frame encoding (``kvstore.clients._encode_range_reply``, or ``_encode_reply`` in a tree without it), on a
state machine filled in-process, for each
tree in a subprocess of its own (the baseline from a ``git worktree``), rounds alternating:

* ``store``: 30,000 keys with 2 KB values and 51,000 with 100 bytes (81,000 keys, 63 MB: the QA's
  store); reads: everything with values (too large for a frame), everything with ``limit`` 1, every
  key without values (1 MB: fits), the 51,000 small ones with values (5.6 MB: fits), the same with
  versions (``meta``);
* ``tiny``: 700,000 keys of 8 bytes, values of 1 byte; reads: every key (7 MB: fits a frame), every
  key with its value.

    python bench/range_reads.py --baseline 9bd2f95 --rounds 3

Printed: per read, the best of ``--repeat`` timings in each round, the median over rounds for each
tree, the answer's size (or the error it was), and candidate/baseline. Bounded: the stores are built
once per subprocess; each timing is one read.
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
import json, sys, time
sys.path.insert(0, sys.argv[1])
from kvstore import wire
from kvstore.commands import encode_put
from kvstore.statemachine import StateMachine
from kvstore.waiters import read_reply
from kvstore import clients
# what the node's connection encodes a range answer with (a tree before session 26: the generic one)
encode = getattr(clients, "_encode_range_reply", clients._encode_reply)
repeat = int(sys.argv[2])

def fill(pairs):
    sm, cid = StateMachine(), b"c" * 16
    for i, (key, value) in enumerate(pairs):
        sm.apply(encode_put(cid, i + 1, i, key, value))
    return sm

def ask(**fields):
    base = {"prefix": "", "limit": 0, "keys_only": False, "linearizable": True}
    return wire.ListRequest(id=1, **{**base, **fields})

store = fill([(f"big/{i:06d}", b"v" * 2000) for i in range(30000)]
             + [(f"key{i:08d}", b"x" * 100) for i in range(51000)])
tiny = fill([(f"k{i:07d}", b"v") for i in range(700000)])
reads = [("store: all, values (63 MB)", store, ask()), ("store: all, limit 1", store, ask(limit=1)),
         ("store: all keys, no values", store, ask(keys_only=True)),
         ("store: 51,000 small, values", store, ask(prefix="key")),
         ("store: 51,000 small, values, meta", store, ask(prefix="key", meta=True)),
         ("tiny: 700,000 keys, no values", tiny, ask(keys_only=True)),
         ("tiny: 700,000 keys, values", tiny, ask())]
out = {}
for name, sm, request in reads:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        frame = encode(read_reply(sm, request))
        best = min(best, time.perf_counter() - t0)
    reply = wire.decode_body(frame[4:])
    what = f"{len(frame):,} bytes" if isinstance(reply, wire.OkReply) else f"{reply.code}"
    out[name] = [best, what]
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare against (A)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="timings per read in a round (the best counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="range-reads-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(base), args.baseline],
                       check=True, capture_output=True)
        try:
            trees = {"A": base, "B": HERE}
            results: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
            answers: dict[str, dict[str, str]] = {"A": {}, "B": {}}
            for r in range(args.rounds):
                for label in ("AB" if r % 2 == 0 else "BA"):
                    print(f"round {r + 1}/{args.rounds}: {label} ({trees[label]})", file=sys.stderr)
                    started = time.monotonic()
                    done = subprocess.run([sys.executable, "-c", _CHILD, str(trees[label]), str(args.repeat)],
                                          check=True, capture_output=True, text=True, timeout=900)
                    for name, (seconds, what) in json.loads(done.stdout).items():
                        results[label].setdefault(name, []).append(seconds)
                        answers[label][name] = what
                    print(f"  {time.monotonic() - started:.0f} s", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(base)], capture_output=True)
    print(f"one range read, read_reply + encode, best of {args.repeat} per round, median of {args.rounds} rounds; "
          f"A = {args.baseline}, B = this tree")
    print(f"{'read':36s} {'A ms':>9s} {'B ms':>9s} {'B/A':>7s}   A answer / B answer")
    for name in results["A"]:
        a = statistics.median(results["A"][name]) * 1e3
        b = statistics.median(results["B"][name]) * 1e3
        print(f"{name:36s} {a:9.1f} {b:9.1f} {b / a:7.3f}   {answers['A'][name]} / {answers['B'][name]}")


if __name__ == "__main__":
    main()
