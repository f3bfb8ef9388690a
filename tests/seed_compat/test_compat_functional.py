"""paxos.functional.HeartbeatNode: heartbeat leader election on a manual clock.

The node's ``timestamp`` is overridden to read the recording messenger's clock and the messenger's
``schedule`` keeps timers that ``Recorder.advance`` runs, so no real time passes. Checked: the exact
callback order when leadership is acquired, the liveness window and the 1.5x prepare guard, new
leaders via heartbeats, stale heartbeats, prepare NACKs while acquiring, stepping down on a quorum of
accept NACKs, and the class-level settings.
"""

import time

from seed_compat_helpers import Recorder

from paxos import functional
from paxos.essential import ProposalID as PID


class ClockNode(functional.HeartbeatNode):
    hb_period = 2
    liveness_window = 6

    def timestamp(self):
        return self.messenger.now


def make(uid="A", quorum_size=2, leader_uid=None, **kwargs):
    return ClockNode(Recorder(), uid, quorum_size, leader_uid, **kwargs)


def become_leader(n, value=None):
    """Drive ``n`` to leadership with promises from B and C (quorum 2)."""
    if value is not None:
        n.set_proposal(value)
    n.prepare()
    pid = n.proposal_id
    n.recv_promise("B", pid, None, None)
    n.recv_promise("C", pid, None, None)
    return pid


def test_defaults_and_class_level_settings():
    assert functional.HeartbeatNode.hb_period == 1
    assert functional.HeartbeatNode.liveness_window == 5
    assert functional.HeartbeatNode.timestamp is time.time
    n = make()
    assert (n.hb_period, n.liveness_window) == (2, 6)  # subclass values kept for None arguments
    n = make(hb_period=0.5, liveness_window=3)
    assert (n.hb_period, n.liveness_window) == (0.5, 3)


def test_default_clock_is_wall_time():
    n = functional.HeartbeatNode(Recorder(), "A", 2)
    assert isinstance(n.timestamp(), float)


def test_initial_leader_starts_as_leader_without_messages():
    n = make("A", leader_uid="A")
    assert n.leader and n.proposal_id == PID(1, "A") and n.next_proposal_number == 2
    assert n.leader_proposal_id == PID(1, "A")
    assert n.messenger.take() == []
    follower = make("B", leader_uid="A")
    assert not follower.leader and follower.proposal_id is None


def test_acquisition_callback_order():
    n = make("A", quorum_size=2)
    n.messenger.advance(100)  # let the leader window and the prepare guard expire
    n.set_proposal("foo")
    n.poll_liveness()
    assert n._acquiring
    assert n.messenger.take() == [("prepare", PID(1, "A"))]
    n.recv_promise("B", PID(1, "A"), None, None)
    n.recv_promise("C", PID(1, "A"), None, None)
    assert n.messenger.take() == [
        ("leadership_acquired",),
        ("accept", PID(1, "A"), "foo"),
        ("heartbeat", PID(1, "A")),
        ("schedule", 2),
        ("leadership_change", None, "A"),
    ]
    assert not n._acquiring
    assert (n.leader_uid, n.leader_proposal_id) == ("A", PID(1, "A"))


def test_leader_pulses_every_period_and_stays_alive():
    n = make("A")
    n.messenger.advance(100)
    become_leader(n)
    n.messenger.take()
    n.messenger.advance(8)  # pulses due at +2, +4, +6, +8
    assert n.messenger.names().count("heartbeat") == 4
    assert n.leader_is_alive()


def test_poll_waits_for_liveness_window_and_prepare_guard():
    n = make("A")  # created at t=0: last heartbeat and last prepare both at 0
    for _ in range(9):  # t = 1 .. 9: 1.5 * 6 = 9, still within the prepare guard
        n.messenger.advance(1)
        n.poll_liveness()
    assert n.proposal_id is None
    n.messenger.advance(1)
    n.poll_liveness()
    assert n.messenger.take() == [("prepare", PID(1, "A"))]
    # While acquiring, each poll prepares again with a higher number.
    n.messenger.advance(1)
    n.poll_liveness()
    assert n.messenger.take() == [("prepare", PID(2, "A"))]


def test_foreign_prepare_postpones_attempts():
    n = make("A")
    n.messenger.advance(8)
    n.recv_prepare("B", PID(1, "B"))
    n.messenger.advance(8)  # leader dead (16 > 6) but B prepared 8 ago (< 9)
    n.poll_liveness()
    assert n.proposal_id is None


def test_heartbeat_of_current_leader_refreshes_liveness_and_lower_is_ignored():
    n = make("B", leader_uid="A")
    n.messenger.advance(5)
    n.recv_heartbeat("A", PID(1, "A"))
    n.messenger.advance(5)
    assert n.leader_is_alive()
    n.recv_heartbeat("C", PID(0, "C"))  # stale: no change, no refresh
    n.messenger.advance(2)
    assert not n.leader_is_alive()
    assert n.leader_uid == "A"
    assert n.messenger.take() == []


def test_higher_heartbeat_makes_leader_step_down():
    n = make("A")
    n.messenger.advance(100)
    become_leader(n)
    n.messenger.take()
    n.recv_heartbeat("B", PID(5, "B"))
    assert not n.leader
    assert (n.leader_uid, n.leader_proposal_id) == ("B", PID(5, "B"))
    assert n.messenger.take() == [("leadership_lost",), ("leadership_change", "A", "B")]
    # The pulse scheduled earlier finds us no longer leader and stops.
    n.messenger.advance(2)
    assert "heartbeat" not in n.messenger.names()
    # After the window and the prepare guard, the next attempt beats B's id.
    n.messenger.advance(7)
    n.poll_liveness()
    assert n.messenger.take()[-1] == ("prepare", PID(6, "A"))


def test_new_leader_heartbeat_stops_an_acquisition():
    n = make("A")
    n.messenger.advance(100)
    n.acquire_leadership()
    assert n._acquiring
    n.recv_heartbeat("B", PID(3, "B"))
    assert not n._acquiring
    assert n.messenger.take()[-1] == ("leadership_change", None, "B")


def test_acquire_leadership_does_nothing_while_leader_alive():
    n = make("B", leader_uid="A")
    n.acquire_leadership()
    assert not n._acquiring and n.proposal_id is None


def test_prepare_nack_while_acquiring_prepares_again_higher():
    n = make("A")
    n.messenger.advance(100)
    n.poll_liveness()
    n.recv_prepare_nack("C", PID(1, "A"), PID(2, "C"))
    assert n.messenger.take() == [("prepare", PID(1, "A")), ("prepare", PID(3, "A"))]


def test_quorum_of_accept_nacks_loses_leadership():
    n = make("A", quorum_size=2)
    n.messenger.advance(100)
    pid = become_leader(n, "foo")
    n.messenger.take()
    n.recv_accept_nack("B", pid, PID(7, "B"))
    n.recv_accept_nack("B", pid, PID(7, "B"))  # the same acceptor twice counts once
    n.recv_accept_nack("C", PID(0, "A"), PID(7, "B"))  # a NACK of an older id does not count
    assert n.leader
    n.recv_accept_nack("C", pid, PID(7, "B"))
    assert not n.leader
    assert n.leader_uid is None and n.leader_proposal_id is None
    assert n.messenger.take() == [("leadership_lost",), ("leadership_change", "A", None)]
    n.prepare()
    assert n.proposal_id == PID(8, "A")


def test_heartbeat_after_stepping_down_adopts_new_leader():
    """After accept NACKs ``leader_proposal_id`` is None; a heartbeat must still compare above it.

    (In the 2013 code on Python 3 this compared a ProposalID with None and raised TypeError.)
    """
    n = make("A", quorum_size=2)
    n.messenger.advance(100)
    pid = become_leader(n, "foo")
    n.recv_accept_nack("B", pid, PID(7, "B"))
    n.recv_accept_nack("C", pid, PID(7, "B"))
    n.messenger.take()
    n.recv_heartbeat("B", PID(7, "B"))
    assert (n.leader_uid, n.leader_proposal_id) == ("B", PID(7, "B"))
    assert n.messenger.take() == [("leadership_change", None, "B")]
    assert n.leader_is_alive()
