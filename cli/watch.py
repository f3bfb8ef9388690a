"""``kv watch KEY [--prefix] [--rev N]``: print every change to a key, or to the keys under a prefix, as it
happens (from revision N on, with ``--rev``).

The output is etcdctl's: per change, three lines, ``PUT``, the key and the value, or ``DELETE``, the key
and an empty line (``-w json``: one JSON object per change, per line). The watch runs until Ctrl-C (exit 0)
or until ``--max-events`` changes were printed (exit 0). When its node ends it (the node stopped, lost
the others, skipped changes), the watch goes on on another node from the revision after the last one
printed: each node keeps its latest changes (``kv serve --watch-history``), so none is missed or printed
twice. It ends with exit 1, saying up to which revision every change was printed, if no node keeps the
changes from there (``compacted``), no node takes it within the command timeout, or it moved
``RESUMES_WITHOUT_PROGRESS`` times in a row without printing a change.
"""
from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .common import EXIT_FAILED, OperationFailed, Settings, UsageProblem, reporting_errors
from .output import OutputFormat, echo, echo_value, value_fields

WATCH_EPILOG = ("Example: kv watch greeting;  kv watch --prefix config/;  kv -w json watch --prefix '' "
                "--max-events 10;  kv watch --prefix config/ --rev 1200")
RESUMES_WITHOUT_PROGRESS = 3
"""Times in a row a watch moves to another node without a change printed in between, at most."""


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


def watch_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key (or the prefix with --prefix; '' with --prefix: every key).")],
    prefix: Annotated[bool, typer.Option("--prefix", help="Watch every key starting with KEY.")] = False,
    max_events: Annotated[int, typer.Option("--max-events", min=0,
                                            help="Stop after this many changes (0: until Ctrl-C).")] = 0,
    rev: Annotated[int, typer.Option("--rev", min=0, max=2**64 - 1,
                                     help="Start at this revision: first the changes from it that a node still "
                                          "keeps (kv serve --watch-history), then the new ones (0: from now on).")] = 0,
) -> None:
    """Print every change to KEY (or to the keys starting with it) as the cluster applies it, until Ctrl-C.

    The changes come from one node, in the order it applies them (every node applies the same ones). If
    that node stops, the watch goes on on another from the revision after the last one printed (each node
    keeps its latest changes), and says so on stderr. It ends with exit 1, saying up to which revision every
    change was printed, if no node keeps the changes from there: then read the keys again and watch again.
    """
    settings = _settings(ctx)
    with reporting_errors(settings):
        if settings.write_out is OutputFormat.table:
            raise UsageProblem("kv watch prints simple or json output (-w simple, -w json), not a table")
        if not prefix and key == "":
            raise UsageProblem("the key must not be empty (every key: kv watch --prefix '')")
        from kvstore.limits import check_key

        check_key(key, "prefix" if prefix else "key")
        endpoints = settings.endpoints()
        tls = settings.tls()
        import trio

        from kvstore.client import KVError, WatchLost, connect

        printed = 0
        as_json = settings.write_out is OutputFormat.json
        start = rev or None  # the revision the next watch starts at (None: from now on)
        lost: WatchLost | None = None  # how the last watch ended, while the next one starts

        async def run() -> None:
            nonlocal printed, start, lost
            async with connect(endpoints, timeout=settings.command_timeout, cacert=tls.get("cacert"),
                               cert=tls.get("cert"), key=tls.get("key")) as client:
                resumes = 0
                while True:
                    try:
                        async with client.watch(key, prefix=prefix, rev=start if lost is None else None,
                                                resume=lost) as events:
                            lost = None
                            async for event in events:
                                _print_event(event, as_json)
                                printed += 1
                                resumes = 0
                                if printed == max_events:
                                    return
                    except WatchLost as exc:
                        resumes += 1
                        if exc.code == "permission_denied" or resumes > RESUMES_WITHOUT_PROGRESS:
                            raise
                        # Every change up to exc.revision was printed: go on from the next one elsewhere
                        start, lost = exc.revision + 1, exc
                        echo(f"kv watch: {exc}; going on from revision {start} on another node", err=True)

        try:
            trio.run(run)
        except WatchLost as exc:
            advice = ("" if exc.code == "permission_denied"  # (the access rules changed: watching again is no use)
                      else ": read the keys again and watch again")
            raise OperationFailed(f"{exc} (every change up to revision {exc.revision} was printed{advice})") from None
        except KVError as exc:
            if lost is None or start is None:
                raise  # (the first watch did not start: said as any command's failure)
            # The watch ended and could not go on elsewhere (no node took it, or none keeps the changes)
            raise OperationFailed(f"{lost}, and no other node took the watch on: {exc} (every change up to "
                                  f"revision {start - 1} was printed: read the keys again and watch again)") from None
        except KeyboardInterrupt:
            raise typer.Exit(0) from None  # (Ctrl-C is how a watch ends)
        except BaseExceptionGroup as group:
            interrupted, rest = group.split(KeyboardInterrupt)
            if interrupted is not None and rest is None:
                raise typer.Exit(0) from None
            raise
        except BrokenPipeError:
            raise typer.Exit(EXIT_FAILED) from None  # (kv watch | head: as every kv command)


def _print_event(event: Any, as_json: bool) -> None:
    put = event.kind == "put"
    if as_json:
        record: dict[str, Any] = {"type": "PUT" if put else "DELETE", "key": event.key}
        if put:
            record.update(value_fields(event.value))
            record["version"] = event.version
        record["mod_revision"] = event.mod_revision
        echo(json.dumps(record, ensure_ascii=False))  # (one line per change: JSON lines)
        return
    echo("PUT" if put else "DELETE")
    echo(event.key)
    if put:
        echo_value(event.value)
    else:
        echo("")  # (etcdctl prints the deleted key's value, empty: three lines per event either way)


def register(app: typer.Typer) -> None:
    """Add ``watch`` to ``app`` (the ``kv`` app calls this)."""
    app.command("watch", epilog=WATCH_EPILOG)(watch_command)


__all__ = ["register", "watch_command"]
