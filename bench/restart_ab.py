"""Restart time, this tree against an earlier revision, in one run: the same 1-node data directory
(``--keys`` keys of 100 bytes, a snapshot and the log above it) restarted by each tree in turn.

    python bench/restart_ab.py --baseline c83c51d --keys 1000000 --rounds 3

Loads the keys once with this tree (``kv serve --fsync off``, many puts in flight), kills the node with
SIGKILL (nothing flushed on the way out), keeps its directory, then for each round copies it afresh and
starts a node of each tree on it (A B, then B A, ...), timing from process start until a linearizable
get of the last key answers. Prints each tree's times, the medians and B/A (B = this tree), and each
tree's RSS and peak RSS at that moment. The node's
log line "data dir opened in ...; snapshot of slot ... restored in ..." (this tree) says where the time
went. Bounded: a minute per restart, ``--load-time-limit`` for the load.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ab_cluster  # noqa: E402
import store_bench  # noqa: E402

from kvstore.client import Client, KVError  # noqa: E402
from kvstore.loadgen import LoadSpec, run_load_sync  # noqa: E402

RESTART_LIMIT_S = 60.0
POLL_TIMEOUT_S = 0.3  # one get's deadline while polling (its retries pause 20, 40, 80, 160 ms)


def load_directory(root: Path, keys: int, time_limit: float) -> tuple[Path, str, str]:
    """A killed 1-node cluster's data directory holding ``keys`` keys; returns it, the node's peers
    argument and the last key loaded."""
    root.mkdir(parents=True, exist_ok=True)
    kv = store_bench.LocalKv(1, ["--fsync", "off"], root=str(root))
    kv.start_all()
    try:
        kv.wait_leader()
        spec = LoadSpec(endpoints=kv.endpoints, clients=1024, conns=4, total=keys, sequential_keys=True,
                        key_space_size=keys, val_size=100, timeout=30, time_limit_s=time_limit)
        result = run_load_sync(spec, progress=sys.stderr)
        if result.ok < keys:
            raise SystemExit(f"loaded only {result.ok} of {keys} keys")
        time.sleep(2)  # let a snapshot in progress finish, as a node running for a while would have
        kv.procs[1].send_signal(signal.SIGKILL)
        kv.procs[1].wait()
    finally:
        kv.close()
    return root / "node-1", kv.peers, spec.key(keys - 1)


def compile_tree(tree: Path) -> None:
    """Write the bytecode of ``tree``'s packages, as ``pip install`` does: a fresh worktree has none,
    and with PYTHONDONTWRITEBYTECODE set (as on these machines) every start would compile ~0.1 s of
    source that an installed node never compiles."""
    folders = [str(tree / name) for name in ("paxos", "kvstore", "cli") if (tree / name).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], check=True, capture_output=True)


def _rss_mib(pid: int) -> tuple[float, float]:
    """The process's (VmRSS, VmHWM) in MiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(rest.split()[0]) / 1024.0
    return found["VmRSS"], found["VmHWM"]


def restart(tree: Path, source: Path, peers: str, endpoint: str, key: str) -> tuple[float, float, float]:
    """Seconds until the restarted node answered, and its RSS and peak RSS (MiB) then."""
    with tempfile.TemporaryDirectory(prefix="kvrestart-") as tmp:
        data = Path(tmp) / "node-1"
        shutil.copytree(source, data)
        env = dict(os.environ, PYTHONPATH=str(tree))
        began = time.monotonic()
        serve = [sys.executable, "-c", ab_cluster._SERVE, ab_cluster.kv_package(tree), str(tree / "cli"), "serve"]
        log_path = Path(tmp) / "node.log"
        log = log_path.open("wb")
        proc = subprocess.Popen([*serve, "--id", "1", "--peers", peers, "--data-dir", str(data), "--fsync", "off"],
                                cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Polled finely: a client's own back-off between retries (up to 0.5 s) would be measured
            # as restart time. Wait for the port to listen (5 ms steps), then ask with short deadlines.
            host, port = endpoint.rsplit(":", 1)
            while time.monotonic() - began < RESTART_LIMIT_S:
                try:
                    socket.create_connection((host, int(port)), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.005)
            with Client([endpoint], timeout=POLL_TIMEOUT_S) as client:
                while time.monotonic() - began < RESTART_LIMIT_S:
                    try:
                        if client.get(key) is None:
                            raise SystemExit(f"{tree}: the restarted node does not have {key!r}")
                        return (time.monotonic() - began, *_rss_mib(proc.pid))
                    except KVError:
                        time.sleep(0.005)
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            exited = proc.poll()
            raise SystemExit(f"{tree}: no answer within {RESTART_LIMIT_S:g} s"
                             + (f" (the node exited with {exited})" if exited is not None else "")
                             + "; the node's last lines:\n" + "\n".join(tail))
        finally:
            proc.kill()
            proc.wait()
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against (A)")
    parser.add_argument("--candidate", help="git revision to measure (B); default: this working tree")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load-time-limit", type=float, default=600.0)
    args = parser.parse_args()
    repo = HERE.parent
    with tempfile.TemporaryDirectory(prefix="kvrestart-ab-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(base), args.baseline],
                       check=True, capture_output=True)
        candidate = repo
        if args.candidate:
            candidate = Path(tmp) / "candidate"
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(candidate), args.candidate],
                           check=True, capture_output=True)
        try:
            print(f"loading {args.keys} keys ...", file=sys.stderr, flush=True)
            source, peers, key = load_directory(Path(tmp) / "cluster", args.keys, args.load_time_limit)
            endpoint = peers.split("=", 1)[1]
            for tree in (base, candidate):
                compile_tree(tree)
            times: dict[str, list[float]] = {"A": [], "B": []}
            memory: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
            for round_no in range(args.rounds):
                order = [("A", base), ("B", candidate)]
                for name, tree in order if round_no % 2 == 0 else order[::-1]:
                    seconds, rss, peak = restart(tree, source, peers, endpoint, key)
                    times[name].append(seconds)
                    memory[name].append((rss, peak))
                    print(f"round {round_no + 1}/{args.rounds}: {name} restarted in {seconds:.2f} s, "
                          f"RSS {rss:.1f} MiB (peak {peak:.1f})", file=sys.stderr, flush=True)
        finally:
            for tree in {base, candidate} - {repo}:
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    print(f"restart of one node holding {args.keys} keys (SIGKILL, start, first linearizable get), "
          f"median of {args.rounds} rounds, nproc={os.cpu_count()}")
    print(f"  A = {args.baseline}: {a:.2f} s ({', '.join(f'{t:.2f}' for t in times['A'])})")
    print(f"  B = {args.candidate or 'this tree'}: {b:.2f} s ({', '.join(f'{t:.2f}' for t in times['B'])})")
    print(f"  B/A: {b / a:.2f}")
    for name in ("A", "B"):
        rss = statistics.median(r for r, _ in memory[name])
        peak = statistics.median(p for _, p in memory[name])
        print(f"  {name}: RSS at the first get {rss:.1f} MiB, peak {peak:.1f} MiB (medians)")


if __name__ == "__main__":
    main()
