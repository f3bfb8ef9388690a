"""End to end: the installed ``kv`` command runs a real 3-process local cluster.

How: each test gets a temporary KV_CLUSTER_DIR and a base port P such that P, P+1, P+2 were free on
127.0.0.1, outside the kernel's ephemeral range (``tests.ports``: a port from that range can be taken by
an outgoing connection before ``kv cluster add``'s node binds it, seen once). It runs ``kv``
as a subprocess exactly as a user would (``kv cluster up --detach``, ``kv put``, ...), with no
--endpoints flag, so the client commands also prove the default-cluster lookup. Waiting is polling
against deadlines; nothing asserts on timings. Teardown in ``finally``: ``kv cluster down``, then
SIGKILL every pid from cluster.json that is still one of our nodes.

Checked: up/put/get/json/ls/status/health; a second ``up`` is refused while the cluster runs; killing a
non-leader and, after restarting it, killing the leader, writes still succeed (the client retries
within --command-timeout) and the restarted node converges to the same state hash; ``down`` stops every
process; Ctrl-C (SIGINT) on a foreground ``kv cluster up`` stops every node.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kv_cli.cluster import process_state
from tests.ports import free_base_port

pytestmark = pytest.mark.slow

COMMAND_SECONDS = 60  # bound on any one kv invocation (the cluster's own waits are ~15 s at most)
CONVERGE_SECONDS = 20.0


def kv_command() -> list[str]:
    beside = Path(sys.executable).parent / "kv"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("kv")
    return [found] if found else [sys.executable, "-m", "kv_cli"]


class Kv:
    def __init__(self, cluster_dir: Path) -> None:
        self.cluster_dir = cluster_dir
        self.env = dict(os.environ, KV_CLUSTER_DIR=str(cluster_dir))
        self.env.pop("KV_ENDPOINTS", None)
        self.base = kv_command()

    def __call__(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.base + list(args), input=input, capture_output=True, env=self.env, timeout=COMMAND_SECONDS
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kv {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
            )
        return result

    def state(self) -> dict:
        return json.loads((self.cluster_dir / "cluster.json").read_text())

    def cluster_rows(self) -> list[dict]:
        return json.loads(self("-w", "json", "cluster", "status").stdout)["nodes"]

    def leader_id(self) -> int:
        deadline = time.monotonic() + CONVERGE_SECONDS
        while time.monotonic() < deadline:
            rows = self.cluster_rows()
            leaders = [r["id"] for r in rows if r["is_leader"] and r["process"] == "running"]
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.2)
        raise AssertionError(f"no single leader within {CONVERGE_SECONDS} s: {self.cluster_rows()}")

    def wait_converged(self, node_count: int) -> list[dict]:
        """Poll until node_count nodes answer with one leader and equal state hashes and applied slots."""
        deadline = time.monotonic() + CONVERGE_SECONDS
        statuses: list[dict] = []
        while time.monotonic() < deadline:
            result = self("--command-timeout", "2", "-w", "json", "status", check=False)
            if result.stdout.strip():
                statuses = [s for s in json.loads(result.stdout) if s.get("reachable")]
                hashes = {s.get("state_hash") for s in statuses}
                applied = {s.get("applied_slot") for s in statuses}
                leaders = {s.get("leader") for s in statuses}
                if len(statuses) == node_count and len(hashes) == 1 and len(applied) == 1 and len(leaders) == 1 \
                        and None not in leaders:
                    return statuses
            time.sleep(0.2)
        raise AssertionError(f"replicas did not converge within {CONVERGE_SECONDS} s: {statuses}")

    def teardown(self) -> None:
        with_state = (self.cluster_dir / "cluster.json").exists()
        if with_state:
            try:
                self("cluster", "down", check=False)
            except subprocess.TimeoutExpired:
                pass
            for node in self.state()["nodes"]:
                if process_state(node.get("pid"), node) != "dead":
                    os.kill(node["pid"], signal.SIGKILL)


@pytest.fixture
def kv(tmp_path):
    runner = Kv(tmp_path / "cluster")
    try:
        yield runner
    finally:
        runner.teardown()


def test_detached_cluster_survives_follower_and_leader_crash(kv):
    base = free_base_port()
    up = kv("cluster", "up", "--detach", "--base-port", str(base))
    endpoints = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
    assert f"export KV_ENDPOINTS={endpoints}" in up.stdout.decode()
    state = kv.state()
    assert [n["port"] for n in state["nodes"]] == [base, base + 1, base + 2]
    assert all(process_state(n["pid"], n) == "running" for n in state["nodes"])

    again = kv("cluster", "up", "--detach", "--base-port", str(base), check=False)
    assert again.returncode == 1
    assert b"already running" in again.stderr

    assert kv("put", "greeting", "hello").stdout == b"OK\n"
    assert kv("get", "greeting").stdout == b"greeting\nhello\n"
    kv("put", "bin", input=b"\xff\x00")
    record = json.loads(kv("-w", "json", "get", "bin").stdout)["kvs"][0]
    assert record["value_encoding"] == "base64" and record["value"] == "/wA="
    assert kv("ls").stdout == b"bin\ngreeting\n"
    for key in ("r/a", "r/a", "r/b"):  # revisions 3, 4, 5: r/a's version 2
        kv("put", key, "x")
    ranged = json.loads(kv("-w", "json", "get", "--prefix", "r/").stdout)["kvs"]
    assert [(r["key"], r["version"], r["mod_revision"]) for r in ranged] == [("r/a", 2, 4), ("r/b", 1, 5)]
    keys = json.loads(kv("-w", "json", "get", "--prefix", "r/", "--keys-only").stdout)["kvs"]
    assert keys == [{"key": "r/a", "version": 2, "mod_revision": 4}, {"key": "r/b", "version": 1, "mod_revision": 5}]
    assert kv("get", "missing", check=False).returncode == 1
    assert kv("health").returncode == 0

    # crash a follower: the other two still form a quorum
    leader = kv.leader_id()
    follower = next(n["id"] for n in state["nodes"] if n["id"] != leader)
    kv("cluster", "kill", str(follower))
    kv("--command-timeout", "10", "put", "after-follower-crash", "1")
    assert kv("get", "after-follower-crash").stdout == b"after-follower-crash\n1\n"
    rows = {r["id"]: r for r in kv.cluster_rows()}
    assert rows[follower]["process"] == "dead" and rows[follower]["pid"] is None

    # a restart that fails at once says so, with the node's own reason (here its data dir is a file)
    data = Path(next(n["data_dir"] for n in kv.state()["nodes"] if n["id"] == follower))
    data.rename(data.with_name("moved-away"))
    data.write_text("not a directory")
    failed = kv("cluster", "restart", str(follower), check=False)
    assert failed.returncode == 1 and f"node {follower} exited with code".encode() in failed.stderr, failed.stderr
    data.unlink()
    data.with_name("moved-away").rename(data)

    # bring it back; it must catch up to the same state
    restarted = kv("cluster", "restart", str(follower))
    assert f"restarted node {follower} (pid".encode() in restarted.stdout, restarted
    kv.wait_converged(3)

    # restart the leader: SIGTERM (it hands over and stops cleanly), not a crash; --kill crashes it
    leader = kv.leader_id()
    log_file = Path(next(n["log_file"] for n in kv.state()["nodes"] if n["id"] == leader))
    kv("cluster", "restart", str(leader))
    assert f"node {leader}: SIGTERM received".encode() in log_file.read_bytes()
    assert kv("--command-timeout", "15", "put", "after-leader-restart", "1").stdout == b"OK\n"
    log_file.write_bytes(b"")
    kv("cluster", "restart", str(leader), "--kill")
    assert b"SIGTERM received" not in log_file.read_bytes()
    kv("--command-timeout", "15", "put", "after-leader-restart", "2")
    kv.wait_converged(3)

    # crash the leader: a new one is elected and writes go on
    leader = kv.leader_id()
    kv("cluster", "kill", str(leader))
    kv("--command-timeout", "15", "put", "after-leader-crash", "2")
    assert kv("--command-timeout", "15", "get", "after-leader-crash").stdout == b"after-leader-crash\n2\n"
    assert kv("get", "greeting").stdout == b"greeting\nhello\n"
    new_leader = kv.leader_id()
    assert new_leader != leader
    survivors = kv.wait_converged(2)
    assert all(s.get("keys") == 7 for s in survivors if "keys" in s)

    status = kv("cluster", "status").stdout.decode()
    assert f"node {leader}: port={base + leader - 1} pid=- process=dead" in status

    pids = [n["pid"] for n in kv.state()["nodes"] if n["pid"]]
    kv("cluster", "down")
    assert all(n["pid"] is None for n in kv.state()["nodes"])
    for pid in pids:
        assert process_state(pid) == "dead"
    # with the cluster down, a client command fails (exit 1) with one line
    failed = kv("--command-timeout", "1", "get", "greeting", check=False)
    assert failed.returncode == 1
    assert len(failed.stderr.decode().strip().splitlines()) == 1
    # up again: its own ports, not another --base-port's (its members know one another by them)
    other = base + 100 if base + 102 <= 65535 else base - 100  # (refused before any port is tried)
    moved = kv("cluster", "up", "--detach", "--base-port", str(other), check=False)
    assert moved.returncode == 2 and f"uses ports {base}, {base + 1}, {base + 2}".encode() in moved.stderr


def test_foreground_up_stops_every_node_on_ctrl_c(kv):
    base = free_base_port()
    proc = subprocess.Popen(
        kv.base + ["cluster", "up", "--base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kv.env,
        # As in a terminal: Ctrl-C's signal at its default disposition. A test run started in the
        # background by a shell without job control (`.ci/run &`) inherits SIGINT ignored, and Python
        # then installs no KeyboardInterrupt handler: the signal below would do nothing.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        output = b""
        deadline = time.monotonic() + COMMAND_SECONDS
        while b"export KV_ENDPOINTS=" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
        assert b"export KV_ENDPOINTS=" in output, (output, proc.poll())
        assert kv("put", "k", "v").stdout == b"OK\n"
        nodes = kv.state()["nodes"]
        assert all(process_state(n["pid"], n) == "running" for n in nodes)

        proc.send_signal(signal.SIGINT)  # what Ctrl-C does to the foreground process only
        proc.communicate(timeout=COMMAND_SECONDS)
        assert proc.returncode == 0
        for node in nodes:
            assert process_state(node["pid"], node) == "dead"
        assert all(n["pid"] is None for n in kv.state()["nodes"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_cluster_add_and_remove_change_the_members_and_up_restarts_them(kv):
    """``kv cluster add`` starts node 4, which joins as a learner and is promoted; ``kv cluster remove 1``
    removes the first node (the leader hands over if it was the leader) and stops it; the roles show in
    ``kv cluster status``; a node removed with ``kv member remove`` is dropped by ``kv cluster remove``;
    after ``down``, ``up`` starts the members as they are now (2, 3), and ``up --tls`` starts them with
    TLS on this Python even when the one recorded is gone."""
    base = free_base_port(4)
    kv("cluster", "up", "--detach", "--base-port", str(base))
    kv("put", "before", "1")
    added = kv("cluster", "add")
    assert f"127.0.0.1:{base + 3}".encode() in added.stdout and b"promoted node 4 to voter" in added.stderr
    assert b"note: 4 voters tolerate 1 failed voter(s), as 3 would" in added.stderr  # as kv member promote
    rows = {r["id"]: r for r in kv.cluster_rows()}
    assert sorted(rows) == [1, 2, 3, 4]
    deadline = time.monotonic() + CONVERGE_SECONDS
    while time.monotonic() < deadline and {r["role"] for r in rows.values()} != {"voter"}:
        time.sleep(0.2)
        rows = {r["id"]: r for r in kv.cluster_rows()}
    assert {r["role"] for r in rows.values()} == {"voter"}, rows
    kv.wait_converged(4)

    removed = kv("cluster", "remove", "1")
    assert b"voters" not in removed.stderr, removed.stderr  # 3 voters: nothing to warn about
    rows = {r["id"]: r for r in kv.cluster_rows()}
    assert sorted(rows) == [2, 3, 4]
    exported = [line for line in removed.stdout.decode().splitlines() if line.startswith("export KV_ENDPOINTS=")]
    assert len(exported) == 1 and len(exported[0].split("=", 1)[1].split(",")) == 3, removed.stdout  # (as add)
    kv("put", "after", "2")
    assert kv("get", "before").stdout.split() == [b"before", b"1"]
    members = json.loads(kv("-w", "json", "member", "list").stdout)
    assert sorted(m["id"] for m in members["members"]) == [2, 3, 4]
    refused = kv("cluster", "remove", "1", check=False)
    assert refused.returncode == 2 and b"no node 1" in refused.stderr
    reused = kv("member", "add", "1", f"127.0.0.1:{base + 9}", check=False)  # ids are never reused
    assert reused.returncode == 1 and b"node 1 was a member and was removed" in reused.stderr, reused.stderr
    # Removed with kv member remove (this file still lists it): kv cluster remove then drops it here.
    removed_4 = kv("member", "remove", "4").stdout.decode()
    assert "reachable=" not in removed_4 and "applied=" not in removed_4 and "decided=" in removed_4, removed_4
    assert sorted(r["id"] for r in kv.cluster_rows()) == [2, 3, 4]
    dropped = kv("cluster", "remove", "4")
    assert b"node 4 was removed from the members already; dropping it" in dropped.stderr, dropped.stderr
    assert sorted(r["id"] for r in kv.cluster_rows()) == [2, 3]

    kv("cluster", "down")
    kv("cluster", "up", "--detach")  # on the ports it has (here not base .. base + 2)
    assert sorted(r["id"] for r in kv.cluster_rows()) == [2, 3]
    kv.wait_converged(2)
    assert kv("get", "after").stdout.split() == [b"after", b"2"]

    # Up again with --tls, the Python recorded for the nodes gone (a virtualenv replaced since): the
    # members as they are now, started on this Python, serving TLS only, their data kept.
    kv("cluster", "down")
    state = kv.state()
    gone = str(kv.cluster_dir / "gone-venv" / "python3")
    for node in state["nodes"]:
        node["argv"][0] = gone
    (kv.cluster_dir / "cluster.json").write_text(json.dumps(state))
    up = kv("cluster", "up", "--detach", "--tls")
    assert b"export KV_CACERT=" in up.stdout, up.stdout
    assert sorted(r["id"] for r in kv.cluster_rows()) == [2, 3]
    for node in kv.state()["nodes"]:
        argv = node["argv"]
        assert argv[0] != gone and argv[argv.index("--cert") + 1].endswith(f"node-{node['id']}.pem"), argv
    kv.wait_converged(2)
    assert kv("get", "after").stdout.split() == [b"after", b"2"]  # (the default cluster's TLS files)
    plain = kv("--endpoints", ",".join(kv.state()["endpoints"]), "get", "after", check=False)
    assert plain.returncode == 1 and b"takes TLS connections only" in plain.stderr, plain.stderr


def test_up_again_takes_the_stopped_clusters_size(kv):
    """A stopped cluster of another size than 3 comes up again with a plain ``kv cluster up`` (QA: it was
    refused, "holds a 1-node cluster; use --nodes 1"); only an explicit --nodes that differs is refused,
    and another --base-port is told the cluster's ports rather than its size."""
    base = free_base_port()
    kv("cluster", "up", "--detach", "--nodes", "1", "--base-port", str(base))
    kv("put", "kept", "yes")
    kv("cluster", "down")
    other = base + 100 if base + 102 <= 65535 else base - 100
    moved = kv("cluster", "up", "--detach", "--base-port", str(other), check=False)
    assert moved.returncode == 2 and f"uses ports {base};".encode() in moved.stderr, moved.stderr
    resized = kv("cluster", "up", "--detach", "--nodes", "2", check=False)
    assert resized.returncode == 2 and b"holds a 1-node cluster; use --nodes 1" in resized.stderr, resized.stderr
    kv("cluster", "up", "--detach")
    assert [n["port"] for n in kv.state()["nodes"]] == [base]
    assert kv("get", "kept").stdout == b"kept\nyes\n"


def test_up_again_drops_the_nodes_kv_member_remove_retired(kv):
    """Nodes removed with ``kv member remove`` (which does not know cluster.json, unlike ``kv cluster
    remove``) are dropped, and stopped, by the next ``kv cluster up`` once it learns the members from the
    leader: one whose data directory was lost meanwhile (refused at start: "lost its data") as well as
    one that starts. Regression (QA, following "A node that lost its disk"): ``up`` started them again,
    the refused one's exit made it stop every node, and the cluster could not be brought back."""
    base = free_base_port(4)
    kv("cluster", "up", "--detach", "--base-port", str(base))
    kv("put", "before", "1")
    kv("cluster", "add")
    kv.wait_converged(4)
    kv("member", "remove", "1")
    kv("member", "remove", "4")
    kv("cluster", "kill", "1")
    shutil.rmtree(Path(next(n["data_dir"] for n in kv.state()["nodes"] if n["id"] == 1)))
    kv("put", "after", "2")
    kv("cluster", "down")
    assert sorted(n["id"] for n in kv.state()["nodes"]) == [1, 2, 3, 4]  # (kv member remove left them listed)

    up = kv("cluster", "up", "--detach")
    for node_id in (1, 4):
        assert (f"node {node_id} was removed from the members while the cluster ran (kv member remove); "
                "dropping it from this cluster").encode() in up.stderr, up.stderr
    assert sorted(n["id"] for n in kv.state()["nodes"]) == [2, 3]
    assert kv.state()["endpoints"] == [f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 2}"]
    rows = {r["id"]: r for r in kv.cluster_rows()}
    assert sorted(rows) == [2, 3]
    kv.wait_converged(2)
    assert kv("get", "before").stdout.split() == [b"before", b"1"]
    assert kv("get", "after").stdout.split() == [b"after", b"2"]
    kv("cluster", "down")
    kv("cluster", "up", "--detach")  # and once more, with nothing to drop
    assert sorted(n["id"] for n in kv.state()["nodes"]) == [2, 3]
    kv("cluster", "down")
    # an explicit --nodes other than the changed cluster's size is refused (QA: ignored without a word)
    resized = kv("cluster", "up", "--detach", "--nodes", "3", check=False)
    assert resized.returncode == 2 and b"holds a 2-node cluster (as membership changes left it)" in resized.stderr
    assert all(process_state(n.get("pid"), n) == "dead" for n in kv.state()["nodes"])
