"""``kvstore.oneshot.OneShotClient``, the blocking client of kv's one-shot commands, against fake nodes.

How: ``fakenodes.FakeNode`` threads listen on 127.0.0.1 and answer the client protocol from a handler
(a small store, a follower that points at the leader, a node that never answers, garbage). Checked: the
commands' results; a ``not_leader`` hint is followed at once and the leader kept; a node that is down,
one that does not answer within the attempt timeout, one that says ``unavailable`` and one that sends
garbage are all skipped for the next endpoint, and a retried write keeps its (client_id, request_id);
the deadline gives ``Unavailable`` (outcome unknown only for a write that was sent); ``stale`` and
refusals raise as ``kvstore.client`` does; mutual TLS with the cluster's certificates works, and a
plaintext client or a foreign CA is refused; the TLS settings are ``kvstore.tls``'s. Finally the ``kv``
command itself, as a process, through a redirect and with TLS from the environment, and what a plain
``kv get`` imports (neither typer, trio nor paxos).
"""
from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time

import pytest

from kvstore.oneshot import OneShotClient, RequestError, Unavailable, tls_client_context
from tests.cli.fakenodes import SILENT, Store, closed_port, err

ENV = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}


def test_the_commands_against_one_node(nodes):
    store = Store()
    node = nodes(store.handle)
    with OneShotClient([node.address], timeout=2) as kv:
        assert kv.put("a", "1") == 1
        assert kv.put("b", b"\xff") == 2
        assert kv.get("a") == "1"
        entry = kv.get_entry("b")
        assert entry is not None and entry.value == b"\xff" and entry.version == 1 and entry.mod_revision == 2
        assert kv.get("missing") is None
        assert kv.list("") == [("a", "1"), ("b", b"\xff")]
        assert kv.list("", keys_only=True) == [("a", None), ("b", None)]
        assert kv.cas("a", "1", "2") is True
        assert kv.cas("a", "1", "3") is False
        assert kv.delete("a") is True
        assert kv.delete("a") is False
        assert kv.delete_prefix("") == 1
        assert kv.cluster_status()[0]["reachable"] is True
    writes = [r for r in node.requests if r["t"] in ("put", "del", "cas")]
    assert len({r["cid"] for r in writes}) == 1
    assert [r["rq"] for r in writes] == list(range(1, len(writes) + 1))
    assert all(r["ack"] == r["rq"] for r in writes)  # one write at a time: nothing older is out


def test_a_not_leader_hint_is_followed_at_once_and_the_leader_kept(nodes):
    store = Store()
    leader = nodes(store.handle)
    follower = nodes(lambda r: err(r, "not_leader", "not the leader", leader.address))
    with OneShotClient([follower.address, leader.address], timeout=2) as kv:
        started = time.monotonic()
        assert kv.put("k", "v") == 1
        assert time.monotonic() - started < 0.5  # no pause for a hint
        assert kv.get("k") == "v"
    assert len(follower.requests) == 1
    assert [r["t"] for r in leader.requests] == ["put", "get"]
    assert leader.requests[0]["rq"] == follower.requests[0]["rq"]  # the same write, retried


def test_a_hint_to_an_endpoint_not_in_the_list_is_followed(nodes):
    store = Store()
    leader = nodes(store.handle)
    follower = nodes(lambda r: err(r, "not_leader", "not the leader", leader.address))
    with OneShotClient([follower.address], timeout=2) as kv:
        assert kv.put("k", "v") == 1


def test_a_hint_to_a_dead_node_does_not_send_the_client_back_to_the_hint_giver(nodes):
    """A removed node, still running, names the leader it knew, which is gone: after that hint fails, the
    client goes on to the next endpoint given (which points at the real leader), not back to the node
    that gave the hint (which would send it to the dead one again, until the deadline)."""
    store = Store()
    leader = nodes(store.handle)
    dead = f"127.0.0.1:{closed_port()}"
    stale = nodes(lambda r: err(r, "not_leader", "not the leader", dead))
    follower = nodes(lambda r: err(r, "not_leader", "not the leader", leader.address))
    with OneShotClient([stale.address, follower.address, leader.address], timeout=3) as kv:
        started = time.monotonic()
        assert kv.put("k", "v") == 1
        assert time.monotonic() - started < 1.0
    assert len(stale.requests) == 1 and len(follower.requests) == 1


def test_a_node_that_is_down_is_skipped(nodes):
    store = Store()
    leader = nodes(store.handle)
    with OneShotClient([f"127.0.0.1:{closed_port()}", leader.address], timeout=2) as kv:
        assert kv.put("k", "v") == 1


def test_a_silent_node_costs_one_attempt_and_the_retry_is_the_same_write(nodes, monkeypatch):
    monkeypatch.setattr("kvstore.oneshot.HEDGE_SECONDS", 10.0)  # (hedging: test_oneshot_hedge.py)
    store = Store()
    silent = nodes(lambda r: SILENT)
    leader = nodes(store.handle)
    with OneShotClient([silent.address, leader.address], timeout=1.5) as kv:
        assert kv.attempt_timeout == 0.5
        started = time.monotonic()
        assert kv.put("k", "v") == 1
        assert 0.45 < time.monotonic() - started < 1.4
    retried = leader.requests[0]
    assert (silent.requests[0]["cid"], silent.requests[0]["rq"]) == (retried["cid"], retried["rq"])


@pytest.mark.parametrize("code", ["unavailable", "timeout", "shutting_down", "storage_full", "disk_failed"])
def test_a_node_that_cannot_serve_sends_the_client_to_the_next(nodes, code):
    store = Store()
    sick = nodes(lambda r: err(r, code, f"{code} here"))
    leader = nodes(store.handle)
    with OneShotClient([sick.address, leader.address], timeout=2) as kv:
        assert kv.put("k", "v") == 1


def test_garbage_is_a_failed_connection_and_the_next_node_answers(nodes):
    store = Store()
    garbage = nodes(lambda r: {"t": "ok", "id": r["id"], "r": "not a map"})
    leader = nodes(store.handle)
    with OneShotClient([garbage.address, leader.address], timeout=2) as kv:
        assert kv.get("k") is None


def test_no_quorum_says_no_leader_though_the_last_attempt_was_refused(nodes):
    """Two of three nodes down, the third up without a leader: the error says "no leader" first, not only
    the last attempt's "connection refused" (which named a dead node and hid the live one's answer)."""
    answers = iter([err({"id": 0}, "not_leader", "no leader")])  # then it falls silent, so no attempt ends on it

    def once_then_silent(request: dict) -> object:
        answer = next(answers, None)
        return SILENT if answer is None else {**answer, "id": request["id"]}

    alone = nodes(once_then_silent)
    endpoints = [alone.address, f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    with OneShotClient(endpoints, timeout=0.6) as kv:
        with pytest.raises(Unavailable) as down:
            kv.put("k", "v")
    assert "(no leader among the nodes that answered; the last attempt: " in str(down.value), str(down.value)


def test_the_deadline_gives_unavailable_and_says_whether_a_write_may_have_been_applied(nodes):
    silent = nodes(lambda r: SILENT)
    with OneShotClient([silent.address], timeout=0.6) as kv:
        with pytest.raises(Unavailable) as write:
            kv.put("k", "v")
        with pytest.raises(Unavailable) as read:
            kv.get("k")
    assert write.value.outcome_unknown and "may or may not have been applied" in str(write.value)
    assert str(write.value).startswith("no answer from the cluster within 0.6s")
    assert not read.value.outcome_unknown and "did not answer" in str(read.value)
    with OneShotClient([f"127.0.0.1:{closed_port()}"], timeout=0.3) as kv:
        with pytest.raises(Unavailable) as down:
            kv.put("k", "v")
    assert not down.value.outcome_unknown  # never sent
    assert "connection failed" in str(down.value)


@pytest.mark.parametrize("code", ["storage_full", "disk_failed", "not_leader"])
def test_a_write_every_node_turned_away_on_arrival_is_reported_as_not_written(nodes, code):
    """Every attempt answered with ``refused`` (a full disk, no leader): the write is known not to be
    written, so the deadline's error says so instead of "outcome unknown"."""
    full = nodes(lambda r: {**err(r, code, f"{code} here"), "refused": True})
    with OneShotClient([full.address], timeout=0.5) as kv:
        with pytest.raises(Unavailable) as info:
            kv.put("k", "v")
    assert len(full.requests) >= 2  # retried until the deadline
    assert not info.value.outcome_unknown and str(info.value).endswith("; the write was not applied"), str(info.value)
    assert str(info.value).startswith("no node could serve the request within 0.5s")  # they answered: not "no answer"


def test_one_attempt_in_doubt_keeps_the_write_in_doubt_whatever_follows(nodes):
    """The first attempt got no answer (it may have been proposed); later ones were turned away: still
    outcome unknown. And an answer without ``refused`` (the write waited on a leader that then failed)
    is in doubt by itself."""
    answers = iter([SILENT])

    def silent_then_refusing(request: dict) -> object:
        return next(answers, None) or {**err(request, "storage_full", "disk full"), "refused": True}

    flaky = nodes(silent_then_refusing)
    with OneShotClient([flaky.address], timeout=1.2) as kv:
        with pytest.raises(Unavailable) as info:
            kv.put("k", "v")
    assert len(flaky.requests) >= 2 and info.value.outcome_unknown, str(info.value)
    waited = nodes(lambda r: err(r, "disk_failed", "the disk failed; this write's outcome is unknown"))
    with OneShotClient([waited.address], timeout=0.4) as kv:
        with pytest.raises(Unavailable) as info:
            kv.put("k", "v")
    assert info.value.outcome_unknown and "may or may not have been applied" in str(info.value)


def test_no_leader_anywhere_ends_with_no_leader(nodes):
    follower = nodes(lambda r: err(r, "not_leader", "no leader known", None))
    with OneShotClient([follower.address], timeout=0.5) as kv:
        with pytest.raises(Unavailable, match="no leader"):
            kv.get("k")


def test_refusals_raise_as_kvstore_client_does(nodes):
    refusing = nodes(lambda r: err(r, "permission_denied", "reader may not write k"))
    stale = nodes(lambda r: err(r, "stale", "this write's result was forgotten"))
    with OneShotClient([refusing.address], timeout=2) as kv:
        with pytest.raises(RequestError) as refused:
            kv.put("k", "v")
    assert refused.value.code == "permission_denied" and str(refused.value) == "reader may not write k"
    with OneShotClient([stale.address], timeout=2) as kv:
        with pytest.raises(Unavailable) as forgotten:
            kv.put("k", "v")
    assert forgotten.value.outcome_unknown


def test_status_of_every_endpoint_at_once(nodes):
    up = nodes(Store().handle)
    silent = nodes(lambda r: SILENT)
    down = f"127.0.0.1:{closed_port()}"
    with OneShotClient([up.address, silent.address, down], timeout=0.5) as kv:
        started = time.monotonic()
        statuses = kv.cluster_status()
        assert time.monotonic() - started < 1.2  # in parallel, not 2 x the timeout
    assert [s["reachable"] for s in statuses] == [True, False, False]
    assert [s["endpoint"] for s in statuses] == [up.address, silent.address, down]
    assert "did not answer within 0.5s" in statuses[1]["error"] and "unreachable" in statuses[2]["error"]


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.security.pki import Pki

    return Pki(tmp_path_factory.mktemp("pki"), nodes=1)


def _server_context(pki) -> ssl.SSLContext:
    from kvstore.tls import TlsFiles, server_context

    return server_context(TlsFiles(pki.cacert, str(pki.dir / "node-1.pem"), str(pki.dir / "node-1.key")))


def test_mutual_tls_with_the_clusters_certificates(nodes, pki):
    node = nodes(Store().handle, tls=_server_context(pki))
    with OneShotClient([node.address], timeout=2, **pki.files("admin")) as kv:
        assert kv.put("k", "v") == 1
        assert kv.get("k") == "v"
        assert kv.cluster_status()[0]["reachable"]


def test_tls_refusals_are_unavailable(nodes, pki, tmp_path):
    from tests.security.pki import Pki

    node = nodes(Store().handle, tls=_server_context(pki))
    with OneShotClient([node.address], timeout=0.5) as kv, pytest.raises(Unavailable):
        kv.get("k")  # plaintext to a TLS node
    foreign = Pki(tmp_path / "foreign", nodes=1)
    with OneShotClient([node.address], timeout=0.5, **foreign.files("admin")) as kv:
        with pytest.raises(Unavailable, match="connection failed"):
            kv.get("k")


def test_the_tls_settings_are_kvstore_tls_client_context(pki):
    from kvstore.tls import TlsFiles, client_context

    files = pki.files("admin")
    ours = tls_client_context(files["cacert"], files["cert"], files["key"])
    theirs = client_context(TlsFiles(files["cacert"], files["cert"], files["key"]))
    for name in ("minimum_version", "maximum_version", "verify_mode", "check_hostname", "protocol"):
        assert getattr(ours, name) == getattr(theirs, name), name
    with pytest.raises(ValueError, match="cannot use the CA file"):
        tls_client_context(str(pki.dir / "missing.pem"), files["cert"], files["key"])
    with pytest.raises(ValueError, match="all three"):
        OneShotClient(["127.0.0.1:1"], cacert=files["cacert"])


# --- the kv command, as a process ----------------------------------------------------------------


def kv(*args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kv_cli", *args], capture_output=True, env=env or ENV,
                          input=input, timeout=60)


def test_kv_follows_a_redirect_and_skips_a_node_that_is_down(nodes):
    store = Store()
    leader = nodes(store.handle)
    follower = nodes(lambda r: err(r, "not_leader", "not the leader", leader.address))
    endpoints = f"127.0.0.1:{closed_port()},{follower.address},{leader.address}"
    assert kv("--endpoints", endpoints, "put", "k", "v").stdout == b"OK\n"
    assert kv("--endpoints", endpoints, "get", "k").stdout == b"k\nv\n"
    assert json.loads(kv("--endpoints", endpoints, "-w", "json", "del", "k").stdout)["deleted"] == 1
    missing = kv("--endpoints", endpoints, "get", "k")
    assert missing.returncode == 1 and missing.stderr == b"Error: key not found: k\n"


def test_kv_with_tls_from_the_environment(nodes, pki):
    node = nodes(Store().handle, tls=_server_context(pki))
    files = pki.files("admin")
    env = dict(ENV, KV_ENDPOINTS=node.address, KV_CACERT=files["cacert"], KV_CERT=files["cert"],
               KV_KEY=files["key"])
    assert kv("put", "k", "v", env=env).stdout == b"OK\n"
    assert kv("get", "k", env=env).stdout == b"k\nv\n"
    partial = kv("get", "k", env=dict(env, KV_KEY=""))
    assert partial.returncode == 2 and b"missing: --key" in partial.stderr


def test_kv_errors_are_one_line_with_the_exit_codes(nodes):
    silent = nodes(lambda r: SILENT)
    refusing = nodes(lambda r: err(r, "bad_request", "no such thing"))
    timed_out = kv("--endpoints", silent.address, "--command-timeout", "0.5", "put", "k", "v")
    assert timed_out.returncode == 1
    assert timed_out.stderr.decode().startswith("Error: outcome unknown: no answer from the cluster within 0.5s")
    assert len(timed_out.stderr.splitlines()) == 1
    refused = kv("--endpoints", refusing.address, "get", "k")
    assert (refused.returncode, refused.stderr) == (1, b"Error: no such thing\n")
    usage = kv("--endpoints", "nowhere", "get", "k")
    assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1


def test_a_plain_kv_get_imports_neither_typer_nor_trio_nor_paxos(nodes):
    node = nodes(Store().handle)
    code = ("import sys\n"
            f"sys.argv = ['kv', '--endpoints', '{node.address}', 'get', 'k']\n"
            "from kv_cli.main import run\n"
            "try:\n    run()\nexcept SystemExit:\n    pass\n"
            "heavy = ['typer', 'click', 'trio', 'paxos', 'kvstore.client', 'kvstore.wire', 'dataclasses']\n"
            "sys.stderr.write(repr([m for m in heavy if m in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=ENV, timeout=60)
    assert proc.stderr.endswith(b"[]"), proc.stderr


def test_kv_get_into_a_pipe_closed_early_exits_1_without_a_word(nodes):
    store = Store()
    node = nodes(store.handle)
    with OneShotClient([node.address], timeout=2) as client:
        client.put("big", "x" * 1_000_000)
    proc = subprocess.Popen([sys.executable, "-m", "kv_cli", "--endpoints", node.address, "get", "big"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1) == b"b"
    proc.stdout.close()  # as `| head -c1` does
    assert proc.stderr.read() == b""
    assert proc.wait(timeout=60) == 1


@pytest.mark.parametrize("refused", [True, False], ids=["refused", "protocol"])
def test_a_connection_the_node_closes_without_reading_the_request_is_not_in_doubt(nodes, refused):
    """A node with no room for a large frame (``kv serve --arriving-frames-max-mib``) answers
    ``unavailable`` with id null and ``refused`` and closes the connection: the request was never read,
    so the deadline's error says the write was not applied, with the node's reason. Without ``refused``
    (a protocol error after the request may have been read) the write stays in doubt."""
    reason = "a frame of 1000064 bytes cannot be received now: send it again later"
    full = nodes(lambda r: {**err(r, "unavailable", reason), "id": None, "refused": refused})
    with OneShotClient([full.address], timeout=0.5) as kv:
        with pytest.raises(Unavailable) as info:
            kv.put("k", "v")
    assert len(full.requests) >= 2  # retried until the deadline
    assert reason in str(info.value)
    assert info.value.outcome_unknown is not refused
    assert str(info.value).endswith("; the write was not applied" if refused else
                                    "; the write may or may not have been applied"), str(info.value)


def _interrupted_once_asked(nodes, command: list[str]) -> tuple[int, bytes]:
    """Run ``kv COMMAND`` against a node that takes requests and never answers; Ctrl-C (SIGINT) it once
    its request arrived. Returns its exit code and stderr."""
    node = nodes(lambda request: SILENT)
    proc = subprocess.Popen([sys.executable, "-m", "kv_cli", "--endpoints", node.address, *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 30
    while not node.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.requests, "the request never reached the node"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


@pytest.mark.parametrize("command", [["put", "k", "v"], ["del", "k"], ["cas", "--absent", "lock", "me"]],
                         ids=["put", "del", "cas"])
def test_ctrl_c_during_a_write_says_it_may_have_been_applied(nodes, command):
    """QA: Ctrl-C while ``kv cas`` waited for its answer printed only "Aborted!", as if nothing had
    been sent; the node may have applied it."""
    returncode, err = _interrupted_once_asked(nodes, command)
    assert returncode == 130  # (as every kv command interrupted: etcd QA)
    assert b"interrupted; the write may or may not have been applied" in err and b"Aborted!" in err, err


@pytest.mark.parametrize("command", [["get", "k"], ["member", "list"], ["move-leader", "2"]],
                         ids=["get", "member-list", "move-leader"])
def test_ctrl_c_exits_130_whichever_command(nodes, command):
    """etcd QA: Ctrl-C exited 1 ("Aborted!") from the one-shot commands, 130 from others, 1 from kv load,
    kv dump and kv snapshot save: scripts could not tell an interruption from a failure. Now 130 (128 +
    SIGINT, as the shell reports it) from every command, with a line on stderr."""
    returncode, err = _interrupted_once_asked(nodes, command)
    assert returncode == 130, (returncode, err)
    assert err.strip(), "nothing said on stderr"
