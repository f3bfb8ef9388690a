"""``kv load FILE`` and ``kv dump [FILE]``: the store in and out as JSON lines (kvstore.bulk).

One JSON object per line: ``{"key": "k", "value": "text"}``, or for a bytes value
``{"key": "k", "value": "<base64>", "value_encoding": "base64"}``. ``-`` is stdin for load and stdout
for dump (the default). ``dump`` is consistent at one slot and writes keys in key order, so its output
loads back into an empty cluster and dumps again to the same bytes. A bad line stops ``load`` with its
number and how many records were written before it (exit 1). Progress shows on stderr when it is a
terminal. Only ``typer`` is imported at the top: trio, the client and rich come inside the commands.
``register(app)`` adds the commands to the ``kv`` app.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from typing import Annotated, Any, BinaryIO

import typer

from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    OperationFailed,
    Settings,
    UsageProblem,
    cluster_down_hint,
    error_line,
    output_file_problem,
    reporting_errors,
)
from .output import OutputFailed, OutputFormat, echo, print_json, print_table

LOAD_EPILOG = ("Examples: kv load data.jsonl;  zcat data.jsonl.gz | kv load -;  kv load --dry-run data.jsonl;  "
               "kv dump > all.jsonl && kv --endpoints OTHER:7001 load all.jsonl")
DUMP_EPILOG = "Examples: kv dump > all.jsonl;  kv dump --prefix user/ users.jsonl;  kv dump | gzip > all.jsonl.gz"


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


class _Bar:
    """A progress bar on stderr (rich, which typer brings), only when stderr is a terminal."""

    def __init__(self, description: str, total: float | None, unit: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        columns: list[Any] = [TextColumn("{task.description}")]
        if total:
            columns += [BarColumn(), TextColumn("{task.percentage:>5.1f}%")]
        columns += [TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
        self.progress = Progress(*columns, console=Console(file=sys.stderr), transient=True)
        self.task = self.progress.add_task(description, total=total, status="")
        self.unit = unit

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, completed: float, status: str) -> None:
        self.progress.update(self.task, completed=completed, status=status)


def _run_trio(run: Any) -> None:
    """``trio.run(run)``, with a Ctrl-C that trio's nurseries wrap in an exception group raised as the
    plain ``KeyboardInterrupt`` the callers handle (QA: ``kv load`` left without a word, exit 130)."""
    import trio

    try:
        trio.run(run)
    except BaseExceptionGroup as group:
        interrupted, rest = group.split(KeyboardInterrupt)
        if interrupted is not None and rest is None:
            raise KeyboardInterrupt from None
        raise


def _bar_wanted(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


def _open_input(file: str) -> tuple[BinaryIO, int | None]:
    """The input as a binary file and its size (None for a pipe or a terminal); UsageProblem if unusable."""
    if file == "-":
        if sys.stdin is None:  # closed at start (kv load - <&-)
            raise UsageProblem("cannot read stdin: standard input is closed")
        stream = typer.get_binary_stream("stdin")
    else:
        try:
            stream = open(file, "rb")  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            raise UsageProblem(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(stream.fileno())
        size = info.st_size if stat.S_ISREG(info.st_mode) else None
    except (OSError, ValueError):
        size = None
    return stream, size


def load_command(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="JSON lines to load; - for stdin.")],
    in_flight: Annotated[int, typer.Option("--in-flight", min=1, max=4096,
                                           help="Puts in flight at most (pipelined on one connection).")] = 256,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the input only; connect to nothing.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="A progress bar on stderr when it is a terminal.")] = True,
) -> None:
    """Put every record of FILE, one JSON object per line: {"key": "k", "value": "v"} (a bytes value: base64
    in "value" with "value_encoding": "base64"). Stops at the first bad line or failed put with the line
    number and how many records were written before it (exit 1); the last line of a key wins."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        if not dry_run:
            endpoints = settings.endpoints()  # checked before anything is read or connected
            tls = settings.tls()
        source, size = _open_input(file)
        from kvstore import bulk

        summary = bulk.LoadSummary()
        shell_name = "YOUR_FILE" if file == "-" else shlex.quote(file)  # (stdin: the user knows what fed it)
        bar = _Bar("load", size, "bytes") if _bar_wanted(progress) else None

        def show(s: bulk.LoadSummary) -> None:
            if bar is not None:
                # the share of the input written (QA: the bytes read ran up to 4 MiB ahead of the writes)
                bar.update(min(s.bytes_done, s.bytes_read), f"{s.written} written, line {s.lines}, "
                                                            f"{s.keys_per_s:,.0f} keys/s")

        async def run() -> None:
            if dry_run:
                await bulk.load(None, source, summary=summary, progress=show, name=shell_name)
                return
            from kvstore.client import connect

            async with connect(endpoints, timeout=settings.command_timeout, cacert=tls.get("cacert"),
                               cert=tls.get("cert"), key=tls.get("key")) as client:
                await bulk.load(client, source, in_flight=in_flight, summary=summary, progress=show,
                                name=shell_name)

        try:
            if bar is not None:
                with bar:
                    _run_trio(run)
            else:
                _run_trio(run)
        except bulk.BulkError as exc:
            if settings.write_out is OutputFormat.json:
                # a script reads where the load stopped from stdout too (the line goes to stderr as ever)
                print_json({"ok": False, "error": str(exc), "file": "stdin" if file == "-" else file,
                            "dry_run": dry_run, **summary.to_dict()})
            raise OperationFailed(str(exc)) from None
        except KeyboardInterrupt:
            # The puts in flight end with an error when the run is interrupted, so every record sent and not
            # acknowledged is of unknown outcome (QA: it said 1 in flight; 90 more keys were there).
            error_line(f"interrupted after line {summary.lines}: {summary.written} records written, "
                       f"{summary.records - summary.written} more sent whose outcome is unknown (each may or may "
                       "not have been written)")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        finally:
            if source is not typer.get_binary_stream("stdin"):
                source.close()
        name = "stdin" if file == "-" else file
        if settings.write_out is OutputFormat.json:
            print_json({"ok": True, "file": name, "dry_run": dry_run, **summary.to_dict()})
        elif settings.write_out is OutputFormat.table:
            print_table(["FILE", "LINES", "RECORDS", "WRITTEN", "SECONDS", "KEYS/S"],
                        [[name, summary.lines, summary.records, summary.written, f"{summary.seconds:.3f}",
                          f"{summary.keys_per_s:.0f}"]])
        elif dry_run:
            lines = f"{summary.lines} line{'' if summary.lines == 1 else 's'}"
            echo(f"OK: {bulk.records_text(summary.records)} in {lines} of {name}, all valid "
                       "(nothing written)")
        else:
            echo(f"OK: {bulk.records_text(summary.written)} from {name} written in {summary.seconds:.2f} s "
                       f"({summary.keys_per_s:.0f} keys/s)")


def dump_command(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Where to write; - for stdout. A file is written as FILE.part "
                                             "and renamed when complete.")] = "-",
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys starting with PREFIX.")] = "",
    progress: Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="A progress bar on stderr when it is a terminal.")] = True,
) -> None:
    """Write every key (or those under --prefix) as JSON lines in key order, consistent at one slot of the
    leader (a backup session: writes go on meanwhile). The summary goes to stderr when the records go to
    stdout, else to stdout."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        endpoints = settings.endpoints()
        tls = settings.tls()
        part = None
        if file == "-":
            if sys.stdout is None:  # closed at start (kv dump >&-): said before anything is read
                raise OutputFailed("cannot write the output: standard output is closed")
            out = typer.get_binary_stream("stdout")
        else:
            problem = output_file_problem(file, instead=f"; write to it through stdout: kv dump > {file}")
            if problem is not None:  # before connecting (a directory failed at the rename, after the dump)
                raise UsageProblem(problem)
            part = f"{file}.part"
            try:
                # every key and value: readable by its owner only, as a backup (kvstore.backup)
                out = open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")  # noqa: SIM115
            except OSError as exc:
                raise UsageProblem(f"cannot write {part}: {exc.strerror or exc}") from None
        import trio

        from kvstore import bulk
        from kvstore.client import connect

        summary = bulk.DumpSummary()
        bar = _Bar("dump", None, "keys") if _bar_wanted(progress) else None

        def show(s: bulk.DumpSummary, decoded: int) -> None:
            if bar is not None:
                bar.progress.update(bar.task, total=s.keys_total or None, completed=decoded,
                                    status=f"{s.keys} written, {s.keys_per_s:,.0f} keys/s")

        async def to_output(call: Any, *args: Any) -> None:
            try:
                await trio.to_thread.run_sync(call, *args)
            except BrokenPipeError:
                raise
            except OSError as exc:  # a full disk: said as such, not as the client's failure
                raise OutputFailed(f"cannot write {'the output' if part is None else part}: "
                                   f"{exc.strerror or exc}") from None

        async def write(data: bytes) -> None:
            await to_output(out.write, data)

        async def run() -> None:
            async with connect(endpoints, timeout=settings.command_timeout, cacert=tls.get("cacert"),
                               cert=tls.get("cert"), key=tls.get("key")) as client:
                await bulk.dump(client, write, prefix=prefix, summary=summary, progress=show)
            await to_output(out.flush)

        ok = False
        try:
            try:
                if bar is not None:
                    with bar:
                        _run_trio(run)
                else:
                    _run_trio(run)
                if part is not None:
                    out.flush()
                    os.fsync(out.fileno())
                    out.close()
                    os.replace(part, file)
                ok = True
            except bulk.BulkError as exc:
                raise OperationFailed(f"{exc}; {_dump_left(summary, part)}") from None
            except BrokenPipeError:
                # A reader that went away (kv dump | head): exit 1 and no message, as every kv command
                # (docs/cli.md) and other tools do. stderr may be the same pipe: nothing goes there.
                raise typer.Exit(EXIT_FAILED) from None
            except OutputFailed as exc:
                raise OperationFailed(f"{exc}; {_dump_left(summary, part)}") from None
            except KeyboardInterrupt:
                error_line(f"interrupted: {_dump_left(summary, part)}")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except Exception as exc:  # the client's (Unavailable, refused by the ACL, ...): one line, and what was left
                text = (str(exc) or type(exc).__name__) + cluster_down_hint(settings, exc)
                raise OperationFailed(f"{text}; {_dump_left(summary, part)}") from None
        finally:
            if part is not None and not ok:
                out.close()
                try:
                    os.unlink(part)
                except OSError:
                    pass
        where = "stdout" if part is None else file
        if settings.write_out is OutputFormat.json:
            echo(_json_text({"ok": True, "file": where, "prefix": prefix, **summary.to_dict()}), err=part is None)
        elif settings.write_out is OutputFormat.table and part is not None:
            print_table(["FILE", "KEYS", "REVISION", "SLOT", "SECONDS", "KEYS/S"],
                        [[where, summary.keys, summary.revision, summary.slot, f"{summary.seconds:.3f}",
                          f"{summary.keys_per_s:.0f}"]])
        else:
            echo(f"OK: {bulk.records_text(summary.keys)} written to {where} (of {summary.keys_total} keys at "
                       f"revision {summary.revision}, slot {summary.slot}) in {summary.seconds:.2f} s",
                       err=part is None)


def _dump_left(summary: Any, part: str | None) -> str:
    from kvstore import bulk

    if part is None:
        was = "was" if summary.keys == 1 else "were"
        return f"{bulk.records_text(summary.keys)} {was} written to stdout before it stopped (an incomplete dump)"
    return f"{part} removed ({bulk.records_text(summary.keys)} had been written to it)"


def _json_text(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False)


def register(app: typer.Typer) -> None:
    """Add ``load`` and ``dump`` to ``app`` (the ``kv`` app calls this)."""
    app.command("load", epilog=LOAD_EPILOG)(load_command)
    app.command("dump", epilog=DUMP_EPILOG)(dump_command)


__all__ = ["dump_command", "load_command", "register"]
