"""Failpoints: named places in the I/O code where a test can make the process die.

Theory of operation. Crash-recovery code is only trustworthy if crashes at its awkward moments are
tested, and a real process exit (not an exception a ``finally`` could tidy up after) is the honest way
to do it. Production code calls ``hit("name")`` at such a place; normally that is one dictionary lookup
on an empty dict. A test process sets the environment variable ``KV_FAILPOINTS`` before it starts::

    KV_FAILPOINTS="after_fsync=exit,before_snapshot_rename=exit"

and the first ``hit`` of a named point carries out its action. The only action is ``exit``:
``os._exit(1)`` at once, so no buffers are flushed, no ``finally`` blocks or ``atexit`` hooks run —
what the disk holds is what a crash at that point would leave (minus what a power cut also loses; for
that see ``Storage.crash_drop_unsynced``).

The variable is parsed once, at import. A malformed value raises ``ValueError`` at import, because a
fault test that silently injects no fault would pass for the wrong reason. ``reload()`` re-reads the
environment (for tests that change it in-process).

Points used by ``kvstore.storage``: ``before_fsync``, ``after_fsync`` (log group commit),
``before_snapshot_rename``, ``after_snapshot_rename``, ``before_log_rename``, ``after_log_rename``
(snapshot and log compaction).
"""
from __future__ import annotations

import os

ENV_VAR = "KV_FAILPOINTS"
ACTIONS = frozenset({"exit"})


def parse(text: str) -> dict[str, str]:
    """Parse ``"name=action,name2=action"`` into ``{name: action}``; raise ``ValueError`` if malformed.

    Empty text (or only separators and spaces) gives an empty dict.
    """
    points: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, action = item.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or not name:
            raise ValueError(f"{ENV_VAR}: expected name=action, got {item!r}")
        if action not in ACTIONS:
            raise ValueError(f"{ENV_VAR}: unknown action {action!r} for {name!r} (known: {sorted(ACTIONS)})")
        points[name] = action
    return points


_active: dict[str, str] = parse(os.environ.get(ENV_VAR, ""))


def reload() -> None:
    """Re-read ``KV_FAILPOINTS`` from the environment (raises ``ValueError`` if malformed)."""
    global _active
    _active = parse(os.environ.get(ENV_VAR, ""))


def hit(name: str) -> None:
    """Carry out the action configured for failpoint ``name``, if any; otherwise return at once."""
    if not _active:
        return
    action = _active.get(name)
    if action == "exit":
        # os._exit, not sys.exit: no cleanup may run, as in a crash.
        os._exit(1)
