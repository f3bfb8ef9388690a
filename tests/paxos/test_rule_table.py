"""The rule table of docs/paxos.md points at the code that enforces each rule, and stays that way.

The table ("Rules of the core, each at its line") gives, per rule, places written
``paxos/replica.py:742`` ``_reproposals`` (file, line, function) and, in the next column, the code
each place must hold (one snippet for all places of the row, or one per place, in order). How it is
checked: each file is parsed with ``ast`` to find the function around every line, and each cited
line must contain its snippet and lie inside the named function. When the code has moved, the
failure names the row and says which line to write instead (the snippet's line inside the same
function); when the snippet is gone from that function, it says so, and the row must be rewritten.
Every test named in the "checked by" column must exist under tests/. The table must keep the rows
issue 22 asked for, and cite each section of Paxos Made Simple that the core relies on (2.4,
Progress, among them; stable storage is 2.5, not 2.4).

To update the line numbers after an edit of the cited files:

    python tests/paxos/test_rule_table.py          # prints what changes
    python tests/paxos/test_rule_table.py --fix    # rewrites docs/paxos.md where the new line is unambiguous
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "paxos.md"
HEADING = "## Rules of the core, each at its line"
PLACE = re.compile(r"`(?P<path>[\w./]+\.py):(?P<line>\d+)` `(?P<function>\w+)`")
CODE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Place:
    row: int
    rule: str
    path: str
    line: int
    function: str
    snippet: str
    text: str  # the place as written in the table, e.g. `paxos/replica.py:742` `_reproposals`
    index: int  # its position among the row's places


@dataclass(frozen=True)
class Row:
    number: int
    rule: str
    paper: str
    places: tuple
    tests: tuple


def table_rows() -> list[Row]:
    text = DOC.read_text()
    assert HEADING in text, f"docs/paxos.md lost the heading {HEADING!r}"
    lines = text.split(HEADING, 1)[1].splitlines()
    # The table is the first run of table lines after the heading (other tables later in the file may
    # number their rows too).
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    body = [line for line in lines[start:end] if line.startswith("| ") and re.match(r"\| \d+ \|", line)]
    rows = []
    for line in body:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 6, f"docs/paxos.md rule table: a row needs 6 cells: {line}"
        number, rule, paper, where, code, checked = cells
        found = list(PLACE.finditer(where))
        assert found, f"docs/paxos.md rule table row {number}: no `file:line` `function` in {where!r}"
        snippets = CODE.findall(code)
        assert len(snippets) in (1, len(found)), (
            f"docs/paxos.md rule table row {number}: {len(found)} places but {len(snippets)} snippets")
        if len(snippets) == 1:
            snippets = snippets * len(found)
        places = tuple(Place(int(number), rule, m["path"], int(m["line"]), m["function"], snippet, m.group(0), i)
                       for i, (m, snippet) in enumerate(zip(found, snippets, strict=True)))
        rows.append(Row(int(number), rule, paper, places, tuple(CODE.findall(checked))))
    return rows


@cache
def source_lines(path: str) -> tuple:
    return tuple((ROOT / path).read_text().splitlines())


@cache
def function_spans(path: str) -> tuple:
    tree = ast.parse((ROOT / path).read_text())
    return tuple((node.lineno, node.end_lineno, node.name) for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def function_at(path: str, line: int) -> str | None:
    """The innermost function whose body spans ``line``."""
    spans = [span for span in function_spans(path) if span[0] <= line <= span[1]]
    return min(spans, key=lambda span: span[1] - span[0])[2] if spans else None


def lines_holding(path: str, snippet: str, function: str | None = None) -> list[int]:
    return [number for number, text in enumerate(source_lines(path), 1)
            if snippet in text and (function is None or function_at(path, number) == function)]


def check(place: Place) -> tuple[str | None, int | None]:
    """(None, None) if the place holds; else (a message saying what to change, the new line or None)."""
    lines = source_lines(place.path)
    holds = (place.line <= len(lines) and place.snippet in lines[place.line - 1]
             and function_at(place.path, place.line) == place.function)
    if holds:
        return None, None
    head = (f"docs/paxos.md, rule table row {place.row} ({place.rule[:70]}...): {place.text} should hold "
            f"`{place.snippet}` in `{place.function}`")
    if place.line <= len(lines):
        head += (f", but line {place.line} is `{lines[place.line - 1].strip()}` "
                 f"(in `{function_at(place.path, place.line)}`)")
    inside = lines_holding(place.path, place.snippet, place.function)
    if len(inside) == 1:
        return (f"{head}. It is now at line {inside[0]}: in row {place.row}, change "
                f"`{place.path}:{place.line}` to `{place.path}:{inside[0]}`."), inside[0]
    if inside:
        return (f"{head}. `{place.function}` holds it at lines {inside}: in row {place.row}, change "
                f"`{place.path}:{place.line}` to the one the rule means."), None
    elsewhere = [(n, function_at(place.path, n)) for n in lines_holding(place.path, place.snippet)]
    if elsewhere:
        return (f"{head}. `{place.function}` no longer holds it; {place.path} does at "
                + ", ".join(f"line {n} (in `{f}`)" for n, f in elsewhere)
                + f": if the rule moved with it, write that line and function in row {place.row}; "
                  "else rewrite the row for the new code."), None
    return (f"{head}. {place.path} no longer holds that code anywhere: the code changed, so rewrite "
            f"row {place.row} (its line, function and code) for the code that now enforces the rule."), None


ROWS = table_rows()
PLACES = [place for row in ROWS for place in row.places]


@pytest.mark.parametrize("place", PLACES, ids=lambda p: f"row{p.row}-{p.path}:{p.line}")
def test_each_cited_line_still_holds_the_named_code_in_the_named_function(place):
    message, _ = check(place)
    assert message is None, message


@cache
def defined_test_names() -> frozenset:
    names = set()
    for path in (ROOT / "tests").rglob("*.py"):
        names.update(re.findall(r"^\s*(?:async\s+)?(?:def|class)\s+(\w+)", path.read_text(), re.M))
    return frozenset(names)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"row{r.number}")
def test_each_test_the_table_names_exists(row):
    assert row.tests, f"docs/paxos.md rule table row {row.number} names no test in its 'checked by' column"
    missing = [name for name in row.tests if name not in defined_test_names()]
    assert not missing, (f"docs/paxos.md rule table row {row.number} names {missing}, which no file "
                         "under tests/ defines: it was renamed or removed; write its new name in the row")


def test_the_rows_are_numbered_in_order():
    assert [row.number for row in ROWS] == list(range(1, len(ROWS) + 1))


def test_the_table_keeps_the_rules_issue_22_asked_for():
    """Each rule the issue named must keep a row: found by the code its row cites."""
    cited = {(place.function, place.snippet) for place in PLACES}
    required = {
        "re-proposing decided values": ("_reproposals", "values[slot] = decided[slot]"),
        "value accepted at the highest ballot (P2c)": (
            "_reproposals", "if entry.slot not in best or entry.ballot > best[entry.slot][0]:"),
        "no-op gap filling": ("_reproposals", "values[slot] = ()"),
        "stepping down on any higher ballot": ("_raise_promise", "if self._role != FOLLOWER:"),
        "a candidate giving up behind a promiser's snapshot": (
            "_maybe_become_leader", "if self._role != CANDIDATE or self._election_behind:"),
        "stepping down when a slot is decided against the leader": (
            "_mark_decided", "if (proposal is not None and proposal.value != value) or slot >= self._next_slot:"),
        "new commands only above the re-proposed slots": (
            "_fill_window", "self._open_slot(self._next_slot, tuple(batch))"),
        "the malformed-ballot check": ("_on_prepare", "if m.ballot.node_id != m.sender:"),
        "one value per (ballot, slot)": ("_on_accept", "safety: ballot {m.ballot} proposed two values"),
        "the randomized election timeout (progress)": (
            "_draw_election_deadline", "return timeout + self._rng.randrange(timeout)"),
    }
    missing = [name for name, key in required.items() if key not in cited]
    assert not missing, f"docs/paxos.md rule table has no row for: {missing}"


def test_the_table_cites_every_section_of_the_paper_the_core_relies_on_and_cites_it_right():
    papers = " ".join(row.paper for row in ROWS)
    for section in ("2.1", "2.2", "2.3", "2.4", "2.5", "3"):
        assert re.search(rf"(^|[^\d.]){re.escape(section)}($|[^\d])", papers), f"no row cites section {section}"
    for row in ROWS:
        if "stable storage" in row.rule.lower() or "stable storage" in row.paper.lower():
            assert "2.5" in row.paper and "2.4" not in row.paper, (
                f"row {row.number}: stable storage is section 2.5 of Paxos Made Simple (2.4 is Progress)")
    one_value = next(row for row in ROWS if any("proposed two values" in p.snippet for p in row.places))
    assert "numbers unique" not in one_value.rule, "that assert checks one value per (ballot, slot)"


def main(argv: list[str]) -> int:
    """Print the stale places; with --fix, rewrite the line numbers that can be found unambiguously."""
    fix = "--fix" in argv
    stale, new_lines = 0, {}  # (row, index) -> the line to write
    for place in PLACES:
        message, new_line = check(place)
        if message is None:
            continue
        stale += 1
        print(message)
        if new_line is not None:
            new_lines[place.row, place.index] = new_line
    if fix and new_lines:
        head, table = DOC.read_text().split(HEADING, 1)
        lines = table.split("\n")
        for number, line in enumerate(lines):
            match = re.match(r"\| (\d+) \|", line)
            if not match:
                continue
            row, seen = int(match.group(1)), iter(range(1000))

            def renumber(m, row=row, seen=seen):
                new_line = new_lines.get((row, next(seen)))
                return m.group(0) if new_line is None else m.group(0).replace(f":{m['line']}`", f":{new_line}`")

            lines[number] = PLACE.sub(renumber, line)
        DOC.write_text(head + HEADING + "\n".join(lines))
        print(f"fixed {len(new_lines)} line numbers in {DOC.relative_to(ROOT)}")
    if not stale:
        print("every place of the rule table holds its code")
    return 1 if stale and not fix else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
