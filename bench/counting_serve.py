"""``kv serve`` with the core's Paxos messages counted, for ``bench/compare.py --engines``.

The classic engine (``paxos.classic.ClassicReplica``) counts what it sends in its own status
(``core_counters``: ``messages_sent``, and ``persist_batches``, one per ``take_actions()`` result with
records). The core (``paxos.replica.Replica``) does not, so this launcher wraps ``Replica.take_actions``
to count the same two things into the same counters before it runs the ordinary ``kv`` command line.
Nothing else changes: the node is ``python -m kv_cli`` with the same arguments. The wrap costs one
``len`` and a dict update per batch (the classic engine pays more for its own counting: one per message).

    python bench/counting_serve.py serve --id 1 --peers ... --engine core
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from paxos.replica import Replica  # noqa: E402

_take_actions = Replica.take_actions


def _counted_take_actions(self):
    actions = _take_actions(self)
    counters = self._counters
    sent = len(actions.send) + len(actions.send_early)
    if sent:
        counters["messages_sent"] = counters.get("messages_sent", 0) + sent
    if actions.persist:
        counters["persist_batches"] = counters.get("persist_batches", 0) + 1
    return actions


Replica.take_actions = _counted_take_actions

if __name__ == "__main__":
    from kv_cli.main import run

    sys.argv[0] = "kv"
    run()
