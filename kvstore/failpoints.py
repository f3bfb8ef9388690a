"""Failpoints: named places in the I/O code where a test can make the process die or an I/O call fail.

Theory of operation. Crash-recovery and disk-fault code is only trustworthy if crashes and errors at
its awkward moments are tested, in the real process. Production code calls ``hit("name")`` at such a
place, right before the real call; normally that is one check of an empty dict. A test process sets
the environment variable ``KV_FAILPOINTS`` before it starts::

    KV_FAILPOINTS="after_fsync=exit,before_snapshot_rename=exit"
    KV_FAILPOINTS="fsync=eio@/tmp/flag"          # every fsync fails while /tmp/flag exists
    KV_FAILPOINTS="write_log=enospc"              # every write of the log fails: the disk is full

Syntax: a comma-separated list of ``name=action`` or ``name=action@PATH`` (spaces around items are
ignored; a path cannot contain a comma). Actions:

``exit``
    ``os._exit(1)`` at once, so no buffers are flushed, no ``finally`` blocks or ``atexit`` hooks
    run: what the disk holds is what a crash at that point would leave (minus what a power cut also
    loses; for that see ``Storage.crash_drop_unsynced``).
``eio``
    raise ``OSError(errno.EIO, ...)`` (a failing disk), its message naming the failpoint.
``enospc``
    raise ``OSError(errno.ENOSPC, ...)`` (a full disk), its message naming the failpoint.
``sleepN``
    sleep N milliseconds (1 to 60000) in the calling thread, then go on: a slow disk
    (``fsync_log=sleep500@/tmp/slow`` makes every fdatasync of the log take half a second longer
    while ``/tmp/slow`` exists).

With ``@PATH`` the action fires only while the file ``PATH`` exists (checked at every hit with
``os.path.exists``): a multi-process test creates the file to make a running node's fsyncs fail and
removes it to heal the disk. Without it the action fires at every hit (``exit`` fires once, since the
process is gone). The check costs a ``stat`` per hit, and only while failpoints are configured.

The variable is parsed once, at import. A malformed value raises ``ValueError`` at import (and at
``reload``), because a fault test that silently injects no fault would pass for the wrong reason.
``reload()`` re-reads the environment (for tests that change it in-process).

Points used by ``kvstore.storage`` (each is hit right before the real call):

* ``before_fsync``, ``after_fsync``: around the log's group-commit fdatasync (``sync``,
  ``fsync_through``).
* ``fsync_log``: before every fdatasync of the log (group commit, and the one at open).
* ``fsync_file``: before the fsync of a file written whole (snapshot, rewritten log, meta file) ahead
  of its rename, and before the fsync of a log whose torn tail recovery cut off.
* ``fsync_dir``: before every fsync of a directory.
* ``fsync``: at every one of the ``fsync_log``, ``fsync_file`` and ``fsync_dir`` sites (hit first),
  so ``fsync=eio`` breaks every fsync.
* ``write_log``: before each write of a batch of records to the log (``sync``, ``flush``).
* ``before_snapshot_rename``, ``after_snapshot_rename``, ``before_log_rename``, ``after_log_rename``:
  snapshot and log compaction.

``kvstore.server`` uses ``before_reply`` (after apply, before the client hears).
"""
from __future__ import annotations

import errno
import os
import re
import time
from typing import NamedTuple

ENV_VAR = "KV_FAILPOINTS"
ACTIONS = frozenset({"exit", "eio", "enospc"})
_ERRNOS = {"eio": errno.EIO, "enospc": errno.ENOSPC}
_SLEEP = re.compile(r"sleep([1-9][0-9]{0,4})")  # sleepN: N milliseconds, 1 to 60000 (a slow disk)


class Failpoint(NamedTuple):
    """What one configured failpoint does: ``action``, and the flag file it waits for (or None)."""

    action: str
    path: str | None = None


def parse(text: str) -> dict[str, Failpoint]:
    """Parse ``"name=action,name2=action@PATH"`` into ``{name: Failpoint(action, path)}``; raise
    ``ValueError`` if malformed (no ``=``, no name, an unknown action, an empty path after ``@``).

    Empty text (or only separators and spaces) gives an empty dict.
    """
    points: dict[str, Failpoint] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, spec = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{ENV_VAR}: expected name=action or name=action@PATH, got {item!r}")
        action, at, path = spec.partition("@")
        action, path = action.strip(), path.strip()
        sleep = _SLEEP.fullmatch(action)
        if action not in ACTIONS and not (sleep and int(sleep.group(1)) <= 60000):
            raise ValueError(f"{ENV_VAR}: unknown action {action!r} for {name!r} (known: {sorted(ACTIONS)}, "
                             "and sleepN for N milliseconds, 1 to 60000)")
        if at and not path:
            raise ValueError(f"{ENV_VAR}: empty path after '@' for {name!r} in {item!r}")
        points[name] = Failpoint(action, path if at else None)
    return points


_active: dict[str, Failpoint] = parse(os.environ.get(ENV_VAR, ""))


def reload() -> None:
    """Re-read ``KV_FAILPOINTS`` from the environment (raises ``ValueError`` if malformed; the
    failpoints configured before stay then)."""
    global _active
    _active = parse(os.environ.get(ENV_VAR, ""))


def hit(name: str) -> None:
    """Carry out the action configured for failpoint ``name``, if any (and if its flag file exists);
    otherwise return at once. Raises ``OSError`` for ``eio`` and ``enospc``; never returns for ``exit``;
    sleeps for ``sleepN``.
    Safe to call from any thread."""
    if not _active:
        return
    point = _active.get(name)
    if point is None:
        return
    if point.path is not None and not os.path.exists(point.path):
        return
    if point.action == "exit":
        # os._exit, not sys.exit: no cleanup may run, as in a crash.
        os._exit(1)
    if point.action.startswith("sleep"):
        time.sleep(int(point.action[5:]) / 1000)  # (a slow disk blocks its caller alike)
        return
    code = _ERRNOS[point.action]
    raise OSError(code, f"{os.strerror(code)} (injected by failpoint {name}, {ENV_VAR})")
