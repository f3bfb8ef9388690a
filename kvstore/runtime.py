"""Process-wide settings for the programs this package runs (``kv serve``, ``kv bench``).

A library must not change them for the program that embeds it, so ``kvstore.client`` and the rest
never call this; the two entry points do.
"""
from __future__ import annotations

import gc

# CPython runs a young-generation collection every 700 net allocations by default. A server or load
# generator allocates a few hundred short-lived objects per request (frames, messages, results), all
# of them freed by reference counting, so those collections find almost nothing and cost ~15 % of
# the CPU per request (client against a stub server, 256 in flight: 32-38 -> 27-29 us per put).
# Cycles (trio's cancellation tracebacks, mostly) are still collected, only in larger batches.
GC_THRESHOLDS = (20_000, 10, 10)


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never scan what exists now (the modules just imported,
    a state machine just restored): ``gc.freeze`` moves it out of the collector's generations."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
