"""The walkthrough's prediction holds: docs/learning.md and examples/three_replicas.py agree.

docs/learning.md draws a grid of slots by nodes: what each node accepted (ballot and value) before
the leader change, what the new leader picks per slot, and the value every node ends with. These
tests run the example (the same seed the walkthrough follows), then read that grid out of the
markdown and compare it, cell by cell, with the example's outcome: the durable state before the
change, the values the new leader proposed at its ballot, and every node's applied log at the end.
So a change to the core, the example or the page that makes the prediction false fails here, with
the slot and node that differ. Paxos Made Simple: section 2.2 (P2c: the value accepted at the highest
ballot), section 3 (no-ops fill the gaps; commands are applied in slot order).
"""
from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from paxos.ballot import Ballot
from paxos.replica import Replica

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "three_replicas.py"
WALKTHROUGH = ROOT / "docs" / "learning.md"
GRID_HEADING = "### The grid before the leader change, and what the new leader picks"


def load_example():
    spec = importlib.util.spec_from_file_location("three_replicas_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def outcome(example):
    lines: list[str] = []
    result = example.main(out=lines.append)
    result.trace = lines
    return result


def parse_value(text: str):
    """`x=1` -> (b"x=1",); no-op -> (); anything else (nothing, -) -> None."""
    text = text.strip()
    match = re.fullmatch(r"`([^`]*)`(?: \(.*\))?", text)
    if match:
        return (match.group(1).encode(),)
    if text.startswith("no-op"):
        return ()
    return None


def parse_cell(text: str, ballots: dict):
    """`b2 `v=4`` -> (Ballot(2, 2), (b"v=4",), False); `-` -> None."""
    text = text.strip()
    if text == "-":
        return None
    match = re.fullmatch(r"(b\d) `([^`]*)`(, decided)?", text)
    assert match, f"docs/learning.md grid: cannot read the cell {text!r}"
    return ballots[match.group(1)], (match.group(2).encode(),), bool(match.group(3))


def walkthrough_grid():
    """The grid table of docs/learning.md as {slot: {column: cell text}}, and the ballot names."""
    text = WALKTHROUGH.read_text()
    ballots = {name: Ballot(int(n), int(node))
               for name, n, node in re.findall(r"\b(b\d) = Ballot\((\d+), (\d+)\)", text)}
    assert ballots, "docs/learning.md no longer defines b1, b2, b3 as Ballot(...)"
    assert GRID_HEADING in text, f"docs/learning.md lost the heading {GRID_HEADING!r}"
    rows = []
    for line in text.split(GRID_HEADING, 1)[1].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, body = rows[0], rows[2:]
    grid = {int(row[0]): dict(zip(header, row, strict=True)) for row in body}
    return header, grid, ballots


def node_columns(header):
    return {int(re.match(r"node (\d)", column).group(1)): column
            for column in header if re.fullmatch(r"node \d( \(crashed\))?", column)}


def test_the_example_keeps_its_story_for_the_seed_the_walkthrough_follows(outcome, example):
    """The example stops with SystemExit if an election goes to another node than the story says."""
    assert example.SEED == 6, "docs/learning.md says the generator is seeded with 6"
    assert "=== Act 4: the leader change." in "\n".join(outcome.trace)
    assert outcome.picked_ballot == Ballot(3, 3)


def test_the_grid_before_the_leader_change_is_the_one_the_walkthrough_draws(outcome):
    header, grid, ballots = walkthrough_grid()
    columns = node_columns(header)
    assert sorted(columns) == [1, 2, 3]
    reported = {slot for slot, cells in outcome.grid_before.items() if cells}
    assert reported == {slot for slot, row in grid.items()
                        if any(row[columns[n]] != "-" for n in columns)}, "the grid has other slots"
    for slot, row in grid.items():
        for node, column in columns.items():
            drawn = parse_cell(row[column], ballots)
            actual = outcome.grid_before.get(slot, {}).get(node)
            assert drawn == actual, (f"docs/learning.md grid, slot {slot}, {column}: the page says "
                                     f"{row[column]!r}, the example has {actual!r}")


def test_the_new_leader_picks_per_slot_what_the_walkthrough_says(outcome):
    """Decided value kept, highest ballot re-proposed, gap filled with a no-op (sections 2.2, 3)."""
    header, grid, _ = walkthrough_grid()
    pick_column = next(column for column in header if column.endswith("picks"))
    drawn = {slot: parse_value(row[pick_column]) for slot, row in grid.items()}
    drawn = {slot: value for slot, value in drawn.items() if value is not None}
    assert drawn == outcome.picked, (f"docs/learning.md column {pick_column!r} says {drawn}, the new "
                                     f"leader proposed {outcome.picked} at {outcome.picked_ballot}")
    # The three kinds of pick the walkthrough names are all there.
    assert drawn[2] == (b"y=2",) and drawn[3] == (b"v=4",) and drawn[4] == () and drawn[5] == (b"t=6",)


def test_every_replica_ends_with_the_values_the_walkthrough_predicts(outcome):
    header, grid, _ = walkthrough_grid()
    end_column = next(column for column in header if column.startswith("every node ends with"))
    predicted = {slot: parse_value(row[end_column]) for slot, row in grid.items()}
    for node, log in outcome.logs.items():
        assert log == predicted, (f"node {node} applied {log}; docs/learning.md column "
                                  f"{end_column!r} predicts {predicted}")
    assert predicted == {1: (b"x=1",), 2: (b"y=2",), 3: (b"v=4",), 4: (), 5: (b"t=6",), 6: (b"w=7",)}
    assert all(kv == {"x": "1", "y": "2", "v": "4", "t": "6", "w": "7"} for kv in outcome.kv.values())


def test_the_example_is_deterministic(example, outcome):
    again: list[str] = []
    example.main(out=again.append)
    assert again == outcome.trace


def test_the_trace_names_the_method_that_handles_each_message(example):
    """The example's HANDLERS table matches Replica.receive's dispatch, for every message type."""
    source = inspect.getsource(Replica.receive)
    for message_type, handler in example.HANDLERS.items():
        assert re.search(rf"case {message_type.__name__}\(\):\s+self\.{handler}\(message\)", source), (
            f"Replica.receive no longer hands {message_type.__name__} to {handler}")


def test_the_example_runs_as_a_script():
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "node 3: 1: x=1, 2: y=2, 3: v=4, 4: no-op, 5: t=6, 6: w=7" in result.stdout


def test_the_readme_core_example_runs():
    """The README's one-node example (the first thing a student runs) still does what it says."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("The consensus core on its own:\n\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["actions"].apply == [(1, (b"command",))]
