"""``kvstore.metrics``: what a node's ``/metrics`` says, read back with prometheus_client's own parser.

How: three in-memory nodes (``test_node_memory.MemCluster``, autojump clock); each node's registry
(``metrics.make_registry``) is rendered as Prometheus text (``generate_latest``, what the HTTP server
sends) and parsed with ``prometheus_client.parser.text_string_to_metric_families``, so the test reads
exactly what Prometheus would. Checks:

* exactly one node reports ``kv_is_leader`` 1, and it is the node whose core leads; every node reports
  the leader's ballot round;
* puts move ``kv_requests_total{op="put",outcome="ok"}`` on the leader by the number of puts, and
  ``kv_decided_slot`` on every node; gets, a cas, a delete and a range are counted under their op;
  a write sent to a follower is counted ``not_leader`` there; ``status`` is counted too;
* the histograms: ``kv_batch_commands`` counts one observation per decided slot handed out, whose
  sum is the number of commands; ``kv_fsync_duration_seconds`` counts the fsyncs (a node with fsync
  on) and its buckets are cumulative;
* ``Buckets`` against a naive count over random values.
"""
from __future__ import annotations

import random

import trio
from prometheus_client.parser import text_string_to_metric_families

from kvstore import metrics, wire
from kvstore.client import connect

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, PEERS, MemCluster


def scrape(node) -> dict:
    """name -> {labels tuple: value} for every sample of ``node``'s exposition."""
    text = metrics.metrics_text(metrics.make_registry(node)).decode()
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


async def test_metrics_follow_leadership_requests_and_slots(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        follower = min(i for i in PEERS if i != leader)
        before = {i: scrape(n) for i, n in cluster.nodes.items()}
        assert [i for i, s in before.items() if value(s, "kv_is_leader") == 1] == [leader]
        rounds = {value(s, "kv_ballot_round") for s in before.values()}
        assert rounds == {float(cluster.nodes[leader].replica.ballot.number)}

        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(12):
                await kv.put(f"k{i}", f"v{i}")
            assert await kv.get("k3") == "v3"
            assert await kv.cas("k1", "v1", "x") is True
            assert await kv.delete("k2") is True
            assert len(await kv.list("k")) == 11
            await kv.status(f"{PEERS[leader][0]}:{PEERS[leader][1]}")
        await cluster.wait_converged()

        after = {i: scrape(n) for i, n in cluster.nodes.items()}
        lead = after[leader]
        assert value(lead, "kv_requests_total", op="put", outcome="ok") \
            - value(before[leader], "kv_requests_total", op="put", outcome="ok") == 12
        assert value(lead, "kv_requests_total", op="get", outcome="ok") >= 1
        assert value(lead, "kv_requests_total", op="cas", outcome="ok") == 1
        assert value(lead, "kv_requests_total", op="delete", outcome="ok") == 1
        assert value(lead, "kv_requests_total", op="range", outcome="ok") == 1
        assert value(lead, "kv_requests_total", op="status", outcome="ok") >= 1
        for i, samples in after.items():
            assert value(samples, "kv_decided_slot") > value(before[i], "kv_decided_slot"), i
            assert value(samples, "kv_applied_slot") == value(samples, "kv_decided_slot"), i
            # every decided slot handed out was observed once; the commands add up to the slots' contents
            slots = value(samples, "kv_batch_commands_count")
            assert slots >= value(samples, "kv_decided_slot") - value(before[i], "kv_decided_slot")
            assert value(samples, "kv_batch_commands_sum") >= 14  # 12 puts, a cas, a delete (no-ops add 0)
            assert value(samples, "kv_disk_state", state="ok") == 1
            assert value(samples, "kv_disk_state", state="failed") == 0
        assert value(lead, "kv_write_latency_seconds_count") >= 14

        # A write sent straight to a follower is answered not_leader there, and counted (the client's
        # first attempts may have met it already: the difference counts).
        refused = value(scrape(cluster.nodes[follower]), "kv_requests_total", op="put", outcome="not_leader")
        stream = await net.transport().connect(*PEERS[follower])
        await stream.send_all(wire.encode_frame(wire.PutRequest(
            id=1, key="x", value="y", client_id=b"c" * 16, request_id=1, ack_below=0)))
        reader = wire.FrameReader(stream)
        with trio.fail_after(5):
            reply = wire.decode_body((await reader.receive_frames())[0])
        assert isinstance(reply, wire.ErrorReply) and reply.code == wire.NOT_LEADER
        refused_after = value(scrape(cluster.nodes[follower]), "kv_requests_total", op="put", outcome="not_leader")
        assert refused_after == refused + 1
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_fsyncs_are_counted_in_a_cumulative_histogram(tmp_path):
    # (a real clock: with real fsyncs, some in the committer's thread, the autojump clock skipped past
    # election timeouts while a thread ran, and under load the cluster elected no leader in 10 s)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, fsync=True)
        leader = await cluster.start_all()
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(5):
                await kv.put(f"k{i}", "v")
        samples = scrape(cluster.nodes[leader])
        count = value(samples, "kv_fsync_duration_seconds_count")
        assert count >= 1 and count == cluster.nodes[leader].counters["fsyncs"]
        buckets = sorted((float(dict(labels)["le"]), v)
                         for labels, v in samples["kv_fsync_duration_seconds_bucket"].items())
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and counts[-1] == count  # cumulative, +Inf is the total
        nursery.cancel_scope.cancel()


def test_buckets_agree_with_a_naive_count():
    rng = random.Random(7)
    bounds = metrics.SLOT_COMMANDS_BOUNDS
    buckets = metrics.Buckets(bounds)
    values = [rng.choice([0, 1, 2, 3, 64, 65, 1024, 1025, rng.randrange(2000)]) for _ in range(500)]
    for v in values:
        buckets.observe(v)
    family = buckets.family("x", "x")
    cumulative = {s.labels["le"]: s.value for s in family.samples if s.name == "x_bucket"}
    for bound in bounds:
        assert cumulative[repr(float(bound))] == sum(1 for v in values if v <= bound)
    assert cumulative["+Inf"] == len(values) == buckets.count
    assert [s.value for s in family.samples if s.name == "x_sum"] == [sum(values)]


async def test_the_leader_says_which_peers_answer_and_request_series_start_at_zero(tmp_path, autojump_clock):
    """QA: a paused peer's link stays connected, so ``kv_peer_up`` stayed 1 and the documented alert never
    fired; ``kv_peer_answering`` (leader only) drops to 0 for a peer that has not answered for an
    election timeout. And every ``kv_requests_total`` series is there from the start at 0: one that
    appeared with its first count gave ``rate()`` nothing to compare, so a first burst of timeouts was
    never alerted."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        fresh = scrape(cluster.nodes[leader])
        requests = fresh["kv_requests_total"]
        assert requests[(("op", "put"), ("outcome", "timeout"))] == 0.0
        assert len(requests) == len(metrics.REQUEST_OPS) * len(metrics.REQUEST_OUTCOMES)
        frozen_id, other_id = sorted(i for i in PEERS if i != leader)
        assert value(fresh, "kv_peer_answering", peer=str(frozen_id)) == 1.0
        assert value(fresh, "kv_peer_answering", peer=str(other_id)) == 1.0
        assert "kv_peer_answering" not in scrape(cluster.nodes[frozen_id])  # a follower has no samples

        frozen = cluster.nodes[frozen_id]  # as a paused process: reads nothing, answers nothing, no timers
        frozen.replica.receive = lambda message: None
        frozen._tick = lambda count: None
        options = frozen.options
        await trio.sleep(3 * options.election_timeout_ticks * options.tick_seconds)
        after = scrape(cluster.nodes[leader])
        assert value(after, "kv_is_leader") == 1.0
        assert value(after, "kv_peer_answering", peer=str(frozen_id)) == 0.0
        assert value(after, "kv_peer_answering", peer=str(other_id)) == 1.0
        nursery.cancel_scope.cancel()


async def test_every_metric_the_dashboard_and_the_docs_name_is_exported(tmp_path, autojump_clock):
    """docs/grafana-dashboard.json's queries and docs/operations.md's metrics table name only metrics a
    leader exports, and the table lists every one it exports (a renamed metric leaves a panel empty)."""
    import json
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        text = metrics.metrics_text(metrics.make_registry(cluster.nodes[leader])).decode()
        nursery.cancel_scope.cancel()
    families = {family.name for family in text_string_to_metric_families(text)}
    samples = set(re.findall(r"^(kv_\w+)", text, re.MULTILINE))
    exported = families | samples
    board = json.loads((docs / "grafana-dashboard.json").read_text())
    queried = set(re.findall(r"\bkv_\w+", json.dumps(board)))
    assert queried and queried <= exported, sorted(queried - exported)
    table = set(re.findall(r"^\| `(kv_\w+)", (docs / "operations.md").read_text(), re.MULTILINE))
    assert table <= exported, sorted(table - exported)
    assert families - {"kv"} <= {re.sub(r"_total$", "", name) for name in table} | table, sorted(
        families - table - {re.sub(r"_total$", "", name) for name in table})
