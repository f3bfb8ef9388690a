"""Membership in the shell: member commands, joining a running cluster, and peer links that follow the
configuration.

Theory of operation
-------------------
The core owns the configuration (``paxos.membership``): it lives in the log, a change is a command
decided like any other, and it governs from alpha slots after its own. This module is the shell's side:

* **Admin requests** (``wire.AdminRequest``: ``kv member list|add|promote|remove``, ``kv move-leader``)
  each run in a task of their own (``Members.handle``), because a change takes a round trip or two.
  The task touches the core only through ``CoreCall`` events that the driver runs between batches (so
  the core is still fed by one task at a time), then polls the core's configuration until the change
  governs, and answers. A follower answers ``not_leader`` with the leader's address; the client
  library retries there.
* **Checks before a change** (each a one-line error, nothing changed): an id that is a member already;
  promoting a learner that lags (by more than ``PROMOTE_LAG_SLOTS_MAX`` decided slots, or that the
  leader never heard from), or one that has not answered for an election timeout (it would be a voter
  the new majority needs); removing the last voter; a second change while one is in progress. A
  promotion pins the incarnation the learner presented on its link, so that a learner that loses its
  disk later is not the voter the configuration names (``kvstore.identity``).
* **A repeated change request gets the first one's answer.** The client library re-sends a request
  that got no answer within its attempt timeout (at most 2 s), and a change can take longer (a voter
  paused, a leader handing over). The repeat must not be refused because of the first ("a membership
  change is in progress" while it runs, "already a member" once it applied), or the operator is told
  that a change failed when it succeeded. So an identical request (op, node, address) that arrives
  while the first runs waits for the first's outcome, and one that arrives after the first took effect
  is answered with success as long as no other change came since, for ``REPEAT_WINDOW_SECONDS``
  (``Members._once``); the same command run again later is refused as usual ("already a member"). A
  repeat that reaches another leader (the first one's leader handed over: always so when a leader
  removes itself, ``kv cluster remove`` of the node that leads) would be refused there ("node 1 is not a
  member"), since that node did not run the first. So every node remembers the last change it saw
  take effect (``Members.sync``), and a leader that would refuse a change request answers it with
  success instead when the request, applied to the configuration before that change, gives the one
  after it, within ``REPEAT_WINDOW_SECONDS`` and with no change since (``Members._repeats_last_change``).
* **Peer links follow the configuration** (``Members.sync``): after every driver batch whose core
  changed its members, the node's address book (``Node.peers``) gets the addresses of every member of
  every configuration still scheduled and the links (``kvstore.peers``) are opened and closed to match.
* **Joining** (``kv serve --join``): an empty data directory asks the members it is given for their
  status, checks that the configuration names it (added as a learner with ``kv member add``), that no
  other incarnation of it is recorded, and starts from that configuration. A member that does not
  lead may have missed the ``kv member add`` (down or cut off when it was decided): its "not a member"
  counts only once every member given, and the leader it names, was asked (``fetch_join_config``).
  Snapshots and the log then reach it as they reach any lagging node.

What is not here: the rules for which configuration governs which slot (``paxos.membership``).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

import trio

from paxos.membership import Config
from paxos.replica import ChangeRefused

from . import commands, wire
from .endpoints import format_endpoint, parse_endpoint

if TYPE_CHECKING:
    from .clients import ClientConn
    from .server import Node, Transport

_T = TypeVar("_T")
_Handler = Callable[[wire.AdminRequest], Awaitable[dict[str, Any]]]

__all__ = ["fetch_cluster_id", "Members", "CoreCall", "JoinError", "fetch_join_config", "PROMOTE_LAG_SLOTS_MAX"]

log = logging.getLogger("kvstore.server")

# A learner this many decided slots behind the leader (or more) may not be promoted yet.
PROMOTE_LAG_SLOTS_MAX = 64
# How long an admin request waits for its change (or transfer) to take effect before it gives up
ADMIN_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.01
# After a change is decided, how long an admin request waits for it to govern before it answers anyway
EFFECT_WAIT_SECONDS = 3.0
# The admin requests that change the configuration (a repeat of one is answered as the first: _once)
CHANGE_OPS = ("member_add", "member_promote", "member_remove")
# How long after a change took effect its repeat is still answered with success (if nothing changed)
REPEAT_WINDOW_SECONDS = 10.0


@dataclass
class CoreCall:
    """An event: run ``fn()`` in the driver (between batches) and hand back its result or exception."""

    fn: Callable[[], object]
    done: trio.Event = field(default_factory=trio.Event)
    result: object = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except Exception as exc:  # noqa: BLE001 -- handed to the waiting task, which reports it
            self.error = exc
        self.done.set()


@dataclass
class _Outcome:
    """A change request this node ran (``Members._once``)."""

    done: trio.Event = field(default_factory=trio.Event)
    result: dict[str, Any] | None = None
    error: Exception | None = None
    finished_at: float = 0.0


class AdminError(Exception):
    """A refused admin request: ``code`` is a wire error code, the message one line for the user."""

    def __init__(self, message: str, code: str = wire.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


class JoinError(Exception):
    """``kv serve --join`` cannot start this node (the message says why and what to do)."""


FEATURE_RETRY_SECONDS = 5.0
"""How long the leader waits for a feature command it proposed to apply before it proposes it again."""


class Members:
    """The membership side of node ``node`` (a ``kvstore.server.Node``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.seen_incarnations: dict[int, str] = {}  # what each peer presented on its link
        self.seen_features: dict[int, tuple[str, ...]] = {}  # ... and the features it said it has (wire.Hello)
        self._feature_proposed_at = -math.inf  # when we last proposed client-expiry (switch_features_on)
        self._epoch = -1
        self._peer_ids: tuple[int, ...] = ()
        self._shadowed: set[int] = set()  # removed members whose addresses other members have now (sync)
        self._role: str | None = "unknown"  # this node's role in the newest configuration, as last logged
        self._changes: dict[tuple[str, int, str], _Outcome] = {}  # (op, node, address) -> its latest run (_once)
        self._config: Config | None = None  # the newest configuration as of the last sync
        self._last_change: tuple[Config, Config, float] | None = None  # (before, after, when it took effect here)

    # -----------------------------------------------------------------------------------------------
    # the address book and the links

    def sync(self) -> None:
        """Called by the driver after each batch: follow a change of the core's members."""
        replica = self.node.replica
        # Every member of every configuration still scheduled (the classic engine: its fixed members).
        known = getattr(replica, "_known", None)
        if known is None:
            known = set(replica.config.members) - {self.node.node_id}
        epoch = replica.config.epoch
        config = replica.config
        if self._config is not None and epoch == self._config.epoch + 1:
            self._last_change = (self._config, config, trio.current_time())  # for _repeats_last_change
        self._config = config
        # The voters pick the standby (kvstore.learners.standby_of): the configuration's, not the
        # --peers this process started with, which a change of members leaves behind.
        self.node.learner.members = config.node_ids
        peer_ids = tuple(sorted(known))
        if epoch == self._epoch and peer_ids == self._peer_ids:
            return
        self._epoch, self._peer_ids = epoch, peer_ids
        node = self.node
        addresses: dict[int, tuple[str, int]] = {}
        for _effective, _source, config in replica.schedule_through(replica.applied_slot):
            addresses.update(_parse_addresses(config))
        addresses.update(_parse_addresses(replica.config))
        # A member the newest configuration left out whose address it gives to another member (or to this
        # node) is not dialed: what answers there is the other node, which takes the link as one more from
        # us and drops the first, and the two links close each other over and over (QA: kv cluster remove
        # 3; kv cluster add gave node 3's port to node 4, the leader stepped down again and again, and
        # writes ran at a fiftieth of their rate).
        latest = replica.config
        taken = {addresses[m] for m in latest.members if m in addresses}
        if node.node_id in node.peers:
            taken.add(node.peers[node.node_id])
        shadowed = {m for m in peer_ids if m not in latest.members
                    and addresses.get(m, node.peers.get(m)) in taken}  # (or the address --peers gave it)
        if shadowed - self._shadowed:
            log.info("node %d does not dial node(s) %s, removed: the newest configuration gives their addresses "
                     "to other members", node.node_id, ", ".join(map(str, sorted(shadowed - self._shadowed))))
        self._shadowed = shadowed
        for member in peer_ids:
            if member in addresses and member not in shadowed:
                node.peers[member] = addresses[member]
        wanted = (set(peer_ids) - shadowed) | {node.node_id}
        for member in [m for m in node.peers if m not in wanted]:
            del node.peers[member]
            # What we kept of a member no longer scheduled (ids are never reused): resources QA.
            self.seen_incarnations.pop(member, None)
            self.seen_features.pop(member, None)
            node.snapshots.forget_peer(member)
        node.peer_links.sync()
        role = replica.config.role(node.node_id)
        if role != self._role:
            if role is None and self._role is not None:
                log.warning("node %d is no longer a member (configuration epoch %d): it counts toward no quorum "
                            "and nobody sends it the log. Stop this process; to bring the machine back, add it "
                            "under a new id (kv member add ID HOST:PORT, then kv serve --id ID --join ...)",
                            node.node_id, epoch)
                # ... and its clients hear why it knows no leader (QA: "no leader" alone)
                node.waiters.not_leader_message = (f"node {node.node_id} was removed from the cluster (configuration "
                                                   f"epoch {epoch}) and knows no leader: use the members' addresses "
                                                   "(kv member list)")
                # ... and its watches end: nobody sends it the changes from here on (kvstore.watches)
                node.watches.end_all(f"node {node.node_id} was removed from the cluster (configuration epoch "
                                     f"{epoch}): it reports no more changes; watch on a member (kv member list)")
            elif role is not None:
                log.info("node %d is a %s at configuration epoch %d", node.node_id, role, epoch)
            self._role = role

    # -----------------------------------------------------------------------------------------------
    # features of the state machine

    def switch_features_on(self, now: float) -> None:
        """The leader, after ticks: propose switching client expiry on (``kvstore.statemachine``,
        "Exactly-once") once every member said on its link that it has the feature (``wire.Hello``), and
        again ``FEATURE_RETRY_SECONDS`` later if it is not on by then (dropped by a change of leader).
        A member that never dialed us since we started, or runs an older version, keeps it off."""
        node = self.node
        if node.sm.expiry_on or now - self._feature_proposed_at < FEATURE_RETRY_SECONDS:
            return
        seen = self.seen_features
        if any(wire.FEATURE_CLIENT_EXPIRY not in seen.get(member, ())
               for member in node.peers if member != node.node_id):
            return
        self._feature_proposed_at = now
        stamp = time.time_ns() // 1_000_000  # (the horizon it starts from: covers the clients forgotten before)
        if node.replica.propose(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, stamp)):
            log.info("node %d: every member has the %s feature: switching it on", node.node_id,
                     wire.FEATURE_CLIENT_EXPIRY)

    # -----------------------------------------------------------------------------------------------
    # admin requests

    def handle(self, conn: ClientConn, request: wire.AdminRequest) -> None:
        self.node.nursery.start_soon(self._serve, conn, request)

    async def _serve(self, conn: ClientConn, request: wire.AdminRequest) -> None:
        node = self.node
        try:
            handler = getattr(self, "_" + request.op)
            if request.op in CHANGE_OPS:
                result = await self._once(request, handler)
            else:
                result = await handler(request)
            reply: wire.OkReply | wire.ErrorReply = wire.OkReply(id=request.id, result=result)
        except AdminError as exc:
            reply = wire.ErrorReply(id=request.id, code=exc.code, message=str(exc),
                                    leader=node._leader_hint() if exc.code == wire.NOT_LEADER else None)
        node.counters[f"admin_{request.op}"] += 1
        conn.reply(reply)
        node._send_replies()

    async def _once(self, request: wire.AdminRequest, handler: _Handler) -> dict[str, Any]:
        """Run change request ``request`` unless it repeats one (see the module docstring): a repeat of
        a request still running gets its outcome; a repeat of one that took effect, with no change
        since and within ``REPEAT_WINDOW_SECONDS``, gets success, also when another leader ran it."""
        key = (request.op, request.node, request.address)
        now = trio.current_time()
        for old in [k for k, o in self._changes.items()
                    if o.done.is_set() and now - o.finished_at >= REPEAT_WINDOW_SECONDS]:
            del self._changes[old]
        outcome = self._changes.get(key)
        if outcome is not None:
            if not outcome.done.is_set():
                await outcome.done.wait()
                if outcome.error is not None:
                    raise outcome.error
                if outcome.result is not None:
                    return self.describe()
            elif (outcome.error is None and outcome.result is not None
                    and trio.current_time() - outcome.finished_at < REPEAT_WINDOW_SECONDS):
                self._require_leader()
                if self.node.replica.config.epoch == outcome.result["epoch"]:
                    return self.describe()
        outcome = self._changes[key] = _Outcome()
        try:
            try:
                outcome.result = await handler(request)
            except AdminError as exc:
                if exc.code != wire.BAD_REQUEST or not self._repeats_last_change(request):
                    raise
                outcome.result = self.describe()  # a repeat of what another leader did: its answer
            return outcome.result
        except Exception as exc:
            outcome.error = exc
            raise
        finally:
            outcome.finished_at = trio.current_time()
            outcome.done.set()

    def _repeats_last_change(self, request: wire.AdminRequest) -> bool:
        """Is ``request`` the change this node saw take effect last (``sync``), with no change since and
        within ``REPEAT_WINDOW_SECONDS``, and this node leads? Then its refusal here ("node 1 is not a
        member") is that of a repeat whose first run was on another leader (module docstring)."""
        if self._last_change is None or not self.node.replica.is_leader:
            return False
        before, after, at = self._last_change
        if trio.current_time() - at >= REPEAT_WINDOW_SECONDS or self.node.replica.config.epoch != after.epoch:
            return False
        node = request.node
        try:
            if request.op == "member_remove":
                expected = before.remove(node)
            elif request.op == "member_add":
                expected = before.add_learner(node, format_endpoint(*parse_endpoint(request.address)))
            elif request.op == "member_promote":
                expected = before.promote(node)
            else:
                return False
        except ValueError:  # (an EndpointError too) not a change that before allowed: not that change
            return False
        return (expected.node_ids == after.node_ids and expected.learners == after.learners
                and expected.addresses.get(node) == after.addresses.get(node))

    async def _call(self, fn: Callable[[], _T]) -> _T:
        call = CoreCall(fn)
        self.node._post_event(call)
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return cast(_T, call.result)  # what fn returned, run in the driver

    def _require_core_engine(self) -> None:
        """The classic engine's members are fixed: say so first, not a check of the change's members
        (QA: a removal refused because a voter had not answered, which bringing it back would not mend)."""
        if self.node.options.engine == "classic":
            raise AdminError("membership changes need --engine core; the classic engine's members are fixed")

    def _require_leader(self) -> None:
        node = self.node
        if node._fenced:
            raise AdminError(f"this node's disk failed: {node.disk_error}", wire.DISK_FAILED)
        if not node.replica.is_leader:
            raise AdminError("not the leader", wire.NOT_LEADER)

    async def _member_list(self, request: wire.AdminRequest) -> dict[str, Any]:
        """The leader's list when there is a leader: a follower may not have learned the newest change
        yet, so it sends the client there (``not_leader`` with the hint; the client follows it). A node
        that knows no leader answers with its own view (``"leader": None``); one whose disk failed
        refuses (``disk_failed``: the client tries another node)."""
        node = self.node
        if node._fenced:
            # Its view stops where its disk failed (QA: it still called itself the leader, at the epoch
            # before a change the others had decided): the client asks another node.
            raise AdminError(f"this node's disk failed: {node.disk_error}", wire.DISK_FAILED)
        if not node.replica.is_leader and node.replica.leader_id is not None:
            raise AdminError("not the leader", wire.NOT_LEADER)
        return self.describe()

    def describe(self) -> dict[str, Any]:
        """The members as this node knows them: the newest configuration and, on the leader, how far
        each peer has decided."""
        replica = self.node.replica
        config = replica.config
        leader = replica.leader_id
        recorded = self.node.storage.members or {}  # the founding members' incarnations, as recorded here
        members = []
        for member in config.members:
            members.append({
                "id": member, "role": config.role(member),
                "address": config.addresses.get(member) or _address_of(self.node, member),
                "incarnation": config.incarnations.get(member) or self.seen_incarnations.get(member)
                or (self.node.storage.incarnation if member == self.node.node_id else recorded.get(member)),
                "leader": member == leader,
                "decided_slot": (replica.decided_slot if member == self.node.node_id
                                 else replica.peer_decided(member)),
            })
        return {"epoch": config.epoch, "change_in_progress": replica.change_in_progress,
                "cluster_id": self.node.options.cluster_id,  # for the join command kv member add prints
                "retired": list(config.retired),  # ids removed so far: never given to a new member
                "effective_slot": replica.status().get("config_effective_slot", 1),
                "leader": leader, "members": members}

    def _base(self) -> Config:
        """The newest configuration, with the founding members' incarnations filled in from our record
        (the first change after founding pins them in the replicated configuration)."""
        node = self.node
        config = node.replica.config
        recorded = node.storage.members or {}
        incarnations = dict(config.incarnations)
        for member in config.node_ids:
            if member not in incarnations and member in recorded:
                incarnations[member] = recorded[member]
        addresses = dict(config.addresses)
        for member in config.members:
            if member not in addresses and member in node.peers:
                addresses[member] = format_endpoint(*node.peers[member])
        return replace(config, addresses=addresses, incarnations=incarnations)

    async def _change(self, build: Callable[[Config], Config]) -> dict[str, Any]:
        """Build a new configuration from the newest one, propose it and wait until it governs."""
        self._require_leader()
        replica = self.node.replica
        try:
            new = build(self._base())
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        try:
            await self._call(lambda: replica.propose_change(new))
        except ChangeRefused as exc:
            code = wire.NOT_LEADER if "not the leader" in str(exc) else wire.BAD_REQUEST
            raise AdminError(str(exc), code) from None
        with trio.move_on_after(ADMIN_TIMEOUT_SECONDS):
            while True:
                current = self.node.replica.config
                if current.epoch >= new.epoch:
                    if current != new and current.epoch == new.epoch:
                        raise AdminError("another membership change won the race; check kv member list and retry")
                    break
                if self.node._fenced:
                    # It learns no more decisions: say so now, and why (QA: it waited the whole 10 s, then
                    # asked whether a majority was up; the others had decided the change meanwhile).
                    raise AdminError(f"this node's disk failed while the change to epoch {new.epoch} was being "
                                     f"decided ({self.node.disk_error}); its outcome is unknown (the other members "
                                     "may decide it): check kv member list", wire.OUTCOME_UNKNOWN)
                await trio.sleep(POLL_SECONDS)
        if self.node.replica.config.epoch < new.epoch:
            raise AdminError(f"the change to epoch {new.epoch} was not decided within {ADMIN_TIMEOUT_SECONDS:g} s "
                             f"(is a majority of the voters up?); its outcome is unknown: check kv member list",
                             wire.OUTCOME_UNKNOWN)
        # Decided; it governs alpha slots later (the leader fills them at once): answer once it does, so
        # that a scripted next change is not refused as "in progress".
        with trio.move_on_after(EFFECT_WAIT_SECONDS):
            while self.node.replica.change_in_progress and self.node.replica.config.epoch == new.epoch:
                await trio.sleep(POLL_SECONDS)
        return self.describe()

    async def _member_add(self, request: wire.AdminRequest) -> dict[str, Any]:
        # The leader judges the address, against the newest configuration (QA: a follower answered with
        # its own view and called itself "the leader"); a follower answers not_leader, and the client
        # goes on to the leader.
        self._require_core_engine()
        self._require_leader()
        if request.node < 1:
            raise AdminError("member add needs a node id >= 1")
        try:
            host, port = parse_endpoint(request.address)
        except ValueError as exc:
            raise AdminError(f"bad address {request.address!r}: {exc}") from None
        address = format_endpoint(host, port)
        mine = await _resolve(host, port)
        if not mine:
            # The leader could never dial it (nor, most likely, could the others): a typo would use up
            # the id, which is never given again once removed (QA).
            raise AdminError(f"address {address} does not resolve on node {self.node.node_id} (the leader): the "
                             f"members could not reach the new member there; give a name or IP address they can")
        for member, other in self._base().addresses.items():
            if member == request.node:
                continue
            if other == address:
                raise AdminError(f"address {address} belongs to node {member} already")
            # Another name for the same socket (localhost for 127.0.0.1): the two would share one link
            # that each tells apart by the id it presents, and both would flap.
            other_host, other_port = parse_endpoint(other)
            if mine & await _resolve(other_host, other_port):
                raise AdminError(f"address {address} is node {member}'s address {other} under another name")
        return await self._change(lambda base: base.add_learner(request.node, address))

    async def _member_promote(self, request: wire.AdminRequest) -> dict[str, Any]:
        self._require_core_engine()
        self._require_leader()
        node = self.node
        replica = node.replica
        config = replica.config
        if request.node in config.node_ids:
            raise AdminError(f"node {request.node} is already a voter")
        if request.node in config.retired:
            raise AdminError(f"node {request.node} was removed from the members; ids are never reused: add the new "
                             f"member under a new id with kv member add, then promote that")
        if request.node not in config.learners:
            raise AdminError(f"node {request.node} is not a member; add it first with kv member add")
        reported = replica.peer_decided(request.node)
        if reported is None:
            raise AdminError(f"node {request.node} has not answered the leader yet (is it running? start it with "
                             f"kv serve --id {request.node} --join ...); promote it once it has caught up")
        lag = replica.decided_slot - reported
        if lag > PROMOTE_LAG_SLOTS_MAX:
            raise AdminError(f"node {request.node} is {lag} slots behind the leader (decided {reported} of "
                             f"{replica.decided_slot}); wait for it to catch up, then promote it")
        # As for remove and move-leader (etcd's strict reconfiguration check): a learner that stopped
        # answering would be a voter the new majority needs, and its last report says nothing of now.
        # (The other voters need no check: a leader has a live majority of them, and that majority and
        # the learner are a majority of the voters after the change.)
        ticks = node.options.election_timeout_ticks
        if not replica.peer_answered_within(request.node, ticks):
            raise AdminError(f"node {request.node} has not answered the leader for "
                             f"{ticks * node.options.tick_seconds:g} s (is it running?); promote it once it "
                             f"answers and has caught up")
        incarnation = self.seen_incarnations.get(request.node)

        def build(base: Config) -> Config:
            new = base.promote(request.node)
            if incarnation is not None:
                new = replace(new, incarnations={**new.incarnations, request.node: incarnation})
            return new

        return await self._change(build)

    async def _member_remove(self, request: wire.AdminRequest) -> dict[str, Any]:
        self._require_core_engine()
        self._require_leader()
        node = self.node
        replica = node.replica
        voters = replica.config.node_ids
        if request.node in voters and len(voters) > 1 and not replica.change_in_progress:  # (else: refused below)
            # As etcd's strict reconfiguration check: refuse to leave voters whose live ones are no majority
            # (the change would be decided, and the cluster would stop at once).
            ticks = node.options.election_timeout_ticks
            remaining = sorted(v for v in voters if v != request.node)
            live = [v for v in remaining if v == node.node_id or replica.peer_answered_within(v, ticks)]
            if len(live) < len(remaining) // 2 + 1:
                silent = [v for v in remaining if v not in live]
                raise AdminError(f"removing node {request.node} would leave voters {remaining}, of which "
                                 f"{', '.join(f'node {v}' for v in silent)} {'has' if len(silent) == 1 else 'have'} "
                                 f"not answered the leader for {ticks * node.options.tick_seconds:g} s: no majority "
                                 f"would be left and the cluster would stop. Bring "
                                 f"{'it' if len(silent) == 1 else 'them'} back first")
        return await self._change(lambda base: base.remove(request.node))

    async def _move_leader(self, request: wire.AdminRequest) -> dict[str, Any]:
        self._require_leader()
        node = self.node
        target = request.node
        if target == node.node_id:
            return self.describe()
        if node.options.engine != "core":
            # (the classic engine's transfer_leadership always declines: "cannot ... now" read as temporary)
            raise AdminError("moving the leader needs --engine core; the classic engine elects its leaders only "
                             "when one fails")
        config = node.replica.config
        if not config.is_voter(target):
            raise AdminError(f"node {target} is not a voter" + (" (it is a learner; promote it first)"
                                                                if target in config.learners else ""))
        ticks = node.options.election_timeout_ticks
        if not node.replica.peer_answered_within(target, ticks):
            raise AdminError(f"node {target} has not answered the leader for {ticks * node.options.tick_seconds:g} s "
                             f"(is it running?); node {node.node_id} goes on leading")
        if not await self._call(lambda: node.replica.transfer_leadership(target)):
            raise AdminError(f"cannot hand leadership to node {target} now")
        timeout = node.options.election_timeout_ticks * node.options.tick_seconds * 3 + 1
        with trio.move_on_after(timeout):
            while node.replica.leader_id != target:
                await trio.sleep(POLL_SECONDS)
            return self.describe()
        # (not wire.TIMEOUT, which clients retry: each retry would start another handover)
        # (QA: the target may have taken over and lost leadership since, e.g. cut off right after)
        leader = node.replica.leader_id
        raise AdminError(f"node {target} is not leading {timeout:.1f} s after the handover began (it did not "
                         f"take over, or lost leadership since); the leader is "
                         f"{'unknown (an election is under way)' if leader is None else leader}", wire.OUTCOME_UNKNOWN)

    async def hand_over_before_stop(self) -> int | None:
        """A leader asked to stop (SIGTERM, Ctrl-C) first hands leadership to a voter that answered it
        recently, the standby if it did, and waits for it to lead, for about an election timeout at most;
        the voters then need no election timeout to notice that the leader is gone (etcd does the same;
        QA: every rolling restart cost its writes an election timeout at the leader's turn). Returns the
        new leader, or None when there was nothing to hand over (not leading, the classic engine, no voter
        answering, a failed disk) or it did not happen in time: the node stops anyway."""
        node = self.node
        replica = node.replica
        if node.options.engine != "core" or node._fenced or not replica.is_leader:
            return None
        ticks = node.options.election_timeout_ticks
        voters = [v for v in replica.config.node_ids if v != node.node_id]
        answering = [v for v in voters if replica.peer_answered_within(v, ticks)]
        if not answering:
            return None
        from .learners import standby_of

        standby = standby_of(replica.config.node_ids, node.node_id)
        target = standby if standby in answering else answering[0]
        try:
            if not await self._call(lambda: replica.transfer_leadership(target)):
                return None
        except Exception:  # (stopping goes on whatever happens here)
            return None
        with trio.move_on_after(ticks * node.options.tick_seconds + 0.1):  # (the core abandons it after that)
            while replica.leader_id != target:
                await trio.sleep(POLL_SECONDS)
            return target
        return None

    # -----------------------------------------------------------------------------------------------
    # backups (kv snapshot save): served by kvstore.backup

    def backup(self, conn: ClientConn, request: wire.BackupRequest) -> None:
        """A ``BackupRequest``: begin a backup on the leader or hand out its next piece, in a task."""
        service = getattr(self, "_backups", None)
        if service is None:
            from .backup import BackupService

            service = self._backups = BackupService(self.node)
        service.handle(conn, request)


async def _resolve(host: str, port: int) -> set[tuple[str, int]]:
    """The (IP address, port) pairs ``host:port`` resolves to for TCP; empty if it does not resolve
    (then only its text is compared)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError:
        return set()
    return {(str(info[4][0]), port) for info in infos}


def _parse_addresses(config: Config) -> dict[int, tuple[str, int]]:
    out = {}
    for member, text in config.addresses.items():
        try:
            out[member] = parse_endpoint(text)
        except ValueError:
            log.warning("configuration epoch %d: node %d has a bad address %r", config.epoch, member, text)
    return out


def _address_of(node: Node, member: int) -> str | None:
    found = node.peers.get(member)
    return format_endpoint(*found) if found is not None else None


async def fetch_cluster_id(endpoints: list[str], transport: Transport | None = None, *,
                           timeout: float = 30.0) -> str:
    """The cluster id of the cluster that ``endpoints`` (members' HOST:PORTs) belong to: what ``kv serve
    --join`` without ``--cluster-id`` joins (``kv cluster up`` names its clusters ``kv-<hex>``, and
    whoever joins one by hand would otherwise have to look the name up). The first member that answers
    tells it; ``fetch_join_config`` then checks that this node was added. Raises ``JoinError`` if none
    answers within ``timeout``."""
    from .client import KVError, connect

    last = "no member answered"
    rounds = 0
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        for endpoint in endpoints:
            try:
                with trio.move_on_after(2):
                    async with connect([endpoint], timeout=1, transport=transport) as kv:
                        cluster_id = (await kv.status(endpoint)).get("cluster_id")
                        if isinstance(cluster_id, str) and cluster_id:
                            return cluster_id
                        last = f"{endpoint} did not say its cluster id"
            except (KVError, OSError) as exc:
                last = f"{endpoint}: {exc}"
        rounds += 1
        if rounds in (1, 10, 40):  # (QA: 30 s without a word, where fetch_join_config says so after a round)
            log.warning("no member answered yet to say which cluster to join (%s); still trying until %.0f s have "
                        "passed", last, timeout)
        await trio.sleep(0.5)
    raise JoinError(f"no member answered within {timeout:g}s to say which cluster to join ({last})")


async def fetch_join_config(node_id: int, incarnation: str | None, endpoints: list[str], cluster_id: str,
                            transport: Transport | None = None, *, timeout: float = 30.0) -> Config:
    """``kv serve --join``: the newest configuration, from a member that answers. Raises ``JoinError``
    when this node may not join (not added, another incarnation, another cluster).

    A member that does not lead may not know of the ``kv member add`` yet (it was down or cut off when
    the change was decided): its "not a member" is not the last word while the others, and the leader
    it names, have not been asked. The leader's is; so is the last one once everyone was asked."""
    from .client import KVError, connect

    endpoints = list(endpoints)
    last = "no member answered"
    rounds = 0
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        not_a_member = None  # the refusal of a member that does not lead (another may know better)
        i = 0
        while i < len(endpoints):
            endpoint = endpoints[i]
            i += 1
            status = None
            try:
                with trio.move_on_after(2):
                    async with connect([endpoint], timeout=1, transport=transport) as kv:
                        status = await kv.status(endpoint)
            except (KVError, OSError) as exc:
                last = f"{endpoint}: {exc}"
            if status is None:
                continue
            if status.get("cluster_id") != cluster_id:
                raise JoinError(f"{endpoint} is in cluster {status.get('cluster_id')!r}, this node is to join "
                                f"{cluster_id!r} (kv serve --cluster-id)")
            try:
                config = Config.from_dict(status["config"])
            except (KeyError, ValueError) as exc:
                raise JoinError(f"{endpoint} did not report a configuration ({exc}); is it an older version?") from None
            if node_id not in config.members:
                refusal = JoinError(f"node {node_id} is not a member of the cluster (members {list(config.members)}); "
                                    f"add it first: kv member add {node_id} HOST:PORT")
                if status.get("is_leader"):
                    raise refusal
                not_a_member = refusal
                leader_id = status.get("leader")
                leader = config.addresses.get(leader_id) if leader_id is not None else None
                if leader and leader not in endpoints:
                    endpoints.append(leader)  # ask the leader it names too
                continue
            recorded = config.incarnations.get(node_id)
            if recorded is not None and incarnation is not None and recorded != incarnation:
                raise JoinError(f"the cluster knows node {node_id} as incarnation {recorded}, this data directory is "
                                f"{incarnation}: this node lost its data and may not vote under its old id. Remove it "
                                f"(kv member remove {node_id}) and add a new member under a new id")
            return config
        if not_a_member is not None:
            raise not_a_member
        rounds += 1
        if rounds in (1, 10, 40):  # (one round asks every member: 0.2 s to ~2 s each)
            log.warning("no member answered yet (%s); still trying until %.0f s have passed", last, timeout)
        await trio.sleep(0.2)
    raise JoinError(f"cannot reach any member to join ({last})")
