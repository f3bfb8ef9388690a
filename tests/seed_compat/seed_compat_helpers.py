"""Shared helpers for the essential-paxos compatibility tests: a messenger that records every call.

``Recorder`` implements every callback of ``paxos.essential``, ``practical``, ``functional`` and
``external`` as an explicit method (no ``__getattr__`` magic, so a callback the library forgot to
define on its own messenger, or misspelled, shows up as an AttributeError in the library's caller).
Each call appends ``(name, *args)`` to ``msgs``. It also carries a manual clock and a timer queue so
that heartbeat tests run without real time.
"""


class Recorder:
    """A messenger recording all calls in order, with a manual clock for ``functional``."""

    def __init__(self):
        self.msgs = []
        self.now = 0.0
        self.timers = []  # (due_time, sequence, func): the sequence keeps equal times in call order
        self._timer_sequence = 0

    def take(self):
        """Return the recorded calls and forget them."""
        msgs, self.msgs = self.msgs, []
        return msgs

    def names(self):
        """Return only the callback names recorded so far (not forgotten)."""
        return [m[0] for m in self.msgs]

    # essential
    def send_prepare(self, proposal_id):
        self.msgs.append(("prepare", proposal_id))

    def send_promise(self, proposer_uid, proposal_id, previous_id, accepted_value):
        self.msgs.append(("promise", proposer_uid, proposal_id, previous_id, accepted_value))

    def send_accept(self, proposal_id, proposal_value):
        self.msgs.append(("accept", proposal_id, proposal_value))

    def send_accepted(self, proposal_id, accepted_value):
        self.msgs.append(("accepted", proposal_id, accepted_value))

    def on_resolution(self, proposal_id, value):
        self.msgs.append(("resolution", proposal_id, value))

    # practical
    def send_prepare_nack(self, to_uid, proposal_id, promised_id):
        self.msgs.append(("prepare_nack", to_uid, proposal_id, promised_id))

    def send_accept_nack(self, to_uid, proposal_id, promised_id):
        self.msgs.append(("accept_nack", to_uid, proposal_id, promised_id))

    def on_leadership_acquired(self):
        self.msgs.append(("leadership_acquired",))

    # functional and external
    def send_heartbeat(self, leader_proposal_id):
        self.msgs.append(("heartbeat", leader_proposal_id))

    def schedule(self, msec_delay, func_obj):
        self.msgs.append(("schedule", msec_delay))
        self._timer_sequence += 1
        self.timers.append((self.now + msec_delay, self._timer_sequence, func_obj))

    def on_leadership_lost(self):
        self.msgs.append(("leadership_lost",))

    def on_leadership_change(self, prev_leader_uid, new_leader_uid):
        self.msgs.append(("leadership_change", prev_leader_uid, new_leader_uid))

    def send_leadership_proclamation(self, proposal_id):
        self.msgs.append(("proclamation", proposal_id))

    # the clock
    def advance(self, seconds):
        """Move the clock forward, running every timer that falls due, at its due time, in order."""
        target = self.now + seconds
        # Each pass runs one due timer; a pulse adds one timer strictly later (hb_period > 0), so
        # the loop ends; the bound only guards against a callee that schedules with zero delay.
        for _ in range(10_000):
            due = [t for t in self.timers if t[0] <= target]
            if not due:
                self.now = target
                return
            first = min(due, key=lambda t: (t[0], t[1]))
            self.timers.remove(first)
            self.now = max(self.now, first[0])
            first[2]()
        raise AssertionError("timer loop did not settle")
