"""``kv certs init|node|client``: the certificates of a cluster that serves mutual TLS (kvstore.tls).

Made with the ``cryptography`` package (no openssl command): a CA of the cluster, one certificate per
node and certificates for clients, every key an ECDSA P-256 key in its own file of mode 0600. Nothing is
ever overwritten: a command whose files exist (any of them) writes none and fails.

What a certificate says (kvstore.tls checks it):

* ``ca.pem``: the cluster's CA (CA:true, path length 0), valid ``CA_DAYS``;
* ``node-N.pem``: common name ``node-N``; subject alternative names 127.0.0.1, localhost, the ``--hosts``
  and the URI ``urn:kv:node:N``, which is what lets it act as member N and nothing else; extended key
  usage serverAuth and clientAuth (it serves its port and dials its peers);
* ``NAME.pem`` (``kv certs client``, and ``admin.pem`` from ``init``): common name NAME, clientAuth only,
  so it can never serve as a node; the access rules (``kv serve --acl``) name it by NAME.
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import OperationFailed, Settings, UsageProblem, reporting_errors
from .output import echo

if TYPE_CHECKING:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

certs_app = typer.Typer(
    help="Make the certificates of a TLS cluster: a CA, node certificates, client certificates.\n\n"
    "Example: kv certs init ./pki --nodes 3 --hosts db1.example.com,db2.example.com; kv certs client ./pki reader",
    no_args_is_help=True,
    rich_markup_mode=None,
)

CA_DAYS = 3650
LEAF_DAYS = 825
NODES_MAX = 255
NODE_URI_PREFIX = "urn:kv:node:"  # kvstore.tls.NODE_URI_PREFIX (a test checks they agree)
ADMIN_NAME = "admin"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9*]([A-Za-z0-9.*-]{0,252})")


@dataclass
class Authority:
    """The cluster's CA: its certificate and private key (``cryptography`` objects)."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @classmethod
    def new(cls, *, days: int = CA_DAYS, name: str = "kv cluster CA") -> Authority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        from datetime import timedelta  # (here, not at the top: kv --help imports this module)

        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> Authority:
        """The CA in ``directory`` (ca.pem, ca.key); OperationFailed if it is missing or unreadable."""
        import typing

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

        try:
            cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
            key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise OperationFailed(f"cannot read the CA in {directory} (ca.pem, ca.key; made by kv certs init): "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
        if not isinstance(key, typing.get_args(CertificateIssuerPrivateKeyTypes)):
            # (an X25519 or DH key, say: it cannot sign, and signing would fail later with a TypeError)
            raise OperationFailed(f"{directory / 'ca.key'} is a {type(key).__name__}, which cannot sign certificates")
        return cls(cert, key)

    def issue(self, common_name: str, *, node_id: int | None = None, hosts: Iterable[str] = (),
              days: int = LEAF_DAYS, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
        """A new (certificate, key) signed by this CA: a node certificate when ``node_id`` is given (the
        names 127.0.0.1, localhost, ``hosts`` and its URI; serverAuth and clientAuth), else a client
        certificate (clientAuth only). ``not_before``/``not_after`` override the validity (tests)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        from datetime import timedelta  # (here, not at the top: kv --help imports this module)

        now = _now()
        start = not_before or now - timedelta(minutes=5)
        end = not_after or now + timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if node_id is not None:
            names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                             x509.DNSName("localhost")]
            for host in hosts:
                name: x509.GeneralName
                try:
                    name = x509.IPAddress(ipaddress.ip_address(host))
                except ValueError:
                    name = x509.DNSName(host)
                if name not in names:
                    names.append(name)
            names.append(x509.UniformResourceIdentifier(f"{NODE_URI_PREFIX}{node_id}"))
            builder = (builder
                       .add_extension(x509.SubjectAlternativeName(names), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def _now() -> datetime.datetime:
    import datetime

    return datetime.datetime.now(datetime.UTC)


def _pem_cert(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _refuse_existing(paths: list[Path]) -> None:
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing:
        raise OperationFailed(f"refusing to overwrite {', '.join(existing)}; move them away first")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) with ``mode`` from the start, write, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_pairs(directory: Path,
                pairs: Sequence[tuple[str, x509.Certificate, CertificateIssuerPrivateKeyTypes]]) -> list[Path]:
    """Write ``(stem, cert, key)`` as ``stem.pem`` (0644) and ``stem.key`` (0600) in ``directory``; all
    or nothing as far as existing files go (OperationFailed before anything is written)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}{ext}" for stem, _, _ in pairs for ext in (".pem", ".key")]
    _refuse_existing(paths)
    try:
        for stem, cert, key in pairs:
            _write_new(directory / f"{stem}.key", _pem_key(key), 0o600)
            _write_new(directory / f"{stem}.pem", _pem_cert(cert), 0o644)
    except FileExistsError as exc:  # made meanwhile by someone else
        raise OperationFailed(f"refusing to overwrite {exc.filename}") from None
    return paths


def check_hosts(hosts: Iterable[str]) -> list[str]:
    out = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOST.fullmatch(host):
                raise UsageProblem(f"--hosts: {host!r} is neither an IP address nor a DNS name") from None
        out.append(host)
    return out


def check_client_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageProblem(f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                           "letter or digit")
    if name == "ca" or re.fullmatch(r"node-\d+", name):
        raise UsageProblem(f"client name {name!r} is taken by the CA or a node certificate's files")
    return name


def init_dir(directory: Path, *, nodes: int = 3, hosts: Iterable[str] = (), days: int = LEAF_DAYS) -> list[Path]:
    """``kv certs init``: a new CA, ``nodes`` node certificates and the ``admin`` client certificate."""
    hosts = list(hosts)
    stems = ["ca"] + [f"node-{i}" for i in range(1, nodes + 1)] + [ADMIN_NAME]
    _refuse_existing([directory / f"{s}{ext}" for s in stems for ext in (".pem", ".key")])
    ca = Authority.new()
    pairs: list[tuple[str, x509.Certificate, CertificateIssuerPrivateKeyTypes]] = [("ca", ca.cert, ca.key)]
    for i in range(1, nodes + 1):
        pairs.append((f"node-{i}", *ca.issue(f"node-{i}", node_id=i, hosts=hosts, days=days)))
    pairs.append((ADMIN_NAME, *ca.issue(ADMIN_NAME, days=days)))
    return write_pairs(directory, pairs)


def add_node(directory: Path, node_id: int, *, hosts: Iterable[str] = (), days: int = LEAF_DAYS) -> list[Path]:
    """``kv certs node``: node ``node_id``'s certificate, signed by the CA in ``directory``."""
    ca = Authority.load(directory)
    return write_pairs(directory, [(f"node-{node_id}", *ca.issue(f"node-{node_id}", node_id=node_id,
                                                               hosts=list(hosts), days=days))])


def add_client(directory: Path, name: str, *, days: int = LEAF_DAYS) -> list[Path]:
    """``kv certs client``: a client certificate of common name ``name``, signed by the CA in ``directory``."""
    ca = Authority.load(directory)
    return write_pairs(directory, [(name, *ca.issue(name, days=days))])


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


DaysOption = Annotated[int, typer.Option("--days", min=1, max=36500, help="Validity of the certificates made.")]
HostsOption = Annotated[str | None, typer.Option(
    "--hosts", help="Comma list of more names (DNS names or IP addresses) the node certificates carry, besides "
                    "127.0.0.1 and localhost: the addresses clients and peers dial.")]


@certs_app.command("init", epilog="Example: kv certs init /etc/kv/pki --nodes 3 --hosts 10.0.0.1,10.0.0.2,10.0.0.3")
def init_command(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Where to write them (made if missing).")],
    nodes: Annotated[int, typer.Option("--nodes", min=1, max=NODES_MAX, help="Node certificates 1..N.")] = 3,
    hosts: HostsOption = None,
    days: DaysOption = LEAF_DAYS,
) -> None:
    """Write a new CA (ca.pem, ca.key), node-N.pem/.key for N = 1..nodes and admin.pem/.key. Keys are mode
    0600; nothing is overwritten."""
    with reporting_errors(_settings(ctx)):
        host_list = check_hosts((hosts or "").split(","))
        paths = init_dir(directory, nodes=nodes, hosts=host_list, days=days)
        for path in paths:
            echo(str(path))


@certs_app.command("node", epilog="Example: kv certs node /etc/kv/pki 4 --hosts 10.0.0.4")
def node_command(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="The directory of the CA (ca.pem, ca.key).")],
    node_id: Annotated[int, typer.Argument(min=1, help="The member id the certificate names.")],
    hosts: HostsOption = None,
    days: DaysOption = LEAF_DAYS,
) -> None:
    """Add node-ID.pem and node-ID.key (a new member, or a renewal once the old files are moved away)."""
    with reporting_errors(_settings(ctx)):
        host_list = check_hosts((hosts or "").split(","))
        for path in add_node(directory, node_id, hosts=host_list, days=days):
            echo(str(path))


@certs_app.command("client", epilog="Example: kv certs client /etc/kv/pki reader")
def client_command(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="The directory of the CA (ca.pem, ca.key).")],
    name: Annotated[str, typer.Argument(help="The certificate's common name: the name the access rules use.")],
    days: DaysOption = LEAF_DAYS,
) -> None:
    """Add NAME.pem and NAME.key: a client certificate of common name NAME."""
    with reporting_errors(_settings(ctx)):
        check_client_name(name)
        for path in add_client(directory, name, days=days):
            echo(str(path))

