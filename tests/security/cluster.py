"""A real local cluster of ``kv serve --cacert --cert --key [--acl]`` processes for the security tests.

Each node is an OS process on 127.0.0.1 (ports the OS handed out) with its own data directory and its
own copies of the TLS files (DIR/tls-N: ca.pem, node.pem, node.key), so that a test can rotate one
node's files and send it SIGHUP. ``cert_of`` starts a node with another member's certificate. Tests tear
it down in ``finally`` (``close`` ends every process it started, by PID).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvstore.client import Client, KVError

from ..integration.harness import free_ports
from .pki import Pki

# ``kv serve`` without the check of its own certificate (see TlsCluster.start)
_SKIPPING_OWN_CHECK = """
import runpy, sys
import kvstore.tls
kvstore.tls.check_node_certificate = lambda cert, node_id: None
sys.argv[0] = "kv"
runpy.run_module("kv_cli", run_name="__main__", alter_sys=True)
"""


class TlsCluster:
    def __init__(self, root: Path, pki: Pki, size: int = 3, *, acl: str | None = None,
                 cert_of: dict[int, int] | None = None) -> None:
        self.root = Path(root)
        self.pki = pki
        self.acl = acl
        self.ports = dict(zip(range(1, size + 1), free_ports(size), strict=True))
        self.peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.ports.items())
        self.endpoints = [f"127.0.0.1:{p}" for p in self.ports.values()]
        self.procs: dict[int, subprocess.Popen] = {}
        self.cert_of = dict(cert_of or {})
        for i in self.ports:
            d = self.tls_dir(i)
            d.mkdir(parents=True)
            shutil.copy(pki.cacert, d / "ca.pem")
            as_node = (cert_of or {}).get(i, i)
            shutil.copy(pki.dir / f"node-{as_node}.pem", d / "node.pem")
            shutil.copy(pki.dir / f"node-{as_node}.key", d / "node.key")

    def tls_dir(self, node_id: int) -> Path:
        return self.root / f"tls-{node_id}"

    def endpoint(self, node_id: int) -> str:
        return f"127.0.0.1:{self.ports[node_id]}"

    def log_path(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}.log"

    def log_text(self, node_id: int) -> str:
        return self.log_path(node_id).read_text(errors="replace")

    def start(self, node_id: int) -> None:
        d = self.tls_dir(node_id)
        # A node given another member's certificate refuses to start (kvstore.tls.check_node_certificate);
        # one of cert_of stands for a node that skips that check (modified, or lying on purpose), so that
        # the peers' own check (kvstore.tls.check_peer) is what the tests see.
        launch = (["-c", _SKIPPING_OWN_CHECK] if self.cert_of.get(node_id, node_id) != node_id
                  else ["-m", "kv_cli"])
        cmd = [sys.executable, *launch, "serve", "--id", str(node_id), "--peers", self.peers,
               "--data-dir", str(self.root / f"data-{node_id}"),
               "--cacert", str(d / "ca.pem"), "--cert", str(d / "node.pem"), "--key", str(d / "node.key")]
        if self.acl is not None:
            cmd += ["--acl", self.acl]
        with open(self.log_path(node_id), "ab") as log:
            self.procs[node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)

    def start_all(self) -> None:
        for node_id in self.ports:
            self.start(node_id)

    def kill(self, node_id: int) -> None:
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def sighup(self, node_id: int) -> None:
        os.kill(self.procs[node_id].pid, signal.SIGHUP)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def client(self, name: str = "admin", *, timeout: float = 5.0, endpoints: list[str] | None = None,
               files: dict[str, str] | None = None) -> Client:
        return Client(endpoints or self.endpoints, timeout=timeout, **(files or self.pki.files(name)))

    def status(self, node_id: int) -> dict | None:
        try:
            with self.client(timeout=2.0, endpoints=[self.endpoint(node_id)]) as c:
                return c.status(self.endpoint(node_id))
        except (KVError, OSError):
            return None

    def wait_leader(self, among: list[int] | None = None, deadline_s: float = 20.0) -> int:
        """Poll until one node of ``among`` says it leads; return its id."""
        ids = among or list(self.ports)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for i in ids:
                assert self.procs[i].poll() is None, f"node {i} exited:\n{self.log_text(i)[-3000:]}"
                status = self.status(i)
                if status and status.get("is_leader"):
                    return i
            time.sleep(0.1)
        raise AssertionError(f"no leader among {ids} within {deadline_s}s; logs in {self.root}")
