"""Free ports on 127.0.0.1 for the nodes a test starts, outside the kernel's ephemeral range.

A port that binding port 0 hands out comes from the ephemeral range, the same range the kernel takes
the local port of every outgoing connection from. A node that binds its port seconds after the pick
(``kv cluster add``'s node, a restart on the same port) can then find it taken by one of the many
connections the test's clients and the nodes' peer links open meanwhile: seen once in about 40 runs
(``kv cluster add`` failing with "node 4 exited"). So ports are picked at random below or above that
range (``/proc/sys/net/ipv4/ip_local_port_range``), and checked free by binding them.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_base_port", "free_ports", "port_free"]

_LOWEST = 10000  # below this, well-known and registered services are more common


def port_free(port: int) -> bool:
    """Can a listener bind ``port`` on 127.0.0.1 now?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ephemeral_port_range() -> tuple[int, int]:
    """The local ports the kernel hands to outgoing connections (Linux; elsewhere the IANA range)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def _spans(count: int) -> list[tuple[int, int]]:
    """Where a run of ``count`` ports may start: [a, b) spans outside the ephemeral range."""
    low, high = ephemeral_port_range()
    spans = [(a, b) for a, b in ((_LOWEST, low - count + 1), (high + 1, 65536 - count + 1)) if a < b]
    return spans or [(1024, 65536 - count + 1)]  # (a range this wide leaves no choice)


def free_base_port(count: int = 3, attempts: int = 200) -> int:
    """P with P .. P+count-1 all free on 127.0.0.1, outside the ephemeral range (node N on P+N-1)."""
    spans = _spans(count)
    for _ in range(attempts):
        a, b = random.choices(spans, weights=[b - a for a, b in spans])[0]
        base = random.randrange(a, b)
        if all(port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports outside the ephemeral range in {attempts} attempts")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1, outside the ephemeral range."""
    spans = _spans(1)
    ports: list[int] = []
    for _ in range(200 * count):
        if len(ports) == count:
            return ports
        a, b = random.choices(spans, weights=[b - a for a, b in spans])[0]
        port = random.randrange(a, b)
        if port not in ports and port_free(port):
            ports.append(port)
    if len(ports) == count:
        return ports
    raise RuntimeError(f"no {count} free ports outside the ephemeral range")
