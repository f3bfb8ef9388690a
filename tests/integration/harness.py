"""A real local cluster of ``kv serve`` processes for integration tests.

Each node is a separate OS process on 127.0.0.1 with a free port outside the kernel's ephemeral range
(``tests.ports``) and its own temporary data directory. Tests SIGKILL, SIGSTOP and restart nodes through this object and
must tear it down in ``finally`` (``Cluster.close`` kills every process it started, by PID).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvstore.client import Client, KVError

from .. import ports

free_ports = ports.free_ports  # (re-exported: the other test packages import it from here)


class Cluster:
    def __init__(self, root: Path, size: int = 3, *, extra_args: list[str] | None = None) -> None:
        self.root = Path(root)
        self.size = size
        self.ports = dict(zip(range(1, size + 1), free_ports(size), strict=True))
        self.peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.ports.items())
        self.endpoints = [f"127.0.0.1:{p}" for p in self.ports.values()]
        self.extra_args = extra_args or []
        self.procs: dict[int, subprocess.Popen] = {}

    def data_dir(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}"

    def start(self, node_id: int) -> None:
        log = open(self.root / f"node-{node_id}.log", "ab")
        cmd = [sys.executable, "-m", "kv_cli", "serve", "--id", str(node_id), "--peers", self.peers,
               "--data-dir", str(self.data_dir(node_id)), *self.extra_args]
        self.procs[node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def start_all(self) -> None:
        for node_id in self.ports:
            self.start(node_id)

    def kill(self, node_id: int) -> None:
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process must be able to die
            proc.kill()
            proc.wait(timeout=10)

    def pause(self, node_id: int) -> None:
        os.kill(self.procs[node_id].pid, signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        os.kill(self.procs[node_id].pid, signal.SIGCONT)

    def restart(self, node_id: int) -> None:
        self.kill(node_id)
        self.start(node_id)

    def close(self) -> None:
        for node_id in list(self.procs):
            proc = self.procs[node_id]
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.terminate()
                    proc.wait(timeout=5)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    proc.kill()
                    proc.wait(timeout=5)

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.endpoints, timeout=timeout)

    def status(self, node_id: int, timeout: float = 2.0) -> dict | None:
        with Client([f"127.0.0.1:{self.ports[node_id]}"], timeout=timeout) as c:
            try:
                return c.status(f"127.0.0.1:{self.ports[node_id]}")
            except (KVError, OSError):
                return None

    def leader(self, deadline_s: float = 20.0, among: list[int] | None = None) -> int:
        """Poll until one node says it leads and the others agree; return its id."""
        deadline = time.monotonic() + deadline_s
        ids = among or list(self.ports)
        with Client(self.endpoints, timeout=1.0) as c:
            while time.monotonic() < deadline:
                statuses = c.cluster_status()
                leaders = [s["id"] for s in statuses if s.get("reachable") and s.get("is_leader") and s["id"] in ids]
                if len(leaders) == 1:
                    return leaders[0]
                time.sleep(0.1)
        raise AssertionError(f"no single leader within {deadline_s}s; logs in {self.root}")

    def wait_converged(self, deadline_s: float = 20.0, among: list[int] | None = None) -> list[dict]:
        """Poll until every listed node reports the same applied slot and state hash."""
        deadline = time.monotonic() + deadline_s
        ids = among or list(self.ports)
        last = None
        with Client(self.endpoints, timeout=1.0) as c:
            while time.monotonic() < deadline:
                statuses = [s for s in c.cluster_status() if s.get("reachable") and s.get("id") in ids]
                last = statuses
                if len(statuses) == len(ids) and len({(s["applied_slot"], s["state_hash"]) for s in statuses}) == 1:
                    return statuses
                time.sleep(0.1)
        raise AssertionError(f"replicas did not converge within {deadline_s}s: {last}")
