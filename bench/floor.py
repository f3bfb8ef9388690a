"""The floor of one-put-at-a-time latency on this machine, and this store's p50 against it, in one run.

A durable put of this store is: client -> leader; the leader sends Accept to both followers and
fdatasyncs its own log; each follower writes and fdatasyncs its log and replies Accepted; the leader
answers the client once its own fsync and one follower's Accepted are in. Whatever the store does, one
put at a time cannot be faster than that pattern done with nothing else. This script measures that
pattern with nothing else (the *floor*) and a fresh 3-node cluster of this tree (*ours*), alternating
round by round, and prints ours/floor as ratios. Machines here are noisy (2 cores, shared): absolute
milliseconds move from run to run, only ratios measured in the same run mean anything.

The floor: three server processes and one client (this process) on 127.0.0.1, plain blocking sockets
with TCP_NODELAY, one persistent connection per link, frames of a 4-byte length and 150 bytes. Per
request the "leader" sends the frame to both followers, writes 200 bytes to its own log and fdatasyncs
it, waits for the first follower's reply (``select`` over the two links; the slower reply is read
later), then replies to the client. Each follower writes 200 bytes to its log, fdatasyncs, replies.
No thread is needed: the followers are other processes, so the leader's fsync overlaps their work
already. Each log is a 1 MiB file of zeros, written and fsynced before the first request and then
overwritten in place, as the store's preallocated log is, so an fdatasync commits data, not a size
change. The logs and the cluster's data directories are under one temporary directory (``--dir``,
default ``tempfile.gettempdir()``), so on the same disk. The floor servers run on the same Python as
the store, so the ratio is what the store adds to the pattern, not what Python costs. Three variants:

* (a) rtt: client <-> the leader and back, no followers, no disk: the loopback round trip;
* (b) nosync: the whole 3-process pattern with the writes but without fdatasync;
* (c) fsync: the whole pattern, the floor of a durable put.

Ours: a fresh 3-node cluster of this tree per round (``ab_cluster.TreeCluster``, as ``ab.py`` and
``client_paths.py`` start it: ``kv serve`` with its defaults, so fsync always and a 1 MiB preallocated
log), driven one put at a time with 100-byte values and fresh keys, through the async client
(``kvstore.client.connect``, ``await kv.put``) and through the CLI's blocking socket client
(``kvstore.oneshot.OneShotClient``, one connection, many puts), both from this process. A cluster
that does not start (a node exits, no leader in 30 s) is reported with its nodes' last lines and
started afresh, three times at most.

    python bench/floor.py                    # 3 rounds, 1,000 requests per point: ~1 min
    python bench/floor.py --rounds 5 --json  # the figures as JSON on stdout

Printed: p50, p90, p99 and CPU per request (servers and client together, on-CPU time from
``/proc/PID/task/*/schedstat``) of each point, the median over rounds; then ours/floor at p50, the
median of the per-round ratios, with each round's. Each round runs the floor and ours in alternating
order (floor first in odd rounds), the variants inside each in alternating order too. The figures with
the machine facts also go to ``bench/results/floor-*.json``. Bounded: ``--requests`` per point after
``--warmup``, at most ``--point-seconds`` per point; every process started is stopped by its PID at
the end, on error and on Ctrl-C; servers bind 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"

FRAME_BYTES = 150  # payload of every floor frame, after its 4-byte length
RECORD_BYTES = 200  # what each floor process writes to its log per request
LOG_BYTES = 1 << 20  # the preallocated log (the store's default preallocation)
VALUE = "x" * 100  # ours: the value of every put

RTT, NOSYNC, FSYNC = 0, 1, 2  # floor modes, carried in each request
FLOOR_VARIANTS = {"floor_rtt": RTT, "floor_nosync": NOSYNC, "floor_fsync": FSYNC}
OURS_VARIANTS = ("ours_async", "ours_oneshot")
LABELS = {
    "floor_rtt": "floor (a) client<->1 server, no disk",
    "floor_nosync": "floor (b) 3 processes, no fsync",
    "floor_fsync": "floor (c) 3 processes, fdatasync",
    "ours_async": "ours, async client (connect/await put)",
    "ours_oneshot": "ours, blocking OneShotClient",
}

_HEADER = struct.Struct(">I")
_ID = struct.Struct(">QB")  # request id, mode
STARTUP_S = 30.0  # a floor server must be listening by then, and is accepted by then
GRACE_S = 30.0  # beyond --point-seconds before a hung floor request is cut off


# --- the floor's wire and log ------------------------------------------------------------------

def frame(rid: int, mode: int) -> bytes:
    body = _ID.pack(rid, mode)
    return _HEADER.pack(FRAME_BYTES) + body + b"p" * (FRAME_BYTES - len(body))


class Reader:
    """Length-prefixed frames from a blocking socket, one ``recv`` per frame when they come singly."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def pop(self) -> bytes | None:
        """A frame already received, if there is a whole one."""
        if len(self.buf) < 4:
            return None
        (size,) = _HEADER.unpack_from(self.buf)
        if len(self.buf) < 4 + size:
            return None
        body = bytes(self.buf[4:4 + size])
        del self.buf[:4 + size]
        return body

    def fill(self) -> None:
        """One ``recv`` (blocks until something arrives); EOFError at the end of the stream."""
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def read(self) -> bytes:
        while (body := self.pop()) is None:
            self.fill()
        return body


class Log:
    """A preallocated file of zeros that records overwrite in place, wrapping around."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(self.fd, bytes(LOG_BYTES))
        os.fsync(self.fd)  # the size and the blocks, once: later fdatasyncs commit only data
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.offset = 0

    def append(self, rid: int, sync: bool) -> None:
        record = _ID.pack(rid, 0).ljust(RECORD_BYTES, b"r")
        os.pwrite(self.fd, record, self.offset)
        self.offset = (self.offset + RECORD_BYTES) % (LOG_BYTES - LOG_BYTES % RECORD_BYTES)
        if sync:
            os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def listen_and_accept() -> socket.socket:
    """Listen on 127.0.0.1 (a port the OS picks, printed on stdout for the parent), accept one peer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        print(listener.getsockname()[1], flush=True)
        listener.settimeout(STARTUP_S)  # never wait forever for a parent that went away
        conn, _ = listener.accept()
    conn.setblocking(True)
    return nodelay(conn)


def serve_follower(log_path: Path) -> None:
    log = Log(log_path)
    conn = listen_and_accept()
    reader = Reader(conn)
    try:
        while True:
            body = reader.read()
            rid, mode = _ID.unpack_from(body)
            if mode != RTT:
                log.append(rid, sync=mode == FSYNC)
            conn.sendall(frame(rid, mode))
    except (EOFError, ConnectionError):
        pass  # the leader went away: done
    finally:
        conn.close()
        log.close()


def serve_leader(log_path: Path, follower_ports: list[int]) -> None:
    log = Log(log_path)
    followers = [nodelay(socket.create_connection(("127.0.0.1", port), timeout=STARTUP_S))
                 for port in follower_ports]
    for sock in followers:
        sock.setblocking(True)
    readers = [Reader(sock) for sock in followers]
    acked = [0] * len(followers)  # the highest request id each follower has answered
    conn = listen_and_accept()
    client = Reader(conn)
    try:
        while True:
            body = client.read()
            rid, mode = _ID.unpack_from(body)
            if mode != RTT:
                accept = _HEADER.pack(len(body)) + body
                for sock in followers:
                    sock.sendall(accept)
                log.append(rid, sync=mode == FSYNC)  # the followers work meanwhile, in their processes
                while True:
                    for i, reader in enumerate(readers):
                        while (reply := reader.pop()) is not None:
                            acked[i] = _ID.unpack_from(reply)[0]
                    if max(acked) >= rid:
                        break
                    readable, _, _ = select.select(followers, [], [])
                    for sock in readable:
                        readers[followers.index(sock)].fill()
            conn.sendall(frame(rid, mode))
    except (EOFError, ConnectionError):
        pass  # the client went away: done (closing the links ends the followers)
    finally:
        conn.close()
        for sock in followers:
            sock.close()
        log.close()


def serve(role: str, log_path: Path, follower_ports: list[int]) -> None:
    """A floor server process (``--serve``). Ctrl-C at a terminal reaches it too: it just ends."""
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        if role == "leader":
            serve_leader(log_path, follower_ports)
        else:
            serve_follower(log_path)


class Floor:
    """Three floor server processes (logs under ``root``) and this process's connection to the leader."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sock: socket.socket | None = None
        self.reader: Reader | None = None
        self.rid = 0

    def _spawn(self, role: str, *extra: str) -> int:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", role,
               "--serve-log", str(self.root / f"{role}-{len(self.procs)}.log"), *extra]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], STARTUP_S)
        line = proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise RuntimeError(f"floor {role} (pid {proc.pid}) did not start (exit code {proc.poll()})")
        return int(line)

    def start(self) -> Floor:
        ports = [self._spawn("follower") for _ in range(2)]
        leader = self._spawn("leader", "--serve-followers", ",".join(map(str, ports)))
        self.sock = nodelay(socket.create_connection(("127.0.0.1", leader), timeout=STARTUP_S))
        self.sock.setblocking(True)
        self.reader = Reader(self.sock)
        return self

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def request(self, mode: int) -> None:
        assert self.sock is not None and self.reader is not None
        self.rid += 1
        self.sock.sendall(frame(self.rid, mode))
        reply = self.reader.read()
        if _ID.unpack_from(reply) != (self.rid, mode):
            raise RuntimeError(f"floor: reply {_ID.unpack_from(reply)} to request {(self.rid, mode)}")

    def caller(self, mode: int) -> Callable[[int], None]:
        """What ``timed`` calls: one request in ``mode``."""
        def call(_index: int) -> None:
            self.request(mode)
        return call

    def cut(self) -> None:
        """Wake a request blocked on the leader (from the watchdog thread): its recv sees the end."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()  # the leader sees EOF and closes its links, the followers see EOF
            self.sock = None
        stop(self.procs)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait a little for each process to end by itself, then terminate it, then kill it (by PID)."""
    for proc in procs:
        for action in (None, proc.terminate, proc.kill):
            if action is not None and proc.poll() is None:
                action()
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.stdout is not None:
            proc.stdout.close()


# --- measuring ---------------------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    """On-CPU seconds of every thread of a process, from the scheduler."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def summary(latencies: list[float], cpu_seconds: float) -> dict[str, Any]:
    lat = sorted(latencies)
    n = len(lat)

    def pct(q: float) -> float | None:
        return lat[max(0, min(n - 1, math.ceil(q * n) - 1))] * 1000 if n else None  # nearest rank, in ms

    return {"n": n, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "cpu_us": cpu_seconds / n * 1e6 if n else None}


def timed(call: Callable[[int], object], warmup: int, count: int, budget_s: float) -> list[float]:
    """``call(i)`` ``warmup`` times, then ``count`` times timed; stops early after ``budget_s``."""
    deadline = time.monotonic() + budget_s
    for i in range(warmup):
        call(i)
    lat = []
    for i in range(warmup, warmup + count):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        call(i)
        lat.append(time.perf_counter() - started)
    return lat


def run_floor(root: Path, args: argparse.Namespace, round_no: int) -> dict[str, dict[str, Any]]:
    floor = Floor(Path(tempfile.mkdtemp(prefix="floor-", dir=root)))
    out: dict[str, dict[str, Any]] = {}
    try:
        floor.start()
        pids = [*floor.pids, os.getpid()]
        names = list(FLOOR_VARIANTS)
        for name in names if round_no % 2 == 0 else names[::-1]:
            mode = FLOOR_VARIANTS[name]
            watchdog = threading.Timer(args.point_seconds + GRACE_S, floor.cut)
            watchdog.daemon = True
            watchdog.start()
            try:
                before = sum(cpu_s(pid) for pid in pids)
                lat = timed(floor.caller(mode), args.warmup, args.requests, args.point_seconds)
                out[name] = summary(lat, sum(cpu_s(pid) for pid in pids) - before)
            finally:
                watchdog.cancel()
    finally:
        floor.close()
        shutil.rmtree(floor.root, ignore_errors=True)
    return out


def load_ab_cluster() -> ModuleType:
    """``bench/ab_cluster.py``, loaded by its path as ``ab.py`` does (it is a script beside this one)."""
    spec = importlib.util.spec_from_file_location("ab_cluster", HERE / "ab_cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def drive_async(endpoints: list[str], prefix: str, warmup: int, count: int, budget_s: float) -> list[float]:
    import trio

    from kvstore.client import connect

    lat: list[float] = []
    with trio.move_on_after(budget_s + GRACE_S):
        async with connect(endpoints, timeout=10) as kv:
            for i in range(warmup):
                await kv.put(f"{prefix}{i}", VALUE)
            deadline = time.monotonic() + budget_s
            for i in range(warmup, warmup + count):
                if time.monotonic() > deadline:
                    break
                started = time.perf_counter()
                await kv.put(f"{prefix}{i}", VALUE)
                lat.append(time.perf_counter() - started)
    return lat


def drive_oneshot(endpoints: list[str], prefix: str, warmup: int, count: int, budget_s: float) -> list[float]:
    from kvstore.oneshot import OneShotClient

    with OneShotClient(endpoints, timeout=10) as kv:
        return timed(lambda i: kv.put(f"{prefix}{i}", VALUE), warmup, count, budget_s)


START_ATTEMPTS = 3


def log_tails(data: Path, lines: int = 5) -> str:
    """The last lines of each node's output (``node-N.log``), for an error message."""
    tails = []
    for log in sorted(data.glob("node-*.log")):
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
        tails.append(f"{log.name}:\n  " + "\n  ".join(text or ["(empty)"]))
    return "\n".join(tails)


def run_ours(root: Path, args: argparse.Namespace, round_no: int) -> dict[str, dict[str, Any]]:
    import trio

    ab_cluster = load_ab_cluster()
    out: dict[str, dict[str, Any]] = {}
    for attempt in range(1, START_ATTEMPTS + 1):
        data = Path(tempfile.mkdtemp(prefix="kv-", dir=root))
        cluster = ab_cluster.TreeCluster(REPO, data, 3)
        try:
            try:
                cluster.start_all()
                cluster.wait_leader(deadline_s=30)
            except RuntimeError as exc:
                # e.g. a port handed out by free_ports taken by another program before the node bound it
                print(f"  cluster start failed (attempt {attempt}/{START_ATTEMPTS}): {exc}\n{log_tails(data)}",
                      file=sys.stderr, flush=True)
                if attempt == START_ATTEMPTS:
                    raise
                continue
            pids = [*(proc.pid for proc in cluster.procs.values()), os.getpid()]
            names = list(OURS_VARIANTS)
            for name in names if round_no % 2 == 0 else names[::-1]:
                before = sum(cpu_s(pid) for pid in pids)
                prefix = f"{name}-{round_no}-"
                if name == "ours_async":
                    lat = trio.run(drive_async, cluster.endpoints, prefix, args.warmup, args.requests,
                                   args.point_seconds)
                else:
                    lat = drive_oneshot(cluster.endpoints, prefix, args.warmup, args.requests, args.point_seconds)
                out[name] = summary(lat, sum(cpu_s(pid) for pid in pids) - before)
            return out
        finally:
            cluster.close()
            shutil.rmtree(data, ignore_errors=True)
    raise AssertionError("unreachable")


# --- the report --------------------------------------------------------------------------------

def median_of(rounds: list[dict[str, dict[str, Any]]], name: str, key: str) -> float | None:
    values = [r[name][key] for r in rounds if r.get(name, {}).get(key) is not None]
    return statistics.median(values) if values else None


def ratios(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """ours/floor at p50: each round's ratio, and their median."""
    out = {}
    for ours in OURS_VARIANTS:
        for floor in FLOOR_VARIANTS:
            per_round = [r[ours]["p50_ms"] / r[floor]["p50_ms"] for r in rounds
                         if r[ours]["p50_ms"] and r[floor]["p50_ms"]]
            out[f"{ours}/{floor}"] = {"median": statistics.median(per_round) if per_round else None,
                                      "per_round": per_round}
    return out


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict[str, Any]) -> None:
    settings, rounds = result["settings"], result["rounds"]
    print(f"one put at a time, {settings['requests']} requests per point after {settings['warmup']} warm-up, "
          f"median of {len(rounds)} rounds; nproc={result['machine']['nproc']}, logs and data under "
          f"{settings['dir']}")
    print("cpu us: on-CPU time of the servers and the client together, per request")
    print(f"{'':42} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'cpu us':>8} {'n':>6}")  # n: all rounds
    for name, label in LABELS.items():
        row = result["summary"][name]
        print(f"{label:42} {fmt(row['p50_ms'], '8.3f')} {fmt(row['p90_ms'], '8.3f')} {fmt(row['p99_ms'], '8.3f')} "
              f"{fmt(row['cpu_us'], '8.0f')} {row['n']:>6}")
    print("\nours/floor at p50: the median of the per-round ratios, each round's in brackets")
    cells = {}
    for ours in OURS_VARIANTS:
        for floor in FLOOR_VARIANTS:
            r = result["ratios"][f"{ours}/{floor}"]
            each = " ".join(f"{x:.2f}" for x in r["per_round"])
            cells[ours, floor] = f"{fmt(r['median'], '.2f')} [{each}]"
    width = max(len(cell) for cell in cells.values()) + 2
    print(f"{'':42}" + "".join(f"{head:>{width}}" for head in ("/ (a) rtt", "/ (b) nosync", "/ (c) fsync")))
    for ours in OURS_VARIANTS:
        print(f"{LABELS[ours]:42}" + "".join(f"{cells[ours, floor]:>{width}}" for floor in FLOOR_VARIANTS))


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: unwind as on Ctrl-C, through the finally blocks that stop the processes. As SIGINT when it
    is handled, so that inside ``trio.run`` trio's own handler raises KeyboardInterrupt where it is safe."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The floor of one-put-at-a-time latency (the store's message and fsync pattern with nothing "
                    "else: 3 server processes and a client on 127.0.0.1) against a fresh 3-node cluster of this "
                    "tree, alternating round by round; prints p50/p90/p99 and the ratios ours/floor at p50.",
        epilog="See the module docstring (bench/floor.py) for what each variant does.")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of floor and ours, alternating (default 3)")
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per point (default 1000)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests before each point (default 100)")
    parser.add_argument("--point-seconds", type=float, default=60.0,
                        help="stop a point after this long even if short of --requests (default 60)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the floor's logs and the cluster's data directories go, in a temporary "
                             "directory (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/floor-*.json")
    parser.add_argument("--serve", choices=("leader", "follower"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-followers", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is None:
        if args.rounds < 1 or args.requests < 1 or args.warmup < 0 or args.point_seconds <= 0:
            parser.error("--rounds and --requests must be at least 1, --warmup at least 0, --point-seconds positive")
        if not args.dir.is_dir():
            parser.error(f"--dir {args.dir} is not a directory")
    return args


@contextlib.contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="kv-floor-", dir=parent))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.serve_log, [int(p) for p in args.serve_followers.split(",") if p])
        return 0
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from kvstore.loadgen import machine_facts

    signal.signal(signal.SIGTERM, _terminated)
    rounds: list[dict[str, dict[str, Any]]] = []
    with scratch(args.dir) as root:
        for round_no in range(args.rounds):
            parts = [("floor", run_floor), ("ours", run_ours)]
            row: dict[str, dict[str, Any]] = {}
            for part, run in parts if round_no % 2 == 0 else parts[::-1]:
                print(f"round {round_no + 1}/{args.rounds}: {part}", file=sys.stderr, flush=True)
                row.update(run(root, args, round_no))
            rounds.append(row)
            brief = ", ".join(f"{name} {fmt(row[name]['p50_ms'], '.3f')}" for name in LABELS)
            print(f"  p50 ms: {brief}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "machine": machine_facts(),
        "settings": {"rounds": args.rounds, "requests": args.requests, "warmup": args.warmup,
                     "point_seconds": args.point_seconds, "dir": str(args.dir), "frame_bytes": FRAME_BYTES,
                     "record_bytes": RECORD_BYTES, "log_bytes": LOG_BYTES, "value_bytes": len(VALUE)},
        "summary": {name: {key: median_of(rounds, name, key) for key in ("p50_ms", "p90_ms", "p99_ms", "cpu_us")}
                    | {"n": sum(r[name]["n"] for r in rounds)} for name in LABELS},
        "ratios": ratios(rounds),
        "rounds": rounds,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"floor-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
