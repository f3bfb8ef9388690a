"""``kv dashboard``'s server side, without a browser or a cluster (the page in Chromium against a real
cluster is tests/web/test_pages.py).

How: a ``Dashboard`` fed status lists by hand (``record``, with the times passed in) and asked what the
page would get (``handle`` with ``kvstore.httpserve.Request`` objects). Checks:

* throughput and latency come from the differences of the nodes' ``writes_answered`` and
  ``write_latency_us`` counters between polls; a node whose counters went down (restarted) counts from
  zero, and an unreachable node counts nothing; lag is the highest decided slot minus each node's
  applied slot; a leader change is noted as an event;
* the page, its script and its style are served from the package; ``/api/state`` is JSON with the
  nodes; ``/trace`` draws a trace; bad paths and methods get 404/405/400;
* the fault buttons exist only for a ``kv cluster up`` cluster whose endpoints are the ones watched,
  and refuse unknown actions without running anything.
"""
from __future__ import annotations

import json

import trio

from kv_cli import dashboard as dash
from kv_cli.common import Settings, write_state
from kvstore.httpserve import Request

EPS = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


def status(i: int, *, leader: int = 1, decided: int, applied: int, answered: int = 0, spent_us: int = 0,
           reachable: bool = True) -> dict:
    if not reachable:
        return {"endpoint": EPS[i - 1], "reachable": False, "error": "refused"}
    return {"endpoint": EPS[i - 1], "reachable": True, "id": i, "address": EPS[i - 1], "leader": leader,
            "is_leader": i == leader, "ballot": [1, leader], "decided_slot": decided, "applied_slot": applied,
            "counters": {"writes_answered": answered, "write_latency_us": spent_us}}


def test_throughput_latency_lag_and_leader_changes_come_from_status_counters():
    board = dash.Dashboard(EPS, None)
    board.record([status(1, decided=10, applied=10, answered=100, spent_us=50_000),
                  status(2, decided=10, applied=9), status(3, decided=8, applied=8)], now=100.0)
    assert len(board.history) == 0 and board.nodes[1]["lag"] == 1 and board.nodes[2]["lag"] == 2
    board.record([status(1, decided=20, applied=20, answered=300, spent_us=250_000),
                  status(2, decided=20, applied=20), status(3, decided=20, applied=20)], now=102.0)
    assert board.history[-1]["writes_per_second"] == 100.0  # 200 writes in 2 s
    assert board.history[-1]["latency_ms"] == 1.0  # 200 ms over 200 writes
    # node 1 restarted (its counters start again) and node 2 now leads
    board.record([status(1, leader=2, decided=30, applied=30, answered=5, spent_us=5_000),
                  status(2, leader=2, decided=30, applied=30, answered=45, spent_us=45_000),
                  status(3, leader=2, decided=30, applied=25, reachable=False)], now=103.0)
    assert board.history[-1]["writes_per_second"] == 50.0  # node 1's 5 since its restart, node 2's 45
    assert board.nodes[2]["lag"] is None and board.nodes[2]["reachable"] is False
    assert [e["text"] for e in board.events] == ["leader: node 1", "leader: node 2"]
    board.record([status(1, leader=2, decided=30, applied=30, answered=5, spent_us=5_000),
                  status(2, leader=2, decided=30, applied=30, answered=45, spent_us=45_000),
                  status(3, leader=2, decided=30, applied=30)], now=104.0)
    assert board.history[-1]["writes_per_second"] == 0.0 and board.history[-1]["latency_ms"] is None


async def test_the_page_its_files_the_state_and_a_trace_are_served():
    board = dash.Dashboard(EPS, None)
    board.record([status(1, decided=3, applied=3)], now=1.0)
    page = await board.handle(Request("GET", "/"))
    assert page.status == 200 and b'<script src="/dashboard.js">' in page.body
    assert b"http" not in page.body.replace(b"http-equiv", b"")  # no CDN: nothing from elsewhere
    script = await board.handle(Request("GET", "/dashboard.js"))
    assert script.status == 200 and script.content_type.startswith("text/javascript")
    assert b"https://" not in script.body and b"/api/state" in script.body
    state = await board.handle(Request("GET", "/api/state"))
    body = json.loads(state.body)
    assert body["faults"] is False and body["nodes"][0]["decided_slot"] == 3
    trace = await board.handle(Request("GET", "/trace", {"scenario": "round", "seed": "2"}))
    assert trace.status == 200 and b'class="msg msg-Accept' in trace.body
    assert (await board.handle(Request("GET", "/trace", {"scenario": "nope"}))).status == 400
    for seed in ("\u00b2", "7" * 5000, "-1", ""):  # (QA: "²" and 5,000 digits raised in the handler: a 500)
        assert (await board.handle(Request("GET", "/trace", {"scenario": "round", "seed": seed}))).status == 400
    assert (await board.handle(Request("GET", "/etc/passwd"))).status == 404
    assert (await board.handle(Request("GET", "/api/nodes/1/kill"))).status == 405


async def test_fault_buttons_only_for_the_watched_local_cluster(tmp_path, monkeypatch):
    ran = []

    async def no_process(*args, **kwargs):  # nothing may be run for a refused action
        ran.append(args)
        raise AssertionError("ran a command")

    monkeypatch.setattr(trio, "run_process", no_process)
    board = dash.Dashboard(EPS, None)
    refused = await board.handle(Request("POST", "/api/nodes/1/kill", headers=_token(board)))
    assert refused.status == 409 and "no fault buttons" in json.loads(refused.body)["output"]

    write_state(tmp_path, {"nodes": [{"id": i, "port": 7000 + i} for i in (1, 2, 3)], "endpoints": EPS})
    endpoints, cluster_dir = dash._watched(Settings(), tmp_path)
    assert endpoints == EPS and cluster_dir == tmp_path.absolute()
    endpoints, cluster_dir = dash._watched(Settings(endpoints_text="127.0.0.1:9001"), tmp_path)
    assert endpoints == ["127.0.0.1:9001"] and cluster_dir is None  # another cluster: no buttons
    board = dash.Dashboard(EPS, tmp_path)
    unknown = await board.handle(Request("POST", "/api/nodes/1/explode", headers=_token(board)))
    assert unknown.status == 409 and "unknown action" in json.loads(unknown.body)["output"]
    assert ran == []


def _token(board) -> dict[str, str]:
    """The header the page's buttons send: the token the page read from /api/state."""
    return {"x-kv-action-token": board.action_token}


async def test_another_site_cannot_press_the_buttons(tmp_path, monkeypatch):
    """Cross-site request forgery (QA): any page the operator's browser shows could POST to
    127.0.0.1:8080/api/nodes/2/pause, and the node was paused. An action now needs the token that only
    this dashboard's own page can read (from /api/state), sent in a custom header; and a request whose
    Host names another site (DNS rebinding: that site's name made to resolve to 127.0.0.1) is refused,
    pages and state included. Requests addressed to localhost, an IP address or this machine's name,
    or without a Host (a script), are served."""
    ran = []

    async def no_process(*args, **kwargs):
        ran.append(args)
        raise AssertionError("ran a command")

    monkeypatch.setattr(trio, "run_process", no_process)
    write_state(tmp_path, {"nodes": [{"id": i, "port": 7000 + i} for i in (1, 2, 3)], "endpoints": EPS})
    board = dash.Dashboard(EPS, tmp_path)
    for headers in ({}, {"x-kv-action-token": "guessed"}, {"x-kv-action-token": ""}):
        forged = await board.handle(Request("POST", "/api/nodes/2/pause", headers=headers))
        assert forged.status == 403 and b"token" in forged.body
    state = json.loads((await board.handle(Request("GET", "/api/state"))).body)
    assert state["action_token"] == board.action_token and len(board.action_token) >= 16
    assert dash.Dashboard(EPS, tmp_path).action_token != board.action_token  # one per dashboard
    for host in ("evil.example:8080", "evil.example", "127.0.0.1.evil.example:8080"):
        for request in (Request("GET", "/api/state", headers={"host": host}),
                        Request("POST", "/api/nodes/2/pause", headers={"host": host, **_token(board)})):
            assert (await board.handle(request)).status == 403, (host, request.path)
    import socket

    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "10.0.0.5", socket.gethostname(), ""):
        assert (await board.handle(Request("GET", "/api/state", headers={"host": host}))).status == 200, host
    assert ran == []
