"""A linearizability checker for histories of key-value operations (pure Python, no I/O).

Test code: the nemesis tests (``tests/nemesis``) check their recorded histories with it, and
``tests/checker/test_linearizability.py`` tests it. It is not part of the installed package.

Theory of operation
-------------------
Concurrent clients record, for every operation, who ran it (``process``), what it was (``kind`` one of
``put``, ``get``, ``cas``, ``delete``; ``key``; ``value`` for put and the new value of cas; ``expected``
for cas, None meaning "only if absent"), when it was invoked and when it completed, and what it
returned:

* ``put``: nothing (any result is ignored);
* ``get``: the value read, or None for an absent key;
* ``cas``: True if it swapped, False if not;
* ``delete``: True if the key existed.

An operation whose outcome is unknown (the client gave up; a write may or may not have happened) has
``result=UNKNOWN`` and ``complete=math.inf``: it may take effect at any instant after its invocation,
or never, and its result constrains nothing. An unknown read constrains nothing at all and is dropped.
An operation that definitely did not happen (the cluster refused it) must simply not be recorded.

A history is linearizable if every operation can be given one instant between its invocation and its
completion such that, in the order of those instants, each result is what a single register would
return (Herlihy and Wing, 1990). Keys are independent registers, so each key is checked on its own
(linearizability is compositional, section 3.3 of that paper).

Per key the search is the Wing-Gong algorithm with Lowe's memoisation ("Testing for linearizability",
Lowe 2017): walk a time-ordered list of call and return entries; at a call, try to linearize that
operation next (the register model must accept its result); if the pair (set of linearized
operations, register state) was seen before, that branch is known to fail, so skip it; at a return
entry of an operation not yet linearized, backtrack. The set is a Python int bitmask.

Values should be unique per write (each put and each cas writes a value never written before). The
checker stays correct without that, but unique values keep the search small and make explanations
readable. Unknown writes multiply the search (each may or may not have happened); an unknown write
whose value nobody observed is dropped when no result on its key could depend on it (see
``_prune_unobserved``), and the search gives up with verdict ``None`` after ``max_states`` memoised
states rather than run for ever.

Use::

    h = History()                       # or History(clock=my_clock)
    op = h.invoke(process=1, kind="put", key="k", value="v1")
    h.ok(op)                            # or h.ok(op, result) / h.unknown(op) / h.fail(op)
    verdict = check(h.ops())
    assert verdict.ok, verdict.explanation

``history_to_json`` and ``history_from_json`` turn a history into JSON text and back, so a failing
history can be saved by a test and checked again later (docs/testing.md).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


class _Unknown:
    """The result of an operation whose outcome is unknown."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self):
        return (_Unknown, ())


UNKNOWN = _Unknown()
KINDS = ("put", "get", "cas", "delete")
WRITE_KINDS = ("put", "cas", "delete")


@dataclass(frozen=True)
class Op:
    """One operation of a history. ``complete`` is ``math.inf`` when the outcome is unknown."""

    index: int
    process: object
    kind: str
    key: str
    value: object = None
    expected: object = None
    invoke: float = 0.0
    complete: float = math.inf
    result: object = UNKNOWN

    @property
    def unknown(self) -> bool:
        return self.result is UNKNOWN

    def describe(self) -> str:
        if self.kind == "put":
            what = f"put({self.key!r}, {self.value!r})"
        elif self.kind == "get":
            what = f"get({self.key!r})"
        elif self.kind == "cas":
            what = f"cas({self.key!r}, {self.expected!r} -> {self.value!r})"
        else:
            what = f"delete({self.key!r})"
        result = "?" if self.unknown else ("ok" if self.kind == "put" else repr(self.result))
        end = "inf" if self.complete == math.inf else f"{self.complete:.6f}"
        return f"#{self.index} p{self.process} {what} -> {result} [{self.invoke:.6f}, {end}]"


@dataclass
class Verdict:
    """``ok``: True (linearizable), False (not), None (search budget exhausted: no answer)."""

    ok: bool | None
    key: str | None = None
    explanation: str = ""
    ops: list[Op] = field(default_factory=list)
    states_explored: int = 0

    def __bool__(self) -> bool:
        return self.ok is True


def validate_op(op: Op) -> None:
    """Raise ``ValueError`` if ``op`` is not a well-formed operation (our caller's mistake)."""
    if op.kind not in KINDS:
        raise ValueError(f"op #{op.index}: unknown kind {op.kind!r}")
    if not isinstance(op.key, str):
        raise ValueError(f"op #{op.index}: key must be a str")
    if op.kind in ("put", "cas") and not isinstance(op.value, (str, bytes)):
        raise ValueError(f"op #{op.index}: {op.kind} needs a str or bytes value")
    if op.kind == "cas" and op.expected is not None and not isinstance(op.expected, (str, bytes)):
        raise ValueError(f"op #{op.index}: cas expected must be str, bytes or None")
    if not op.invoke <= op.complete:
        raise ValueError(f"op #{op.index}: completes before it is invoked")
    if op.unknown != (op.complete == math.inf):
        raise ValueError(f"op #{op.index}: an unknown outcome goes with complete=inf, and only then")
    if not op.unknown:
        if op.kind in ("cas", "delete") and type(op.result) is not bool:
            raise ValueError(f"op #{op.index}: {op.kind} result must be a bool")
        if op.kind == "get" and op.result is not None and not isinstance(op.result, (str, bytes)):
            raise ValueError(f"op #{op.index}: get result must be str, bytes or None")


class History:
    """Records operations as concurrent clients run them (single-threaded use, e.g. trio tasks)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: dict[int, dict] = {}
        self._done: dict[int, Op] = {}
        self._next = 0

    def invoke(self, process, kind: str, key: str, *, value=None, expected=None, at: float | None = None) -> int:
        """Record the invocation of an operation; return its id for ``ok``/``unknown``/``fail``."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        op_id = self._next
        self._next += 1
        self._open[op_id] = dict(process=process, kind=kind, key=key, value=value, expected=expected,
                                 invoke=self._clock() if at is None else at)
        return op_id

    def ok(self, op_id: int, result=None, *, at: float | None = None) -> None:
        """The operation completed with ``result`` (see the module docstring for each kind)."""
        fields = self._open.pop(op_id)
        op = Op(index=op_id, complete=self._clock() if at is None else at, result=result, **fields)
        validate_op(op)
        self._done[op_id] = op

    def unknown(self, op_id: int) -> None:
        """The outcome is unknown: it may have taken effect at any later instant, or never."""
        fields = self._open.pop(op_id)
        self._done[op_id] = Op(index=op_id, complete=math.inf, result=UNKNOWN, **fields)

    def fail(self, op_id: int) -> None:
        """The operation definitely did not take effect: it is forgotten."""
        self._open.pop(op_id)

    def ops(self) -> list[Op]:
        """Every finished operation, plus still-open ones as unknown outcomes."""
        done = dict(self._done)
        for op_id, fields in self._open.items():
            done[op_id] = Op(index=op_id, complete=math.inf, result=UNKNOWN, **fields)
        return [done[i] for i in sorted(done)]

    def __len__(self) -> int:
        return len(self._done) + len(self._open)


# ---------------------------------------------------------------------------------------------------
# The register model


def _step(state, op: Op):
    """(accepted, new_state) for linearizing ``op`` in register state ``state`` (None = absent)."""
    kind = op.kind
    if kind == "put":
        return True, op.value
    if kind == "get":
        return op.result == state and type(op.result) is type(state), state
    if kind == "cas":
        matches = state == op.expected and type(state) is type(op.expected)
        if op.unknown:
            return True, (op.value if matches else state)
        return (op.result is matches), (op.value if matches else state)
    # delete
    if op.unknown:
        return True, None
    return (op.result is (state is not None)), None


def _prune_unobserved(ops: list[Op]) -> list[Op]:
    """Drop unknown writes whose effect no result on this key could depend on.

    Linearizing an unknown put or cas leaves the register at its value ``v``. Only these results
    accept state ``v`` where they might reject other states: a get of ``v``, a cas expecting ``v``, a
    cas that returned False, a delete that returned True. If none of those exists on the key, every
    linearization that uses the write can drop it and stay valid (the next write overwrites ``v``
    anyway), so the verdict is the same without it. An unknown delete has the same structure with
    state "absent": it matters only to gets of None, cas expecting None, cas False and delete False.
    """
    known = [op for op in ops if not op.unknown]
    cas_false = any(op.kind == "cas" and op.result is False for op in known)
    delete_true = any(op.kind == "delete" and op.result is True for op in known)
    delete_false = any(op.kind == "delete" and op.result is False for op in known)
    read_values = {(type(op.result), op.result) for op in known if op.kind == "get"}
    expected_values = {(type(op.expected), op.expected) for op in ops if op.kind == "cas"}
    kept = []
    for op in ops:
        if op.unknown and op.kind in ("put", "cas"):
            v = (type(op.value), op.value)
            if not (cas_false or delete_true or v in read_values or v in expected_values):
                continue
        if op.unknown and op.kind == "delete":
            absent = (type(None), None)
            if not (cas_false or delete_false or absent in read_values or absent in expected_values):
                continue
        kept.append(op)
    return kept


def check_key(key: str, ops: list[Op], *, initial=None, max_states: int = 2_000_000) -> Verdict:
    """Check the operations of one key (all with ``op.key == key``) against a register.

    ``initial`` is the register's state before the history (None: absent).
    """
    ops = [op for op in ops if not (op.kind == "get" and op.unknown)]
    ops = _prune_unobserved(ops)
    n = len(ops)
    if n == 0:
        return Verdict(ok=True, key=key)
    # Entries: call of local op i is 2*i, return is 2*i + 1 (unknown ops have none). Ties in time:
    # calls first, so operations that touch at an instant count as concurrent (no false alarms).
    entries = []
    for i, op in enumerate(ops):
        entries.append((op.invoke, 0, 2 * i))
        if not op.unknown:
            entries.append((op.complete, 1, 2 * i + 1))
    entries.sort()
    head = 2 * n  # sentinel
    size = 2 * n + 1
    nxt = [-1] * size
    prv = [-1] * size
    last = head
    for _, _, e in entries:
        nxt[last] = e
        prv[e] = last
        last = e
    nxt[last] = -1

    def unlink(e: int) -> None:
        p, q = prv[e], nxt[e]
        nxt[p] = q
        if q != -1:
            prv[q] = p

    def relink(e: int) -> None:
        p, q = prv[e], nxt[e]
        nxt[p] = e
        if q != -1:
            prv[q] = e

    known = [not op.unknown for op in ops]
    remaining = sum(known)
    state = initial
    linearized = 0
    stack: list[tuple[int, object]] = []
    cache: set = set()
    depth = 0  # known operations on the stack
    best_depth = -1
    best: tuple | None = None
    entry = nxt[head]
    while remaining:
        if len(cache) > max_states:
            return Verdict(ok=None, key=key, states_explored=len(cache),
                           explanation=f"key {key!r}: search gave up after {len(cache)} states ({n} ops)")
        assert entry != -1, "a pending operation's return entry must come before the end"
        i, is_return = entry >> 1, entry & 1
        if not is_return:
            accepted, new_state = _step(state, ops[i])
            if accepted:
                key_seen = (linearized | (1 << i), new_state)
                if key_seen not in cache:
                    cache.add(key_seen)
                    stack.append((i, state))
                    state = new_state
                    linearized |= 1 << i
                    unlink(2 * i)
                    if known[i]:
                        unlink(2 * i + 1)
                        remaining -= 1
                        depth += 1
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
            continue
        # A return of an operation not yet linearized: this branch is dead.
        if depth > best_depth:
            best_depth = depth
            best = (i, state, [j for j, _ in stack])
        if not stack:
            return _explain(key, ops, best, len(cache))
        j, state = stack.pop()
        linearized &= ~(1 << j)
        if known[j]:
            relink(2 * j + 1)
            remaining += 1
            depth -= 1
        relink(2 * j)
        entry = nxt[2 * j]
    return Verdict(ok=True, key=key, states_explored=len(cache))


def _explain(key: str, ops: list[Op], best: tuple, states: int) -> Verdict:
    stuck_index, state, order = best
    stuck = ops[stuck_index]
    placed = set(order)
    known_total = sum(1 for op in ops if not op.unknown)
    placed_known = sum(1 for j in order if not ops[j].unknown)
    recent = [ops[j] for j in order[-4:]]
    # Operations not placed that overlap the stuck one: the candidates that could have come before it.
    overlapping = [op for k, op in enumerate(ops)
                   if k not in placed and k != stuck_index and op.invoke <= stuck.complete][:6]
    involved = sorted({op.index: op for op in recent + [stuck] + overlapping}.values(), key=lambda o: o.invoke)
    lines = [
        f"key {key!r}: not linearizable. At most {placed_known} of {known_total} completed operations "
        f"can be ordered; after them the register holds {state!r}, and no order lets this one through:",
        f"  stuck:   {stuck.describe()}",
    ]
    lines += [f"  placed:  {op.describe()}" for op in recent]
    lines += [f"  pending: {op.describe()}" for op in overlapping]
    return Verdict(ok=False, key=key, explanation="\n".join(lines), ops=involved, states_explored=states)


def check(ops: Iterable[Op], *, initial: dict | None = None, max_states: int = 2_000_000) -> Verdict:
    """Check a whole history, key by key. ``initial`` maps keys to their values before the history.

    Returns the first failing key's verdict (``ok=False``), else a verdict with ``ok=None`` if some
    key's search gave up, else ``ok=True``.
    """
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        validate_op(op)
        by_key.setdefault(op.key, []).append(op)
    initial = initial or {}
    gave_up: Verdict | None = None
    explored = 0
    for key in sorted(by_key):
        verdict = check_key(key, by_key[key], initial=initial.get(key), max_states=max_states)
        explored += verdict.states_explored
        if verdict.ok is False:
            return verdict
        if verdict.ok is None and gave_up is None:
            gave_up = verdict
    if gave_up is not None:
        return gave_up
    return Verdict(ok=True, states_explored=explored)


# ---------------------------------------------------------------------------------------------------
# Saving and loading histories (JSON text; bytes values are tagged)


def _enc(x):
    if isinstance(x, bytes):
        return {"b": x.hex()}
    return x


def _dec(x):
    if isinstance(x, dict):
        return bytes.fromhex(x["b"])
    return x


def history_to_json(ops: Iterable[Op]) -> str:
    rows = []
    for op in ops:
        rows.append({
            "index": op.index, "process": op.process, "kind": op.kind, "key": op.key,
            "value": _enc(op.value), "expected": _enc(op.expected), "invoke": op.invoke,
            "complete": None if op.unknown else op.complete,
            "result": "?" if op.unknown else _enc(op.result), "unknown": op.unknown,
        })
    return json.dumps(rows, indent=0)


def history_from_json(text: str) -> list[Op]:
    ops = []
    for row in json.loads(text):
        unknown = row["unknown"]
        ops.append(Op(
            index=row["index"], process=row["process"], kind=row["kind"], key=row["key"],
            value=_dec(row["value"]), expected=_dec(row["expected"]), invoke=row["invoke"],
            complete=math.inf if unknown else row["complete"], result=UNKNOWN if unknown else _dec(row["result"]),
        ))
    return ops


__all__ = ["UNKNOWN", "Op", "History", "Verdict", "check", "check_key", "validate_op",
           "history_to_json", "history_from_json"]
