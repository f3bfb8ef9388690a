"""``kv trace``: run a seeded simulation of the Paxos core and write it as an HTML sequence diagram.

The run is ``paxos.trace`` (pure: a seeded in-memory world of ``Replica`` nodes); the drawing is
``paxos.trace_html``. This module only parses the options and writes the file. ``register(app)`` adds
the command to a typer app.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import OperationFailed, Settings, UsageProblem, reporting_errors
from .output import echo

EPILOG = ("Example: kv trace --scenario leader-change --seed 1 -o leader-change.html;  "
          "kv trace --scenario random --seed 42 --heartbeats")


class Scenario(str, enum.Enum):
    round = "round"
    leader_change = "leader-change"
    random = "random"


def write_trace(scenario: str, seed: int, nodes: int, heartbeats: bool) -> str:
    """The HTML page of one run (raises RuntimeError if the scenario could not finish)."""
    from paxos.trace import run_scenario
    from paxos.trace_html import render

    return render(run_scenario(scenario, seed, nodes), heartbeats=heartbeats)


def trace_command(
    ctx: typer.Context,
    scenario: Annotated[Scenario, typer.Option("--scenario", help="round: an election and one command; "
                                               "leader-change: the leader crashes with a command in flight; "
                                               "random: seeded crashes, restarts and partitions.")] = Scenario.round,
    seed: Annotated[int, typer.Option("--seed", help="The seed: the same seed draws the same run.")] = 1,
    nodes: Annotated[int, typer.Option("--nodes", min=3, max=7, help="Nodes in the cluster.")] = 3,
    heartbeats: Annotated[bool, typer.Option("--heartbeats", help="Draw heartbeats and their acks too.")] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The HTML file to write ('-': standard output). "
                                            "Default: paxos-trace-SCENARIO-SEED.html here."),
    ] = None,
) -> None:
    """Draw a seeded run of the Paxos core as a sequence diagram (one self-contained HTML file)."""
    settings = ctx.find_object(Settings) or Settings()
    with reporting_errors(settings):
        if seed < 0:
            raise UsageProblem("--seed must be >= 0")
        try:
            page = write_trace(scenario.value, seed, nodes, heartbeats)
        except RuntimeError as exc:
            raise OperationFailed(str(exc)) from None
        if output is not None and str(output) == "-":
            sys.stdout.write(page)
            return
        path = output or Path(f"paxos-trace-{scenario.value}-{seed}.html")
        try:
            path.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise OperationFailed(f"cannot write {path}: {exc.strerror or exc}") from None
        echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``trace`` to ``app`` (the ``kv`` app calls this)."""
    app.command("trace", epilog=EPILOG)(trace_command)


__all__ = ["trace_command", "register", "write_trace"]
