"""Ctrl-C before a command has taken it over: ``Aborted!`` and exit 130, as from every command, no traceback.

QA: ``timeout -s INT 0.15 kv cluster status`` (and ``kv member list``) printed a traceback through
``cli/app.py``'s ``import typer`` ending in ``KeyboardInterrupt``: the signal came while the command's
modules were loading, before anything that reports Ctrl-C ran. The interrupt is stood in for here by the
dispatch raising it, as an import inside it does.
"""
from __future__ import annotations

import sys

import pytest

from cli import main


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_a_command_loads_is_one_line_and_exit_130(monkeypatch, capsys):
    monkeypatch.setattr(main, "_dispatch", _interrupted)
    monkeypatch.setattr(sys, "argv", ["kv", "cluster", "status"])
    with pytest.raises(SystemExit) as exit_info:
        main.run()
    assert exit_info.value.code == 130
    captured = capsys.readouterr()
    assert captured.err == "\nAborted!\n" and captured.out == ""


def test_with_debug_the_interrupt_goes_on_with_its_traceback(monkeypatch):
    monkeypatch.setattr(main, "_dispatch", _interrupted)
    monkeypatch.setattr(sys, "argv", ["kv", "--debug", "member", "list"])
    with pytest.raises(KeyboardInterrupt):
        main.run()
