"""End to end: ``kv watch`` against a real local cluster (``kv cluster up --detach``), as a user runs it.

How: ``kv watch`` runs as a subprocess on each node's endpoint in turn (the lazy learner's too), while
``kv put``/``kv cas``/``kv del`` change keys: each prints every change under the prefix, etcdctl's way
(``PUT``, key, value; ``DELETE``, key) or as JSON lines with ``-w json``, and stops after ``--max-events``
(exit 0). Then the node a watch runs on is killed: given every endpoint, the watch goes on on another node from
the revision after the last one printed (each node keeps its latest changes), and prints every change
once, those made while it moved too; given only that node's endpoint, it ends with exit 1 and says up to
which revision every change was printed. ``kv watch --rev`` prints the kept changes from a revision.
Waiting is polling against deadlines; nothing asserts on timings.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.cli.test_cluster_e2e import COMMAND_SECONDS, Kv
from tests.ports import free_base_port

pytestmark = pytest.mark.slow


@pytest.fixture
def kv(tmp_path):
    runner = Kv(tmp_path / "cluster")
    try:
        yield runner
    finally:
        runner.teardown()


def _start_watch(kv: Kv, endpoint: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(kv.base + ["--endpoints", endpoint, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=kv.env)


def _watches_started(kv: Kv, endpoint: str) -> int:
    result = kv("--endpoints", endpoint, "-w", "json", "status", check=False)
    rows = json.loads(result.stdout) if result.stdout.strip() else []
    return rows[0].get("counters", {}).get("watches_started", 0) if rows and rows[0].get("reachable") else -1


def _wait_watching(kv: Kv, endpoint: str, count: int) -> None:
    """Until the node at ``endpoint`` started ``count`` watches (its counters say)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _watches_started(kv, endpoint) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{endpoint} did not start watch number {count}")


def test_kv_watch_prints_each_change_on_every_node_and_ends_when_its_node_dies(kv):
    base = free_base_port()
    kv("cluster", "up", "--detach", "--base-port", str(base))
    endpoints = [f"127.0.0.1:{base + i}" for i in range(3)]
    for i in range(50):  # writes go on for a while: one follower turns lazy learner
        kv("put", f"warm/{i % 5}", "x")
    watches = [_start_watch(kv, endpoint, "watch", "--prefix", "app/", "--max-events", "4")
               for endpoint in endpoints]
    json_watch = _start_watch(kv, endpoints[0], "-w", "json", "watch", "app/a", "--max-events", "2")
    try:
        for i, endpoint in enumerate(endpoints):
            _wait_watching(kv, endpoint, 2 if i == 0 else 1)
        kv("put", "app/a", "1")
        kv("put", "other", "not watched")
        assert kv("cas", "app/a", "1", "2").returncode == 0
        kv("put", "app/b", input=b"\xff\x00")
        kv("del", "--prefix", "app/")  # app/a and app/b
        outputs = [watch.communicate(timeout=COMMAND_SECONDS) for watch in watches]
        for watch, (out, err) in zip(watches, outputs, strict=True):
            assert watch.returncode == 0, err
            assert out == b"PUT\napp/a\n1\nPUT\napp/a\n2\nPUT\napp/b\n\xff\x00\nDELETE\napp/a\n\n", out
        out, err = json_watch.communicate(timeout=COMMAND_SECONDS)
        assert json_watch.returncode == 0, err
        records = [json.loads(line) for line in out.decode().splitlines()]
        assert [(r["type"], r["key"], r.get("value"), r.get("version")) for r in records] == [
            ("PUT", "app/a", "1", 1), ("PUT", "app/a", "2", 2)]
        assert records[1]["mod_revision"] > records[0]["mod_revision"]

        # from an earlier revision: the kept changes (app/a twice, app/b, then its delete of app/a and app/b)
        first = records[0]["mod_revision"]
        out = kv("-w", "json", "watch", "--prefix", "app/", "--rev", str(first), "--max-events", "5").stdout
        assert [(r["type"], r["key"]) for r in map(json.loads, out.decode().splitlines())] == [
            ("PUT", "app/a"), ("PUT", "app/a"), ("PUT", "app/b"), ("DELETE", "app/a"), ("DELETE", "app/b")]

        # the node of a watch given every endpoint dies: the watch goes on elsewhere, nothing missed or twice
        leader = kv.leader_id()
        follower = next(i for i in (1, 2, 3) if i != leader)
        there = endpoints[follower - 1]
        started = _watches_started(kv, there)
        # (the watch asks the first endpoint first: list the follower's first)
        ordered = ",".join([there] + [e for e in endpoints if e != there])
        moving = _start_watch(kv, ordered, "-w", "json", "watch", "--prefix", "move/", "--max-events", "5")
        _wait_watching(kv, there, started + 1)
        kv("put", "move/1", "1")
        kv("del", "move/1")  # a delete last (QA: printed twice after the move, its revision not yet complete)
        kv("put", "move/0", "0")
        assert kv("--endpoints", there, "get", "--consistency", "s", "move/0").stdout == b"move/0\n0\n"
        kv("del", "move/0")
        time.sleep(0.5)  # (the follower applies the delete and sends it before it dies; not asserted)
        kv("cluster", "kill", str(follower))
        kv("put", "move/2", "2")  # while the watch has no node
        kv("put", "move/3", "3")
        kv("cluster", "restart", str(follower))
        kv("put", "move/4", "4")
        out, err = moving.communicate(timeout=COMMAND_SECONDS)
        assert moving.returncode == 0, (out, err)
        assert [(r["type"], r["key"]) for r in map(json.loads, out.decode().splitlines())] == [
            ("PUT", "move/1"), ("DELETE", "move/1"), ("PUT", "move/0"), ("DELETE", "move/0"), ("PUT", "move/2")]
        assert b"going on from revision" in err and b"Traceback" not in err

        # the node of a watch given only its endpoint dies: the watch ends, exit 1, saying what was printed
        leader = kv.leader_id()
        follower = next(i for i in (1, 2, 3) if i != leader)
        there = endpoints[follower - 1]
        started = _watches_started(kv, there)
        lost = _start_watch(kv, there, "watch", "--prefix", "app/")
        _wait_watching(kv, there, started + 1)
        kv("put", "app/c", "3")
        # the follower applied it (a read there waits for its applies; the event left before the answer)
        assert kv("--endpoints", there, "get", "--consistency", "s", "app/c").stdout == b"app/c\n3\n"
        kv("cluster", "kill", str(follower))
        out, err = lost.communicate(timeout=COMMAND_SECONDS)
        assert lost.returncode == 1, (out, err)
        assert out == b"PUT\napp/c\n3\n"
        assert b"every change up to revision" in err and b"watch again" in err and b"Traceback" not in err
    finally:
        for watch in [*watches, json_watch]:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
