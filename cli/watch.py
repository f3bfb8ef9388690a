"""``kv watch KEY [--prefix]``: print every change to a key, or to the keys under a prefix, as it happens.

The output is etcdctl's: per change, three lines, ``PUT``, the key and the value, or ``DELETE``, the key
and an empty line (``-w json``: one JSON object per change, per line). The watch runs until Ctrl-C (exit 0),
until ``--max-events`` changes were printed (exit 0), or until its node stops (exit 1, saying up to which
revision every change was printed). It does not move to another node by itself: the store keeps no
history of changes, so a watch started elsewhere could not tell whether it missed some.
"""
from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from .common import EXIT_FAILED, OperationFailed, Settings, UsageProblem, reporting_errors
from .output import OutputFormat, echo, echo_value, value_fields

WATCH_EPILOG = ("Example: kv watch greeting;  kv watch --prefix config/;  kv -w json watch --prefix '' "
                "--max-events 10")


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


def watch_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key (or the prefix with --prefix; '' with --prefix: every key).")],
    prefix: Annotated[bool, typer.Option("--prefix", help="Watch every key starting with KEY.")] = False,
    max_events: Annotated[int, typer.Option("--max-events", min=0,
                                            help="Stop after this many changes (0: until Ctrl-C).")] = 0,
) -> None:
    """Print every change to KEY (or to the keys starting with it) as the cluster applies it, until Ctrl-C.

    The changes come from one node, in the order it applies them (every node applies the same ones). If
    that node stops, the watch ends with exit 1 and says up to which revision every change was printed:
    read the keys again and watch again.
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

        from kvstore.client import WatchLost, connect

        printed = 0
        as_json = settings.write_out is OutputFormat.json

        async def run() -> None:
            nonlocal printed
            async with connect(endpoints, timeout=settings.command_timeout, cacert=tls.get("cacert"),
                               cert=tls.get("cert"), key=tls.get("key")) as client:
                async with client.watch(key, prefix=prefix) as events:
                    async for event in events:
                        _print_event(event, as_json)
                        printed += 1
                        if printed == max_events:
                            return

        try:
            trio.run(run)
        except WatchLost as exc:
            advice = ("" if exc.code == "permission_denied"  # (the access rules changed: watching again is no use)
                      else ": read the keys again and watch again")
            raise OperationFailed(f"{exc} (every change up to revision {exc.revision} was printed{advice})") from None
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
