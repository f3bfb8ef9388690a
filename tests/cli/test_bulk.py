"""``kv load`` and ``kv dump`` (kvstore/bulk.py, cli/bulk.py).

Fast tests, no server: every kind of bad line is refused with its number (``parse_line``), text and
bytes values survive ``format_record`` -> ``parse_line``, the snapshot decoder gives exactly
``StateMachine.range()`` when fed the snapshot bytes in random small pieces, and ``kv load --dry-run``
names the bad line and exits 1. ``load`` against a fake client whose answers come out of order: it
keeps at most ``in_flight`` out and one put per key, the last line of a key wins, and a failed put or
a line too long stops it with a message that counts exactly what was written.

Real clusters (marked slow), started with ``kv cluster up --detach`` in temporary cluster
directories as tests/cli/test_cluster_e2e.py does (a ``Kv`` runner per cluster; teardown ``kv cluster
down`` and SIGKILL of any node left): a file with text,
bytes, Unicode, a repeated key and values large enough to span several 1 MiB dump chunks is loaded
into a 3-node cluster; its dump is what the file says (last line of a key wins, key order); that dump
loads into an empty 1-node cluster and dumps again to the same bytes. A bad line after good ones
stops the load with exit 1, the line number and the count written before it, and exactly the lines
before it are in the store.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from kv_cli.cluster import process_state
from kvstore import bulk
from kvstore.bulk import BulkError, BulkInputError, LoadSummary, SnapshotEntries, format_record, load, parse_line
from kvstore.client import Unavailable
from kvstore.commands import KEY_BYTES_MAX, VALUE_BYTES_MAX, encode_delete, encode_put
from kvstore.statemachine import StateMachine
from tests.ports import free_base_port

CLIENT = b"bulk-test-client"
COMMAND_SECONDS = 120  # bound on any one kv invocation


def kv_command() -> list[str]:
    beside = Path(sys.executable).parent / "kv"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("kv")
    return [found] if found else [sys.executable, "-m", "kv_cli"]


class Kv:
    """Runs ``kv`` with its own KV_CLUSTER_DIR (so no --endpoints: the default cluster's are used)."""

    def __init__(self, cluster_dir: Path) -> None:
        self.cluster_dir = cluster_dir
        self.env = dict(os.environ, KV_CLUSTER_DIR=str(cluster_dir))
        self.env.pop("KV_ENDPOINTS", None)

    def __call__(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(kv_command() + list(args), input=input, capture_output=True, env=self.env,
                                timeout=COMMAND_SECONDS)
        if check and result.returncode != 0:
            raise AssertionError(f"kv {' '.join(args)[:200]} exited {result.returncode}\nstderr: {result.stderr!r}")
        return result

    def teardown(self) -> None:
        """``kv cluster down``, then SIGKILL every node pid of cluster.json that is still one of ours."""
        state_file = self.cluster_dir / "cluster.json"
        if not state_file.exists():
            return
        try:
            self("cluster", "down", check=False)
        except subprocess.TimeoutExpired:
            pass
        for node in json.loads(state_file.read_text()).get("nodes", []):
            if process_state(node.get("pid"), node) != "dead":
                os.kill(node["pid"], signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# the format


@pytest.mark.parametrize("value", ["plain", "", "ünï\ncode \"quoted\" \\ \u2028 ☃", b"", b"\x00\xff binary",
                                   bytes(range(256))])
def test_a_record_parses_back_to_its_key_and_value_of_the_same_type(value):
    line = format_record("k/ü", value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    key, parsed = parse_line(line.rstrip(b"\n"), 1)
    assert key == "k/ü" and parsed == value and type(parsed) is type(value)


BAD_LINES = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'["key", "value"]', "expected a JSON object"),
    (b'{"value": "v"}', 'missing "key"'),
    (b'{"key": "", "value": "v"}', "must not be empty"),
    (b'{"key": 5, "value": "v"}', '"key" must be a string'),
    (b'{"key": "k"}', 'missing "value"'),
    (b'{"key": "k", "value": 12}', '"value" must be a string'),
    (b'{"key": "k", "value": "v", "vaule_encoding": "base64"}', "unknown field 'vaule_encoding'"),
    (b'{"key": "k", "key": "j", "value": "v"}', "appears twice"),
    (b'{"key": "k", "value": "%%%", "value_encoding": "base64"}', "not valid base64"),
    (b'{"key": "k", "value": "v", "value_encoding": "hex"}', '"value_encoding" must be "base64"'),
    (b'{"key": "\\ud800", "value": "v"}', "lone surrogate"),
    (json.dumps({"key": "k" * (KEY_BYTES_MAX + 1), "value": "v"}).encode(), "more than the store's limit"),
    (json.dumps({"key": "k", "value": "v" * (VALUE_BYTES_MAX + 1)}).encode(), "more than the store's limit"),
]


@pytest.mark.parametrize("line,problem", BAD_LINES)
def test_a_bad_line_is_refused_with_its_number_and_the_problem(line, problem):
    with pytest.raises(BulkInputError) as caught:
        parse_line(line, 42)
    assert caught.value.line == 42
    assert str(caught.value).startswith("line 42: ")
    assert problem in str(caught.value)


@pytest.mark.parametrize("line", [b'{"key": "a", "value": "b"}', b'{"key":"a","value":""}  \r',
                                  b'{"key": "\xc3\xbc", "value": "x y"}', b'{"value": "b", "key": "a"}',
                                  b' {"key": "a", "value": "b"}', b'{"key": "a\\n", "value": "\\u00fc"}'])
def test_the_plain_line_shortcut_means_what_the_json_decoder_reads(line):
    expected = json.loads(line)
    assert parse_line(line, 1) == (expected["key"], expected["value"])


def test_a_byte_order_mark_before_the_first_record_is_not_part_of_it():
    """Some editors start a UTF-8 file with a byte order mark: line 1 reads as if it were not there; a
    mark on a later line is a bad line."""
    line = b'\xef\xbb\xbf{"key": "k", "value": "v"}'
    assert parse_line(line, 1) == ("k", "v")
    with pytest.raises(BulkInputError):
        parse_line(line, 2)


async def test_a_bad_first_line_says_nothing_was_written():
    """No "0 records (lines 1 to 0)" and no tail command from line 1: nothing to resume."""
    async with trio.open_nursery() as nursery:
        with pytest.raises(BulkError) as raised:
            await load(FakeClient(nursery), io.BytesIO(b'{"key": 1}\n'), name="data.jsonl")
    assert str(raised.value).startswith("line 1: ") and str(raised.value).endswith(
        "nothing was written; fix the line and load again"), str(raised.value)


async def test_one_good_line_before_a_bad_one_is_counted_in_the_singular():
    async with trio.open_nursery() as nursery:
        with pytest.raises(BulkError) as raised:
            await load(FakeClient(nursery), io.BytesIO(b'{"key": "a", "value": "1"}\n{"key": 1}\n'), name="d.jsonl")
    assert "1 record (line 1) was written before it, nothing after it" in str(raised.value), str(raised.value)


def test_blank_lines_are_skipped():
    assert parse_line(b"", 1) is None
    assert parse_line(b"  \r", 2) is None


def test_the_snapshot_decoder_gives_every_entry_in_key_order_fed_in_any_pieces():
    sm = StateMachine()
    request = 0
    for i in range(3000):
        request += 1
        sm.apply(encode_put(CLIENT, request, request, f"key/{i:05d}", f"value {i} " * (i % 7)))
    for i in range(0, 3000, 5):
        request += 1
        sm.apply(encode_put(CLIENT, request, request, f"key/{i:05d}", bytes([i % 256]) * (i % 300)))
    request += 1
    sm.apply(encode_delete(CLIENT, request, request, "key/00001"))
    data = sm.snapshot()
    expected = [(e.key, e.value) for e in sm.range()]
    rng = random.Random(7)
    for _ in range(3):
        decoder = SnapshotEntries()
        got = []
        pos = 0
        while pos < len(data):
            step = rng.choice([1, 2, 3, 17, 1000, 65536])
            got += decoder.feed(data[pos:pos + step])
            pos += step
        assert decoder.finished and decoder.revision == sm.revision
        assert got == expected
        assert all(type(v) is type(w) for (_, v), (_, w) in zip(got, expected, strict=True))


class FakeClient:
    """``submit_put`` answers after a random short sleep in a task of its own (out of order, as a real
    pipeline may); puts of ``fail_keys`` fail. Records the most puts in flight and any key sent twice
    at once."""

    def __init__(self, nursery, fail_keys=()) -> None:
        self.nursery = nursery
        self.fail_keys = set(fail_keys)
        self.data: dict = {}
        self.in_flight: set = set()
        self.most = 0
        self.overlapping: list = []
        self.rng = random.Random(5)

    def submit_put(self, key, value, done) -> None:
        if key in self.in_flight:
            self.overlapping.append(key)
        self.in_flight.add(key)
        self.most = max(self.most, len(self.in_flight))
        self.nursery.start_soon(self._answer, key, value, done, self.rng.random() / 1000)

    async def _answer(self, key, value, done, delay) -> None:
        await trio.sleep(delay)
        self.in_flight.discard(key)
        if key in self.fail_keys:
            done(Unavailable("no answer from the cluster within 5s", outcome_unknown=True))
        else:
            self.data[key] = value
            done(len(self.data))


async def test_load_keeps_the_window_puts_a_key_once_at_a_time_and_the_last_line_wins():
    lines = [format_record(f"k{i % 50}", f"v{i}") for i in range(1000)]
    async with trio.open_nursery() as nursery:
        client = FakeClient(nursery)
        summary = await load(client, io.BytesIO(b"".join(lines)), in_flight=16)
    assert summary.written == summary.records == 1000 and summary.failed == 0
    assert client.most <= 16 and not client.overlapping
    assert client.data == {f"k{i}": f"v{950 + i}" for i in range(50)}


async def test_load_keeps_the_bytes_in_flight_bounded_as_well_as_the_puts():
    """Values of 1 MiB with the default window of 256 puts: at most ``IN_FLIGHT_BYTES_MAX`` of them are
    out at once (QA: 256 of them went out together, more than the cluster wrote within the 5 s timeout,
    and the load of a dump with large values failed; the client held 1.1 GB). Small values keep the
    whole window."""
    big = "x" * VALUE_BYTES_MAX
    lines = [format_record(f"big{i}", big) for i in range(12)]
    async with trio.open_nursery() as nursery:
        client = FakeClient(nursery)
        summary = await load(client, io.BytesIO(b"".join(lines)))
    assert summary.written == summary.records == 12
    assert 2 <= client.most <= bulk.IN_FLIGHT_BYTES_MAX // (1 << 20), client.most
    small = [format_record(f"k{i}", "v") for i in range(2000)]
    async with trio.open_nursery() as nursery:
        client = FakeClient(nursery)
        await load(client, io.BytesIO(b"".join(small)))
    assert client.most > 100  # (the bytes bound leaves small puts their window)


async def test_a_failed_put_stops_the_load_and_the_message_counts_what_was_written():
    lines = [format_record(f"k{i}", "v") for i in range(1, 2001)]
    async with trio.open_nursery() as nursery:
        client = FakeClient(nursery, fail_keys={"k700"})
        summary = LoadSummary()
        with pytest.raises(BulkError) as caught:
            await load(client, io.BytesIO(b"".join(lines)), in_flight=32, summary=summary)
    text = str(caught.value)
    assert text.startswith("line 700 (key 'k700'): the put failed: no answer")
    assert "may or may not have been applied" in text
    assert f"{len(client.data)} of the {summary.records} records sent were written" in text
    assert summary.written == len(client.data) and 699 <= summary.written < summary.records
    # Sending stops at the failure and the puts already out are waited for; how many went out after
    # line 700 depends on how many others were answered before its failure was (the window bounds
    # what is outstanding at once, not that).
    assert summary.written + summary.failed == summary.records and summary.failed >= 1
    assert "tail -n +700" in text
    assert f"nothing after line {summary.sent_through} was sent" in text and summary.sent_through == summary.records


async def test_the_progress_counts_the_bytes_of_lines_written_not_of_lines_read():
    """The load bar shows ``bytes_done`` (QA: it showed the bytes read, up to 4 MiB ahead of the writes,
    so a small file stood at 100 % while most of it was in flight). While puts are out it stays below
    what was read; at the end it is the whole input, blank lines included."""
    data = b"".join(format_record(f"k{i}", "v" * 50) for i in range(600)) + b"\n\n"
    seen: list[tuple[int, int, int]] = []

    def progress(summary: LoadSummary) -> None:
        seen.append((summary.bytes_done, summary.bytes_read, summary.written))

    async with trio.open_nursery() as nursery:
        client = FakeClient(nursery)
        original = client._answer

        async def slow_answer(key, value, done, delay) -> None:
            await original(key, value, done, delay + 0.02)  # puts stay out across a progress report

        client._answer = slow_answer
        summary = await load(client, io.BytesIO(data), in_flight=64, progress=progress)
    assert summary.bytes_done == summary.bytes_read == len(data)
    assert any(done < read for done, read, _ in seen[:-1]), seen
    record_bytes = len(format_record("k0", "v" * 50))
    assert all(done <= written * (record_bytes + 2) for done, _, written in seen[:-1]), seen


async def test_a_line_too_long_stops_after_the_lines_before_it_went_out(monkeypatch):
    monkeypatch.setattr(bulk, "READ_BYTES", 1000)
    source = io.BytesIO(b'{"key": "a", "value": "1"}\n' * 50 + b'{"key": "b", "value": "'
                        + b"x" * (bulk.LINE_BYTES_MAX + 10) + b'"}\n')
    async with trio.open_nursery() as nursery:
        client = FakeClient(nursery)
        with pytest.raises(BulkError, match=r"^line 51: longer than \d+ bytes, the most .*; "
                                                r"50 records \(lines 1 to 50\)"):
            await load(client, source)
    assert client.data == {"a": "1"}


def run_kv(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(kv_command() + list(args), input=input, capture_output=True, timeout=COMMAND_SECONDS)


def test_dry_run_names_the_bad_line_and_exits_1(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"key": "a", "value": "1"}\n\n{"key": "b", "value": "2"}\n{"key": "c"}\n'
                     b'{"key": "d", "value": "4"}\n')
    result = run_kv("load", "--dry-run", str(path))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1, err  # one line, no traceback
    assert 'line 4: missing "value"' in err and "nothing written" in err
    good = run_kv("load", "--dry-run", "-", input=b'{"key": "a", "value": "1"}\n{"key": "b", "value": "2"}')
    assert good.returncode == 0 and b"2 records" in good.stdout


def test_a_failed_load_with_json_output_prints_where_it_stopped_as_json(tmp_path):
    """``kv -w json load`` that stops prints its summary with ``ok: false`` on stdout (QA: nothing, so a
    script had only the stderr line to learn how far it got), the one error line on stderr, exit 1."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"key": "a", "value": "1"}\n{"key": "b", "value": "2"}\n{"key": 3}\n')
    result = run_kv("-w", "json", "load", "--dry-run", str(path))
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["ok"] is False and summary["dry_run"] is True and summary["file"] == str(path)
    assert summary["lines"] == 2 and summary["records"] == 2 and summary["written"] == 0  # (lines parsed)
    assert summary["error"].startswith('line 3: "key" must be')
    assert result.stderr.decode().count("\n") == 1 and "line 3" in result.stderr.decode()


def test_ctrl_c_during_a_load_says_where_it_stopped(tmp_path, monkeypatch):
    """Ctrl-C inside trio's loop reaches ``kv load`` wrapped in an exception group (a nursery was open):
    it still prints the line it stopped after and what was written, and exits 1. Regression (QA): it
    left without a word, exit 130, nothing saying where to resume."""
    from typer.testing import CliRunner

    from kv_cli.main import app

    async def interrupted(client, source, *, summary, progress=None, name="", in_flight=None):
        # (the puts in flight fail as the run is interrupted: QA, counted as failed they were left out)
        summary.lines, summary.records, summary.written, summary.failed = 7, 7, 5, 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise KeyboardInterrupt

    monkeypatch.setattr(bulk, "load", interrupted)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"key": "a", "value": "1"}\n')
    result = CliRunner().invoke(app, ["load", "--dry-run", "--no-progress", str(path)])
    assert result.exit_code == 130, result.output  # (as every kv command interrupted: etcd QA)
    assert result.stderr.strip() == ("Error: interrupted after line 7: 5 records written, 2 more sent whose outcome "
                                     "is unknown (each may or may not have been written)")


def test_a_dump_whose_reader_went_away_exits_1_without_a_word(monkeypatch):
    """``kv dump | head -c 300``: the reader goes away, and kv exits 1 with no message, as every kv
    command does (docs/cli.md); it said "the output was closed after 1 records" (QA)."""
    import contextlib

    from typer.testing import CliRunner

    import kvstore.client
    from kv_cli.main import app

    @contextlib.asynccontextmanager
    async def connected(*args, **kwargs):
        yield object()

    async def reader_gone(client, write, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(kvstore.client, "connect", connected)
    monkeypatch.setattr(bulk, "dump", reader_gone)
    result = CliRunner().invoke(app, ["--endpoints", "127.0.0.1:1", "dump", "--no-progress"])
    assert result.exit_code == 1 and result.stderr == "" and result.stdout == "", result.output


@pytest.mark.parametrize(("text", "said"), [
    (b'{"key": "a"}\n', "checked only (nothing written); no record before it"),
    (b'{"key": "a", "value": "1"}\n{"key": "b"}\n', "checked only (nothing written); the 1 record before it is valid"),
    (b'{"key": "a", "value": "1"}\n{"key": "b", "value": "2"}\n{"key": "c"}\n',
     "checked only (nothing written); the 2 records before it are valid"),
])
def test_a_dry_run_counts_the_records_before_the_bad_line_in_good_grammar(tmp_path, text, said):
    path = tmp_path / "in.jsonl"
    path.write_bytes(text)
    result = run_kv("load", "--dry-run", str(path))
    assert result.returncode == 1 and result.stderr.decode().rstrip().endswith(said), result.stderr


def test_load_of_a_missing_file_is_a_usage_error(tmp_path):
    result = run_kv("--endpoints", "127.0.0.1:1", "load", str(tmp_path / "absent.jsonl"))
    assert result.returncode == 2
    assert b"cannot read" in result.stderr


# --------------------------------------------------------------------------------------------------
# real clusters


@pytest.fixture
def clusters(tmp_path):
    runners = []

    def make(name: str, nodes: int) -> Kv:
        runner = Kv(tmp_path / name)
        runners.append(runner)
        runner("cluster", "up", "--detach", "--nodes", str(nodes), "--base-port", str(free_base_port(nodes)))
        return runner

    try:
        yield make
    finally:
        for runner in runners:
            runner.teardown()


def write_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


@pytest.mark.slow
def test_dump_loads_into_an_empty_cluster_and_dumps_to_the_same_bytes(clusters, tmp_path):
    rng = random.Random(3)
    records: list[dict] = []
    expected: dict[str, str | bytes] = {}

    def add(key: str, value: str | bytes) -> None:
        if type(value) is bytes:
            records.append({"key": key, "value": base64.b64encode(value).decode(), "value_encoding": "base64"})
        else:
            records.append({"key": key, "value": value})
        expected[key] = value

    for i in range(2000):
        add(f"user/{i:05d}", f"name {i} ü\n\"{i}\"")
    for i in range(40):  # ~3 MB: the dump spans several 1 MiB chunks
        add(f"blob/{i:03d}", rng.randbytes(50_000 + i))
    add("ключ ☃", "")
    add("empty-bytes", b"")
    add("user/00007", b"\x00 now bytes, the last line of a key wins")
    source = tmp_path / "source.jsonl"
    write_lines(source, records)

    a = clusters("a", 3)
    loaded = a("--command-timeout", "20", "-w", "json", "load", str(source))
    summary = json.loads(loaded.stdout)
    assert summary["written"] == len(records) and summary["lines"] == len(records)

    dump_a = a("--command-timeout", "20", "dump").stdout
    want = b"".join(format_record(k, expected[k]) for k in sorted(expected))
    assert dump_a == want

    b = clusters("b", 1)
    b("--command-timeout", "20", "load", "-", input=dump_a)
    out = tmp_path / "b.jsonl"
    b("--command-timeout", "20", "dump", str(out))
    assert out.read_bytes() == dump_a
    assert not Path(f"{out}.part").exists()
    assert out.stat().st_mode & 0o777 == 0o600  # every key and value: its owner's only, as a backup
    assert b("dump", "--prefix", "blob/").stdout == b"".join(
        format_record(k, expected[k]) for k in sorted(expected) if k.startswith("blob/"))


@pytest.mark.slow
def test_a_bad_line_stops_the_load_and_says_how_many_were_written(clusters, tmp_path):
    a = clusters("a", 3)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(format_record(f"k{i}", f"v{i}") for i in range(1, 4))
                     + b'{"key": "k4", "value": "v4"\n' + format_record("k5", "v5"))
    result = a("--command-timeout", "20", "load", str(path), check=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "line 4: not valid JSON" in err, err
    assert "3 records (lines 1 to 3) were written before it" in err, err
    dumped = a("--command-timeout", "20", "dump")
    assert dumped.stdout == b"".join(format_record(f"k{i}", f"v{i}") for i in range(1, 4)), dumped.stderr
