"""Prometheus metrics of one node: ``kv serve --metrics-addr HOST:PORT`` serves them at ``/metrics``.

Theory of operation
-------------------
Nothing on a request's path talks to ``prometheus_client``: the node's modules keep plain numbers,
as they keep ``Node.counters``, and this module reads them when Prometheus scrapes (a custom collector,
``NodeCollector``, in a registry of the node's own). What each module keeps:

* ``Waiters.requests``: answered client requests, ``(op, outcome) -> count`` (a dict increment each);
* ``GroupCommit.fsync_seconds`` and ``Learner.slot_commands``: ``Buckets``, a histogram that costs one
  bisect per observation (prometheus_client's own ``Histogram.observe`` takes a lock: ~2 us, ten times
  more, on every slot);
* the gauges (leader, ballot, slots, disk, peers) are read from ``Node.status()`` and the peer links
  at scrape time, so they cost nothing between scrapes.

The exposition is prometheus_client's (``generate_latest``, the text format 0.0.4), served by
``kvstore.httpserve`` in the node's own nursery: no thread. Every metric is listed, one line each, in
docs/operations.md ("Metrics").

Rules: the collector only reads the node; it never feeds the core or waits. A scrape costs one
``Node.status()`` call (O(1): the state hash is kept up to date by each write) plus the rendering.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from . import httpserve, wire

if TYPE_CHECKING:
    from .server import Node

__all__ = ["Buckets", "NodeCollector", "serve_metrics", "request_op", "metrics_text", "FSYNC_SECONDS_BOUNDS",
           "SLOT_COMMANDS_BOUNDS", "OUTCOME_OF_CODE", "DISK_STATES"]

FSYNC_SECONDS_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5)
SLOT_COMMANDS_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DISK_STATES = ("ok", "read-only", "failed")
# The text format every Prometheus version reads; our metric names are plain, so generate_latest's
# output is the same in the newer 1.0.0 format that prometheus_client now announces by default.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# kv_requests_total's op label, by request type (a delete with --prefix is a delete too)
_OPS = {wire.PutRequest: "put", wire.DeleteRequest: "delete", wire.CasRequest: "cas", wire.GetRequest: "get",
        wire.ListRequest: "range", wire.StatusRequest: "status", wire.WatchRequest: "watch",
        wire.UnwatchRequest: "unwatch"}
# ... and its outcome label, by the error code of the reply
OUTCOME_OF_CODE = {wire.NOT_LEADER: "not_leader", wire.TIMEOUT: "timeout", wire.STALE: "stale", wire.EXPIRED: "expired",
                   wire.DISK_FAILED: "disk_failed", wire.STORAGE_FULL: "disk_full",
                   wire.BAD_REQUEST: "error"}


# Every op and outcome, each series exported from the start at 0: a series that first appears with its
# first count has no earlier point, and rate() over it stays 0, so an alert on a first burst of timeouts
# never fired (QA)
REQUEST_OPS = ("put", "delete", "cas", "get", "range", "status", "other")
REQUEST_OUTCOMES = ("ok", "not_leader", "timeout", "stale", "expired", "error", "disk_failed", "disk_full", "denied")


def request_op(request: object) -> str:
    """The ``op`` label of a client request: put, delete, cas, get, range, status (else other)."""
    return _OPS.get(type(request), "other")


class Buckets:
    """A histogram kept as plain counts: ``observe`` is one bisect and two additions.

    ``counts[i]`` counts observations ``<= bounds[i]`` and above the bound before it; the last counts
    those above every bound (Prometheus's ``+Inf`` bucket is the total).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative = []
        total = 0
        for bound, count in zip(self.bounds, self.counts[:-1], strict=True):
            total += count
            cumulative.append((_le(bound), total))
        total += self.counts[-1]
        cumulative.append(("+Inf", total))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.sum)


def _le(bound: float) -> str:
    return repr(float(bound))


class NodeCollector:
    """Reads a ``kvstore.server.Node`` into Prometheus metric families at each scrape."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        status = node.status()
        node_label = str(node.node_id)

        def gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, value=float(value or 0))

        info = GaugeMetricFamily("kv_node_info", "This node: its id, engine, cluster id and incarnation (always 1)",
                                 labels=["node", "engine", "cluster_id", "incarnation"])
        info.add_metric([node_label, str(status.get("engine", "")), str(status.get("cluster_id", "")),
                         str(status.get("incarnation", ""))], 1)
        yield info
        yield gauge("kv_is_leader", "1 if this node leads (and is not fenced), else 0", status.get("is_leader"))
        ballot = status.get("ballot") or [0, 0]
        yield gauge("kv_ballot_round", "The round (number) of the ballot this node promised", ballot[0])
        yield gauge("kv_ballot_node", "The node id in the ballot this node promised (who proposed it)", ballot[1])
        leader = status.get("leader")
        yield gauge("kv_leader_id", "The node this node believes leads (0: none known)", leader or 0)
        yield gauge("kv_decided_slot", "Highest slot such that it and all below are decided here",
                    status.get("decided_slot"))
        yield gauge("kv_applied_slot", "Highest slot the state machine has applied", status.get("applied_slot"))
        yield gauge("kv_snapshot_slot", "Slot of this node's latest snapshot (the log starts after it)",
                    status.get("snapshot_slot"))
        yield gauge("kv_apply_backlog_commands", "Decided commands queued and not applied yet",
                    status.get("apply_backlog"))
        yield gauge("kv_learner_lazy", "1 while this node is a lazy learner, else 0",
                    status.get("learner") == "lazy")
        yield gauge("kv_log_bytes", "Bytes in the log file above the snapshot", status.get("log_bytes"))
        yield gauge("kv_keys", "Keys in the state machine", status.get("keys"))
        yield gauge("kv_revision", "The state machine's revision", status.get("revision"))
        yield gauge("kv_snapshotting", "1 while a snapshot is being written", status.get("snapshotting"))
        yield gauge("kv_client_connections", "Client connections open (and connections before their first frame)",
                    status.get("client_connections"))
        yield gauge("kv_client_connections_max", "Client connections this node takes at once "
                    "(kv serve --max-client-connections)", status.get("client_connections_max"))

        disk = GaugeMetricFamily("kv_disk_state", "1 for the state this node's disk is in (ok, read-only, failed)",
                                 labels=["state"])
        current = status.get("disk", "ok")
        for state in DISK_STATES:
            disk.add_metric([state], 1.0 if state == current else 0.0)
        yield disk

        peers = GaugeMetricFamily("kv_peer_up", "1 while this node's link to the peer is connected", labels=["peer"])
        for peer_id, outbox in sorted(node.peer_links.outboxes.items()):
            peers.add_metric([str(peer_id)], 1.0 if outbox.fd is not None else 0.0)
        yield peers
        # A paused or partitioned peer's link stays connected (kv_peer_up 1): the leader knows whether each
        # peer answered its ballot lately, and says so (a follower hears only the leader: no samples there)
        answering = GaugeMetricFamily("kv_peer_answering", "Leader only: 1 if the peer answered this leader within "
                                      "an election timeout, else 0", labels=["peer"])
        replica = node.replica
        answered = getattr(replica, "peer_answered_within", None)
        if status.get("is_leader") and answered is not None:
            for peer_id in sorted(node.peer_links.outboxes):
                answering.add_metric([str(peer_id)], 1.0 if answered(peer_id, node.options.election_timeout_ticks)
                                     else 0.0)
        yield answering

        requests = CounterMetricFamily("kv_requests", "Client requests answered, by op and outcome",
                                       labels=["op", "outcome"])
        counts = node.waiters.requests
        seen = {(op, outcome): 0 for op in REQUEST_OPS for outcome in REQUEST_OUTCOMES}
        for key, count in counts.items():
            seen[key] = count
        for (op, outcome), count in sorted(seen.items()):
            requests.add_metric([op, outcome], count)
        yield requests

        counters = status.get("counters") or {}
        core = status.get("core_counters") or {}
        yield CounterMetricFamily("kv_elections", "Elections this node started (since its start)",
                                  value=core.get("elections", 0))
        yield CounterMetricFamily("kv_became_leader", "Elections this node won (since its start)",
                                  value=core.get("became_leader", 0))
        snapshots = CounterMetricFamily("kv_snapshots", "Snapshots: written by this node, installed from a "
                                        "peer (it fell behind), adopted from the leader (lazy learner)",
                                        labels=["kind"])
        snapshots.add_metric(["written"], counters.get("snapshots", 0))
        snapshots.add_metric(["installed"], counters.get("snapshots_installed", 0))
        snapshots.add_metric(["adopted"], counters.get("snapshots_adopted", 0))
        yield snapshots
        yield CounterMetricFamily("kv_quiet_snapshots", "Snapshots this node wrote early because it went quiet "
                                  "(ServerOptions.idle_snapshot_seconds; counted in kv_snapshots_total too)",
                                  value=counters.get("snapshots_when_idle", 0))
        yield CounterMetricFamily("kv_disk_failures", "Storage errors that fenced this node",
                                  value=counters.get("disk_failures", 0))
        yield CounterMetricFamily("kv_connections_refused", "Connections refused because the client connections "
                                  "were at their limit", value=counters.get("connections_refused_over_limit", 0))
        yield CounterMetricFamily("kv_connections_evicted", "Silent connections closed at the limit to make "
                                  "room for a new one that sent a request",
                                  value=counters.get("connections_evicted_silent", 0))
        yield CounterMetricFamily("kv_snapshots_postponed", "Snapshots postponed because no file descriptor was "
                                  "left to create their file",
                                  value=counters.get("snapshots_postponed_no_descriptors", 0))
        yield CounterMetricFamily("kv_log_records", "Records appended to the log", value=counters.get("records", 0))
        yield GaugeMetricFamily("kv_watches", "Watches (kv watch) this node serves now", value=status.get("watches", 0))
        yield CounterMetricFamily("kv_watch_events", "Changes this node reported to watches (one per watch told)",
                                  value=counters.get("watch_events", 0))
        yield CounterMetricFamily("kv_event_loop_stalls", "Times this node's event loop ran nothing else for 0.1 s "
                                  "or more (a long step, or no CPU): leaders change when stalls near the election "
                                  "timeout", value=counters.get("loop_stalls", 0))

        yield SummaryMetricFamily("kv_write_latency_seconds", "Writes answered by this node (as leader) and their "
                                  "seconds from arrival to answer: rate(_sum) / rate(_count) is the mean",
                                  count_value=counters.get("writes_answered", 0),
                                  sum_value=counters.get("write_latency_us", 0) / 1e6)

        yield node.commit.fsync_seconds.family(
            "kv_fsync_duration_seconds", "Seconds per fsync of the log (one fsync covers many batches)")
        yield node.learner.slot_commands.family(
            "kv_batch_commands", "Commands per decided slot handed out to this node's state machine")


def metrics_text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def make_registry(node: Node) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry


async def serve_metrics(node: Node, address: str, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``node``'s metrics at ``http://ADDRESS/metrics`` until cancelled (``task_status.started(port)``)."""
    registry = make_registry(node)

    async def handle(request: httpserve.Request) -> httpserve.Response:
        if request.path not in ("/metrics", "/"):
            return httpserve.Response(404, b"not found: try /metrics\n")
        if request.method not in ("GET", "HEAD"):
            return httpserve.Response(405, b"GET /metrics\n")
        return httpserve.Response(200, metrics_text(registry), CONTENT_TYPE)

    await httpserve.serve_http(handle, address, task_status=task_status)
