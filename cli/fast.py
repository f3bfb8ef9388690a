"""The fast path: ``kv put|get|del|cas|ls|status|health`` and ``kv serve`` without typer, when the
arguments are plain, and help pages from a cache (``kv_cli.helpcache``).

Why: a one-shot ``kv get`` is a whole process, and typer (with click) takes longer to import and to
build its commands than the rest of the command together, connection included (bench/cli_startup.py
measures it; docs/cli.md has the figures). ``kv serve`` pays for typer on every node start and then
keeps what it imported in memory (``kv_cli.serve`` has the figures). So ``kv_cli.main.run`` first hands
the arguments (global options already in front) to ``run_fast``.

The rule that keeps both paths the same: this parser only *accepts* what it fully understands and
leaves everything else to typer. It knows the global options, these commands' own options, and their
positional arguments, and it accepts a value only when typer would take it unchanged (``-w`` one of the
formats, in any case; ``--command-timeout`` what ``common.parse_duration`` takes; ``--consistency`` l or s).
Anything else (``--help``, an unknown or malformed option, a missing or extra argument, ``-`` or ``--``
among the arguments) returns False, and typer parses the same arguments from the start, printing its
usage error or help as always. ``kv serve`` options go through the same rule: each known option at most
once, integers as plain digits within typer's bounds, ``--fsync`` and ``--engine`` exactly one of their
choices, ``--id`` and ``--data-dir`` present. What the commands then do is the same function either way
(``kv_cli.oneshot``, ``kv_cli.serve``), with the same ``Settings``.
"""

from __future__ import annotations

import os
import sys
from typing import cast

from .common import ENV_ENDPOINTS, EXIT_FAILED, EXIT_INTERRUPTED, RANGE_ITEMS_MAX, Settings, parse_duration
from .output import OutputFormat

_GLOBAL_VALUE_OPTIONS = {"--endpoints": "endpoints", "--write-out": "write_out", "-w": "write_out",
                         "--command-timeout": "command_timeout", "--cacert": "cacert", "--cert": "cert",
                         "--key": "key"}
_ENVIRONMENT = {"endpoints": ENV_ENDPOINTS, "cacert": "KV_CACERT", "cert": "KV_CERT", "key": "KV_KEY"}

# command -> (flags, options with a value, how many positional arguments: at least, at most (None: any))
_COMMANDS: dict[str, tuple[frozenset[str], frozenset[str], int, int | None]] = {
    "put": (frozenset(), frozenset(), 1, 2),
    "get": (frozenset({"--prefix", "--keys-only", "--print-value-only"}), frozenset({"--consistency", "--limit"}),
            1, 1),
    "del": (frozenset({"--prefix"}), frozenset(), 1, 1),
    "cas": (frozenset({"--absent"}), frozenset(), 2, None),
    "ls": (frozenset(), frozenset({"--consistency", "--limit"}), 0, 1),
    "status": (frozenset(), frozenset(), 0, 0),
    "health": (frozenset(), frozenset(), 0, 0),
}


# kv serve: option -> (keyword of kv_cli.serve.serve, kind); kinds: "int" (digits only, at least 1),
# "id" and "count" (digits only), "ms" (a plain decimal from 0.1 to 1000), "seconds" (a plain decimal), "str", "fsync",
# "engine", "flag", "on", "off"
_SERVE_OPTIONS: dict[str, tuple[str, str]] = {
    "--id": ("node_id", "id"), "--data-dir": ("data_dir", "str"), "--peers": ("peers", "str"),
    "--join": ("join", "str"), "--tick-ms": ("tick_ms", "ms"),
    "--election-timeout-ticks": ("election_timeout_ticks", "int"), "--heartbeat-ticks": ("heartbeat_ticks", "int"),
    "--batch-size": ("batch_size", "int"), "--window": ("window", "int"),
    "--snapshot-every": ("snapshot_every", "int"), "--idle-snapshot-seconds": ("idle_snapshot_seconds", "seconds"),
    "--watch-history": ("watch_history", "count"),
    "--fsync": ("fsync", "fsync"), "--arriving-frames-max-mib": ("arriving_frames_max_mib", "int"),
    "--max-client-connections": ("max_client_connections", "int"),
    "--cluster-id": ("cluster_id", "str"), "--exit-on-disk-failure": ("exit_on_disk_failure", "flag"),
    "--lazy-learners": ("lazy_learners", "on"), "--eager-learners": ("lazy_learners", "off"),
    "--check-quorum": ("check_quorum", "on"), "--no-check-quorum": ("check_quorum", "off"),
    "--engine": ("engine", "engine"), "--metrics-addr": ("metrics_addr", "str"), "--cacert": ("cacert", "str"),
    "--cert": ("cert", "str"), "--key": ("key", "str"), "--acl": ("acl", "str"),
}
_SERVE_VALUES = {"fsync": ("always", "off"), "engine": ("core", "classic")}


class _NotPlain(Exception):
    """Arguments this parser leaves to typer."""


def _split_option(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        name, _, value = arg.partition("=")
        return name, value
    if arg.startswith("-w") and len(arg) > 2 and not arg.startswith("--"):
        return "-w", arg[2:]  # click's attached short option value: -wjson
    return arg, None


def parse(argv: list[str]) -> tuple[str, Settings, dict[str, object], list[str]] | None:
    """``(command, settings, options, positional arguments)``, or None for arguments left to typer."""
    try:
        return _parse(argv)
    except _NotPlain:
        return None


def _parse(argv: list[str]) -> tuple[str, Settings, dict[str, object], list[str]]:
    given: dict[str, str] = {}
    debug = False
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, value = _split_option(argv[i])
        if name == "--debug" and value is None:
            debug = True
        elif name in _GLOBAL_VALUE_OPTIONS:
            if value is None:
                i += 1
                if i >= len(argv):
                    raise _NotPlain
                value = argv[i]
            given[_GLOBAL_VALUE_OPTIONS[name]] = value
        else:
            raise _NotPlain  # --help, -h, a typo: typer's business
        i += 1
    if i < len(argv) and argv[i] == "serve":
        return "serve", _settings(given, debug), _parse_serve(argv[i + 1:]), []
    if i >= len(argv) or argv[i] not in _COMMANDS:
        raise _NotPlain
    command = argv[i]
    flags, valued, least, most = _COMMANDS[command]
    options: dict[str, object] = {}
    positional: list[str] = []
    i += 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            name, value = _split_option(arg)
            if name in flags and value is None:
                options[name] = True
            elif name in valued:
                if value is None:
                    i += 1
                    if i >= len(argv):
                        raise _NotPlain
                    value = argv[i]
                options[name] = value
            else:
                raise _NotPlain  # "-", "--", --help, negative numbers, unknown options
        else:
            positional.append(arg)
        i += 1
    if len(positional) < least or (most is not None and len(positional) > most):
        raise _NotPlain
    if options.get("--consistency", "l") not in ("l", "s"):
        raise _NotPlain
    limit = options.get("--limit", "0")
    if not (isinstance(limit, str) and limit.isascii() and limit.isdigit()):
        raise _NotPlain  # typer says what is wrong with it
    if int(limit) > RANGE_ITEMS_MAX:  # (typer's to report)
        raise _NotPlain
    options["--limit"] = int(limit)
    return command, _settings(given, debug), options, positional


def _parse_serve(argv: list[str]) -> dict[str, object]:
    """``kv serve``'s options as keywords of ``kv_cli.serve.serve``; _NotPlain unless every argument is
    one of its options given once, with a value typer would take unchanged, and --id and --data-dir are
    there (typer then reports what is wrong, as always)."""
    options: dict[str, object] = {}
    i = 0
    while i < len(argv):
        name, value = _split_option(argv[i])
        if name not in _SERVE_OPTIONS:
            raise _NotPlain  # a positional argument, --help, "-", "--", a typo
        keyword, kind = _SERVE_OPTIONS[name]
        if keyword in options:
            raise _NotPlain  # given twice (or --lazy-learners with --eager-learners)
        if kind in ("flag", "on", "off"):
            if value is not None:
                raise _NotPlain
            options[keyword] = kind != "off"
        else:
            if value is None:
                i += 1
                if i >= len(argv):
                    raise _NotPlain
                value = argv[i]
            options[keyword] = _serve_value(kind, value)
        i += 1
    if "node_id" not in options or "data_dir" not in options:
        raise _NotPlain
    return options


def _serve_value(kind: str, text: str) -> object:
    if kind == "str":
        return text
    if kind in _SERVE_VALUES:
        if text not in _SERVE_VALUES[kind]:
            raise _NotPlain
        return text
    if kind in ("ms", "seconds"):
        if not (text.replace(".", "", 1).isdigit() and text.isascii()):
            raise _NotPlain
        number = float(text)
        if kind == "ms" and not 0.1 <= number <= 1000:
            raise _NotPlain
        return number
    if not (text.isdigit() and text.isascii()):  # no sign, space, underscore or other digits
        raise _NotPlain
    number = int(text)
    if (kind == "int" and number < 1) or (kind == "count" and number > 10_000_000):
        raise _NotPlain  # (typer says what is wrong; 10,000,000: kvstore.watches.WATCH_HISTORY_CHANGES_MAX)
    return number


def _settings(given: dict[str, str], debug: bool) -> Settings:
    for name, variable in _ENVIRONMENT.items():
        if name not in given:
            value = os.environ.get(variable)
            if value:  # click ignores an empty variable
                given[name] = value
    write_out = OutputFormat.simple
    if "write_out" in given:
        try:
            write_out = OutputFormat(given["write_out"].lower())
        except ValueError:
            raise _NotPlain from None
    command_timeout = 5.0
    if "command_timeout" in given:
        try:
            command_timeout = parse_duration(given["command_timeout"])
        except ValueError:
            raise _NotPlain from None  # typer says what is wrong with it, with the same function
    return Settings(endpoints_text=given.get("endpoints"), write_out=write_out, command_timeout=command_timeout,
                    debug=debug, cacert=given.get("cacert"), cert=given.get("cert"), key=given.get("key"))


def run_fast(argv: list[str]) -> bool:
    """Run ``argv`` (global options in front) if it is a plain invocation of a one-shot command, or asks
    for a help page, and return True (or exit, for a non-zero status); False: nothing done, let typer
    have it."""
    try:
        done = _run(argv)
        if done and sys.stdout is not None:  # (None: closed at start; a command that printed said so)
            sys.stdout.flush()
        return done
    except BrokenPipeError:
        # The reader went away (kv get k | head -c1): as click does, no traceback, exit 1. stdout now
        # points at /dev/null, so the interpreter's last flush has nowhere to fail (Python's advice).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")
        raise SystemExit(EXIT_INTERRUPTED) from None  # (130 as every kv command: etcd QA)


def _run(argv: list[str]) -> bool:
    if argv in (["--version"], ["version"]):  # (with other options: the typer app's version command)
        from .common import version_line
        from .output import echo

        echo(version_line())
        return True
    if argv and argv[-1] in ("--help", "-h") and all(a and not a.startswith("-") for a in argv[:-1]):
        from .helpcache import print_help  # kv --help, kv cluster up --help: typer's text, cached

        return print_help(argv[:-1])
    parsed = parse(argv)
    if parsed is None:
        return False
    command, settings, options, args = parsed
    if command == "serve":
        from .serve import serve

        serve(settings, **options)  # type: ignore[arg-type]  # (_parse_serve: the keywords and types)
        return True
    from . import oneshot

    if command == "put":
        oneshot.put(settings, args[0], args[1] if len(args) > 1 else None)
    elif command == "get":
        oneshot.get(settings, args[0], prefix=bool(options.get("--prefix")),
                    keys_only=bool(options.get("--keys-only")), consistency=str(options.get("--consistency", "l")),
                    print_value_only=bool(options.get("--print-value-only")), limit=cast(int, options["--limit"]))
    elif command == "del":
        oneshot.delete(settings, args[0], prefix=bool(options.get("--prefix")))
    elif command == "cas":
        oneshot.cas(settings, args[0], args[1:], absent=bool(options.get("--absent")))
    elif command == "ls":
        oneshot.ls(settings, args[0] if args else "", consistency=str(options.get("--consistency", "l")),
                   limit=cast(int, options["--limit"]))
    elif command == "status":
        oneshot.status(settings)
    else:
        oneshot.health(settings)
    return True
