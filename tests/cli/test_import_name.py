"""The kv command installs as the import package ``kv_cli`` (source folder ``cli/``), not ``cli``.

How: a fresh interpreter started outside the repository (so the folder ``cli/`` is not on sys.path)
imports every module of ``kv_cli`` and runs ``python -m kv_cli --help``; a leftover ``from cli...``
import would fail there, or show up as a ``cli`` module in sys.modules.
"""
import subprocess
import sys

MODULES = ["kv_cli", "kv_cli.main", "kv_cli.common", "kv_cli.cluster", "kv_cli.bench", "kv_cli.output",
           "kv_cli.nodestatus"]


def test_every_module_imports_as_kv_cli_and_none_as_cli(tmp_path):
    code = (f"import importlib, sys\nfor m in {MODULES!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'cli' or m.startswith('cli.')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_python_dash_m_kv_cli_runs_kv(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kv_cli", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: kv" in proc.stdout
