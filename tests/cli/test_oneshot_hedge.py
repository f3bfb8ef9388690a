"""The one-shot client's hedged request: a data request unanswered for ``HEDGE_SECONDS`` also goes to the
next endpoint, and the first useful answer wins (``OneShotClient._exchange_hedged``).

Against fake nodes on real sockets (``fakenodes``): a silent node (paused, wedged) costs the hedge delay,
not the attempt timeout; a slow leader that the second node names keeps the request; a hint to a third
node is followed; a write whose first copy went unanswered stays in doubt; member changes and backups
(no request id, or a session on one node) are never hedged. Each call here has a long attempt timeout
(``timeout=6`` gives 2 s), so "long before the attempt timeout" is a wide margin, not a race.
"""
from __future__ import annotations

import os
import resource
import socket
import threading
import time

import pytest

from kvstore.oneshot import HEDGE_SECONDS, OneShotClient, Unavailable
from tests.cli.fakenodes import SILENT, Store, err, ok


def test_a_silent_first_node_costs_the_hedge_delay_and_both_got_the_same_write(nodes):
    store = Store()
    silent = nodes(lambda r: SILENT)
    leader = nodes(store.handle)
    with OneShotClient([silent.address, leader.address], timeout=6) as kv:
        assert kv.attempt_timeout == 2
        started = time.monotonic()
        assert kv.put("k", "v") == 1
        elapsed = time.monotonic() - started
        assert HEDGE_SECONDS <= elapsed < 1.5, elapsed
        assert kv.get("k") == "v"  # on the leader's connection now: no hedge, the silent node is not asked
    assert [r["t"] for r in silent.requests] == ["put"]
    assert [r["t"] for r in leader.requests] == ["put", "get"]
    first, hedged = silent.requests[0], leader.requests[0]
    assert (first["cid"], first["rq"]) == (hedged["cid"], hedged["rq"])  # the same write


def test_a_slow_leader_named_by_the_second_node_keeps_the_request(nodes):
    """The first node leads but takes 0.6 s; the second says so (not_leader, hint: the first). The client
    goes on waiting for the first, which answers, and keeps its connection."""
    store = Store()

    def slow(request: dict) -> object:
        time.sleep(0.6)
        return store.handle(request)

    leader = nodes(slow)
    follower = nodes(lambda r: err(r, "not_leader", "not the leader", leader.address))
    with OneShotClient([leader.address, follower.address], timeout=6) as kv:
        started = time.monotonic()
        assert kv.put("k", "v") == 1
        assert 0.55 < time.monotonic() - started < 1.5
        assert kv._conn is not None and kv._conn.endpoint == ("127.0.0.1", leader.port)
    assert len(leader.requests) == 1  # never sent twice to the same node
    # the follower was asked again every HEDGE_SECONDS while the leader was silent (each copy turned away)
    assert [r["t"] for r in follower.requests] in (["put"], ["put", "put"]), follower.requests


def test_a_paused_leader_is_left_once_the_second_node_names_its_successor(nodes):
    """QA: with the leader paused, the second node named it (no election had ended yet) and the command
    waited its whole attempt timeout (1.7 s) for an election of 0.3-0.6 s. The second node is asked again
    every HEDGE_SECONDS while the first stays silent: at 0.6 s it leads, and the write is done there."""
    store = Store()
    silent = nodes(lambda r: SILENT)
    elected_at = time.monotonic() + 0.6

    def successor(request: dict) -> object:
        if time.monotonic() < elected_at:
            return {**err(request, "not_leader", "not the leader", silent.address), "refused": True}
        return store.handle(request)

    second = nodes(successor)
    with OneShotClient([silent.address, second.address], timeout=6) as kv:
        started = time.monotonic()
        assert kv.put("k", "v") == 1
        elapsed = time.monotonic() - started
        assert 0.55 < elapsed < 1.2 < kv.attempt_timeout, elapsed
        assert kv._conn is not None and kv._conn.endpoint == ("127.0.0.1", second.port)
    assert [r["t"] for r in second.requests] in (["put"] * 2, ["put"] * 3), second.requests
    assert len({(r["cid"], r["rq"]) for r in second.requests + silent.requests}) == 1  # one write, resent


def test_a_second_node_naming_a_third_sends_the_request_there(nodes):
    store = Store()
    silent = nodes(lambda r: SILENT)
    leader = nodes(store.handle)
    follower = nodes(lambda r: err(r, "not_leader", "not the leader", leader.address))
    with OneShotClient([silent.address, follower.address, leader.address], timeout=6) as kv:
        started = time.monotonic()
        assert kv.get("k") is None
        assert time.monotonic() - started < 1.5
    assert [r["t"] for r in leader.requests] == ["get"]


def test_the_first_node_answering_after_the_hedge_left_still_wins(nodes):
    """Both nodes get the request; the first answers at 0.4 s, the second never: the first's answer is
    the result."""
    def late(request: dict) -> object:
        time.sleep(0.4)
        return ok(request, {"found": True, "value": "first", "ver": 1, "mrev": 1})

    first = nodes(late)
    second = nodes(lambda r: SILENT)
    with OneShotClient([first.address, second.address], timeout=6) as kv:
        assert kv.get("k") == "first"
    assert len(second.requests) == 1


def test_a_write_whose_first_copy_went_unanswered_stays_in_doubt(nodes):
    """The first node never answers; the hedge's node refuses on arrival (a full disk): not a useful
    answer, so the client waits for the first until the attempt timeout and then tries on. At the
    deadline the write is in doubt: the silent node may have proposed it."""
    silent = nodes(lambda r: SILENT)
    full = nodes(lambda r: {**err(r, "storage_full", "disk full"), "refused": True})
    with OneShotClient([silent.address, full.address], timeout=1.5) as kv:
        with pytest.raises(Unavailable) as info:
            kv.put("k", "v")
    assert info.value.outcome_unknown, str(info.value)
    assert len(silent.requests) >= 1 and len(full.requests) >= 1


def test_backups_are_not_hedged(nodes):
    """A backup session lives on one node: it goes to a second node only once the first gave up."""
    silent = nodes(lambda r: SILENT)
    other = nodes(lambda r: ok(r, {"members": []}))
    with OneShotClient([silent.address, other.address], timeout=6) as kv:
        started = time.monotonic()
        kv.backup()
        assert time.monotonic() - started >= kv.attempt_timeout  # the first attempt ran its course
    assert len(silent.requests) == 1 and len(other.requests) == 1


def test_a_member_change_is_never_sent_twice_and_one_unanswered_is_in_doubt(nodes):
    """A member change carries no request id: sent twice, it could be carried out twice. QA: a move-leader
    whose leader waited 1.9 s for the target was sent again after the 1.67 s attempt timeout, to the new
    leader, which refused it; the command said it failed, and the first handover finished 0.4 s later.
    Now its one attempt may take the whole timeout, and no answer is an outcome unknown. (The change goes
    to the node that answered the member list first: here the first node, which then goes silent, or
    slow.)"""
    def listing_then(answer_change):
        return lambda r: ok(r, {"members": []}) if r.get("op") == "member_list" else answer_change(r)

    silent = nodes(listing_then(lambda r: SILENT))
    other = nodes(lambda r: ok(r, {"members": []}))
    with OneShotClient([silent.address, other.address], timeout=3) as kv:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="may or may not have been carried out") as info:
            kv.admin("move_leader", 2)
        assert time.monotonic() - started >= 2.9  # the whole timeout, not an attempt's
    assert info.value.outcome_unknown
    assert [r["op"] for r in silent.requests] == ["member_list", "move_leader"] and other.requests == []
    # answers the change after an attempt timeout
    slow = nodes(listing_then(lambda r: (time.sleep(2.2), ok(r, {"members": []}))[1]))
    with OneShotClient([slow.address, other.address], timeout=5) as kv:
        assert kv.admin("move_leader", 2) == {"members": []}
    assert [r["op"] for r in slow.requests] == ["member_list", "move_leader"] and other.requests == []


def test_a_write_left_unanswered_on_the_node_given_up_is_in_doubt_whatever_the_others_said(nodes):
    """The first node does not answer the first copy of the write; the hedge's node sends the client on to
    a third (``not_leader``, turned away on arrival). From then on every node refuses on arrival, until
    the deadline. Every answer was a refusal, but the first copy went unanswered on a connection the
    client gave up: in doubt."""
    answers = iter([SILENT])

    def silent_once(request: dict) -> object:
        return next(answers, None) or {**err(request, "storage_full", "disk full"), "refused": True}

    silent = nodes(silent_once)
    full = nodes(lambda r: {**err(r, "storage_full", "disk full"), "refused": True})
    follower = nodes(lambda r: {**err(r, "not_leader", "not the leader", full.address), "refused": True})
    with OneShotClient([silent.address, follower.address, full.address], timeout=1.5) as kv:
        with pytest.raises(Unavailable) as info:
            kv.put("k", "v")
    assert info.value.outcome_unknown, str(info.value)
    assert len(full.requests) >= 2


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.security.pki import Pki

    return Pki(tmp_path_factory.mktemp("pki"), nodes=1)


def test_hedging_over_mutual_tls(nodes, pki):
    """The same with TLS on both nodes: the hedge's connection shakes hands like any other, and its answer
    is read through the TLS layer, record by record, while waiting on both sockets."""
    from kvstore.tls import TlsFiles, server_context

    context = server_context(TlsFiles(pki.cacert, str(pki.dir / "node-1.pem"), str(pki.dir / "node-1.key")))
    big = "v" * 100_000  # an answer in several TLS records (16 KiB each at most)
    silent = nodes(lambda r: SILENT, tls=context)
    leader = nodes(lambda r: ok(r, {"found": True, "value": big, "ver": 1, "mrev": 1}), tls=context)
    with OneShotClient([silent.address, leader.address], timeout=6, **pki.files("admin")) as kv:
        started = time.monotonic()
        assert kv.get("k") == big
        assert time.monotonic() - started < 1.5
    assert [r["t"] for r in leader.requests] == ["get"] and len(silent.requests) == 1


@pytest.mark.parametrize("code", ["storage_full", "timeout"])
def test_a_second_copy_answered_in_doubt_keeps_the_write_in_doubt(nodes, code):
    """QA: the second node proposed the write and then answered an error that is not a refusal (its disk
    filled, the proposal timed out: the outcome is unknown); the first node then refused. The write is
    in doubt, though the last answers were refusals."""
    seen = {"b": 0}

    def leader_b(request: dict) -> object:
        seen["b"] += 1
        if seen["b"] == 1:
            return {**err(request, code, "this write's outcome is unknown"), "refused": False}
        return {**err(request, "storage_full", "disk full; it refuses writes"), "refused": True}

    b = nodes(leader_b)
    slow = iter([0.4])

    def follower_a(request: dict) -> object:
        time.sleep(next(slow, 0))  # slow to answer the first copy only: the hedge goes to B meanwhile
        return {**err(request, "not_leader", "not the leader", b.address), "refused": True}

    a = nodes(follower_a)
    with OneShotClient([a.address, b.address], timeout=1.5) as kv:
        with pytest.raises(Unavailable) as info:
            kv.put("k", "v")
    assert seen["b"] >= 2
    assert info.value.outcome_unknown, str(info.value)


def test_hedging_in_a_process_holding_more_than_1024_descriptors(nodes):
    """QA: ``select.select`` refuses descriptors past 1023 with a ValueError; a program holding many files
    or sockets (a server using the blocking Client) must still get its answer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 1300, f"this test needs 1,300 descriptors (hard limit {hard})"
    store = Store()
    silent = nodes(lambda r: SILENT)
    leader = nodes(store.handle)
    if soft != resource.RLIM_INFINITY and soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the program's own files
    try:
        with OneShotClient([silent.address, leader.address], timeout=6) as kv:
            assert kv.put("k", "v") == 1
            assert kv._conn is not None and kv._conn.sock.fileno() > 1024
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_second_node_that_never_finishes_the_tls_handshake_costs_the_hedge_delay_at_most(nodes, pki):
    """QA: a paused TLS node completes the TCP connect (the kernel does) and never the handshake. The
    hedge's connect to it gave up only at the attempt's deadline, and the first node's answer, there at
    0.4 s, was dropped. Now that connect has HEDGE_SECONDS, and the first node's answer is taken."""
    from kvstore.tls import TlsFiles, server_context

    context = server_context(TlsFiles(pki.cacert, str(pki.dir / "node-1.pem"), str(pki.dir / "node-1.key")))
    asked: list[str] = []

    def slow(request: dict) -> object:
        asked.append(request["t"])
        time.sleep(0.4)
        return ok(request, {"found": True, "value": "v", "ver": 1, "mrev": 1})

    first = nodes(slow, tls=context)
    paused = socket.socket()
    paused.bind(("127.0.0.1", 0))
    paused.listen()  # never accepts: the kernel completes TCP connects, nothing answers the handshake
    try:
        with OneShotClient([first.address, f"127.0.0.1:{paused.getsockname()[1]}"], timeout=6,
                           **pki.files("admin")) as kv:
            started = time.monotonic()
            assert kv.get("k") == "v"
            assert time.monotonic() - started < 1.5
    finally:
        paused.close()
    assert asked == ["get"]  # answered the first time, not asked again


def test_a_client_closed_from_another_thread_during_a_hedge_keeps_no_socket(nodes):
    """QA: ``close()`` closed the first node's connection; the hedge's, not yet the client's, went on,
    and when its node answered it became the client's connection after the close: an open socket on a
    closed client."""
    store = Store()

    def slow_leader(request: dict) -> object:
        time.sleep(0.6)
        return store.handle(request)

    silent = nodes(lambda r: SILENT)
    leader = nodes(slow_leader)
    kv = OneShotClient([silent.address, leader.address], timeout=6)
    outcome: dict[str, object] = {}

    def put() -> None:
        try:
            outcome["result"] = kv.put("k", "v")
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=put)
    thread.start()
    time.sleep(0.4)  # the hedge went out at 0.25 s; the leader answers at about 0.85 s
    kv.close()
    thread.join(5)
    assert not thread.is_alive() and outcome
    assert kv._conn is None or kv._conn.sock.fileno() == -1, "an open socket on a closed client"


def test_a_connect_is_bounded_by_the_connect_timeout_and_a_handshake_by_the_attempt(nodes, monkeypatch):
    """QA: a connect to a host cut off (SYNs dropped) cost a whole attempt timeout (1.7 s). The TCP connect
    now has ``frames.CONNECT_SECONDS``; the socket then gets the attempt's time (a TLS handshake, which
    the node's event loop makes, may take longer than a connect)."""
    import socket

    from kvstore import frames

    leader = nodes(lambda r: ok(r, {"rev": 1}))
    seen: list[float] = []
    real = socket.create_connection

    def create_connection(address, timeout=None, *args, **kwargs):
        seen.append(timeout)
        sock = real(address, timeout, *args, **kwargs)
        return sock

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with OneShotClient([leader.address], timeout=6) as kv:
        assert kv.put("k", "v") == 1
        assert seen and seen[0] <= frames.CONNECT_SECONDS < kv.attempt_timeout


@pytest.mark.parametrize("first_answer,later_answer", [
    (("timeout", "this write's outcome is unknown"), ("storage_full", "disk full; it refuses writes")),
    (("not_leader", "stepped down"), ("unavailable", "no leader known")),
], ids=["timeout-then-full", "stepped-down-then-no-leader"])
def test_a_copy_in_doubt_on_the_second_node_stays_in_doubt_whatever_later_copies_get(nodes, first_answer,
                                                                                     later_answer):
    """QA: the second node is asked again while the first stays silent. Its first copy was answered with
    something other than a refusal on arrival (a timeout after the proposal; failed at a step-down): that
    copy may be applied. A later copy turned away must not erase that: the write stays in doubt, never
    "not applied"."""
    copies = []

    def second_handler(request: dict) -> object:
        copies.append(request)
        code, message = first_answer if len(copies) == 1 else later_answer
        return {**err(request, code, message), "refused": len(copies) > 1}

    second = nodes(second_handler)
    slow = iter([1.0])

    def first_handler(request: dict) -> object:
        time.sleep(next(slow, 0))  # silent for 1 s: the second node gets copies at 0.25 s and ~0.5 s
        return {**err(request, "unavailable", "no leader known"), "refused": True}

    first = nodes(first_handler)
    with OneShotClient([first.address, second.address], timeout=4) as kv:
        with pytest.raises(Unavailable) as caught:
            kv.put("k", "v")
    assert len(copies) >= 2
    assert caught.value.outcome_unknown, str(caught.value)
    assert "may or may not" in str(caught.value), str(caught.value)
