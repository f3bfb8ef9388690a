"""Mutual TLS on the node's one port, for peers and clients alike.

Theory of operation
-------------------
A node started with a CA file, a certificate and its key (``ServerOptions.cacert``, ``cert``, ``key``;
``kv serve --cacert --cert --key``) runs its network through a ``TlsTransport`` instead of plain TCP:

* **accepting**: every accepted connection is a ``TlsStream`` (``TlsListener``); there is no
  plaintext listener, so nothing reaches the frame reader without a finished TLS 1.3 handshake in
  which the other side presented a certificate signed by the cluster's CA (``CERT_REQUIRED``). The
  handshake runs in the connection's own task (``handshake``), bounded by ``handshake_timeout_seconds``
  and the idle-client timeout, so a stalled one holds one task and one descriptor for that long at most
  and never the accept loop;
* **dialing**: peer links and the client library connect with the same CA and their own certificate,
  check the server's name against the address dialed (``check_hostname``), and finish the handshake
  inside the caller's connect timeout (``TlsTransport.connect``).

Who is who. A node certificate (``kv certs init``) names its member id in a URI subject alternative
name, ``urn:kv:node:N`` (``NODE_URI_PREFIX``), besides its common name ``node-N`` and its host names; a
client certificate (``kv certs client``) has only a common name and may only authenticate clients
(extended key usage clientAuth, so OpenSSL refuses it as a server). ``peer_identity`` reads both from a
finished handshake. A peer's ``Hello`` must claim the member id its certificate names (``check_peer``,
called by ``kvstore.peers``), so node 2's certificate cannot speak as node 3; a dialed peer must present
the certificate of the member it was dialed as. The access rules (``kvstore.acl``) key clients by
common name.

``reload`` (SIGHUP, ``kvstore.server.serve_until_signal``) reads the certificate files and the ACL again;
connections already open keep the session they have, new ones use the new files. If any file is bad, the
node keeps the files it had and logs why.

Rules: this module never reads or writes frames; it sees streams before ``kvstore.clients`` does. Bad
input here (plaintext bytes, garbage, a foreign certificate, a stall) is a refused connection with one
log line and a counter, never an exception out of the connection task.
"""
from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .frames import CONNECT_SECONDS
from .tlsfiles import (
    NODE_URI_PREFIX,
    Principal,
    TlsError,
    TlsFiles,
    check_node_certificate,
    client_context,
    node_id_of_uri,
    server_context,
)

if TYPE_CHECKING:
    from .server import Node, ServerOptions

__all__ = ["NotTls", "TlsError", "TlsFiles", "TlsTransport", "TlsListener", "Principal", "NODE_URI_PREFIX",
           "check_node_certificate", "client_context", "server_context", "peer_identity", "handshake", "check_peer",
           "check_dialed", "transport_for", "reload", "HANDSHAKE_SECONDS_DEFAULT", "TlsStream"]

log = logging.getLogger("kvstore.server")

# How long an accepted connection may take to finish its handshake (at most the idle-client timeout).
HANDSHAKE_SECONDS_DEFAULT = 10.0
# A dialer that keeps meeting the wrong certificate logs it this often at most.
_WARN_EVERY_SECONDS = 10.0


def peer_identity(stream: object) -> Principal | None:
    """The ``Principal`` of the certificate ``stream``'s other side presented in its finished handshake;
    None for a stream without TLS."""
    if not isinstance(stream, (TlsStream, trio.SSLStream)):
        return None
    cert = stream.getpeercert() or {}
    name = ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = value
    node_id = None
    for kind, value in cert.get("subjectAltName", ()):
        named = node_id_of_uri(value) if kind == "URI" else None
        if named is not None:
            node_id = named
    return Principal(name, node_id)


def check_peer(stream: object, claimed: int) -> str | None:
    """Why the other side of ``stream`` may not act as member ``claimed``, or None if it may (or the
    stream has no TLS: a node without TLS has no certificates to check)."""
    principal = peer_identity(stream)
    if principal is None:
        return None
    if principal.node_id is None:
        return (f"the certificate {principal.name!r} is not a node certificate "
                f"(no {NODE_URI_PREFIX}N name) and may not act as node {claimed}")
    if principal.node_id != claimed:
        return f"the certificate of node {principal.node_id} may not act as node {claimed}"
    return None


_warned_at: dict[int, float] = {}


async def check_dialed(stream: trio.abc.AsyncResource, peer_id: int, counters: dict[str, int]) -> None:
    """The peer link to ``peer_id`` reached ``stream``: raise ``OSError`` (after closing the stream) if its
    certificate is not ``peer_id``'s. Logged once per ``_WARN_EVERY_SECONDS`` per peer."""
    refused = check_peer(stream, peer_id)
    if refused is None:
        return
    counters["peers_refused_certificate"] += 1
    now = time.monotonic()
    if now - _warned_at.get(peer_id, -_WARN_EVERY_SECONDS) >= _WARN_EVERY_SECONDS:
        _warned_at[peer_id] = now
        log.warning("link to node %d refused: %s", peer_id, refused)
    await trio.aclose_forcefully(stream)
    raise OSError(refused)


class LogThrottle:
    """At most one log line a ``seconds`` for each kind of refusal (after a first ``burst`` of them); the
    lines left out are counted, and the next line says how many. A process needs no certificate to open
    connections that fail their handshake, so one line per connection would let anyone grow the log
    without bound (QA: 2,000 lines in 0.1 s); the counters (``kv -w json status``) still count every one."""

    def __init__(self, seconds: float = 1.0, burst: int = 1) -> None:
        self.seconds = seconds
        self.burst = burst
        self._tokens: dict[str, tuple[float, float]] = {}  # kind -> (lines it may log now, as of when)
        self._left_out: dict[str, int] = {}

    def allow(self, kind: str) -> str | None:
        """None: leave this line out; else what to add to it (how many were left out since the last).
        ``kind`` may hold the refusal's reason: each reason gets its own line a second (a few hundred
        kinds are kept at most; past that they start afresh)."""
        now = time.monotonic()
        if len(self._tokens) > 256 and kind not in self._tokens:
            self._tokens.clear()
            self._left_out.clear()
        tokens, then = self._tokens.get(kind, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) / self.seconds)
        if tokens < 1.0:
            self._tokens[kind] = (tokens, now)
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return None
        self._tokens[kind] = (tokens - 1.0, now)
        left_out = self._left_out.pop(kind, 0)
        return f" ({left_out} more like it left out of the log since the last such line)" if left_out else ""

    def overdue(self) -> list[tuple[str, int]]:
        """``(kind, lines left out)`` for the kinds that could log again but have not (their flood ended):
        the caller logs the counts, which would otherwise wait for the next line of that kind (QA)."""
        now = time.monotonic()
        due = []
        for kind, count in list(self._left_out.items()):
            tokens, then = self._tokens.get(kind, (0.0, now))
            if tokens + (now - then) / self.seconds >= 1.0:
                due.append((kind, count))
                del self._left_out[kind]
        return due


REFUSALS_LOGGED = LogThrottle()


async def handshake(stream: TlsStream, node: Node, name: str) -> Principal | None:
    """Finish the TLS handshake of an accepted ``stream`` (a connection task of ``node``) and return who
    is on the other side; None (one log line, a counter) if it failed or did not finish within the
    handshake timeout. The caller closes the stream either way."""
    timeout = min(getattr(node.transport, "handshake_timeout_seconds", HANDSHAKE_SECONDS_DEFAULT),
                  node.options.idle_client_timeout_seconds)
    try:
        with trio.move_on_after(timeout) as scope:
            await stream.do_handshake()
    except NotTls:
        raise  # the caller answers it in plaintext (kvstore.clients)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        node.counters["tls_handshakes_refused"] += 1
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        reason = _describe(cause)
        more = REFUSALS_LOGGED.allow(f"handshake failed: {reason}")
        if more is not None:
            log.warning("refused connection from %s: TLS handshake failed: %s%s", name, reason, more)
        return None
    if scope.cancelled_caught:
        node.counters["tls_handshakes_timed_out"] += 1
        more = REFUSALS_LOGGED.allow("handshake timed out")
        if more is not None:
            log.warning("closed connection from %s: no TLS handshake within %gs%s", name, timeout, more)
        return None
    return peer_identity(stream)


class NotTls(trio.BrokenResourceError):
    """The first bytes on a TLS listener are not a TLS record (a TLS client always starts with a
    handshake record, type 0x16): a plaintext client or peer. ``head`` holds the bytes read."""

    def __init__(self, head: bytes) -> None:
        super().__init__("the other side does not speak TLS")
        self.head = head


class TlsStream(trio.abc.Stream):
    """TLS over a trio TCP stream, lean enough to sit on the store's hot path.

    trio's ``SSLStream`` works for any caller, which costs a lock, a conflict detector and a round of
    its retry loop per call, and it hides the socket, so each frame went through a writer task. This
    stream keeps the ``ssl.SSLObject`` and its two memory buffers itself:

    * ``seal(data)`` encrypts plaintext into TLS records, synchronously; ``kvstore.netio.Outbox`` seals
      what it is given and then writes the records straight to the socket like plaintext (the same
      direct write without a task hop), or queues them for its writer task, which sends them on
      ``transport_stream``. Records leave in the order they were sealed, which is the only order TLS
      allows;
    * ``receive_some`` decrypts every whole record the socket has delivered, in one call;
    * bytes that OpenSSL produces while reading (a TLS 1.3 key update answered) go to ``raw_sink`` (the
      outbox, in order with what it sealed) when one is attached, else straight to the transport.

    ``send_all`` is for the short exchanges before an outbox takes over (a peer's Hello, an early
    error reply): it must not run while an outbox writes to the same stream.
    """

    def __init__(self, transport_stream: trio.abc.Stream, context: ssl.SSLContext, *, server_side: bool = False,
                 server_hostname: str | None = None) -> None:
        self.transport_stream = transport_stream
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        # set by an Outbox that seals for this stream (kvstore.netio.Outbox.attach)
        self.raw_sink: Callable[[bytes], object] | None = None
        self._handshaken = False
        self._server_side = server_side

    async def do_handshake(self) -> None:
        """Run the handshake to its end; raises ``trio.BrokenResourceError`` (from the ``ssl.SSLError``)
        if it fails or the other side closes, ``NotTls`` (one of those) on a server whose client's first
        bytes are not TLS. Unbounded in time: callers bound it."""
        first = self._server_side
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                await self._send_pending()  # the alert that says why, best effort
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            await self._send_pending()
            data = await self.transport_stream.receive_some(_RECEIVE_BYTES)
            if not data:
                raise trio.BrokenResourceError("the other side closed the connection during the TLS handshake")
            if first and data[0] != _HANDSHAKE_RECORD:
                raise NotTls(bytes(data))
            first = False
            self._incoming.write(data)
        await self._send_pending()
        self._handshaken = True

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl.getpeercert(binary_form)

    def seal(self, data: bytes) -> bytes:
        """``data`` as TLS records, ready for the socket (raises ``ssl.SSLError`` once the session broke)."""
        view = memoryview(data)
        while view:
            view = view[self._ssl.write(view):]
        return self._outgoing.read()

    async def _send_pending(self) -> None:
        if self._outgoing.pending:
            await self.transport_stream.send_all(self._outgoing.read())

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            records = self.seal(bytes(data))
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS session failed: {exc}") from exc
        await self.transport_stream.send_all(records)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or _RECEIVE_BYTES
        while True:
            chunks: list[bytes] = []
            size = 0
            try:
                while size < limit:
                    # (one record's plaintext at most per call: asking for more only allocates more)
                    chunk = self._ssl.read(min(limit - size, _RECORD_BYTES))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # close_notify: the end of the stream
                if not chunks:
                    return b""
            except ssl.SSLError as exc:
                if not chunks:
                    raise trio.BrokenResourceError(f"TLS session failed: {exc}") from exc
            if self._outgoing.pending:  # OpenSSL answered something while reading
                if self.raw_sink is not None:
                    self.raw_sink(self._outgoing.read())
                else:
                    await self._send_pending()
            if chunks:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            data = await self.transport_stream.receive_some(_RECEIVE_BYTES)
            if not data:
                return b""  # the other side closed without close_notify: our frames tell a cut frame
            self._incoming.write(data)

    async def aclose(self) -> None:
        self.raw_sink = None
        await self.transport_stream.aclose()


_RECEIVE_BYTES = 256 * 1024
_HANDSHAKE_RECORD = 0x16  # the content type of a TLS record of the handshake: a ClientHello comes in one
_RECORD_BYTES = 16 * 1024  # the most plaintext one TLS record carries


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"  # e.g. "certificate has expired"
    if isinstance(exc, ssl.SSLError):
        if exc.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
            return f"{exc.reason} (not TLS: a plaintext client or peer?)"
        return exc.reason or exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


class TlsListener(trio.abc.Listener[TlsStream]):
    """Accepts TCP connections and wraps each in a server-side ``TlsStream`` with the transport's
    server context of the moment (so a reload applies to the next accept). Shows its socket: the node
    reads its port from ``listeners[0].socket``."""

    def __init__(self, transport_listener: trio.SocketListener, transport: TlsTransport) -> None:
        self.transport_listener = transport_listener
        self._transport = transport

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.transport_listener.socket

    async def accept(self) -> TlsStream:
        stream = await self.transport_listener.accept()
        context = self._transport.server_context
        assert context is not None  # wrap_listener makes no listener of a client's transport
        return TlsStream(stream, context, server_side=True)

    async def aclose(self) -> None:
        await self.transport_listener.aclose()


class TlsTransport:
    """The node's (or a client's) network with mutual TLS: the interface of ``kvstore.server.TcpTransport``
    (``connect``, ``open_listeners``) plus ``wrap_listener`` and ``reload``."""

    def __init__(self, files: TlsFiles, *, server: bool = True, node_id: int | None = None,
                 handshake_timeout_seconds: float = HANDSHAKE_SECONDS_DEFAULT) -> None:
        self.files = files
        self.server = server
        self.node_id = node_id  # a node's transport: its certificate must be this member's (TlsError if not)
        self.handshake_timeout_seconds = handshake_timeout_seconds
        if node_id is not None:
            check_node_certificate(files.cert, node_id)
        self.client_context = client_context(files)
        self.server_context = server_context(files) if server else None

    def reload(self) -> None:
        """Read the files again; raises ``TlsError`` (and keeps the contexts it had) if one is bad, or if a
        node's new certificate is not its own. New connections, in both directions, use the new files;
        open ones keep their session."""
        if self.node_id is not None:
            check_node_certificate(self.files.cert, self.node_id)
        new_client = client_context(self.files)
        new_server = server_context(self.files) if self.server else None
        self.client_context = new_client
        self.server_context = new_server  # TlsListener.accept takes it for each new connection

    async def connect(self, host: str, port: int) -> TlsStream:
        """A TLS stream to ``host:port`` with its handshake done; raises ``OSError`` (an ``ssl.SSLError``
        for a refused handshake) like a refused TCP connect."""
        try:
            with trio.fail_after(CONNECT_SECONDS):  # (a reachable host connects in milliseconds: kvstore.frames)
                tcp = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            raise TimeoutError(f"connecting to {host}:{port} took over {CONNECT_SECONDS:g} s") from None
        stream = TlsStream(tcp, self.client_context, server_hostname=host)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__
            if isinstance(cause, OSError):
                raise cause from None
            raise OSError(f"TLS handshake with {host}:{port} failed: {exc}") from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    def wrap_listener(self, listener: trio.SocketListener) -> TlsListener:
        if self.server_context is None:
            raise TlsError("this transport was made for a client: it has no server context")
        return TlsListener(listener, self)

    async def open_listeners(self, host: str, port: int) -> list[trio.abc.Listener[trio.abc.Stream]]:
        return [self.wrap_listener(listener) for listener in await trio.open_tcp_listeners(port, host=host)]


def transport_for(options: ServerOptions, node_id: int | None = None) -> TlsTransport | None:
    """The ``TlsTransport`` of node ``node_id`` from ``ServerOptions`` (cacert, cert, key), or None without
    TLS. Raises ``TlsError`` for a bad file, or a certificate that is not node ``node_id``'s."""
    files = TlsFiles.of(options.cacert, options.cert, options.key)
    return TlsTransport(files, node_id=node_id) if files is not None else None


def reload(node: Node) -> bool:
    """SIGHUP: read ``node``'s certificate files and ACL again. On any error nothing changes (one log
    line says why) and False is returned."""
    from . import acl

    transport = node.transport
    try:
        rules = acl.load(node.options.acl) if node.options.acl else None
        if isinstance(transport, TlsTransport):
            transport.reload()
    except (TlsError, acl.AclError) as exc:
        log.error("node %d: reload refused, keeping the files in use: %s", node.node_id, exc)
        return False
    node.clients.acl = rules
    if rules is not None:  # open watches too: each was checked when it began, under the old rules
        node.watches.end_refused(lambda conn, request: rules.refusal(getattr(conn, "principal", None), request))
        node.clients.send_replies()
    log.info("node %d: reloaded%s%s", node.node_id,
             " the certificates" if isinstance(transport, TlsTransport) else "",
             f" and the access rules ({node.options.acl})" if rules is not None else "")
    return True
