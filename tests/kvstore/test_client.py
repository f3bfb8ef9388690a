"""Client error surface: what a caller catches is the library's own exception, never a trio group."""
from __future__ import annotations

import functools

import pytest
import trio

from kvstore.client import Unavailable, connect, parse_endpoints

from .memnet import MemoryNetwork


async def _fake_node(net: MemoryNetwork, name: str, port: int, reply_to) -> None:
    """A stand-in node on ``net``: decodes each request and sends ``reply_to(request)`` (None: no answer)."""
    from kvstore import wire

    listener = (await net.transport().open_listeners(name, port))[0]

    async def serve(stream) -> None:
        reader = wire.FrameReader(stream)
        while True:
            frames = await reader.receive_frames()
            if not frames:
                return
            for body in frames:
                reply = reply_to(wire.decode_body(body))
                if reply is not None:
                    await stream.send_all(wire.encode_frame(reply))

    async with trio.open_nursery() as conns:
        while True:
            conns.start_soon(serve, await listener.accept())


async def test_unavailable_reaches_the_caller_unwrapped_outside_the_block(autojump_clock):
    net = MemoryNetwork()  # nobody listens: every connect is refused
    with pytest.raises(Unavailable) as info:
        async with connect(["n1:1"], timeout=1, transport=net.transport()) as kv:
            await kv.put("k", "v")
    assert not info.value.outcome_unknown  # never sent anywhere


async def test_status_of_a_node_that_hangs_up_is_unavailable(autojump_clock):
    net = MemoryNetwork()
    listener = (await net.transport().open_listeners("n1", 1))[0]

    async def hang_up() -> None:
        while True:
            stream = await listener.accept()
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hang_up)
        async with connect(["n1:1"], timeout=1, transport=net.transport()) as kv:
            with pytest.raises(Unavailable):
                await kv.status("n1:1")
        nursery.cancel_scope.cancel()


def test_endpoints_are_checked_before_connecting():
    assert parse_endpoints("a:1, b:2") == [("a", 1), ("b", 2)]
    for bad in ["", "a", "a:", "a:0", "a:65536", ":1", "a:x"]:
        with pytest.raises(ValueError):
            parse_endpoints(bad)


async def test_many_requests_redirected_at_once_do_not_tear_down_each_others_connections(tmp_path, autojump_clock):
    """A fresh client with 64 requests in flight, pointed at a follower first: every request hears
    not_leader (or loses its connection) at about the same time. Each must repair only the connection
    it used, not the one another request just opened to the leader; otherwise the requests take turns
    closing each other's connections and rotating the endpoint, and none gets through."""
    from .test_node_memory import ENDPOINTS, PEERS, MemCluster

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        followers_first = [e for i, e in zip(PEERS, ENDPOINTS) if i != leader]
        followers_first.append(ENDPOINTS[list(PEERS).index(leader)])
        for round_ in range(3):
            done = []
            async with connect(followers_first, timeout=3, transport=net.transport()) as kv:
                async def put(n: int) -> None:
                    await kv.put(f"k{round_}-{n}", "v")
                    done.append(n)

                async with trio.open_nursery() as puts:
                    for n in range(64):
                        puts.start_soon(put, n)
            assert sorted(done) == list(range(64))
        nursery.cancel_scope.cancel()


async def test_hint_to_the_preferred_leader_replaces_a_connection_to_another_node(autojump_clock):
    """The client's connection went to n1 while it already preferred n2 (what four writers sharing one
    client leave behind when one task opens the first connection while another follows a not_leader
    hint). n1 keeps answering not_leader with the hint n2: the client must move to n2, not retry on
    n1 until its deadline (found by the three-node snapshot test in test_node_memory.py: writes failed
    with "no leader" while a leader was up)."""
    from kvstore import wire

    net = MemoryNetwork()
    seen = {"n1": 0, "n2": 0}

    def answer(name: str, leader: bool):
        def reply_to(request):
            seen[name] += 1
            if leader:
                return wire.OkReply(id=request.id, result={"rev": 1})
            return wire.ErrorReply(id=request.id, code=wire.NOT_LEADER, message="not the leader", leader="n2:2")
        return reply_to

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_fake_node, net, "n1", 1, answer("n1", False))
        nursery.start_soon(_fake_node, net, "n2", 2, answer("n2", True))
        await trio.sleep(0.01)
        async with connect(["n1:1", "n2:2"], timeout=5, transport=net.transport()) as kv:
            await kv._connection()  # the connection goes to n1 ...
            kv._preferred = 1  # ... while another task has already switched the preference to n2
            assert await kv.put("k", "v") == 1
        assert seen == {"n1": 1, "n2": 1}
        nursery.cancel_scope.cancel()


async def test_a_node_that_never_answers_costs_one_attempt_not_the_whole_deadline(autojump_clock):
    """The first endpoint accepts the connection and reads requests but never answers (a paused or
    wedged node). The client's watchdog ends that attempt after ``attempt_timeout``; the retry on the
    next endpoint succeeds, long before the call's own deadline."""
    from kvstore import wire

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_fake_node, net, "n1", 1, lambda request: None)  # reads, never answers
        nursery.start_soon(_fake_node, net, "n2", 2, lambda request: wire.OkReply(id=request.id, result={"rev": 7}))
        await trio.sleep(0.01)
        async with connect(["n1:1", "n2:2"], timeout=9, transport=net.transport()) as kv:
            started = trio.current_time()
            with trio.fail_after(30):
                assert await kv.put("k", "v") == 7
            elapsed = trio.current_time() - started
            assert kv.attempt_timeout <= elapsed < kv.attempt_timeout + 1, elapsed
        nursery.cancel_scope.cancel()


async def test_requests_alone_and_in_crowds_over_real_tcp_each_get_their_own_reply():
    """A connection used one request at a time writes each frame straight to the socket; with many
    in flight, the frames of a scheduler pass go out in one write. Switching between the two (and
    the writer task taking what a full socket did not) must keep every frame whole and in order, and
    every reply must reach its own caller: the fake node answers each put with rev = its request id."""
    from kvstore import wire

    seen: list[int] = []

    async def node(stream) -> None:
        reader = wire.FrameReader(stream)
        while True:
            frames = await reader.receive_frames()
            if not frames:
                return
            out = []
            for body in frames:
                request = wire.decode_body(body)  # a torn or interleaved frame would fail here
                seen.append(request.request_id)
                out.append(wire.encode_frame(wire.OkReply(id=request.id, result={"rev": request.request_id})))
            await stream.send_all(b"".join(out))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, node, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with connect([f"127.0.0.1:{port}"], timeout=10) as kv:
            expected: set[int] = set()
            for _ in range(100):  # past SOLO_CALLS: these are written at once
                rev = await kv.put("k", "v")
                expected.add(rev)

            async def crowd(n: int) -> None:
                for _ in range(n):
                    expected.add(await kv.put("k", "x" * 5000))  # big frames fill the socket sooner

            async with trio.open_nursery() as crowds:
                for _ in range(40):
                    crowds.start_soon(crowd, 10)
            for _ in range(100):
                expected.add(await kv.put("k", "v"))
        assert sorted(seen) == sorted(expected) == list(range(1, 601))
        nursery.cancel_scope.cancel()


async def test_a_stale_write_is_reported_as_possibly_applied_and_not_retried(autojump_clock):
    """Code ``stale``: the cluster forgot the write's first outcome, so retrying cannot tell any more."""
    from kvstore import wire

    net = MemoryNetwork()
    seen = []

    def reply_to(request):
        seen.append(request)
        return wire.ErrorReply(id=request.id, code=wire.STALE, message="forgotten", leader=None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_fake_node, net, "n1", 1, reply_to)
        await trio.sleep(0)
        async with connect(["n1:1"], timeout=5, transport=net.transport()) as kv:
            with pytest.raises(Unavailable) as info:
                await kv.put("k", "v")
        assert info.value.outcome_unknown
        assert len(seen) == 1
        nursery.cancel_scope.cancel()
