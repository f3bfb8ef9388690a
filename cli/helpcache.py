"""``kv --help`` (and ``kv COMMAND --help``) from a cache of typer's own output, without importing typer.

Why: importing typer (and the click inside it) is most of what ``kv --help`` costs; the text it prints
only changes when the kv_cli code, typer, Python or the terminal width changes. So the first time a help
page is asked for, it is rendered by the typer app, exactly as ``kv ... --help`` prints it, and stored
with a key naming all of those; the next time it is printed from the file if the key still matches.

The key (first line of the file, compared in full): the command path, the help width click would use
(from the terminal size, as click computes it), the Python version, the name, size and modification time
of every file of the kv_cli package (a new or edited command changes it), and of typer's ``__init__.py``
(an upgrade changes it). A mismatch, an unreadable file or an unknown command is a miss: typer renders the
page (and an unknown command gets typer's usual error). Files live in ``$XDG_CACHE_HOME/kv`` (default
``~/.cache/kv``); nothing breaks if that cannot be written. ``KV_HELP_CACHE=0`` turns the cache off.

Each new version (an upgrade, an edited kv_cli file, another Python) leaves a page per command behind, and
nothing would ever read them again: so when a page is stored, the pages of other versions are removed
(their key differs in anything but the command and the width), with any temporary file an interrupted
store left over an hour ago. Bounded: at most ``_PRUNE_MAX`` files are looked at, one line read from each,
and only on a miss, which renders a page with typer anyway (far dearer). Two installations sharing the
folder remove each other's pages: each renders its own again, the output is the same.
"""

from __future__ import annotations

import os
import sys

_FORMAT = "kv-help-cache 1"
_PRUNE_MAX = 1000  # files looked at per stored page
_TEMP_MAX_AGE_S = 3600.0  # a temporary file older than this was left by a store that never finished


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kv")


def _width() -> int:
    """The width of click's help formatter (typer._click.formatting.HelpFormatter, max_width 80)."""
    import shutil

    return max(min(shutil.get_terminal_size().columns, 80) - 2, 50)


def _files_of(directory: str, suffixes: tuple[str, ...]) -> list[str]:
    facts = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(suffixes) and entry.is_file():
                stat = entry.stat()
                facts.append(f"{entry.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return sorted(facts)


def cache_key(path: list[str]) -> str | None:
    """The full key of the help page of ``kv PATH... --help``; None if typer cannot be found."""
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("typer")
    if spec is None or spec.origin is None:
        return None
    typer_stat = os.stat(spec.origin)
    here = os.path.dirname(os.path.abspath(__file__))
    return "|".join([
        _FORMAT, "path=" + " ".join(path), f"width={_width()}", "python=" + sys.version.replace("\n", " "),
        f"typer={spec.origin}:{typer_stat.st_size}:{typer_stat.st_mtime_ns}",
        "kv_cli=" + ",".join(_files_of(here, (".py", ".pyc"))),  # (.pyc: an install without sources)
    ])


def render_help(path: list[str]) -> str | None:
    """The help page of ``kv PATH... --help`` as the typer app prints it (without the final newline);
    None if PATH is not a command."""
    import typer.main

    from .app import app

    command = typer.main.get_command(app)
    ctx = command.context_class(command, info_name="kv", **command.context_settings)
    for name in path:
        get_command = getattr(command, "get_command", None)
        sub = get_command(ctx, name) if get_command is not None else None
        if sub is None:
            return None
        ctx = sub.context_class(sub, info_name=name, parent=ctx, **sub.context_settings)
        command = sub
    text: str = ctx.get_help()
    return text


def print_help(path: list[str]) -> bool:
    """Print the help page of ``kv PATH... --help`` (from the cache, else rendered and stored); False if
    PATH is not a command (nothing printed: typer's error is the right answer)."""
    if os.environ.get("KV_HELP_CACHE") == "0":
        return False
    key = cache_key(path)
    if key is None:
        return False
    import zlib

    name = os.path.join(_cache_dir(), f"help-{zlib.crc32(key.encode()):08x}.txt")
    text = None
    try:
        with open(name, encoding="utf-8") as f:
            stored_key, _, stored_text = f.read().partition("\n")
        if stored_key == key:
            text = stored_text
    except (OSError, UnicodeDecodeError):
        pass
    if text is None:
        text = render_help(path)
        if text is None:
            return False
        _store(name, key, text)
    from .output import echo

    echo(text)  # (a closed or full stdout: OutputFailed, which kv_cli.main.run reports)
    return True


def _store(name: str, key: str, text: str) -> None:
    temp = f"{name}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(temp, "w", encoding="utf-8") as f:
            f.write(key + "\n" + text)
        os.replace(temp, name)
    except OSError:  # a read-only home, a full disk: no cache, same output
        try:
            os.unlink(temp)
        except OSError:
            pass
        return
    _prune(os.path.dirname(name), key)


def _version_of(key: str) -> str:
    """What a key says about the installation (format, Python, typer, the kv_cli files), without the
    command path and the width: the pages of one version share it."""
    return "|".join(part for part in key.split("|") if not part.startswith(("path=", "width=")))


def _prune(directory: str, key: str) -> None:
    """Remove the pages of versions other than ``key``'s, and stale temporary files (see the module
    docstring). Errors are ignored: another kv may be pruning or storing at the same time."""
    import itertools
    import time

    version = _version_of(key)
    try:
        with os.scandir(directory) as entries:
            found = [(entry.name, entry.path) for entry in itertools.islice(entries, _PRUNE_MAX)
                     if entry.name.startswith("help-")]
    except OSError:
        return
    for entry_name, path in found:
        try:
            if entry_name.endswith(".tmp"):
                if time.time() - os.stat(path).st_mtime > _TEMP_MAX_AGE_S:
                    os.unlink(path)
                continue
            if not entry_name.endswith(".txt"):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                stored_key = f.readline(len(key) + 4096).rstrip("\n")
            if _version_of(stored_key) != version:
                os.unlink(path)
        except OSError:
            pass
