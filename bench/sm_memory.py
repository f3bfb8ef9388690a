"""The state machine alone, in process: bytes per key, and this tree's costs against an earlier revision.

    python bench/sm_memory.py                                # memory of this tree, 1M keys
    python bench/sm_memory.py --baseline HEAD~1 --rounds 4   # and A/B costs against a revision
    python bench/sm_memory.py --keys 200000 --baseline HEAD  # quick look

Memory (a fresh child process per tree, so that RSS means something): ``--keys`` puts of sequential
8-character keys with 100-byte str values (what ``memory_bench.py`` loads), then the RSS growth in MiB
and per key, the sizes behind it (key object, packed entry, the dict's table, the sorted key index:
``sys.getsizeof``, so without the allocator's rounding to 16 bytes), the RSS a ``freeze()`` adds while
it is open and how long it takes (the driver's pause at each snapshot), and the RSS growth of a restore
of the snapshot file (``restore_stream(checked_file=True)``, what a restart does).

Costs (one process, the trees interleaved batch by batch, A B, B A, ..., so that a noisy machine hurts
both alike; A is the baseline, B this tree): apply per put of a new key and per put of an existing key (commands encoded
beforehand, in batches, outside the timing), get per key, freeze+close, ``snapshot_chunks`` to a file,
``restore_stream`` of that file with and without ``checked_file``; with the cyclic garbage collector off
(see ``costs``). Prints each tree's medians and B/A (check the harness with ``--baseline HEAD`` on an
unchanged tree: its ratios should straddle 1).
The baseline's ``kvstore/statemachine.py`` is taken from git and loaded next to this tree's (it shares
the rest of this tree: commands, paxos.membership).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import benchargs  # noqa: E402  (beside this script: python bench/SCRIPT.py puts bench/ on sys.path)

from kvstore.commands import encode_put  # noqa: E402

VALUE = ("0123456789abcdef" * 7)[:100]
CLIENT_ID = b"sm-memory-bench-"
BATCH = 10_000  # commands encoded at a time, outside the timing


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_tree(baseline: str | None) -> ModuleType:
    """This tree's ``kvstore/statemachine.py``, or git revision ``baseline``'s, loaded from a copy as a
    module of the ``kvstore`` package (both trees the same way, so that neither has an advantage)."""
    if baseline is None:
        source = (ROOT / "kvstore" / "statemachine.py").read_bytes()
    else:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{baseline}:kvstore/statemachine.py"],
                                check=True, capture_output=True).stdout
    tag = "this" if baseline is None else "baseline"
    path = Path(tempfile.gettempdir()) / f"sm_{tag}_{os.getpid()}.py"
    path.write_bytes(source)
    name = f"kvstore._sm_{tag}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    path.unlink()
    return module


def key(i: int) -> str:
    return str(i).zfill(8)


def fill(sm_module: ModuleType, keys: int):
    """A state machine with ``keys`` puts of new keys applied."""
    sm = sm_module.StateMachine()
    interleaved_puts([sm], range(keys), 1, False)
    return sm


# ---------------------------------------------------------------------------------------------------
# memory (child process)


def memory_child(baseline: str | None, keys: int) -> dict:
    sm_module = load_tree(baseline)
    gc.collect()
    base = rss_mib()
    sm = fill(sm_module, keys)
    gc.collect()
    grown = rss_mib() - base
    entries = sm._entries
    some_key = next(iter(entries))
    index = sm._index
    index_bytes = sys.getsizeof(index._blocks) + sys.getsizeof(index._maxes) + sum(map(sys.getsizeof, index._blocks))
    before = rss_mib()
    t = time.perf_counter()
    frozen = sm.freeze()
    freeze_s = time.perf_counter() - t
    frozen_mib = rss_mib() - before
    frozen.close()
    del frozen
    with tempfile.TemporaryFile() as f:
        length = 0
        for piece in sm.snapshot_chunks():
            f.write(piece)
            length += len(piece)
        del sm, entries, index  # only the file is left
        gc.collect()
        f.seek(0)
        before = rss_mib()
        restored = sm_module.StateMachine.restore_stream(f, length, checked_file=True)
        gc.collect()
        restored_mib = rss_mib() - before
    return {"rss_mib": grown, "bytes_per_key": grown * 2**20 / keys,
            "key_sizeof": sys.getsizeof(some_key), "entry_sizeof": sys.getsizeof(restored._entries[some_key]),
            "dict_per_key": sys.getsizeof(restored._entries) / keys, "index_per_key": index_bytes / keys,
            "freeze_ms": freeze_s * 1e3, "freeze_rss_mib": frozen_mib, "restored_rss_mib": restored_mib,
            "snapshot_mb": length / 1e6}


def memory(baseline: str | None, keys: int) -> dict:
    args = [sys.executable, __file__, "--keys", str(keys), "--child-memory"]
    if baseline is not None:
        args += ["--baseline", baseline]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# costs (one process, the trees interleaved batch by batch)


def interleaved_puts(machines: list, indexes: range, first_request: int, swap: bool) -> list[float]:
    """Apply the same puts to each machine, a batch at a time, the order of the machines swapped at every
    batch (and by ``swap``); the seconds each spent in ``apply``."""
    spent = [0.0] * len(machines)
    rid = first_request
    for n, start in enumerate(range(0, len(indexes), BATCH)):
        commands = []
        for i in indexes[start:start + BATCH]:
            commands.append(encode_put(CLIENT_ID, rid, rid, key(i), VALUE))
            rid += 1
        order = list(range(len(machines)))
        if (n % 2 == 1) != swap:
            order.reverse()
        for m in order:
            apply = machines[m].apply
            t = time.perf_counter()
            for command in commands:
                apply(command)
            spent[m] += time.perf_counter() - t
    return spent


def costs_round(trees: list[ModuleType], keys: int, directory: str, swap: bool) -> list[dict[str, float]]:
    """One round: each figure measured for every tree, alternating as finely as the figure allows."""
    out: list[dict[str, float]] = [{} for _ in trees]
    order = list(range(len(trees)))
    if swap:
        order.reverse()
    machines = [tree.StateMachine() for tree in trees]
    for m, spent in enumerate(interleaved_puts(machines, range(keys), 1, swap)):
        out[m]["apply new key us"] = spent / keys * 1e6
    updates = range(0, keys, 4)
    for m, spent in enumerate(interleaved_puts(machines, updates, keys + 1, swap)):
        out[m]["apply existing key us"] = spent / len(updates) * 1e6
    names = [key(i) for i in range(0, keys, 7)]
    spent = [0.0] * len(trees)
    for n, start in enumerate(range(0, len(names), BATCH)):
        batch = names[start:start + BATCH]
        for m in (order if n % 2 == 0 else order[::-1]):
            get = machines[m].get
            t = time.perf_counter()
            for name in batch:
                get(name)
            spent[m] += time.perf_counter() - t
    for m in order:
        out[m]["get us"] = spent[m] / len(names) * 1e6
    spent = [0.0] * len(trees)
    for n in range(10):
        for m in (order if n % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            machines[m].freeze().close()
            spent[m] += time.perf_counter() - t
    for m in order:
        out[m]["freeze+close ms"] = spent[m] / 10 * 1e3
    # The snapshots piece by piece, the trees taking turns (whole snapshots one after the other
    # measured the second one up to 20% slower, whichever it was: the first one's file being written
    # back); only the pieces' making is timed, from the freeze to the view's release.
    files = [open(os.path.join(directory, f"snapshot{m}"), "wb") for m in range(len(trees))]  # noqa: SIM115
    generators = [machine.snapshot_chunks() for machine in machines]
    spent = [0.0] * len(trees)
    lengths = [0] * len(trees)
    running = set(order)
    turn = 0
    while running:
        for m in (order if turn % 2 == 0 else order[::-1]):
            if m not in running:
                continue
            t = time.perf_counter()
            piece = next(generators[m], None)
            spent[m] += time.perf_counter() - t
            if piece is None:
                running.discard(m)
                files[m].close()
            else:
                files[m].write(piece)
                lengths[m] += len(piece)
        turn += 1
    hashes = {}
    for m in order:
        out[m]["snapshot_chunks s"] = spent[m]
        hashes[m] = machines[m].state_hash()
    assert len(set(hashes.values())) == 1, "the trees disagree on the state hash"
    del machines
    gc.collect()
    for checked in (True, False):
        for m in (order if checked else order[::-1]):
            with open(os.path.join(directory, f"snapshot{m}"), "rb") as f:
                t = time.perf_counter()
                restored = trees[m].StateMachine.restore_stream(f, lengths[m], checked_file=checked)
                out[m][f"restore_stream{' checked' if checked else ''} s"] = time.perf_counter() - t
            assert restored.state_hash() == hashes[m]
            del restored
            gc.collect()
    return out


def costs(baseline: str, keys: int, rounds: int) -> None:
    trees = [load_tree(baseline), load_tree(None)]
    results: list[list[dict[str, float]]] = [[], []]
    with tempfile.TemporaryDirectory() as directory:
        for r in range(rounds):
            # Without the cyclic collector: its full collections walk both machines' objects (a cost
            # of having two machines in one process) and are charged to whichever runs at the time.
            # The state machine makes no reference cycles, so nothing piles up.
            gc.collect()
            gc.disable()
            try:
                # Odd rounds swap the machines' places too (which one is first in the lists): an A/A run
                # measured the second 2% slower at applying new keys whatever the order of the batches.
                if r % 2 == 0:
                    a, b = costs_round(trees, keys, directory, swap=r % 4 == 2)
                else:
                    b, a = costs_round(trees[::-1], keys, directory, swap=r % 4 == 3)
            finally:
                gc.enable()
            results[0].append(a)
            results[1].append(b)
            print(f"round {r + 1}: " + ", ".join(f"{k} {a[k]:.3f}/{b[k]:.3f}" for k in a), flush=True)
    print(f"\ncosts, {rounds} rounds, {keys:,} keys (A = {baseline}, B = this tree; "
          "B/A: median of the rounds' ratios):")
    print(f"{'figure':<26}{'A':>10}{'B':>10}{'B/A':>8}")
    for figure in results[0][0]:
        a = statistics.median(f[figure] for f in results[0])
        b = statistics.median(f[figure] for f in results[1])
        ratios = [fb[figure] / fa[figure] for fa, fb in zip(results[0], results[1], strict=True)]
        print(f"{figure:<26}{a:>10.3f}{b:>10.3f}{statistics.median(ratios):>8.3f}   "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The state machine alone: bytes per key, and A/B costs.")
    ap.add_argument("--keys", type=benchargs.positive_int, default=1_000_000)
    ap.add_argument("--baseline", help="git revision to compare costs (and memory) with")
    ap.add_argument("--rounds", type=benchargs.positive_int, default=4, help="A/B rounds for the costs")
    ap.add_argument("--costs-only", action="store_true", help="skip the memory figures")
    ap.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_memory:
        print(json.dumps(memory_child(args.baseline, args.keys)))
        return 0
    print(f"sm_memory: {args.keys:,} keys, 8-character keys, 100-byte str values, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    trees = [("this tree", None)] + ([(args.baseline, args.baseline)] if args.baseline else [])
    for label, revision in [] if args.costs_only else trees:
        m = memory(revision, args.keys)
        print(f"{label}: {m['rss_mib']:.1f} MiB ({m['bytes_per_key']:.1f} B/key): key {m['key_sizeof']} B, "
              f"entry {m['entry_sizeof']} B, dict {m['dict_per_key']:.1f} B/key, index {m['index_per_key']:.1f} "
              f"B/key; freeze {m['freeze_ms']:.1f} ms, +{m['freeze_rss_mib']:.1f} MiB while open; restored: "
              f"{m['restored_rss_mib']:.1f} MiB; snapshot {m['snapshot_mb']:.1f} MB", flush=True)
    if args.baseline:
        costs(args.baseline, args.keys, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
