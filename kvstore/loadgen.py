"""The load generator behind ``kv bench`` and the scripts in ``bench/``.

Theory of operation
-------------------
``run_load(spec)`` drives a store with ``spec.clients`` requests in flight, spread over ``spec.conns``
connections (each an ``AsyncClient``, which pipelines many requests on one TCP connection). Each of the
``clients`` workers is a trio task that takes the next request number from a shared counter, performs
one operation, records its latency, and repeats. It stops by itself: after ``total`` requests, or when
``duration`` has passed, and in any case after ``time_limit_s`` (every loop is bounded in count and time).
A run its time limit stops short of ``total`` says so (``stopped_by``): the caller decides whether that
is a failure (``kv bench`` exits 1). Given ``stop_signals``, ``run_load`` also stops early on those
signals (Ctrl-C, SIGTERM): no new request leaves, the ones in flight get ``INTERRUPT_GRACE_S`` to finish,
and the result holds what was done until then, marked ``interrupted``.

* **Closed loop** (default): a worker sends its next request as soon as the previous one is answered.
* **Open loop** (``rate``): request ``i`` is *scheduled* at ``start + i / rate``. A worker waits for
  that instant, sends, and the latency is measured **from the scheduled instant**, not from the moment
  the worker got to send. If the store falls behind, the queueing delay shows up in the latencies instead
  of silently lowering the offered load (this avoids "coordinated omission"). ``clients`` still bounds
  how many requests are outstanding.

Latencies go into an HdrHistogram (microseconds, 3 significant digits); a second histogram per
one-second interval gives the timeline (throughput and latency over time) for plots. Errors are counted
by kind (exception class, plus the server's error code for ``RequestError``), and the run continues.
Gets and puts are also counted apart (``by_op``: ok, errors, latency; with ``mixed``, a histogram each),
and a get that finds no value is a miss: a success, but a read of a key nobody wrote measures less.

What is driven is pluggable: ``open_targets`` is an async context manager factory yielding a list of
objects with ``async put(key, value)`` and ``async get(key, consistency)`` (the value, None when absent:
that is what tells hits from misses); the default one opens
``kvstore.client`` connections. ``bench/compare.py`` plugs in other systems so that every system sees
the same load shape.
"""
from __future__ import annotations

import collections
import datetime
import json
import math
import os
import platform
import random
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import trio

from .client import AsyncClient, RequestError, Unavailable, connect

LATENCY_US_MAX = 60_000_000  # one minute; longer latencies are recorded as one minute
OPS = ("put", "get", "mixed")
DEFAULT_TIME_LIMIT_S = 600.0  # with total and no duration
INTERRUPT_GRACE_S = 1.0  # after a stop signal, for the requests in flight (at most the request timeout)


class LoadSpecError(ValueError):
    """A load specification that cannot be run (caller mistake)."""


class Unreachable(Exception):
    """The warm-up reached no node: every connection's first put failed after the client's timeout
    (the cluster is down, or these are not its endpoints). The run does not start: a run against
    nobody would only count timeouts, one per request slot per ``timeout``, until its time limit."""


def _histogram(digits: int = 3) -> Any:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the load generator needs the hdrhistogram package: pip install hdrhistogram"
        ) from exc
    return HdrHistogram(1, LATENCY_US_MAX, digits)


@dataclass
class LoadSpec:
    """The shape of a load. ``total`` or ``duration`` ends the run (if both, whichever comes first)."""

    endpoints: list[str] = field(default_factory=list)
    clients: int = 16  # requests in flight
    conns: int = 1  # client connections; worker i uses connection i % conns
    total: int | None = 10_000
    duration: float | None = None  # seconds
    key_size: int = 8
    val_size: int = 100
    key_space_size: int = 10_000
    sequential_keys: bool = False
    consistency: str = "l"  # reads: l linearizable, s serializable
    op: str = "put"  # put | get | mixed
    read_ratio: float = 0.5  # share of gets with op="mixed"
    rate: float | None = None  # open loop: requests per second overall
    timeout: float = 5.0  # per request, retries included (the client's timeout)
    warmup: int = 0  # unmeasured puts per connection before the run (connects, finds the leader)
    seed: int = 1
    time_limit_s: float | None = None  # hard cap; default: duration + 2*timeout, or 600 s with total only
    tls: dict[str, str] = field(default_factory=dict)  # cacert, cert, key (PEM files) for a TLS cluster

    def validate(self) -> None:
        if self.clients < 1:
            raise LoadSpecError("clients (requests in flight) must be at least 1")
        if self.conns < 1:
            raise LoadSpecError("conns must be at least 1")
        if self.total is None and self.duration is None:
            raise LoadSpecError("give total or duration")
        if self.total is not None and self.total < 1:
            raise LoadSpecError("total must be at least 1")
        if self.duration is not None and not self.duration > 0:
            raise LoadSpecError("duration must be positive")
        if self.key_size < 1 or self.val_size < 0:
            raise LoadSpecError("key size must be at least 1 and value size at least 0")
        if self.key_space_size < 1:
            raise LoadSpecError("key space size must be at least 1")
        if self.consistency not in ("l", "s"):
            raise LoadSpecError("consistency must be 'l' or 's'")
        if self.op not in OPS:
            raise LoadSpecError(f"op must be one of {', '.join(OPS)}")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise LoadSpecError("read ratio must be between 0 and 1")
        if self.rate is not None and not self.rate > 0:
            raise LoadSpecError("rate must be positive")
        if self.timeout <= 0:
            raise LoadSpecError("timeout must be positive")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise LoadSpecError("time limit must be positive")

    def hard_limit_s(self) -> float:
        if self.time_limit_s is not None:
            return self.time_limit_s
        if self.duration is not None:
            return self.duration + 2 * self.timeout
        return DEFAULT_TIME_LIMIT_S

    def count_limit(self) -> int:
        # A duration run is bounded in count too (never reached in practice on one machine).
        return self.total if self.total is not None else 100_000_000

    def key_width(self) -> int:
        """Every key's number is padded to this width: ``key_size``, or the digits of the largest key
        number when it has more, so that all keys of a run are as long (and sort as their numbers)."""
        return max(self.key_size, len(str(self.key_space_size - 1)))

    def key(self, n: int) -> str:
        return str(n).zfill(self.key_width())

    def value(self) -> str:
        return ("0123456789abcdef" * (self.val_size // 16 + 1))[: self.val_size]

    def params(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"] = "open loop" if self.rate else "closed loop"
        return d


def machine_facts() -> dict[str, Any]:
    """What to record with every result: the machine and the software it ran."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# Errors that every later request of the run would get as well (the cluster refuses this client, its
# requests or its values): the run stops at the first, instead of counting thousands of them.
FATAL_CODES = frozenset({"permission_denied", "bad_request", "too_large", "protocol"})


def fatal_error(exc: BaseException) -> bool:
    """True for an error no retry of the run mends (``FATAL_CODES``)."""
    return isinstance(exc, RequestError) and exc.code in FATAL_CODES


def error_kind(exc: BaseException) -> str:
    """A short stable name for an error, used to count errors by kind."""
    if isinstance(exc, RequestError):
        return f"RequestError:{exc.code}"
    if isinstance(exc, Unavailable):
        return "Unavailable(outcome unknown)" if exc.outcome_unknown else "Unavailable"
    kind = getattr(exc, "kind", None)  # other targets may name their errors
    return str(kind) if kind else type(exc).__name__


def _latency_summary(hist: Any) -> dict[str, float | None]:
    if hist.get_total_count() == 0:
        return {k: None for k in ("min", "mean", "p50", "p90", "p99", "p999", "max")}
    ms = 1000.0
    return {
        "min": hist.get_min_value() / ms,
        "mean": hist.get_mean_value() / ms,
        "p50": hist.get_value_at_percentile(50) / ms,
        "p90": hist.get_value_at_percentile(90) / ms,
        "p99": hist.get_value_at_percentile(99) / ms,
        "p999": hist.get_value_at_percentile(99.9) / ms,
        "max": hist.get_max_value() / ms,
    }


def _record_all(hist: Any, latencies_us: list[int]) -> None:
    """Add a second's latencies to the run's histogram: one ``record_value`` per distinct value (with
    its count) instead of one per request, which costs the load generator a microsecond per request."""
    for value, count in collections.Counter(latencies_us).items():
        hist.record_value(value, count)


def _interval_summary(latencies_us: list[int]) -> dict[str, float | None]:
    """p50, p99 and max of one second's latencies (microseconds), in milliseconds.

    A plain list sorted once a second: appending costs ~0.05 us per request where recording into a
    second HdrHistogram cost ~1.7 us, and the load generator shares the machine with what it measures.
    The rank of a percentile is rounded to the nearest request, as HdrHistogram does.
    """
    if not latencies_us:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(latencies_us)
    n = len(ordered)

    def at(pct: float) -> float:
        return ordered[min(n, max(1, int(pct / 100 * n + 0.5))) - 1] / 1000.0

    return {"p50": at(50), "p99": at(99), "max": ordered[-1] / 1000.0}


@dataclass
class LoadResult:
    """The outcome of one run. Latencies in milliseconds, throughput in successful requests per second."""

    spec: LoadSpec
    ok: int
    errors: dict[str, int]
    elapsed_s: float
    histogram: Any  # hdrh HdrHistogram of every successful request, microseconds
    timeline: list[dict[str, Any]]  # one entry per second: t_s, ok, errors, p50_ms, p99_ms, max_ms
    stopped_by: str  # "total", "duration", "time limit", "count limit", "every request slot ended", "signal"
    # or "error" (an error every request would get: ``fatal_error``; ``last_error`` says which)
    last_error: str = ""  # the message of the last failed request ("" if none failed)
    sent: int = 0  # requests handed out (open loop: fewer than scheduled when the store fell behind)
    interrupted: str = ""  # the signal that stopped the run early ("SIGINT", "SIGTERM"), "" if none did
    # per operation that ran ("get", "put"): ok, errors, histogram (the run's own unless op is mixed),
    # and for gets hits and misses (a get of an absent key succeeds, but says little about reads)
    by_op: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Requests answered, successfully or not."""
        return self.ok + sum(self.errors.values())

    @property
    def unfinished(self) -> int:
        """Requests sent but never answered: still in flight when the run was cut short (a signal, the
        time limit), not counted as errors."""
        return max(0, self.sent - self.done)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def latency_ms(self) -> dict[str, float | None]:
        return _latency_summary(self.histogram)

    def to_dict(self, *, timeline: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "params": self.spec.params(),
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "error_count": sum(self.errors.values()),
            "elapsed_s": round(self.elapsed_s, 6),
            "throughput_ops_s": round(self.throughput, 1),
            "latency_ms": {k: (None if v is None else round(v, 3)) for k, v in self.latency_ms.items()},
            "stopped_by": self.stopped_by,
            "sent": self.sent,
            "unfinished": self.unfinished,
            "time_limit_s": self.spec.hard_limit_s(),
            "interrupted": self.interrupted or None,
            "machine": machine_facts(),
        }
        d["by_op"] = {op: {**{k: v for k, v in counts.items() if k != "histogram"},
                           "latency_ms": {k: (None if v is None else round(v, 3))
                                          for k, v in self.op_latency_ms(op).items()}}
                      for op, counts in self.by_op.items()}
        if timeline:
            d["timeline"] = self.timeline
        return d

    def op_latency_ms(self, op: str) -> dict[str, float | None]:
        """``latency_ms`` of one operation's requests (``"get"`` or ``"put"``)."""
        return _latency_summary(self.by_op[op]["histogram"])

    def op_lines(self) -> list[str]:
        """Gets (hits and misses) and puts apart, with their own latencies when both ran."""
        lines = []
        for op, name in (("get", "Gets"), ("put", "Puts")):
            counts = self.by_op.get(op)
            if counts is None or (op == "put" and self.spec.op == "put"):
                continue
            line = f"  {name + ':':<13}{counts['ok']} ok"
            if op == "get":
                line += f" ({counts['hits']} hits, {counts['misses']} misses)"
            line += f", {counts['errors']} errors"
            lat = self.op_latency_ms(op)
            if self.spec.op == "mixed" and lat["p50"] is not None:
                line += f"; latency p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms, max {lat['max']:.3f} ms"
            lines.append(line)
        return lines

    def format_text(self) -> str:
        """A human-readable summary, like etcd's benchmark tool."""
        lat = self.latency_ms
        spec = self.spec
        mode = f"open loop at {spec.rate:g} req/s" if spec.rate else "closed loop"
        stopped = self.stopped_by
        if self.interrupted:
            stopped = f"{self.interrupted} (interrupted: partial results)"
        elif stopped == "time limit":
            stopped = f"the time limit of {spec.hard_limit_s():g} s"
        elif stopped == "error":
            stopped = f"an error every request would get ({self.last_error})"
        if self.unfinished and (self.interrupted or self.stopped_by == "time limit"):
            stopped += f"; {self.unfinished} in flight not finished"
        lines = [
            f"Summary ({spec.op}, {spec.clients} in flight over {spec.conns} connection(s), {mode}):",
            f"  Requests:    {self.ok} ok, {sum(self.errors.values())} errors, stopped by {stopped}",
            f"  Total:       {self.elapsed_s:.4f} s",
            f"  Throughput:  {self.throughput:.1f} requests/s",
            *self.op_lines(),
        ]
        if spec.rate and spec.duration is not None:
            scheduled = int(spec.rate * spec.duration)
            if spec.total is not None:
                scheduled = min(scheduled, spec.total)
            if self.sent < 0.99 * scheduled:
                lines.append(f"  Offered:     {self.sent} of the {scheduled} requests --rate scheduled were sent: "
                             f"with {spec.clients} in flight at most, the rest waited past the end")
        if lat["p50"] is not None:
            lines.append("  Latency (ms, HdrHistogram):")
            for name in ("min", "p50", "p90", "p99", "max", "mean"):
                lines.append(f"    {name:<5} {lat[name]:10.3f}")
        if self.errors:
            lines.append("  Errors by kind:")
            for kind, count in sorted(self.errors.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {count:8d}  {kind}")
        return "\n".join(lines)


class _KvTarget:
    """Adapts an ``AsyncClient`` to the target interface."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def put(self, key: str, value: str) -> None:
        await self.client.put(key, value)

    async def get(self, key: str, consistency: str) -> object:
        return await self.client.get(key, consistency=consistency)

    def submit(self, is_get: bool, key: str, value: str, consistency: str, done: Callable[[object], None]) -> None:
        """Send a get or put without waiting; ``done(outcome)``: the result, or the exception."""
        if is_get:
            self.client.submit_get(key, done, consistency=consistency)
        else:
            self.client.submit_put(key, value, done)


@asynccontextmanager
async def kv_targets(spec: LoadSpec) -> AsyncIterator[list[Any]]:
    """``spec.conns`` connections to our store (``kvstore.client.connect``), as load targets."""
    async with trio.open_nursery() as nursery:
        targets: list[Any] = []
        ready = trio.Event()
        done = trio.Event()

        async def hold(i: int) -> None:
            tls = spec.tls
            async with connect(spec.endpoints, timeout=spec.timeout, cacert=tls.get("cacert"), cert=tls.get("cert"),
                               key=tls.get("key")) as client:
                targets.append(_KvTarget(client))
                if len(targets) == spec.conns:
                    ready.set()
                await done.wait()

        for i in range(spec.conns):
            nursery.start_soon(hold, i)
        await ready.wait()
        try:
            yield targets
        finally:
            done.set()


@dataclass
class _RunState:
    """The run's counters, shared by the workers, the ticker and the summary."""

    next: int = 0  # the next request number to hand out
    ok: int = 0
    err: int = 0
    gets_ok: int = 0  # (of ok)
    gets_err: int = 0  # (of err)
    hits: int = 0  # (of gets_ok: the others found no value)
    stopped_by: str = "every request slot ended"  # (each refused its request: see launch)
    last_error: str = ""
    interrupted: str = ""  # the stop signal's name, once one came: no request leaves after it
    over: bool = False  # the run is over: answers that still come (connections closing) are not counted


@dataclass
class _Interval:
    """The current second's latencies (microseconds) and counts; the ticker takes and resets them."""

    lat: list[int] = field(default_factory=list)  # puts'
    get_lat: list[int] = field(default_factory=list)  # gets'
    ok: int = 0
    err: int = 0


class _Progress:
    """Reports progress on a stream: a rewritten bar on a TTY, else one line per second."""

    def __init__(self, stream: TextIO | None, spec: LoadSpec) -> None:
        self.stream = stream
        self.spec = spec
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def show(self, elapsed: float, ok: int, errors: int, recent_rate: float, final: bool = False) -> None:
        if self.stream is None:
            return
        spec = self.spec
        fractions = []
        if spec.total is not None:
            fractions.append((ok + errors) / spec.total)
        if spec.duration is not None:
            fractions.append(elapsed / spec.duration)
        frac = min(1.0, max(fractions)) if fractions else 0.0
        text = f"{ok} ok {errors} err {elapsed:6.1f}s {recent_rate:9.0f} req/s"
        if self.tty:
            width = 30
            filled = int(frac * width)
            self.stream.write(f"\r[{'=' * filled}{' ' * (width - filled)}] {frac * 100:5.1f}% {text}")
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(f"bench: {frac * 100:5.1f}% {text}\n")
        self.stream.flush()


async def run_load(spec: LoadSpec, *, open_targets: Callable[[LoadSpec], AbstractAsyncContextManager[list[Any]]]
                   | None = None,
                   progress: TextIO | None = None, stop_signals: tuple[int, ...] = ()) -> LoadResult:
    """Run one load against ``spec.endpoints`` (or the targets ``open_targets(spec)`` yields).

    Returns when the run stops by itself (see the module docstring), or, once the measured run has
    started, when one of ``stop_signals`` arrives (main thread only): a Ctrl-C need not throw away what
    was measured. Raises ``LoadSpecError`` for an impossible spec and ``Unreachable`` when the warm-up
    reached no node; request failures are counted in the result, never raised.
    """
    try:
        return await _run_load(spec, open_targets, progress, stop_signals)
    except BaseExceptionGroup as group:  # (the targets' nursery wraps what the run raises)
        found, rest = group.split(Unreachable)
        if found is None or rest is not None:
            raise
        leaf: BaseException = found
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


async def _run_load(spec: LoadSpec, open_targets: Callable[[LoadSpec], AbstractAsyncContextManager[list[Any]]] | None,
                    progress: TextIO | None, stop_signals: tuple[int, ...]) -> LoadResult:
    """``run_load`` itself."""
    spec.validate()
    open_targets = open_targets or kv_targets
    value = spec.value()
    rng = random.Random(spec.seed)
    hist = _histogram()
    # With both operations, a histogram each besides the run's; with one, the run's is that one's
    op_hists = {op: _histogram() if spec.op == "mixed" else hist for op in ("get", "put")}
    count_limit = spec.count_limit()
    errors: dict[str, int] = {}
    timeline: list[dict[str, Any]] = []
    state = _RunState()
    interval = _Interval()

    async with open_targets(spec) as targets:
        if spec.warmup:
            warmed: list[BaseException | None] = []  # per target: None once a put succeeded, else its error

            async def warm(target: Any) -> None:
                failure: BaseException | None = None
                for j in range(spec.warmup):
                    try:
                        await target.put(spec.key(j % spec.key_space_size), value)
                        failure = None
                    except Unavailable as exc:  # the client's whole timeout: no node answers
                        failure = exc
                        break
                    except Exception as exc:  # noqa: BLE001 - other failures show up in the run
                        failure = exc
                        if fatal_error(exc):
                            break  # (the run's first request gets it too, and stops there)
                warmed.append(failure)
            with trio.move_on_after(spec.timeout * 2):
                async with trio.open_nursery() as nursery:
                    for target in targets:
                        nursery.start_soon(warm, target)
            if len(warmed) == len(targets) and all(isinstance(f, Unavailable) for f in warmed):
                raise Unreachable(str(warmed[-1]))

        # trio's clock itself: trio.current_time() reaches it through two more Python calls, and the
        # closed loop reads it once per request
        clock = trio.lowlevel.current_clock().current_time
        start = clock()
        end = start + spec.duration if spec.duration is not None else math.inf
        hard_end = start + spec.hard_limit_s()

        def next_request(now: float | None = None) -> int | None:
            i = state.next
            if now is None:
                now = clock()
            if state.interrupted or state.stopped_by == "error":
                return None
            if i >= count_limit:
                state.stopped_by = "total" if spec.total is not None else "count limit"
                return None
            if now >= end or (spec.rate and start + i / spec.rate >= end):
                state.stopped_by = "duration"
                return None
            if now >= hard_end:
                state.stopped_by = "time limit"
                return None
            state.next = i + 1
            return i

        def choose_op() -> bool:  # True: get
            if spec.op == "put":
                return False
            if spec.op == "get":
                return True
            return rng.random() < spec.read_ratio

        def key_of(i: int) -> str:
            return spec.key(i % spec.key_space_size if spec.sequential_keys else rng.randrange(spec.key_space_size))

        def failed(exc: Exception, is_get: bool) -> None:
            kind = error_kind(exc)
            errors[kind] = errors.get(kind, 0) + 1
            state.err += 1
            state.gets_err += is_get
            interval.err += 1
            state.last_error = str(exc)
            if fatal_error(exc):
                state.stopped_by = "error"  # no request leaves after it; those in flight finish

        def succeeded(began: float, finished: float | None = None) -> None:
            """A put answered."""
            if finished is None:
                finished = clock()
            # Into this second's list; the histogram takes the list once a second (_record_all).
            interval.lat.append(min(LATENCY_US_MAX, max(1, int((finished - began) * 1_000_000))))
            state.ok += 1
            interval.ok += 1

        def got(began: float, value: object, finished: float | None = None) -> None:
            """A get answered: ``value`` None when the key was absent."""
            if finished is None:
                finished = clock()
            interval.get_lat.append(min(LATENCY_US_MAX, max(1, int((finished - began) * 1_000_000))))
            state.ok += 1
            state.gets_ok += 1
            state.hits += value is not None
            interval.ok += 1

        async def worker(w: int) -> None:
            target = targets[w % len(targets)]
            while True:
                i = next_request()
                if i is None:
                    return
                key = key_of(i)
                is_get = choose_op()
                if spec.rate:
                    began = start + i / spec.rate
                    await trio.sleep_until(began)
                else:
                    began = clock()
                try:
                    if is_get:
                        found = await target.get(key, spec.consistency)
                    else:
                        await target.put(key, value)
                except Exception as exc:  # noqa: BLE001 - counted by kind; the run goes on
                    failed(exc, is_get)
                    continue
                if is_get:
                    got(began, found)
                else:
                    succeeded(began)

        # A closed loop against targets that take submitted requests (our store's client) keeps each of
        # the spec.clients requests in flight from a callback instead of a task: the next request
        # leaves from the answer of the last. No task switch per request, so the generator costs
        # about half the CPU per request and stays off the path it measures.
        submitting = not spec.rate and all(hasattr(target, "submit") for target in targets)
        all_done = trio.Event()
        slots = [spec.clients]  # request slots still running (each has at most one request out)

        def end_slot() -> None:
            slots[0] -= 1
            if slots[0] == 0:
                all_done.set()

        def launch(w: int, now: float | None = None) -> None:
            # ``now``: the clock as the last request of this slot was answered (one reading serves
            # that request's latency, the checks of the next one and its start)
            if now is None:
                now = clock()
            i = next_request(now)
            if i is None:
                end_slot()
                return
            began = now
            is_get = choose_op()

            def done(outcome: object) -> None:
                if state.over:
                    return
                finished = clock()
                if isinstance(outcome, Exception):
                    failed(outcome, is_get)
                elif is_get:
                    got(began, outcome, finished)
                else:
                    succeeded(began, finished)
                launch(w, finished)

            try:
                targets[w % len(targets)].submit(is_get, key_of(i), value, spec.consistency, done)
            except Exception as exc:  # noqa: BLE001 - refused before it left (say, too large): count it
                failed(exc, is_get)
                end_slot()  # and stop this slot: the same request would be refused again at once

        reporter = _Progress(progress, spec)

        def take_latencies() -> list[int]:
            """This second's latencies, gets' and puts' together, once recorded into the histograms."""
            puts, gets = interval.lat, interval.get_lat
            interval.lat, interval.get_lat = [], []
            if spec.op == "mixed":
                _record_all(op_hists["put"], puts)
                _record_all(op_hists["get"], gets)
            latencies = puts + gets if puts and gets else puts or gets
            _record_all(hist, latencies)
            return latencies

        async def ticker(cancel_scope: trio.CancelScope) -> None:
            second = 0
            while True:
                second += 1
                await trio.sleep_until(start + second)
                latencies = take_latencies()
                ok, err = interval.ok, interval.err
                interval.ok, interval.err = 0, 0
                lat = _interval_summary(latencies)
                timeline.append({"t_s": second, "ok": ok, "errors": err, "p50_ms": lat["p50"],
                                 "p99_ms": lat["p99"], "max_ms": lat["max"]})
                reporter.show(clock() - start, state.ok, state.err, ok)
                if clock() >= hard_end + spec.timeout + 1.0:
                    state.stopped_by = "time limit"
                    cancel_scope.cancel()  # requests still stuck past every timeout: give up

        async def watch_signals(cancel_scope: trio.CancelScope, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            import signal

            with trio.open_signal_receiver(*stop_signals) as received:
                task_status.started()
                async for signum in received:
                    if state.interrupted:  # a second one: no more grace
                        break
                    state.interrupted = signal.Signals(signum).name
                    state.stopped_by = "signal"
                    # No request leaves now; those in flight get a short grace, then count as unfinished
                    cancel_scope.deadline = min(cancel_scope.deadline,
                                                clock() + min(INTERRUPT_GRACE_S, spec.timeout))
            cancel_scope.cancel()

        async with trio.open_nursery() as outer:
            outer.start_soon(ticker, outer.cancel_scope)
            if stop_signals:
                await outer.start(watch_signals, outer.cancel_scope)
            if submitting:
                for w in range(spec.clients):
                    launch(w)
                await all_done.wait()
            else:
                async with trio.open_nursery() as workers:
                    for w in range(spec.clients):
                        workers.start_soon(worker, w)
            outer.cancel_scope.cancel()
        stop = clock()
        state.over = True

    # The last partial second joins the timeline if it saw anything.
    if interval.ok or interval.err:
        lat = _interval_summary(take_latencies())
        timeline.append({"t_s": round(stop - start, 3), "ok": interval.ok, "errors": interval.err,
                         "p50_ms": lat["p50"], "p99_ms": lat["p99"], "max_ms": lat["max"]})
    # Until the run stopped (the last answer, or the last error: a cluster that died mid-run leaves a
    # tail of failures, and that time belongs to the run too)
    elapsed = max(1e-9, stop - start)
    if spec.rate and spec.duration is not None and state.stopped_by == "duration":
        elapsed = max(elapsed, min(spec.duration, stop - start))
    by_op: dict[str, dict[str, Any]] = {}
    if spec.op != "put":
        by_op["get"] = {"ok": state.gets_ok, "errors": state.gets_err, "hits": state.hits,
                        "misses": state.gets_ok - state.hits, "histogram": op_hists["get"]}
    if spec.op != "get":
        by_op["put"] = {"ok": state.ok - state.gets_ok, "errors": state.err - state.gets_err,
                        "histogram": op_hists["put"]}
    result = LoadResult(spec=spec, ok=state.ok, errors=errors, elapsed_s=elapsed, histogram=hist, by_op=by_op,
                        timeline=timeline, stopped_by=state.stopped_by, last_error=state.last_error,
                        sent=state.next, interrupted=state.interrupted)
    reporter.show(elapsed, result.ok, sum(errors.values()), result.throughput, final=True)
    return result


def run_load_sync(spec: LoadSpec, **kwargs: Any) -> LoadResult:
    """``run_load`` for plain scripts (starts its own trio loop)."""
    return trio.run(lambda: run_load(spec, **kwargs))


def timeline_to_plot(timeline: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float]]:
    """The timeline's entries worth a point, and the seconds each covers (to turn counts into rates).

    Each entry covers the time since the one before; the last is the partial second the run ended in.
    Its count is turned into a rate by its own length, but a tail under half a second is left out: it
    holds the few answers of the requests still in flight as the run ended (a few milliseconds' worth),
    which would draw a false dip (or spike) in throughput and noise in latency. Entries without a request
    are left out too. A run with nothing before its tail keeps the tail.
    """
    kept: list[dict[str, Any]] = []
    spans: list[float] = []
    before = 0.0
    for i, entry in enumerate(timeline):
        span = entry["t_s"] - before
        before = entry["t_s"]
        if not (entry["ok"] or entry["errors"]):
            continue
        if i == len(timeline) - 1 and kept and span < 0.5:
            continue
        kept.append(entry)
        spans.append(max(1e-3, span))
    return kept, spans


def plot_result(result: LoadResult, path: str, title: str | None = None) -> None:
    """Draw latency over time (p50, p99, max per second) and throughput per second into ``path``.

    Needs matplotlib (the ``plot`` extra); raises ``RuntimeError`` with an install hint without it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'paxos-kv[plot]'") from exc
    tl, spans = timeline_to_plot(result.timeline)
    t = [e["t_s"] for e in tl]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for name, style in (("p50_ms", "-"), ("p99_ms", "--"), ("max_ms", ":")):
        ax1.plot(t, [e[name] if e[name] is not None else float("nan") for e in tl], style,
                 label=name.replace("_ms", ""))
    ax1.set_ylabel("latency (ms)")
    ax1.legend(loc="upper right")
    ax1.grid(True, alpha=0.3)
    ax2.plot(t, [e["ok"] / span for e, span in zip(tl, spans, strict=True)], "-", label="ok/s")
    if any(e["errors"] for e in tl):
        ax2.plot(t, [e["errors"] / span for e, span in zip(tl, spans, strict=True)], "-", label="errors/s")
    ax2.set_ylabel("requests per second")
    ax2.set_xlabel("time (s)")
    ax2.legend(loc="upper right")
    ax2.grid(True, alpha=0.3)
    spec = result.spec
    fig.suptitle(title or f"kv bench: {spec.op}, {spec.clients} in flight, {spec.conns} conn(s), "
                          f"{result.throughput:.0f} req/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dumps(result: LoadResult) -> str:
    return json.dumps(result.to_dict(), indent=2)


__all__ = ["LoadSpec", "LoadSpecError", "Unreachable", "LoadResult", "run_load", "run_load_sync", "kv_targets",
           "machine_facts", "error_kind", "fatal_error", "FATAL_CODES", "plot_result", "timeline_to_plot", "dumps"]

if __name__ == "__main__":  # pragma: no cover
    print("use `kv bench` or bench/*.py", file=sys.stderr)
