"""Process-wide settings for the programs this package runs (``kv serve``, ``kv bench``).

A library must not change them for the program that embeds it, so ``kvstore.client`` and the rest
never call ``tune_gc``; the two entry points do. ``release_free_memory`` changes no setting: the
server calls it after each snapshot, whose short-lived buffers would otherwise stay resident.
"""
from __future__ import annotations

import gc
from collections.abc import Callable

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


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (ImportError, OSError, AttributeError):  # no ctypes, or not glibc (musl, macOS): nothing to trim
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> bool:
    """Hand memory that the C allocator holds free back to the operating system (glibc's
    ``malloc_trim``), after a burst of short-lived allocations such as a snapshot's pieces; without
    it the process keeps that peak as resident memory. Returns False where there is no such call."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
