"""``kv cluster up`` with no leader in time says why it may be: the nodes that exited at start, with their
logs' ends, and voters the running nodes know that ``cluster.json`` does not.

QA (session 27): after a lost disk was replaced as docs/operations.md says (its node removed, new members
added by hand with ``kv member add`` and ``kv serve --join``), ``kv cluster down; kv cluster up --detach``
said only "no leader after 15 s", and stopped the nodes although ``--detach`` keeps them for inspection.
"""
from __future__ import annotations

from kv_cli.cluster import NoLeaderYet, _no_leader_text
from kv_cli.common import OperationFailed


class _Exited:
    returncode = 1


def test_the_no_leader_error_names_the_exited_nodes_and_the_members_missing_from_the_file(tmp_path):
    logs = {}
    for node_id in (1, 2, 3):
        logs[node_id] = tmp_path / f"node-{node_id}.log"
        logs[node_id].write_text("starting\n" if node_id != 2 else
                                 "starting\nError: node 2's data directory is new (incarnation 5c0f): this node "
                                 "lost its data\n")
    state = {"nodes": [{"id": i, "log_file": str(logs[i])} for i in (1, 2, 3)]}
    statuses = [{"reachable": True, "config": {"voters": [1, 3, 5, 9], "learners": []}}]
    text = _no_leader_text(state, {2: _Exited()}, 15, statuses, {2})
    assert text.startswith("no leader after 15 s; node 2 exited at start (code 1): ")
    assert "lost its data" in text
    assert "the members' voters are 1, 3, 5, 9: 5, 9 not in this cluster's file" in text
    assert text.endswith(f"see the logs {logs[1]} and its siblings")
    assert issubclass(NoLeaderYet, OperationFailed)


def test_with_nothing_to_add_the_error_is_as_before(tmp_path):
    state = {"nodes": [{"id": 1, "log_file": str(tmp_path / "n1.log")}]}
    expected = f"no leader after 15 s; see the logs {tmp_path / 'n1.log'} and its siblings"
    assert _no_leader_text(state, {}, 15, [], None) == expected
