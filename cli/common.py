"""Shared plumbing of the ``kv`` commands: settings, endpoints, the client factory, error handling.

Theory of operation: the app callback stores the global options in a ``Settings`` object (``ctx.obj``).
Client commands call ``settings.endpoints()``, which resolves and validates the endpoint list *before*
anything connects (``--endpoints``, else ``KV_ENDPOINTS``, else the default local cluster's
``cluster.json``), then ``open_client(settings)``, which calls the module-level ``make_client`` (the
trio ``kvstore.client.Client``: admin requests, backups), or ``open_oneshot_client(settings)``, which
calls ``make_oneshot_client`` (``kvstore.oneshot.OneShotClient``, plain sockets: the one-shot commands
put, get, del, cas, ls, status, health). Tests replace both with a fake, so no command here knows how
the client talks to servers.

Expected failures become one line on stderr (``Error: ...``) and an exit code: ``UsageProblem`` -> 2,
``KVError`` (of ``kvstore.client`` or ``kvstore.oneshot``), ``kvstore.limits.TooLarge``,
``OperationFailed`` and ``output.OutputFailed`` (stdout closed or full) -> 1. Anything unexpected is
also one line (exit 1) unless ``--debug`` asks for the traceback. The exit is ``SystemExit``, which
typer passes through as it is.

This module imports neither typer nor a client (``kv get`` starts without them; see ``kv_cli.fast``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kvstore.endpoints

from .output import OutputFailed, OutputFormat, echo

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as the shell reports a process ended by SIGINT (128 + 2)

ENV_ENDPOINTS = "KV_ENDPOINTS"
ENV_CLUSTER_DIR = "KV_CLUSTER_DIR"
STATE_FILE_NAME = "cluster.json"


class Engine(str, enum.Enum):
    """The Paxos engine a node runs (kvstore.server.ServerOptions.engine)."""

    core = "core"
    classic = "classic"


ENGINE_HELP = ("core (default, faster): Multi-Paxos; classic: one essential-paxos instance per slot, "
               "for comparison. Nodes of different engines refuse each other.")


class UsageProblem(Exception):
    """The user asked for something we cannot even try (bad endpoint, no endpoints): exit 2."""


class OperationFailed(Exception):
    """The operation ran and failed (key not found, cas mismatch, no leader): exit 1."""


# --------------------------------------------------------------------------------------------------
# Endpoints


def parse_endpoint_list(text: str) -> list[str]:
    """A comma list of endpoints -> normal ``HOST:PORT`` strings, in order, without duplicates.

    The rules are ``kvstore.endpoints``'s; a refused list raises UsageProblem (exit 2).
    """
    try:
        return [kvstore.endpoints.format_endpoint(*e) for e in kvstore.endpoints.parse_endpoint_list(text)]
    except kvstore.endpoints.EndpointError as exc:
        raise UsageProblem(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# Version

DISTRIBUTION = "paxos-kv"  # [project] name in pyproject.toml


def version_facts() -> dict[str, str]:
    """``kv version``: this package's version (its installed metadata) and the Python running it. Cheap:
    importlib.metadata reads one file, nothing of the store is imported."""
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown (not installed)"
    return {"kv": version, "python": sys.version.split()[0]}


def version_line() -> str:
    facts = version_facts()
    return f"kv {facts['kv']} ({DISTRIBUTION}), Python {facts['python']}"


# --------------------------------------------------------------------------------------------------
# Durations

DURATION_MIN_SECONDS = 0.001
# kvstore.frames.TIMEOUT_SECONDS_MAX and RANGE_ITEMS_MAX (not imported: the CLI parses its options before
# loading cbor2; a test checks they agree)
TIMEOUT_SECONDS_MAX = 1_000_000.0
RANGE_ITEMS_MAX = 100_000
_DURATION_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0))  # (ms before m and s: the longest suffix first)


def parse_duration(text: str) -> float:
    """``--command-timeout``'s value in seconds: a plain number of seconds (``2.5``) or a number with a
    unit, ``ms``, ``s`` or ``m`` (``500ms``, ``5s``, ``1m``: etcdctl's spelling). At least 1 ms, finite.
    Raises ValueError with the line to show. Both parsers (typer's and ``kv_cli.fast``) use this."""
    raw = text.strip().lower()
    scale = 1.0
    for suffix, factor in _DURATION_UNITS:
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)].strip(), factor
            break
    try:
        seconds = float(raw) * scale
    except ValueError:
        seconds = float("nan")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # (not a number, or inf, or 1e400)
        raise ValueError(f"{text!r} is not a duration: give seconds (2.5) or a number with ms, s or m (500ms, 5s, 1m)")
    if seconds < DURATION_MIN_SECONDS:
        raise ValueError(f"{text!r} is too short: at least 1ms")
    if seconds > TIMEOUT_SECONDS_MAX:
        raise ValueError(f"{text!r} is too long: at most {TIMEOUT_SECONDS_MAX:g} s (11 days)")
    return seconds


# --------------------------------------------------------------------------------------------------
# The default local cluster directory and its state file


def default_cluster_dir() -> Path:
    """``$KV_CLUSTER_DIR``, else the platform's per-user data directory + ``kv/cluster``.

    Linux and other Unix: ``$XDG_DATA_HOME`` or ``~/.local/share``; macOS: ``~/Library/Application
    Support``; Windows: ``%LOCALAPPDATA%``.
    """
    explicit = os.environ.get(ENV_CLUSTER_DIR)
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA") or (Path.home() / "AppData" / "Local"))
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "kv" / "cluster"


# The fields of a node in cluster.json that ``kv cluster`` commands use, with what each must be; readers
# that use fewer (the dashboard, the client commands' endpoints) need only id and port
NODE_FIELDS: dict[str, str] = {"id": "int", "port": "port", "pid": "pid", "data_dir": "str", "log_file": "str",
                               "argv": "strings"}
_FIELD_KINDS = {"int": "a whole number", "port": "a port number", "pid": "a process id or null", "str": "text",
                "strings": "a list of texts"}


def _fits(value: Any, kind: str) -> bool:
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "pid" and value is None:
        return True
    number = isinstance(value, int) and not isinstance(value, bool)
    return number and (kind != "port" or 1 <= value <= 65535)


def state_problem(state: Any, required: tuple[str, ...] = ("id", "port")) -> str | None:
    """What makes parsed JSON not a cluster state file, or None. Checked where it is read, so that a
    hand-edited or partial file is refused with the reason instead of failing later inside a command
    (a KeyError) or printing nonsense (an endpoint list that is a string, read letter by letter)."""
    if not isinstance(state, dict):
        return "not a JSON object"
    endpoints = state.get("endpoints")
    if not _fits(endpoints, "strings"):
        return '"endpoints" is not a list of HOST:PORT texts'
    if not isinstance(state.get("nodes"), list):
        return '"nodes" is not a list'
    for index, node in enumerate(state["nodes"], 1):
        if not isinstance(node, dict):
            return f"node {index} of \"nodes\" is not a JSON object"
        for field, kind in NODE_FIELDS.items():
            if field not in node:
                if field in required:
                    return f"node {index} of \"nodes\" has no {field!r}"
            elif not _fits(node[field], kind):
                return f"{field!r} of node {index} of \"nodes\" is not {_FIELD_KINDS[kind]}"
    if "tls" in state and not isinstance(state["tls"], dict):
        return "'tls' is not a JSON object"
    if "removed_ids" in state and not isinstance(state["removed_ids"], list):
        return "'removed_ids' is not a JSON list"
    return None


def read_state(cluster_dir: Path, required: tuple[str, ...] = ("id", "port")) -> dict[str, Any] | None:
    """The parsed ``cluster.json`` of ``cluster_dir``, or None if there is none.

    Raises UsageProblem if the file exists but is not a cluster state (so we never act on garbage),
    saying what is wrong; ``required``: the node fields the caller uses (``NODE_FIELDS`` for the
    ``kv cluster`` commands), which must be there.
    """
    path = cluster_dir / STATE_FILE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # (a ValueError, but raised by the read)
        raise UsageProblem(f"{path} is not valid JSON (not UTF-8 text); remove it or fix it") from None
    import json

    try:
        state = json.loads(text)
    except ValueError:
        raise UsageProblem(f"{path} is not valid JSON; remove it or fix it") from None
    problem = state_problem(state, required)
    if problem is not None:
        raise UsageProblem(f"{path} is not a kv cluster state file: {problem}")
    checked: dict[str, Any] = state
    return checked


def write_state(cluster_dir: Path, state: dict[str, Any]) -> None:
    """Replace ``cluster.json`` atomically: temp file, fsync, rename, fsync the directory."""
    import json

    cluster_dir.mkdir(parents=True, exist_ok=True)
    path = cluster_dir / STATE_FILE_NAME
    temp = cluster_dir / f".{STATE_FILE_NAME}.{os.getpid()}.tmp"
    data = json.dumps(state, indent=2, sort_keys=True) + "\n"
    with open(temp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    with contextlib.suppress(OSError):  # directory fsync is not possible on every platform
        dir_fd = os.open(cluster_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def output_file_problem(path: str, instead: str = "") -> str | None:
    """Why ``path`` cannot be the output of a command that writes a new file beside it and renames it over
    ``path`` when complete (``kv dump FILE``, ``kv snapshot save FILE``), or None. Checked before any work:
    a directory used to fail only at the rename, after the whole transfer; a device or a pipe
    (``/dev/stdout``, ``/dev/null``) would be replaced by a plain file: ``instead`` says what to do then."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):  # (the same words and exit code from dump and snapshot save: QA)
            return f"cannot write {path}: there is no directory {parent}"
        return None  # absent (made by the rename), or the write says what is wrong with it
    if stat.S_ISDIR(mode):
        return f"{path} is a directory"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file (a device or a pipe): it would be replaced by a file{instead}"
    return None


# --------------------------------------------------------------------------------------------------
# Settings (the global options)


class Settings:
    """The global options. (A plain class: a dataclass would cost ``kv get`` the import of dataclasses.)"""

    def __init__(self, endpoints_text: str | None = None, write_out: OutputFormat = OutputFormat.simple,
                 command_timeout: float = 5.0, debug: bool = False, cacert: str | None = None,
                 cert: str | None = None, key: str | None = None) -> None:
        self.endpoints_text = endpoints_text
        self.write_out = write_out
        self.command_timeout = command_timeout
        self.debug = debug
        # Mutual TLS (--cacert/--cert/--key, KV_CACERT/KV_CERT/KV_KEY); else the default cluster's, if it has
        self.cacert = cacert
        self.cert = cert
        self.key = key
        self.endpoints_from_default_cluster = False
        self._endpoints: list[str] | None = None
        self._default_cluster_tls: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (f"Settings(endpoints_text={self.endpoints_text!r}, write_out={self.write_out!r}, "
                f"command_timeout={self.command_timeout!r}, debug={self.debug!r})")

    def tls(self) -> dict[str, str]:
        """``{"cacert", "cert", "key"}`` for the client, or ``{}`` without TLS. The options, else those
        of the default cluster when the endpoints came from it (kv cluster up --tls). Raises UsageProblem
        for some but not all of the three, or a file that is not there, before anything connects."""
        given = {name: value for name, value in (("cacert", self.cacert), ("cert", self.cert), ("key", self.key))
                 if value}
        if not given and self.endpoints_from_default_cluster and isinstance(self._default_cluster_tls, dict):
            given = {k: str(v) for k, v in self._default_cluster_tls.items() if k in ("cacert", "cert", "key")}
        if not given:
            return {}
        if len(given) != 3:
            missing = sorted({"cacert", "cert", "key"} - set(given))
            raise UsageProblem(f"TLS needs --cacert, --cert and --key together (KV_CACERT, KV_CERT, KV_KEY); "
                               f"missing: {', '.join('--' + m for m in missing)}")
        for name, path in given.items():
            if not os.path.isfile(path):
                raise UsageProblem(f"--{name} {path}: no such file")
        return given

    def endpoints(self) -> list[str]:
        """Resolve and validate the endpoint list; raises UsageProblem before anything connects."""
        if self._endpoints is not None:
            return self._endpoints
        if self.endpoints_text is not None:
            result = parse_endpoint_list(self.endpoints_text)
        else:
            cluster_dir = default_cluster_dir()
            state = read_state(cluster_dir)
            if state is None or not state.get("endpoints"):
                raise UsageProblem(
                    f"no endpoints: pass --endpoints HOST:PORT,... or set {ENV_ENDPOINTS}, "
                    f"or start a local cluster with `kv cluster up` (none found in {cluster_dir})"
                )
            result = parse_endpoint_list(",".join(state["endpoints"]))  # (a list of texts: read_state)
            self.endpoints_from_default_cluster = True
            self._default_cluster_tls = state.get("tls")
        self._endpoints = result
        return result


# --------------------------------------------------------------------------------------------------
# The client factories (tests monkeypatch ``make_client`` and ``make_oneshot_client``)


def make_client(endpoints: list[str], timeout: float, **tls: str) -> contextlib.AbstractContextManager[Any]:
    """A context manager giving a blocking ``kvstore.client.Client`` for ``endpoints``; ``tls``: cacert,
    cert and key (``Settings.tls``), passed only for a TLS cluster."""
    from kvstore.client import Client

    return Client(endpoints, timeout=timeout, **tls)


def make_oneshot_client(endpoints: list[str], timeout: float, **tls: str) -> contextlib.AbstractContextManager[Any]:
    """A context manager giving a ``kvstore.oneshot.OneShotClient`` (the one-shot commands: no trio, one
    request at a time, the same retries and errors as ``kvstore.client``); ``tls`` as for ``make_client``."""
    from kvstore.oneshot import OneShotClient

    return OneShotClient(endpoints, timeout=timeout, **tls)


@contextlib.contextmanager
def open_client(settings: Settings, timeout: float | None = None) -> Iterator[Any]:
    """The trio client (``make_client``), for admin requests and backups."""
    endpoints = settings.endpoints()  # validated before connecting
    tls = settings.tls()  # (after endpoints: the default cluster's TLS files come with its endpoints)
    with make_client(endpoints, settings.command_timeout if timeout is None else timeout, **tls) as client:
        yield client


@contextlib.contextmanager
def open_oneshot_client(settings: Settings, timeout: float | None = None) -> Iterator[Any]:
    """The one-shot client (``make_oneshot_client``), for put, get, del, cas, ls, status and health."""
    endpoints = settings.endpoints()  # validated before connecting
    tls = settings.tls()
    with make_oneshot_client(endpoints, settings.command_timeout if timeout is None else timeout, **tls) as client:
        yield client


# --------------------------------------------------------------------------------------------------
# Errors


def error_line(message: str) -> None:
    echo(f"Error: {message}", err=True)


# What kvstore.frames.sent_once_unanswered says of a membership or leadership request that got no answer
_MEMBERSHIP_UNANSWERED = "check with kv member list"


def _describe_kv_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if getattr(exc, "outcome_unknown", False):
        if _MEMBERSHIP_UNANSWERED in text:  # a membership or leadership request: no write, no key (QA)
            return f"outcome unknown: {text}"
        if "may or may not have been applied" not in text:
            text += "; the write may or may not have been applied"
        return f"outcome unknown: {text} (read the key to find out)"
    return text


_CLIENT_MODULES = ("kvstore.oneshot", "kvstore.client")


def _kv_error_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """The ``KVError`` and ``Unavailable`` classes of the clients loaded so far (a client that is not
    imported raised nothing; importing ``kvstore.client`` here would cost a failing command trio)."""
    kv_errors: list[type[BaseException]] = []
    unavailable: list[type[BaseException]] = []
    for name in _CLIENT_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            kv_errors.append(module.KVError)
            unavailable.append(module.Unavailable)
    return tuple(kv_errors), tuple(unavailable)


def _passthrough() -> tuple[type[BaseException], ...]:
    """Exceptions that are not failures to report: typer's own (if typer is loaded: it is what raises
    them), Ctrl-C, and a closed stdout (``kv get k | head -c1``: the caller exits 1 without a word, as
    click does)."""
    typer = sys.modules.get("typer")
    if typer is None:
        return (KeyboardInterrupt, BrokenPipeError)
    return (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt, BrokenPipeError)


def _print_traceback() -> None:
    import traceback

    traceback.print_exc()


# A --command-timeout under this, when every attempt ran out of time, is the likelier cause than the cluster
SHORT_TIMEOUT_SECONDS = 0.1


def unreachable_hint(settings: Settings, errors: list[str]) -> str:
    """What to add when no node answered, given each attempt's error: the local cluster may be down
    (the endpoints are its own), or, when every node hung up without a word on a client without TLS
    files, the cluster may serve TLS (a TLS-only node does that to a plain client). "" otherwise."""
    if errors and settings.command_timeout < SHORT_TIMEOUT_SECONDS and all(
            "within" in e and "connection failed" not in e for e in errors):
        # every node was reached and ran out of time: the deadline, not the cluster (QA: 1ms said "may be down")
        return f" (--command-timeout {settings.command_timeout:g}s may be too short for an answer)"
    if settings.endpoints_from_default_cluster:
        return " (the local cluster may be down: `kv cluster status`, `kv cluster up`)"
    tls = settings.cacert or settings.cert or settings.key
    if errors and all("connection lost before the reply" in e for e in errors) and not tls:
        return " (if the cluster serves TLS: --cacert, --cert and --key, or KV_CACERT, KV_CERT, KV_KEY)"
    if tls and errors and all("WRONG_VERSION_NUMBER" in e and not e.startswith("no node serves TLS") for e in errors):
        # OpenSSL's words for a server that answered the handshake with something other than TLS
        return " (the node does not serve TLS: leave out --cacert, --cert and --key, or KV_CACERT, KV_CERT, KV_KEY)"
    if tls and errors and all("CERTIFICATE_VERIFY_FAILED" in e and "certificate has expired" in e for e in errors):
        return (" (the node's certificate has expired: give the node a new one, kv certs node DIR N, and send it "
                "SIGHUP; docs/security.md)")
    if tls and errors and all("CERTIFICATE_VERIFY_FAILED" in e for e in errors):
        return (" (this client does not trust the node's certificate: --cacert must be the CA that signed the "
                "cluster's certificates)")
    if tls and errors and all("ALERT_UNKNOWN_CA" in e or "ALERT_BAD_CERTIFICATE" in e or "CERTIFICATE_REQUIRED" in e
                              or "ALERT_CERTIFICATE" in e for e in errors):
        # OpenSSL's words for a node's alert refusing our certificate (expired, revoked, of another CA)
        return (" (the node refused this client's certificate: --cert and --key must be a certificate of the "
                "cluster's CA that has not expired, e.g. from kv certs client)")
    return ""


def cluster_down_hint(settings: Settings, exc: BaseException) -> str:
    """``unreachable_hint`` for a client's "unavailable" error ("" for any other error)."""
    _, unavailable = _kv_error_types()
    if not unavailable or not isinstance(exc, unavailable):
        return ""
    if _MEMBERSHIP_UNANSWERED in str(exc):
        return ""  # it went out to a node that took it: the cluster is up, that node did not answer (QA)
    return unreachable_hint(settings, [str(exc)])


@contextlib.contextmanager
def reporting_errors(settings: Settings) -> Iterator[None]:
    """Turn expected failures into one stderr line and an exit code (``SystemExit``)."""
    try:
        yield
    except _passthrough():
        raise
    except UsageProblem as exc:
        if settings.debug:
            _print_traceback()
        error_line(str(exc))
        raise SystemExit(EXIT_USAGE) from None
    except (OperationFailed, OutputFailed) as exc:
        if settings.debug:
            _print_traceback()
        error_line(str(exc))
        raise SystemExit(EXIT_FAILED) from None
    except Exception as exc:
        if settings.debug:
            _print_traceback()
        kv_errors, _ = _kv_error_types()
        limits = sys.modules.get("kvstore.limits")
        if limits is not None and isinstance(exc, limits.TooLarge):
            message = str(exc)  # says which limit; the same line whoever checked first
        elif kv_errors and isinstance(exc, kv_errors):
            message = _describe_kv_error(exc) + cluster_down_hint(settings, exc)
        else:
            # The store's own refusals (a StorageError, an IdentityError, a ListenError) say enough: their
            # message alone, no class name, no --debug hint. Anything else is a bug to report as it is.
            expected = type(exc).__module__.startswith("kvstore.") and bool(str(exc))
            if expected:
                message = str(exc)
            else:
                message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if not settings.debug:
                    message += " (run with --debug for the traceback)"
        error_line(message)
        raise SystemExit(EXIT_FAILED) from None
    except BaseExceptionGroup as group:  # (not an Exception: it holds a KeyboardInterrupt or the like)
        interrupted, rest = group.split(KeyboardInterrupt)
        if interrupted is not None and rest is None:
            # Ctrl-C inside trio's loop (kv bench, kv dashboard) arrives wrapped: the same as a plain one
            raise KeyboardInterrupt from None
        raise
