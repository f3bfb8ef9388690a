"""The errors every client of the store raises, and the ``Entry`` a read returns.

One set of classes for all three clients (``kvstore.client``'s ``AsyncClient`` and blocking ``Client``,
and ``kvstore.oneshot.OneShotClient``, which the ``kv`` command uses), so a program catches
``kvstore.client.Unavailable`` whichever client raised it. This module imports neither trio nor the
paxos package: the one-shot client must start fast.
"""
from __future__ import annotations

from typing import NamedTuple

from .frames import BAD_REQUEST

__all__ = ["KVError", "Unavailable", "RequestError", "Entry", "entries_of"]


class KVError(Exception):
    """Base class of every error the client raises."""


class Unavailable(KVError):
    """No answer before the deadline (no leader, no quorum, nodes down), or no answer possible any
    more: a retried write whose first outcome the cluster forgot (error code ``stale``).

    ``outcome_unknown`` is True for a write that was sent at least once: it may or may not have been
    applied (and may still be, later). Within one call the client already retried it with the same
    request id, so the store applied it once at most; calling again is a new write with a new id. That
    is harmless for ``put`` and ``delete`` (the same state either way, at a new revision), but a ``cas``
    called again after its first attempt was applied finds the new value and returns False: read the
    key to learn which it was.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class RequestError(KVError):
    """The cluster refused the request itself (bad key or value, disk full, ...); ``code`` is the
    error code of the reply (``kvstore.frames``: ``bad_request``, ``permission_denied``, ...)."""

    def __init__(self, message: str, code: str = BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


class WatchLost(KVError):
    """A watch ended without its caller ending it: its node closed the connection (it stopped, or the
    network failed) or ended the watch itself (the message says why). ``revision``: every change to the
    watched keys up to this revision was reported: watch again from the next one (``AsyncClient.watch``'s
    ``rev``) on any node that keeps it, or read the keys and watch again. ``code``: the error code the node
    ended it with ("" when the connection ended)."""

    def __init__(self, message: str, revision: int, *, code: str = "", given: frozenset[str] = frozenset(),
                 endpoint: str = "") -> None:
        super().__init__(message)
        self.revision = revision
        self.code = code
        self.endpoint = endpoint  # the node that served it (HOST:PORT): a resumed watch asks it last
        # Keys whose deletes at revision + 1 were given out already: a prefix delete's changes share one
        # revision, which is complete only once a later one shows up (AsyncClient.watch(resume=...) skips them)
        self.given = given


class WatchEvent(NamedTuple):
    """One change a watch reports: ``kind`` "put" (a put, or a cas that swapped: the key's new value,
    version and revision) or "del" (value None, version 0, the revision of the delete)."""

    kind: str
    key: str
    value: str | bytes | None
    version: int
    mod_revision: int


class Entry(NamedTuple):
    """A key's value with its version (writes to the key since it was created) and the revision of
    its last write."""

    key: str
    value: str | bytes
    version: int
    mod_revision: int


def entries_of(items: list[list[object]]) -> list[Entry]:
    """The ``Entry`` of each item of a ``list`` reply asked with ``meta`` (``[key, value, version,
    mod_revision]``). ``KVError`` if the items carry no versions: the node predates ``meta`` and
    ignored it (it answers ``[key, value]``)."""
    entries = []
    for item in items:
        if len(item) != 4:
            raise KVError("the node answered the range without versions: it runs a version of the store "
                          "from before 2026-12-06 (upgrade it, or use list())")
        key, value, version, mod_revision = item
        if not (isinstance(key, str) and isinstance(value, (str, bytes)) and type(version) is int
                and type(mod_revision) is int):
            raise KVError(f"the node answered the range with a malformed item: {item!r:.200}")
        entries.append(Entry(key, value, version, mod_revision))
    return entries
