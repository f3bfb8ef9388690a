"""Bad input to ``kv snapshot status|restore|save`` (real ``kv`` processes, no cluster needed).

A damaged or foreign backup file, a target directory that is not empty, an id outside ``--peers``, the
old cluster's id: each ends with exactly one ``Error:`` line on stderr, no traceback, exit 1 (the
operation failed) or 2 (a usage error), and nothing made: no data directory, no half-made directory
next to it, a non-empty target untouched. ``kv snapshot save`` with no cluster to answer fails the same
way and leaves no file.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..integration.harness import free_ports
from ..kvstore.test_backup import DAMAGE, make_backup
from ..nemesis.cluster import REPO

pytestmark = pytest.mark.slow

PEERS = "1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203"


def kv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kv_cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=str(REPO), stdin=subprocess.DEVNULL)


def the_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def nothing_made(root: Path, target: Path) -> None:
    assert not target.exists()
    assert sorted(p.name for p in root.iterdir() if ".restoring-" in p.name) == []


@pytest.mark.parametrize("what,damage,message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_backup_is_one_line_exit_1_and_restores_nothing(tmp_path, what, damage, message):
    path = tmp_path / "b.kvbak"
    make_backup(path)
    data = bytearray(path.read_bytes())
    damage(data)
    path.write_bytes(bytes(data))
    assert message in the_error(kv("snapshot", "status", str(path)), 1)
    target = tmp_path / "node-1"
    line = the_error(kv("snapshot", "restore", str(path), "--id", "1", "--peers", PEERS, "--data-dir", str(target)), 1)
    assert message in line and str(path) in line
    nothing_made(tmp_path, target)


def test_restore_refusals(tmp_path):
    path = tmp_path / "b.kvbak"
    make_backup(path)
    target = tmp_path / "node-1"

    full = tmp_path / "full"
    full.mkdir()
    (full / "meta.json").write_text("{}")
    line = the_error(kv("snapshot", "restore", str(path), "--id", "1", "--peers", PEERS, "--data-dir", str(full)), 1)
    assert "exists and is not empty" in line
    assert [p.name for p in full.iterdir()] == ["meta.json"] and (full / "meta.json").read_text() == "{}"

    line = the_error(kv("snapshot", "restore", str(path), "--id", "1", "--peers", PEERS, "--data-dir", str(target),
                        "--cluster-id", "kv-old"), 1)
    assert "needs a new cluster id" in line

    line = the_error(kv("snapshot", "restore", str(tmp_path / "missing.kvbak"), "--id", "1", "--peers", PEERS,
                        "--data-dir", str(target)), 1)
    assert "no such file" in line

    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("these are not the bytes you are looking for, not even close, no no no no no\n")
    assert "not a kv backup" in the_error(kv("snapshot", "restore", str(not_a_backup), "--id", "1", "--peers", PEERS,
                                             "--data-dir", str(target)), 1)

    assert "--id 4 is not one of the --peers ids" in the_error(
        kv("snapshot", "restore", str(path), "--id", "4", "--peers", PEERS, "--data-dir", str(target)), 2)
    assert "invalid --peers" in the_error(
        kv("snapshot", "restore", str(path), "--id", "1", "--peers", "1=nowhere", "--data-dir", str(target)), 2)
    missing = kv("snapshot", "restore", str(path), "--id", "1", "--data-dir", str(target))  # click's usage error
    assert missing.returncode == 2 and "Missing option '--peers'" in missing.stderr
    assert "Traceback" not in missing.stderr
    nothing_made(tmp_path, target)

    # And the same command, with nothing wrong, makes the directory.
    made = kv("snapshot", "restore", str(path), "--id", "1", "--peers", PEERS, "--data-dir", str(target))
    assert made.returncode == 0, made.stderr
    assert "start it with: kv serve --id 1 --peers " + PEERS in made.stdout
    assert (target / "meta.json").exists()


def test_save_with_no_cluster_answering_leaves_no_file(tmp_path):
    port = free_ports(1)[0]
    target = tmp_path / "b.kvbak"
    line = the_error(kv("--endpoints", f"127.0.0.1:{port}", "--command-timeout", "1", "snapshot", "save",
                        str(target)), 1)
    assert "no answer" in line or "unreachable" in line or "connect" in line, line
    assert list(tmp_path.iterdir()) == []
