"""What client expiry costs the state machine: puts applied with and without it, in one process.

Client expiry (docs/operations.md, "Exactly-once and forgotten clients") makes client ids 28 bytes
instead of 16 (a stamp) and, once on, costs a stamp comparison for each write of a client the table
does not know and for each client it forgets. This applies the same puts to fresh state machines in
three variants, round by round, alternating, and prints each variant's time per put as a ratio to the
first (this machine is noisy: only ratios from one run mean anything):

* (a) old ids: 16 random bytes, expiry off (what every client sent before);
* (b) stamped ids, expiry off (a cluster not all upgraded yet);
* (c) stamped ids, expiry on.

Two workloads: ``steady``, 100 clients writing in turn (the table never forgets: a leader under load
from long-lived clients), and ``churn``, a new client for every put past a full table of 10,000
(every put forgets a client: ``kv put`` from a shell, as fast as it can go). The commands are encoded
before the clock starts; what is timed is ``StateMachine.apply`` alone.

    python bench/client_expiry.py             # 5 rounds of 100,000 puts per workload: ~1 min
    python bench/client_expiry.py --rounds 3 --puts 50000
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvstore import commands, frames, wire  # noqa: E402
from kvstore.statemachine import CLIENTS_MAX, StateMachine  # noqa: E402

VARIANTS = ("a: old ids, off", "b: stamped, off", "c: stamped, on")


def _ids(count: int, stamped: bool, base: int) -> list[bytes]:
    if not stamped:
        return [os.urandom(16) for _ in range(count)]
    return [frames.CLIENT_ID_TAG + (base + i).to_bytes(8, "big") + os.urandom(16) for i in range(count)]


def _workload(kind: str, puts: int, stamped: bool) -> list[bytes]:
    """The commands: a new client's stamp is 1 ms after the one before (``_ids``), and a clock command
    comes before every 1,000th (the leader proposes one before a new client's write once a second)."""
    value = "v" * 100
    base = time.time_ns() // 1_000_000
    if kind == "steady":
        ids = _ids(100, stamped, base)
        return [commands.encode_put(ids[i % 100], i // 100 + 1, i // 100 + 1, f"key{i % 5000}", value)
                for i in range(puts)]
    ids = _ids(CLIENTS_MAX + puts, stamped, base)  # the table full first, then a new client per put
    out = []
    for i, client_id in enumerate(ids):
        if stamped and i % 1000 == 0:
            out.append(commands.encode_clock(base + i))
        out.append(commands.encode_put(client_id, 1, 1, f"key{i % 5000}", value))
    return out


def _run(kind: str, variant: int, puts: int) -> float:
    """Seconds per put (of the timed ``puts`` ones) for ``variant`` of ``kind``."""
    stamped = variant > 0
    cmds = _workload(kind, puts, stamped)
    sm = StateMachine()
    if variant == 2:
        sm.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, time.time_ns() // 1_000_000))
    warm = cmds[:-puts] if kind == "churn" else []
    timed = cmds[-puts:] if kind == "churn" else cmds
    puts_timed = sum(1 for command in timed if not command.startswith(b"\x82\x11"))  # (not the clock commands)
    apply = sm.apply
    for command in warm:
        apply(command)
    started = time.perf_counter()
    for command in timed:
        apply(command)
    elapsed = time.perf_counter() - started
    refused = sm.revision != len(warm) + puts_timed - sum(1 for c in warm if c.startswith(b"\x82\x11"))
    assert not refused, "a new client was refused: the stamps are not between the horizon and the clock"
    return elapsed / puts_timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--puts", type=int, default=100_000)
    args = parser.parse_args()
    for kind in ("steady", "churn"):
        per_variant: list[list[float]] = [[] for _ in VARIANTS]
        for round_ in range(args.rounds):
            order = range(len(VARIANTS)) if round_ % 2 == 0 else reversed(range(len(VARIANTS)))
            for variant in order:
                per_variant[variant].append(_run(kind, variant, args.puts))
        base = statistics.median(per_variant[0])
        print(f"{kind}: {args.puts:,} puts x {args.rounds} rounds")
        for name, times in zip(VARIANTS, per_variant, strict=True):
            ratios = [t / b for t, b in zip(times, per_variant[0], strict=True)]
            print(f"  {name:18} {statistics.median(times) * 1e6:6.2f} us/put  "
                  f"x{statistics.median(times) / base:.3f} (per round: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
