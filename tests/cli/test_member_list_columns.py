"""``kv member list``'s DECIDED and APPLIED columns come from one sample of each member that answers.

The leader's member list carries each member's decided slot as that member last reported it (up to a
heartbeat old); the member's own status, asked right after, carries a newer applied slot. Shown side by
side they made APPLIED exceed DECIDED now and then (QA). A member that answers now shows both from its
own status; one that does not keeps the leader's decided slot and no applied slot.
"""
from __future__ import annotations

from kv_cli.member import _reachability


class _Client:
    def __init__(self, statuses: dict[str, dict]) -> None:
        self.statuses = statuses
        self.timeouts: list[float | None] = []

    def status(self, address: str, *, timeout: float | None = None) -> dict:
        self.timeouts.append(timeout)
        if address not in self.statuses:
            raise OSError("unreachable")
        return self.statuses[address]


def test_a_member_that_answers_shows_its_own_decided_and_applied_slots():
    members = [{"id": 1, "address": "a:1", "decided_slot": 7}, {"id": 2, "address": "a:2", "decided_slot": 5},
               {"id": 3, "address": "", "decided_slot": 4}]
    _reachability(_Client({"a:1": {"decided_slot": 10, "applied_slot": 10}}), members, 1.0)
    assert [(m["reachable"], m["decided_slot"], m["applied_slot"]) for m in members] == [
        (True, 10, 10), (False, 5, None), (False, 4, None)]
    for m in members:
        assert m["applied_slot"] is None or m["applied_slot"] <= m["decided_slot"]


def test_the_members_are_asked_at_the_same_time():
    """QA: one member after another, a paused member cost the whole --command-timeout each (7.4 s). Each
    status call here waits for the other two to be under way (a barrier): asked one after another, the
    barrier would break and every member would show as unreachable."""
    import threading

    barrier = threading.Barrier(3, timeout=10)

    class _Waiting(_Client):
        def status(self, address: str, *, timeout: float | None = None) -> dict:
            barrier.wait()
            return super().status(address, timeout=timeout)

    members = [{"id": i, "address": f"a:{i}", "decided_slot": 1} for i in (1, 2, 3)]
    _reachability(_Waiting({f"a:{i}": {"decided_slot": 2, "applied_slot": 2} for i in (1, 2, 3)}), members, 1.0)
    assert [m["reachable"] for m in members] == [True, True, True]


def test_a_member_gets_a_second_to_answer_for_its_status_not_the_whole_command_timeout(capsys):
    """QA: with one member paused, kv member list took the whole --command-timeout (5.5 s) to say so, though
    the leader had answered at once. A live member answers its status in milliseconds."""
    from kv_cli.common import Settings
    from kv_cli.member import MEMBER_STATUS_SECONDS, show_members
    from kv_cli.output import OutputFormat

    result = {"epoch": 0, "members": [{"id": 1, "address": "a:1", "role": "voter", "decided_slot": 3}]}
    for command_timeout, expected in ((5.0, MEMBER_STATUS_SECONDS), (0.3, 0.3)):
        client = _Client({"a:1": {"decided_slot": 3, "applied_slot": 3}})
        show_members(Settings(write_out=OutputFormat.json, command_timeout=command_timeout), result, client)
        assert client.timeouts == [expected]
    assert MEMBER_STATUS_SECONDS == 1.0
    capsys.readouterr()


def test_another_node_answering_at_a_member_s_address_is_not_that_member_answering():
    """QA: a removed node started again at the port its successor took (node 4 down) showed node 4 as
    reachable, with node 3's slots. A status from another node id is no answer from this member."""
    members = [{"id": 4, "address": "a:3", "decided_slot": 7}]
    _reachability(_Client({"a:3": {"id": 3, "decided_slot": 18, "applied_slot": 18}}), members, 1.0)
    assert [(m["reachable"], m["decided_slot"], m["applied_slot"]) for m in members] == [(False, 7, None)]


def test_kv_cluster_status_does_not_take_another_node_at_a_node_s_port_for_it():
    """The same for ``kv cluster status`` (the local cluster's view): node 4's port answered by node 3."""
    from kv_cli.cluster import _status_for

    node = {"id": 4, "port": 7603}
    other = {"id": 3, "address": "127.0.0.1:7603", "decided_slot": 18, "applied_slot": 18}
    assert _status_for(node, 0, 1, [other]) == {}
    own = {"id": 4, "address": "127.0.0.1:7603", "decided_slot": 18, "applied_slot": 18}
    assert _status_for(node, 0, 1, [own]) is own
