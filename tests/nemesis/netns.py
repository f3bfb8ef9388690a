"""Network namespaces for nemesis tests: each node in its own namespace, joined by veth pairs to a bridge.

Topology (all created by the test, all names carry a per-run suffix, all removed in ``close``)::

    kvn1<sfx> [10.A.B.1] --veth-- \\
    kvn2<sfx> [10.A.B.2] --veth--  br0 in kvbr<sfx>  --veth-- root namespace [10.A.B.100] (the test's clients)
    kvn3<sfx> [10.A.B.3] --veth-- /

A node is partitioned by setting the bridge-side end of its veth down (``isolate``): real packets stop,
TCP connections stall, the kernel does the rest. ``heal`` sets every link up again. Needs root and
``ip netns``; ``NetnsTopology.create`` raises ``NetnsUnavailable`` (the test skips) otherwise.
"""
from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess

PORT = 7000


class NetnsUnavailable(Exception):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


class NetnsTopology:
    def __init__(self, size: int) -> None:
        self.size = size
        self.sfx = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.bridge_ns = f"kvbr{self.sfx}"
        self.node_ns = {i: f"kvn{i}{self.sfx}" for i in range(1, size + 1)}
        self.host_if = f"kvh{self.sfx}"
        self.subnet = self._pick_subnet()
        self.created_ns: list[str] = []

    @staticmethod
    def _pick_subnet() -> ipaddress.IPv4Network:
        routes = _ip("-4", "route", "show", "table", "all", check=False).stdout if shutil.which("ip") else ""
        used = [ipaddress.ip_network(tok, strict=False) for tok in routes.split()
                if "/" in tok and tok[0].isdigit()]
        rng = random.Random()
        for _ in range(100):
            net = ipaddress.ip_network(f"10.{rng.randrange(200, 250)}.{rng.randrange(1, 250)}.0/24")
            if not any(net.overlaps(u) for u in used):
                return net
        raise NetnsUnavailable("no free 10.x.y.0/24 subnet")

    def address(self, node_id: int) -> str:
        return str(self.subnet.network_address + node_id)

    def bridge_end(self, node_id: int) -> str:
        return f"kv{node_id}b{self.sfx}"

    @classmethod
    def create(cls, size: int = 3) -> NetnsTopology:
        if os.geteuid() != 0:
            raise NetnsUnavailable("not root")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the ip command is missing")
        topo = cls(size)
        try:
            topo._build()
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            topo.close()
            raise NetnsUnavailable(f"cannot build namespaces: {detail.strip()}") from exc
        return topo

    def _build(self) -> None:
        prefix = self.subnet.prefixlen
        br = self.bridge_ns
        _ip("netns", "add", br)
        self.created_ns.append(br)
        _ip("-n", br, "link", "set", "lo", "up")
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for i, ns in self.node_ns.items():
            _ip("netns", "add", ns)
            self.created_ns.append(ns)
            node_end, bridge_end = f"kv{i}n{self.sfx}", self.bridge_end(i)
            _ip("link", "add", node_end, "type", "veth", "peer", "name", bridge_end)
            _ip("link", "set", node_end, "netns", ns)
            _ip("link", "set", bridge_end, "netns", br)
            _ip("-n", br, "link", "set", bridge_end, "master", "br0")
            _ip("-n", br, "link", "set", bridge_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/{prefix}", "dev", node_end)
            _ip("-n", ns, "link", "set", node_end, "up")
        host_peer = f"kvhb{self.sfx}"
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", host_peer)
        _ip("link", "set", host_peer, "netns", br)
        _ip("-n", br, "link", "set", host_peer, "master", "br0")
        _ip("-n", br, "link", "set", host_peer, "up")
        _ip("addr", "add", f"{self.subnet.network_address + 100}/{prefix}", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")

    def addresses(self) -> dict[int, tuple[str, int]]:
        return {i: (self.address(i), PORT) for i in self.node_ns}

    def command_prefix(self, node_id: int) -> list[str]:
        return ["ip", "netns", "exec", self.node_ns[node_id]]

    def isolate(self, node_id: int) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self.bridge_end(node_id), "down")

    def heal(self) -> None:
        for i in self.node_ns:
            _ip("-n", self.bridge_ns, "link", "set", self.bridge_end(i), "up")

    def close(self) -> None:
        """Remove everything created (processes inside must be gone first)."""
        _ip("link", "del", self.host_if, check=False)
        for ns in reversed(self.created_ns):
            _ip("netns", "del", ns, check=False)
        self.created_ns.clear()
