"""Range answers are built a bounded number of entries per step of the node's driver
(``kvstore.clients.RangeBudget``).

QA (session 26): a client pipelining twenty lists of 90,000 keys on one connection had all twenty built
in one step of the leader's event loop, 1 s in which it heard nothing; the leader changed. Now each
driver step builds range answers until ``RANGE_STEP_ENTRIES`` entries are spent (at least one answer),
and the rest wait, parked on their connection, for the next step, which comes after every other task
ran. Checks, on three in-memory nodes (autojump clock) with the budget made small:

* one connection pipelining lists: each answer is built in a driver step of its own once the budget is
  spent, in the order the requests came, and every answer arrives, each the whole range;
* a get and a put pipelined behind held lists are answered too, the get built after them;
* ``RangeBudget`` alone: a held connection is resumed only with budget left, the driver asked once.
"""
from __future__ import annotations

import trio

from kvstore import clients
from kvstore.client import connect

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, MemCluster


async def test_pipelined_lists_are_built_one_driver_step_each_once_the_budget_is_spent(tmp_path, autojump_clock,
                                                                                       monkeypatch):
    monkeypatch.setattr(clients, "RANGE_STEP_ENTRIES", 250)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = cluster.nodes[await cluster.start_all()]
        async with connect(ENDPOINTS, timeout=30, transport=net.transport()) as kv:
            for i in range(300):
                await kv.put(f"k{i:03d}", f"v{i}")
            built_in_loop: list[int] = []
            built: list[tuple[str, int]] = []  # (kind, request id) in the order the leader built them
            real = clients.read_reply

            def counting(sm, request):
                if sm is leader.learner.sm:
                    built_in_loop.append(leader.counters["driver_loops"])
                    built.append((type(request).__name__, request.id))
                return real(sm, request)

            monkeypatch.setattr(clients, "read_reply", counting)
            answers: dict[int, object] = {}

            async def ask(i: int) -> None:
                if i == 6:
                    answers[i] = await kv.get("k007")
                elif i == 7:
                    answers[i] = await kv.put("late", "x")
                else:
                    answers[i] = await kv.list("k", limit=0 if i % 2 else 300)

            async with trio.open_nursery() as asking:
                for i in range(8):
                    asking.start_soon(ask, i)
                    await trio.sleep(0)  # (in this order on the connection)
        whole = [(f"k{i:03d}", f"v{i}") for i in range(300)]
        assert all(answers[i] == whole for i in range(6))
        assert answers[6] == "v7"
        lists = built_in_loop[:6]
        # 300 entries each against 250 a step: one list per driver step
        assert len(lists) == 6 and all(b > a for a, b in zip(lists, lists[1:], strict=False)), built_in_loop
        # in the order they came, the get (pipelined behind them) after them
        assert [kind for kind, _ in built] == ["ListRequest"] * 6 + ["GetRequest"], built
        assert [rid for _, rid in built] == sorted(rid for _, rid in built), built
        nursery.cancel_scope.cancel()


def test_a_held_connection_is_resumed_only_with_budget_left_and_the_driver_asked_once():
    woken: list[int] = []
    budget = clients.RangeBudget(lambda: woken.append(1))
    resumed: list[str] = []

    class Conn:
        def __init__(self, name: str) -> None:
            self.name = name

        def send_pending(self) -> None:
            resumed.append(self.name)

    a, b = Conn("a"), Conn("b")
    budget.left = 0
    budget.hold(a)
    budget.hold(b)
    budget.hold(a)
    assert budget.waiting == [a, b] and woken == [1]
    budget.resume()
    assert resumed == []  # nothing left this step
    budget.renew()
    budget.resume()
    assert resumed == ["a", "b"] and budget.waiting == [] and not budget.woken
    budget.left = 0
    budget.hold(b)
    assert woken == [1, 1]  # a new wait, a new step asked for
