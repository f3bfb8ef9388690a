"""The ``kv`` command's entry point: ``run()`` (the console script and ``python -m kv_cli``).

Startup cost matters here: a one-shot ``kv get`` is a whole process. So this module imports nothing
heavy. ``run`` first moves the global options written after the subcommand to the front (etcdctl
habit), then offers the arguments to ``kv_cli.fast``, which runs the hottest commands when they are
well formed without importing typer; anything else goes to the typer app, ``kv_cli.app.app``.
``kv_cli.main.app`` still names that app (imported on first use).

Where commands are registered: ``kv_cli/app.py`` (``OPTIONAL_COMMAND_MODULES`` for a module with a
``register(app)``, ``LAZY_COMMANDS`` for one imported only when used).
"""

from __future__ import annotations

import sys
from typing import Any

# etcdctl users write global flags after the command too (``etcdctl endpoint status -w table``).
# Click only takes them before it, so the entry point moves them there first.
_GLOBAL_WITH_VALUE = ("--endpoints", "--write-out", "-w", "--command-timeout", "--cacert", "--cert", "--key")
_GLOBAL_FLAGS = ("--debug",)
_OWN_FLAGS_COMMANDS = ("bench", "serve")  # these define some of the same names themselves


class MissingValue(Exception):
    """A global option with a value, written last without one (``kv get k -w``): a usage error. Hoisted
    alone, it would take the command's name as its value ("'get' is not one of ...")."""


def _attached_short(arg: str) -> bool:
    """``-wjson``: click's short option with its value attached (the only short global option is -w)."""
    return arg.startswith("-w") and len(arg) > 2 and not arg.startswith("--")


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options that follow the subcommand to the front; everything else keeps its order.

    Raises MissingValue for such an option last, without its value."""
    front: list[str] = []
    rest: list[str] = []
    command_seen = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if not command_seen and not arg.startswith("-"):
            command_seen = True
            if arg in _OWN_FLAGS_COMMANDS:
                rest.extend(argv[i:])
                break
            rest.append(arg)
        elif command_seen and arg in _GLOBAL_WITH_VALUE:
            if i + 1 == len(argv):
                raise MissingValue(arg)
            front.extend(argv[i:i + 2])
            i += 1
        elif command_seen and (arg in _GLOBAL_FLAGS or arg.split("=", 1)[0] in _GLOBAL_WITH_VALUE
                               or _attached_short(arg)):
            front.append(arg)
        elif not command_seen and arg in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front.extend(argv[i:i + 2])
            i += 1
        elif not command_seen:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


# The commands whose arguments are keys and values: text, sent as CBOR strings
_TEXT_COMMANDS = frozenset({"put", "get", "del", "cas", "ls", "watch"})


def _command_of(argv: list[str]) -> str | None:
    """The command word of an argument list (global options and their values come first)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_WITH_VALUE:
            i += 2
            continue
        if not arg.startswith("-"):
            return arg
        i += 1
    return None


# etcdctl's commands that kv has under another name, or not at all: said at once instead of typer's
# "No such command" (etcd QA)
_ETCDCTL_ONLY = {
    "endpoint": "kv status and kv health are etcdctl's endpoint status and endpoint health (they take --endpoints "
                "too)",
    "lease": "kv has no leases",
    "txn": "kv has no transactions; kv cas KEY EXPECTED NEW compares and swaps one key",
    "compaction": "kv compacts by itself (snapshots: docs/operations.md, Snapshots and memory)",
    "defrag": "kv compacts by itself (snapshots: docs/operations.md, Snapshots and memory)",
}


def etcdctl_hint(argv: list[str]) -> str | None:
    """The error line for one of etcdctl's commands that kv does not have by that name, or None."""
    command = _command_of(argv)
    hint = _ETCDCTL_ONLY.get(command or "")
    return None if hint is None else f"no such command {command!r}: {hint} (kv --help lists the commands)"


def not_text_argument(argv: list[str]) -> str | None:
    """The error line for a key or value argument that is not valid UTF-8, or None.

    Python hands undecodable bytes of ``sys.argv`` over as lone surrogates; a key or value holding
    one cannot be encoded, and was found only when the request was built, after connecting. Checked
    here instead, before anything connects (exit 2)."""
    command = _command_of(argv)
    if command not in _TEXT_COMMANDS:
        return None
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            hint = ("; give a binary value on stdin (kv put KEY < FILE)" if command == "put" else
                    "; a binary value cannot be compared from the command line" if command == "cas" else "")
            return f"argument '{shown}' is not valid UTF-8: keys and values on the command line are text{hint}"
    return None


def run() -> None:
    """The ``kv`` console script."""
    try:
        _run()
    except KeyboardInterrupt:
        # Ctrl-C before a command took it over (while its modules load, e.g. typer's: QA saw a traceback
        # through an import at 0.1 s): the one line and the exit code every command gives it
        if "--debug" in sys.argv[1:]:
            raise
        sys.stderr.write("\nAborted!\n")
        raise SystemExit(130) from None


def _run() -> None:
    try:
        argv = hoist_global_options(sys.argv[1:])
    except MissingValue as exc:
        print(f"Error: option {exc} needs a value", file=sys.stderr)
        raise SystemExit(2) from None
    problem = not_text_argument(argv) or etcdctl_hint(argv)
    if problem is not None:
        print(f"Error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    from .output import OutputFailed

    try:
        _dispatch(argv)
    except ImportError as exc:
        # A dependency too old or missing (kvstore.frames.check_cbor2 names the fix): one line, not a
        # traceback from the import chain of whichever command ran
        if "--debug" in argv:
            raise
        print(f"Error: {exc} (run with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
    except OutputFailed as exc:  # a cached help page to a closed or full stdout (commands report their own)
        _output_lost(str(exc))
    except BrokenPipeError:
        raise
    except OSError as exc:
        # Past the typer app, only click's own writing raises this (a help page or a usage error to a full
        # stdout): every command reports its failures itself (kv_cli.common.reporting_errors)
        _output_lost(f"cannot write the output: {exc.strerror or exc}")


def _output_lost(message: str) -> None:
    if sys.stderr is not None:
        print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _dispatch(argv: list[str]) -> None:
    from .fast import run_fast

    if run_fast(argv):
        return
    from .app import app

    try:
        app(args=argv, prog_name="kv")
    except SystemExit as exc:
        # typer turns Ctrl-C into exit 130 without a word; say it, as the one-shot commands do (etcd QA)
        if exc.code == 130 and _interrupted(exc):
            sys.stderr.write("\nAborted!\n")
        raise


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes and contexts of ``exc``."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc.__cause__, exc.__context__]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        if isinstance(item, KeyboardInterrupt):
            return True
        seen.add(id(item))
        todo += [item.__cause__, item.__context__]
    return False


def __getattr__(name: str) -> Any:
    # ``from kv_cli.main import app``: the typer app, imported on first use (not by ``kv get``).
    if name == "app":
        from .app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
