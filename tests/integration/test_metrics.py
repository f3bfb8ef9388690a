"""``kv serve --metrics-addr``: three real processes, each serving /metrics over HTTP on 127.0.0.1.

How: the harness's cluster with one more flag per node (a metrics port the OS handed out), each
/metrics fetched with urllib and parsed with prometheus_client's parser, exactly as Prometheus reads
it. Waits poll against deadlines. Checks (issue 21): exactly one node reports ``kv_is_leader`` 1 and
it is the leader the nodes report; puts raise the leader's ``kv_requests_total{op="put",outcome="ok"}``
by their number and ``kv_decided_slot`` on every node; SIGKILL of a follower turns the leader's
``kv_peer_up{peer=...}`` from 1 to 0, and a restart turns it back to 1; the content type is
Prometheus's text format and other paths answer 404.
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import Cluster, free_ports

pytestmark = pytest.mark.slow

DEADLINE_SECONDS = 20.0


class MetricsCluster(Cluster):
    """The harness's cluster, each node also serving /metrics on its own port."""

    def __init__(self, root, size: int = 3) -> None:
        super().__init__(root, size)
        self.metrics_ports = dict(zip(self.ports, free_ports(size), strict=True))

    def start(self, node_id: int) -> None:
        log = open(self.root / f"node-{node_id}.log", "ab")
        cmd = [sys.executable, "-m", "kv_cli", "serve", "--id", str(node_id), "--peers", self.peers,
               "--data-dir", str(self.data_dir(node_id)),
               "--metrics-addr", f"127.0.0.1:{self.metrics_ports[node_id]}"]
        self.procs[node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def url(self, node_id: int, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.metrics_ports[node_id]}{path}"

    def scrape(self, node_id: int) -> dict:
        """name -> {sorted label items: value}, as prometheus_client's parser reads the page."""
        with urllib.request.urlopen(self.url(node_id), timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        samples: dict = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def poll(what: str, check):
    deadline = time.monotonic() + DEADLINE_SECONDS
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError) as exc:  # a node still starting its metrics server
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {DEADLINE_SECONDS:g} s (last: {last!r})")


def test_metrics_of_a_real_cluster_move_with_puts_leadership_and_a_kill(tmp_path):
    cluster = MetricsCluster(tmp_path)
    try:
        cluster.start_all()
        leader = cluster.leader()
        ids = list(cluster.ports)

        def scrapes_with_one_leader() -> dict | None:
            s = {i: cluster.scrape(i) for i in ids}
            return s if [i for i in ids if value(s[i], "kv_is_leader") == 1] == [leader] else None

        scrapes = poll("every node's metrics with one leader", scrapes_with_one_leader)
        assert all(value(s, "kv_leader_id") == leader for s in scrapes.values())
        for node_id in ids:  # kv status says where each node serves its metrics
            status = cluster.status(node_id)
            assert status is not None and status["metrics_address"] == f"127.0.0.1:{cluster.metrics_ports[node_id]}"
        puts_before = value(scrapes[leader], "kv_requests_total", op="put", outcome="ok")

        with cluster.client() as client:
            for i in range(25):
                client.put(f"m/{i}", "v")
        after = poll("the puts counted and decided everywhere", lambda: (lambda s: s if all(
            value(s[i], "kv_decided_slot") > value(scrapes[i], "kv_decided_slot") for i in ids) else None)(
            {i: cluster.scrape(i) for i in ids}))
        assert value(after[leader], "kv_requests_total", op="put", outcome="ok") - puts_before == 25
        assert value(after[leader], "kv_fsync_duration_seconds_count") >= 1
        assert value(after[leader], "kv_batch_commands_sum") >= 25

        follower = min(i for i in ids if i != leader)
        poll("the leader's link to the follower up",
             lambda: value(cluster.scrape(leader), "kv_peer_up", peer=str(follower)) == 1)
        cluster.kill(follower)
        poll("the leader's link to the killed follower down",
             lambda: value(cluster.scrape(leader), "kv_peer_up", peer=str(follower)) == 0)
        cluster.start(follower)
        poll("the link up again after the restart",
             lambda: value(cluster.scrape(leader), "kv_peer_up", peer=str(follower)) == 1)

        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(cluster.url(leader, "/nope"), timeout=5)
        assert missing.value.code == 404
    finally:
        cluster.close()
