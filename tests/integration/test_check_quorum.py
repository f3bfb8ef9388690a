"""A real 3-process cluster: a leader cut off from its majority tells its clients "not leader".

How it is checked: the two followers of a running cluster are SIGSTOPped, so the leader hears nobody.
A client connected only to that leader sends linearizable reads, one at a time, on a raw connection
(the library client would retry on its own until its deadline and hide the answer). With
``Options.check_quorum`` (the default) the leader steps down about one election timeout (30 ticks of
10 ms) after its last answer and answers ``not_leader``: a read waiting for its leadership round is
rejected, and any request after that is refused at once. Without it, the read waited for the server's
request timeout (5 s) and was answered ``timeout``. So the test requires ``not_leader`` within 4 s of
the pause (ten times the election timeout, under the request timeout), then a write refused with
``not_leader`` too, the counter in ``kv status``; after the followers resume, the cluster serves again
and has the data. The first test runs both engines (``kv serve --engine core|classic``). Processes are
torn down in ``finally``; waits poll against deadlines.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

import pytest

from kvstore import frames

from .harness import Cluster

pytestmark = pytest.mark.slow

NOT_LEADER_WITHIN_SECONDS = 4.0  # the server's request timeout is 5 s; the election timeout 0.3 s


class RawConnection:
    """One blocking connection, one request at a time, no retries: the node's own answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = bytearray()
        self.rid = 0

    def call(self, frame_of, deadline: float) -> frames.Reply | None:
        """Send ``frame_of(rid)``; its reply, or None if none came before ``deadline``."""
        self.rid += 1
        rid = self.rid
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        self.sock.sendall(frame_of(rid))
        while True:
            for body in frames.split_frames(self.buffer):
                reply = frames.decode_reply(body)
                if reply.id == rid:
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            assert data, "the old leader closed the connection"
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def leader_cut_off(cluster: Cluster) -> Iterator[tuple[int, RawConnection, float]]:
    """Start ``cluster``, write ``k = v``, open a raw connection to the leader and pause its followers:
    yields (the leader's id, the connection, when the pause began). On the way out the connection is
    closed and the followers resumed."""
    cluster.start_all()
    old = cluster.leader()
    with cluster.client() as kv:
        kv.put("k", "v")
    followers = [n for n in cluster.ports if n != old]
    raw = RawConnection(cluster.ports[old])
    try:
        for node in followers:
            cluster.pause(node)
        yield old, raw, time.monotonic()
    finally:
        raw.close()
        for node in followers:
            cluster.resume(node)


@pytest.mark.parametrize("engine", ["core", "classic"])
def test_a_leader_whose_followers_are_paused_answers_not_leader_within_a_bound(tmp_path, engine):
    """Both engines: the core's rule (paxos.replica) and the classic engine's (paxos.classic, the
    fourth of its own rules)."""
    cluster = Cluster(tmp_path, extra_args=["--engine", engine])
    try:
        with leader_cut_off(cluster) as (old, raw, paused_at):
            deadline = paused_at + NOT_LEADER_WITHIN_SECONDS
            replies = []
            # A read that the followers still confirmed just before they stopped is answered ok; the
            # next waits for a round nobody answers, until the leader steps down and rejects it.
            while True:
                reply = raw.call(lambda rid: frames.encode_map_frame(frames.get_request(rid, "k", True)), deadline)
                assert reply is not None, (
                    f"no answer from the cut-off leader within {NOT_LEADER_WITHIN_SECONDS}s of the pause "
                    f"(answers so far: {replies}); logs in {tmp_path}")
                replies.append(reply.code if not reply.ok else "ok")
                if not reply.ok:
                    break
            assert reply.code == frames.NOT_LEADER, replies
            elapsed = time.monotonic() - paused_at
            # A write is refused at once too (it is no longer leader), not left waiting in a slot.
            put = raw.call(lambda rid: frames.encode_put_request_frame(rid, "k", "w", os.urandom(16), 1, 1),
                           time.monotonic() + 2.0)
            assert put is not None and put.code == frames.NOT_LEADER, put
            status = cluster.status(old)
            assert status is not None and not status["is_leader"]
            assert status["core_counters"].get("stepped_down_no_quorum", 0) >= 1, status["core_counters"]
            # and its log says so (QA, gray failures: a leader that stepped down left no line)
            log = (tmp_path / f"node-{old}.log").read_text(errors="replace")
            assert f"node {old}: stopped leading at ballot (" in log, log[-2000:]
        assert elapsed < NOT_LEADER_WITHIN_SECONDS
        cluster.leader(deadline_s=30)
        with cluster.client(timeout=20) as kv:
            assert kv.get("k") == "v"
            kv.put("k2", "after")
            assert kv.get("k2") == "after"
        cluster.wait_converged()
    finally:
        cluster.close()


def test_a_write_waiting_in_the_cut_off_leaders_slot_is_answered_not_leader_and_its_retry_applies_once(tmp_path):
    """A write that reached the leader just as its followers stopped sits in a slot no majority
    accepts. When the leader steps down, the node answers it ``not_leader`` at once (not ``timeout``
    after the server's 5 s request timeout), and the client's retry with the same request id on the
    majority's leader applies it exactly once."""
    cluster = Cluster(tmp_path)
    try:
        client_id = os.urandom(16)
        with leader_cut_off(cluster) as (old, raw, paused_at):
            put = raw.call(lambda rid: frames.encode_put_request_frame(rid, "k", "w", client_id, 1, 1),
                           paused_at + NOT_LEADER_WITHIN_SECONDS)
            elapsed = time.monotonic() - paused_at
            assert put is not None, f"no answer within {NOT_LEADER_WITHIN_SECONDS}s; logs in {tmp_path}"
            assert put.code == frames.NOT_LEADER, put
            status = cluster.status(old)
            assert status is not None and status["counters"].get("writes_failed_on_step_down", 0) >= 1
        assert elapsed < NOT_LEADER_WITHIN_SECONDS
        new = cluster.leader(deadline_s=30)
        retry = RawConnection(cluster.ports[new])
        try:
            answers = [retry.call(lambda rid: frames.encode_put_request_frame(rid, "k", "w", client_id, 1, 1),
                                  time.monotonic() + 10) for _ in range(2)]
        finally:
            retry.close()
        assert all(a is not None and a.ok for a in answers), answers
        assert answers[0].result == answers[1].result, "a retry must get the first result again"
        with cluster.client(timeout=20) as kv:
            assert kv.get("k") == "w"
        cluster.wait_converged()
    finally:
        cluster.close()
