"""A candidate whose phase 1 times out with no higher ballot in sight asks again at the same ballot.

Why (QA, session 21, a gray failure): with one follower down and the other's disk slow (0.5 s and more
per fsync, above the 0.3 s election timeout), the candidate timed out before the slow voter's promise
was durable and ran a new election at a higher ballot, which made that voter write one more promise;
elections followed one another for as long as the disk stayed slow, and no write was decided.
Asking again at the same ballot (``Replica._retry_prepare``) costs the slow voter nothing: it answers
the duplicate Prepare with its promise, once that is durable. Safety does not depend on it (a Prepare
may be sent any number of times); a higher ballot, learned from a Nack or any message, still makes
the next try a new election.

How: three ``Replica``s driven by hand (messages delivered only when the test says), node 2 down.
"""
from __future__ import annotations

import random

from paxos.membership import Config
from paxos.messages import Nack, Prepare, Promise
from paxos.replica import Options, Replica

TIMEOUT = 10
CONFIG = Config(node_ids=(1, 2, 3), learners=(), alpha=2)


def replicas() -> dict[int, Replica]:
    options = Options(heartbeat_ticks=2, election_timeout_ticks=TIMEOUT)
    return {n: Replica(n, CONFIG, rng=random.Random(n), options=options) for n in (1, 2, 3)}


def sent(replica: Replica) -> list:
    actions = replica.take_actions()
    return [*actions.send_early, *actions.send]


def campaign(node: Replica) -> Prepare:
    for _ in range(3 * TIMEOUT):
        node.tick()
        prepares = [m for _, m in sent(node) if type(m) is Prepare]
        if prepares:
            return prepares[0]
    raise AssertionError("no election")


def test_a_promise_later_than_the_election_timeout_still_elects_at_the_first_ballot():
    nodes = replicas()
    prepare = campaign(nodes[1])
    nodes[3].receive(prepare)
    (promise,) = [m for to, m in sent(nodes[3]) if to == 1 and type(m) is Promise]  # held: a slow disk
    retries = []
    for _ in range(3 * TIMEOUT):  # three election timeouts, and more, without an answer
        nodes[1].tick()
        retries += [(to, m) for to, m in sent(nodes[1]) if type(m) is Prepare]
    assert retries and {m.ballot for _, m in retries} == {prepare.ballot}, retries
    assert {to for to, _ in retries} == {2, 3}  # (those that have not promised)
    assert nodes[1].status()["role"] == "candidate" and nodes[1].status()["counters"]["prepare_retries"] >= 2
    nodes[1].receive(promise)
    assert nodes[1].is_leader and nodes[1].ballot == prepare.ballot
    # the slow voter answers a retried Prepare again with its promise (a duplicate, nothing new to persist)
    nodes[3].receive(retries[-1][1])
    actions = nodes[3].take_actions()
    assert not actions.persist and any(type(m) is Promise for _, m in actions.send)


def test_a_higher_ballot_seen_makes_the_next_try_a_new_election():
    nodes = replicas()
    prepare = campaign(nodes[1])
    nodes[3].receive(Prepare(sender=2, ballot=prepare.ballot.next_for(2), first_slot=prepare.first_slot))
    sent(nodes[3])
    nodes[3].receive(prepare)  # now below its promise: a Nack
    (nack,) = [m for to, m in sent(nodes[3]) if type(m) is Nack]
    nodes[1].receive(nack)
    ballots = set()
    for _ in range(3 * TIMEOUT):
        nodes[1].tick()
        ballots |= {m.ballot for _, m in sent(nodes[1]) if type(m) is Prepare}
    assert ballots and min(ballots) > nack.promised, ballots
