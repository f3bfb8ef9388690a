"""Peer links: the node's connections to the other members, one way each.

Theory of operation
-------------------
Each node dials every other node and only *sends* on the connection it dialed (after a ``Hello``
naming itself and its cluster); it only *receives* on connections others dialed, except the one frame a
peer sends on a link it refuses, just before it hangs up (``_run_link`` reads it, to log why). So a
peer link is:

* **outgoing**: an ``Outbox`` per peer and a sender task (``_sender``) that dials, says Hello, and
  sends what the socket did not take at once. ``send_now`` encodes the messages of one batch into one
  ``PaxosBatch`` frame per peer (a broadcast is encoded once for all; a frame over
  ``PEER_FRAME_BYTES_MAX`` is split per message) and writes it straight to each socket
  (``Outbox.write``, no task hop). A sender reconnects with capped exponential back-off; while a link
  is down, messages to that peer are dropped, which Paxos tolerates (the core retransmits through
  heartbeats and catch-up). At most 10,000 frames wait for a slow link; later ones are dropped;
* **incoming**: ``serve``, the reader task of a connection whose first frame was a peer's ``Hello``
  (``kvstore.clients`` accepts every connection), one per peer (a newer connection from a member ends
  the older: a member redials only once its link is dead, and without TLS anyone can say Hello). It
  checks that each message's sender is the peer that said Hello (and, with TLS, that its certificate
  names that member: ``kvstore.tls.check_peer``; a link we dial must reach the certificate of the
  member dialed), hands the Paxos messages to the node (``Node._post``) as the message objects the
  wire decoder made, and snapshot chunks to ``kvstore.snapshots``.

Rules: this module never decides what to send or when (the driver does, after the fsync that covers
it: see ``Node._carry_out``); it never touches the storage, and it calls into the ``Replica`` only
through ``Node._post``, whose inline path runs while the node is quiet (see kvstore/server.py). After
``stop`` (the node's disk failed) nothing more is sent; with ``close_links`` the sender tasks end and
the outboxes close, which makes the silence plain to the peers.
"""
from __future__ import annotations

import logging
import random
import socket
import ssl
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from paxos.messages import Message

from . import identity, tls, wire
from .members import CoreCall
from .netio import Outbox
from .storage import StorageError

if TYPE_CHECKING:
    from .server import Node

__all__ = ["PeerLinks", "PEER_FRAME_BYTES_MAX", "set_nodelay", "remote_name"]

log = logging.getLogger("kvstore.server")

# Peers are members that said Hello with our cluster id; their frames may carry whole batches of
# values (a slot holds up to batch_count_max commands of up to 1 MiB each), so their limit is higher
# than a client's.
PEER_FRAME_BYTES_MAX = 256 * 1024 * 1024
# Frames that wait for one slow peer link, and their bytes; the rest are dropped (the core retransmits,
# a peer far behind catches up). Snapshot chunks count toward the frames only (one snapshot at a time).
PEER_BACKLOG_FRAMES_MAX = 10_000
PEER_BACKLOG_BYTES_MAX = 64 * 1024 * 1024
# A link we dialed whose data stays unacknowledged this long is dropped by the kernel and redialed
PEER_USER_TIMEOUT_MS = 10_000
# The first reconnect delay (doubled per failure up to ServerOptions.backoff_seconds_max)
BACKOFF_SECONDS_MIN = 0.02
# A link we dialed that has had data in flight with no TCP acknowledgement for this long (the peer's
# kernel acknowledges whatever its process does, paused or busy: so the path or the host is gone) is
# aborted, its queued bytes dropped, and redialed (``_stalled``); and how often that is looked at.
# QA (network namespaces): a link that stalled in a cut came back only at TCP's next retransmission after
# the heal (exponential back-off: up to 3 s later), and delivered messages seconds old when it did (a
# handover's Prepare that deposed the leader elected meanwhile).
PEER_STALL_SECONDS_MIN = 1.0
PEER_STALL_CHECK_SECONDS = 0.2
_TCP_INFO_BYTES = 104  # struct tcp_info up to tcpi_last_ack_recv and beyond (Linux)
_TCPI_UNACKED = 24  # byte offsets of two u32 fields of struct tcp_info
_TCPI_LAST_ACK_RECV = 56


def _peer_outbox() -> Outbox:
    return Outbox(limit=PEER_BACKLOG_FRAMES_MAX, bytes_limit=PEER_BACKLOG_BYTES_MAX)


# A peer's refusals of our links, in the log once a minute per peer and reason (we redial every 0.1 s)
_REFUSALS_HEARD = tls.LogThrottle(60.0)
# The most a peer's refusal frame may take (its message is a line of text)
_REFUSAL_FRAME_BYTES_MAX = 64 * 1024


async def _read_refusal(stream: trio.abc.ReceiveStream) -> str | BaseException | None:
    """What the peer at the other end of a link we dialed says when it refuses it (an ``ErrorReply``'s
    message); None when the connection ends without one (or with anything else); the error when it
    fails (QA: a link the kernel gave up on, TCP_USER_TIMEOUT, was logged as closed by the peer)."""
    reader = wire.FrameReader(stream, _REFUSAL_FRAME_BYTES_MAX)
    try:
        frames = await reader.receive_frames()
        while frames:
            for message in wire.decode_bodies(frames):
                if type(message) is wire.ErrorReply:
                    return message.message
            frames = await reader.receive_frames()
    except (trio.BrokenResourceError, OSError) as exc:
        return exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    except (wire.WireError, trio.ClosedResourceError):
        pass
    return None


async def _stalled(stream: object, limit_seconds: float) -> str | None:
    """Return why once data sent on ``stream`` (a TCP stream we dialed) has gone unacknowledged for
    ``limit_seconds``, after aborting the connection (a reset: what the kernel still holds for it is
    dropped, not delivered late); None at once if the socket says nothing of that (not TCP, not Linux)."""
    sock = getattr(stream, "socket", None)
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    limit_ms = limit_seconds * 1000
    unacked_since: float | None = None
    while True:
        await trio.sleep(PEER_STALL_CHECK_SECONDS)
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
        except OSError:
            return None  # (closed meanwhile: the sender's task says why)
        if len(info) < _TCPI_LAST_ACK_RECV + 4:
            return None
        unacked = struct.unpack_from("I", info, _TCPI_UNACKED)[0]  # (native byte order, as the kernel's)
        if not unacked:
            unacked_since = None
            continue
        now = trio.current_time()
        if unacked_since is None:
            unacked_since = now  # (the last ACK of a link idle until now is old: count from here)
            continue
        last_ack_ms = struct.unpack_from("I", info, _TCPI_LAST_ACK_RECV)[0]
        if (now - unacked_since) * 1000 >= limit_ms and last_ack_ms >= limit_ms:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            return f"nothing sent was acknowledged for {last_ack_ms / 1000:.1f}s (the path or the host is gone)"


def set_nodelay(stream: object, *, user_timeout_ms: int = 0) -> None:
    """TCP_NODELAY on ``stream``'s socket (a TLS stream's: its transport's), and with ``user_timeout_ms``
    (Linux) TCP_USER_TIMEOUT: the kernel gives up on the connection once data sent stays unacknowledged
    that long, so a link that a partition left half open ends and is redialed. (QA: after a partition
    healed, a link kept retransmitting on a 45 s timer for 47 s, and the majority rested on one node.)"""
    sock = getattr(stream, "socket", None) or getattr(getattr(stream, "transport_stream", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if user_timeout_ms and hasattr(socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
        except OSError:
            pass


def recorded_incarnation(node: Node, peer: int) -> str | None:
    """The incarnation the cluster knows ``peer`` as: the newest record in any configuration that still
    governs a slot this node has not compacted (a voter removed or replaced keeps governing the slots
    before its removal takes effect, and its votes there must come from the disk it had), else the
    founding record (``kvstore.identity``). None when nothing records it (a learner not promoted yet:
    its votes count for nothing)."""
    replica = node.replica
    configs = [replica.config]
    configs.extend(c for _e, _s, c in reversed(replica.schedule_through(replica.applied_slot)))
    for config in configs:
        found: str | None = config.incarnations.get(peer)
        if found:
            return found
    return (node.storage.members or {}).get(peer)


def remote_name(stream: object) -> str:
    """``host:port`` of the other end of ``stream``, for log lines; ``?`` if it has none."""
    # (a TLS stream's socket is its transport stream's: kvstore.tls)
    sock = getattr(stream, "socket", None) or getattr(getattr(stream, "transport_stream", None), "socket", None)
    if sock is None:
        return "?"
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except Exception:
        return "?"


class PeerLinks:
    """The links of node ``node`` (a ``kvstore.server.Node``) to its peers (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.node_id = node.node_id
        self.counters = node.counters
        self.outboxes: dict[int, Outbox] = {p: _peer_outbox() for p in node.peers if p != node.node_id}
        self._lost_pending: set[int] = set()  # peers whose lost messages the core has yet to hear of
        self.stopped = False  # the node's disk failed: nothing more leaves (see stop)
        self._scope = trio.CancelScope()  # the sender tasks
        self._nursery: trio.Nursery | None = None
        self._sender_scopes: dict[int, trio.CancelScope] = {}
        self._dialing: dict[int, tuple[str, int]] = {}  # peer -> the address its sender task dials
        # peer -> the scope of its incoming connection's reader (serve): one per peer, the newest
        self._incoming: dict[int, trio.CancelScope] = {}

    def sync(self) -> None:
        """The node's address book changed (a membership change, kvstore.members): open links to new
        members, close the links of members that left, and redial a member whose address changed (a
        node id added again at another address while its old link was still open)."""
        node = self.node
        wanted = {p for p in node.peers if p != self.node_id}
        for peer in wanted - set(self.outboxes):
            self.outboxes[peer] = _peer_outbox()
            if self._nursery is not None and not self.stopped:
                self._nursery.start_soon(self._sender, peer)
        for peer in wanted & set(self._dialing):
            if self._dialing[peer] != node.peers[peer] and self._nursery is not None and not self.stopped:
                log.info("node %d: node %d's address is now %s:%d; redialing", self.node_id, peer, *node.peers[peer])
                scope = self._sender_scopes.pop(peer, None)
                if scope is not None:
                    scope.cancel()
                self.outboxes[peer].detach()
                self._dialing.pop(peer)
                self._nursery.start_soon(self._sender, peer)
        for peer in set(self.outboxes) - wanted:
            outbox = self.outboxes.pop(peer)
            outbox.detach()
            outbox.close()
            scope = self._sender_scopes.pop(peer, None)
            if scope is not None:
                scope.cancel()
            self._dialing.pop(peer, None)
            log.info("node %d: closed the link to node %d, no longer a member", self.node_id, peer)

    # -----------------------------------------------------------------------------------------------
    # outgoing

    def send_now(self, sends: Sequence[tuple[int, Message]]) -> None:
        """Send ``(to, message)`` pairs: one frame per peer (split if huge), written at once."""
        if not sends or self.stopped:
            return
        per_peer: dict[int, list[Message]] = {}
        for to, message in sends:
            msgs = per_peer.get(to)
            if msgs is None:
                per_peer[to] = [message]
            else:
                msgs.append(message)
        encoded: dict[tuple[int, ...], list[bytes]] = {}  # a broadcast batch is encoded once for every peer
        for to, msgs in per_peer.items():
            outbox = self.outboxes.get(to)
            if outbox is None:
                continue
            same = tuple(map(id, msgs))
            frames = encoded.get(same)
            if frames is None:
                frames = encoded[same] = self.encode_frames(to, msgs)
            for frame in frames:
                if not outbox.write(frame):
                    self.counters["peer_queue_full_drops"] += 1
                    self._lost(to)

    def _lost(self, peer_id: int) -> None:
        """Messages to ``peer_id`` were lost here: the core resends what that peer still lacks on its
        next resends, whether the peer answers meanwhile or not (``Replica.note_messages_lost``), in
        the driver, which alone feeds the core."""
        if peer_id in self._lost_pending:
            return  # (one event for a burst of drops)
        self._lost_pending.add(peer_id)

        def tell_the_core() -> None:
            self._lost_pending.discard(peer_id)
            self.node.replica.note_messages_lost(peer_id)

        self.node._post_event(CoreCall(tell_the_core))

    def encode_frames(self, to: int, msgs: list[Message]) -> list[bytes]:
        """The frames for ``msgs`` to peer ``to``: one, or one per message if that is too large (a
        message too large alone is dropped, counted and logged)."""
        try:
            return [wire.encode_frame(wire.PaxosBatch(messages=tuple(msgs)), PEER_FRAME_BYTES_MAX)]
        except wire.FrameTooLarge:
            pass
        frames = []
        for m in msgs:
            try:
                frames.append(wire.encode_frame(wire.PaxosBatch(messages=(m,)), PEER_FRAME_BYTES_MAX))
            except wire.FrameTooLarge:
                self.counters["oversize_messages_dropped"] += 1
                log.error("dropped a %s to node %d larger than %d bytes", type(m).__name__, to,
                          PEER_FRAME_BYTES_MAX)
        return frames

    def write_frames(self, peer_id: int, frames: list[bytes]) -> bool:
        """Queue ``frames`` (encoded already, e.g. snapshot chunks) for ``peer_id`` in order; False if the
        link dropped one (and the rest with it)."""
        outbox = self.outboxes[peer_id]
        for frame in frames:
            if not outbox.write(frame, bytes_bounded=False):
                return False
        return True

    def stop(self, *, close_links: bool) -> None:
        """Send nothing more. With ``close_links`` also end the sender tasks and close the outboxes:
        frames queued already were produced before the failure, after their own fsyncs, so they could
        go, but closing the links makes the silence plain to the peers."""
        self.stopped = True
        if close_links:
            for outbox in self.outboxes.values():
                outbox.detach()  # no more direct writes (see Outbox.write)
                outbox.close()
            self._scope.cancel()

    async def run(self) -> None:
        """One sender task per peer, until the node stops or the links are stopped."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer_id in self.outboxes:
                    nursery.start_soon(self._sender, peer_id)
                await trio.sleep_forever()  # senders of members added later start here too (sync)

    async def _sender(self, peer_id: int) -> None:
        """Dial ``peer_id`` and keep its link open, reconnecting with capped back-off.

        While the link is up, ``Outbox.write`` sends straight to its socket; this task sends only what
        the socket could not take at once. While it is down, messages to the peer are dropped (Paxos
        tolerates loss: the core retransmits through heartbeats and catch-up).
        """
        with trio.CancelScope() as scope:
            self._sender_scopes[peer_id] = scope
            await self._send_loop(peer_id)

    async def _send_loop(self, peer_id: int) -> None:
        node = self.node
        options = node.options
        host, port = self._dialing[peer_id] = node.peers[peer_id]
        outbox = self.outboxes[peer_id]
        backoff = BACKOFF_SECONDS_MIN
        hello = wire.encode_frame(wire.Hello(node_id=self.node_id, cluster_id=options.cluster_id,
                                             incarnation=node.storage.incarnation,
                                             engine=options.engine, features=wire.FEATURES, to=peer_id))
        while True:
            outbox.drop_backlog()
            try:
                with trio.fail_after(options.connect_timeout_seconds):
                    stream = await node.transport.connect(host, port)
                await tls.check_dialed(stream, peer_id, self.counters)  # with TLS: the certificate of peer_id
            except (OSError, trio.TooSlowError) as exc:
                if isinstance(exc, ssl.SSLError):
                    # Reached, but the TLS handshake failed (a member without --cert answers TLS with
                    # its plaintext frames; a certificate the peer does not take): not mended by
                    # redialing, so say so, once a minute per peer and reason.
                    self._log_refusal(peer_id, f"the TLS handshake with {host}:{port} failed: {exc}"
                                      + (" (the member does not serve TLS: was it started without --cacert, "
                                         "--cert and --key?)" if "WRONG_VERSION_NUMBER" in str(exc) else ""))
                outbox.drop_backlog()
                await trio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, options.backoff_seconds_max)
                continue
            lost: BaseException | None = None
            try:
                async with stream:
                    set_nodelay(stream, user_timeout_ms=PEER_USER_TIMEOUT_MS)
                    # What was queued for an earlier connection may end in half a frame: drop it, so
                    # this connection starts with whole frames.
                    outbox.drop_backlog()
                    await stream.send_all(hello)
                    raw_stream = outbox.attach(stream)  # (a TLS stream's TCP stream: the outbox seals)
                    self._lost(peer_id)  # (what the last connection held is gone)
                    node.snapshots.link_renewed(peer_id)
                    try:
                        lost = await self._run_link(peer_id, stream, raw_stream, outbox)
                    finally:
                        outbox.detach()  # before the stream closes its descriptor
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                lost = exc
            if lost is None:
                # Refused (and logged): redialing mends that only once someone fixes the setup, so back
                # off as after a failed connect rather than redial at once.
                await trio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, options.backoff_seconds_max)
                continue
            backoff = BACKOFF_SECONDS_MIN
            log.info("link to node %d lost: %s", peer_id, lost)
            await trio.sleep(backoff)

    async def _run_link(self, peer_id: int, stream: trio.abc.Stream, raw_stream: trio.abc.Stream,
                        outbox: Outbox) -> BaseException | None:
        """Send on a link we dialed until it fails (returns why) or the peer refuses it (logged; None).

        A link we dialed carries nothing back, except the peer's one frame refusing it before it hangs
        up (``kvstore.clients``: another cluster or engine, not a member, an incarnation or certificate
        it does not take, a TLS-only node dialed without TLS). So a task listens for that frame: the
        refusal's words reach this node's log, where the misconfigured node's operator looks (the log
        used to say only "link lost"), and a link the peer closed is redialed at once instead of at
        the next write."""
        failed: list[BaseException] = []

        async def send(cancel_scope: trio.CancelScope) -> None:
            try:
                await outbox.run(raw_stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                failed.append(exc.__cause__ if isinstance(exc.__cause__, OSError) else exc)  # (as hear's)
            cancel_scope.cancel()

        async def hear(cancel_scope: trio.CancelScope) -> None:
            refusal = await _read_refusal(stream)
            if refusal is None:
                failed.append(ConnectionError("the peer closed the connection"))
            elif isinstance(refusal, BaseException):
                failed.append(refusal)  # e.g. TimeoutError: data unacknowledged for PEER_USER_TIMEOUT_MS
            else:
                self.counters["peer_links_refused"] += 1
                self._log_refusal(peer_id, refusal)
            cancel_scope.cancel()

        async def stalled(cancel_scope: trio.CancelScope) -> None:
            reason = await _stalled(raw_stream, self._stall_seconds())
            if reason is not None:
                self.counters["peer_links_stalled"] += 1
                failed.append(TimeoutError(reason))
                cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, nursery.cancel_scope)
            nursery.start_soon(hear, nursery.cancel_scope)
            nursery.start_soon(stalled, nursery.cancel_scope)
        return failed[0] if failed else None

    def _stall_seconds(self) -> float:
        """How long a link may go without a TCP acknowledgement: three election timeouts, a second at least."""
        options = self.node.options
        election = getattr(options, "election_timeout_ticks", 0) * getattr(options, "tick_seconds", 0.0)
        return max(PEER_STALL_SECONDS_MIN, 3 * election)

    def _log_refusal(self, peer_id: int, reason: str) -> None:
        more = _REFUSALS_HEARD.allow(f"{peer_id} {reason}")
        if more is not None:
            log.warning("node %d: link to node %d refused: %s%s", self.node_id, peer_id, reason, more)

    # -----------------------------------------------------------------------------------------------
    # incoming

    async def serve(self, hello: wire.Hello, reader: wire.FrameReader, frames: list[bytes], name: str) -> None:
        """Read a peer's connection after its ``Hello`` until it closes. Raises WireError on a bad frame,
        a member we do not know, another cluster, or a message claiming another sender."""
        node = self.node
        cluster_id = node.options.cluster_id
        if hello.cluster_id != cluster_id:
            raise wire.WireError(f"peer is in cluster {hello.cluster_id!r}, we are {cluster_id!r}")
        engine = node.options.engine
        if hello.engine != engine:
            # The engines share messages and records but not their rules: never let them mix.
            node.counters["peers_refused_engine"] += 1
            raise wire.WireError(f"peer node {hello.node_id} runs the {hello.engine!r} engine, we run "
                                 f"{engine!r}: every node of a cluster must run the same engine (kv serve --engine)")
        if hello.to is not None and hello.to != self.node_id:
            # It dialed another node's address and reached us: taken, its link would replace the one it
            # keeps to us, and the two would close each other over and over (QA: a removed member's
            # address given to a new member under another name). Worded for both logs.
            node.counters["peers_refused_misdialed"] += 1
            raise wire.WireError(f"node {self.node_id} answers at this address, not node {hello.to}: node "
                                 f"{hello.node_id} dialed it for node {hello.to} (a removed member's address given to "
                                 f"another, or two members' addresses naming one socket?)")
        if hello.node_id not in node.peers or hello.node_id == self.node_id:
            # (worded for both logs: the refused node logs it as the reason its link was refused; QA,
            # "peer says it is node 4" read backwards in node 4's log)
            raise wire.WireError(f"node {self.node_id} refuses a link from a node that says it is node "
                                 f"{hello.node_id}, which is not a member of its cluster (removed, or never added)")
        refused = tls.check_peer(reader.stream, hello.node_id)  # with TLS: its certificate must name it
        if refused is not None:
            node.counters["peers_refused_certificate"] += 1
            raise wire.WireError(refused)
        peer = hello.node_id
        if wire.FEATURE_CLIENT_EXPIRY not in hello.features and node.sm.expiry_on:
            # It would apply the cluster's writes by older rules (kvstore.statemachine, "Exactly-once"):
            # keep it out rather than let it answer what the others refuse.
            node.counters["peers_refused_version"] += 1
            raise wire.WireError(f"node {hello.node_id} runs a version without the {wire.FEATURE_CLIENT_EXPIRY} "
                                 f"feature, which this cluster has switched on: upgrade it (docs/operations.md, "
                                 f"\"Upgrading\")")
        members = node.storage.members
        if members is not None:
            recorded = recorded_incarnation(node, peer)
            refused = identity.check_peer({peer: recorded} if recorded else {}, peer, hello.incarnation)
            if refused is not None:
                node.counters["peers_refused_incarnation"] += 1
                raise wire.WireError(refused)
            if hello.incarnation is not None:
                node.members.seen_incarnations[peer] = hello.incarnation
            if peer not in members and hello.incarnation is not None and node.storage.identity_legacy:
                # A directory from before incarnations learns its peers' on first use.
                try:
                    node.storage.record_members({**members, peer: hello.incarnation})
                except StorageError as exc:
                    node._stop_voting(exc)  # never absorbed by a connection handler
                    return
                log.info("node %d: recorded node %d's incarnation %s", self.node_id, peer, hello.incarnation)
        node.members.seen_features[peer] = hello.features  # (for the leader: Members.switch_features_on)
        reader.frame_bytes_max = PEER_FRAME_BYTES_MAX
        reader.budget = None  # a member's frames are the cluster's own traffic (see wire.FrameBudget)
        # A member dials us on one connection at a time, and redials only once it found that one dead:
        # a newer connection from the same member replaces the older, whose end we may not have seen
        # (a peer that crashed). So links that said Hello (anyone can, without TLS) hold at most one
        # descriptor per member; they are exempt from the client connections' limit (kvstore.descriptors).
        older = self._incoming.get(peer)
        if older is not None:
            older.cancel()
            node.counters["peer_links_replaced"] += 1
        scope = self._incoming[peer] = trio.CancelScope()
        try:
            with scope:
                await self._receive(peer, reader, frames)
        finally:
            if self._incoming.get(peer) is scope:  # (a newer link of the peer may carry on its transfer)
                del self._incoming[peer]
                node.snapshots.drop_partial(peer)

    async def _receive(self, peer: int, reader: wire.FrameReader, frames: list[bytes]) -> None:
        """The incoming link of ``peer`` (``serve``), from its first frames after Hello until it ends."""
        node = self.node
        post = node._post
        receive_chunk = node.snapshots.receive_chunk
        while True:
            events: list[object] = []
            for message in wire.decode_bodies(frames):
                if isinstance(message, wire.PaxosBatch):
                    for m in message.messages:
                        if m.sender != peer:
                            raise wire.WireError(f"message from node {peer} claims sender {m.sender}")
                    events.extend(message.messages)  # posted as they are: the driver's most frequent input
                elif isinstance(message, wire.WireError):
                    raise message
                elif isinstance(message, wire.SnapshotChunk):
                    if message.sender != peer:
                        raise wire.WireError(f"snapshot from node {peer} claims sender {message.sender}")
                    receive_chunk(message)
                else:
                    raise wire.WireError(f"unexpected {type(message).__name__} on a peer link")
            post(events, from_peer=True, nbytes=len(frames[0]) if len(frames) == 1 else sum(map(len, frames)))
            frames = await reader.receive_frames()
            if not frames:
                return
