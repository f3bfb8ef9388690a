"""``bench/memory_bench.py`` in a short form (20,000 keys instead of a million): the script runs to its
end against a real ``kv serve`` process with the server's defaults, and what it reports shows the
quiet snapshot (``ServerOptions.idle_snapshot_seconds``) happened there: a node that went quiet after
the load wrote a snapshot of its own accord and the log above it is empty; then a crash and a restart
replay a log of the given size and the last key loaded is there. No memory or timing figure is
asserted (they belong in bench/)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "memory_bench.py"


def test_memory_bench_short_form_sees_the_quiet_snapshot_and_restarts(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--keys", "20000", "--restart-log-commands", "3000", "--in-flight", "256",
         "--timeline"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "loaded 20000 keys" in out and "errors {}" in out
    assert "RSS once quiet" in out and "no snapshot when quiet" not in out
    assert "last key present: True; log replayed: 3000 puts" in out
    results = Path(out.rsplit("results: ", 1)[1].strip())
    try:
        data = json.loads(results.read_text())
    finally:
        results.unlink()  # the script saves under bench/results: leave the checkout as it was
    quiet = data["status_quiet"]
    # the load (20,000 puts) reached no snapshot interval (100,000): only the quiet rule snapshots here
    assert data["status_loaded"]["snapshot_slot"] == 0
    assert quiet["snapshot_slot"] == quiet["applied_slot"] > 0
    assert quiet["counters"]["snapshots_when_idle"] == 1
    assert data["status_before_kill"]["snapshot_slot"] == quiet["snapshot_slot"]  # 3,000 puts: none since
    assert data["status_after_restart"]["keys"] == 20000
