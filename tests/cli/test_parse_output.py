"""``kv`` argument parsing, output formats and exit codes, through typer's CliRunner and a fake client.

How: the ``fake`` fixture (conftest.py) replaces ``kv_cli.common.make_client`` with an in-memory fake, so
each test runs the real typer app in-process and checks stdout, stderr and the exit code. Checked:
put (argument and stdin, text and bytes), get (found, missing -> 1, --prefix, --keys-only, json with
base64 for bytes, table), del --prefix count, cas (EXPECTED NEW, --absent, mismatch -> 1, bad arity
-> 2), invalid endpoints -> 2 before any connection, endpoint resolution (flag, env, cluster.json,
none -> 2), errors as one stderr line without traceback (unless --debug), status/health tolerance of
missing fields, serve validation, help text examples, and a taken port refused by `cluster up`.
"""

from __future__ import annotations

import base64
import json
import socket

import pytest
from typer.testing import CliRunner

import kv_cli.common
from kv_cli.main import app
from kv_cli.output import render_table, value_fields
from kvstore.client import RequestError, Unavailable

EP = ["--endpoints", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"]


def run(*args: str, input: bytes | str | None = None):
    return CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)


def assert_one_error_line(result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- put -----------------------------------------------------------------------------------------


def test_put_prints_ok_and_passes_validated_endpoints(fake):
    result = run(*EP, "--command-timeout", "2.5", "put", "k", "v")
    assert result.exit_code == 0, result.output
    assert result.stdout == "OK\n"
    assert fake.data["k"].value == "v"
    assert fake.connects == [(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"], 2.5)]


def test_put_reads_the_value_from_stdin_exactly(fake):
    result = run(*EP, "put", "k", input="line one\nline two\n")
    assert result.exit_code == 0, result.output
    assert fake.data["k"].value == "line one\nline two\n"


def test_put_binary_stdin_is_stored_as_bytes(fake):
    result = run(*EP, "put", "bin", input=b"\xff\x00\xfe")
    assert result.exit_code == 0, result.output
    assert fake.data["bin"].value == b"\xff\x00\xfe"


def test_put_json_includes_revision(fake):
    fake.revision = 41
    result = run(*EP, "-w", "json", "put", "k", "v")
    assert json.loads(result.stdout) == {"ok": True, "key": "k", "revision": 42}


def test_empty_key_is_a_usage_error(fake):
    result = run(*EP, "put", "", "v")
    assert result.exit_code == 2
    assert_one_error_line(result, "empty")
    assert fake.connects == []


def test_move_leader_prints_the_new_leader_in_json_and_table(fake):
    """QA: `kv -w json move-leader 3` printed nothing on stdout (only "node 3 leads now" on stderr)."""
    result = run(*EP, "-w", "json", "move-leader", "3")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"ok": True, "leader": 3} and "node 3 leads now" in result.stderr
    result = run(*EP, "-w", "table", "move-leader", "3")
    assert result.exit_code == 0 and "LEADER" in result.stdout and "3" in result.stdout
    result = run(*EP, "move-leader", "3")
    assert result.stdout == "" and result.stderr.strip() == "node 3 leads now"


# --- get -----------------------------------------------------------------------------------------


def test_get_prefix_of_a_range_too_large_for_one_answer_points_to_kv_dump(fake):
    """QA: `kv get --prefix bulk/` of 100,000 keys said only "narrow the request (prefix, limit)"; --limit
    gives the first N keys and nothing pages on, while kv dump writes a range of any size."""
    fake.error = RequestError("the reply is too large for one frame (OkReply body is 11600033 bytes, limit "
                              "8388608); narrow the request (prefix, limit)", "too_large")
    result = run(*EP, "get", "--prefix", "bulk/")
    assert result.exit_code == 1
    assert_one_error_line(result, "narrow the request (prefix, limit); or write the whole range as JSON lines: "
                                  "kv dump --prefix bulk/ FILE")
    fake.error = RequestError("key too long", "bad_request")  # any other refusal is reported as it is
    result = run(*EP, "get", "--prefix", "bulk/")
    assert result.exit_code == 1 and "kv dump" not in result.stderr


def test_get_prints_key_then_value(fake):
    fake.set("greeting", "hello")
    result = run(*EP, "get", "greeting")
    assert result.exit_code == 0
    assert result.stdout == "greeting\nhello\n"
    assert fake.calls[-1] == ("get_entry", ("greeting",), {"consistency": "l"})


def test_get_missing_key_exits_1_with_one_line(fake):
    result = run(*EP, "get", "nope")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert_one_error_line(result, "key not found", "nope")


def test_get_serializable_consistency_is_passed(fake):
    fake.set("k", "v")
    result = run(*EP, "get", "--consistency", "s", "k")
    assert result.exit_code == 0
    assert fake.calls[-1][2] == {"consistency": "s"}


def test_get_bad_consistency_is_usage_error(fake):
    result = run(*EP, "get", "--consistency", "x", "k")
    assert result.exit_code == 2
    assert fake.connects == []


def test_get_json_text_and_base64_bytes(fake):
    fake.set("text", "héllo")
    fake.set("bin", b"hi\xff")
    text = json.loads(run(*EP, "-w", "json", "get", "text").stdout)
    assert text["kvs"] == [{"key": "text", "value": "héllo", "version": 1, "mod_revision": 1}]
    result = run(*EP, "-w", "json", "get", "bin")
    assert result.exit_code == 0
    record = json.loads(result.stdout)["kvs"][0]
    assert record["value_encoding"] == "base64"
    assert base64.b64decode(record["value"]) == b"hi\xff"
    assert record["mod_revision"] == 2


def test_get_simple_writes_raw_bytes(fake):
    fake.set("bin", b"\x00\xff")
    result = run(*EP, "get", "bin")
    assert result.stdout_bytes == b"bin\n\x00\xff\n"


def test_get_prefix_keys_only(fake):
    for key in ("user/b", "user/a", "other"):
        fake.set(key, "x")
    result = run(*EP, "get", "--prefix", "--keys-only", "user/")
    assert result.exit_code == 0
    assert result.stdout == "user/a\nuser/b\n"


def test_get_limit_and_print_value_only_as_etcdctl(fake):
    """``--limit N`` with ``--prefix`` asks the node for the first N keys in key order (and one more, to
    know whether the range goes on: ``more`` in -w json);
    ``--print-value-only`` prints the values without their key lines. Together with --keys-only, or
    --limit without --prefix, they are usage errors (exit 2)."""
    for key, value in (("user/c", "3"), ("user/a", "1"), ("user/b", "2")):
        fake.set(key, value)
    result = run(*EP, "get", "--prefix", "--limit", "2", "user/")
    assert result.exit_code == 0 and result.stdout == "user/a\n1\nuser/b\n2\n"
    assert fake.calls[-1][-1]["limit"] == 3
    result = run(*EP, "get", "--prefix", "--print-value-only", "user/")
    assert result.exit_code == 0 and result.stdout == "1\n2\n3\n"
    result = run(*EP, "get", "--print-value-only", "user/b")
    assert result.exit_code == 0 and result.stdout == "2\n"
    assert run(*EP, "ls", "--limit", "1", "user/").stdout == "user/a\n"
    both = run(*EP, "get", "--keys-only", "--print-value-only", "user/a")
    assert both.exit_code == 2
    assert_one_error_line(both, "--keys-only and --print-value-only together would print nothing")
    alone = run(*EP, "get", "--limit", "1", "user/a")
    assert alone.exit_code == 2
    assert_one_error_line(alone, "--limit needs --prefix")


def test_get_prefix_without_matches_is_not_an_error(fake):
    result = run(*EP, "get", "--prefix", "none/")
    assert result.exit_code == 0
    assert result.stdout == ""


def test_get_prefix_table_is_plain_and_aligned(fake):
    fake.set("a", "1")
    fake.set("longer-key", "two words")
    fake.set("bin", b"\xff")
    result = run(*EP, "-w", "table", "get", "--prefix", "")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "VERSION", "MOD_REVISION"]  # (each key's, as kv get KEY)
    assert set(lines[1]) <= {"-", " "}
    assert lines[2:] == [
        "a           1            1        1",
        "bin         base64:/w==  1        3",
        "longer-key  two words    1        2",
    ]
    assert "\x1b" not in result.stdout  # no colour codes


# --- del, cas, ls --------------------------------------------------------------------------------


def test_del_prefix_prints_count(fake):
    for key in ("p/1", "p/2", "p/3", "q"):
        fake.set(key, "x")
    result = run(*EP, "del", "--prefix", "p/")
    assert result.exit_code == 0
    assert result.stdout == "3\n"
    assert sorted(fake.data) == ["q"]


def test_del_missing_key_prints_zero(fake):
    result = run(*EP, "del", "ghost")
    assert result.exit_code == 0
    assert result.stdout == "0\n"


def test_cas_absent_form_passes_expected_none(fake):
    result = run(*EP, "cas", "--absent", "lock", "me")
    assert result.exit_code == 0, result.output
    assert result.stdout == "OK\n"
    assert fake.calls[-1] == ("cas", ("lock", None, "me"), {})
    again = run(*EP, "cas", "--absent", "lock", "you")
    assert again.exit_code == 1
    assert_one_error_line(again, "compare failed", "lock")
    assert fake.data["lock"].value == "me"


def test_cas_expected_new(fake):
    fake.set("n", "1")
    result = run(*EP, "cas", "n", "1", "2")
    assert result.exit_code == 0
    assert fake.data["n"].value == "2"


def test_cas_mismatch_exits_1(fake):
    fake.set("n", "5")
    result = run(*EP, "cas", "n", "1", "2")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert_one_error_line(result, "compare failed")
    assert fake.data["n"].value == "5"


def test_cas_on_a_missing_key_says_it_does_not_exist(fake):
    result = run(*EP, "cas", "counter", "1", "2")
    assert result.exit_code == 1
    assert_one_error_line(result, "compare failed: counter does not exist", "--absent")
    fake.set("counter", "5")
    result = run(*EP, "cas", "counter", "1", "2")
    assert_one_error_line(result, "compare failed: the value of counter is not '1'")


def test_cas_mismatch_json_reports_and_exits_1(fake):
    fake.set("n", "5")
    result = run(*EP, "-w", "json", "cas", "n", "1", "2")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"succeeded": False, "key": "n"}


@pytest.mark.parametrize(
    "args", [["cas", "k", "only-one"], ["cas", "--absent", "k", "a", "b"], ["cas", "k", "a", "b", "c"]]
)
def test_cas_wrong_arity_is_usage_error(fake, args):
    result = run(*EP, *args)
    assert result.exit_code == 2
    assert fake.connects == []


def test_ls_lists_keys_in_order(fake):
    for key in ("b", "a", "c/1"):
        fake.set(key, "x")
    assert run(*EP, "ls").stdout == "a\nb\nc/1\n"
    assert run(*EP, "ls", "c/").stdout == "c/1\n"
    assert json.loads(run(*EP, "-w", "json", "ls").stdout) == {"keys": ["a", "b", "c/1"], "count": 3,
                                                                "more": False}


def test_a_limit_that_cuts_the_range_says_more_in_json(fake):
    """etcdctl users read ``more`` to page through a range: true when --limit left keys out (the
    client asks for one more than the limit to know)."""
    for key in ("a", "b", "c/1"):
        fake.set(key, "x")
    cut = json.loads(run(*EP, "-w", "json", "get", "--prefix", "", "--limit", "2").stdout)
    assert [r["key"] for r in cut["kvs"]] == ["a", "b"] and cut["count"] == 2 and cut["more"] is True
    whole = json.loads(run(*EP, "-w", "json", "get", "--prefix", "", "--limit", "3").stdout)
    assert [r["key"] for r in whole["kvs"]] == ["a", "b", "c/1"] and whole["more"] is False
    assert json.loads(run(*EP, "-w", "json", "get", "--prefix", "").stdout)["more"] is False
    assert run(*EP, "get", "--prefix", "", "--limit", "2", "--keys-only").stdout == "a\nb\n"
    assert json.loads(run(*EP, "-w", "json", "ls", "--limit", "1").stdout) == {"keys": ["a"], "count": 1, "more": True}


def test_a_limit_is_at_most_what_a_node_answers_and_is_probed_with_one_more(fake):
    """A node answers a ``list`` without a limit with at most ``RANGE_ITEMS_MAX`` entries, and a limit of
    one more (``too_large`` past them): ``--limit`` goes up to ``RANGE_ITEMS_MAX`` and the client asks for
    one entry more to tell ``more`` (QA: a probe-less --limit 100000 said "more": false with keys left out);
    above it, a usage error."""
    from kv_cli import common
    from kvstore.frames import RANGE_ITEMS_MAX

    assert common.RANGE_ITEMS_MAX == RANGE_ITEMS_MAX
    fake.set("a", "x")
    for limit in (RANGE_ITEMS_MAX - 1, RANGE_ITEMS_MAX):
        fake.calls.clear()
        assert json.loads(run(*EP, "-w", "json", "get", "--prefix", "", "--limit", str(limit)).stdout)["count"] == 1
        assert json.loads(run(*EP, "-w", "json", "ls", "--limit", str(limit)).stdout)["count"] == 1
        assert [call[2]["limit"] for call in fake.calls if call[0] in ("range_items", "list")] == [limit + 1] * 2
    for argv in (("get", "--prefix", ""), ("ls",)):
        result = run(*EP, *argv, "--limit", str(RANGE_ITEMS_MAX + 1))
        assert result.exit_code == 2 and "--limit" in result.stderr, result.output


# --- endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoints",
    ["foo", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", ":7001", "127.0.0.1:7001,", "a b:1", "[zz]:1"],
)
def test_invalid_endpoints_exit_2_before_connecting(fake, endpoints):
    result = run("--endpoints", endpoints, "get", "k")
    assert result.exit_code == 2
    assert_one_error_line(result, "endpoint")
    assert fake.connects == []
    assert fake.calls == []


def test_invalid_endpoint_checked_before_reading_stdin(fake):
    result = run("--endpoints", "foo", "put", "k", input="v")
    assert result.exit_code == 2
    assert fake.connects == []


def test_endpoints_from_environment(fake, monkeypatch):
    monkeypatch.setenv("KV_ENDPOINTS", "localhost:9001,[::1]:9002")
    fake.set("k", "v")
    assert run("get", "k").exit_code == 0
    assert fake.connects[-1][0] == ["localhost:9001", "[::1]:9002"]


def test_endpoints_from_default_cluster_state(fake, tmp_path):
    kv_cli.common.write_state(tmp_path / "cluster", {"endpoints": ["127.0.0.1:7101", "127.0.0.1:7102"], "nodes": []})
    fake.set("k", "v")
    result = run("get", "k")
    assert result.exit_code == 0, result.output
    assert fake.connects[-1][0] == ["127.0.0.1:7101", "127.0.0.1:7102"]


@pytest.mark.parametrize("content", [b"\x92\xff binary", b"{not json", b"[]"], ids=["binary", "not-json", "a-list"])
def test_a_damaged_cluster_state_is_a_usage_error_naming_the_file(fake, tmp_path, content):
    (tmp_path / "cluster").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cluster" / "cluster.json").write_bytes(content)
    result = run("get", "k")
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, "cluster.json is not")
    assert fake.connects == []


def test_no_endpoints_anywhere_is_usage_error_with_hint(fake):
    result = run("get", "k")
    assert result.exit_code == 2
    assert_one_error_line(result, "kv cluster up", "--endpoints")
    assert fake.connects == []


# --- errors --------------------------------------------------------------------------------------


def test_unavailable_with_unknown_outcome_says_so(fake):
    fake.error = Unavailable("no answer from the cluster within 5s (no leader)", outcome_unknown=True)
    result = run(*EP, "put", "k", "v")
    assert result.exit_code == 1
    assert_one_error_line(result, "outcome unknown", "no leader")


def test_unavailable_read_is_one_line(fake):
    fake.error = Unavailable("no answer from the cluster within 5s (no leader)")
    result = run(*EP, "get", "k")
    assert result.exit_code == 1
    assert_one_error_line(result, "no leader")
    assert "outcome unknown" not in result.stderr


def test_request_error_is_one_line(fake):
    fake.error = RequestError("key too long", "bad_request")
    result = run(*EP, "put", "k", "v")
    assert result.exit_code == 1
    assert_one_error_line(result, "key too long")


def test_unexpected_error_one_line_but_traceback_with_debug(fake):
    fake.error = RuntimeError("boom")
    result = run(*EP, "get", "k")
    assert result.exit_code == 1
    assert_one_error_line(result, "boom", "--debug")
    debug = run(*EP, "--debug", "get", "k")
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("Error: RuntimeError: boom")


def test_bad_write_out_is_usage_error(fake):
    assert run(*EP, "-w", "yaml", "get", "k").exit_code == 2


# --- status and health ---------------------------------------------------------------------------

FULL = {
    "endpoint": "127.0.0.1:7001", "reachable": True, "id": 1, "address": "127.0.0.1:7001", "leader": 1,
    "is_leader": True, "ballot": [3, 1], "decided_slot": 17, "applied_slot": 16, "snapshot_slot": 0,
    "log_bytes": 2048, "revision": 9, "keys": 4, "state_hash": "ab" * 32, "storage_full": False,
}
PARTIAL = {"endpoint": "127.0.0.1:7002", "reachable": True, "id": 2, "leader": 1, "decided_slot": 17}
DOWN = {"endpoint": "127.0.0.1:7003", "reachable": False, "error": "connection refused"}


def test_status_table_tolerates_missing_fields(fake):
    fake.statuses = [FULL, PARTIAL, DOWN]
    result = run(*EP, "-w", "table", "status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = lines[0].split()
    for column in ("ID", "ADDRESS", "REACHABLE", "LEADER", "BALLOT", "DECIDED", "APPLIED", "LOG_SIZE", "SNAPSHOT"):
        assert column in header
    assert len(lines) == 2 + 3
    assert "127.0.0.1:7003" in lines[4] and "false" in lines[4] and "connection refused" in lines[4]
    assert "(3, 1)" in lines[2]


def test_status_simple_and_json(fake):
    fake.statuses = [FULL, DOWN]
    simple = run(*EP, "status")
    assert simple.exit_code == 0
    first, second = simple.stdout.splitlines()
    assert "decided=17" in first and "applied=16" in first and "log_size=2048" in first
    assert "reachable=false" in second and "decided=-" in second
    data = json.loads(run(*EP, "-w", "json", "status").stdout)
    assert data[0]["ballot"] == [3, 1] and data[1] == DOWN


def test_status_with_nothing_reachable_exits_1(fake):
    fake.statuses = [DOWN]
    result = run(*EP, "status")
    assert result.exit_code == 1
    assert_one_error_line(result, "no endpoint is reachable")
    assert "TLS" not in result.stderr


def test_status_where_every_node_hung_up_suggests_tls(fake):
    """A TLS-only node closes a plain client's connection without a word: with every node doing so
    and no TLS files given, the error says what to try."""
    fake.statuses = [{"endpoint": "127.0.0.1:7001", "reachable": False,
                      "error": "127.0.0.1:7001 closed the connection: connection lost before the reply"}]
    result = run(*EP, "status")
    assert result.exit_code == 1
    assert_one_error_line(result, "no endpoint is reachable (if the cluster serves TLS: --cacert, --cert and --key")


def test_a_client_the_access_rules_refuse_status_is_told_so_not_that_nodes_are_unreachable(fake):
    """QA: a client without an access rule got "no endpoint is reachable" from kv status and "cluster is
    unhealthy: 0/3 reachable" from kv health, though every node answered it."""
    denied = "permission denied: client 'nobody' has no access rule"
    fake.statuses = [{"endpoint": f"127.0.0.1:700{i}", "reachable": False, "error": denied} for i in (1, 2, 3)]
    result = run(*EP, "status")
    assert result.exit_code == 1
    assert_one_error_line(result, denied)
    assert "no endpoint is reachable" not in result.stderr
    result = run(*EP, "health")
    assert result.exit_code == 1
    assert f"127.0.0.1:7001: answered, refusing this client: {denied}" in result.stdout.splitlines()
    assert_one_error_line(result, "cannot tell whether the cluster is healthy", "may not ask for status")


def test_health_ok_with_quorum_and_leader(fake):
    fake.statuses = [FULL, PARTIAL, DOWN]
    result = run(*EP, "health")
    assert result.exit_code == 0, result.output
    assert "healthy" in result.stdout.splitlines()[-1]
    data = json.loads(run(*EP, "-w", "json", "health").stdout)
    assert data["healthy"] is True and data["reachable"] == 2 and data["quorum"] == 2 and data["leader"] == 1


def test_health_names_a_reachable_node_whose_disk_is_not_ok(fake):
    """Healthy by its definition (a quorum reachable, a leader known), but a node whose disk is read-only
    votes for nothing: the line for it and the summary say so."""
    fake.statuses = [FULL, dict(PARTIAL, disk="read-only"), DOWN]
    result = run(*EP, "health")
    assert result.exit_code == 0, result.output
    assert any(line.endswith(": reachable, disk read-only") for line in result.stdout.splitlines()), result.stdout
    assert result.stdout.splitlines()[-1].endswith("; 1 of them with a disk not ok (kv status)"), result.stdout


def test_health_names_a_reachable_node_far_behind_the_leader(fake):
    """Healthy by its definition, but a node 100 slots or more behind the leader's decided slot is slow
    (its disk, its CPU) or cut off: its line and the summary say so (gray-failure QA: a node with a
    slow disk was 5,000 slots behind and kv health said nothing). A node a few slots behind is not."""
    fake.statuses = [dict(FULL, decided_slot=5017), dict(PARTIAL, decided_slot=17),
                     dict(PARTIAL, endpoint="127.0.0.1:7003", id=3, decided_slot=5000)]
    result = run(*EP, "health")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "127.0.0.1:7002: reachable, 5000 slots behind the leader" in lines, lines
    assert "127.0.0.1:7003: reachable" in lines
    assert lines[-1].endswith("; 1 of them 100+ slots behind the leader"), lines
    # an eager follower that decided everything but applied late (a slow disk) counts; a lazy one does not
    fake.statuses = [dict(FULL, decided_slot=5017, applied_slot=5017),
                     dict(PARTIAL, decided_slot=5017, applied_slot=300, learner="eager"),
                     dict(PARTIAL, endpoint="127.0.0.1:7003", id=3, decided_slot=5017, applied_slot=10,
                          learner="lazy")]
    lines = run(*EP, "health").stdout.splitlines()
    assert "127.0.0.1:7002: reachable, 4717 slots behind the leader" in lines, lines
    assert "127.0.0.1:7003: reachable" in lines


def _with_config(status: dict, voters: list[int], epoch: int = 3, cluster: str = "c1") -> dict:
    addresses = {str(v): f"127.0.0.1:{7000 + v}" for v in voters}
    return dict(status, cluster_id=cluster, config={"voters": voters, "epoch": epoch, "addresses": addresses})


def test_health_takes_the_quorum_from_the_configuration_not_the_endpoints(fake):
    """QA: after growing to 5 voters, the old 3 endpoints gave "3/3 reachable (quorum 2)". The quorum is the
    configuration's (the newest any node reports); a voter not among the endpoints is not reachable from
    here, and the summary names it."""
    five = [1, 2, 3, 4, 5]
    fake.statuses = [_with_config(FULL, five), _with_config(PARTIAL, five, epoch=2),
                     _with_config(dict(PARTIAL, endpoint="127.0.0.1:7003", id=3), five)]
    result = run(*EP, "health")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == ("cluster is healthy: 3/5 reachable (quorum 3), leader 1; voters 4, 5 not "
                                              "among the endpoints (kv member list has every address)"), result.stdout
    data = json.loads(run(*EP, "-w", "json", "health").stdout)
    assert data["voters"] == five and data["endpoints"] == 3 and data["quorum"] == 3 and data["reachable"] == 3
    fake.statuses = [_with_config(FULL, five), _with_config(PARTIAL, five), DOWN]  # node 3 asked, down
    result = run(*EP, "health")
    assert result.exit_code == 1, result.output
    assert_one_error_line(result, "cluster is unhealthy: 2/5 reachable (quorum 3), leader 1; voters 4, 5 not among")


def test_health_counts_a_node_reached_through_two_endpoints_once(fake):
    """QA: 127.0.0.1:7001 and localhost:7001 (one live node of three) said "2/3 reachable"."""
    three = [1, 2, 3]
    fake.statuses = [_with_config(FULL, three), _with_config(dict(FULL, endpoint="localhost:7001"), three), DOWN]
    result = run("--endpoints", "127.0.0.1:7001,localhost:7001,127.0.0.1:7003", "health")
    assert result.exit_code == 1, result.output
    assert_one_error_line(result, "1/3 reachable (quorum 2)", "1 endpoint reaches a node another endpoint reaches")


def test_health_refuses_two_nodes_of_one_id_as_two_clusters(fake):
    """QA: two clusters started by hand share the default cluster id; node 1 of each passed for one node
    reached twice and the mix was called healthy. Their incarnations differ."""
    one = _with_config(dict(FULL, incarnation="aaaa"), [1, 2, 3])
    other = _with_config(dict(FULL, endpoint="127.0.0.1:7003", incarnation="bbbb"), [1, 2, 3])
    fake.statuses = [one, _with_config(dict(PARTIAL, incarnation="cccc"), [1, 2, 3]), other]
    result = run(*EP, "health")
    assert result.exit_code == 1, result.output
    assert_one_error_line(result, "two different nodes answer as node 1", "not of one cluster")


def test_health_refuses_endpoints_of_two_clusters(fake):
    """QA: the endpoints of two clusters (two nodes with id 1, both leading) were called a healthy cluster."""
    fake.statuses = [_with_config(FULL, [1, 2, 3]), _with_config(PARTIAL, [1, 2, 3]),
                     _with_config(dict(FULL, endpoint="127.0.0.1:7003"), [1, 2, 3], cluster="c2")]
    result = run(*EP, "health")
    assert result.exit_code == 1, result.output
    assert_one_error_line(result, "the endpoints belong to 2 different clusters (cluster ids c1, c2)")


def test_health_fails_without_quorum(fake):
    fake.statuses = [FULL, DOWN, dict(DOWN, endpoint="127.0.0.1:7002")]
    result = run(*EP, "health")
    assert result.exit_code == 1
    assert_one_error_line(result, "unhealthy", "1/3")


def test_health_fails_without_leader(fake):
    no_leader = [dict(FULL, leader=None, is_leader=False), dict(PARTIAL, leader=None), DOWN]
    fake.statuses = no_leader
    result = run(*EP, "health")
    assert result.exit_code == 1
    assert_one_error_line(result, "leader unknown")


def test_health_fails_while_the_leader_the_followers_name_does_not_answer(fake):
    """Just after the leader was killed or paused its followers still name it, until they elect another:
    health said "healthy ... leader 3" having listed node 3 as unreachable (QA). A named leader among
    the endpoints asked must answer and say it leads; one outside them is taken on the followers' word."""
    addresses = {"config": {"addresses": {"1": "127.0.0.1:7001", "2": "127.0.0.1:7002", "3": "127.0.0.1:7003"}}}
    follower_1 = dict(FULL, leader=3, is_leader=False, **addresses)
    follower_2 = dict(PARTIAL, leader=3, **addresses)
    fake.statuses = [follower_1, follower_2, DOWN]  # node 3 (127.0.0.1:7003) is the leader they name
    result = run(*EP, "health")
    assert result.exit_code == 1, result.output
    assert_one_error_line(result, "cluster is unhealthy: 2/3 reachable (quorum 2), leader unknown")
    # asked only the two followers: their word for the leader is all there is
    fake.statuses = [follower_1, follower_2]
    assert run("--endpoints", "127.0.0.1:7001,127.0.0.1:7002", "health").exit_code == 0
    # a leader that answers but no longer leads (it stepped down) is no leader either
    fake.statuses = [follower_1, follower_2, dict(FULL, endpoint="127.0.0.1:7003", id=3, address="127.0.0.1:7003",
                                                  leader=None, is_leader=False)]
    assert run(*EP, "health").exit_code == 1


# --- serve, cluster, help ------------------------------------------------------------------------


def test_serve_rejects_id_not_in_peers(fake, monkeypatch):
    import kvstore.server

    started = []
    monkeypatch.setattr(kvstore.server, "run_node", lambda *a, join=None, **kw: started.append((*a, join)))
    result = run("serve", "--id", "4", "--peers", "1=127.0.0.1:7001,2=127.0.0.1:7002", "--data-dir", "d")
    assert result.exit_code == 2
    assert_one_error_line(result, "--id 4")
    bad = run("serve", "--id", "1", "--peers", "1=nowhere", "--data-dir", "d")
    assert bad.exit_code == 2
    assert started == []


def test_serve_refuses_an_election_timeout_under_two_heartbeats(fake, monkeypatch, tmp_path):
    import kvstore.server

    started = []
    monkeypatch.setattr(kvstore.server, "run_node", lambda *a, join=None, **kw: started.append((*a, join)))
    base = ("serve", "--id", "1", "--peers", "1=127.0.0.1:7001", "--data-dir", str(tmp_path / "n1"))
    result = run(*base, "--heartbeat-ticks", "20")
    assert result.exit_code == 2
    assert_one_error_line(result, "--election-timeout-ticks 30 (the default) must be at least twice "
                                  "--heartbeat-ticks 20")
    both = run(*base, "--heartbeat-ticks", "2", "--election-timeout-ticks", "3")
    assert both.exit_code == 2
    assert_one_error_line(both, "--election-timeout-ticks 3 must be at least twice --heartbeat-ticks 2")
    assert started == [] and not (tmp_path / "n1").exists()
    assert run(*base, "--heartbeat-ticks", "2", "--election-timeout-ticks", "4").exit_code == 0


def test_serve_refuses_an_empty_cluster_id_and_a_tick_over_a_second_as_usage_errors(fake, monkeypatch, tmp_path):
    """(QA: ``--cluster-id ""`` printed "Error: ValueError: ..." and exited 1; ``--tick-ms 1e11`` started a
    node whose first election was centuries away)"""
    import kvstore.server

    started = []
    monkeypatch.setattr(kvstore.server, "run_node", lambda *a, join=None, **kw: started.append((*a, join)))
    base = ("serve", "--id", "1", "--peers", "1=127.0.0.1:7001", "--data-dir", str(tmp_path / "n1"))
    result = run(*base, "--cluster-id", "")
    assert result.exit_code == 2
    assert_one_error_line(result, "invalid options: cluster_id must be a non-empty str, got ''")
    for tick in ("1001", "100000000000"):
        assert run(*base, "--tick-ms", tick).exit_code == 2, tick
    assert started == [] and not (tmp_path / "n1").exists()
    assert run(*base, "--tick-ms", "1000").exit_code == 0 and started[-1][3].tick_seconds == 1.0


def test_serve_maps_options_to_server_options(fake, monkeypatch, tmp_path):
    import kvstore.server

    started = []
    monkeypatch.setattr(kvstore.server, "run_node", lambda *a, join=None, **kw: started.append((*a, join)))
    result = run(
        "serve", "--id", "2", "--peers", "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
        "--data-dir", str(tmp_path / "n2"), "--tick-ms", "20", "--election-timeout-ticks", "40",
        "--heartbeat-ticks", "4", "--batch-size", "64", "--window", "8", "--snapshot-every", "100",
        "--idle-snapshot-seconds", "0", "--fsync", "off", "--cluster-id", "test",
    )
    assert result.exit_code == 0, result.output
    ((node_id, peers, data_dir, options, join),) = started
    assert node_id == 2 and peers[3] == ("127.0.0.1", 7003) and data_dir == str(tmp_path / "n2") and join is None
    assert options.tick_seconds == pytest.approx(0.02)
    assert (options.election_timeout_ticks, options.heartbeat_ticks, options.batch_count_max) == (40, 4, 64)
    assert (options.window, options.snapshot_every, options.fsync, options.cluster_id) == (8, 100, False, "test")
    assert options.idle_snapshot_seconds == 0


def test_serve_join_passes_the_members_and_needs_peers_or_join(fake, monkeypatch, tmp_path):
    import kvstore.server

    started = []
    monkeypatch.setattr(kvstore.server, "run_node", lambda *a, join=None, **kw: started.append((*a, join)))
    result = run("serve", "--id", "4", "--join", "127.0.0.1:7001,localhost:7002", "--data-dir", str(tmp_path / "n4"))
    assert result.exit_code == 0, result.output
    ((node_id, peers, _data_dir, _options, join),) = started
    assert node_id == 4 and peers == {} and join == ["127.0.0.1:7001", "localhost:7002"]
    neither = run("serve", "--id", "4", "--data-dir", str(tmp_path / "n4"))
    assert neither.exit_code == 2
    assert_one_error_line(neither, "give --peers", "or --join")
    bad = run("serve", "--id", "4", "--join", "nowhere", "--data-dir", str(tmp_path / "n4"))
    assert bad.exit_code == 2
    assert_one_error_line(bad, "invalid --join")
    both = run("serve", "--id", "4", "--peers", "4=127.0.0.1:7004", "--join", "127.0.0.1:7001",
               "--data-dir", str(tmp_path / "n5"))
    assert both.exit_code == 2  # (QA: taken, and the directory the refused join made blocked the retry)
    assert_one_error_line(both, "not both")
    assert len(started) == 1 and not (tmp_path / "n5").exists()


def test_cluster_up_refuses_a_taken_port(fake, tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run("cluster", "up", "--nodes", "1", "--base-port", str(port), "--data-dir", str(tmp_path / "c"))
    finally:
        listener.close()
    assert result.exit_code == 1
    assert_one_error_line(result, f"{port}", "already in use")
    assert not (tmp_path / "c" / "cluster.json").exists()


def test_cluster_kill_unknown_node_is_usage_error(fake, tmp_path):
    kv_cli.common.write_state(tmp_path / "c", {"endpoints": ["127.0.0.1:7001"], "nodes": [
        {"id": 1, "port": 7001, "pid": None, "data_dir": str(tmp_path / "c" / "node-1"),
         "log_file": str(tmp_path / "c" / "node-1" / "server.log"), "argv": ["true"]}]})
    result = run("cluster", "kill", "7", "--data-dir", str(tmp_path / "c"))
    assert result.exit_code == 2
    assert_one_error_line(result, "no node 7")
    status = run("cluster", "status", "--data-dir", str(tmp_path / "c"))
    assert status.exit_code == 0
    assert "process=dead" in status.stdout


def test_cluster_status_without_cluster_exits_1(fake, tmp_path):
    result = run("cluster", "status", "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert_one_error_line(result, "kv cluster up")


def _every_command_path() -> list[list[str]]:
    """Every command and group of the kv app, walked from the click tree (so a new one is covered)."""
    import typer._click as click  # (typer 0.29 carries its own click)
    import typer.main

    paths: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        if path:
            paths.append(path)
        if hasattr(command, "list_commands"):  # a group
            context = click.Context(command)
            for name in command.list_commands(context):
                walk(command.get_command(context, name), [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_command_and_group_has_help_with_an_example():
    """docs/cli.md says every command's --help has an example (QA: kv member and kv snapshot had none)."""
    paths = _every_command_path()
    assert ["member"] in paths and ["snapshot", "restore"] in paths and len(paths) > 30
    missing = []
    for path in paths:
        result = run(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        if "Example" not in result.stdout:
            missing.append(" ".join(path))
    assert not missing, f"no example in the help of: {missing}"


# --- output helpers ------------------------------------------------------------------------------


def test_render_table_escapes_control_characters():
    text = render_table(["K", "V"], [["a", "x\ny"], ["bb", None]])
    assert text.splitlines() == ["K   V", "--  ----", "a   x\\ny", "bb  -"]


def test_value_fields():
    assert value_fields("hi") == {"value": "hi"}
    assert value_fields(b"hi") == {"value": "aGk=", "value_encoding": "base64"}


# --- kv member: the fault-tolerance warning --------------------------------------------------------


@pytest.mark.parametrize("voters, learners, expected", [
    (1, 0, None), (2, 0, "warning: 2 voters now"), (2, 1, "warning: 2 voters now"), (3, 1, None),
    (4, 0, "note: 4 voters tolerate 1 failed voter(s), as 3 would"), (5, 0, None),
    (6, 0, "note: 6 voters tolerate 2 failed voter(s), as 5 would"),
])
def test_member_changes_warn_when_the_voters_tolerate_less_than_expected(voters, learners, expected):
    from kv_cli.member import fault_tolerance_warning

    members = [{"id": i, "role": "voter"} for i in range(1, voters + 1)]
    members += [{"id": 10 + i, "role": "learner"} for i in range(learners)]
    warning = fault_tolerance_warning({"members": members, "epoch": 3})
    if expected is None:
        assert warning is None
    else:
        assert warning is not None and warning.startswith(expected)
