"""A real cluster of ``python -m kv_cli serve`` processes for nemesis tests, driven from async (trio) code.

Unlike ``tests/integration/harness.Cluster`` (whose waits block the calling thread), every wait here is
async, because the same trio run also hosts the peer proxies and the clients: a blocking wait would
freeze the network under test. Each node gets its own ``--peers`` string (``peers_for``), so a node's
entries for the others can point at proxies; its own entry is its real listen address.

Engine: ``engine`` ("core" or "classic", issue 18) is passed to every node as ``kv serve --engine``;
``assert_engine`` checks, from the nodes' own status, that the cluster under test runs it (so a test
parametrized over engines cannot silently run the default one).

Placement: by default every node listens on 127.0.0.1 with an OS-assigned port. A ``NetnsTopology``
(``tests/nemesis/netns.py``) puts node ``i`` in its own network namespace instead; ``command_prefix``
then wraps the command in ``ip netns exec``.

Only processes started here are ever signalled, by PID; ``close`` kills them all (SIGCONT first so
that a stopped one can die).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from kvstore.client import KVError, connect

from ..integration.harness import free_ports

REPO = Path(__file__).resolve().parents[2]


class NemesisCluster:
    def __init__(self, root: Path, size: int = 3, *, extra_args: list[str] | None = None,
                 addresses: dict[int, tuple[str, int]] | None = None,
                 command_prefix=None, engine: str = "core") -> None:
        self.root = Path(root)
        self.engine = engine
        self.size = size
        if addresses is None:
            addresses = {i: ("127.0.0.1", p) for i, p in zip(range(1, size + 1), free_ports(size), strict=True)}
        self.addresses = addresses
        self.extra_args = extra_args or []
        self.command_prefix = command_prefix or (lambda node_id: [])
        self.procs: dict[int, subprocess.Popen] = {}
        self.paused: set[int] = set()
        self.killed: set[int] = set()  # nodes whose process ended by kill(), not by itself
        self.proxies = None  # PeerProxies, when links go through proxies
        self.env: dict[int, dict[str, str]] = {}

    # ---- addresses ---------------------------------------------------------------------------------

    @property
    def ids(self) -> list[int]:
        return sorted(self.addresses)

    def endpoint(self, node_id: int) -> str:
        host, port = self.addresses[node_id]
        return f"{host}:{port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in self.ids]

    def peers_for(self, node_id: int) -> str:
        parts = []
        for other in self.ids:
            if other == node_id or self.proxies is None:
                host, port = self.addresses[other]
            else:
                host, port = self.proxies.address(node_id, other)
            parts.append(f"{other}={host}:{port}")
        return ",".join(parts)

    def data_dir(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}"

    def log_path(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}.log"

    # ---- processes ---------------------------------------------------------------------------------

    def start(self, node_id: int, *, env: dict[str, str] | None = None) -> None:
        assert node_id not in self.procs or self.procs[node_id].poll() is not None, f"node {node_id} runs"
        log = open(self.log_path(node_id), "ab")
        cmd = [*self.command_prefix(node_id), sys.executable, "-m", "kv_cli", "serve", "--id", str(node_id),
               "--peers", self.peers_for(node_id), "--data-dir", str(self.data_dir(node_id)),
               "--engine", self.engine, *self.extra_args]
        full_env = dict(os.environ)
        full_env.pop("KV_FAILPOINTS", None)
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        self.procs[node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env=full_env, cwd=str(REPO))
        self.paused.discard(node_id)
        self.killed.discard(node_id)
        log.close()

    def start_all(self) -> None:
        for node_id in self.ids:
            self.start(node_id)

    def alive(self, node_id: int) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def unexpected_exits(self) -> list[str]:
        """The nodes whose process ended by itself (not by ``kill``): a node that crashed in the middle of
        a run goes unseen otherwise, the others carrying the workload (soak: a node died of an
        ExceptionGroup and the run passed)."""
        found = []
        for node_id, proc in sorted(self.procs.items()):
            if node_id not in self.killed and proc.poll() is not None:
                try:
                    tail = self.log_path(node_id).read_text(errors="replace").splitlines()[-8:]
                except OSError:
                    tail = []
                found.append(f"node {node_id} exited by itself with code {proc.returncode}: " + " | ".join(tail))
        return found

    def kill(self, node_id: int) -> None:
        self.killed.add(node_id)
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
        self.paused.discard(node_id)

    def kill_all_at_once(self) -> None:
        self.killed.update(self.procs)
        procs = [p for p in self.procs.values() if p.poll() is None]
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)
        self.paused.clear()

    def pause(self, node_id: int) -> None:
        if self.alive(node_id):
            os.kill(self.procs[node_id].pid, signal.SIGSTOP)
            self.paused.add(node_id)

    def resume(self, node_id: int) -> None:
        if self.alive(node_id):
            os.kill(self.procs[node_id].pid, signal.SIGCONT)
        self.paused.discard(node_id)

    def heal(self) -> None:
        """Every node running and unpaused; every proxied link passing."""
        for node_id in list(self.paused):
            self.resume(node_id)
        if self.proxies is not None:
            self.proxies.heal()
        for node_id in self.ids:
            if not self.alive(node_id):
                self.start(node_id)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                    proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for node_id in self.ids:
            try:
                text = self.log_path(node_id).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = []
            out.append(f"--- node {node_id} log tail ---\n" + "\n".join(text))
        return "\n".join(out)

    # ---- async status ------------------------------------------------------------------------------

    async def status(self, node_id: int, timeout: float = 1.0) -> dict | None:
        if node_id in self.paused or not self.alive(node_id):
            return None
        async with connect([self.endpoint(node_id)], timeout=timeout) as kv:
            try:  # inside the client's nursery, so the error is not wrapped in an ExceptionGroup
                return await kv.status(self.endpoint(node_id))
            except (KVError, OSError):
                return None

    async def statuses(self, timeout: float = 1.0) -> dict[int, dict | None]:
        results: dict[int, dict | None] = {}

        async def one(i: int) -> None:
            results[i] = await self.status(i, timeout)

        async with trio.open_nursery() as nursery:
            for i in self.ids:
                nursery.start_soon(one, i)
        return results

    def assert_engine(self, statuses: dict) -> None:
        """Every status given (``statuses()``'s values, None for an unreachable node) names our engine."""
        engines = {i: s.get("engine") for i, s in statuses.items() if s}
        assert engines and set(engines.values()) == {self.engine}, (
            f"the cluster should run the {self.engine!r} engine, its nodes say {engines}")

    async def leader(self) -> int | None:
        """The node that says it leads with the highest ballot, right now (None if none does)."""
        statuses = await self.statuses(timeout=0.5)
        leaders = [(tuple(s["ballot"] or ()), i) for i, s in statuses.items() if s and s.get("is_leader")]
        return max(leaders)[1] if leaders else None

    async def wait_leader(self, deadline_s: float = 30.0, among: list[int] | None = None) -> int:
        ids = among or self.ids
        with trio.move_on_after(deadline_s):
            while True:
                statuses = await self.statuses(timeout=0.5)
                leaders = [i for i in ids if statuses.get(i) and statuses[i].get("is_leader")]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(0.1)
        raise AssertionError(f"no single leader among {ids} within {deadline_s}s\n{self.logs_tail()}")

    async def wait_converged(self, deadline_s: float = 30.0) -> dict[int, dict]:
        """Every node reachable and reporting the same (applied_slot, state_hash); returns the statuses."""
        last = None
        with trio.move_on_after(deadline_s):
            while True:
                statuses = await self.statuses(timeout=1.0)
                last = statuses
                if all(statuses.values()):
                    seen = {(s["applied_slot"], s["state_hash"]) for s in statuses.values()}
                    if len(seen) == 1:
                        return statuses  # type: ignore[return-value]
                await trio.sleep(0.1)
        summary = {i: (s and (s["applied_slot"], s["state_hash"][:12], s["is_leader"]))
                   for i, s in (last or {}).items()}
        raise AssertionError(f"replicas did not converge within {deadline_s}s: {summary}\n{self.logs_tail()}")
