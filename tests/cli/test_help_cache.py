"""``kv ... --help`` from the help cache (``kv_cli.helpcache``) is exactly what typer prints.

How: for every command path, the page ``render_help`` makes must equal the output of the typer app
(CliRunner, whose width of 80 is forced on both) for ``PATH --help``. Then ``print_help`` in a temporary
``XDG_CACHE_HOME``: the first call renders and stores the page, the second prints the stored one (checked
by planting a marker in the file with the same key), a file whose key differs (another width, an edited
kv_cli file) is not used, an unknown command is left to typer, and ``KV_HELP_CACHE=0`` turns the cache
off. Finally ``kv --help`` as a process: the same bytes as the typer app, and the second run imports no
typer.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kv_cli import helpcache
from kv_cli.main import app

PATHS = [[], ["get"], ["put"], ["del"], ["cas"], ["ls"], ["status"], ["health"], ["serve"], ["move-leader"],
         ["bench"], ["dashboard"], ["trace"], ["cluster"], ["cluster", "up"], ["cluster", "status"], ["certs"],
         ["certs", "init"], ["member"], ["member", "add"], ["snapshot"], ["snapshot", "restore"]]


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "kv" for p in PATHS])
def test_the_rendered_page_is_typers(path, monkeypatch):
    from typer._click import formatting

    by_typer = CliRunner().invoke(app, [*path, "--help"], catch_exceptions=False)
    assert by_typer.exit_code == 0
    monkeypatch.setattr(formatting, "FORCED_WIDTH", 80)  # what CliRunner sets while it runs
    assert helpcache.render_help(path) + "\n" == by_typer.stdout


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("KV_HELP_CACHE", raising=False)
    return tmp_path / "kv"


def test_stored_then_printed_from_the_file(cache, capsys):
    assert helpcache.print_help(["get"])
    first = capsys.readouterr().out
    (stored,) = cache.iterdir()
    key, _, text = stored.read_text().partition("\n")
    assert key == helpcache.cache_key(["get"]) and text + "\n" == first
    stored.write_text(key + "\nfrom the cache")
    assert helpcache.print_help(["get"])
    assert capsys.readouterr().out == "from the cache\n"


def test_a_file_with_another_key_is_not_used(cache, capsys, monkeypatch):
    assert helpcache.print_help([])
    (stored,) = cache.iterdir()
    key = stored.read_text().partition("\n")[0]
    stored.write_text(key.replace("width=", "width=1") + "\nstale")
    assert helpcache.print_help([])
    assert capsys.readouterr().out.startswith("Usage: kv [OPTIONS] COMMAND [ARGS]...")
    monkeypatch.setenv("COLUMNS", "60")
    assert helpcache.cache_key([]) != key  # another width, another page


def test_an_edited_or_added_kv_cli_file_changes_the_key(tmp_path, monkeypatch):
    package = tmp_path / "kv_cli"  # a copy of the package's file names, so the real files stay untouched
    package.mkdir()
    for source in Path(helpcache.__file__).parent.glob("*.py"):
        (package / source.name).write_text("")
    monkeypatch.setattr(helpcache, "__file__", str(package / "helpcache.py"))
    before = helpcache.cache_key([])
    stat = (package / "output.py").stat()
    os.utime(package / "output.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    edited = helpcache.cache_key([])
    (package / "newcommand.py").write_text("")
    added = helpcache.cache_key([])
    assert len({before, edited, added}) == 3


def test_unknown_commands_and_a_cache_turned_off_are_left_to_typer(cache, capsys, monkeypatch):
    assert not helpcache.print_help(["nosuch"])
    assert not helpcache.print_help(["get", "k"])
    monkeypatch.setenv("KV_HELP_CACHE", "0")
    assert not helpcache.print_help([])
    assert capsys.readouterr().out == ""


def test_kv_help_as_a_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    code = ("import sys\nsys.argv = ['kv', '--help']\nfrom kv_cli.main import run\nrun()\n"
            "sys.stderr.write(repr('typer' in sys.modules))\n")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60)
    by_typer = subprocess.run([sys.executable, "-c", "from kv_cli.app import app; app(['--help'], prog_name='kv')"],
                              capture_output=True, env=env, timeout=60)
    assert first.stdout == second.stdout == by_typer.stdout
    assert (first.stderr, second.stderr) == (b"True", b"False")


def test_storing_a_page_removes_the_pages_of_other_versions(cache, capsys):
    """Pages of another Python, typer or kv_cli (a key that differs in more than the command and the width)
    are never read again: storing a page removes them; this version's other pages, other files and a
    temporary file still being written stay."""
    assert helpcache.print_help([])
    (kept,) = cache.iterdir()  # this version's kv --help
    key = kept.read_text().partition("\n")[0]
    other_width = cache / "help-00000001.txt"
    other_width.write_text(key.replace("width=", "width=1") + "\npage")
    old_python = cache / "help-00000002.txt"
    old_python.write_text(key.replace("python=", "python=2.7 ") + "\npage")
    old_format = cache / "help-00000003.txt"
    old_format.write_text("kv-help-cache 0|path=get\npage")
    unrelated = cache / "notes.txt"
    unrelated.write_text("mine")
    writing = cache / "help-00000004.txt.123.tmp"
    writing.write_text("a store under way")
    left_behind = cache / "help-00000005.txt.456.tmp"
    left_behind.write_text("a store that never finished")
    os.utime(left_behind, (0, 0))
    assert helpcache.print_help(["get"])  # a miss: renders and stores, then prunes
    capsys.readouterr()
    stored = {p.name for p in cache.iterdir()}
    assert stored == {kept.name, other_width.name, unrelated.name, writing.name,
                      f"help-{zlib.crc32(helpcache.cache_key(['get']).encode()):08x}.txt"}
    assert helpcache.print_help(["get"]) and helpcache.print_help([])  # both still served
