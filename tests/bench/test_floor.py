"""``bench/floor.py``'s floor servers: three real processes answer each mode and end by themselves when
the client's connection closes. No timing is asserted."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "floor.py"


def load_floor():
    spec = importlib.util.spec_from_file_location("floor_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_servers_answer_every_mode_and_stop(tmp_path):
    floor_mod = load_floor()
    floor = floor_mod.Floor(tmp_path)
    try:
        floor.start()
        assert len(floor.procs) == 3
        for mode in floor_mod.FLOOR_VARIANTS.values():
            for _ in range(5):
                floor.request(mode)  # checks the reply's id and mode
        assert floor.rid == 15
    finally:
        floor.close()
    assert [proc.returncode for proc in floor.procs] == [0, 0, 0]  # ended on EOF, not killed
    logs = sorted(tmp_path.glob("*.log"))
    assert len(logs) == 3
    for log in logs:
        data = log.read_bytes()
        assert len(data) == floor_mod.LOG_BYTES  # preallocated, overwritten in place
        assert data[:floor_mod.RECORD_BYTES] != bytes(floor_mod.RECORD_BYTES)  # records were written
