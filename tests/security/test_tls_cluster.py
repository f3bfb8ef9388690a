"""Mutual TLS and access rules on a real 3-process cluster (``kv serve --cacert --cert --key --acl``).

How: one cluster for the module, made by ``kv_cli.certs`` (what ``kv certs init`` runs) with rules for
``admin`` (readwrite ""), ``reader`` (read "app/") and ``writer`` (readwrite "app/"); ``stranger`` has a
certificate of the CA and no rule. Raw connections (``raw.exchange``: plain TCP, or TLS with chosen
files) send exact frames; the normal client and the ``kv`` command do the rest. Waiting is polling
against deadlines; nothing asserts on timings. Checked:

* plaintext clients and peers are refused before TLS: one plaintext ``protocol`` refusal addressed to
  their first request, which both clients and ``kv`` report at once (not at their 60 s deadline);
  nothing they sent is written, a fake peer's heartbeat does not depose the leader;
* a client of a foreign CA (either way round) and a client with an expired certificate are refused;
* the reader reads its prefix (keys and sub-ranges) and nothing else, and cannot write; a range read
  or a prefix delete wider than a grant is ``permission_denied``, as are membership and backups without
  readwrite on ""; a name without a rule gets nothing, not even status; the CLI says it in one line,
  exit 1;
* a peer certificate speaks only for its own member id: node 2's certificate claiming node 3, a client
  certificate claiming a member, a foreign CA's node certificate and an expired node certificate are all
  refused, the leader and its ballot unchanged;
* SIGHUP reads the ACL again (a bad file is refused and the old rules kept) and the certificates: a new
  CA added to the bundle is trusted after it, and a node's certificate is replaced by one of the new CA.

A second cluster shows that a node started with another member's certificate cannot vote: with the
real node 2 down, nodes 1 and 3 are not a majority, writes stay unavailable, node 3 never learns a
decided slot and never leads; once node 2 is back the writes go through.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from kvstore import wire
from kvstore.client import KVError, RequestError, Unavailable, connect

from .cluster import TlsCluster
from .pki import Pki
from .raw import PUT_FRAME_ID, exchange, fake_peer_frames, put_frame, replies

pytestmark = pytest.mark.slow

ACL = """
[clients.admin]
readwrite = [""]

[clients.reader]
read = ["app/"]

[clients.writer]
readwrite = ["app/"]
"""

ACL_ROTATED = ACL.replace('[clients.reader]\nread = ["app/"]', '[clients.reader]\nreadwrite = ["app/"]') + """
[clients.admin2]
readwrite = [""]
"""


def kv_replies(data: bytes) -> list:
    """The kv frames in ``data``; [] when it is not kv frames at all (a TLS alert, say)."""
    try:
        return replies(data)
    except wire.WireError:
        return []


def poll(check, what: str, deadline_s: float = 15.0):
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (KVError, OSError) as exc:
            last = exc
        else:
            if result:
                return result
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {deadline_s}s (last error: {last!r})")


def replace_file(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.replace(temp, path)


def kv(files: dict[str, str], endpoints: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
    env.update(KV_ENDPOINTS=",".join(endpoints), KV_CACERT=files["cacert"], KV_CERT=files["cert"], KV_KEY=files["key"])
    return subprocess.run([sys.executable, "-m", "kv_cli", "--command-timeout", "5", *args], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def denied(call) -> str:
    with pytest.raises(RequestError) as caught:
        call()
    assert caught.value.code == wire.PERMISSION_DENIED, caught.value
    return str(caught.value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki") / "pki")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pki):
    root = tmp_path_factory.mktemp("tls-cluster")
    acl = root / "acl.toml"
    acl.write_text(ACL)
    c = TlsCluster(root, pki, acl=str(acl))
    try:
        c.start_all()
        c.wait_leader()
        with c.client() as admin:
            admin.put("app/a", "1")
            admin.put("app/b", "2")
            admin.put("other/x", "3")
        yield c
    finally:
        c.close()


def only_tls_refusal(received: bytes, request_id: int | None) -> bool:
    """``received`` is one refusal saying the node takes TLS only, addressed to ``request_id``."""
    got = kv_replies(received)
    return (len(got) == 1 and isinstance(got[0], wire.ErrorReply) and got[0].code == wire.PROTOCOL
            and got[0].refused and got[0].id == request_id and "takes TLS connections only" in got[0].message)


def test_plaintext_clients_and_peers_are_refused_and_nothing_is_written(cluster):
    leader = cluster.wait_leader()
    before = cluster.status(leader)
    refused_before = {i: cluster.status(i)["counters"].get("tls_plaintext_refused", 0) for i in cluster.ports}
    for node_id, port in cluster.ports.items():
        # A plaintext request gets one plaintext refusal, addressed to it, saying why: nothing else is read
        received, closed, name = exchange(port, put_frame("plain/k", "v"))
        assert closed and only_tls_refusal(received, PUT_FRAME_ID), f"node {node_id} answered {received!r}"
        received, closed, _ = exchange(port, fake_peer_frames(2 if node_id != 2 else 3))
        assert closed and only_tls_refusal(received, None), f"node {node_id} answered a plaintext peer: {received!r}"
        poll(lambda node_id=node_id:
             cluster.status(node_id)["counters"].get("tls_plaintext_refused", 0) >= refused_before[node_id] + 2,
             f"node {node_id}'s count of plaintext connections refused")
        poll(lambda node_id=node_id: "does not speak TLS and node" in cluster.log_text(node_id),
             f"node {node_id}'s log line about a plaintext connection")
    from kvstore.client import Client

    # Both clients give up at once, with the reason, not at their deadline (60 s) saying "no answer"
    with Client(cluster.endpoints, timeout=60) as plain:
        with pytest.raises(RequestError) as refused:
            plain.put("plain/client", "v")
    assert refused.value.code == wire.PROTOCOL and "takes TLS connections only" in str(refused.value)

    async def put_async() -> RequestError:
        async with connect(cluster.endpoints, timeout=60) as kv:
            with pytest.raises(RequestError) as refused:
                await kv.put("plain/async", "v")
        return refused.value

    refused_async = trio.run(put_async)
    assert refused_async.code == wire.PROTOCOL and "takes TLS connections only" in str(refused_async)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
    cli = subprocess.run([sys.executable, "-m", "kv_cli", "--endpoints", ",".join(cluster.endpoints),
                          "--command-timeout", "60", "put", "plain/cli", "v"], env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert cli.returncode == 1 and "takes TLS connections only" in cli.stderr and "Traceback" not in cli.stderr, cli
    with cluster.client() as admin:
        assert admin.list("plain/") == []
    after = cluster.status(leader)
    assert after["is_leader"] and after["ballot"] == before["ballot"], "a plaintext peer moved the leader's ballot"


def test_clients_of_a_foreign_ca_or_with_expired_certificates_are_refused(cluster, pki, tmp_path):
    foreign = Pki(tmp_path / "foreign")
    ours = pki.files("admin")
    cases = {
        "foreign CA and certificate": foreign.files("admin"),
        "our CA, a foreign certificate": {**foreign.files("admin"), "cacert": ours["cacert"]},
        "an expired certificate named admin": pki.expired("admin-expired", "admin"),
    }
    for what, files in cases.items():
        with cluster.client(files=files, timeout=1) as client:
            with pytest.raises(Unavailable):
                client.status(cluster.endpoint(1))
        # A certificate error does not mend by retrying: both clients give up once every node refused the
        # handshake (not at the deadline, 60 s here, which would say "no answer" instead), and they know
        # the write was not applied (the node read nothing of it).
        with cluster.client(files=files, timeout=60) as client:
            with pytest.raises(Unavailable) as refused:
                client.put(f"refused/{len(what)}", what)
        assert "the TLS handshake failed over a certificate with every node" in str(refused.value), what
        assert str(refused.value).endswith("the write was not applied") and not refused.value.outcome_unknown, what

        async def put_async(files=files, what=what) -> Unavailable:
            async with connect(cluster.endpoints, timeout=60, **files) as kv:
                with pytest.raises(Unavailable) as refused:
                    await kv.put(f"refused/async/{len(what)}", what)
            return refused.value

        refused_async = trio.run(put_async)
        assert "the TLS handshake failed over a certificate with every node" in str(refused_async), what
        assert str(refused_async).endswith("the write was not applied") and not refused_async.outcome_unknown, what
    assert any("certificate has expired" in cluster.log_text(i) for i in cluster.ports), "no node logged the expiry"
    with cluster.client() as admin:
        assert admin.list("refused/") == []


def test_a_reader_reads_its_prefix_and_nothing_else(cluster, pki):
    with cluster.client("reader") as reader:
        assert reader.get("app/a") == "1"
        assert reader.list("app/") == [("app/a", "1"), ("app/b", "2")]
        assert reader.list("app/b") == [("app/b", "2")]  # a sub-range of the grant
        assert reader.get("app/a", consistency="s") == "1"
        assert reader.status(cluster.endpoint(1))["id"] == 1
        message = denied(lambda: reader.get("other/x"))
        assert "reader" in message and "other/x" in message
        denied(lambda: reader.list(""))
        denied(lambda: reader.list("app"))  # wider than app/: it holds "apple" too
        denied(lambda: reader.list("ap", keys_only=True))
        denied(lambda: reader.put("app/a", "9"))
        denied(lambda: reader.cas("app/a", "1", "9"))
        denied(lambda: reader.delete("app/a"))
        denied(lambda: reader.delete_prefix("app/"))
        denied(lambda: reader.admin("member_list"))
        denied(lambda: reader.backup())
    with cluster.client() as admin:
        assert admin.list("app/") == [("app/a", "1"), ("app/b", "2")]
    ok = kv(pki.files("reader"), cluster.endpoints, "get", "app/a")
    assert ok.returncode == 0 and "1" in ok.stdout.split(), ok
    refused = kv(pki.files("reader"), cluster.endpoints, "get", "other/x")
    assert refused.returncode == 1, refused
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "permission denied" in lines[0] and "Traceback" not in refused.stderr, refused.stderr


def test_prefix_deletes_and_admin_commands_are_checked_over_their_whole_range(cluster, pki, tmp_path):
    with cluster.client("writer") as writer:
        writer.put("app/w1", "x")
        writer.put("app/w2", "y")
        assert writer.delete_prefix("app/w") == 2
        denied(lambda: writer.delete_prefix(""))
        denied(lambda: writer.delete_prefix("ap"))
        denied(lambda: writer.put("other/y", "v"))
        denied(lambda: writer.admin("member_list"))
    with cluster.client() as admin:
        assert admin.get("other/x") == "3" and admin.list("app/w") == []
        assert len(admin.admin("member_list")["members"]) == 3
    backup = tmp_path / "backup.kvbak"
    refused = kv(pki.files("writer"), cluster.endpoints, "snapshot", "save", str(backup))
    assert refused.returncode == 1 and "permission denied" in refused.stderr, refused
    assert not backup.exists()
    with cluster.client("stranger") as stranger:  # a certificate of the CA, no rule
        denied(lambda: stranger.status(cluster.endpoint(1)))
        denied(lambda: stranger.get("app/a"))
    with cluster.client(files=pki.files("node-1")) as node_cert:  # members may ask status, nothing more
        assert node_cert.status(cluster.endpoint(2))["id"] == 2
        denied(lambda: node_cert.get("app/a"))


def test_a_peer_certificate_speaks_only_for_its_own_member_id(cluster, pki, tmp_path):
    foreign = Pki(tmp_path / "foreign")
    leader = cluster.wait_leader()
    before = cluster.status(leader)
    refused_before = sum(cluster.status(i)["counters"].get("peers_refused_certificate", 0) for i in cluster.ports)
    for node_id, port in cluster.ports.items():
        claimed = 3 if node_id != 3 else 1
        received, closed, name = exchange(port, fake_peer_frames(claimed), files=pki.files("node-2"))
        got = kv_replies(received)
        assert closed and got and got[-1].code == wire.PROTOCOL, got
        assert f"the certificate of node 2 may not act as node {claimed}" in got[-1].message
        received, closed, _ = exchange(port, fake_peer_frames(2 if node_id != 2 else 1), files=pki.files("admin"))
        got = kv_replies(received)
        assert closed and got and "is not a node certificate" in got[-1].message, got
        # a foreign CA's node certificate (we trust the node: the node must refuse us)
        files = {**foreign.files("node-2"), "cacert": pki.cacert}
        received, closed, _ = exchange(port, fake_peer_frames(2 if node_id != 2 else 1), files=files)
        assert closed and not kv_replies(received)
    expired = pki.expired("node-2-expired", "node-2", node_id=2)
    received, closed, _ = exchange(cluster.ports[1], fake_peer_frames(2), files=expired)
    assert closed and not kv_replies(received)
    after = cluster.status(leader)
    assert after["is_leader"] and after["ballot"] == before["ballot"], "a refused peer moved the leader's ballot"
    refused_after = sum(cluster.status(i)["counters"].get("peers_refused_certificate", 0) for i in cluster.ports)
    assert refused_after - refused_before == 2 * len(cluster.ports)
    with cluster.client() as admin:
        admin.put("after-fake-peers", "ok")
        assert admin.get("after-fake-peers") == "ok"


def test_sighup_reloads_the_acl_and_the_certificates(cluster, pki, tmp_path):
    acl = Path(cluster.acl)
    with cluster.client("reader") as reader:
        denied(lambda: reader.put("app/r", "1"))
        replace_file(acl, ACL_ROTATED.encode())
        for node_id in cluster.ports:
            cluster.sighup(node_id)
        poll(lambda: reader.put("app/r", "1"), "the reader's write after the ACL reload")
        # A bad file: every node says so and keeps the rules it has.
        marks = {i: len(cluster.log_text(i)) for i in cluster.ports}
        replace_file(acl, b"[clients.reader\nreadwrite = 1")
        for node_id in cluster.ports:
            cluster.sighup(node_id)
        for node_id in cluster.ports:
            poll(lambda node_id=node_id: "reload refused" in cluster.log_text(node_id)[marks[node_id]:],
                 f"node {node_id}'s refusal")
        reader.put("app/r", "2")
        assert reader.get("app/r") == "2"
    replace_file(acl, ACL_ROTATED.encode())

    # A new CA: refused until the nodes' CA file holds it too (old + new: a bundle) and they reload.
    new = Pki(tmp_path / "new-ca")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(pki.cacert).read_bytes() + Path(new.cacert).read_bytes())
    admin2 = {**new.files("admin2"), "cacert": str(bundle)}
    with cluster.client(files=admin2, timeout=2) as client:
        with pytest.raises(Unavailable):
            client.put("rotated", "early")
    for node_id in cluster.ports:
        replace_file(cluster.tls_dir(node_id) / "ca.pem", bundle.read_bytes())
        cluster.sighup(node_id)
    with cluster.client(files=admin2) as client:
        poll(lambda: client.put("rotated", "1"), "a write with the new CA's certificate")
    # Node 1 gets a certificate of the new CA: a client that trusts only the new CA reaches it, and the
    # peers (bundle) keep talking to it.
    replace_file(cluster.tls_dir(1) / "node.key", (new.dir / "node-1.key").read_bytes())
    replace_file(cluster.tls_dir(1) / "node.pem", (new.dir / "node-1.pem").read_bytes())
    cluster.sighup(1)
    only_new = {**new.files("admin2")}
    with cluster.client(files=only_new, endpoints=[cluster.endpoint(1)], timeout=2) as client:
        poll(lambda: client.status(cluster.endpoint(1))["id"] == 1, "node 1 with its new certificate")
    with cluster.client(files=admin2) as client:
        client.put("rotated", "2")
        poll(lambda: len({(s["applied_slot"], s["state_hash"]) for s in client.cluster_status()
                          if s.get("reachable")}) == 1
             and all(s.get("reachable") for s in client.cluster_status()),
             "every node, node 1 with its new certificate, applied the same")


def test_a_node_with_another_members_certificate_cannot_vote(tmp_path, pki):
    c = TlsCluster(tmp_path, pki, cert_of={3: 2})  # node 3 runs with node 2's certificate
    try:
        c.start_all()
        leader = c.wait_leader(among=[1, 2])
        with c.client(endpoints=[c.endpoint(1), c.endpoint(2)]) as admin:
            admin.put("before", "1")
        c.kill(2)
        with c.client(endpoints=[c.endpoint(1), c.endpoint(3)], timeout=1.5) as client:
            with pytest.raises(Unavailable):
                client.put("during", "1")
        for node_id in (1, 3):
            status = c.status(node_id)
            assert status is not None and status["id"] == node_id
        s3 = c.status(3)
        assert not s3["is_leader"] and s3["decided_slot"] == 0, f"node 3 took part: {s3}"
        assert c.status(1)["counters"].get("peers_refused_certificate", 0) > 0
        c.start(2)
        with c.client(endpoints=[c.endpoint(1), c.endpoint(2)], timeout=10) as admin:
            poll(lambda: admin.put("after", "1"), "a write once the real node 2 is back", 20)
            assert admin.get("before") == "1" and admin.get("after") == "1"
            assert admin.get("during") in (None, "1")  # outcome unknown, never anything else
        s3 = c.status(3)
        assert not s3["is_leader"] and s3["decided_slot"] == 0, f"node 3 took part: {s3}"
        assert leader in (1, 2)
    finally:
        c.close()


async def test_the_dashboard_watches_a_tls_cluster(cluster, pki, tmp_path):
    """``kv dashboard`` against a TLS cluster: with the client's files (the global options, or the local
    cluster's admin certificate when it watches a ``kv cluster up --tls`` cluster) every node is
    reachable. Before, it dialed without TLS and every node showed as unreachable (QA)."""
    from kv_cli import dashboard as dash
    from kv_cli.common import Settings, write_state

    files = pki.files("admin")
    board = dash.Dashboard(cluster.endpoints, None, tls=files)
    await board.poll_once()
    with cluster.client() as admin:  # (earlier tests of this module may have left a node changed)
        expected = [s.get("reachable") for s in admin.cluster_status()]
    assert any(expected)
    assert [n.get("reachable") for n in board.nodes] == expected, board.nodes
    plain = dash.Dashboard(cluster.endpoints, None)
    await plain.poll_once()
    assert not any(n.get("reachable") for n in plain.nodes)  # what it did before: every node refused it

    given = Settings(endpoints_text=",".join(cluster.endpoints), **files)
    assert dash._watched_tls(given, tmp_path) == files
    write_state(tmp_path, {"nodes": [{"id": 1, "port": 1}], "endpoints": cluster.endpoints, "tls": files})
    assert dash._watched_tls(Settings(), tmp_path) == files  # the local cluster's admin certificate
    assert dash._watched_tls(Settings(endpoints_text=",".join(cluster.endpoints)), tmp_path) == {}


async def test_a_tls_client_of_a_plaintext_node_gives_up_at_once(pki, tmp_path):
    """A node without TLS reads a ClientHello as a bad frame: retrying will not mend that any more than a
    refused certificate, so both clients give up as soon as every node did it (QA: they retried for the
    whole timeout, 5 s, then said "no answer"), saying that no node serves TLS; a write was not applied."""
    from kvstore.oneshot import OneShotClient
    from kvstore.server import Node, ServerOptions

    from ..integration.harness import free_ports

    port = free_ports(1)[0]
    node = Node(1, {1: ("127.0.0.1", port)}, tmp_path / "data", ServerOptions(fsync=False))
    files = pki.files("admin")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)

        def blocking() -> str:
            with OneShotClient([f"127.0.0.1:{port}"], timeout=30, **files) as client, \
                    pytest.raises(Unavailable) as refused:
                client.put("k", "v")
            return str(refused.value)

        with trio.fail_after(5):  # not the 30 s timeout
            said = await trio.to_thread.run_sync(blocking)
        assert said.startswith("no node serves TLS") and said.endswith("the write was not applied"), said
        with trio.fail_after(5):
            async with connect([f"127.0.0.1:{port}"], timeout=30, **files) as kv:
                with pytest.raises(Unavailable, match="^no node serves TLS") as refused_async:
                    await kv.put("k", "v")
        assert not refused_async.value.outcome_unknown
        nursery.cancel_scope.cancel()


def _node_files(pki, node_id: int) -> dict[str, str]:
    return {"cacert": pki.cacert, "cert": str(pki.dir / f"node-{node_id}.pem"),
            "key": str(pki.dir / f"node-{node_id}.key")}


async def test_members_with_and_without_tls_log_why_their_links_fail(pki, tmp_path, caplog, monkeypatch):
    """Nodes 1 and 2 found a TLS cluster; node 2 is then restarted on its directory without ``--cert``.
    Each side's own log says why its link to the other fails: node 2 hears node 1's plaintext refusal (it
    takes TLS only: start this node with ``--cacert, --cert and --key``), node 1 that node 2 does not serve
    TLS, each once a minute although they redial every 0.1 s. Regression (QA): the node without TLS
    logged only "link to node 1 lost"; and the node with TLS logged each of the other's connections as a
    bad frame, ten a second."""
    import kvstore.peers
    from kvstore.server import Node, ServerOptions

    from ..integration.harness import free_ports

    monkeypatch.setattr(kvstore.peers, "_REFUSALS_HEARD", kvstore.tls.LogThrottle(60.0))
    ports = free_ports(2)
    members = {1: ("127.0.0.1", ports[0]), 2: ("127.0.0.1", ports[1])}
    node1 = Node(1, members, tmp_path / "n1", ServerOptions(fsync=False, **_node_files(pki, 1)))
    caplog.set_level("INFO", logger="kvstore")

    def said(node_id: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"node {node_id}: link to node")]

    async with trio.open_nursery() as nursery:
        await nursery.start(node1.run)
        node2 = Node(2, members, tmp_path / "n2", ServerOptions(fsync=False, **_node_files(pki, 2)))
        first_run, stopped = trio.CancelScope(), trio.Event()

        async def run_first() -> None:
            with first_run:
                await node2.run()
            stopped.set()

        nursery.start_soon(run_first)
        with trio.fail_after(20):
            while not (node1.replica.is_leader or node2.replica.is_leader):
                await trio.sleep(0.05)
        first_run.cancel()
        await stopped.wait()
        assert not said(1) and not said(2)
        without = Node(2, members, tmp_path / "n2", ServerOptions(fsync=False))
        nursery.start_soon(without.run)
        with trio.fail_after(20):
            while not (said(1) and said(2)):
                await trio.sleep(0.05)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    (from_2,) = said(2)
    assert from_2 == ("node 2: link to node 1 refused: node 1 takes TLS connections only: start this node with "
                      "--cacert, --cert and --key as the other members (docs/security.md)"), from_2
    (from_1,) = said(1)
    assert from_1.startswith(f"node 1: link to node 2 refused: the TLS handshake with 127.0.0.1:{ports[1]} failed: ")
    assert from_1.endswith("(the member does not serve TLS: was it started without --cacert, --cert and --key?)")
    assert without.counters["peer_links_refused"] >= 1
    bad_frames = [r for r in caplog.records if "bad frame" in r.getMessage()]
    assert len(bad_frames) <= 3, [r.getMessage() for r in bad_frames]  # once a second, not per connection


async def test_a_new_cluster_with_tls_on_one_side_only_says_why_it_waits(pki, tmp_path, caplog):
    """A new cluster does not found itself until every member answers: with TLS on node 1 only, each
    node's "waiting for node(s) ... to answer" line says what the other answered instead."""
    from kvstore.server import Node, ServerOptions

    from ..integration.harness import free_ports

    ports = free_ports(2)
    members = {1: ("127.0.0.1", ports[0]), 2: ("127.0.0.1", ports[1])}
    with_tls = Node(1, members, tmp_path / "n1", ServerOptions(fsync=False, **_node_files(pki, 1)))
    without = Node(2, members, tmp_path / "n2", ServerOptions(fsync=False))
    caplog.set_level("INFO", logger="kvstore")

    def waiting(node_id: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith(f"node {node_id}: waiting for node(s)")]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(with_tls.run)
        nursery.start_soon(without.run)
        with trio.fail_after(30):
            while not (waiting(1) and waiting(2)):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert "; node 1: node 1 takes TLS connections only" in waiting(2)[0], waiting(2)
    assert "; node 2: " in waiting(1)[0] and "WRONG_VERSION_NUMBER" in waiting(1)[0], waiting(1)
