"""``bench/compare.py`` without running a benchmark: its arguments are checked at parse time (exit 2), a run
with no rows still prints and saves its (empty) tables, a missing PySyncObj is said once and its points are
skipped, ``--memory --quick`` passes ``--quick`` on, ``--no-install`` never runs apt-get, and Ctrl-C is one
line and exit 130. The sections that start clusters are replaced by stand-ins."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def compare(monkeypatch, tmp_path):
    """The script as a module; its results go to ``tmp_path``."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("compare_under_test", BENCH / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.store_bench, "save_results", lambda name, data: tmp_path / f"{name}.json")
    monkeypatch.setattr(module, "FAILURES", [])

    def never(*args, **kwargs):
        raise AssertionError("a section that starts processes ran")

    # A test that lets a run get this far replaces the sections it expects; the others must not run
    for section in ("run_kv", "run_pysyncobj", "run_etcd", "run_head_to_head", "run_client_modes", "run_bulk",
                    "engines_main"):
        monkeypatch.setattr(module, section, never)
    return module


@pytest.mark.parametrize("args", [["--conns", "0"], ["--rounds", "0"], ["--bulk-keys", "0"],
                                  ["--client-rounds", "-1"], ["--conns", "x"], ["--pysyncobj-levels", "0"]])
def test_counts_are_checked_when_parsed(compare, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        compare.main(args)
    assert exit_.value.code == 2
    assert f"argument {args[0]}" in capsys.readouterr().err


def test_a_run_without_rows_prints_empty_tables_instead_of_crashing(compare, monkeypatch, capsys):
    monkeypatch.setattr(compare, "run_kv", lambda *args: [])  # every configuration gave nothing
    assert compare.main(["--only-kv", "--no-clients", "--no-bulk", "--seconds", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "system  in flight  puts/s" in out and "results: " in out
    assert compare.render([], markdown=False).splitlines()[0].split()[:2] == ["system", "in"]


def test_without_pysyncobj_it_says_so_once_and_skips_its_points(compare, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pysyncobj", None)  # import raises ImportError
    monkeypatch.setattr(compare, "run_kv", lambda *args: [])  # (run_pysyncobj and run_head_to_head must not run)
    assert compare.main(["--no-etcd", "--no-clients", "--no-bulk", "--seconds", "0.1"]) == 0
    out = capsys.readouterr().out
    said = "PySyncObj is not installed: pip install 'paxos-kv[bench]' (or --no-pysyncobj); skipping its points"
    assert out.count("PySyncObj is not installed") == 1 and said in out
    assert "note: PySyncObj: skipped." in out and "measured at ;" not in out


def test_the_pysyncobj_note_names_only_levels_there_are():
    spec = importlib.util.spec_from_file_location("compare_note", BENCH / "compare.py")
    sys.path.insert(0, str(BENCH))
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    assert "it is also measured at 1024, 4096;" in module.pysyncobj_note([1, 16, 1024, 4096], [1, 16], True)
    note = module.pysyncobj_note([1, 16], [1, 16], True)  # --pysyncobj-levels within --levels
    assert "measured at" not in note and "in flight; 'nobatch' sends at once." in note


def test_memory_quick_is_passed_on(compare, monkeypatch):
    import memory_bench

    seen = []
    monkeypatch.setattr(memory_bench, "main", lambda argv: seen.append(argv) or 0)
    assert compare.main(["--memory", "--quick"]) == 0 and compare.main(["--memory"]) == 0
    assert seen == [["--quick"], []]


def test_no_install_never_runs_apt_get(compare, monkeypatch, capsys):
    monkeypatch.setattr(compare.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(compare.os, "geteuid", lambda: 0)

    def no(*args, **kwargs):
        raise AssertionError("apt-get ran")

    monkeypatch.setattr(compare.subprocess, "run", no)
    assert compare.ensure_etcd(install=False) is None
    assert "--no-install refuses to apt-get install it; skipped" in capsys.readouterr().out


def test_ctrl_c_is_one_line_and_exit_130(compare, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "run_kv", interrupted)
    assert compare.run(["--only-kv", "--no-clients", "--no-bulk", "--seconds", "0.1"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "compare: interrupted (Ctrl-C); the processes it started are stopped, no results saved"
