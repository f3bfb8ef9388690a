"""kvstore.runtime: the process-wide GC settings of `kv serve` and `kv bench`."""
from __future__ import annotations

import json
import subprocess
import sys

from kvstore import runtime


def test_tune_gc_raises_the_thresholds_and_freezes_what_exists():
    # In a child process: the settings are process-wide and must not leak into the test run.
    code = (
        "import gc, json; from kvstore import runtime; before = gc.get_freeze_count(); "
        "runtime.tune_gc(); print(json.dumps([gc.get_threshold(), before, gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    threshold, before, after = json.loads(out)
    assert tuple(threshold) == runtime.GC_THRESHOLDS
    assert before == 0 and after > 1000  # the interpreter's and our modules' objects


def test_importing_the_library_leaves_the_gc_alone():
    """Only the entry points tune the GC: a program that embeds the client or the server keeps its own."""
    code = ("import gc; t = gc.get_threshold(); import kvstore.client, kvstore.server, kvstore.loadgen; "
            "print(gc.get_threshold() == t and gc.get_freeze_count() == 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_release_free_memory_gives_freed_heap_back():
    """After a burst of freed allocations the process keeps them resident; release_free_memory hands
    them back (glibc's malloc_trim). In a child process, so that the measurement is its own."""
    code = r'''
import json
from kvstore import runtime

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

# 100 KB blocks sit below glibc's mmap threshold, so they come from the heap; a small block after each
# keeps them apart, so when they are freed they are holes the heap cannot shrink over: resident until
# something hands their pages back.
blocks, pins = [], []
for _ in range(2_000):
    blocks.append(bytearray(100_000))
    pins.append(bytearray(1_000))
del blocks
before = rss_mib()
released = runtime.release_free_memory()
print(json.dumps([released, before, rss_mib()]))
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    released, before, after = json.loads(out)
    assert released is True  # Linux with glibc, as on every machine this project runs on
    assert before - after > 100, (before, after)  # most of the 200 MB freed above
