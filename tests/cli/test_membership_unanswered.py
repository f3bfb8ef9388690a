"""What ``kv member ...`` says when its request went out and no answer came (a paused leader).

QA: ``kv cluster pause <leader>; kv member add 9 ...`` said the membership request got no answer, then
"the write may or may not have been applied (read the key to find out)" and "the local cluster may be
down": a membership change is no write and has no key, and the cluster was up (a node took the request).
A membership or leadership request is never sent twice, so the one line says only that, and how to check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.fakenodes import SILENT, FakeNode, ok

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("from_local_cluster", [False, True])
def test_an_unanswered_membership_request_is_reported_without_write_or_cluster_down_advice(tmp_path,
                                                                                          from_local_cluster):
    asked: list = []

    def handler(request: dict):  # the leader, paused once it answered the list the change goes after
        asked.append(request.get("op"))
        return ok(request, {"members": []}) if request.get("op") == "member_list" else SILENT

    node = FakeNode(handler)
    env = {k: v for k, v in os.environ.items() if k != "KV_ENDPOINTS"}
    args = [sys.executable, "-m", "kv_cli", "--command-timeout", "1"]
    if from_local_cluster:  # the endpoints of the default local cluster (kv cluster up), as in QA's run
        env["KV_CLUSTER_DIR"] = str(tmp_path)
        (tmp_path / "cluster.json").write_text(json.dumps({
            "cluster_id": "kv-test", "endpoints": [f"127.0.0.1:{node.port}"],
            "nodes": [{"id": 1, "port": node.port}]}))
    else:
        args += ["--endpoints", f"127.0.0.1:{node.port}"]
    try:
        proc = subprocess.run([*args, "member", "add", "9", "127.0.0.1:7664"], capture_output=True, text=True,
                              timeout=60, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL)
    finally:
        node.close()
    assert proc.returncode == 1, proc.stderr
    assert asked == ["member_list", "member_add"]  # the change sent once, never again
    assert proc.stderr.splitlines() == [
        f"Error: outcome unknown: the membership or leadership request got no answer (127.0.0.1:{node.port} did "
        "not answer); it may or may not have been carried out, and is not sent twice: check with kv member list"]


@pytest.mark.parametrize("op", ["member_list", "member_remove"])
def test_a_member_that_does_not_answer_first_in_the_endpoints_holds_no_membership_request(op):
    """QA: a paused follower first in the endpoints held ``kv member list`` and every change (its own
    removal, the operator's remedy, included) for the whole timeout: the blocking clients sent them to the
    first endpoint alone. The list is a read (hedged to the next node); a change then goes once, to the
    node that answered the list."""
    import time

    from kvstore.oneshot import HEDGE_SECONDS, OneShotClient

    got: list[str] = []

    def second(request: dict):
        got.append(request.get("op"))
        return ok(request, {"members": []})

    silent, answering = FakeNode(lambda request: SILENT), FakeNode(second)
    try:
        with OneShotClient([f"127.0.0.1:{silent.port}", f"127.0.0.1:{answering.port}"], timeout=6) as kv:
            started = time.monotonic()
            assert kv.admin(op, 1) == {"members": []}
            assert time.monotonic() - started < HEDGE_SECONDS + 1.5  # not the 6 s timeout
    finally:
        silent.close()
        answering.close()
    assert got == (["member_list"] if op == "member_list" else ["member_list", op])
