"""``kv serve --join`` without ``--cluster-id`` asks the members which cluster to join
(``kvstore.members.fetch_cluster_id``): while none answers, it says so in the log at once and now and
then, and gives up after its timeout with the last reason.

QA: nothing was logged for 30 s, then the error; with ``--cluster-id`` the same wait said "no member
answered yet" after the first round.
"""
from __future__ import annotations

import logging

import pytest
import trio

from kvstore.members import JoinError, fetch_cluster_id

from .memnet import MemoryNetwork


async def test_no_member_answering_is_logged_after_the_first_round_and_the_join_gives_up(autojump_clock, caplog):
    caplog.set_level(logging.WARNING, logger="kvstore.members")
    transport = MemoryNetwork().transport()  # nobody listens: every connect is refused
    started = trio.current_time()
    with pytest.raises(JoinError, match="no member answered within 30s to say which cluster to join"):
        await fetch_cluster_id(["n1:7001", "n2:7002"], transport, timeout=30.0)
    warnings = [(r.created, r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "nothing said while no member answered"
    assert all("no member answered yet to say which cluster to join" in text for _, text in warnings)
    assert len(warnings) == 3  # after rounds 1, 10 and 40 (a refused connect is quick: ~80 rounds in 30 s)
    assert trio.current_time() - started >= 30.0
