"""A local cluster of one source tree's ``kv serve`` processes, for ``ab.py``.

``ab.py`` runs its load in a subprocess whose ``PYTHONPATH`` and working directory are the tree under
test (this checkout, or a git worktree of an older revision), and loads this file from this checkout
by its path (older trees do not have it). So the client here is that tree's ``kvstore.client`` (only its
public ``Client``, which every revision has), and each node runs that tree's own ``kv`` command from its
folder ``cli/``, whatever is installed: the command's import name is ``kv_cli`` in trees whose
pyproject.toml maps it to ``cli/`` and ``cli`` in older ones, and a plain ``python -m kv_cli`` would find
the installed copy instead of the tree's.

Nodes listen on 127.0.0.1 on ports the OS handed out, each with its own data directory under
``root``; ``close`` ends them by PID.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from kvstore.client import Client

# Run by each node's interpreter, with the tree as the working directory: import the folder cli/
# under the command's import name, then run it as ``python -m`` would.
_SERVE = r"""
import importlib.util, runpy, sys
from pathlib import Path
name, folder = sys.argv.pop(1), Path(sys.argv.pop(1))
spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
runpy.run_module(name, run_name="__main__", alter_sys=True)
"""


def kv_package(tree: Path) -> str:
    """The import name of ``tree``'s ``kv`` command: the name its pyproject.toml maps to the folder
    ``cli/`` (``kv_cli``), or ``cli`` in trees from before that mapping."""
    config = tomllib.loads((tree / "pyproject.toml").read_text(encoding="utf-8"))
    mapped = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return next((name for name, folder in mapped.items() if folder.rstrip("/") == "cli"), "cli")


def free_ports(count: int) -> list[int]:
    """Ports the OS just handed out for 127.0.0.1 (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class TreeCluster:
    """``size`` nodes of the tree ``tree``, data under ``root``."""

    def __init__(self, tree: Path, root: Path, size: int) -> None:
        self.tree = Path(tree)
        self.root = Path(root)
        self.package = kv_package(self.tree)
        self.ports = dict(zip(range(1, size + 1), free_ports(size), strict=True))
        self.peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.ports.items())
        self.endpoints = [f"127.0.0.1:{p}" for p in self.ports.values()]
        self.procs: dict[int, subprocess.Popen] = {}

    def start_all(self) -> None:
        for node_id in self.ports:
            with open(self.root / f"node-{node_id}.log", "ab") as log:
                cmd = [sys.executable, "-c", _SERVE, self.package, str(self.tree / "cli"),
                       "serve", "--id", str(node_id), "--peers", self.peers,
                       "--data-dir", str(self.root / f"node-{node_id}")]
                self.procs[node_id] = subprocess.Popen(cmd, cwd=self.tree, stdout=log, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL)

    def wait_leader(self, deadline_s: float = 30.0) -> int:
        """Poll until exactly one node says it leads; its id."""
        deadline = time.monotonic() + deadline_s
        with Client(self.endpoints, timeout=1.0) as c:
            while time.monotonic() < deadline:
                for node_id, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"node {node_id} exited with {proc.returncode}; see {self.root}")
                statuses = c.cluster_status()
                leaders = [s["id"] for s in statuses if s.get("reachable") and s.get("is_leader")]
                if len(leaders) == 1:
                    return leaders[0]
                time.sleep(0.1)
        raise RuntimeError(f"no leader within {deadline_s}s; logs in {self.root}")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
