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
