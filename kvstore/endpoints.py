"""Endpoints: the one parser of ``HOST:PORT`` text, for the client, the server and ``kv``.

Theory of operation
-------------------
An endpoint is ``HOST:PORT`` or ``[IPV6]:PORT``. Every place that reads endpoints from a user (the
client's endpoint list, a node's ``--peers``, ``kv --endpoints``, ``KV_ENDPOINTS``, a ``not_leader``
hint) goes through ``parse_endpoint`` here, so that one text is accepted or refused the same way
everywhere. The rules:

* surrounding whitespace is ignored; nothing else is;
* HOST is a name of ASCII letters, digits, ``.``, ``-`` and ``_`` (a host name or an IPv4 address), or
  an IPv6 address in brackets, which comes out without them and in its short form (``[0:0::1]`` ->
  ``::1``). A bare IPv6 address is refused: ``::1:7001`` could mean two different things;
* PORT is ASCII digits in 1-65535;
* etcdctl habits: ``http://HOST:PORT`` (and a trailing ``/``) is taken as ``HOST:PORT``, since a node
  without TLS speaks plain TCP anyway; any other scheme, ``https://`` included, is refused with the
  endpoint to write instead (TLS is asked for with the cacert, cert and key files, never by a scheme,
  so ``https://`` must not quietly connect without it). Several endpoints separated by spaces or
  semicolons are refused with the comma list to write instead.

``format_endpoint`` is the inverse (brackets around IPv6 hosts), so ``format_endpoint(*parse_endpoint(t))``
is the normal form of ``t``, and a normal form parses back to the same pair.

Everything refused raises ``EndpointError``, a ``ValueError`` whose message quotes the text and says what
is wrong. This module does no I/O: it neither resolves names nor checks that anything listens.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

PORT_MAX = 65535
NODE_ID_LIMIT = 2**63  # a node says its id in the hello frame, which takes ids below 2**63 (docs/protocol.md)
_HOST_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


class EndpointError(ValueError):
    """Text that is not an endpoint, an endpoint list or a peer list; the message says why."""


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[IPV6]:PORT"`` -> ``(host, port)``, IPv6 hosts without brackets.

    Raises EndpointError for anything else (see the module docstring for the rules).
    """
    raw = text.strip()
    if not raw:
        raise EndpointError("empty endpoint in the endpoint list")
    if "," in raw:
        raise EndpointError(f"invalid endpoint {text!r}: one endpoint expected, not a comma list")
    if "://" in raw:
        raw = _without_http_scheme(text, raw)
    pieces = raw.replace(";", " ").split()
    if len(pieces) > 1 and sum(":" in piece for piece in pieces) > 1:
        raise EndpointError(f"invalid endpoint {text!r}: separate endpoints with commas: {','.join(pieces)!r}")
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0 or raw[close + 1 : close + 2] != ":":
            raise EndpointError(f"invalid endpoint {text!r}: expected [IPv6]:PORT")
        host, port_text = raw[1:close], raw[close + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise EndpointError(f"invalid endpoint {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host:
            raise EndpointError(f"invalid endpoint {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7001")
        if ":" in host:
            raise EndpointError(f"invalid endpoint {text!r}: write IPv6 addresses as [ADDR]:PORT")
        if not set(host) <= _HOST_NAME_CHARS:
            raise EndpointError(f"invalid endpoint {text!r}: bad host name {host!r}")
    # isdigit() alone accepts non-ASCII digits ("٧٠٠١"), which int() would then read.
    if port_text.startswith("-") and port_text[1:].isascii() and port_text[1:].isdigit():
        raise EndpointError(f"invalid endpoint {text!r}: port {port_text} is out of range 1-{PORT_MAX}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise EndpointError(f"invalid endpoint {text!r}: port {port_text!r} is not a number")
    # Check the length before int(): a number of thousands of digits is slow to convert, and refused.
    port = int(port_text) if len(port_text.lstrip("0")) <= 5 else PORT_MAX + 1
    if not 1 <= port <= PORT_MAX:
        raise EndpointError(f"invalid endpoint {text!r}: port {port_text} is out of range 1-{PORT_MAX}")
    return host, port


def _without_http_scheme(text: str, raw: str) -> str:
    """``raw`` without its ``http://`` (and a trailing ``/``); EndpointError for any other scheme or a path."""
    scheme, _, rest = raw.partition("://")
    rest = rest[:-1] if rest.endswith("/") else rest
    if scheme.lower() == "http" and "/" not in rest:
        return rest
    instead = rest.split("/", 1)[0]
    instead = instead if ":" in instead else "HOST:PORT"
    if scheme.lower() == "http":
        raise EndpointError(f"invalid endpoint {text!r}: endpoints are HOST:PORT, without a path: use {instead}")
    why = "; TLS is set with the cacert, cert and key files (kv --cacert, --cert, --key)" if (
        scheme.lower() == "https") else ""
    raise EndpointError(f"invalid endpoint {text!r}: endpoints are HOST:PORT, without a scheme: use {instead}{why}")


def format_endpoint(host: str, port: int) -> str:
    """``(host, port)`` -> ``"host:port"``, or ``"[host]:port"`` for an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint_list(endpoints: str | Iterable[str]) -> list[tuple[str, int]]:
    """A comma list (``"h1:p1,h2:p2"``) or an iterable of endpoints -> ``[(host, port), ...]``.

    In the given order, duplicates (same normal form) dropped. Raises EndpointError for an empty list,
    an empty entry (``"a:1,"``) or an entry ``parse_endpoint`` refuses.
    """
    parts = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    if isinstance(endpoints, str) and not endpoints.strip():
        raise EndpointError("the endpoint list is empty")
    result: list[tuple[str, int]] = []
    for part in parts:
        endpoint = parse_endpoint(part)
        if endpoint not in result:
            result.append(endpoint)
    if not result:
        raise EndpointError("the endpoint list is empty")
    return result


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    """``"1=127.0.0.1:7001,2=127.0.0.1:7002"`` -> ``{1: ("127.0.0.1", 7001), 2: ("127.0.0.1", 7002)}``.

    Node ids are decimal integers from 1 to 2**63 - 1. Raises EndpointError for an empty list, an empty
    entry, an entry that is not ``ID=ENDPOINT``, an id out of that range, an id given twice, two ids with
    the same endpoint (normal form), or an endpoint ``parse_endpoint`` refuses.
    """
    peers: dict[int, tuple[str, int]] = {}
    if not text.strip():
        raise EndpointError("no peers given")
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise EndpointError(f"empty entry in the peer list {text!r}")
        ident, sep, endpoint_text = item.partition("=")
        ident = ident.strip()
        if not sep or not (ident.isascii() and ident.isdigit()):
            raise EndpointError(f"peer {item!r} is not ID=HOST:PORT")
        node_id = int(ident) if len(ident.lstrip("0")) <= 19 else NODE_ID_LIMIT
        if node_id < 1:
            raise EndpointError(f"peer {item!r}: node ids start at 1")
        if node_id >= NODE_ID_LIMIT:
            raise EndpointError(f"peer {item!r}: node ids are below 2**63")
        if node_id in peers:
            raise EndpointError(f"peer id {node_id} appears twice")
        endpoint = parse_endpoint(endpoint_text)
        for other_id, other in peers.items():
            if other == endpoint:
                raise EndpointError(
                    f"peers {other_id} and {node_id} have the same endpoint {format_endpoint(*endpoint)}"
                )
        peers[node_id] = endpoint
    return peers


def next_in_rotation(cursor: int, failed: int, count: int) -> int:
    """The endpoint a client tries after endpoint ``failed`` did not serve it: the one after ``cursor``, its
    place in the rotation through its ``count`` endpoints, skipping ``failed``. A leader hint moves the
    client to the hinted endpoint but not its cursor, so when a hinted node fails (a removed node may
    still name a leader that is gone) the next try is the endpoint after the one that gave the hint,
    not that node again (which would send it back, and never to the others). Both clients use this."""
    following = (cursor + 1) % count
    if following == failed and count > 1:
        following = (following + 1) % count
    return following
