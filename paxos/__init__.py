"""paxos: a Paxos library in two parts.

* The essential-paxos 2.0 compatible modules: ``paxos.essential``, ``paxos.practical``,
  ``paxos.functional``, ``paxos.external`` and ``paxos.durable`` (single-decree Paxos driven through a
  messenger callback interface).
* A pure Multi-Paxos core that does no I/O: ``paxos.replica.Replica`` takes messages, ticks and
  proposals in and hands back ``paxos.actions.Actions`` (persist, then send, then apply).

Importing this package loads neither trio nor cbor2.
"""

from .actions import Actions, DurableState  # noqa: E402
from .ballot import Ballot  # noqa: E402
from .replica import Config, Options, Replica  # noqa: E402

__all__ = ["Actions", "Ballot", "Config", "DurableState", "Options", "Replica"]
