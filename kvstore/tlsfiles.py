"""The TLS settings of a node and of its clients, without trio: the three PEM files, the SSL contexts made
from them, and who a certificate names. ``kvstore.tls`` (the streams, the listener, the handshakes)
and ``kvstore.oneshot`` (the blocking client of kv's one-shot commands, which must not import trio)
both use these, so the two sides of a connection are configured in one place.
"""
from __future__ import annotations

import os
import ssl
from typing import NamedTuple

__all__ = ["TlsError", "TlsFiles", "Principal", "client_context", "server_context", "NODE_URI_PREFIX",
           "certificate_node_id", "check_node_certificate", "node_id_of_uri"]

# A node certificate names its member id as this URI plus the id (a subject alternative name).
NODE_URI_PREFIX = "urn:kv:node:"


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used (missing, unreadable, not PEM, key mismatch)."""


class TlsFiles(NamedTuple):
    """The three PEM files of one side: the CA bundle that signs the others, our certificate, its key."""

    cacert: str
    cert: str
    key: str

    @classmethod
    def of(cls, cacert: str | os.PathLike[str] | None, cert: str | os.PathLike[str] | None,
           key: str | os.PathLike[str] | None) -> TlsFiles | None:
        """``TlsFiles`` from three paths, None from none; raises ``TlsError`` for some but not all."""
        given = [x for x in (cacert, cert, key) if x]
        if not given:
            return None
        if len(given) != 3:
            raise TlsError("TLS needs all three of the CA file, the certificate and its key (--cacert, --cert, --key)")
        return cls(str(cacert), str(cert), str(key))


class Principal(NamedTuple):
    """Who is on the other end of a finished handshake: the certificate's common name, and the member id
    it names when it is a node certificate (None for a client certificate)."""

    name: str
    node_id: int | None = None


def _context(purpose: ssl.Purpose, files: TlsFiles) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # no downgrade; TLS 1.3 only
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=files.cacert)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot use the CA file {files.cacert}: {exc}") from None
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot use the certificate {files.cert} with the key {files.key}: {exc}") from None
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The accepting side: TLS 1.3, a client certificate of the CA required."""
    ctx = _context(ssl.Purpose.CLIENT_AUTH, files)
    ctx.num_tickets = 0  # nobody resumes sessions here: no tickets to make, send and ignore
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The dialing side: TLS 1.3, the server's certificate of the CA and naming the host dialed."""
    ctx = _context(ssl.Purpose.SERVER_AUTH, files)
    ctx.check_hostname = True
    return ctx


def certificate_node_id(cert: str) -> int | None:
    """The member id the (first) certificate in the PEM file ``cert`` names (``urn:kv:node:N``), None if
    it names none (a client certificate). Raises ``TlsError`` if the file cannot be read as PEM."""
    from cryptography import x509  # (only a node with TLS pays for the import)

    try:
        with open(cert, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the certificate {cert}: {exc}") from None
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in names.get_values_for_type(x509.UniformResourceIdentifier):
        node_id = node_id_of_uri(uri)
        if node_id is not None:
            return node_id
    return None


def _check_valid_now(cert: str, remedy: str) -> None:
    """``TlsError`` if the (first) certificate in ``cert`` has expired or is not valid yet."""
    import datetime

    from cryptography import x509

    try:
        with open(cert, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the certificate {cert}: {exc}") from None
    now = datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc < now:
        raise TlsError(f"the certificate {cert} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
                       f"{remedy}")
    if certificate.not_valid_before_utc > now:
        raise TlsError(f"the certificate {cert} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
                       f"UTC (is this machine's clock right?): {remedy}")


def node_id_of_uri(uri: str) -> int | None:
    """The member id a certificate's URI name ``urn:kv:node:N`` gives, or None for any other URI."""
    digits = uri[len(NODE_URI_PREFIX):] if uri.startswith(NODE_URI_PREFIX) else ""
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 18 else None


def check_node_certificate(cert: str, node_id: int) -> None:
    """Raise ``TlsError`` unless the certificate file ``cert`` is node ``node_id``'s own and valid now. A
    node with another's certificate would be refused by every peer (the certificate of node 2 may not
    act as node 3, ``kvstore.tls.check_peer``) and see only broken connections, and one with an expired
    certificate would be refused by every peer and client (QA: it started, or took it on SIGHUP,
    without a word); this says why before it starts or reloads."""
    remedy = (f"give node {node_id} its own certificate and key (kv certs node DIR {node_id} makes them, "
              f"docs/security.md)")
    _check_valid_now(cert, remedy)
    named = certificate_node_id(cert)
    if named == node_id:
        return
    if named is None:
        raise TlsError(f"the certificate {cert} is not a node certificate (it names no {NODE_URI_PREFIX}N): "
                       f"{remedy}")
    raise TlsError(f"the certificate {cert} is node {named}'s ({NODE_URI_PREFIX}{named}), not node {node_id}'s: "
                   f"{remedy}")
