"""``kv bench``: drive a cluster with a load and report throughput, latency and errors.

The flags follow etcd's ``benchmark`` tool (``--clients``, ``--conns``, ``--total``, ``--key-size``,
``--val-size``, ``--key-space-size``, ``--sequential-keys``, ``--consistency``, ``--rate``). The load
itself is ``kvstore.loadgen`` (see its docstring for the open loop and coordinated omission); this
module only parses, prints and plots. ``register(app)`` adds the command to a typer app.
"""

from __future__ import annotations

import enum
import sys
from typing import Annotated, Any

import typer

from .common import (
    ENV_ENDPOINTS,
    OperationFailed,
    Settings,
    UsageProblem,
    parse_endpoint_list,
    reporting_errors,
    unreachable_hint,
)
from .output import OutputFormat, echo


class BenchOp(str, enum.Enum):
    put = "put"
    get = "get"
    mixed = "mixed"


class BenchConsistency(str, enum.Enum):
    """l: linearizable reads (through the leader); s: serializable (local copy, may be stale)."""

    l = "l"  # noqa: E741 (the etcd spelling)
    s = "s"


DEFAULT_PREFIX = "bench/"  # the run's keys stay apart from the user's (it used to write bare 00000000..)

EPILOG = (
    "Examples: kv bench --clients 64 --total 20000;  "
    "kv bench --op mixed --read-ratio 0.9 --duration 10;  "
    "kv bench --rate 2000 --duration 10 --plot lat.png;  kv -w json bench --total 1000"
)


def bench_command(
    ctx: typer.Context,
    endpoints: Annotated[
        str | None,
        typer.Option("--endpoints",
                     help=f"Comma list of HOST:PORT (default: the global --endpoints, {ENV_ENDPOINTS}, "
                          "or the local cluster)."),
    ] = None,
    clients: Annotated[int, typer.Option("--clients", min=1, help="Requests in flight.")] = 16,
    conns: Annotated[int, typer.Option("--conns", min=1, help="Client connections; requests spread over them.")] = 1,
    total: Annotated[int | None, typer.Option("--total", min=1, help="Requests to send (default 10000 "
                                                 "unless --duration is given).")] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", min=0.001, help="Seconds to run (instead of, or as well as, --total).")] = None,
    time_limit: Annotated[float | None, typer.Option(
        "--time-limit", min=0.001, metavar="SECONDS",
        help="Stop the run after SECONDS even if --total is not done (default 600 with --total; with "
             "--duration, the duration plus twice --timeout). A run it cuts short prints its summary and "
             "exits 1.")] = None,
    key_size: Annotated[int, typer.Option(
        "--key-size", min=1, help="Width of the key's number, after --prefix: every key is padded with zeros to "
                                  "the larger of --key-size and the digits of the largest key number "
                                  "(--key-space-size minus 1), so all keys are as long.")] = 8,
    val_size: Annotated[int, typer.Option("--val-size", min=0, help="Value length in bytes.")] = 100,
    key_space_size: Annotated[int, typer.Option("--key-space-size", min=1, help="Distinct keys.")] = 10_000,
    prefix: Annotated[str, typer.Option(
        "--prefix", help="What every key starts with: the run writes PREFIX then the key's number padded as "
                         "--key-size says (bench/00000000 .. bench/00009999 by default), next to your own keys; "
                         "delete them after with kv del --prefix PREFIX.")] = DEFAULT_PREFIX,
    sequential_keys: Annotated[bool, typer.Option("--sequential-keys",
                                                  help="Walk the key space in order instead of at random.")] = False,
    consistency: Annotated[BenchConsistency, typer.Option(
        "--consistency", help="Reads: l linearizable, s serializable.")] = BenchConsistency.l,
    op: Annotated[BenchOp, typer.Option("--op", help="put, get, or mixed (see --read-ratio).")] = BenchOp.put,
    read_ratio: Annotated[float | None, typer.Option("--read-ratio", min=0.0, max=1.0,
                                                     help="Share of gets with --op mixed (default 0.5; only "
                                                          "with --op mixed).")] = None,
    rate: Annotated[float | None, typer.Option("--rate", min=0.001,
                                                  help="Open loop: requests per second in total; latency counts "
                                                       "from each request's scheduled send time.")] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Unmeasured puts per connection first.")] = 1,
    write_out: Annotated[OutputFormat | None, typer.Option(
        "--write-out", "-w", case_sensitive=False, help="Output format (default: the global -w).")] = None,
    plot: Annotated[str | None, typer.Option(
        "--plot", metavar="FILE.png", help="Draw latency over time and throughput (needs matplotlib).")] = None,
    progress: Annotated[bool, typer.Option(
        "--progress/--no-progress", help="Progress on stderr (a bar on a terminal, else a line a second).")] = True,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0.001,
        help="Seconds per request, retries included (default: the global --command-timeout).")] = None,
) -> None:
    """Benchmark the cluster: throughput, latency (min, p50, p90, p99, max) and errors by kind."""
    settings = ctx.find_object(Settings) or Settings()
    with reporting_errors(settings):
        from kvstore import loadgen

        if endpoints:
            endpoint_list = parse_endpoint_list(endpoints)
        else:
            endpoint_list = settings.endpoints()
        from kvstore.limits import KEY_BYTES_MAX, VALUE_BYTES_MAX

        # Requests the store would refuse, refused before the run (it would count one error per slot)
        if read_ratio is not None and op is not BenchOp.mixed:
            raise UsageProblem(f"--read-ratio only applies to --op mixed, not --op {op.value}")
        longest_key = len(prefix.encode("utf-8", "surrogateescape")) + max(key_size, len(str(key_space_size - 1)))
        if longest_key > KEY_BYTES_MAX:
            raise UsageProblem(f"keys of {longest_key} characters are over the store's limit of {KEY_BYTES_MAX} bytes")
        if val_size > VALUE_BYTES_MAX:
            raise UsageProblem(f"--val-size {val_size} is over the store's limit of {VALUE_BYTES_MAX} bytes")
        if time_limit is not None and duration is not None and time_limit <= duration:
            raise UsageProblem(f"--time-limit {time_limit:g} is not more than --duration {duration:g}: the run "
                               "would always be cut short")
        if conns > clients:
            raise UsageProblem(f"--conns {conns} is more than --clients {clients}: some connections would carry "
                               "no request")
        if plot is not None:
            if not plot.lower().endswith(".png"):
                raise UsageProblem(f"--plot wants a .png file name, not {plot!r}")
            import os

            folder = os.path.dirname(os.path.abspath(plot))
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise UsageProblem(f"--plot {plot!r}: cannot write in {folder} (no such folder, or not writable)")
            try:
                import matplotlib  # noqa: F401
            except ImportError:  # (the install lacks it: exit 1, the arguments were fine)
                raise OperationFailed("--plot needs matplotlib, which is not installed: "
                                      "pip install 'paxos-kv[plot]' (or pip install matplotlib)") from None
        try:
            import hdrh  # noqa: F401
        except ImportError:  # a dependency of the package: only a broken install lacks it
            raise OperationFailed("kv bench needs hdrhistogram, which is missing from this install: "
                                  "pip install hdrhistogram") from None
        spec = _prefixed_spec(
            prefix,
            endpoints=endpoint_list,
            clients=clients,
            conns=conns,
            total=total if total is not None or duration is not None else 10_000,
            duration=duration,
            key_size=key_size,
            val_size=val_size,
            key_space_size=key_space_size,
            sequential_keys=sequential_keys,
            consistency=consistency.value,
            op=op.value,
            read_ratio=0.5 if read_ratio is None else read_ratio,
            rate=rate,
            timeout=timeout if timeout is not None else settings.command_timeout,
            warmup=warmup,
            time_limit_s=time_limit,
            tls=settings.tls(),  # --cacert/--cert/--key (KV_CACERT, ...) or the TLS default cluster's
        )
        try:
            spec.validate()
        except loadgen.LoadSpecError as exc:
            raise UsageProblem(str(exc)) from None
        stream = sys.stderr if progress else None
        # Which keys it writes is a warning, not progress: said with --no-progress too
        echo(f"bench: {_keys_line(spec, op.value)}", err=True)
        from kvstore import runtime

        runtime.tune_gc()  # this process is the load generator now
        import signal

        try:
            # Ctrl-C or SIGTERM ends the run early with its summary (see the exit codes below)
            result = loadgen.run_load_sync(spec, progress=stream, stop_signals=(signal.SIGINT, signal.SIGTERM))
        except loadgen.Unreachable as exc:
            raise OperationFailed(f"the warm-up reached no node, so the run did not start: {exc}"
                                  + unreachable_hint(settings, [str(exc)])) from None
        fmt = write_out or settings.write_out
        if fmt is OutputFormat.json:
            import json

            echo(json.dumps(result.to_dict(), indent=2))
        elif fmt is OutputFormat.table:
            from .output import print_table

            lat = result.latency_ms
            print_table(
                ["OK", "ERRORS", "SECONDS", "REQ/S", "MIN_MS", "P50_MS", "P90_MS", "P99_MS", "MAX_MS"],
                [[result.ok, sum(result.errors.values()), f"{result.elapsed_s:.3f}", f"{result.throughput:.1f}",
                  *[("-" if lat[k] is None else f"{lat[k]:.3f}") for k in ("min", "p50", "p90", "p99", "max")]]],
            )
            if op is not BenchOp.put:  # gets' hits and misses, and with both operations each one's figures
                rows = []
                for name, counts in result.by_op.items():
                    op_lat = result.op_latency_ms(name)
                    rows.append([name.upper(), counts["ok"], counts["errors"], counts.get("hits", "-"),
                                 counts.get("misses", "-"),
                                 *[("-" if op_lat[k] is None else f"{op_lat[k]:.3f}") for k in ("p50", "p99", "max")]])
                print_table(["OP", "OK", "ERRORS", "HITS", "MISSES", "P50_MS", "P99_MS", "MAX_MS"], rows)
            if result.errors:
                print_table(["ERROR", "COUNT"], sorted(result.errors.items(), key=lambda kv: -kv[1]))
        else:
            summary, _, rest = result.format_text().partition("\n")
            echo(f"{summary}\n  Keys:        {_keys_line(spec, op.value)}\n{rest}")
        if plot is not None:
            loadgen.plot_result(result, plot)
            if fmt is not OutputFormat.json:
                echo(f"plot written to {plot}")
        if result.interrupted:
            # What was measured is printed; the exit status still says the run was cut short, as the
            # shell's own would (128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM)
            unfinished = f"; {result.unfinished} requests in flight were not finished" if result.unfinished else ""
            echo(f"bench: interrupted by {result.interrupted} after {result.elapsed_s:.1f} s: the summary covers "
                 f"the {result.done} requests answered{unfinished}", err=True)
            raise typer.Exit(128 + int(getattr(signal, result.interrupted)))
        if result.stopped_by == "error":
            raise OperationFailed(f"stopped at the first error that every request would get: {result.last_error}")
        if result.ok == 0:
            raise OperationFailed(f"no request succeeded ({sum(result.errors.values())} errors)"
                                  + unreachable_hint(settings, [result.last_error]))
        if result.stopped_by == "time limit":
            limit = spec.hard_limit_s()
            if spec.total is not None and result.done < spec.total:
                raise OperationFailed(f"stopped after {limit:g} s with {result.done} of {spec.total} requests done: "
                                      "raise --time-limit")
            raise OperationFailed(f"stopped after {limit:g} s with {result.unfinished} requests still unanswered: "
                                  "raise --time-limit")


def _prefixed_spec(prefix: str, **fields: Any) -> Any:
    """A ``kvstore.loadgen.LoadSpec`` whose keys start with ``prefix`` (it shows in -w json's params).
    The engine's own keys stay bare numbers: the scripts of bench/ that drive it directly rely on them."""
    import dataclasses

    from kvstore import loadgen

    @dataclasses.dataclass
    class PrefixedSpec(loadgen.LoadSpec):
        prefix: str = ""

        def key(self, n: int) -> str:
            return self.prefix + super().key(n)

    return PrefixedSpec(prefix=prefix, **fields)


def _keys_line(spec: Any, op: str) -> str:
    """Which keys the run touches, said before it starts and in its summary."""
    does = {"put": "writes", "get": "reads", "mixed": "reads and writes"}[op]
    if op == "get" and spec.warmup:
        does = "writes (warm-up) and reads"
    first, last = spec.key(0), spec.key(spec.key_space_size - 1)
    keys = first if first == last else f"{first} .. {last}"
    return f"{does} keys {keys} ({spec.key_space_size} keys, --prefix {spec.prefix!r})"


def register(app: typer.Typer) -> None:
    """Add ``bench`` to ``app`` (the ``kv`` app calls this)."""
    app.command("bench", epilog=EPILOG)(bench_command)


__all__ = ["bench_command", "register"]
