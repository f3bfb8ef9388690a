"""``kv cluster up --tls``: the installed ``kv`` command makes the certificates, starts a TLS-only local
cluster and prints the exports; the exports work, the default cluster works without them, plaintext
does not, and ``kv cluster status``/``down`` keep working on it.

How: a temporary KV_CLUSTER_DIR and three consecutive free ports on 127.0.0.1; ``kv`` runs as a
subprocess as a user would. Teardown in ``finally``: ``kv cluster down``, then SIGKILL every pid from
cluster.json that is still one of our nodes.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kv_cli.cluster import process_state

from ..ports import free_base_port

pytestmark = pytest.mark.slow


def test_kv_cluster_up_tls(tmp_path):
    cluster_dir = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
    env["KV_CLUSTER_DIR"] = str(cluster_dir)

    def kv(*args: str, extra: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kv_cli", *args], env={**env, **(extra or {})},
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    try:
        up = kv("cluster", "up", "--tls", "--detach", "--base-port", str(free_base_port()))
        assert up.returncode == 0, up.stderr
        exports = dict(line[len("export "):].split("=", 1) for line in up.stdout.splitlines()
                       if line.startswith("export "))
        assert set(exports) == {"KV_ENDPOINTS", "KV_CACERT", "KV_CERT", "KV_KEY"}, up.stdout
        certs = cluster_dir / "certs"
        assert Path(exports["KV_CACERT"]) == certs / "ca.pem" and Path(exports["KV_CERT"]) == certs / "admin.pem"
        for key in [certs / "ca.key", certs / "admin.key"] + [certs / f"node-{i}.key" for i in (1, 2, 3)]:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key

        put = kv("put", "greeting", "hello", extra=exports)
        assert put.returncode == 0, put
        got = kv("get", "greeting")  # no exports: the default cluster's endpoints bring its TLS files
        assert got.returncode == 0 and "hello" in got.stdout.split(), got
        plain = kv("--endpoints", exports["KV_ENDPOINTS"], "--command-timeout", "1", "get", "greeting")
        assert plain.returncode == 1 and "hello" not in plain.stdout, plain
        status = kv("-w", "json", "cluster", "status")
        assert status.returncode == 0, status.stderr
        nodes = json.loads(status.stdout)["nodes"]
        assert len(nodes) == 3 and all(n["reachable"] is True for n in nodes), nodes
        down = kv("cluster", "down")
        assert down.returncode == 0, down.stderr
    finally:
        state_file = cluster_dir / "cluster.json"
        if state_file.exists():
            for node in json.loads(state_file.read_text())["nodes"]:
                if process_state(node.get("pid"), node) != "dead":
                    os.kill(node["pid"], signal.SIGKILL)
