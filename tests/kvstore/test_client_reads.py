"""Who reads a client connection's replies: one request at a time the caller reads its own reply (the
reply wakes it directly), otherwise the connection's reader task. These tests run over real TCP on
127.0.0.1 against stand-in nodes, and check each hand-over between the two: a caller cancelled or
timed out while it reads, others joining it, a submitted request arriving while the reader task idles."""
from __future__ import annotations

import contextlib
import functools
import socket

import trio

from kvstore import wire
from kvstore.client import SOLO_CALLS, connect


async def _node(stream, *, delay: float = 0.0, answer=lambda request: True) -> None:
    """A stand-in node: answers each put with rev = its request_id after ``delay`` seconds (in order),
    unless ``answer(request)`` is false, then never. A status request (a client's probe of a silent
    connection) gets figures that name no leader: the probe moves nothing."""
    reader = wire.FrameReader(stream)
    async with trio.open_nursery() as nursery:
        while True:
            frames = await reader.receive_frames()
            if not frames:
                nursery.cancel_scope.cancel()
                return
            for body in frames:
                request = wire.decode_body(body)
                if type(request) is wire.StatusRequest:
                    await stream.send_all(wire.encode_frame(wire.OkReply(id=request.id, result={"leader": None})))
                    continue
                if not answer(request):
                    continue

                async def reply(request=request) -> None:
                    await trio.sleep(delay)
                    try:
                        await stream.send_all(wire.encode_frame(
                            wire.OkReply(id=request.id, result={"rev": request.request_id})))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                nursery.start_soon(reply)


async def _serve(nursery, handler) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


class _StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps of each task, by the name of its function."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1

    def of(self, suffix: str) -> int:
        return sum(n for name, n in self.steps.items() if name.endswith(suffix))


async def test_one_at_a_time_the_reply_wakes_the_caller_and_not_the_reader_task():
    """100 puts one at a time: each caller reads its own reply, so the connection's reader task takes
    no scheduler step (it would take one per reply, then wake the caller in the next pass); every
    put gets its own revision."""
    async with trio.open_nursery() as nursery:
        endpoint = await _serve(nursery, _node)
        async with connect([endpoint], timeout=10) as kv:
            for _ in range(5):
                await kv.put("k", "v")  # (the reader task goes idle after the first)
            counter = _StepCounter()
            trio.lowlevel.add_instrument(counter)
            try:
                revs = [await kv.put("k", "v") for _ in range(100)]
            finally:
                trio.lowlevel.remove_instrument(counter)
            assert revs == list(range(6, 106))
            assert counter.of("_Connection.reader") == 0, counter.steps
        nursery.cancel_scope.cancel()


async def test_a_caller_cancelled_while_it_reads_leaves_the_connection_to_the_next_call():
    """A put cancelled while its caller waits on the socket for the reply: the reply arrives later and
    is dropped, the connection stays (no reconnect), and the next put reads its own reply, not the
    cancelled one's."""
    connections = []

    async def node(stream) -> None:
        connections.append(stream)
        await _node(stream, delay=0.2)

    async with trio.open_nursery() as nursery:
        endpoint = await _serve(nursery, node)
        async with connect([endpoint], timeout=10) as kv:
            assert await kv.put("k", "v") == 1
            with trio.move_on_after(0.05) as scope:
                await kv.put("k", "v")  # request 2: answered after the caller left
            assert scope.cancelled_caught
            assert await kv.put("k", "v") == 3
            assert len(connections) == 1
        nursery.cancel_scope.cancel()


async def test_a_caller_cancelled_while_it_reads_hands_the_reading_to_the_reader_task():
    """Two puts out: the first caller reads the socket (it was alone when it sent), the second waits
    for it to hand over the reply. The first is cancelled before any reply: the reader task must take
    over, or the second would wait for ever."""
    async with trio.open_nursery() as nursery:
        endpoint = await _serve(nursery, functools.partial(_node, delay=0.3))
        async with connect([endpoint], timeout=10) as kv:
            assert await kv.put("k", "v") == 1
            second: list[int] = []

            async def put_second() -> None:
                second.append(await kv.put("k", "v"))

            with trio.move_on_after(0.1):
                async with trio.open_nursery() as both:
                    both.start_soon(kv.put, "k", "v")  # request 2: reads the socket
                    await trio.sleep(0.02)
                    assert kv._conn is not None and kv._conn.caller_reading is not None
                    nursery.start_soon(put_second)  # request 3: outlives the cancel scope
                    await trio.sleep(1)
            with trio.fail_after(5):
                while not second:
                    await trio.sleep(0.01)
            assert second == [3]
        nursery.cancel_scope.cancel()


async def test_a_submitted_put_wakes_the_idle_reader_task():
    """After awaited puts one at a time the reader task idles (each caller reads its own reply). A
    submitted put has no caller to read its reply: the reader task must read it."""
    async with trio.open_nursery() as nursery:
        endpoint = await _serve(nursery, _node)
        async with connect([endpoint], timeout=10) as kv:
            for _ in range(SOLO_CALLS + 2):
                await kv.put("k", "v")
            assert kv._conn is not None and kv._conn.reader_idle
            got = trio.Event()
            outcome: list[object] = []

            def done(result: object) -> None:
                outcome.append(result)
                got.set()

            kv.submit_put("k", "v", done)
            with trio.fail_after(5):
                await got.wait()
            assert outcome == [SOLO_CALLS + 3]
            assert await kv.put("k", "v") == SOLO_CALLS + 4  # and one at a time again after it
        nursery.cancel_scope.cancel()


async def test_a_caller_reading_for_a_node_that_never_answers_moves_on_after_one_attempt():
    """The first node reads requests and never answers; the caller waits on its socket for the reply.
    The watchdog ends that wait after the attempt timeout (by closing the connection), and the retry
    on the second node succeeds long before the call's deadline."""
    async with trio.open_nursery() as nursery:
        silent = await _serve(nursery, functools.partial(_node, answer=lambda request: request.request_id == 1))
        answering = await _serve(nursery, _node)
        async with connect([silent, answering], timeout=6) as kv:
            assert await kv.put("k", "v") == 1  # connected to the silent node, the reader task idle
            started = trio.current_time()
            with trio.fail_after(5):
                assert await kv.put("k", "v") == 2
            elapsed = trio.current_time() - started
            assert kv.attempt_timeout <= elapsed < kv.attempt_timeout + 1, elapsed
        nursery.cancel_scope.cancel()


async def test_no_request_goes_to_a_descriptor_the_watchdog_freed():
    """QA: the watchdog ended a reading caller's wait by closing the stream without failing the
    connection first. Until that caller ran again, another task's request was written straight to the
    closed descriptor's number, which a socket opened meanwhile had taken: the request's bytes reached
    an unrelated socket of the process. Each trial here opens a socketpair the moment the stream is
    closed and puts on the client; the pair must receive nothing."""
    async with trio.open_nursery() as nursery:
        endpoint = await _serve(nursery, functools.partial(_node, answer=lambda request: request.key != "hang"))
        leaked: list[bytes] = []
        windows = 0
        for _ in range(12):  # (whether a trial hits the window depends on the order of trio's batch)
            async with connect([endpoint], timeout=1.5) as kv:
                for _ in range(SOLO_CALLS + 2):
                    await kv.put("k", "v")
                conn = kv._conn
                assert conn is not None and conn.reader_idle
                old_fd = conn.stream.socket.fileno()

                async def hang(kv=kv) -> None:
                    with contextlib.suppress(Exception):
                        await kv.put("hang", "v")  # read by its caller; the watchdog closes at 0.5 s

                async def bystander(kv=kv, conn=conn, old_fd=old_fd) -> None:
                    nonlocal windows
                    with trio.move_on_after(1.5):
                        while conn.stream.socket.fileno() != -1:
                            await trio.sleep(0)
                        a, b = socket.socketpair()
                        try:
                            if a.fileno() != old_fd:
                                return
                            windows += 1
                            with trio.move_on_after(0.3):
                                await kv.put("innocent", "v")
                            b.setblocking(False)
                            with contextlib.suppress(BlockingIOError):
                                leaked.append(b.recv(65536))
                        finally:
                            a.close()
                            b.close()

                async with trio.open_nursery() as trial:
                    trial.start_soon(hang)
                    trial.start_soon(bystander)
            if windows >= 3:
                break
        assert windows >= 1  # (the socketpair took the freed number at least once)
        assert leaked == [], leaked
        nursery.cancel_scope.cancel()
