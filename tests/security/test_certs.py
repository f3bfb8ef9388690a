"""``kv certs`` and the TLS options of ``kv`` and ``kv serve``, in-process (typer's CliRunner), no server.

Checked: ``init`` writes the CA, node-1..N and admin, keys mode 0600, each certificate signed by the
CA and saying what ``kvstore.tls`` relies on (a node's URI name ``urn:kv:node:N`` and its hosts,
serverAuth+clientAuth; a client's common name and clientAuth only); nothing is ever overwritten (the
files stay byte for byte); ``client`` and ``node`` add to an existing CA; bad names and hosts are usage
errors (exit 2). The client's ``--cacert/--cert/--key`` (and KV_* variables) go together or not at all,
and move to the front when typed after the command; ``kv serve`` refuses unusable TLS files and ACLs
before starting (exit 2); ``ServerOptions`` refuses half a TLS configuration.
"""
from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from kv_cli import certs
from kv_cli.main import app, hoist_global_options
from kvstore import tls, tlsfiles
from kvstore.server import ServerOptions


def kv(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env={"KV_CACERT": None, "KV_CERT": None, "KV_KEY": None,
                                                    "KV_ENDPOINTS": None, **(env or {})})


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def usages(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_init_writes_a_ca_nodes_and_admin_with_private_keys(tmp_path):
    d = tmp_path / "pki"
    result = kv("certs", "init", str(d), "--nodes", "2", "--hosts", "db1.example.com,10.1.2.3")
    assert result.exit_code == 0, result.output
    stems = ["ca", "node-1", "node-2", "admin"]
    assert sorted(p.name for p in d.iterdir()) == sorted(f"{s}{e}" for s in stems for e in (".pem", ".key"))
    for stem in stems:
        assert stat.S_IMODE((d / f"{stem}.key").stat().st_mode) == 0o600
    ca = load(d / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for n in (1, 2):
        cert = load(d / f"node-{n}.pem")
        cert.verify_directly_issued_by(ca)
        assert common_name(cert) == f"node-{n}"
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [f"{tls.NODE_URI_PREFIX}{n}"]
        assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "db1.example.com"}
        assert set(names.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                                  ipaddress.ip_address("10.1.2.3")}
        assert usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    admin = load(d / "admin.pem")
    admin.verify_directly_issued_by(ca)
    assert common_name(admin) == "admin" and usages(admin) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(x509.ExtensionNotFound):
        admin.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # the files work together as kvstore.tls loads them
    tls.server_context(tls.TlsFiles(str(d / "ca.pem"), str(d / "node-1.pem"), str(d / "node-1.key")))
    tls.client_context(tls.TlsFiles(str(d / "ca.pem"), str(d / "admin.pem"), str(d / "admin.key")))


def test_nothing_is_ever_overwritten(tmp_path):
    d = tmp_path / "pki"
    assert kv("certs", "init", str(d), "--nodes", "1").exit_code == 0
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    again = kv("certs", "init", str(d), "--nodes", "3")
    assert again.exit_code == 1 and "refusing to overwrite" in again.output
    assert kv("certs", "client", str(d), "admin").exit_code == 1
    assert kv("certs", "node", str(d), "1").exit_code == 1
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    (d / "node-1.pem").unlink()  # half a pair: still refused, the key is not replaced
    assert kv("certs", "node", str(d), "1").exit_code == 1
    assert (d / "node-1.key").read_bytes() == before["node-1.key"]


def test_client_and_node_add_to_an_existing_ca(tmp_path):
    d = tmp_path / "pki"
    assert kv("certs", "init", str(d), "--nodes", "1").exit_code == 0
    assert kv("certs", "client", str(d), "reader").exit_code == 0
    assert kv("certs", "node", str(d), "4", "--hosts", "db4").exit_code == 0
    ca = load(d / "ca.pem")
    reader, node4 = load(d / "reader.pem"), load(d / "node-4.pem")
    reader.verify_directly_issued_by(ca)
    node4.verify_directly_issued_by(ca)
    assert common_name(reader) == "reader" and usages(reader) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    names = node4.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{tls.NODE_URI_PREFIX}4" in names.get_values_for_type(x509.UniformResourceIdentifier)
    assert stat.S_IMODE((d / "reader.key").stat().st_mode) == 0o600
    missing = kv("certs", "client", str(tmp_path / "nowhere"), "reader")
    assert missing.exit_code == 1 and "cannot read the CA" in missing.output


@pytest.mark.parametrize("args", [
    ["client", "{d}", "node-3"], ["client", "{d}", "ca"], ["client", "{d}", "a b"], ["client", "{d}", "../x"],
    ["init", "{d}/other", "--hosts", "bad host"], ["init", "{d}/other", "--nodes", "0"],
], ids=["node-name", "ca-name", "space", "path", "bad-host", "no-nodes"])
def test_bad_names_and_hosts_are_usage_errors(tmp_path, args):
    d = tmp_path / "pki"
    assert kv("certs", "init", str(d), "--nodes", "1").exit_code == 0
    result = kv("certs", *[a.format(d=d) for a in args])
    assert result.exit_code == 2, result.output
    assert not (d / "other").exists()


def test_the_node_uri_is_the_one_kvstore_checks():
    assert certs.NODE_URI_PREFIX == tls.NODE_URI_PREFIX


def test_client_tls_options_go_together(tmp_path):
    d = tmp_path / "pki"
    certs.init_dir(d, nodes=1)
    half = kv("--endpoints", "127.0.0.1:1", "--cacert", str(d / "ca.pem"), "get", "k")
    assert half.exit_code == 2 and "--cert" in half.output and "--key" in half.output
    env = {"KV_CACERT": str(d / "ca.pem"), "KV_CERT": str(d / "admin.pem"), "KV_KEY": str(d / "nope.key")}
    missing = kv("--endpoints", "127.0.0.1:1", "get", "k", env=env)
    assert missing.exit_code == 2 and "nope.key" in missing.output
    assert hoist_global_options(["get", "k", "--cacert", "a", "--cert=b", "--key", "c"]) == [
        "--cacert", "a", "--cert=b", "--key", "c", "get", "k"]


def test_serve_refuses_unusable_tls_files_and_acls_before_starting(tmp_path):
    d = tmp_path / "pki"
    certs.init_dir(d, nodes=2)
    acl = tmp_path / "acl.toml"
    acl.write_text('[clients.admin]\nreadwrite = [""]\n')
    base = ["serve", "--id", "1", "--peers", "1=127.0.0.1:1", "--data-dir", str(tmp_path / "data")]
    good = ["--cacert", str(d / "ca.pem"), "--cert", str(d / "node-1.pem"), "--key", str(d / "node-1.key")]
    cases = {
        "acl without tls": ["--acl", str(acl)],
        "half": ["--cacert", str(d / "ca.pem"), "--cert", str(d / "node-1.pem")],
        "key of another cert": [*good[:4], "--key", str(d / "node-2.key")],
        "missing ca": ["--cacert", str(d / "missing.pem"), *good[2:]],
        "bad acl": [*good, "--acl", str(d / "ca.pem")],
        "another node's certificate": ["--cacert", str(d / "ca.pem"), "--cert", str(d / "node-2.pem"),
                                       "--key", str(d / "node-2.key")],
        "a client's certificate": ["--cacert", str(d / "ca.pem"), "--cert", str(d / "admin.pem"),
                                   "--key", str(d / "admin.key")],
    }
    for what, extra in cases.items():
        result = kv(*base, *extra)
        assert result.exit_code == 2, (what, result.output)
    assert not (tmp_path / "data").exists()
    other = kv(*base, *cases["another node's certificate"]).output
    assert f"{d / 'node-2.pem'} is node 2's (urn:kv:node:2), not node 1's" in other, other
    assert "kv certs node DIR 1" in other
    assert "is not a node certificate" in kv(*base, *cases["a client's certificate"]).output


def test_a_node_refuses_a_certificate_that_is_not_its_own_at_start_and_on_reload(tmp_path):
    """The library's check too (``Node`` builds its transport with ``tls.transport_for(options, node_id)``):
    node 1 with node 2's files is a ``TlsError``; a reload (SIGHUP) that finds node 2's certificate in node
    1's files is refused and the contexts in use are kept."""
    d = tmp_path / "pki"
    certs.init_dir(d, nodes=2)
    assert tlsfiles.certificate_node_id(str(d / "node-2.pem")) == 2
    assert tlsfiles.certificate_node_id(str(d / "admin.pem")) is None
    with pytest.raises(tls.TlsError, match="cannot read the certificate"):
        tlsfiles.certificate_node_id(str(d / "node-2.key"))
    options = ServerOptions(cacert=str(d / "ca.pem"), cert=str(d / "node-2.pem"), key=str(d / "node-2.key"))
    with pytest.raises(tls.TlsError, match="is node 2's"):
        tls.transport_for(options, 1)
    assert tls.transport_for(options, 2) is not None
    assert tls.transport_for(options) is not None  # a client's transport names no node
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("node-1.pem", "node-1.key"):
        (mine / name).write_bytes((d / name).read_bytes())
    files = tls.TlsFiles(str(d / "ca.pem"), str(mine / "node-1.pem"), str(mine / "node-1.key"))
    transport = tls.TlsTransport(files, node_id=1)
    in_use = transport.server_context, transport.client_context
    (mine / "node-1.pem").write_bytes((d / "node-2.pem").read_bytes())
    (mine / "node-1.key").write_bytes((d / "node-2.key").read_bytes())
    with pytest.raises(tls.TlsError, match="not node 1's"):
        transport.reload()
    assert (transport.server_context, transport.client_context) == in_use


def test_server_options_refuse_half_a_tls_configuration():
    with pytest.raises(ValueError):
        ServerOptions(cacert="a", cert="b")
    with pytest.raises(ValueError):
        ServerOptions(acl="rules.toml")
    assert ServerOptions(cacert="a", cert="b", key="c", acl="d").acl == "d"


def test_a_node_refuses_an_expired_or_not_yet_valid_certificate_at_start_and_on_reload(tmp_path):
    """QA: a node started with an expired certificate, or took one on SIGHUP, without a word, and every
    peer and client then refused it (the client's hint blamed --cacert). Now it is a ``TlsError`` that
    names the date, at start (``kv serve`` exits 2 with it) and on reload (the contexts in use are kept)."""
    import datetime

    from .pki import Pki

    pki = Pki(tmp_path / "pki", nodes=1)
    expired = pki.expired("node-1-expired", "node-1", node_id=1)
    options = ServerOptions(cacert=expired["cacert"], cert=expired["cert"], key=expired["key"])
    with pytest.raises(tls.TlsError, match=r"node-1-expired.pem expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC"):
        tls.transport_for(options, 1)
    now = datetime.datetime.now(datetime.UTC)
    cert, key = certs.Authority.load(pki.dir).issue("node-1", node_id=1, not_before=now + datetime.timedelta(days=2),
                                                    not_after=now + datetime.timedelta(days=30))
    certs.write_pairs(pki.dir, [("node-1-future", cert, key)])
    with pytest.raises(tls.TlsError, match="is not valid before .* UTC \\(is this machine's clock right\\?\\)"):
        tlsfiles.check_node_certificate(str(pki.dir / "node-1-future.pem"), 1)

    mine = tmp_path / "mine"
    mine.mkdir()
    for suffix in ("pem", "key"):
        (mine / f"node-1.{suffix}").write_bytes((pki.dir / f"node-1.{suffix}").read_bytes())
    transport = tls.TlsTransport(tls.TlsFiles(pki.cacert, str(mine / "node-1.pem"), str(mine / "node-1.key")),
                                 node_id=1)
    in_use = transport.server_context, transport.client_context
    for suffix in ("pem", "key"):
        (mine / f"node-1.{suffix}").write_bytes((pki.dir / f"node-1-expired.{suffix}").read_bytes())
    with pytest.raises(tls.TlsError, match="expired on"):
        transport.reload()
    assert (transport.server_context, transport.client_context) == in_use
    started = CliRunner().invoke(app, ["serve", "--id", "1", "--peers", "1=127.0.0.1:1", "--data-dir",
                                       str(tmp_path / "data"), "--cacert", expired["cacert"], "--cert",
                                       expired["cert"], "--key", expired["key"]])
    assert started.exit_code == 2 and "expired on" in started.output, started.output
    assert not (tmp_path / "data").exists()
