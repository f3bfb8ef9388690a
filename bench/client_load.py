"""One load process for ``compare.py``'s client-API rows: puts through one ``connect()``, in one of two ways.

* ``--mode callback``: ``kv bench``'s engine as it is (``kvstore.loadgen`` over ``kv_targets``): each
  of the ``--clients`` requests in flight is sent from the answer of the previous one
  (``AsyncClient.submit_put``), no task per request;
* ``--mode async``: what an application writes, ``async with connect(...) as kv`` and ``--clients``
  trio tasks each looping on ``await kv.put(key, value)``. The same load generator drives it (so the
  bookkeeping per request is the same): its targets are the ``AsyncClient`` itself, which has no
  ``submit`` method, so ``kvstore.loadgen`` runs one task per request in flight awaiting ``put``.

Both connect, warm up with a few puts, then wait for the wall-clock instant ``--start-at`` so that
the processes compare.py starts side by side load the cluster over the same seconds. The result
(``LoadResult.to_dict``) goes to ``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from kvstore import runtime  # noqa: E402
from kvstore.client import connect  # noqa: E402
from kvstore.loadgen import LoadSpec, kv_targets, run_load  # noqa: E402

WARMUP_PUTS = 32
LATE = {"s": 0.0}  # how late after --start-at the load began (it should be 0: compare.py leaves 4 s)


async def warm_up_and_wait(target: Any, spec: LoadSpec, start_at: float) -> None:
    value = spec.value()
    for i in range(WARMUP_PUTS):
        try:
            await target.put(spec.key(i), value)
        except Exception:  # noqa: BLE001 - a warm-up failure shows up in the run
            pass
    LATE["s"] = max(0.0, time.time() - start_at)
    await trio.sleep(max(0.0, start_at - time.time()))


def targets_for(mode: str, start_at: float) -> Callable[[LoadSpec], AbstractAsyncContextManager[list[Any]]]:
    @asynccontextmanager
    async def open_targets(spec: LoadSpec) -> AsyncIterator[list[Any]]:
        if mode == "callback":
            async with kv_targets(spec) as targets:
                await warm_up_and_wait(targets[0], spec, start_at)
                yield targets
        else:
            async with connect(spec.endpoints, timeout=spec.timeout) as kv:
                await warm_up_and_wait(kv, spec, start_at)
                yield [kv]
    return open_targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoints", required=True)
    ap.add_argument("--mode", choices=["callback", "async"], required=True)
    ap.add_argument("--clients", type=int, default=256, help="requests in flight (tasks with --mode async)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--start-at", type=float, required=True, help="wall-clock time (time.time()) to start")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    runtime.tune_gc()  # as kv bench does
    spec = LoadSpec(endpoints=args.endpoints.split(","), clients=args.clients, conns=1, total=None,
                    duration=args.seconds, val_size=100, key_space_size=100_000, op="put", warmup=0,
                    timeout=10.0, seed=args.seed)
    result = trio.run(lambda: run_load(spec, open_targets=targets_for(args.mode, args.start_at)))
    data = result.to_dict(timeline=False)
    data["mode"] = args.mode
    data["late_s"] = round(LATE["s"], 3)
    Path(args.out).write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
