"""Who a node is: its incarnation, and how a new cluster agrees on its founding members.

Theory of operation
-------------------
A Paxos acceptor is its memory: the promises and acceptances in its data directory. A node that lost
its directory and comes back under its old id has forgotten them, and letting it vote can make a
majority that never saw a decided value decide another one in its slot: an acknowledged write lost,
replicas split (docs/operations.md, "A node that lost its disk"). So a node's identity is its id
*and* its **incarnation**, a random 64-bit value its data directory gets when it is created
(``kvstore.storage``, ``meta.json``). A wiped directory gets a new incarnation.

**Founding.** Every node keeps the incarnations of the cluster's members (``members``, in its
``meta.json``). A node whose directory has no such record yet is *unfounded*. Before it votes (before
its driver, ticker and peer links start), an unfounded node asks every member for its status and
decides with ``decide_founding``:

* every member answered and none is founded: this is a new cluster. Record every member's incarnation
  as they answered and start. (All members started with empty directories: ``kv cluster up``, or
  ``kv serve --peers ...`` on each host.) Founding needs *every* member, not a majority: a majority of
  wiped nodes must not be able to found a second cluster under the old ids while a node with the old
  data is down;
* a founded member lists this node with this incarnation: the founding happened while this node was
  up (it answered, then stopped before it recorded the members). Take that record and start;
* a founded member lists this node with another incarnation, or not at all: this directory is new in a
  cluster that already started. Refuse to start (``IdentityError``), saying what happened and what to do;
* otherwise some members did not answer yet: wait and ask again.

**Peers.** A founded node checks the incarnation in every peer's ``Hello`` against its record and
closes the link of a node that is not the acceptor it was (``check_peer``): such a node counts toward
no quorum, since none of its Promises, Accepteds or HeartbeatAcks is ever read, and it cannot lead.

A directory made by an older version has no incarnation or members record: it gets an incarnation at
open and records the members' incarnations as their Hellos arrive (trust on first use), since it
founded its cluster before incarnations existed.

What this does not do yet: change the members. The member set is the ``--peers`` list; a node that
lost its disk stays out until membership changes exist (issue 17) or its directory is restored.
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger(__name__)

__all__ = ["IdentityError", "Founding", "new_incarnation", "decide_founding", "check_peer", "wait_founding"]


class IdentityError(Exception):
    """This node may not vote under its id: its data directory is not the acceptor the cluster knows."""


def is_incarnation(text: str) -> bool:
    """Whether ``text`` has the form ``new_incarnation`` gives (16 lowercase hex digits)."""
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


def new_incarnation() -> str:
    """A fresh random incarnation: 16 hex digits."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Founding:
    """What ``decide_founding`` concluded: ``members`` to record and start with, or ``waiting_for``."""

    members: dict[int, str] | None = None  # node id -> incarnation
    waiting_for: tuple[int, ...] = ()  # member ids that have not answered yet
    how: str = ""  # "new cluster", "joined the founding", or "" while waiting


def decide_founding(node_id: int, incarnation: str, member_ids: Iterable[int],
                    answers: Mapping[int, dict[str, Any] | None], cluster_id: str | None = None) -> Founding:
    """Decide how an unfounded node may start (see the module docstring).

    ``answers`` maps each other member's id to its status dict (``incarnation``, ``members``: the
    record of a founded node or None, ``cluster_id``) or None when it did not answer. Raises
    ``IdentityError`` when this node must not start: also when a member answers as one of another
    cluster than ``cluster_id`` (``--peers`` names another cluster's nodes: a restored cluster started on
    the old one's addresses was told it lost its data, and to remove a member of the old cluster, QA).
    """
    others = [m for m in sorted(member_ids) if m != node_id]
    for peer in others:
        status = answers.get(peer)
        theirs = status.get("cluster_id") if status is not None else None
        if cluster_id is not None and isinstance(theirs, str) and theirs != cluster_id:
            raise IdentityError(
                f"node {peer} answers as a member of cluster {theirs!r}, but this node's data directory is of "
                f"cluster {cluster_id!r}: --peers names another cluster's nodes. A cluster restored from a "
                f"backup runs on addresses of its own (docs/operations.md, \"Back up and restore\"); a node "
                f"of this cluster needs the addresses of its own members")
    for peer in others:
        status = answers.get(peer)
        if status is None or status.get("members") is None:
            continue
        known = {int(k): v for k, v in status["members"].items()}
        mine = known.get(node_id)
        if mine == incarnation:
            return Founding(members=known, how="joined the founding")
        # The founding record names the founders; a member added later is in the peer's configuration
        found = status.get("config")
        config: dict[str, Any] = found if isinstance(found, dict) else {}
        later = {int(k): v for k, v in dict(config.get("incarnations") or {}).items()}
        role = ("voter" if node_id in (config.get("voters") or ()) else
                "learner" if node_id in (config.get("learners") or ()) else None)
        if mine is None:
            mine = later.get(node_id)
        if mine is not None:
            as_what = f"incarnation {mine}"
        elif role is not None or node_id in known:
            as_what = f"a member ({role or 'founder'})"
        else:
            as_what = "no member at all"
        raise IdentityError(
            f"node {node_id}'s data directory is new (incarnation {incarnation}), but the cluster was founded "
            f"already: node {peer} knows node {node_id} as {as_what}. This node lost its data. Starting it "
            f"empty under id {node_id} could lose acknowledged writes, so it refuses. Restore its data "
            f"directory from a backup of this node, or replace it: kv member remove {node_id}, then add a new "
            f"member under a new id (see docs/operations.md, 'A node that lost its disk')"
        )
    present = {peer: status for peer in others if (status := answers.get(peer)) is not None}
    missing = tuple(peer for peer in others if peer not in present)
    if missing:
        return Founding(waiting_for=missing)
    for peer in others:
        if not present[peer].get("incarnation"):
            raise IdentityError(f"node {peer} did not say its incarnation: it runs an older version of kv; "
                                f"start every member of a new cluster with the same version")
    members = {peer: present[peer]["incarnation"] for peer in others}
    members[node_id] = incarnation
    return Founding(members=members, how="new cluster")


def check_peer(members: Mapping[int, str], peer: int, incarnation: str | None) -> str | None:
    """None if ``peer`` presenting ``incarnation`` is the member this node knows; else why it is not."""
    known = members.get(peer)
    if known is None:
        return None  # not recorded yet (a directory from before incarnations): the caller records it
    if incarnation == known:
        return None
    if incarnation is None:
        return f"node {peer} says no incarnation (an older version?), but this cluster knows it as {known}"
    if not is_incarnation(incarnation):
        return f"node {peer} presents {incarnation[:40]!r}, which is no incarnation (16 hex digits): not a kv node"
    return (f"node {peer} presents incarnation {incarnation}, but this cluster knows node {peer} as incarnation "
            f"{known}: it lost its data directory and may not vote under its old id")


async def wait_founding(node_id: int, incarnation: str, member_ids: Iterable[int],
                        status_of: Callable[[int], Awaitable[dict[str, Any] | None]], *,
                        poll_seconds: float = 0.2, log_every_seconds: float = 5.0,
                        reasons: Mapping[int, str] | None = None, cluster_id: str | None = None,
                        waiting: Callable[[list[int]], None] | None = None) -> Founding:
    """Ask every other member for its status until ``decide_founding`` says how to start.

    ``status_of(peer)`` is an async function returning the peer's status dict, or None if it did not
    answer. Waits as long as it takes (a new cluster needs every member up), logging whom it waits for
    every ``log_every_seconds``, with why each did not answer if ``status_of`` noted it in ``reasons``
    (a member that refuses this node's connections: TLS on one side only), and telling ``waiting`` whom
    it waits for after each round. Raises ``IdentityError`` when this node must not start.
    """
    others = [m for m in sorted(member_ids) if m != node_id]
    next_log = trio.current_time() + log_every_seconds
    while True:
        answers: dict[int, dict[str, Any] | None] = {}

        async def ask(peer: int, answers: dict[int, dict[str, Any] | None]) -> None:
            answers[peer] = await status_of(peer)

        async with trio.open_nursery() as nursery:
            for peer in others:
                nursery.start_soon(ask, peer, answers)
        founding = decide_founding(node_id, incarnation, member_ids, answers, cluster_id)
        if founding.members is not None:
            return founding
        if waiting is not None:
            waiting(list(founding.waiting_for))  # (the node tells its clients why it knows no leader yet)
        if trio.current_time() >= next_log:
            next_log = trio.current_time() + log_every_seconds
            why = "".join(f"; node {peer}: {reasons[peer]}" for peer in founding.waiting_for
                          if reasons and peer in reasons)
            log.warning("node %d: waiting for node(s) %s to answer before founding the cluster (a new cluster "
                        "starts when every member in --peers is up)%s", node_id,
                        ", ".join(map(str, founding.waiting_for)), why)
        await trio.sleep(poll_seconds)
