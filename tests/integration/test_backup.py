"""Backup and restore with real processes and the real ``kv`` commands (issue 17).

The story: a 3-node cluster takes writes (an overwrite, a binary value, a delete among them), removes
node 3 through the log (so its state carries a membership change), and keeps taking writes while
``kv snapshot save`` runs. Then every node is lost: all killed, every data directory deleted. Each node
of a NEW cluster, on new ports, is made with ``kv snapshot restore`` and started with the ``kv serve``
line it printed. The new cluster elects a leader and holds every write acknowledged before the save
began (with its value; nothing it holds is something nobody wrote), its configuration is the
``--peers`` it was restored with (three voters at the new addresses, epoch 0, though the old cluster
had removed node 3), its cluster id and incarnations are new, and it takes writes. The damaged-file
refusals run against the real backup too: one line, exit 1, no data directory made.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import trio

from kvstore.client import connect

from ..nemesis.cluster import REPO, NemesisCluster

pytestmark = pytest.mark.slow


def kv(*args: str, endpoints: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    front = ["--endpoints", ",".join(endpoints), "--command-timeout", "15"] if endpoints else []
    return subprocess.run([sys.executable, "-m", "kv_cli", *front, *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=str(REPO), stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


async def test_back_up_lose_every_node_and_restore_into_a_new_cluster(tmp_path):
    old = NemesisCluster(tmp_path / "old")
    new = NemesisCluster(tmp_path / "new")
    backup_file = tmp_path / "backups" / "cluster.kvbak"
    for directory in (old.root, new.root, backup_file.parent):
        directory.mkdir(parents=True)
    try:
        old.start_all()
        await old.wait_leader()
        expected: dict[str, str | bytes] = {}
        async with connect(old.endpoints, timeout=15) as client:
            for i in range(150):
                await client.put(f"k/{i:04d}", f"value {i}")
                expected[f"k/{i:04d}"] = f"value {i}"
            await client.put("k/0007", b"\x00\x01 binary")
            expected["k/0007"] = b"\x00\x01 binary"
            assert await client.delete("k/0008")
            del expected["k/0008"]

        removed = kv("member", "remove", "3", endpoints=old.endpoints)
        assert removed.returncode == 0, removed.stderr + old.logs_tail()
        old.kill(3)
        del old.addresses[3]
        survivors = old.endpoints

        # Writes go on while the backup is saved: those acknowledged before it began must be in it.
        acked_before: dict[str, str] = {}
        acked_during: dict[str, str] = {}
        saving = False
        saved = trio.Event()
        outcome: dict = {}

        async def writer() -> None:
            async with connect(survivors, timeout=15) as client:
                for i in range(100_000):  # bounded; stops once the save is done
                    if saved.is_set():
                        return
                    key, value = f"w/{i:06d}", f"written {i}"
                    began_during = saving
                    await client.put(key, value)
                    (acked_during if began_during or saving else acked_before)[key] = value
                    if not saving and len(acked_before) >= 30:
                        start_save.set()
                    await trio.sleep(0.005)

        start_save = trio.Event()

        async def save() -> None:
            nonlocal saving
            await start_save.wait()
            saving = True
            outcome["save"] = await trio.to_thread.run_sync(
                lambda: kv("snapshot", "save", str(backup_file), endpoints=survivors))
            saved.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            nursery.start_soon(save)
        proc = outcome["save"]
        assert proc.returncode == 0, proc.stderr + old.logs_tail()
        assert proc.stdout.startswith(f"Snapshot saved at {backup_file}"), proc.stdout
        assert not backup_file.with_name("cluster.kvbak.part").exists()
        assert acked_during, "the writer kept writing while the backup was saved"

        status = kv("-w", "json", "snapshot", "status", str(backup_file))
        assert status.returncode == 0, status.stderr
        facts = json.loads(status.stdout)
        assert facts["cluster_id"] == "kv" and facts["slot"] > 150
        assert facts["keys"] >= len(expected) + len(acked_before)

        # Lose every node: all killed, every data directory gone.
        old.kill_all_at_once()
        for node_id in (1, 2, 3):
            shutil.rmtree(old.data_dir(node_id))

        # A damaged copy of the real backup is refused, with nothing made.
        damaged = tmp_path / "backups" / "damaged.kvbak"
        data = bytearray(backup_file.read_bytes())
        data[len(data) // 2] ^= 0x10
        damaged.write_bytes(bytes(data))
        refused = kv("snapshot", "restore", str(damaged), "--id", "1", "--peers", new.peers_for(1),
                     "--data-dir", str(new.data_dir(1)))
        assert refused.returncode == 1
        assert "SHA-256 does not match" in one_error_line(refused)
        truncated = tmp_path / "backups" / "truncated.kvbak"
        truncated.write_bytes(backup_file.read_bytes()[:-1000])
        refused = kv("snapshot", "restore", str(truncated), "--id", "1", "--peers", new.peers_for(1),
                     "--data-dir", str(new.data_dir(1)))
        assert refused.returncode == 1 and "truncated" in one_error_line(refused)
        assert not any(new.root.iterdir()), "a refused restore makes nothing"

        # Restore each node of the new cluster (new ports) and start them with the line restore printed.
        cluster_ids = set()
        for node_id in new.ids:
            restored = kv("-w", "json", "snapshot", "restore", str(backup_file), "--id", str(node_id),
                          "--peers", new.peers_for(node_id), "--data-dir", str(new.data_dir(node_id)))
            assert restored.returncode == 0, restored.stderr
            made = json.loads(restored.stdout)
            assert made["slot"] == facts["slot"] and made["old_cluster_id"] == "kv"
            assert made["serve"].endswith(f"--data-dir {new.data_dir(node_id)} --cluster-id {made['cluster_id']}")
            cluster_ids.add(made["cluster_id"])
        assert len(cluster_ids) == 1 and "kv" not in cluster_ids
        cluster_id = cluster_ids.pop()
        again = kv("snapshot", "restore", str(backup_file), "--id", "1", "--peers", new.peers_for(1),
                   "--data-dir", str(new.data_dir(1)))
        assert again.returncode == 1 and "is not empty" in one_error_line(again)

        new.extra_args = ["--cluster-id", cluster_id]
        new.start_all()
        await new.wait_leader(deadline_s=60)
        statuses = await new.wait_converged()
        for node_status in statuses.values():
            assert node_status["cluster_id"] == cluster_id
            assert node_status["snapshot_slot"] == facts["slot"]
            assert node_status["config"]["voters"] == [1, 2, 3] and node_status["config"]["epoch"] == 0
        assert len({s["incarnation"] for s in statuses.values()}) == 3

        async with connect(new.endpoints, timeout=15) as client:
            held = dict(await client.list(""))
            for key, value in {**expected, **acked_before}.items():
                assert held.get(key) == value, (f"acknowledged {key!r} = {value!r} before the save; "
                                                f"restored {held.get(key)!r}")
            assert "k/0008" not in held
            for key, value in held.items():  # nothing nobody wrote
                assert {**expected, **acked_before, **acked_during}.get(key) == value, (key, value)
            await client.put("after/restore", "yes")
            assert await client.get("after/restore") == "yes"

        listed = kv("-w", "json", "member", "list", endpoints=new.endpoints)
        assert listed.returncode == 0, listed.stderr
        members = json.loads(listed.stdout)
        assert members["epoch"] == 0
        assert sorted((m["id"], m["role"], m["address"]) for m in members["members"]) == [
            (i, "voter", new.endpoint(i)) for i in new.ids]
    finally:
        old.close()
        new.close()


async def test_save_refusals_are_one_line_and_leave_no_file(tmp_path):
    cluster = NemesisCluster(tmp_path / "c")
    cluster.root.mkdir()
    try:
        cluster.start_all()
        await cluster.wait_leader()
        no_dir = tmp_path / "nowhere" / "b.kvbak"
        refused = kv("snapshot", "save", str(no_dir), endpoints=cluster.endpoints)
        assert refused.returncode == 2 and "there is no directory" in one_error_line(refused)  # (as kv dump's)
        assert not no_dir.parent.exists()
        cluster.kill_all_at_once()
        target = tmp_path / "b.kvbak"
        down = kv("--command-timeout", "2", "snapshot", "save", str(target), endpoints=cluster.endpoints)
        assert down.returncode == 1, down.stderr
        one_error_line(down)
        assert not target.exists() and not (tmp_path / "b.kvbak.part").exists()
    finally:
        cluster.close()
