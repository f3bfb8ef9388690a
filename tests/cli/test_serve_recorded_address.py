"""``kv serve --peers`` on a founded data directory must give the node the address the directory recorded.

QA: a node restarted with ``--peers`` naming another port for itself listened there, where no member
dialed it, said nothing, and stayed at its decided slot for good (its reads: "key not found"). The
members dial the address the cluster's configuration holds, which ``--peers`` does not change on a
founded directory; so ``kv serve`` refuses the mismatch before it touches the directory (exit 2, one
line), and takes the same address under another name.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.common import UsageProblem
from cli.serve import _check_own_address

REPO = Path(__file__).resolve().parents[2]


def _founded(tmp_path: Path, node_id: int = 3, address: str = "127.0.0.1:7742") -> Path:
    """A data directory's record of its cluster, as meta.json holds it once the node founded it."""
    data = tmp_path / "data"
    data.mkdir()
    addresses = {"1": "127.0.0.1:7740", "2": "127.0.0.1:7741", str(node_id): address}
    (data / "meta.json").write_text(json.dumps({"node_id": node_id, "cluster_id": "kv-test",
                                                "config": {"addresses": addresses}}))
    return data


def test_kv_serve_refuses_another_address_for_the_node_than_its_directory_recorded(tmp_path):
    data = _founded(tmp_path)
    before = sorted(p.name for p in data.iterdir())
    proc = subprocess.run([sys.executable, "-m", "kv_cli", "serve", "--id", "3", "--peers",
                           "1=127.0.0.1:7740,2=127.0.0.1:7741,3=127.0.0.1:7743", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"Error: data dir {data} records node 3's address as 127.0.0.1:7742"), lines
    assert "--peers gives 127.0.0.1:7743" in lines[0], lines
    assert sorted(p.name for p in data.iterdir()) == before  # nothing touched


@pytest.mark.parametrize("given", ["127.0.0.1:7742", "localhost:7742"])
def test_the_recorded_address_or_another_name_for_it_is_taken(tmp_path, given):
    data = _founded(tmp_path)
    host, port = given.rsplit(":", 1)
    _check_own_address(str(data), 3, {1: ("127.0.0.1", 7740), 3: (host, int(port))})


@pytest.mark.parametrize("given", [("127.0.0.1", 7743), ("127.0.0.2", 7742), ("localhost", 7743)])
def test_another_port_or_host_is_refused(tmp_path, given):
    data = _founded(tmp_path)
    with pytest.raises(UsageProblem, match="records node 3's address as 127.0.0.1:7742"):
        _check_own_address(str(data), 3, {3: given})


def test_a_new_directory_or_another_node_s_is_not_checked_here(tmp_path):
    _check_own_address(str(tmp_path / "new"), 3, {3: ("127.0.0.1", 7743)})  # a new directory: anything goes
    data = _founded(tmp_path, node_id=2)
    _check_own_address(str(data), 3, {3: ("127.0.0.1", 9999)})  # another node's: refused elsewhere, by its owner


def test_kv_serve_refuses_two_peers_at_one_address_under_two_names(tmp_path):
    """QA: ``--peers 1=127.0.0.1:7735,2=localhost:7735`` was taken (the same spelling twice is refused), and
    the node then logged that it "refuses a link from a node that says it is node 1"."""
    proc = subprocess.run([sys.executable, "-m", "kv_cli", "serve", "--id", "1", "--peers",
                           "1=127.0.0.1:7735,2=localhost:7735", "--data-dir", str(tmp_path / "new")],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "Error: invalid --peers '1=127.0.0.1:7735,2=localhost:7735': nodes 1 and 2 have the same address under two "
        "names (127.0.0.1:7735 and localhost:7735); give each node its own host:port"], proc.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("other", ["localhost", "0.0.0.0", "[::ffff:127.0.0.1]", "127.1"])
def test_other_spellings_of_one_address_are_refused(other):
    from cli.serve import _check_distinct_addresses
    from kvstore.endpoints import parse_peers

    text = f"1=127.0.0.1:7735,2={other}:7735"
    with pytest.raises(UsageProblem, match="nodes 1 and 2 have the same address under two names"):
        _check_distinct_addresses(text, parse_peers(text))


def test_distinct_ports_or_hosts_are_taken(tmp_path):
    from cli.serve import _check_distinct_addresses

    _check_distinct_addresses("", {1: ("127.0.0.1", 7735), 2: ("localhost", 7736), 3: ("127.0.0.2", 7735)})
    _check_distinct_addresses("", {1: ("no-such-host.invalid", 7735), 2: ("127.0.0.1", 7735)})
