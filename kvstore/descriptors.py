"""File descriptors: how many client connections a node takes, so that connections never starve its disk.

Theory of operation
-------------------
Every client connection holds a file descriptor, and so does every file the node opens: a snapshot
being written, the new log of a compaction, a backup being read. Before this module a node took every
connection offered. Idle connections alone (a client that leaks them, or anyone who can reach the
port) used up the process's descriptors; the next snapshot then failed with EMFILE ("too many open
files"), which the node took for a failed disk and stopped voting for good, and two such nodes stopped
a 3-node cluster.

So a node takes at most ``client_connections_max`` client connections (``kv serve
--max-client-connections``) and keeps ``RESERVED_DESCRIPTORS`` more for its own files, listeners and
peer links. ``kv serve`` first raises the soft limit on open files to the hard limit (``raise_soft_limit``;
Go's runtime does the same for etcd), then ``connections_max`` checks the wanted number against what
the limit leaves, or picks one (``CLIENT_CONNECTIONS_DEFAULT``, less if the limit is low). A connection
over the limit is answered ``unavailable`` (refused: nothing of it ran) and closed
(``kvstore.clients``); the clients try another node or wait, as for any refusal. Unless a connection
never sent a request, or a client has been silent for ``IDLE_EVICT_SECONDS``: then that one is closed
and the new one served, so that connections which say nothing (a leak, a flood) cannot keep clients out.

And a snapshot that still finds no descriptor (another process used up the system's, ENFILE) is not a
failed disk: nothing on disk changed, so the node keeps voting and tries again later
(``kvstore.storage.OutOfDescriptors``, ``kvstore.snapshots``).

Rules: nothing here touches a node; ``raise_soft_limit`` is for the ``kv serve`` process (a library
embedding a node keeps the limits it has).
"""
from __future__ import annotations

import resource

__all__ = ["CLIENT_CONNECTIONS_DEFAULT", "RESERVED_DESCRIPTORS", "OVER_LIMIT_FIRST_FRAME_SECONDS",
           "IDLE_EVICT_SECONDS",
           "raise_soft_limit", "open_files_limit", "connections_max", "over_limit_headroom",
           "TooFewDescriptors"]

CLIENT_CONNECTIONS_DEFAULT = 4096
"""Client connections a node takes unless told otherwise (fewer if the limit on open files is low)."""

RESERVED_DESCRIPTORS = 128
"""Descriptors kept for the node's own use: its log, snapshots and backups being written or read, its
listeners, peer links (one each way per peer, a few more while links are re-made), the metrics server,
trio's own. Also the headroom past ``client_connections_max`` in which a connection may still show it
is a peer (see ``kvstore.clients``)."""

OVER_LIMIT_FIRST_FRAME_SECONDS = 2.0
"""A connection that arrives while the client connections are at their limit may still be a peer's
(whose Hello comes at once): it is given this long to show it, then refused."""


IDLE_EVICT_SECONDS = 10.0
"""While the client connections are at their limit, a client that has sent nothing for this long (none
unanswered) gives its place to a new connection that sent a request, as one that never sent a request
does at once: silent connections cannot keep clients out. Our clients reconnect on their own."""


def over_limit_headroom(connections: int, limit: int) -> int:
    """Connections past ``connections`` (the client connections' limit) that may still wait a moment to
    show they are a peer's: half of what the limit on open files leaves, at most half the reserve. Any
    more are closed as soon as they are accepted."""
    return max(0, min(RESERVED_DESCRIPTORS, limit - connections) // 2)


class TooFewDescriptors(ValueError):
    """The wanted number of client connections does not fit in the process's limit on open files."""


def open_files_limit() -> int:
    """The process's soft limit on open files (``ulimit -n``); a large number if it has none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_soft_limit() -> int:
    """Raise the soft limit on open files to the hard limit, if it is lower; return the soft limit now.
    A limit that cannot be raised (a container's policy) is kept as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # e.g. an infinite hard limit that the kernel caps lower (nr_open): keep the soft one
    return open_files_limit()


def connections_max(wanted: int, limit: int) -> int:
    """The client connections a node takes: ``wanted`` (0: pick one) within ``limit`` open files.

    Picked: ``CLIENT_CONNECTIONS_DEFAULT``, or what the limit leaves after ``RESERVED_DESCRIPTORS`` if
    that is less (half the limit if it is very low, at least 1). Wanted: refused with
    ``TooFewDescriptors`` (the message says what to do) if it does not fit beside the reserve.
    """
    room = max(limit - RESERVED_DESCRIPTORS, limit // 2, 1)
    if wanted <= 0:
        return min(CLIENT_CONNECTIONS_DEFAULT, room)
    if wanted > room:
        raise TooFewDescriptors(
            f"{wanted} client connections need {wanted + RESERVED_DESCRIPTORS} open files ({RESERVED_DESCRIPTORS} "
            f"kept for the node's own), but this process may open {limit} (ulimit -n): raise that limit "
            f"or take at most {room}")
    return wanted
