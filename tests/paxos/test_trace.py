"""``paxos.trace`` and ``paxos.trace_html``: the recorded runs behind ``kv trace``, and their drawing.

How: run the scenarios for fixed seeds and read the recorded flights and marks (no browser; the page
in Chromium is tests/web/test_pages.py). Checks:

* a round goes Prepare -> Promise -> Accept -> Accepted -> Decide in causal order, and every node
  applies slot 1 = x=1; the page draws an arrow of each of those types, one per drawn flight;
* the leader change: the crashed leader's in-flight y=2 is decided in slot 2 by the next leader (a
  Promise reported it: Paxos Made Simple, P2c), the new ballot is higher, messages to the crashed node
  are lost, and the restarted node replays its log from disk and learns slots 2 and 3 by catch-up;
* random schedules for many seeds finish with every node having applied every decided slot, and the
  run's own safety check raises when a slot would be decided twice with different values;
* a seed is a recipe: the same seed gives the same page byte for byte, other seeds other pages;
* ``kv trace`` writes the page; importing the modules loads neither trio nor cbor2 (``paxos`` is pure);
* the pages in docs/trace/ (told step by step in docs/paxos.md) are what ``kv trace`` draws today.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from paxos.trace import TraceRun, run_scenario
from paxos.trace_html import HIDDEN_BY_DEFAULT, render


def first_time(trace, kind: str) -> int:
    return min(f.sent_at for f in trace.flights if f.kind == kind)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_round_goes_phase_1_then_phase_2_and_every_node_applies_it(seed):
    trace = run_scenario("round", seed)
    order = [first_time(trace, k) for k in ("Prepare", "Promise", "Accept", "Accepted", "Decide")]
    assert order == sorted(order) and len(set(order)) == 5, order
    assert trace.decided == {1: (b"x=1",)}
    applied = {m.node for m in trace.marks if m.kind == "applied" and m.slot == 1}
    assert applied == set(trace.nodes)
    leaders = [m for m in trace.marks if m.kind == "leader"]
    assert len(leaders) == 1
    page = render(trace)
    drawn = [f for f in trace.flights if f.kind not in HIDDEN_BY_DEFAULT]
    assert page.count('<line class="msg ') == len(drawn)
    for kind in ("Prepare", "Promise", "Accept", "Accepted", "Decide"):
        assert f'class="msg msg-{kind}' in page
    assert "msg-Heartbeat" not in page and "msg-Heartbeat" in render(trace, heartbeats=True)


def test_a_leader_change_keeps_the_value_accepted_before_the_crash():
    trace = run_scenario("leader-change", 1)
    crash = next(m for m in trace.marks if m.kind == "crash")
    old = crash.node
    leaders = [m for m in trace.marks if m.kind == "leader"]
    assert [m.node for m in leaders][0] == old and leaders[-1].node != old
    new_ballots = [f.message.ballot for f in trace.flights if f.kind == "Prepare" and f.src == leaders[-1].node]
    old_ballot = next(f.message.ballot for f in trace.flights if f.kind == "Accept" and f.src == old)
    assert new_ballots and min(new_ballots) > old_ballot
    # y=2 was in flight when its leader died; a promise to the new leader reported it, so it stays in slot 2
    assert any(f.kind == "Promise" and f.dst == leaders[-1].node and any(e.slot == 2 for e in f.message.accepted)
               for f in trace.flights)
    assert trace.decided == {1: (b"x=1",), 2: (b"y=2",), 3: (b"z=3",)}
    assert any(f.fate == "lost" and f.dst == old for f in trace.flights)
    restart = next(m for m in trace.marks if m.kind == "restart")
    after = [m for m in trace.marks if m.node == old and m.time >= restart.time]
    assert [m.slot for m in after if m.kind == "replayed"] == [1]  # from its own disk
    assert {m.slot for m in after if m.kind == "applied"} == {2, 3}  # learned from the others
    assert any(f.kind == "CatchupRequest" and f.src == old for f in trace.flights)


@pytest.mark.parametrize("seed", range(12))
def test_random_schedules_settle_with_every_node_applying_every_decided_slot(seed):
    trace = run_scenario("random", seed)
    assert trace.decided, "the last command is always decided"
    final: dict = {}
    for m in trace.marks:
        if m.kind == "crash":
            final[m.node] = set()
        elif m.kind in ("applied", "replayed"):
            final.setdefault(m.node, set()).add(m.slot)
    for node in trace.nodes:
        assert final.get(node, set()) >= set(trace.decided), (node, seed)
    render(trace)


def test_the_run_checks_that_a_slot_is_never_decided_twice():
    run = TraceRun(5)
    assert run.run_until(lambda: run.leader() is not None, 400)
    run.decided[1] = (b"something else",)  # as if another node had decided slot 1 otherwise
    run.propose("x=1")
    with pytest.raises(AssertionError, match="safety: slot 1"):
        run.run(50)


def test_a_seed_is_a_recipe():
    pages = {seed: render(run_scenario("random", seed)) for seed in (4, 4, 5)}
    assert render(run_scenario("random", 4)) == pages[4]
    assert pages[4] != pages[5]
    assert render(run_scenario("leader-change", 2)) == render(run_scenario("leader-change", 2))


def test_kv_trace_writes_the_page(tmp_path):
    from kv_cli.main import app

    out = tmp_path / "t.html"
    result = CliRunner().invoke(app, ["trace", "--scenario", "leader-change", "--seed", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == render(run_scenario("leader-change", 1))
    bad = CliRunner().invoke(app, ["trace", "--scenario", "nope"])
    assert bad.exit_code == 2


def test_the_trace_modules_stay_pure():
    code = ("import sys, paxos.trace, paxos.trace_html; "
            "assert not {'trio', 'cbor2', 'socket'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("scenario", ["round", "leader-change"])
def test_the_pages_in_docs_are_what_kv_trace_draws_today(scenario):
    """docs/paxos.md tells these two runs step by step: if the core's behaviour changes them, this
    fails; regenerate (``kv trace --scenario S --seed 1 -o docs/trace/S.html``) and check the text."""
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "trace" / f"{scenario}.html"
    assert page.read_text(encoding="utf-8") == render(run_scenario(scenario, 1)), \
        f"docs/trace/{scenario}.html is stale: regenerate it and re-read docs/paxos.md's account of it"
