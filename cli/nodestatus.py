"""Reading node status dicts (from ``client.cluster_status()``) without trusting their exact shape.

A status dict may lack any field (an unreachable node has little more than its endpoint), so every
lookup tries a short list of names and gives None when none is present. ``kv status``, ``kv health``
and ``kv cluster up/status`` share these helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# (column header, candidate keys in the status dict in order of preference)
STATUS_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ID", ("node_id", "id")),
    ("ADDRESS", ("endpoint", "address", "addr")),
    ("ENGINE", ("engine",)),  # core or classic (kv serve --engine)
    ("REACHABLE", ("reachable",)),
    ("LEADER", ("leader_id", "leader")),
    ("IS_LEADER", ("is_leader",)),
    ("BALLOT", ("ballot", "promised_ballot", "promised")),
    ("DECIDED", ("decided_slot", "decided")),
    ("APPLIED", ("applied_slot", "applied")),
    ("LEARNER", ("learner",)),
    ("BACKLOG", ("apply_backlog",)),
    ("DISK", ("disk",)),  # ok, read-only (disk full) or failed; disk_error says why
    ("FSYNC_MS", ("fsync_ms",)),  # recent fsyncs of the log, averaged: a slow disk
    ("LOG_SIZE", ("log_bytes", "log_size", "log_entries", "log_length")),
    ("SNAPSHOT", ("snapshot_slot", "snapshot")),
    ("REVISION", ("revision",)),
    ("KEYS", ("keys", "key_count", "size")),
    ("STATE_HASH", ("state_hash",)),
    ("ERROR", ("error",)),
)

# Keys shown another way: disk_error under the table (see disk_problems), storage_full as DISK.
_NOT_COLUMNS = {"disk_error", "storage_full"}
_KNOWN_KEYS = {key for _, keys in STATUS_FIELDS for key in keys} | _NOT_COLUMNS


SHORT_HASH_CHARS = 12


def short_hash(value: Any) -> Any:
    """The first characters of a long hex digest, enough to compare replicas by eye."""
    if isinstance(value, str) and len(value) > SHORT_HASH_CHARS:
        return value[:SHORT_HASH_CHARS]
    return value


def field(status: Mapping[str, Any], header: str) -> Any:
    """The value of the column ``header`` in one status dict, or None if absent."""
    for name, keys in STATUS_FIELDS:
        if name == header:
            for key in keys:
                if key in status and status[key] is not None:
                    return status[key]
            return None
    raise KeyError(header)


def is_reachable(status: Mapping[str, Any]) -> bool:
    reachable = status.get("reachable")
    if reachable is None:  # no flag: a dict with real fields came from a live node
        return any(k in status for k in ("decided_slot", "ballot", "leader_id", "applied_slot"))
    return bool(reachable)


def is_leader(status: Mapping[str, Any]) -> bool:
    if status.get("is_leader") is not None:
        return bool(status["is_leader"])
    node_id = field(status, "ID")
    leader = field(status, "LEADER")
    return node_id is not None and leader is not None and node_id == leader


def known_leader(statuses: Sequence[Mapping[str, Any]]) -> Any:
    """The leader id that reachable nodes report (the most common one), or None if none knows."""
    votes: dict[Any, int] = {}
    for status in statuses:
        if not is_reachable(status):
            continue
        leader = field(status, "LEADER")
        if leader is None and is_leader(status):
            leader = field(status, "ID")
        if leader is None and status.get("is_leader"):
            leader = field(status, "ADDRESS")
        if leader is not None and not isinstance(leader, bool):
            votes[leader] = votes.get(leader, 0) + 1
    if not votes:
        return None
    return max(votes.items(), key=lambda item: item[1])[0]


def confirmed_leader(statuses: Sequence[Mapping[str, Any]]) -> Any:
    """``known_leader``, unless that leader was asked too and did not answer saying it leads: a leader
    just killed or paused is still named by the followers until they elect another (QA: ``kv health``
    said healthy, naming a leader it had just listed as unreachable). A leader outside the endpoints
    asked is taken on the followers' word. None then, or if no node names one."""
    leader = known_leader(statuses)
    if leader is None:
        return None
    address = None
    for status in statuses:
        if is_reachable(status) and field(status, "ID") == leader:
            return leader if is_leader(status) else None
        config = status.get("config")
        addresses = config.get("addresses") if isinstance(config, Mapping) else None
        if isinstance(addresses, Mapping) and address is None:
            address = addresses.get(str(leader))
    asked = {status.get("endpoint") for status in statuses} | {field(status, "ADDRESS") for status in statuses}
    if address is not None and address in asked:
        return None  # asked, and no answer from it (it would have matched above)
    return leader


def present_columns(statuses: Sequence[Mapping[str, Any]]) -> list[str]:
    """Known columns that at least one status has, in a fixed order; ID and ADDRESS always."""
    columns = []
    for header, _keys in STATUS_FIELDS:
        if header in ("ID", "ADDRESS") or any(field(s, header) is not None for s in statuses):
            columns.append(header)
    return columns


def extra_keys(statuses: Sequence[Mapping[str, Any]]) -> list[str]:
    """Scalar keys we have no column for (shown as extra columns so nothing present is hidden)."""
    extra: list[str] = []
    for status in statuses:
        for key, value in status.items():
            if key in _KNOWN_KEYS or key in extra:
                continue
            if value is None or isinstance(value, (str, int, float, bool, list, tuple)):
                extra.append(key)
    return extra


def disk_problems(statuses: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per node whose disk is not ok: its id, the disk state and why (the file, the error,
    what to do), for ``kv status`` to print under its table."""
    lines = []
    for status in statuses:
        state = status.get("disk")
        if state is not None and state != "ok":
            lines.append(f"node {field(status, 'ID')}: disk {state}: {status.get('disk_error') or 'no reason given'}")
    return lines
