"""Compare this store with PySyncObj and etcd under the same load shape, on one machine over loopback.

Systems (each started as local processes on 127.0.0.1, torn down afterwards):

* ``kv fsync=always``: this store, 3 nodes, the default (every accept is fsynced before it leaves a node);
* ``kv fsync=off``: 3 nodes with ``kv serve --fsync off``;
* ``kv 1 node``: one node, fsync always: the same code path without replication (the ceiling);
* ``kv 5 nodes``: 5 nodes, fsync always (a majority of 3 acknowledges; each put goes to 4 followers);
* ``kv classic``: 3 nodes, fsync always, ``kv serve --engine classic`` (issue 18: one essential-paxos
  instance per log slot instead of the Multi-Paxos core; everything else the same);
* ``pysyncobj journal=off`` / ``journal=on``: PySyncObj 0.3 ``ReplDict`` on 3 processes
  (``bench/pysyncobj_node.py``), each with its default batching (``appendEntriesUseBatch``: entries go
  out every 0.1 s) and without (``nobatch``: at once), at the same levels and also at 1,024 and 4,096
  in flight (``--pysyncobj-levels``: its batching reaches its best only with thousands in flight);
  its best point over every level and configuration is its best figure. It has no client protocol,
  so it is measured from inside the leader with asynchronous calls and callbacks: its best case, with
  no client network hop;
* ``etcd``: etcd 3.4 (Debian's etcd-server; installed with apt-get if missing and running as root, with
  a line saying so first; ``--no-install`` refuses to install, ``--no-etcd`` skips it),
  3 members, driven by ``kvstore.loadgen`` through etcd's v3 JSON gateway (HTTP/1.1 keep-alive
  ``POST /v3/kv/put`` with base64 key and value) sent to the leader. HTTP/1.1 carries one request at a
  time per connection, so etcd gets one connection per request in flight.

Load: puts of 100-byte values over a 100,000-key space, closed loop, at 1, 16, 64 and 256 requests in
flight. The kv stores and etcd are driven by the same load generator in a separate process; figures are
successful puts per second and latency percentiles (HdrHistogram). Every figure is also shown as a ratio
to ``kv fsync=always`` at the same level. Results, with the machine facts, go to
``bench/results/compare-*.json``; ``--write-docs`` rewrites the generated part of docs/benchmarks.md.

    python bench/compare.py --quick              # a few minutes
    python bench/compare.py --write-docs         # about 10 minutes
    python bench/compare.py --memory             # the 1M-key memory and restart bench (memory_bench.py)
    python bench/compare.py --metrics            # metrics on against off, as a ratio (metrics_cost.py)
    python bench/compare.py --tls                # mutual TLS against plaintext, as a ratio (tls_cost.py)
    python bench/compare.py --engines            # core vs classic engine, with messages and fsyncs per put
    python bench/compare.py --engines --write-docs   # the same; rewrites its table in docs/benchmarks.md

``--engines`` (about 4 minutes at 5 s per point) compares the two Paxos engines alone: a 3-node
cluster of each (fsync always) runs at once, and each of ``--rounds`` rounds measures every level on
both, back to back, the engine that goes first alternating, so that the two figures of a pair see the
same machine. Per engine and level it reports the median round (and the range of puts/s: the machine's
noise). Besides puts/s and latency it counts, live, Paxos messages and fsyncs per put: the nodes run
through ``bench/counting_serve.py`` (``kv serve`` with the core's sent messages counted like the
classic engine's own counters); the sum over the three nodes of ``core_counters.messages_sent`` and of
the shell's ``counters.fsyncs`` (real fsyncs, after group commit), divided by the leader's
``counters.writes_answered``, over all rounds. Each figure is also a ratio classic / core (for puts/s
and latency, the median of the ratios within each round's pair). Then ``bench/engine_cpu.py`` runs the
pure engines in process (about 30 s): commands per second of CPU and exact messages and persist
batches per command, at 1/16/64/256 commands per round.

More tables, each from a fresh 3-node cluster (fsync always) in the same run (issue 20):

* **the client API**: two load processes (``bench/client_load.py``) of 256 puts in flight each, on one
  ``connect()`` each: ``kv bench``'s callback-driven engine against what applications write, 256 trio
  tasks each looping on ``await kv.put(key, value)``; rounds alternate the mode that goes first; the
  ratio async / callbacks is the median of the per-round ratios;
* **bulk**: ``kv load`` of a file of 100,000 records (``--bulk-keys``) against ``kv bench`` putting the
  same keys with the same 256 in flight, in alternating rounds, and one ``kv dump`` of the result.

* **head to head**: our best point and PySyncObj's best point of the sweep measured again, back to
  back, in rounds whose first system alternates; the ratio ours / PySyncObj's best is the median of
  the per-round ratios (the sweep measures the two minutes apart, and this machine's speed drifts).
  Each side warms up first, unmeasured: our cluster once with a point at its level (in the sweep the
  lower levels ran before it), PySyncObj, which starts afresh every round, with a first point of its
  level in each round.

Progress lines carry the time elapsed (``[mm:ss]``). Targets (issue 20; reported, never asserted):
durable puts >= 3x PySyncObj's best (its best point over every level and configuration, against our
best point, and head to head), through ``kv bench`` and through the awaited API (the client API rows:
2 x 256 tasks awaiting ``kv.put``, against the same PySyncObj best); >= 2x etcd's best; 3 nodes >= 0.8
of the 1-node ceiling at 256 in flight (5 nodes reported beside it); one request at a time p50 <= 0.7 ms.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import benchargs  # noqa: E402  (beside this script: python bench/SCRIPT.py puts bench/ on sys.path)
import store_bench  # noqa: E402
import trio  # noqa: E402

from kvstore.client import Client  # noqa: E402
from kvstore.loadgen import LoadSpec, machine_facts, run_load_sync  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- compare.py results: begin (generated by bench/compare.py --write-docs; do not edit) -->"
END = "<!-- compare.py results: end -->"
ENGINES_BEGIN = ("<!-- compare.py --engines results: begin (generated by bench/compare.py --engines "
                 "--write-docs; do not edit) -->")
ENGINES_END = "<!-- compare.py --engines results: end -->"
BASELINE = "kv fsync=always"


_STARTED = time.monotonic()


def log(text: str) -> None:
    print(text, flush=True)


def guarded(name: str, fn, *args, default=None):
    """``fn(*args)``, or ``default`` after logging why not: one section that fails (a node that exited,
    say, while others edit the tree) must not lose the rest of a ten-minute run."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the output and the results file
        log(f"{name}: FAILED ({type(exc).__name__}: {exc}); going on without it")
        FAILURES.append(f"{name}: {type(exc).__name__}: {exc}")
        return default


FAILURES: list[str] = []


def start_cluster(kv: store_bench.LocalKv) -> None:
    """Start ``kv``'s nodes and wait for a leader; if a node exits, show the end of its log first."""
    kv.start_all()
    try:
        kv.wait_leader()
    except RuntimeError:
        for node_log in sorted(kv.root.glob("node-*.log")):
            tail = node_log.read_text(errors="replace").strip().splitlines()[-8:]
            log(f"  {node_log.name}: " + "\n    ".join(tail))
        raise


def stage(text: str) -> None:
    """A progress line with the time elapsed since the run began."""
    elapsed = time.monotonic() - _STARTED
    log(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {text}")


# ---------------------------------------------------------------------------------------------------
# our store


def run_kv(label: str, size: int, extra: list[str], levels: list[int], seconds: float, conns: int) -> list[dict]:
    log(f"{label}: starting {size} node(s) {' '.join(extra)}")
    return store_bench.store_series(size, levels, seconds, extra, conns, label=label, log=log)


# ---------------------------------------------------------------------------------------------------
# PySyncObj


def run_pysyncobj(journal: bool, levels: list[int], seconds: float, batch: bool = True) -> list[dict]:
    label = f"pysyncobj journal={'on' if journal else 'off'}" + ("" if batch else " nobatch")
    log(f"{label}: starting 3 processes (measured inside the leader, async calls with callbacks)")
    ports = store_bench.free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    tmp = Path(tempfile.mkdtemp(prefix="pso-bench-"))
    result_file = tmp / "result.json"
    procs: list[subprocess.Popen] = []
    budget = 60 + len(levels) * (seconds + 30)
    try:
        for i, addr in enumerate(addrs):
            cmd = [sys.executable, str(HERE / "pysyncobj_node.py"), "--self", addr,
                   "--partners", ",".join(a for a in addrs if a != addr), "--result", str(result_file),
                   "--levels", ",".join(map(str, levels)), "--seconds", str(seconds),
                   "--max-seconds", str(budget)]
            if not batch:
                cmd.append("--no-batch")
            if journal:
                cmd += ["--journal", str(tmp / f"journal-{i}.bin")]
            with open(tmp / f"node-{i}.log", "ab") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline and not result_file.exists():
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
        if not result_file.exists():
            log(f"{label}: no result (see logs in {tmp})")
            return []
        data = json.loads(result_file.read_text())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for r in data["results"]:
        row = {"system": label, "nodes": 3, "in_flight": r["in_flight"], "throughput_ops_s": r["throughput_ops_s"],
               "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["error_count"], "ok": r["ok"],
               "pysyncobj_version": data.get("pysyncobj_version")}
        log(f"  {label:<28} in flight {row['in_flight']:>4}: {row['throughput_ops_s']:9.1f} ops/s  "
            f"p50 {store_bench.fmt_ms(row['p50_ms'])}  p99 {store_bench.fmt_ms(row['p99_ms'])}  errors {row['errors']}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# etcd through its v3 JSON gateway


class EtcdError(Exception):
    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind


class HttpConn:
    """A minimal HTTP/1.1 keep-alive client for etcd's JSON gateway: one request at a time."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.stream = None
        self.buf = bytearray()
        self.lock = trio.Lock()

    async def _recv_until(self, marker: bytes) -> int:
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                return i
            data = await self.stream.receive_some(65536)
            if not data:
                raise EtcdError("connection closed")
            self.buf += data

    async def _recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EtcdError("connection closed")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def post(self, path: str, body: dict) -> dict:
        async with self.lock:
            try:
                with trio.fail_after(self.timeout):
                    return await self._post(path, body)
            except (trio.TooSlowError, OSError, trio.BrokenResourceError, EtcdError) as exc:
                if self.stream is not None:
                    await trio.aclose_forcefully(self.stream)
                self.stream = None
                self.buf.clear()
                if isinstance(exc, EtcdError):
                    raise
                raise EtcdError(type(exc).__name__, str(exc)) from exc

    async def _post(self, path: str, body: dict) -> dict:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        await self.stream.send_all(head + payload)
        i = await self._recv_until(b"\r\n\r\n")
        header = bytes(self.buf[:i]).decode("latin-1")
        del self.buf[: i + 4]
        lines = header.split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in fields:
            data = await self._recv_exact(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                j = await self._recv_until(b"\r\n")
                size = int(bytes(self.buf[:j]).split(b";")[0], 16)
                del self.buf[: j + 2]
                chunk = await self._recv_exact(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            raise EtcdError("no content length")
        if fields.get("connection", "").lower() == "close":
            await trio.aclose_forcefully(self.stream)
            self.stream = None
        if status != 200:
            raise EtcdError(f"http {status}", data[:200].decode("utf-8", "replace"))
        return json.loads(data) if data else {}

    async def aclose(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


class EtcdTarget:
    def __init__(self, conn: HttpConn) -> None:
        self.conn = conn

    async def put(self, key: str, value: str) -> None:
        await self.conn.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    async def get(self, key: str, consistency: str) -> None:
        await self.conn.post("/v3/kv/range", {"key": b64(key), "serializable": consistency == "s"})


def etcd_targets_for(endpoint: tuple[str, int]):
    @asynccontextmanager
    async def open_targets(spec: LoadSpec):
        conns = [HttpConn(endpoint[0], endpoint[1], spec.timeout) for _ in range(max(spec.conns, spec.clients))]
        try:
            yield [EtcdTarget(c) for c in conns]
        finally:
            for c in conns:
                await c.aclose()
    return open_targets


def ensure_etcd(install: bool = True) -> str | None:
    """The path of the etcd binary, installing Debian's etcd-server if needed and ``install`` (not
    ``--no-install``); None if unavailable."""
    path = shutil.which("etcd")
    if path:
        return path
    if not install:
        log("etcd: not installed, and --no-install refuses to apt-get install it; skipped")
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("etcd: not installed and cannot apt-get install it here; skipped")
        return None
    log("etcd: not installed: installing Debian's etcd-server and etcd-client with apt-get install -y "
        "(--no-install to refuse) ...")
    proc = subprocess.run(["apt-get", "install", "-y", "etcd-server", "etcd-client"], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        log(f"etcd: apt-get failed ({proc.stderr.strip().splitlines()[-1:] or proc.returncode}); skipped")
        return None
    return shutil.which("etcd")


def etcd_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def etcd_leader_endpoint(clients: list[tuple[str, int]], deadline_s: float = 30.0) -> tuple[str, int]:
    async def find() -> tuple[str, int] | None:
        for host, port in clients:
            conn = HttpConn(host, port, 2.0)
            try:
                st = await conn.post("/v3/maintenance/status", {})
            except EtcdError:
                continue
            finally:
                await conn.aclose()
            if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                return host, port
        return None

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = trio.run(find)
        if found:
            return found
        time.sleep(0.2)
    raise RuntimeError("etcd elected no leader in time")


def run_etcd(levels: list[int], seconds: float, install: bool = True) -> tuple[list[dict], str | None]:
    binary = ensure_etcd(install)
    if binary is None:
        return [], None
    version = etcd_version(binary)
    label = "etcd"
    log(f"etcd {version}: starting 3 members (driven through the v3 JSON gateway)")
    ports = store_bench.free_ports(6)
    client_ports, peer_ports = ports[:3], ports[3:]
    names = [f"m{i}" for i in range(1, 4)]
    cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports, strict=True))
    tmp = Path(tempfile.mkdtemp(prefix="etcd-bench-"))
    procs = []
    rows = []
    try:
        for name, cport, pport in zip(names, client_ports, peer_ports, strict=True):
            cmd = [binary, "--name", name, "--data-dir", str(tmp / name),
                   "--listen-client-urls", f"http://127.0.0.1:{cport}",
                   "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                   "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                   "--initial-cluster", cluster, "--initial-cluster-state", "new",
                   "--initial-cluster-token", "kv-bench", "--log-level", "error", "--logger", "zap"]
            with open(tmp / f"{name}.log", "ab") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        leader = etcd_leader_endpoint([("127.0.0.1", p) for p in client_ports])
        for n in levels:
            spec = LoadSpec(endpoints=[f"{leader[0]}:{leader[1]}"], clients=n, conns=n, total=None,
                            duration=seconds, val_size=100, key_space_size=100_000, op="put", warmup=2,
                            timeout=10.0)
            r = run_load_sync(spec, open_targets=etcd_targets_for(leader)).to_dict(timeline=False)
            row = {"system": label, "nodes": 3, "in_flight": n, "throughput_ops_s": r["throughput_ops_s"],
                   "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
                   "errors": r["error_count"], "ok": r["ok"], "etcd_version": version}
            log(f"  {label:<28} in flight {n:>4}: {row['throughput_ops_s']:9.1f} ops/s  "
                f"p50 {store_bench.fmt_ms(row['p50_ms'])}  p99 {store_bench.fmt_ms(row['p99_ms'])}  "
                f"errors {row['errors']}")
            rows.append(row)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, version


# ---------------------------------------------------------------------------------------------------
# our best against PySyncObj's best, in paired rounds (issue 20)


def run_head_to_head(rows: list[dict], seconds: float, rounds: int, conns: int) -> tuple[list[dict], dict]:
    """Our best point (kv fsync=always: its level) against PySyncObj's best point (its configuration and
    level) of the sweep, measured again back to back in ``rounds`` rounds whose first system alternates,
    so that both figures of a round see the same machine (the sweep measures them minutes apart, and
    a shared machine's speed drifts more than that). Returns the samples and the median of the
    per-round ratios ours / PySyncObj's."""
    bests = {b["system"]: b for b in best_rows(rows)}
    ours = bests.get(BASELINE)
    theirs = max((b for name, b in bests.items() if name.startswith("pysyncobj")),
                 key=lambda b: b["throughput_ops_s"], default=None)
    if ours is None or theirs is None:
        return [], {}
    journal = "journal=on" in theirs["system"]
    batch = "nobatch" not in theirs["system"]
    stage(f"head to head: {BASELINE} at {ours['in_flight']} in flight against {theirs['system']} at "
          f"{theirs['in_flight']}, {rounds} round(s) of {seconds:g} s each, the first alternating, each side "
          f"after an unmeasured warm-up point")
    samples: list[dict] = []
    with store_bench.LocalKv(3, ["--fsync", "always"]) as kv:
        start_cluster(kv)
        # Both sides warm up first, unmeasured, as in the sweep (where the lower levels ran before):
        # ours once, on the cluster every round uses; PySyncObj, which starts afresh each round, with
        # a first point of the same level in each round.
        store_bench.drive(kv.endpoints, ours["in_flight"], seconds, conns=conns)
        for r in range(rounds):
            pair: dict = {"round": r + 1}
            for who in (("kv", "pysyncobj") if r % 2 == 0 else ("pysyncobj", "kv")):
                if who == "kv":
                    result = store_bench.drive(kv.endpoints, ours["in_flight"], seconds, conns=conns)
                    pair["kv"] = result["throughput_ops_s"] if result["ok"] else None
                    log(f"  {BASELINE:<28} round {r + 1}: {fmt(pair['kv'])} ops/s")
                else:
                    got = run_pysyncobj(journal, [theirs["in_flight"]] * 2, seconds, batch)
                    pair["pysyncobj"] = got[-1]["throughput_ops_s"] if len(got) == 2 and got[-1]["ok"] else None
            pair["ratio"] = ratio(pair.get("kv"), pair.get("pysyncobj"))
            samples.append(pair)
    summary = {"ours": BASELINE, "ours_in_flight": ours["in_flight"], "theirs": theirs["system"],
               "theirs_in_flight": theirs["in_flight"],
               "kv_ops_s": median([s.get("kv") for s in samples]),
               "pysyncobj_ops_s": median([s.get("pysyncobj") for s in samples]),
               "ratio": median([s["ratio"] for s in samples]),
               "ratio_min": min((s["ratio"] for s in samples if s["ratio"]), default=None),
               "ratio_max": max((s["ratio"] for s in samples if s["ratio"]), default=None)}
    return samples, summary


# ---------------------------------------------------------------------------------------------------
# the client API: kv bench's callbacks against tasks awaiting kv.put (issue 20)

CLIENT_MODES = ("callback", "async")
CLIENT_LABELS = {"callback": "kv bench (callbacks)", "async": "await kv.put (tasks)"}


def drive_processes(endpoints: list[str], mode: str, procs: int, clients: int, seconds: float,
                    round_: int) -> dict:
    """``procs`` processes of ``bench/client_load.py --mode MODE`` with ``clients`` in flight each,
    loading the cluster over the same seconds; their puts/s summed, their worst p50 and p99."""
    tmp = Path(tempfile.mkdtemp(prefix="kv-client-load-"))
    start_at = time.time() + 4.0  # every process imported, connected and warmed up by then
    running = []
    try:
        for i in range(procs):
            out = tmp / f"result-{i}.json"
            cmd = [sys.executable, str(HERE / "client_load.py"), "--endpoints", ",".join(endpoints), "--mode", mode,
                   "--clients", str(clients), "--seconds", str(seconds), "--start-at", repr(start_at),
                   "--seed", str(round_ * 100 + i), "--out", str(out)]
            with open(tmp / f"proc-{i}.log", "ab") as log_file:
                running.append((subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL), out))
        results = []
        for proc, out in running:
            try:
                proc.wait(timeout=seconds + 90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if out.exists():
                results.append(json.loads(out.read_text()))
    finally:
        for proc, _ in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    late = max((r.get("late_s", 0.0) for r in results), default=0.0)
    if late > 0:
        log(f"  {CLIENT_LABELS[mode]}: a load process began {late:.2f} s late (the processes overlap less)")
    if len(results) != procs:
        log(f"  {CLIENT_LABELS[mode]}: {procs - len(results)} load process(es) gave no result (logs in {tmp})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    def worst(name: str) -> float | None:
        values = [r["latency_ms"][name] for r in results if r["latency_ms"][name] is not None]
        return max(values) if values else None

    row = {"system": CLIENT_LABELS[mode], "mode": mode, "round": round_, "nodes": 3, "processes": procs,
           "in_flight": procs * clients, "throughput_ops_s": sum(r["throughput_ops_s"] for r in results)
           if len(results) == procs else None,
           "per_process_ops_s": [r["throughput_ops_s"] for r in results], "p50_ms": worst("p50"),
           "p99_ms": worst("p99"), "errors": sum(r["error_count"] for r in results), "late_s": late,
           "ok": sum(r["ok"] for r in results)}
    log(f"  {row['system']:<22} round {round_}: {fmt(row['throughput_ops_s'])} ops/s "
        f"({' + '.join(fmt(v) for v in row['per_process_ops_s'])})  p50 {store_bench.fmt_ms(row['p50_ms'])}  "
        f"p99 {store_bench.fmt_ms(row['p99_ms'])}  errors {row['errors']}")
    return row


def run_client_modes(seconds: float, rounds: int, procs: int = 2, clients: int = 256) -> tuple[list[dict], list[dict]]:
    """A fresh 3-node cluster (fsync always) loaded by ``procs`` processes of ``clients`` in flight each,
    kv bench's callback-driven path against tasks awaiting ``kv.put``, in rounds whose first mode
    alternates. Per mode: the median round, the range, and the median of the per-round ratios to the
    callback mode."""
    stage(f"client API: 3 nodes, fsync always, {procs} load processes x {clients} in flight, {rounds} round(s) "
          f"of {seconds:g} s per mode")
    samples = []
    with store_bench.LocalKv(3, ["--fsync", "always"]) as kv:
        start_cluster(kv)
        for r in range(rounds):
            order = CLIENT_MODES if r % 2 == 0 else CLIENT_MODES[::-1]
            for mode in order:
                samples.append(drive_processes(kv.endpoints, mode, procs, clients, seconds, r + 1))
    rows = []
    for mode in CLIENT_MODES:
        mine = [s for s in samples if s["mode"] == mode and s["throughput_ops_s"]]
        if not mine:
            continue
        ratios = []
        for s in mine:
            other = [c for c in samples if c["mode"] == "callback" and c["round"] == s["round"]]
            if other:
                ratios.append(ratio(s["throughput_ops_s"], other[0]["throughput_ops_s"]))
        throughputs = [s["throughput_ops_s"] for s in mine]
        rows.append({"system": CLIENT_LABELS[mode], "mode": mode, "processes": procs, "in_flight": procs * clients,
                     "rounds": len(mine), "throughput_ops_s": median(throughputs),
                     "throughput_min": min(throughputs), "throughput_max": max(throughputs),
                     "p50_ms": median([s["p50_ms"] for s in mine]), "p99_ms": median([s["p99_ms"] for s in mine]),
                     "x_callback": median(ratios), "errors": sum(s["errors"] for s in mine)})
    return samples, rows


CLIENT_HEADERS = ["client API", "processes x in flight", "puts/s", "x callbacks", "puts/s range", "p50 ms",
                  "p99 ms", "errors"]


def build_client_table(rows: list[dict]) -> list[list[str]]:
    return [[r["system"], f"{r['processes']} x {r['in_flight'] // r['processes']}", fmt(r["throughput_ops_s"]),
             fmt(r["x_callback"], ".2f"), f"{fmt(r['throughput_min'], '.0f')}-{fmt(r['throughput_max'], '.0f')}",
             fmt(r["p50_ms"], ".2f"), fmt(r["p99_ms"], ".2f"), str(r["errors"])] for r in rows]


# ---------------------------------------------------------------------------------------------------
# kv load against kv bench (issue 20)


def kv_cli(*args: str, timeout: float = 600) -> tuple[dict, float]:
    """Run ``python -m kv_cli ARGS`` (a -w json command); its JSON output and wall-clock seconds."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kv_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"kv {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout), wall


def run_bulk(keys: int, rounds: int, in_flight: int = 256) -> tuple[list[dict], dict]:
    """A fresh 3-node cluster (fsync always): ``kv load`` of a file of ``keys`` records (8-character
    keys, 100-byte values) against ``kv bench`` putting the same keys (``--sequential-keys``) with the
    same number in flight, in rounds whose first command alternates; then one ``kv dump``."""
    from kvstore.bulk import format_record

    stage(f"kv load vs kv bench: 3 nodes, fsync always, {keys} keys, {in_flight} in flight, {rounds} round(s)")
    samples: list[dict] = []
    dump_row: dict = {}
    with store_bench.LocalKv(3, ["--fsync", "always"]) as kv:
        start_cluster(kv)
        endpoints = ",".join(kv.endpoints)
        data = kv.root / "load.jsonl"
        value = ("0123456789abcdef" * 7)[:100]
        width = max(8, len(str(keys - 1)))  # as kv bench pads its keys (LoadSpec.key_width, --key-size 8)
        with open(data, "wb") as f:
            for i in range(keys):
                f.write(format_record(str(i).zfill(width), value))
        for r in range(rounds):
            order = ("bench", "load") if r % 2 == 0 else ("load", "bench")
            for what in order:
                if what == "bench":
                    out, wall = kv_cli("bench", "--endpoints", endpoints, "--clients", str(in_flight), "--total",
                                       str(keys), "--key-space-size", str(keys), "--sequential-keys", "--val-size",
                                       "100", "--warmup", "1", "--no-progress", "-w", "json",
                                       "--prefix", "")  # the load file's keys: both write the same ones
                    rate, errors = out["throughput_ops_s"], out["error_count"]
                else:
                    out, wall = kv_cli("--endpoints", endpoints, "-w", "json", "load", str(data), "--in-flight",
                                       str(in_flight), "--no-progress")
                    rate, errors = out["keys_per_s"], out["failed"]
                samples.append({"what": what, "round": r + 1, "keys": keys, "in_flight": in_flight,
                                "rate_per_s": rate, "errors": errors, "wall_s": round(wall, 3)})
                log(f"  kv {what:<5} round {r + 1}: {rate:9.1f} keys/s  (wall {wall:.2f} s, errors {errors})")
        out, wall = kv_cli("--endpoints", endpoints, "-w", "json", "dump", str(kv.root / "dump.jsonl"),
                           "--no-progress")
        dump_row = {"keys": out["keys"], "rate_per_s": out["keys_per_s"], "wall_s": round(wall, 3)}
        log(f"  kv dump        : {out['keys_per_s']:9.1f} keys/s  (wall {wall:.2f} s, {out['keys']} keys)")
    return samples, dump_row


def bulk_summary(samples: list[dict]) -> dict:
    rounds = sorted({s["round"] for s in samples})
    ratios = []
    for r in rounds:
        pair = {s["what"]: s for s in samples if s["round"] == r}
        if "load" in pair and "bench" in pair:
            ratios.append(ratio(pair["load"]["rate_per_s"], pair["bench"]["rate_per_s"]))
    return {"load_keys_per_s": median([s["rate_per_s"] for s in samples if s["what"] == "load"]),
            "bench_puts_per_s": median([s["rate_per_s"] for s in samples if s["what"] == "bench"]),
            "load_x_bench": median(ratios), "ratios": ratios}


# ---------------------------------------------------------------------------------------------------
# the two Paxos engines: kv serve --engine core | classic (issue 18)

ENGINES = ("core", "classic")


class CountingKv(store_bench.LocalKv):
    """``LocalKv`` whose nodes run through ``bench/counting_serve.py``: ``kv serve`` with the core's
    sent messages counted in ``core_counters`` as the classic engine counts its own."""

    def start(self, node_id: int) -> None:
        with open(self.root / f"node-{node_id}.log", "ab") as out:
            cmd = [sys.executable, str(HERE / "counting_serve.py"), "serve", "--id", str(node_id),
                   "--peers", self.peers, "--data-dir", str(self.root / f"node-{node_id}"), *self.extra_args]
            self.procs[node_id] = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)


def cluster_counts(kv: store_bench.LocalKv) -> dict:
    """Counters summed over the nodes: Paxos messages sent, fsyncs, writes answered; and the engines."""
    totals = {"messages": 0, "fsyncs": 0, "writes": 0, "engines": set()}
    with Client(kv.endpoints, timeout=5.0) as c:
        for endpoint in kv.endpoints:
            s = c.status(endpoint)
            totals["messages"] += s["core_counters"].get("messages_sent", 0)
            totals["fsyncs"] += s["counters"].get("fsyncs", 0)
            totals["writes"] += s["counters"].get("writes_answered", 0)
            totals["engines"].add(s["engine"])
    return totals


def measure_engine(kv: store_bench.LocalKv, engine: str, n: int, seconds: float, conns: int, round_: int) -> dict:
    """One point: ``n`` puts in flight for ``seconds`` on ``kv``, with the counters read around it."""
    before = cluster_counts(kv)
    r = store_bench.drive(kv.endpoints, n, seconds, conns=conns)
    after = cluster_counts(kv)
    assert after["engines"] == {engine}, f"asked for the {engine} engine, the nodes run {after['engines']}"
    row = {"system": f"kv {engine}", "engine": engine, "round": round_, "nodes": 3, "in_flight": n,
           "throughput_ops_s": r["throughput_ops_s"], "p50_ms": r["latency_ms"]["p50"],
           "p99_ms": r["latency_ms"]["p99"], "errors": r["error_count"], "ok": r["ok"],
           "puts_counted": after["writes"] - before["writes"],
           "messages": after["messages"] - before["messages"], "fsyncs": after["fsyncs"] - before["fsyncs"]}
    log(f"  kv {engine:<8} round {round_} in flight {n:>4}: {row['throughput_ops_s']:9.1f} ops/s  "
        f"p50 {store_bench.fmt_ms(row['p50_ms'])}  p99 {store_bench.fmt_ms(row['p99_ms'])}  "
        f"msgs/put {fmt(ratio(row['messages'], row['puts_counted']), '.3f')}  "
        f"fsyncs/put {fmt(ratio(row['fsyncs'], row['puts_counted']), '.3f')}  errors {row['errors']}")
    return row


def median(values: list) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def engine_rounds(levels: list[int], seconds: float, conns: int, rounds: int) -> tuple[list[dict], list[dict]]:
    """Both clusters up at once; each round measures every level on both, back to back, the engine
    that goes first alternating, so that the two figures of a pair see the same machine. Per engine
    and level: the median of the rounds for throughput and latency, messages and fsyncs summed over
    the rounds and divided by the puts summed over them."""
    samples: list[dict] = []
    clusters: dict[str, store_bench.LocalKv] = {}
    try:
        for engine in ENGINES:
            log(f"kv {engine}: starting 3 nodes, fsync always, messages counted")
            clusters[engine] = CountingKv(3, ["--fsync", "always", "--engine", engine])
            clusters[engine].start_all()
            clusters[engine].wait_leader()
        for r in range(rounds):
            for i, n in enumerate(levels):
                order = ENGINES if (r + i) % 2 == 0 else ENGINES[::-1]
                for engine in order:
                    samples.append(measure_engine(clusters[engine], engine, n, seconds, conns, r + 1))
    finally:
        for kv in clusters.values():
            kv.close()
    rows = []
    for engine in ENGINES:
        for n in levels:
            mine = [s for s in samples if s["engine"] == engine and s["in_flight"] == n]
            if not mine:
                continue
            puts = sum(s["puts_counted"] for s in mine)
            throughputs = [s["throughput_ops_s"] for s in mine]
            rows.append({
                "system": f"kv {engine}", "engine": engine, "nodes": 3, "in_flight": n, "rounds": len(mine),
                "throughput_ops_s": median(throughputs), "throughput_min": min(throughputs),
                "throughput_max": max(throughputs), "p50_ms": median([s["p50_ms"] for s in mine]),
                "p99_ms": median([s["p99_ms"] for s in mine]), "errors": sum(s["errors"] for s in mine),
                "ok": sum(s["ok"] for s in mine), "puts_counted": puts,
                "messages_per_put": ratio(sum(s["messages"] for s in mine), puts),
                "fsyncs_per_put": ratio(sum(s["fsyncs"] for s in mine), puts),
            })
    # The ratios of throughput and latency: per round, this engine's figure over the core's measured
    # next to it; the median of those (steadier than a ratio of medians when the machine's speed drifts).
    for row in rows:
        pairs = {}
        for sample in samples:
            if sample["in_flight"] == row["in_flight"]:
                pairs.setdefault(sample["round"], {})[sample["engine"]] = sample
        for key in ("throughput_ops_s", "p50_ms", "p99_ms"):
            row[key + "_x_core"] = median([ratio(p[row["engine"]][key], p["core"][key])
                                           for p in pairs.values() if row["engine"] in p and "core" in p])
    return samples, rows


ENGINE_HEADERS = ["engine", "in flight", "puts/s", "x core", "puts/s range", "p50 ms", "x core", "p99 ms",
                  "x core", "msgs/put", "x core", "fsyncs/put", "x core", "errors"]


def build_engine_table(rows: list[dict]) -> list[list[str]]:
    base = {r["in_flight"]: r for r in rows if r["engine"] == "core"}
    table = []
    for r in rows:
        b = base.get(r["in_flight"], {})
        table.append([
            r["engine"], str(r["in_flight"]),
            fmt(r["throughput_ops_s"]), fmt(r["throughput_ops_s_x_core"], ".2f"),
            f"{fmt(r['throughput_min'], '.0f')}-{fmt(r['throughput_max'], '.0f')}",
            fmt(r["p50_ms"], ".2f"), fmt(r["p50_ms_x_core"], ".2f"),
            fmt(r["p99_ms"], ".2f"), fmt(r["p99_ms_x_core"], ".2f"),
            fmt(r["messages_per_put"], ".3f"), fmt(ratio(r["messages_per_put"], b.get("messages_per_put")), ".2f"),
            fmt(r["fsyncs_per_put"], ".3f"), fmt(ratio(r["fsyncs_per_put"], b.get("fsyncs_per_put")), ".2f"),
            str(r["errors"]),
        ])
    return table


def engines_main(args, levels: list[int], seconds: float) -> int:
    """``--engines``: the core against the classic engine (see the module docstring)."""
    started = time.monotonic()
    facts = machine_facts()
    server = store_bench.server_defaults()
    load_before = f"{os.getloadavg()[0]:.1f}"
    log(f"compare --engines: puts of 100-byte values, closed loop, {seconds:g} s per point, levels {levels}, "
        f"{args.rounds} rounds of pairs; {facts['nproc']} CPUs, Python {facts['python']}")
    samples, rows = engine_rounds(levels, seconds, args.conns, args.rounds)
    import engine_cpu

    log("the engines alone, in process (bench/engine_cpu.py):")
    cpu_rows = engine_cpu.measure(levels, 0.5, 7, log=log)
    elapsed = time.monotonic() - started
    table = build_engine_table(rows)
    notes = [
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), Python {facts['python']}, {facts['platform']}; "
        f"run {facts['date']}, {seconds:g} s per point, {args.rounds} rounds, {elapsed:.0f} s in all; "
        f"load average {load_before} before, {os.getloadavg()[0]:.1f} after.",
        "Both clusters run at once; each round measures every level on both, back to back (the engine that "
        "goes first alternates). puts/s, p50 and p99: the median of the rounds; 'puts/s range': the lowest "
        "and highest round (the spread is the machine's noise).",
        f"3 nodes, fsync always, batch size {server['batch_count_max']}, window {server['window']}, tick "
        f"{server['tick_seconds'] * 1000:g} ms; one client connection pipelining every request in flight; load "
        "generator in its own process on the same machine.",
        "msgs/put: Paxos messages sent by the three nodes (heartbeats included) per acknowledged put; "
        "fsyncs/put: fsyncs of the three nodes' logs (after group commit) per acknowledged put; both counted "
        "live over every round's point (warm-up included) through bench/counting_serve.py.",
        "'x core' columns: the classic engine's figure divided by the core's at the same level; for puts/s, "
        "p50 and p99 the median over the rounds of the ratio within each round (the pair measured back to "
        "back), for msgs/put and fsyncs/put the ratio of the totals.",
    ]
    cpu_table = engine_cpu.table(cpu_rows)
    cpu_note = ("In process (bench/engine_cpu.py): the pure engines, 3 replicas on a lossless FIFO network, "
                "the engines' default options (no thrifty Accepts, lazy decides or early Accepts), k commands "
                "per round packed into one slot; commands decided per second of one CPU (median of 7 rounds of "
                "0.5 s, engines alternating; 'x core' the median of the ratios within a round) and exact "
                "messages and persist batches (fsyncs in a store) per command.")
    log("")
    log(render(table, markdown=False, headers=ENGINE_HEADERS))
    log("")
    log(render(cpu_table, markdown=False, headers=engine_cpu.HEADERS))
    log("")
    for line in [*notes, cpu_note]:
        log("note: " + line)
    path = store_bench.save_results("compare-engines", {
        "machine": facts, "server": server, "seconds_per_point": seconds, "levels": levels,
        "rounds": args.rounds, "samples": samples, "rows": rows, "notes": notes, "elapsed_s": elapsed,
        "in_process": cpu_rows, "in_process_note": cpu_note,
    })
    log(f"\nresults: {path}")
    if args.write_docs:
        md = "\n".join([render(table, markdown=True, headers=ENGINE_HEADERS), "", *[f"* {n}" for n in notes], "",
                        render(cpu_table, markdown=True, headers=engine_cpu.HEADERS), "", f"* {cpu_note}"])
        write_docs(md, ENGINES_BEGIN, ENGINES_END, "## The two Paxos engines (latest `compare.py --engines`)")
        log(f"wrote {DOCS}")
    return 0


# ---------------------------------------------------------------------------------------------------
# report


def ratio(a, b) -> float | None:
    return a / b if a and b else None


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def build_table(rows: list[dict]) -> list[list[str]]:
    base = {r["in_flight"]: r for r in rows if r["system"] == BASELINE}
    table = []
    for r in rows:
        b = base.get(r["in_flight"], {})
        table.append([
            r["system"], str(r["in_flight"]), fmt(r["throughput_ops_s"]),
            fmt(ratio(r["throughput_ops_s"], b.get("throughput_ops_s")), ".2f"),
            fmt(r["p50_ms"], ".2f"), fmt(ratio(r["p50_ms"], b.get("p50_ms")), ".2f"),
            fmt(r["p99_ms"], ".2f"), fmt(ratio(r["p99_ms"], b.get("p99_ms")), ".2f"), str(r["errors"]),
        ])
    return table


HEADERS = ["system", "in flight", "puts/s", "x kv", "p50 ms", "x kv", "p99 ms", "x kv", "errors"]


def render(table: list[list[str]], markdown: bool, headers: list[str] = HEADERS) -> str:
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(out)
    widths = [max([len(h), *(len(row[i]) for row in table)]) for i, h in enumerate(headers)]  # (table may be [])
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in table:
        cells = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in cells))
    return "\n".join(lines)


def best_rows(rows: list[dict]) -> list[dict]:
    """Each system's best point over every in-flight level it was measured at."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["ok"] and r["throughput_ops_s"] and (r["system"] not in best
                                                   or r["throughput_ops_s"] > best[r["system"]]["throughput_ops_s"]):
            best[r["system"]] = r
    return list(best.values())


BEST_HEADERS = ["system", "best puts/s", "at in flight", "p50 ms there", "ours / this"]


def build_best_table(rows: list[dict]) -> list[list[str]]:
    bests = best_rows(rows)
    ours = next((b["throughput_ops_s"] for b in bests if b["system"] == BASELINE), None)
    return [[b["system"], fmt(b["throughput_ops_s"]), str(b["in_flight"]), fmt(b["p50_ms"], ".2f"),
             fmt(ratio(ours, b["throughput_ops_s"]), ".2f")] for b in bests]


def targets(rows: list[dict]) -> list[str]:
    bests = {b["system"]: b for b in best_rows(rows)}

    def best(system_prefix: str) -> dict | None:
        found = [b for name, b in bests.items() if name.startswith(system_prefix)]
        return max(found, key=lambda b: b["throughput_ops_s"]) if found else None

    def where(b: dict | None) -> str:
        return "-" if b is None else f"{fmt(b['throughput_ops_s'])} ({b['system']}, {b['in_flight']} in flight)"

    def value(b: dict | None) -> float | None:
        return None if b is None else b["throughput_ops_s"]

    kv = best(BASELINE)
    pso = best("pysyncobj")
    etcd = best("etcd")
    out = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    r = ratio(value(kv), value(pso))
    out.append(f"durable puts >= 3x PySyncObj's best (its best point over every level and configuration, "
               f"ours likewise): {where(kv)} vs {where(pso)} = {fmt(r, '.2f')}x "
               f"({verdict(None if r is None else r >= 3)})")
    r = ratio(value(kv), value(etcd))
    out.append(f"durable puts >= 2x etcd's best: {where(kv)} vs {where(etcd)} = {fmt(r, '.2f')}x "
               f"({verdict(None if r is None else r >= 2)})")
    one = {r["in_flight"]: r for r in rows if r["system"] == "kv 1 node"}
    for label, system in (("3 nodes", BASELINE), ("5 nodes", "kv 5 nodes")):
        many = {r["in_flight"]: r for r in rows if r["system"] == system}
        ratios = {n: ratio(many[n]["throughput_ops_s"], one[n]["throughput_ops_s"]) for n in many if n in one}
        if ratios:
            text = ", ".join(f"{n}: {fmt(v, '.2f')}" for n, v in sorted(ratios.items()))
            r_best = ratio(value(best(system)), value(best("kv 1 node")))
            at_256 = ratios.get(256)
            goal = f" ({verdict(None if at_256 is None else at_256 >= 0.8)} at 256)" if label == "3 nodes" else ""
            out.append(f"{label} / the 1-node ceiling" + (" >= 0.8 at 256 in flight" if label == "3 nodes" else "")
                       + f": per level {text}; best vs best {fmt(r_best, '.2f')}{goal}")
    three = {r["in_flight"]: r for r in rows if r["system"] == BASELINE}
    if 1 in three:
        p50 = three[1]["p50_ms"]
        out.append(f"one request at a time p50 <= 0.7 ms: {fmt(p50, '.2f')} ms "
                   f"({verdict(None if p50 is None else p50 <= 0.7)})")
    return out


def write_docs(report: str, begin: str = BEGIN, end: str = END, heading: str = "## Latest results") -> None:
    """Replace the text between ``begin`` and ``end`` in docs/benchmarks.md (append a section if absent)."""
    block = f"{begin}\n{report}\n{end}"
    if DOCS.exists():
        text = DOCS.read_text()
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            DOCS.write_text(head + block + tail)
            return
        DOCS.write_text(text.rstrip() + f"\n\n{heading}\n\n" + block + "\n")
        return
    DOCS.write_text(f"# Benchmarks\n\n{heading}\n\n" + block + "\n")


PYSYNCOBJ_MISSING = "PySyncObj is not installed: pip install 'paxos-kv[bench]' (or --no-pysyncobj)"


def pysyncobj_installed() -> bool:
    """Whether ``pysyncobj`` imports here (``bench/pysyncobj_node.py`` runs on this interpreter). Without
    it every PySyncObj point would fail into a log file, one after the other, leaving their directories."""
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return False
    return True


def pysyncobj_note(pso_levels: list[int], levels: list[int], measured: bool) -> str:
    """The note on how PySyncObj was measured (or that it was not)."""
    if not measured:
        return "PySyncObj: skipped."
    more = [n for n in pso_levels if n not in levels]
    also = f": it is also measured at {', '.join(map(str, more))}" if more else ""
    return ("PySyncObj: measured inside the leader process with async ReplDict.set calls and callbacks "
            "(its best case: no client hop); its journal is an mmap'd file without fsync. Default batching "
            "(appendEntriesUseBatch=True) sends entries every appendEntriesPeriod (0.1 s), so it needs thousands "
            f"in flight{also}; 'nobatch' sends at once.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compare this store with PySyncObj and etcd (see the module docstring).")
    ap.add_argument("--quick", action="store_true",
                    help="1.5 s per point, one round of the client and bulk rows, 20,000 keys (a few minutes); "
                         "with --memory, --metrics, --tls: their own --quick")
    ap.add_argument("--seconds", type=benchargs.positive_float, default=None,
                    help="seconds per point (default 5, quick 1.5)")
    ap.add_argument("--levels", type=benchargs.positive_int_list, default=[1, 16, 64, 256],
                    help="requests in flight, comma list")
    ap.add_argument("--pysyncobj-levels", type=benchargs.positive_int_list, default=[1024, 4096],
                    help="more levels for PySyncObj only (its batching needs thousands in flight), comma list")
    ap.add_argument("--conns", type=benchargs.positive_int, default=1, help="client connections for our store")
    ap.add_argument("--no-etcd", action="store_true", help="skip etcd")
    ap.add_argument("--no-install", action="store_true",
                    help="never apt-get install etcd (by default, as root without etcd, it installs Debian's "
                         "etcd-server and etcd-client)")
    ap.add_argument("--no-pysyncobj", action="store_true", help="skip PySyncObj")
    ap.add_argument("--no-clients", action="store_true", help="skip the client API rows (callbacks vs await)")
    ap.add_argument("--no-bulk", action="store_true", help="skip kv load vs kv bench")
    ap.add_argument("--bulk-keys", type=benchargs.positive_int, default=None,
                    help="keys for kv load vs kv bench (default 100000, quick 20000)")
    ap.add_argument("--client-rounds", type=benchargs.positive_int, default=None,
                    help="rounds of the client API and bulk rows (default 3, quick 1)")
    ap.add_argument("--only-kv", action="store_true", help="only this store's configurations (both engines)")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the results part of docs/benchmarks.md")
    ap.add_argument("--memory", action="store_true", help="run bench/memory_bench.py instead (1M keys)")
    ap.add_argument("--metrics", action="store_true",
                    help="run bench/metrics_cost.py instead: kv with --metrics-addr (scraped) against without")
    ap.add_argument("--tls", action="store_true",
                    help="run bench/tls_cost.py instead: kv on mutual TLS against plaintext (1 and 256 in flight)")
    ap.add_argument("--engines", action="store_true",
                    help="only the two Paxos engines (core, classic), with messages and fsyncs per put")
    ap.add_argument("--rounds", type=benchargs.positive_int, default=5, help="--engines: rounds of pairs (default 5)")
    args = ap.parse_args(argv)
    if args.memory:
        import memory_bench

        return memory_bench.main(["--quick"] if args.quick else [])  # (its only option shared with this one)
    # The stand-alone scripts get the options they share with this one (--quick, --seconds, and --levels
    # when given), so that nothing given here is dropped without a word.
    passed = ["--quick"] if args.quick else []
    if args.seconds:
        passed += ["--seconds", str(args.seconds)]
    if args.levels != ap.get_default("levels"):
        passed += ["--levels", ",".join(map(str, args.levels))]
    if args.metrics:
        import metrics_cost

        return metrics_cost.main(passed)
    if args.tls:
        import tls_cost

        return tls_cost.main(passed)
    seconds = args.seconds or (1.5 if args.quick else 5.0)
    levels = args.levels
    pso_levels = sorted(set(levels) | set(args.pysyncobj_levels))
    client_rounds = args.client_rounds if args.client_rounds is not None else (1 if args.quick else 3)
    bulk_keys = args.bulk_keys if args.bulk_keys is not None else (20_000 if args.quick else 100_000)
    from kvstore import runtime

    runtime.tune_gc()  # as `kv bench` does: this process is the load generator of every system
    if args.engines:
        return engines_main(args, levels, seconds)
    measure_pso = not args.only_kv and not args.no_pysyncobj
    if measure_pso and not pysyncobj_installed():
        log(PYSYNCOBJ_MISSING + "; skipping its points")
        measure_pso = False
    started = time.monotonic()
    facts = machine_facts()
    server = store_bench.server_defaults()
    load_before = f"{os.getloadavg()[0]:.1f}"
    stage(f"compare: puts of 100-byte values, closed loop, {seconds:g} s per point, levels {levels} "
          f"(PySyncObj {pso_levels}); {facts['nproc']} CPUs, Python {facts['python']}, load {load_before}")
    rows: list[dict] = []
    kv_configs = [(BASELINE, 3, ["--fsync", "always"]), ("kv fsync=off", 3, ["--fsync", "off"]),
                  ("kv 1 node", 1, ["--fsync", "always"]), ("kv 5 nodes", 5, ["--fsync", "always"]),
                  ("kv classic", 3, ["--fsync", "always", "--engine", "classic"])]
    for label, size, extra in kv_configs:
        stage(label)
        rows += guarded(label, run_kv, label, size, extra, levels, seconds, args.conns, default=[])
    etcd_version_text = None
    if measure_pso:
        for journal in (False, True):
            for batch in (True, False):
                stage(f"PySyncObj journal={'on' if journal else 'off'}{'' if batch else ' nobatch'}")
                rows += guarded("pysyncobj", run_pysyncobj, journal, pso_levels, seconds, batch, default=[])
    if not args.only_kv and not args.no_etcd:
        stage("etcd")
        etcd_rows, etcd_version_text = guarded("etcd", run_etcd, levels, seconds, not args.no_install,
                                               default=([], None))
        rows += etcd_rows
    h2h_samples: list[dict] = []
    h2h: dict = {}
    if measure_pso:
        h2h_samples, h2h = guarded("head to head", run_head_to_head, rows, seconds, client_rounds, args.conns,
                                   default=([], {}))
    client_samples: list[dict] = []
    client_rows: list[dict] = []
    if not args.no_clients:
        client_samples, client_rows = guarded("client API", run_client_modes, seconds, client_rounds,
                                              default=([], []))
    bulk_samples: list[dict] = []
    bulk_dump: dict = {}
    bulk: dict = {}
    if not args.no_bulk:
        bulk_samples, bulk_dump = guarded("kv load vs kv bench", run_bulk, bulk_keys, client_rounds,
                                          default=([], {}))
        bulk = bulk_summary(bulk_samples) if bulk_samples else {}
    elapsed = time.monotonic() - started
    stage("done")

    table = build_table(rows)
    best_table = build_best_table(rows)
    client_table = build_client_table(client_rows)
    target_lines = targets(rows)
    if h2h:
        target_lines.insert(1, (
            f"the same two best points again in {len(h2h_samples)} paired round(s) (back to back, the first "
            f"alternating): {h2h['ours']} at {h2h['ours_in_flight']} in flight {fmt(h2h['kv_ops_s'])} vs "
            f"{h2h['theirs']} at {h2h['theirs_in_flight']} {fmt(h2h['pysyncobj_ops_s'])} puts/s (medians); "
            f"ours / PySyncObj's best = {fmt(h2h['ratio'], '.2f')}x, median of the per-round ratios (range "
            f"{fmt(h2h['ratio_min'], '.2f')}-{fmt(h2h['ratio_max'], '.2f')}) "
            f"({'met' if h2h['ratio'] and h2h['ratio'] >= 3 else 'NOT met'})"))
    if client_rows:
        by_mode = {r["mode"]: r for r in client_rows}
        if "async" in by_mode and "callback" in by_mode:
            target_lines.append(
                f"client API, 2 processes x 256 in flight on 3 nodes: tasks awaiting kv.put "
                f"{fmt(by_mode['async']['throughput_ops_s'])} vs kv bench's callbacks "
                f"{fmt(by_mode['callback']['throughput_ops_s'])} puts/s = "
                f"{fmt(by_mode['async']['x_callback'], '.2f')}x "
                "(median of the per-round ratios; target: as fast)")
            pso = max((r["throughput_ops_s"] for r in rows if r["system"].startswith("pysyncobj") and r["ok"]
                       and r["throughput_ops_s"]), default=None)
            r_await = ratio(by_mode["async"]["throughput_ops_s"], pso)
            target_lines.append(
                f"the awaited API >= 3x PySyncObj's best: {fmt(by_mode['async']['throughput_ops_s'])} vs "
                f"{fmt(pso)} puts/s = {fmt(r_await, '.2f')}x "
                f"({'n/a' if r_await is None else ('met' if r_await >= 3 else 'NOT met')}; the two measured "
                "minutes apart)")
    if bulk:
        target_lines.append(
            f"kv load of {bulk_keys} keys vs kv bench of the same keys, 256 in flight, 3 nodes: "
            f"{fmt(bulk['load_keys_per_s'])} keys/s vs {fmt(bulk['bench_puts_per_s'])} puts/s = "
            f"{fmt(bulk['load_x_bench'], '.2f')}x (median of the per-round ratios); kv dump "
            f"{fmt(bulk_dump.get('rate_per_s'))} keys/s")
    notes = [
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), Python {facts['python']}, {facts['platform']}; "
        f"run {facts['date']}, {seconds:g} s per point, {elapsed:.0f} s in all; load average {load_before} "
        f"before, {os.getloadavg()[0]:.1f} after.",
        f"This store: 3 nodes unless noted, batch size {server['batch_count_max']}, window {server['window']}, "
        f"tick {server['tick_seconds'] * 1000:g} ms; one client connection pipelining every request in flight; "
        "load generator in its own process on the same machine.",
        pysyncobj_note(pso_levels, levels, measure_pso),
        (f"etcd {etcd_version_text}: 3 members, driven through the v3 JSON gateway (HTTP/1.1 keep-alive, "
         "one connection per request in flight), sent to the leader." if etcd_version_text else
         "etcd: skipped."),
        "'x kv' columns: the figure divided by kv fsync=always's at the same level ('-' where we have no "
        "point at that level). 'ours / this': our best puts/s (kv fsync=always, any level) over the system's best.",
    ]
    if client_rows:
        notes.append(f"Client API: a fresh 3-node cluster (fsync always), two load processes "
                     "(bench/client_load.py) of 256 in flight each on one connect() each, over the same seconds; "
                     "'kv bench (callbacks)' is kv bench's engine (submit_put from the previous answer), "
                     "'await kv.put (tasks)' is 256 trio tasks each looping on await kv.put(key, value); "
                     f"{client_rounds} round(s) per mode, the first mode alternating; puts/s summed over the two "
                     "processes (median round), p50/p99 the worse process's; 'x callbacks' the median of the "
                     "per-round ratios.")
    if FAILURES:
        notes.append("Sections that failed in this run (see its output): " + "; ".join(FAILURES))
    if bulk:
        notes.append(f"kv load vs kv bench: a fresh 3-node cluster (fsync always); kv load of a {bulk_keys}-line "
                     "file (8-character keys, 100-byte values) with --in-flight 256 against kv bench --clients 256 "
                     "--sequential-keys putting the same keys; keys/s as each command reports it (kv load's time "
                     "includes connecting, kv bench's starts after its warm-up); "
                     f"{client_rounds} round(s), the first command alternating.")
    report_text = render(table, markdown=False)
    log("")
    log(report_text)
    log("")
    log(render(best_table, markdown=False, headers=BEST_HEADERS))
    if client_table:
        log("")
        log(render(client_table, markdown=False, headers=CLIENT_HEADERS))
    if bulk:
        log("")
        log(render(build_bulk_table(bulk_samples, bulk_dump), markdown=False, headers=BULK_HEADERS))
    log("")
    for line in target_lines:
        log("target: " + line)
    for line in notes:
        log("note: " + line)
    path = store_bench.save_results("compare", {
        "machine": facts, "server": server, "seconds_per_point": seconds, "levels": levels,
        "pysyncobj_levels": pso_levels, "fsync_baseline": "always", "etcd_version": etcd_version_text,
        "rows": rows, "best": best_rows(rows), "head_to_head_samples": h2h_samples, "head_to_head": h2h,
        "client_samples": client_samples, "client_rows": client_rows,
        "bulk_samples": bulk_samples, "bulk_dump": bulk_dump, "bulk": bulk, "targets": target_lines,
        "notes": notes, "elapsed_s": elapsed,
    })
    log(f"\nresults: {path}")
    if args.write_docs:
        parts = [render(table, markdown=True), "", "Each system's best point (any level):", "",
                 render(best_table, markdown=True, headers=BEST_HEADERS)]
        if client_table:
            parts += ["", render(client_table, markdown=True, headers=CLIENT_HEADERS)]
        if bulk:
            parts += ["", render(build_bulk_table(bulk_samples, bulk_dump), markdown=True, headers=BULK_HEADERS)]
        parts += ["", "Targets (reported, not asserted):", "", *[f"* {t}" for t in target_lines], "",
                  *[f"* {n}" for n in notes]]
        write_docs("\n".join(parts))
        log(f"wrote {DOCS}")
    return 0


BULK_HEADERS = ["command", "round", "keys", "in flight", "keys/s", "x kv bench", "wall s", "errors"]


def build_bulk_table(samples: list[dict], dump_row: dict) -> list[list[str]]:
    table = []
    for s in samples:
        pair = [b for b in samples if b["what"] == "bench" and b["round"] == s["round"]]
        table.append([f"kv {s['what']}", str(s["round"]), str(s["keys"]), str(s["in_flight"]),
                      fmt(s["rate_per_s"]), fmt(ratio(s["rate_per_s"], pair[0]["rate_per_s"]) if pair else None, ".2f"),
                      f"{s['wall_s']:.2f}", str(s["errors"])])
    if dump_row:
        table.append(["kv dump", "-", str(dump_row["keys"]), "-", fmt(dump_row["rate_per_s"]), "-",
                      f"{dump_row['wall_s']:.2f}", "0"])
    return table


def run(argv: list[str] | None = None) -> int:
    """``main``, with Ctrl-C as one line and exit 130: the clusters and processes of the section under way
    are stopped on the way out (their ``with`` blocks and ``finally`` clauses), not reported as a traceback."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("\ncompare: interrupted (Ctrl-C); the processes it started are stopped, no results saved",
              file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(run())
