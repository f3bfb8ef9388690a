"""Event loop stalls: a node whose ticker wakes 0.1 s late or more counts it, logs it (at most once per
``LOOP_STALL_LOG_SECONDS``, with the worst stall since the last line) and exports the count.

How: three in-memory nodes (``test_node_memory.MemCluster``) on trio's autojump clock. Jumping the
clock while no task runs is what a stall looks like from inside the node: every deadline passed at once,
nobody ran meanwhile. Without a jump the tickers are never late (no false alarms from the follower's
ticks taken several at a time)."""
from __future__ import annotations

import logging
import re

import trio

from kvstore import server

from .memnet import MemoryNetwork
from .test_metrics import scrape, value
from .test_node_memory import MemCluster


async def test_a_late_tick_is_counted_logged_once_per_period_and_exported(tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.WARNING, logger="kvstore.server")
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        await cluster.start_all()
        await trio.sleep(2.0)  # leaders, heartbeats, followers' grouped ticks: nothing late
        assert all(n.counters["loop_stalls"] == 0 for n in cluster.nodes.values())
        assert not [r for r in caplog.records if "event loop stalled" in r.getMessage()]

        autojump_clock.jump(0.45)  # nothing ran for 0.45 s
        await trio.sleep(0.05)
        for node in cluster.nodes.values():
            assert node.counters["loop_stalls"] == 1
            assert 400 <= node.counters["loop_stall_ms_max"] <= 450
            assert value(scrape(node), "kv_event_loop_stalls_total") == 1.0
        lines = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()]
        assert len(lines) == 3 and all("stalled for 4" in line and "(1 stalls" in line for line in lines), lines

        # Two more within the log period: counted, not logged; the next line (a period later) says the worst.
        autojump_clock.jump(0.2)
        await trio.sleep(0.05)
        autojump_clock.jump(0.7)
        await trio.sleep(0.05)
        assert all(n.counters["loop_stalls"] == 3 for n in cluster.nodes.values())
        assert all(650 <= n.counters["loop_stall_ms_max"] <= 700 for n in cluster.nodes.values())
        assert len([r for r in caplog.records if "event loop stalled" in r.getMessage()]) == 3
        await trio.sleep(server.LOOP_STALL_LOG_SECONDS)
        autojump_clock.jump(0.2)
        await trio.sleep(0.05)
        lines = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()][3:]
        assert len(lines) == 3 and all("(4 stalls" in line for line in lines), lines
        worst = [int(re.search(r"stalled for (\d+) ms", line).group(1)) for line in lines]
        assert all(650 <= ms <= 700 for ms in worst), lines
        nursery.cancel_scope.cancel()


async def test_a_leader_woken_late_takes_the_ticks_it_missed_up_to_a_heartbeat_period(tmp_path, autojump_clock):
    """Long steps (range answers, large values) hold the loop, and the ticker wakes once per pass: one tick
    a pass made a leader's heartbeats go out once a second, and the followers, ticking on time, elected
    another leader (QA). A leader woken late now takes the ticks it missed, up to a heartbeat period's
    worth (so a heartbeat round is due at once), never more (its check-quorum counts in ticks too)."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = cluster.nodes[await cluster.start_all()]
        heartbeat_ticks = leader.options.heartbeat_ticks
        for late, expected in ((0.2, heartbeat_ticks), (5.0, heartbeat_ticks)):
            await trio.sleep(0.0101)  # (just past a tick)
            before = leader.replica._ticks
            autojump_clock.jump(late)
            await trio.sleep(0.001)
            assert leader.replica.is_leader
            # (and the one tick the ticker takes at once after a late wake, as before)
            assert leader.replica._ticks - before == expected + 1, (late, leader.replica._ticks - before)
        nursery.cancel_scope.cancel()
