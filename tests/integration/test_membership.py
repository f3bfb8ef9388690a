"""Membership through the log, with real processes and the real ``kv`` commands (issue 17).

The replacement story: a 3-node cluster holds acknowledged keys; node 2 is removed
(``kv member remove 2``), node 4 is added as a learner (``kv member add 4 ADDR``), started empty with
``kv serve --id 4 --join ...``, catches up and is promoted (``kv member promote 4``). Then node 1 is
killed: nodes 3 and 4 are a majority of the voters {1, 3, 4}, serve writes, and hold every
acknowledged key. Along the way the refusals: adding an id that exists, promoting a learner that never
answered, joining under an id the cluster does not know; each one line and exit 1, nothing changed.
Then ``kv move-leader`` hands leadership between the survivors.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from kvstore.client import RequestError, Unavailable, connect

from ..nemesis.cluster import REPO, NemesisCluster, free_ports

pytestmark = pytest.mark.slow


def kv(cluster: NemesisCluster, *args: str, endpoints: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    eps = ",".join(endpoints or cluster.endpoints)
    return subprocess.run([sys.executable, "-m", "kv_cli", "--endpoints", eps, "--command-timeout", "15", *args],
                          capture_output=True, text=True, env=env, timeout=60, cwd=str(REPO))


def start_joiner(cluster: NemesisCluster, node_id: int, join: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    log = open(cluster.log_path(node_id), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "kv_cli", "serve", "--id", str(node_id), "--join", join,
                             "--data-dir", str(cluster.data_dir(node_id))],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO))
    log.close()
    cluster.procs[node_id] = proc
    return proc


async def wait_for(predicate, deadline_s: float, what: str, cluster: NemesisCluster):
    with trio.move_on_after(deadline_s):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs_tail()}")


async def test_replace_a_member_through_the_log_and_lose_the_old_leader(tmp_path):
    cluster = NemesisCluster(tmp_path)
    try:
        cluster.start_all()
        await cluster.wait_leader()
        async with connect(cluster.endpoints, timeout=10) as client:
            for i in range(20):
                await client.put(f"before/{i}", str(i))

        listed = kv(cluster, "-w", "json", "member", "list")
        assert listed.returncode == 0, listed.stderr
        assert '"role": "voter"' in listed.stdout and listed.stdout.count('"reachable": true') == 3

        refused = kv(cluster, "member", "add", "3", "127.0.0.1:1")
        assert refused.returncode == 1 and "node 3 is already a member" in refused.stderr, refused.stderr

        removed = kv(cluster, "member", "remove", "2")
        assert removed.returncode == 0, removed.stderr + cluster.logs_tail()
        assert "warning: 2 voters now" in removed.stderr  # {1, 3}: either one lost stops the cluster

        async def knows_it_was_removed():
            status = await cluster.status(2)
            return status is not None and status.get("role") == "none"
        await wait_for(knows_it_was_removed, 20, "node 2 to report that it is no longer a member", cluster)
        assert "is no longer a member" in cluster.log_path(2).read_text(errors="replace")
        # It names no leader (the one it knew may be gone), so clients sent there move on to the others.
        assert (await cluster.status(2))["leader"] is None
        # A client that only knows it hears why (QA: "no leader" alone)
        async with connect([cluster.endpoint(2)], timeout=1.5) as only_the_removed:
            with pytest.raises(Unavailable, match=r"node 2 was removed from the cluster .*\(kv member list\)"):
                await only_the_removed.put("to/the-removed", "x")
        async with connect([cluster.endpoint(2), cluster.endpoint(1), cluster.endpoint(3)], timeout=10) as client:
            await client.put("while/removed-runs", "yes")
        cluster.kill(2)

        port = free_ports(1)[0]
        added = kv(cluster, "member", "add", "4", f"127.0.0.1:{port}",
                   endpoints=[cluster.endpoint(1), cluster.endpoint(3)])
        assert added.returncode == 0, added.stderr + cluster.logs_tail()

        early = kv(cluster, "member", "promote", "4", endpoints=[cluster.endpoint(1), cluster.endpoint(3)])
        assert early.returncode == 1 and "has not answered the leader yet" in early.stderr, early.stderr

        stranger = subprocess.run(
            [sys.executable, "-m", "kv_cli", "serve", "--id", "9", "--join", cluster.endpoint(1),
             "--data-dir", str(tmp_path / "node-9")],
            capture_output=True, text=True, timeout=60, cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert stranger.returncode == 1 and "node 9 is not a member" in stranger.stderr, stranger.stderr

        borrowed = subprocess.run(  # node 4 pointed at node 1's data directory by mistake
            [sys.executable, "-m", "kv_cli", "serve", "--id", "4", "--join", cluster.endpoint(1),
             "--data-dir", str(cluster.data_dir(1))],
            capture_output=True, text=True, timeout=60, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
        assert borrowed.returncode == 1 and "belongs to node 1 of cluster" in borrowed.stderr, borrowed.stderr

        start_joiner(cluster, 4, cluster.endpoint(1))
        cluster.addresses[4] = ("127.0.0.1", port)

        async def caught_up():
            status = await cluster.status(4)
            return status is not None and status.get("role") == "learner" and status["applied_slot"] > 0 and \
                await cluster.status(1) is not None
        await wait_for(caught_up, 30, "node 4 to join and catch up", cluster)

        survivors = [cluster.endpoint(1), cluster.endpoint(3), cluster.endpoint(4)]

        async def promoted():
            result = kv(cluster, "member", "promote", "4", endpoints=survivors)
            return result.returncode == 0
        await wait_for(promoted, 30, "kv member promote 4 to succeed", cluster)

        status4 = await cluster.status(4)
        assert status4["config"]["voters"] == [1, 3, 4]
        assert status4["config"]["incarnations"]["4"] == status4["incarnation"]

        cluster.kill(1)
        async with connect([cluster.endpoint(3), cluster.endpoint(4)], timeout=20) as client:
            await client.put("after/remove", "yes")
            for i in range(20):
                assert await client.get(f"before/{i}") == str(i)
            assert await client.get("after/remove") == "yes"

        leader = await cluster.wait_leader(among=[3, 4])
        other = 4 if leader == 3 else 3
        moved = kv(cluster, "move-leader", str(other), endpoints=[cluster.endpoint(3), cluster.endpoint(4)])
        assert moved.returncode == 0, moved.stderr + cluster.logs_tail()
        assert await cluster.wait_leader(among=[3, 4]) == other
        async with connect([cluster.endpoint(3), cluster.endpoint(4)], timeout=20) as client:
            await client.put("after/move", "yes")
            assert await client.get("after/move") == "yes"
    finally:
        cluster.close()


async def test_a_repeated_removal_of_the_leader_is_answered_by_the_next_leader(tmp_path):
    """A leader that removes itself hands over, so a ``member_remove`` the client library re-sends (after
    its attempt timeout, 2 s, when the handover took longer) reaches the next leader, which did not run
    the first: it is answered with success there too (kvstore.members, Members._repeats_last_change).
    Regression: "node N is not a member", and ``kv cluster remove`` of the leader failed though the
    node was removed. Any other request is judged as ever."""
    cluster = NemesisCluster(tmp_path)
    try:
        cluster.start_all()
        old = await cluster.wait_leader()
        async with connect(cluster.endpoints, timeout=15) as client:
            first = await client.member_remove(old)
        others = [i for i in cluster.ids if i != old]
        assert sorted(m["id"] for m in first["members"]) == others
        new = await cluster.wait_leader(among=others)
        async with connect([cluster.endpoint(new)], timeout=15) as client:
            again = await client.member_remove(old)  # the repeat, as the library sends it, at the next leader
            assert sorted(m["id"] for m in again["members"]) == others and again["epoch"] == first["epoch"]
            # (QA: "not a member; add it first with kv member add", which refuses a removed id)
            with pytest.raises(RequestError, match=f"node {old} was removed from the members; ids are never "
                                                   "reused: add the new member under a new id"):
                await client.member_promote(old)
            with pytest.raises(RequestError, match="node 9 is not a member"):
                await client.member_remove(9)
    finally:
        cluster.close()


async def test_the_member_list_asked_of_a_follower_is_the_leaders(tmp_path):
    """A follower may not have learned the newest change yet, so ``member_list`` there answers
    ``not_leader`` and the client follows the hint: the list comes from the leader (it names itself,
    and it alone knows how far each peer has decided). Asked of the leader, the same list."""
    cluster = NemesisCluster(tmp_path)
    try:
        cluster.start_all()
        leader = await cluster.wait_leader()
        follower = next(i for i in cluster.ids if i != leader)
        async with connect([cluster.endpoint(follower)], timeout=15) as client:
            listed = await client.member_list()
        assert listed["leader"] == leader
        assert sorted(m["id"] for m in listed["members"]) == sorted(cluster.ids)
        assert all(m["decided_slot"] is not None for m in listed["members"]), listed  # the leader's knowledge
        proc = kv(cluster, "-w", "json", "member", "list", endpoints=[cluster.endpoint(follower)])
        assert proc.returncode == 0, proc.stderr
        assert '"leader": ' + str(leader) in proc.stdout, proc.stdout
    finally:
        cluster.close()


async def test_move_leader_or_a_removal_that_needs_a_silent_voter_is_refused_at_once(tmp_path):
    """``kv move-leader N`` with node N down: one prompt refusal naming N, no handover started (each one
    pauses new writes), and the leader stays. (It used to start one handover per client retry and end
    with "no answer from the cluster".) And ``kv member remove`` of a live voter, which would leave no
    live majority, is refused; removing the down one is not."""
    cluster = NemesisCluster(tmp_path)
    try:
        cluster.start_all()
        leader = await cluster.wait_leader()
        target = next(i for i in cluster.ids if i != leader)
        cluster.kill(target)
        await trio.sleep(0.5)  # past the 0.3 s election timeout: the leader has not heard from it since
        alive = [cluster.endpoint(i) for i in cluster.ids if i != target]
        started = trio.current_time()
        moved = kv(cluster, "move-leader", str(target), endpoints=alive)
        assert moved.returncode == 1, moved.stderr
        assert f"node {target} has not answered the leader" in moved.stderr, moved.stderr
        assert trio.current_time() - started < 5
        status = await cluster.status(leader)
        assert status["is_leader"] and not status["counters"].get("transfer_started"), status["counters"]

        # Removing a live voter would leave {leader, target} with the target silent: refused, as etcd's
        # strict reconfiguration check does. Removing the silent one leaves a live majority: done.
        other = next(i for i in cluster.ids if i not in (leader, target))
        refused = kv(cluster, "member", "remove", str(other), endpoints=alive)
        assert refused.returncode == 1, refused.stderr
        assert f"would leave voters {sorted([leader, target])}, of which node {target} has not answered" in \
            refused.stderr, refused.stderr
        removed = kv(cluster, "member", "remove", str(target), endpoints=alive)
        assert removed.returncode == 0, removed.stderr
        async with connect(alive, timeout=10) as client:
            await client.put("after/refusals", "yes")
    finally:
        cluster.close()


async def test_a_node_joining_without_cluster_id_joins_the_cluster_its_members_name(tmp_path):
    """``kv serve --join`` without ``--cluster-id`` takes the id of the cluster it joins: ``kv cluster up``
    names its clusters ``kv-<hex>``, and the documented replace-a-node steps (which give no
    ``--cluster-id``) failed on such a cluster with "is in cluster 'kv-93ecda5d', this node is to join
    'kv'" (QA). It still may join only once added (``kv member add``), and a restart keeps the id its
    directory recorded."""
    cluster = NemesisCluster(tmp_path, extra_args=["--cluster-id", "team-a"])
    try:
        cluster.start_all()
        await cluster.wait_leader()
        port = free_ports(1)[0]
        added = kv(cluster, "member", "add", "4", f"127.0.0.1:{port}")
        assert added.returncode == 0, added.stderr + cluster.logs_tail()
        cluster.addresses[4] = ("127.0.0.1", port)
        for attempt in range(2):  # the first run joins; the second restarts on the directory it made
            proc = start_joiner(cluster, 4, cluster.endpoint(1))

            async def serving():
                status = await cluster.status(4)
                return status is not None and status.get("role") == "learner" and status["applied_slot"] > 0
            await wait_for(serving, 30, f"node 4 to join and catch up (run {attempt + 1})", cluster)
            status = await cluster.status(4)
            assert status["cluster_id"] == "team-a"
            assert "joining cluster 'team-a'" in cluster.log_path(4).read_text()
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        cluster.close()


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
async def test_a_leader_asked_to_stop_hands_over_to_the_standby_first(tmp_path, signum):
    """QA (a rolling restart): stopping the leader with SIGTERM left the others to notice after an election
    timeout. A leader asked to stop now hands leadership to a voter that answers it, the standby (the lowest
    other id) first, waits for it to lead, then stops; it says so in its log."""
    import signal

    cluster = NemesisCluster(tmp_path)
    try:
        cluster.start_all()
        leader = await cluster.wait_leader()
        async with connect(cluster.endpoints, timeout=10) as client:
            await client.put("before", "1")
        standby = min(i for i in cluster.ids if i != leader)
        proc = cluster.procs[leader]
        cluster.killed.add(leader)  # (an exit we asked for)
        proc.send_signal(getattr(signal, signum))
        assert proc.wait(timeout=20) == 0
        log_text = cluster.log_path(leader).read_text(errors="replace")
        assert f"handed leadership to node {standby} before stopping" in log_text, log_text[-2000:]
        others = [i for i in cluster.ids if i != leader]
        statuses = [await cluster.status(i) for i in others]
        assert all(s is not None and s["leader"] == standby for s in statuses), statuses
        async with connect([cluster.endpoint(i) for i in others], timeout=10) as client:
            await client.put("after", "2")
            assert await client.get("before") == "1"
    finally:
        cluster.close()


async def test_a_client_of_a_new_cluster_waiting_for_a_member_hears_whom_it_waits_for(tmp_path):
    """etcd QA: while a new cluster waited for a member that was not started yet, clients heard only "no
    leader"; the reason was in the server's log alone. The nodes now say whom they wait for."""
    cluster = NemesisCluster(tmp_path)
    try:
        cluster.start(1)
        cluster.start(2)  # node 3 is never started
        async with connect([cluster.endpoint(1), cluster.endpoint(2)], timeout=2) as client:
            with pytest.raises(Unavailable, match=r"waiting for node\(s\) 3 to answer before founding the cluster"):
                await client.put("k", "v")
    finally:
        cluster.close()
