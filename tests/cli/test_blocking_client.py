"""``kvstore.client.Client``, the blocking client for scripts and threads, against fake nodes.

It is ``kvstore.oneshot.OneShotClient`` per calling thread (no event loop behind it), so the checks are
what that adds: a call waiting in one thread does not hold up another thread's calls (each thread has a
connection and a client id of its own, and its writes number from 1); the error classes are the same
objects whichever client raises them; admin and backup requests reach the node; ``close`` ends a call
under way in another thread with ``KVError`` at once rather than letting it retry until its deadline,
and a call after ``close`` raises too. The behaviour they share (retries, redirects, deadlines, TLS) is
``tests/cli/test_oneshot_client.py``'s; real clusters drive this client in the integration tests.
"""
from __future__ import annotations

import copy as copymod
import os
import pickle
import threading
import time

import pytest

from kvstore import client as client_module
from kvstore import errors, oneshot
from kvstore.client import Client, KVError, RequestError
from tests.cli.fakenodes import SILENT, Store, err, ok


def test_one_set_of_error_classes_for_every_client():
    for name in ("KVError", "Unavailable", "RequestError", "Entry"):
        assert getattr(client_module, name) is getattr(errors, name) is getattr(oneshot, name)


def test_a_call_waiting_in_one_thread_does_not_hold_up_another(nodes):
    store = Store()
    release = threading.Event()

    def handler(request):
        if request.get("key") == "slow":
            release.wait(10)
        return store.handle(request)

    node = nodes(handler)
    results: dict[str, object] = {}
    with Client([node.address], timeout=12) as kv:
        slow = threading.Thread(target=lambda: results.update(slow=kv.put("slow", "1")))
        slow.start()
        deadline = time.monotonic() + 5
        while not any(r.get("key") == "slow" for r in node.requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert kv.put("fast", "2") >= 1 and kv.get("fast") == "2"
        assert time.monotonic() - started < 2  # not behind the slow put (released only below)
        assert "slow" not in results
        release.set()
        slow.join(10)
        assert results["slow"] in (1, 2)
    writes = [r for r in node.requests if r["t"] == "put"]
    assert len({r["cid"] for r in writes}) == 2  # a client id per thread
    assert sorted(r["rq"] for r in writes) == [1, 1]  # each numbers its own writes


def test_admin_and_backup_reach_the_node(nodes):
    def handler(request):
        if request["t"] == "admin":
            return ok(request, {"op": request["op"], "node": request["node"], "addr": request["addr"]})
        if request["t"] == "backup":
            return ok(request, {"session": request["session"], "off": request["off"], "data": b"\x00"})
        return err(request, "bad_request", "unexpected")

    node = nodes(handler)
    with Client([node.address], timeout=2) as kv:
        assert kv.admin("member_add", 4, "h:7004") == {"op": "member_add", "node": 4, "addr": "h:7004"}
        assert kv.backup(3, 10) == {"session": 3, "off": 10, "data": b"\x00"}
        with pytest.raises(ValueError, match="unknown admin operation"):
            kv.admin("member_explode")
        refusing = nodes(lambda r: err(r, "bad_request", "node 4 is already a member"))
    with Client([refusing.address], timeout=2) as kv:
        with pytest.raises(RequestError, match="already a member") as refused:
            kv.admin("member_add", 4, "h:7004")
    assert refused.value.code == "bad_request"


def test_close_ends_a_call_under_way_and_refuses_later_ones(nodes):
    node = nodes(lambda r: SILENT)  # accepts, never answers: the call retries until its deadline
    outcome: list[BaseException] = []
    kv = Client([node.address], timeout=30)

    def call():
        try:
            kv.put("k", "v")
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while not node.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    kv.close()
    caller.join(5)  # its attempt times out within 2 s, then it sees the client closed
    assert not caller.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], KVError) and "closed" in str(outcome[0])
    # The put reached the node, which may have applied it: the error says so (QA: a bare KVError,
    # though the write had been applied).
    assert isinstance(outcome[0], errors.Unavailable) and outcome[0].outcome_unknown
    assert "may or may not have been applied" in str(outcome[0])
    with pytest.raises(KVError, match="client is closed"):
        kv.get("k")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_forked_child_writes_under_a_client_id_of_its_own(nodes):
    """QA: a ``Client`` made (and used) before ``os.fork`` gave the child the parent's client id and
    request counter, so the child's writes were taken for retries of the parent's: answered with their
    results and never applied. The child now draws an id of its own, numbers from 1 and opens its own
    connection (the parent's socket is not read by both)."""
    store = Store()
    node = nodes(store.handle)
    with Client([node.address], timeout=10) as kv:
        assert kv.put("parent", "1") == 1
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one put, its revision to the parent, and out without pytest's teardown
            code = 1
            try:
                os.write(write_end, str(kv.put("child", "2")).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        answer = os.read(read_end, 100).decode()
        os.close(read_end)
        assert os.waitstatus_to_exitcode(status) == 0
        assert answer == "2" and kv.put("parent again", "3") == 3
    writes = [(r["key"], r["cid"], r["rq"]) for r in node.requests if r["t"] == "put"]
    parent_id = writes[0][1]
    assert [(key, cid == parent_id, rq) for key, cid, rq in writes] == [
        ("parent", True, 1), ("child", False, 1), ("parent again", True, 2)]


def test_a_copy_of_a_oneshot_client_is_another_client():
    """Pickled to a worker (multiprocessing's spawn) or copied: the copy draws its own client id."""
    original = oneshot.OneShotClient(["127.0.0.1:1"])
    for copy in (pickle.loads(pickle.dumps(original)), copymod.copy(original)):
        assert copy.client_id != original.client_id and copy._conn is None
        assert next(copy._request_ids) == 1


def test_the_blocking_client_has_every_method_of_the_async_client_but_the_callback_ones():
    """README: "Client has the same methods, blocking": member_list and the other admin calls were
    missing. Every public coroutine method of AsyncClient has a plain method of the same name."""
    import inspect

    from kvstore.client import AsyncClient, Client

    wanted = {name for name, member in inspect.getmembers(AsyncClient, inspect.iscoroutinefunction)
              if not name.startswith("_") and name != "aclose"}
    assert {"member_list", "member_add", "member_promote", "member_remove", "move_leader"} <= wanted
    missing = sorted(name for name in wanted if not callable(getattr(Client, name, None)))
    assert missing == [], f"Client lacks {missing}"


def test_a_thread_that_ended_leaves_its_connection_to_the_next(nodes):
    """QA: a thread per request kept a connection per thread open until ``close()`` (300 threads, 301
    connections on the leader; out of file descriptors after ~250). A new thread takes over the
    connection and client id of one that ended; threads alive at once still get one each."""
    store = Store()
    node = nodes(store.handle)
    with Client([node.address], timeout=5) as kv:
        for i in range(40):
            worker = threading.Thread(target=kv.put, args=(f"k{i}", "v"))
            worker.start()
            worker.join(10)
        writes = [r for r in node.requests if r["t"] == "put"]
        assert len(writes) == 40 and len({r["cid"] for r in writes}) == 1
        assert [r["rq"] for r in writes] == list(range(1, 41))  # one client numbering on: exactly-once holds
        assert len(kv._all) == 1
        release = threading.Event()
        entered = threading.Barrier(4)

        def hold(key: str) -> None:
            kv.put(key, "v")
            entered.wait(10)
            release.wait(10)

        alive = [threading.Thread(target=hold, args=(f"h{i}",)) for i in range(3)]
        for thread in alive:
            thread.start()
        entered.wait(10)
        assert len(kv._all) == 3  # (three threads alive at once: three connections)
        release.set()
        for thread in alive:
            thread.join(10)
