"""The nemesis harness notices a node whose process ended by itself (a crash), not only the faults it
injected: such a node used to go unseen while the other two carried the workload, and the run passed
(soak: a node died of an ExceptionGroup, "converged" all the same). No processes here: fakes stand in.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from .cluster import NemesisCluster
from .workload import Stats, finish_and_check


def _proc(returncode):
    return SimpleNamespace(poll=lambda: returncode, returncode=returncode, pid=0)


def test_a_node_that_ended_by_itself_is_named_and_a_killed_one_is_not(tmp_path):
    cluster = NemesisCluster(tmp_path)
    cluster.log_path(1).parent.mkdir(parents=True, exist_ok=True)
    cluster.log_path(1).write_text("node 1 serving\nError: ExceptionGroup: Exceptions from Trio nursery\n")
    cluster.procs = {1: _proc(1), 2: _proc(-9), 3: _proc(None)}
    cluster.killed = {2}
    (found,) = cluster.unexpected_exits()
    assert found.startswith("node 1 exited by itself with code 1: ") and "ExceptionGroup" in found


async def test_finish_and_check_fails_a_run_in_which_a_node_crashed(tmp_path):
    crashed = SimpleNamespace(root=tmp_path, unexpected_exits=lambda: ["node 3 exited by itself with code 1: ..."])
    with pytest.raises(AssertionError, match=r"\[NEMESIS_SEED=7\] a node's process ended by itself during the run: "
                                             r"node 3 exited by itself with code 1"):
        await finish_and_check(crashed, history=None, stats=Stats(), seed=7)
