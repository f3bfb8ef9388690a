"""A hand-edited or partial ``cluster.json`` (the ``kv cluster`` state file) is refused where it is read,
saying what is wrong with it (exit 2, as for a file that is not JSON at all), instead of a command
failing later with ``KeyError: 'port'`` or printing an endpoint list that is a string letter by letter
(exit 0). The client commands read only the endpoints and the nodes' ids and ports; ``kv cluster``
commands also need each node's data directory, log file and command line.
"""
from __future__ import annotations

import json

import pytest

from tests.cli.test_parse_output import assert_one_error_line, run

NODE = {"id": 1, "port": 7303, "pid": None, "data_dir": "/nowhere/node-1", "log_file": "/nowhere/node-1/log",
        "argv": ["true"]}


def _state(**changes):
    state = {"endpoints": ["127.0.0.1:7303"], "nodes": [dict(NODE)]}
    state.update(changes)
    return state


@pytest.mark.parametrize(("state", "problem"), [
    (_state(nodes=[{"id": 1}]), "node 1 of \"nodes\" has no 'port'"),
    (_state(endpoints="127.0.0.1:7303"), '"endpoints" is not a list of HOST:PORT texts'),
    (_state(endpoints=[7303]), '"endpoints" is not a list of HOST:PORT texts'),
    ({"nodes": []}, '"endpoints" is not a list'),
    (_state(nodes={"1": NODE}), '"nodes" is not a list'),
    (_state(nodes=["127.0.0.1:7303"]), 'node 1 of "nodes" is not a JSON object'),
    (_state(nodes=[{**NODE, "port": "7303"}]), "'port' of node 1 of \"nodes\" is not a port number"),
    (_state(nodes=[{**NODE, "id": True}]), "'id' of node 1 of \"nodes\" is not a whole number"),
    (_state(nodes=[{**NODE, "pid": "12"}]), "'pid' of node 1 of \"nodes\" is not a process id or null"),
    (_state(nodes=[{**NODE, "argv": "kv serve"}]), "'argv' of node 1 of \"nodes\" is not a list of texts"),
    (_state(tls=["ca.pem"]), "'tls' is not a JSON object"),
])
@pytest.mark.parametrize("command", [["cluster", "status"], ["cluster", "down"], ["get", "k"]])
def test_a_malformed_state_file_is_refused_saying_what_is_wrong(fake, tmp_path, state, problem, command):
    (tmp_path / "cluster").mkdir()
    path = tmp_path / "cluster" / "cluster.json"
    path.write_text(json.dumps(state))
    result = run(*command)
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, f"{path} is not a kv cluster state file: {problem}")
    assert fake.connects == []


def test_cluster_commands_need_each_nodes_files_the_client_commands_do_not(fake, tmp_path):
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text(json.dumps(_state(nodes=[{"id": 1, "port": 7303}])))
    status = run("cluster", "status")
    assert status.exit_code == 2
    assert_one_error_line(status, "node 1 of \"nodes\" has no 'data_dir'")
    fake.set("k", "v")
    assert run("get", "k").exit_code == 0


def test_restart_waits_a_moment_for_the_port_of_the_node_it_killed(fake, tmp_path, monkeypatch):
    """A killed node's main thread is a zombie before its last thread closed the listening socket: the
    restart waits (bounded) for the port instead of failing at once with "port ... is in use" and
    leaving the node down (QA: 2 in 8 restarts of a live node). A port that stays taken still fails."""
    import kv_cli.cluster as cluster

    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text(json.dumps(_state()))
    busy = iter([True, True, True, False])
    spawned = []
    monkeypatch.setattr(cluster, "port_in_use", lambda port: next(busy, False))
    monkeypatch.setattr(cluster, "spawn_node", lambda node: spawned.append(node["id"]) or object())
    monkeypatch.setattr(cluster, "_wait_answering", lambda *a: True)
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0.01)
    result = run("cluster", "restart", "1")
    assert result.exit_code == 0, result.output
    assert spawned == [1] and "restarted node 1" in result.output

    monkeypatch.setattr(cluster, "port_in_use", lambda port: True)
    monkeypatch.setattr(cluster, "PORT_FREE_WAIT_SECONDS", 0.05)
    refused = run("cluster", "restart", "1")
    assert refused.exit_code == 1
    assert_one_error_line(refused, "port 7303 on 127.0.0.1 is in use; cannot restart node 1")
    assert spawned == [1]


def test_restart_waits_until_the_node_is_a_member_not_only_answering(fake, tmp_path, monkeypatch):
    """A node that lost its disk answers status while it asks its peers who it is, then is refused and
    exits: the restart waits for the node to know its members, so that it reports that exit (exit 1 and
    the log's tail) rather than "restarted" (QA: 1 in 6 restarts of a wiped node said restarted)."""
    import kv_cli.cluster as cluster

    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text(json.dumps(_state()))

    class Child:
        def __init__(self) -> None:
            self.polls = 0
            self.returncode = None

        def poll(self):
            self.polls += 1
            if self.polls > 3:
                self.returncode = 1
            return self.returncode

    answers = iter([[{"reachable": True, "members": None}]] * 10)
    monkeypatch.setattr(cluster, "port_in_use", lambda port: False)
    monkeypatch.setattr(cluster, "spawn_node", lambda node: Child())
    monkeypatch.setattr(cluster, "query_statuses", lambda *a, **k: next(answers))
    monkeypatch.setattr(cluster, "_log_tail", lambda node, lines=5: "node 1's data directory is new ... lost its data")
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0.01)
    refused = run("cluster", "restart", "1")
    assert refused.exit_code == 1, refused.output
    assert_one_error_line(refused, "node 1 exited with code 1 right after it started", "lost its data")

    members = iter([[{"reachable": True, "members": None}], [{"reachable": True, "members": {"1": "ab"}}]])
    monkeypatch.setattr(cluster, "spawn_node", lambda node: type("Running", (), {"poll": lambda self: None})())
    monkeypatch.setattr(cluster, "query_statuses", lambda *a, **k: next(members))
    assert "restarted node 1" in run("cluster", "restart", "1").output

    # a node of an older version, whose status has no members field, is taken as answering (upgrade QA:
    # one serving after 1 s was reported "does not answer yet after 20 s")
    monkeypatch.setattr(cluster, "query_statuses", lambda *a, **k: [{"reachable": True, "id": 1}])
    restarted = run("cluster", "restart", "1")
    assert "restarted node 1 (pid" in restarted.output and "does not answer yet" not in restarted.output


def test_a_node_of_another_install_runs_that_installs_code(tmp_path, monkeypatch):
    """``spawn_node`` puts this project first on PYTHONPATH only for a node run by this kv's Python; a
    node whose recorded argv names another interpreter path (a cluster brought up by another
    virtualenv, before an upgrade) runs that install's code (upgrade QA: ``kv cluster restart`` ran the
    new code under the old install's Python, which lacked its dependencies)."""
    import os
    import sys

    from kv_cli import cluster

    monkeypatch.delenv("PYTHONPATH", raising=False)
    other = tmp_path / "other-venv-python"
    other.symlink_to(sys.executable)  # another path, as another virtualenv's python is
    seen = {}
    show = "import os, sys; print('PYTHONPATH=' + os.environ.get('PYTHONPATH', ''), sys.flags.safe_path)"
    for name, python in (("this", sys.executable), ("other", str(other))):
        node = {"argv": [python, "-c", show], "log_file": str(tmp_path / f"{name}.log")}
        cluster.spawn_node(node).wait(timeout=30)
        seen[name] = (tmp_path / f"{name}.log").read_text().splitlines()[-1]
    # and neither puts the caller's working directory first on sys.path (QA: restarted from inside
    # another version's checkout, a node ran that version's code): safe_path is set
    assert seen["this"] == "PYTHONPATH=" + cluster._project_root() + " True", seen
    assert seen["other"] == "PYTHONPATH= True", seen
    assert os.environ.get("PYTHONPATH") is None


def test_restart_of_a_node_whose_python_is_gone_refuses_before_killing_it(tmp_path, monkeypatch):
    """QA: the node was SIGKILLed first, then its recorded interpreter (a removed virtualenv) could not
    start it, and it stayed down."""
    from kv_cli import cluster

    gone = str(tmp_path / "removed-venv" / "bin" / "python3")
    state = _state(nodes=[{**NODE, "id": 2, "pid": 4242, "argv": [gone, "-m", "kv_cli", "serve"]}])
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text(json.dumps(state))
    killed = []
    monkeypatch.setattr(cluster, "process_state", lambda pid, node: "alive")
    monkeypatch.setattr(cluster, "_signal", lambda pid, sig: killed.append(pid))
    result = run("cluster", "restart", "2", "--data-dir", str(tmp_path / "cluster"))
    assert result.exit_code == 1
    assert_one_error_line(result, "node 2's command line runs", "which no longer exists")
    assert killed == []


def test_a_node_log_advising_a_new_member_adds_the_local_cluster_s_two_commands(tmp_path):
    """etcd QA: `kv cluster restart 2` of a node that lost its disk advised `kv member remove 2, then add a
    new member`; a local cluster does that with kv cluster remove and kv cluster add."""
    from kv_cli import cluster

    log = tmp_path / "node-2.log"
    log.write_text("CRITICAL node 2: ... replace the node (kv member remove 2, then add a new member under a new id)\n")
    assert cluster._log_tail({"id": 2, "log_file": str(log)}).endswith(
        "(a local cluster: kv cluster remove 2, then kv cluster add)")
    log.write_text("INFO node 2 serving\n")
    assert "kv cluster add" not in cluster._log_tail({"id": 2, "log_file": str(log)})
