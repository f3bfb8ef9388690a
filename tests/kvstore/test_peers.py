"""``kvstore.peers.PeerLinks``: what goes out on the peer links, and what a peer's reader lets in.

How: ``PeerLinks`` on a fake node (three members, ``_post`` and ``snapshots.receive_chunk`` recorded);
the outboxes are real ``Outbox``es without a socket, so what is written stays queued and is read back
from their channels and decoded. The incoming side reads frames from a ``wire.FrameReader`` on one end
of a trio memory stream pair. Checks:

* one ``PaxosBatch`` frame per peer per call, a broadcast encoded once for all; a batch too large for
  one frame goes one message per frame, and a message too large alone is dropped and counted;
* after ``stop`` nothing is sent; with ``close_links`` the outboxes are closed as well;
* the reader posts the Paxos messages as they are, in order, one ``_post`` per read, hands snapshot
  chunks over, and refuses (``WireError``) another cluster, a non-member, a member's id with another
  incarnation, and a message or chunk that claims another sender;
* when a peer's link ends, the chunks of its unfinished snapshot transfer are dropped (they can never be
  completed: a resend starts at offset 0), and a finished one leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from kvstore import peers, wire
from kvstore.peers import PeerLinks
from kvstore.snapshots import Snapshots
from paxos import messages as pm
from paxos.ballot import Ballot
from paxos.membership import Config

from .memnet import MemoryNetwork

B = Ballot(1, 1)


class FakeNode:
    def __init__(self) -> None:
        self.node_id = 1
        self.peers = {1: ("n1", 7001), 2: ("n2", 7002), 3: ("n3", 7003)}
        self.counters: dict = defaultdict(int)
        self.options = SimpleNamespace(cluster_id="kv", engine="core")
        self.storage = SimpleNamespace(members={1: "inc-1", 2: "inc-2", 3: "inc-3"}, incarnation="inc-1",
                                       identity_legacy=False)
        config = Config(node_ids=(1, 2, 3))
        self.lost_to: list[int] = []  # Replica.note_messages_lost, once the driver ran the posted call
        self.replica = SimpleNamespace(config=config, applied_slot=0, schedule_through=lambda slot: ((1, 0, config),),
                                       note_messages_lost=self.lost_to.append)
        self.core_calls: list = []  # what the links posted for the driver (kvstore.members.CoreCall)
        self._post_event = self.core_calls.append
        self.members = SimpleNamespace(seen_incarnations={}, seen_features={})
        self.sm = SimpleNamespace(expiry_on=False)  # (client expiry: peers refuse older nodes once it is on)
        self.posted: list[list] = []
        self.chunks: list = []
        self.posted_from_peer: list[bool] = []

        def post(events: list, *, from_peer: bool = False, nbytes: int = 0) -> None:
            self.posted.append(events)
            self.posted_from_peer.append(from_peer)

        self._post = post
        self.links_ended: list[int] = []
        self.links_renewed: list[int] = []
        self.snapshots = SimpleNamespace(receive_chunk=self.chunks.append, drop_partial=self.links_ended.append,
                                         link_renewed=self.links_renewed.append)


def _heartbeat(sender: int = 1, seq: int = 0) -> pm.Heartbeat:
    return pm.Heartbeat(sender=sender, ballot=B, decided_slot=0, seq=seq)


def _hello(node_id: int = 2, cluster_id: str = "kv", incarnation: str = "inc-2", engine: str = "core") -> wire.Hello:
    return wire.Hello(node_id=node_id, cluster_id=cluster_id, incarnation=incarnation, engine=engine)


def _queued(links: PeerLinks, peer_id: int) -> list:
    """The messages queued for ``peer_id``, one list per frame."""
    outbox = links.outboxes[peer_id]
    frames = []
    while True:
        try:
            data = outbox._recv.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return frames
        frames.extend(wire.decode_body(body).messages for body in wire.split_frames(bytearray(data)))


async def test_one_frame_per_peer_and_a_broadcast_is_encoded_once():
    links = PeerLinks(FakeNode())
    encoded = []
    encode = links.encode_frames
    links.encode_frames = lambda to, msgs: encoded.append(to) or encode(to, msgs)
    a, b = _heartbeat(seq=1), _heartbeat(seq=2)
    links.send_now([(2, a), (3, a), (2, b), (3, b)])
    assert _queued(links, 2) == [(a, b)] and _queued(links, 3) == [(a, b)]
    assert len(encoded) == 1, "a broadcast was encoded once per peer"


async def test_a_batch_too_large_for_a_frame_goes_a_message_a_frame_and_one_too_large_alone_is_dropped(monkeypatch):
    monkeypatch.setattr(peers, "PEER_FRAME_BYTES_MAX", 200)
    node = FakeNode()
    links = PeerLinks(node)
    small = [pm.Accept(sender=1, ballot=B, slot=s, value=(b"x" * 60,), decided_slot=0) for s in (1, 2, 3)]
    huge = pm.Accept(sender=1, ballot=B, slot=4, value=(b"x" * 500,), decided_slot=0)
    links.send_now([(2, m) for m in [*small, huge]])
    assert _queued(links, 2) == [(m,) for m in small]
    assert node.counters["oversize_messages_dropped"] == 1


async def test_after_stop_nothing_is_sent_and_closed_links_take_nothing_more():
    links = PeerLinks(FakeNode())
    links.stop(close_links=False)
    links.send_now([(2, _heartbeat())])
    assert _queued(links, 2) == []
    links.stop(close_links=True)
    assert not links.outboxes[2].write(b"late") and not links.outboxes[3].write(b"late")


async def _serve(node: FakeNode, hello: wire.Hello, messages: list) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(b"".join(wire.encode_frame(m) for m in messages))
    await theirs.aclose()
    reader = wire.FrameReader(ours)
    await PeerLinks(node).serve(hello, reader, await reader.receive_frames(), "n2")


async def test_the_reader_posts_the_messages_as_they_are_and_hands_over_snapshot_chunks():
    node = FakeNode()
    a, b, c = _heartbeat(2, 1), _heartbeat(2, 2), _heartbeat(2, 3)
    chunk = wire.SnapshotChunk(sender=2, slot=5, offset=0, total=1, data=b"s")
    await _serve(node, _hello(),
                 [wire.PaxosBatch(messages=(a, b)), chunk, wire.PaxosBatch(messages=(c,))])
    assert [m for read in node.posted for m in read] == [a, b, c]
    assert all(node.posted_from_peer)  # a peer's posts may run inline at any size (Node._post)
    assert node.chunks == [chunk]


@pytest.mark.parametrize("hello, messages", [
    (_hello(cluster_id="other"), []),
    (_hello(node_id=9), []),
    (_hello(node_id=1, incarnation="inc-1"), []),  # ourselves
    (_hello(incarnation="inc-new"), []),  # node 2's directory was wiped (kvstore.identity)
    (_hello(), [wire.PaxosBatch(messages=(_heartbeat(3),))]),
    (_hello(), [wire.SnapshotChunk(sender=3, slot=5, offset=0, total=1, data=b"s")]),
    (dataclasses.replace(_hello(), to=3), []),  # it dialed node 3's address and reached us (node 1)
], ids=["other cluster", "not a member", "ourselves", "another incarnation", "message from another",
        "chunk from another", "meant for another node"])
async def test_the_reader_refuses_strangers_and_impostors(hello, messages):
    node = FakeNode()
    with pytest.raises(wire.WireError):
        await _serve(node, hello, messages)
    assert node.posted == [] and node.chunks == []


@pytest.mark.parametrize("ours, theirs", [("core", "classic"), ("classic", "core")])
async def test_the_reader_refuses_a_peer_of_another_engine(ours, theirs):
    """kv serve --engine: the engines share messages but not rules; the refusal names both engines."""
    node = FakeNode()
    node.options.engine = ours
    with pytest.raises(wire.WireError, match=f"runs the '{theirs}' engine, we run '{ours}'"):
        await _serve(node, _hello(engine=theirs), [wire.PaxosBatch(messages=(_heartbeat(2),))])
    assert node.posted == [] and node.counters["peers_refused_engine"] == 1
    node.options.engine = theirs  # the same engine on both ends is served
    await _serve(node, _hello(engine=theirs), [wire.PaxosBatch(messages=(_heartbeat(2),))])
    assert node.posted == [[_heartbeat(2)]]


async def test_once_client_expiry_is_on_a_peer_without_it_is_refused_and_one_with_it_recorded():
    """A node older than client expiry would apply writes by the older rules (a forgotten client's retry
    executed where the others refuse it): once the cluster switched expiry on, its link is refused, naming
    the feature; before, it is served, and what each peer says it has is recorded for the leader."""
    node = FakeNode()
    await _serve(node, _hello(), [wire.PaxosBatch(messages=(_heartbeat(2),))])  # (off: an older node is served)
    assert node.members.seen_features == {2: ()}
    node.sm.expiry_on = True
    with pytest.raises(wire.WireError, match="node 2 runs a version without the client-expiry feature"):
        await _serve(node, _hello(), [wire.PaxosBatch(messages=(_heartbeat(2, seq=1),))])
    assert node.counters["peers_refused_version"] == 1 and len(node.posted) == 1
    newer = _hello()
    newer.features = wire.FEATURES
    await _serve(node, newer, [wire.PaxosBatch(messages=(_heartbeat(2, seq=2),))])
    assert node.members.seen_features == {2: wire.FEATURES} and len(node.posted) == 2


def test_a_removed_voter_is_still_checked_against_the_configuration_that_governs_before_its_removal():
    """Node 5 joined after founding (no founding record), was promoted (pinned) and is being removed:
    the newest configuration no longer names it, but the older one still governs slots, so a wiped
    node 5 (a new incarnation) is refused; so is one the founding record knows otherwise."""
    from kvstore.peers import recorded_incarnation

    node = FakeNode()
    older = Config(node_ids=(1, 2, 3, 5), epoch=3, incarnations={5: "inc-5"})
    newest = older.remove(5)
    node.replica = SimpleNamespace(config=newest, applied_slot=40,
                                   schedule_through=lambda slot: ((1, 0, older), (50, 34, newest)))
    assert recorded_incarnation(node, 5) == "inc-5"
    assert recorded_incarnation(node, 2) == "inc-2"  # the founding record
    node.storage.members = {1: "inc-1"}
    assert recorded_incarnation(node, 7) is None


async def _first_connection(listener, deadline_s: float = 30.0):
    """The stream of the first connection to ``listener`` (memnet), and the Hello frame read from it."""
    with trio.fail_after(deadline_s):
        stream = await listener.accept()
        reader = wire.FrameReader(stream)
        frames = await reader.receive_frames()
    return stream, wire.decode_body(frames[0])


@pytest.mark.parametrize("old_address_answers", [False, True])
async def test_a_member_whose_address_changes_is_redialed_at_the_new_one(autojump_clock, old_address_answers):
    """A node id added again at another address while its old link was still up (or still dialing a
    dead address) gets its link redialed at the new address on the next ``sync``; the old connection
    is closed. Regression: the sender read the address once, so a learner re-added under a removed id
    at a new port was never reached and never caught up (kv member add 4 A; kv member remove 4;
    kv cluster add)."""
    net = MemoryNetwork()
    node = FakeNode()
    node.transport = net.transport()
    node.options = SimpleNamespace(cluster_id="kv", engine="core", connect_timeout_seconds=1.0,
                                   backoff_seconds_max=1.0)
    old_listener = (await net.transport().open_listeners("n2", 7002))[0] if old_address_answers else None
    new_listener = (await net.transport().open_listeners("n2", 7012))[0]
    links = PeerLinks(node)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(links.run)
        if old_listener is not None:
            old_stream, hello = await _first_connection(old_listener)
            assert hello.node_id == 1
        else:
            await trio.sleep(5)  # it dials the dead address, and backs off, meanwhile
        node.peers[2] = ("n2", 7012)
        links.sync()
        new_stream, hello = await _first_connection(new_listener)
        assert hello.node_id == 1
        links.send_now([(2, _heartbeat(seq=5))])
        with trio.fail_after(5):
            data = await new_stream.receive_some(65536)
        (body,) = wire.split_frames(bytearray(data))
        assert wire.decode_body(body).messages == (_heartbeat(seq=5),)
        if old_listener is not None:
            with trio.fail_after(5):
                assert await old_stream.receive_some(65536) == b"", "the old connection must be closed"
        nursery.cancel_scope.cancel()


def _dialing_node(net: MemoryNetwork) -> FakeNode:
    node = FakeNode()
    node.peers = {1: ("n1", 7001), 2: ("n2", 7002)}
    node.transport = net.transport()
    node.options = SimpleNamespace(cluster_id="kv", engine="core", connect_timeout_seconds=1.0,
                                   backoff_seconds_max=0.1)
    return node


async def test_a_peer_refusing_our_link_is_heard_and_its_words_logged_once_a_minute(autojump_clock, caplog,
                                                                                      monkeypatch):
    """The node dialed sends one ErrorReply before it hangs up on a link it refuses (another cluster or
    engine, an incarnation or certificate it does not take, TLS only): the dialing node logs those words
    (its log said only "link to node 2 lost"), counts it, and redials; the same refusal again within a
    minute is left out of the log. Regression (QA): a node started without TLS in a TLS cluster never
    learned why its links failed."""
    monkeypatch.setattr(peers, "_REFUSALS_HEARD", peers.tls.LogThrottle(60.0))
    net = MemoryNetwork()
    node = _dialing_node(net)
    listener = (await net.transport().open_listeners("n2", 7002))[0]
    links = PeerLinks(node)
    refusal = "peer is in cluster 'kv', we are 'other'"
    caplog.set_level("INFO", logger="kvstore.server")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(links.run)
        for _ in range(3):
            stream, hello = await _first_connection(listener)
            assert hello.node_id == 1
            await stream.send_all(wire.encode_frame(wire.ErrorReply(id=None, code=wire.PROTOCOL, message=refusal,
                                                                    leader=None)))
            await stream.aclose()
        # and it goes on redialing, backing off as after a failed connect
        dials = 0
        with trio.move_on_after(5):
            while dials < 1000:  # (a hot loop gets there without the clock moving)
                stream, _ = await _first_connection(listener)
                await stream.send_all(wire.encode_frame(wire.ErrorReply(id=None, code=wire.PROTOCOL,
                                                                        message=refusal, leader=None)))
                await stream.aclose()
                dials += 1
        assert 10 <= dials <= 5 / (0.5 * node.options.backoff_seconds_max) + 5, dials  # (not a hot loop)
        nursery.cancel_scope.cancel()
    heard = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert heard == [f"node 1: link to node 2 refused: {refusal}"]
    assert node.counters["peer_links_refused"] >= 3
    assert not [r for r in caplog.records if "link to node 2 lost" in r.getMessage()]


async def test_a_link_the_peer_closed_is_redialed_without_waiting_for_a_write(autojump_clock, caplog):
    """A peer that hangs up (it restarted, or dropped an older link of ours) is redialed at once: before,
    the sender noticed only when its next write failed."""
    net = MemoryNetwork()
    node = _dialing_node(net)
    listener = (await net.transport().open_listeners("n2", 7002))[0]
    links = PeerLinks(node)
    caplog.set_level("INFO", logger="kvstore.server")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(links.run)
        stream, _ = await _first_connection(listener)
        await stream.aclose()
        with trio.fail_after(1):  # (nothing is sent meanwhile)
            await _first_connection(listener)
        nursery.cancel_scope.cancel()
    assert node.counters["peer_links_refused"] == 0
    assert [r.getMessage() for r in caplog.records if "link to node 2 lost" in r.getMessage()] == [
        "link to node 2 lost: the peer closed the connection"]


async def test_a_peer_removed_while_its_sender_fails_to_connect_does_not_take_the_node_down(autojump_clock):
    """The driver closes a removed peer's outbox (``sync``) in the same scheduler pass in which the
    sender's connect fails: the sender then drops the closed outbox's backlog before its next
    checkpoint. It raised ``EndOfChannel`` there, which ended ``PeerLinks.run`` and the node with it
    (soak: "Error: ExceptionGroup" in a node's log, right after "no longer a member")."""
    node = FakeNode()
    links = PeerLinks(node)

    class Refusing:
        async def connect(self, host, port):
            await trio.lowlevel.checkpoint()
            links.outboxes[2].close()  # (as sync() does for a removed member, before the sender runs on)
            raise OSError("connection refused")

    node.transport = Refusing()
    node.options = SimpleNamespace(cluster_id="kv", engine="core", connect_timeout_seconds=1.0,
                                   backoff_seconds_max=0.1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(links.run)
        await trio.sleep(2)  # many failed connects; the run must still be going
        nursery.cancel_scope.cancel()


async def test_a_link_that_ends_mid_transfer_drops_the_chunks_it_brought():
    node = FakeNode()
    node.snapshots = snapshots = Snapshots(node)  # type: ignore[assignment]
    node._post_event = lambda event: None  # (a finished transfer posts SnapshotReceived)
    first = wire.SnapshotChunk(sender=2, slot=5, offset=0, total=10, data=b"abcde")
    await _serve(node, _hello(), [first])
    assert snapshots._inbox == {}, "a dead sender's half transfer was kept"
    assert node.counters["snapshot_transfers_cut"] == 1
    whole = wire.SnapshotChunk(sender=2, slot=6, offset=0, total=5, data=b"abcde")
    await _serve(node, _hello(), [whole])
    assert snapshots._inbox == {} and node.counters["snapshot_transfers_cut"] == 1


async def test_every_link_end_is_reported_once():
    node = FakeNode()
    await _serve(node, _hello(), [wire.PaxosBatch(messages=(_heartbeat(2),))])
    assert node.links_ended == [2]


async def test_a_dialed_peer_socket_gives_up_on_data_unacknowledged_for_the_user_timeout():
    """QA: after a partition healed, a dialed link kept retransmitting on a 45 s timer (the majority
    rested on one node meanwhile). Dialed links get TCP_USER_TIMEOUT, also under TLS (the socket of
    the transport stream), so the kernel ends such a link and it is redialed."""
    import socket as socketmod

    if not hasattr(socketmod, "TCP_USER_TIMEOUT"):
        pytest.skip("TCP_USER_TIMEOUT is Linux's")
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stream = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
    try:
        for wrapped in (stream, SimpleNamespace(transport_stream=stream)):  # plain, and as a TLS stream
            stream.socket.setsockopt(socketmod.IPPROTO_TCP, socketmod.TCP_USER_TIMEOUT, 0)
            peers.set_nodelay(wrapped, user_timeout_ms=peers.PEER_USER_TIMEOUT_MS)
            assert stream.socket.getsockopt(socketmod.IPPROTO_TCP, socketmod.TCP_USER_TIMEOUT) == 10_000
            assert stream.socket.getsockopt(socketmod.IPPROTO_TCP, socketmod.TCP_NODELAY)
    finally:
        await stream.aclose()
        listener.close()


async def test_a_dialed_link_the_kernel_gave_up_on_is_not_logged_as_closed_by_the_peer():
    """QA: when TCP_USER_TIMEOUT ended a link, the log said "the peer closed the connection"."""
    class TimedOut(trio.abc.ReceiveStream):
        async def receive_some(self, max_bytes=None):
            raise trio.BrokenResourceError("socket connection broken") from TimeoutError(110, "Connection timed out")

        async def aclose(self):
            pass

    error = await peers._read_refusal(TimedOut())
    assert isinstance(error, TimeoutError) and "timed out" in str(error)
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.aclose()
    assert await peers._read_refusal(ours) is None  # a clean end: closed by the peer


async def test_no_new_snapshot_goes_to_a_peer_whose_link_still_holds_a_peer_queue_s_worth():
    """Stalled-peer QA (re-run): a snapshot's chunks pass the link's bytes bound, and each new snapshot
    went to a lazy learner that had not read the last one yet, so a slow reader piled them up."""
    started: list = []
    node = FakeNode()
    node.storage = SimpleNamespace(snapshot_slot=7)
    node._fenced = False
    node.nursery = SimpleNamespace(start_soon=lambda fn, peer_ids, slot: started.append(list(peer_ids)))
    node.peer_links = PeerLinks(node)
    snapshots = Snapshots(node)
    node.peer_links.outboxes[3].write(b"x" * peers.PEER_BACKLOG_BYTES_MAX, bytes_bounded=False)
    snapshots.send_soon([2, 3])
    assert started == [[2]]


async def test_the_same_snapshot_goes_again_only_after_resend_seconds_unless_the_link_was_made_anew(autojump_clock):
    """A lagging peer asks for our snapshot on every message until it has it; the same one goes again only
    ``RESEND_SECONDS`` after the last send, unless our link to it was made anew meanwhile, which lost
    what the last one held (QA: a learner killed while its first snapshot arrived waited 6-9 s)."""
    from kvstore import snapshots as snapshots_module

    started: list = []
    node = FakeNode()
    node.storage = SimpleNamespace(snapshot_slot=7, read_snapshot=lambda: None)
    node._fenced = False
    node.nursery = SimpleNamespace(start_soon=lambda fn, peer_ids, slot: started.append(list(peer_ids)))
    node.peer_links = PeerLinks(node)
    snapshots = Snapshots(node)
    snapshots._resend_after[2] = (7, trio.current_time() + snapshots_module.RESEND_SECONDS)  # (sent just now)
    snapshots.send_soon([2])
    assert started == []  # held back
    snapshots.link_renewed(2)
    snapshots.send_soon([2])
    assert started == [[2]]


async def test_the_core_hears_of_messages_lost_on_a_reconnect_and_on_a_full_queue(autojump_clock):
    """Over TCP a peer loses our messages only with its link (what the last connection held) or when its
    queue has no room: the core, which holds resends back from a peer that answers
    (``Options.patient_resends``), must hear of both (``Replica.note_messages_lost``), once per burst."""
    net = MemoryNetwork()
    node = _dialing_node(net)
    listener = (await net.transport().open_listeners("n2", 7002))[0]
    links = PeerLinks(node)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(links.run)
        stream, hello = await _first_connection(listener)
        assert hello.node_id == 1
        for call in node.core_calls:
            call.run()
        assert node.lost_to == [2]  # the connection is new: what the last one held is gone
        assert node.links_renewed == [2]  # (a snapshot on its way too: it may go again at once)
        node.core_calls.clear()
        outbox = links.outboxes[2]
        outbox.limit = 0  # no room: every frame is dropped
        outbox.detach()  # (so that writes queue, and count against the limit)
        links.send_now([(2, _heartbeat(seq=s)) for s in range(3)])
        links.send_now([(2, _heartbeat(seq=9))])
        assert node.counters["peer_queue_full_drops"] >= 2
        assert len(node.core_calls) == 1  # one call for the burst
        node.core_calls[0].run()
        assert node.lost_to == [2, 2]
        nursery.cancel_scope.cancel()


class _TcpInfoSocket:
    """A socket whose TCP_INFO says what the test sets: packets unacknowledged, ms since the last ACK."""

    def __init__(self) -> None:
        self.unacked = 0
        self.last_ack_ms = 0
        self.linger: bytes | None = None

    def getsockopt(self, level, option, size):
        import socket
        import struct

        assert (level, option) == (socket.IPPROTO_TCP, socket.TCP_INFO)
        info = bytearray(size)
        struct.pack_into("I", info, 24, self.unacked)
        struct.pack_into("I", info, 56, self.last_ack_ms)
        return bytes(info)

    def setsockopt(self, level, option, value):
        import socket

        assert (level, option) == (socket.SOL_SOCKET, socket.SO_LINGER)
        self.linger = value


class _Stream:
    def __init__(self, sock) -> None:
        self.socket = sock


async def test_a_dialed_link_without_tcp_acknowledgements_is_aborted_and_an_acknowledged_one_is_kept(
        autojump_clock):
    """QA (network namespaces): a link that stalled in a cut came back only at TCP's next retransmission
    after the heal (up to 3 s), and then delivered messages seconds old. A link with data unacknowledged
    for the stall limit is now aborted (SO_LINGER 0: its queued bytes are dropped) and redialed; one whose
    ACKs keep coming (a busy or paused peer's kernel still acknowledges) is kept, and so is one that was
    idle for long before it sent."""
    import struct

    from kvstore.peers import _stalled

    sock = _TcpInfoSocket()

    async def drive(limit: float, steps) -> tuple[str | None, float]:
        started = trio.current_time()
        result: list[str | None] = []
        ended: list[float] = []

        async def watch() -> None:
            result.append(await _stalled(_Stream(sock), limit))
            ended.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for unacked, last_ack_ms, seconds in steps:
                sock.unacked, sock.last_ack_ms = unacked, last_ack_ms
                await trio.sleep(seconds)
                if result:
                    break
            nursery.cancel_scope.cancel()
        return (result[0] if result else None), (ended[0] if ended else trio.current_time()) - started

    # ACKs keep coming while data is in flight (a busy link): kept for 5 s
    reason, _ = await drive(1.0, [(3, 10, 5.0)])
    assert reason is None and sock.linger is None
    # idle for an hour (the last ACK is old), then data goes out and is acknowledged at once: kept
    reason, _ = await drive(1.0, [(0, 3_600_000, 1.0), (2, 3_600_000, 0.3), (0, 5, 2.0)])
    assert reason is None and sock.linger is None
    # data in flight and no ACK since: aborted once both have lasted the limit
    reason, took = await drive(1.0, [(4, 100, 0.5), (4, 700, 0.3), (4, 1100, 0.3), (4, 1500, 2.0)])
    assert reason is not None and "nothing sent was acknowledged" in reason
    assert 1.0 <= took <= 1.6, took
    assert sock.linger == struct.pack("ii", 1, 0)
