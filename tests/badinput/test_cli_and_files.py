"""Bad input to the ``kv`` command line and bad files in a node's data directory (real subprocesses).

CLI: missing or invalid arguments, malformed and unreachable endpoints, bad ``serve`` options. Each must
end with an error on stderr (one line for the program's own errors), exit code 2 (usage) or 1 (the
operation failed), and never a Python traceback.

Files: a node is run, written to and stopped; then its data directory is damaged (a corrupt record in
the middle of the log, a log cut short at a record boundary, a record written over another, a
truncated snapshot) or handed to another node id or cluster id. ``kv serve``
must refuse to start: exit non-zero within seconds, with a message naming the problem. The data
directory cases run for both engines (``kv serve --engine core|classic``, issue 18): the directory is
written and reopened by a node of the engine under test.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvstore.client import Client, KVError

from ..integration.harness import free_ports
from ..kvstore.logwalk import record_starts
from ..nemesis.cluster import REPO

pytestmark = pytest.mark.slow


def kv(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kv_cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), stdin=subprocess.DEVNULL)


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("args,code", [
    (["put"], 2),                                                            # missing key
    (["--endpoints", "not-an-endpoint", "get", "k"], 2),
    (["--endpoints", "127.0.0.1:99999", "get", "k"], 2),
    (["--endpoints", "127.0.0.1:abc", "put", "k", "v"], 2),
    (["--endpoints", "", "get", "k"], 2),
    (["--endpoints", "[::1:7001", "get", "k"], 2),
    (["--command-timeout", "-5", "get", "k"], 2),
    (["-w", "yaml", "get", "k"], 2),
    (["frobnicate"], 2),
    (["serve", "--id", "1", "--peers", "garbage", "--data-dir", "/tmp/x"], 2),
    (["serve", "--id", "4", "--peers", "1=127.0.0.1:7001", "--data-dir", "/tmp/x"], 2),
    (["serve", "--id", "1", "--peers", "1=127.0.0.1:0", "--data-dir", "/tmp/x"], 2),
    (["serve", "--id", "x", "--peers", "1=127.0.0.1:7001", "--data-dir", "/tmp/x"], 2),
    (["serve", "--id", "1", "--peers", "1=127.0.0.1:7001", "--data-dir", "/tmp/x", "--engine", "raft"], 2),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_cli_usage_errors(args, code):
    proc = kv(*args)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert error_lines(proc), "no error message"


def test_cli_unreachable_endpoint_is_one_line_exit_1():
    port = free_ports(1)[0]  # nothing listens there
    proc = kv("--endpoints", f"127.0.0.1:{port}", "--command-timeout", "1", "put", "k", "v")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc)) == 1, proc.stderr


@pytest.mark.parametrize("taken", ["node", "metrics"])
def test_serve_on_a_taken_port_is_one_line_and_leaves_the_data_dir_alone(tmp_path, taken):
    """A port another process holds: exit 1 with "cannot listen on HOST:PORT: Address already in use",
    before the data directory is created (it was created, and the error was an ExceptionGroup line)."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        held = holder.getsockname()[1]
        node_port = held if taken == "node" else free_ports(1)[0]
        extra = ["--metrics-addr", f"127.0.0.1:{held}"] if taken == "metrics" else []
        data = tmp_path / "data"
        proc = kv("serve", "--id", "1", "--peers", f"1=127.0.0.1:{node_port}", "--data-dir", str(data), *extra)
    assert proc.returncode == 1, proc.stderr
    (line,) = [line for line in error_lines(proc) if line.startswith("Error")]
    assert f"cannot listen on 127.0.0.1:{held}: Address already in use" in line, proc.stderr
    assert "Traceback" not in proc.stderr and not data.exists()


# ---- data directory damage --------------------------------------------------------------------------

ENGINES = ["core", "classic"]


class OneNode:
    def __init__(self, root: Path, *extra: str, node_id: int = 1, cluster_id: str | None = None,
                 engine: str = "core") -> None:
        self.engine = engine
        self.root = root
        self.port = free_ports(1)[0]
        self.endpoint = f"127.0.0.1:{self.port}"
        self.data = root / "data"
        self.args = ["serve", "--id", str(node_id), "--peers", f"{node_id}={self.endpoint}", "--data-dir",
                     str(self.data), "--engine", engine, *extra]
        if cluster_id:
            self.args += ["--cluster-id", cluster_id]

    def run_and_fill(self, count: int) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "kv_cli", *self.args], cwd=str(REPO),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            with Client([self.endpoint], timeout=20) as c:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        c.put("first", "x")
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                for i in range(count):
                    c.put(f"key-{i:04d}", f"value-{i}" * 5)
                engine = c.status(self.endpoint)["engine"]
                assert engine == self.engine, f"started with --engine {self.engine}, the node says {engine!r}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def start_expect_refusal(self, args=None) -> subprocess.CompletedProcess:
        proc = kv(*(args or self.args), timeout=30)
        assert proc.returncode != 0, f"kv serve started on a bad data dir:\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        return proc


@pytest.mark.parametrize("engine", ENGINES)
def test_corrupt_record_in_the_middle_of_the_log_is_refused(tmp_path, engine):
    node = OneNode(tmp_path, engine=engine)
    node.run_and_fill(60)
    logs = sorted(node.data.glob("log-*.wal"))
    assert logs
    log = logs[-1]
    data = bytearray(log.read_bytes())
    # The log keeps preallocated zeros after its records: damage the middle of the records.
    records_end = len(bytes(data).rstrip(b"\0"))
    assert records_end > 2000
    middle = records_end // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    log.write_bytes(bytes(data))
    proc = node.start_expect_refusal()
    assert "corrupt" in proc.stderr and log.name in proc.stderr, proc.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_a_log_cut_short_at_a_record_boundary_is_refused(tmp_path, engine):
    """A file system that lost the end of the log: a clean, shorter log to the scan, refused all the same
    (a mark claims the length the file had when it was made durable)."""
    node = OneNode(tmp_path, engine=engine)
    node.run_and_fill(60)
    (log,) = node.data.glob("log-*.wal")
    data = log.read_bytes()
    starts = record_starts(data)
    cut = starts[len(starts) * 2 // 3]
    log.write_bytes(data[:cut])
    proc = node.start_expect_refusal()
    assert f"{log.name} is {cut} bytes long" in proc.stderr and "its end was cut off" in proc.stderr, proc.stderr
    assert log.read_bytes() == data[:cut]  # refused, nothing "repaired"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_record_written_in_the_wrong_place_is_refused(tmp_path, engine):
    """A misdirected write: a whole, valid record of the log copied over another of the same size."""
    node = OneNode(tmp_path, engine=engine)
    node.run_and_fill(60)
    (log,) = node.data.glob("log-*.wal")
    data = bytearray(log.read_bytes())
    starts = record_starts(bytes(data))
    sizes: dict[int, list[int]] = {}
    for start, end in zip(starts, starts[1:], strict=False):
        sizes.setdefault(end - start, []).append(start)
    size, same = max(sizes.items(), key=lambda item: len(item[1]))
    assert len(same) >= 4, sizes
    source, target = same[0], same[len(same) // 2]
    data[target:target + size] = data[source:source + size]
    log.write_bytes(bytes(data))
    proc = node.start_expect_refusal()
    assert f"corrupt at byte offset {target} (checksum mismatch)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_truncated_snapshot_is_refused(tmp_path, engine):
    node = OneNode(tmp_path, "--snapshot-every", "20", engine=engine)
    node.run_and_fill(70)
    snaps = sorted(node.data.glob("snapshot-*.snap"))
    assert snaps, "no snapshot was written"
    snap = snaps[-1]
    data = snap.read_bytes()
    snap.write_bytes(data[: len(data) // 2])
    proc = node.start_expect_refusal()
    assert snap.name in proc.stderr, proc.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_data_dir_of_another_node_or_cluster_is_refused(tmp_path, engine):
    node = OneNode(tmp_path, engine=engine)
    node.run_and_fill(5)
    other_port = free_ports(1)[0]
    as_node_2 = ["serve", "--id", "2", "--peers", f"2=127.0.0.1:{other_port}", "--data-dir", str(node.data),
                 "--engine", engine]
    proc = node.start_expect_refusal(as_node_2)
    assert "belongs to node 1" in proc.stderr, proc.stderr
    other_cluster = [*node.args, "--cluster-id", "someone-else"]
    proc = node.start_expect_refusal(other_cluster)
    assert "cluster" in proc.stderr and "someone-else" in proc.stderr, proc.stderr


def test_a_node_restarts_on_its_data_directory_without_peers_or_join(tmp_path):
    """``kv serve --id N --data-dir DIR`` on the directory node N ran with: the members and the cluster id
    come from what DIR recorded when the node founded its cluster (QA: it was refused, "give --peers or
    --join", and a --peers list had to be written out again, though a founded directory ignores it). Any
    other directory still needs one of the two: a new one, or another node's."""
    node = OneNode(tmp_path, cluster_id="restart-me")
    node.run_and_fill(20)
    restart = ["serve", "--id", "1", "--data-dir", str(node.data)]
    proc = subprocess.Popen([sys.executable, "-m", "kv_cli", *restart], cwd=str(REPO), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        with Client([node.endpoint], timeout=20) as c:
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert c.get("key-0019") == "value-19" * 5
                    break
                except KVError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.1)
            c.put("after-restart", "yes")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert f"members as recorded in {node.data} (cluster restart-me)" in stderr, stderr
    refused = kv("serve", "--id", "1", "--data-dir", str(tmp_path / "new"))
    assert refused.returncode == 2, refused.stderr
    assert error_lines(refused) == ["Error: give --peers (found a new cluster) or --join (join a running "
                                    "one); a node restarted on the data directory it ran with before needs "
                                    "neither"], refused.stderr
    assert not (tmp_path / "new").exists()
    # Another node's directory: said so (QA: the advice above, as if the directory were new)
    refused = kv("serve", "--id", "2", "--data-dir", str(node.data))
    assert refused.returncode == 2, refused.stderr
    assert error_lines(refused) == [f"Error: data dir {node.data} belongs to node 1 of cluster 'restart-me', not "
                                    "node 2: give that node's --id, or this node's own directory"], refused.stderr
