"""Fixtures for the ``kv`` CLI tests: a fake client behind ``kv_cli.common.make_client`` and
``make_oneshot_client`` (the trio client and the one-shot client).

The fake keeps a dict in memory with revisions like the real state machine, records how it was built
(endpoints, timeout), and can be told to raise an error on the next call. No server is involved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import kv_cli.common


@dataclass
class FakeEntry:
    key: str
    value: str | bytes
    version: int
    mod_revision: int


@dataclass
class FakeCluster:
    data: dict[str, FakeEntry] = field(default_factory=dict)
    revision: int = 0
    error: BaseException | None = None  # raised by every call while set
    statuses: list[dict[str, Any]] = field(default_factory=list)
    connects: list[tuple[list[str], float]] = field(default_factory=list)
    calls: list[tuple[str, tuple, dict]] = field(default_factory=list)

    def set(self, key: str, value: str | bytes) -> None:
        self.revision += 1
        old = self.data.get(key)
        self.data[key] = FakeEntry(key, value, (old.version if old else 0) + 1, self.revision)


class FakeClient:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.cluster.calls.append((name, args, kwargs))
        if self.cluster.error is not None:
            raise self.cluster.error

    def put(self, key: str, value: str | bytes) -> int:
        self._call("put", key, value)
        self.cluster.set(key, value)
        return self.cluster.revision

    def get_entry(self, key: str, *, consistency: str = "l") -> FakeEntry | None:
        self._call("get_entry", key, consistency=consistency)
        return self.cluster.data.get(key)

    def get(self, key: str, *, consistency: str = "l") -> str | bytes | None:
        entry = self.get_entry(key, consistency=consistency)
        return None if entry is None else entry.value

    def delete(self, key: str) -> bool:
        self._call("delete", key)
        self.cluster.revision += 1
        return self.cluster.data.pop(key, None) is not None

    def delete_prefix(self, prefix: str) -> int:
        self._call("delete_prefix", prefix)
        self.cluster.revision += 1
        doomed = [k for k in self.cluster.data if k.startswith(prefix)]
        for k in doomed:
            del self.cluster.data[k]
        return len(doomed)

    def cas(self, key: str, expected: str | bytes | None, new: str | bytes) -> bool:
        self._call("cas", key, expected, new)
        current = self.cluster.data.get(key)
        if (current.value if current else None) != expected:
            self.cluster.revision += 1
            return False
        self.cluster.set(key, new)
        return True

    def list(self, prefix: str = "", *, keys_only: bool = False, consistency: str = "l", limit: int = 0):
        self._call("list", prefix, keys_only=keys_only, consistency=consistency, limit=limit)
        items = sorted((k, e.value) for k, e in self.cluster.data.items() if k.startswith(prefix))
        return [(k, None if keys_only else v) for k, v in items[:limit or None]]

    def range_items(self, prefix: str = "", *, keys_only: bool = False, consistency: str = "l", limit: int = 0,
                    meta: bool = False) -> list[list[Any]]:
        self._call("range_items", prefix, keys_only=keys_only, consistency=consistency, limit=limit, meta=meta)
        entries = sorted((k, e) for k, e in self.cluster.data.items() if k.startswith(prefix))[:limit or None]
        return [[k, *([] if keys_only else [e.value]), *([e.version, e.mod_revision] if meta else [])]
                for k, e in entries]

    def admin(self, op: str, node: int = 0, address: str = "") -> dict[str, Any]:
        self._call("admin", op, node, address)
        return {"leader": node} if op == "move_leader" else {}

    def cluster_status(self) -> list[dict[str, Any]]:
        self._call("cluster_status")
        return [dict(s) for s in self.cluster.statuses]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[FakeCluster]:
    """A FakeCluster wired in as the client factory; the environment points at an empty cluster dir."""
    cluster = FakeCluster()

    @contextlib.contextmanager
    def make_client(endpoints: list[str], timeout: float) -> Iterator[FakeClient]:
        cluster.connects.append((list(endpoints), timeout))
        yield FakeClient(cluster)

    monkeypatch.setattr(kv_cli.common, "make_client", make_client)
    monkeypatch.setattr(kv_cli.common, "make_oneshot_client", make_client)
    monkeypatch.delenv("KV_ENDPOINTS", raising=False)
    monkeypatch.setenv("KV_CLUSTER_DIR", str(tmp_path / "cluster"))
    yield cluster


@pytest.fixture
def nodes() -> Iterator[Any]:
    """``nodes(handler, **kwargs)`` starts a ``fakenodes.FakeNode``; all are closed after the test."""
    from tests.cli.fakenodes import FakeNode

    made: list[FakeNode] = []

    def make(handler: Any, **kwargs: Any) -> FakeNode:
        node = FakeNode(handler, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()
