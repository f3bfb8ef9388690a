"""Ballots: the totally ordered proposal numbers of Multi-Paxos.

A ballot is ``(number, node_id)`` compared as a tuple: the number first, the proposing node's id as the
tie-breaker, so two nodes never use the same ballot (Paxos Made Simple, section 2.2: "different
proposals are given different numbers"). ``Ballot.ZERO`` is below every ballot a node can use, because
node ids start at 1; it stands for "nothing promised / nothing accepted yet".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True, order=True)
class Ballot:
    number: int
    node_id: int

    ZERO: ClassVar[Ballot]  # set below: the class must exist first

    def next_for(self, node_id: int) -> Ballot:
        """A ballot of ``node_id`` above this one: the next number, with ``node_id``. (Not always the
        smallest such ballot: ``Ballot(1, 1).next_for(3)`` is ``Ballot(2, 3)``, though ``Ballot(1, 3)``
        is above ``Ballot(1, 1)`` too. A new number keeps the rule simple and every number used once
        per node; any ballot above would be as safe.)"""
        return Ballot(self.number + 1, node_id)

    def __repr__(self) -> str:
        return f"Ballot({self.number}, {self.node_id})"


Ballot.ZERO = Ballot(0, 0)
ZERO = Ballot.ZERO
