"""Tests of ``kvstore.statemachine``: operations, exactly-once, snapshots, determinism.

How:
* Example tests pin each operation's result and effect (versions, mod_revision, one revision per
  executed write command, including a cas that does not swap and a delete that finds nothing).
* Dedup tests drive retries, ``ack_below`` pruning, stale retries, the per-client result cap and the
  LRU eviction of clients, and check that nothing but the documented state changes.
* A hypothesis ``RuleBasedStateMachine`` runs random writes, retries with the same ids, ack advances
  and snapshot/restore cycles against a plain-dict model that predicts every result, and against a
  twin replica fed the same bytes (equal ``state_hash``).
* Snapshots: round trips keep the hash, the snapshot bytes and the dedup table; truncated or damaged
  snapshots raise ``SnapshotError`` and nothing else.
"""
from __future__ import annotations

import hashlib
import random
import re
import struct

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvstore.commands import encode_cas, encode_delete, encode_put
from kvstore.statemachine import (
    CLIENTS_MAX,
    RESULTS_PER_CLIENT_MAX,
    Entry,
    RangeTooLarge,
    SnapshotError,
    StateMachine,
)

A = b"client-a"
B = b"client-b"


class Driver:
    """Hands out request ids per client so tests read as sequences of operations."""

    def __init__(self, sm: StateMachine | None = None):
        self.sm = sm if sm is not None else StateMachine()
        self.next_request: dict[bytes, int] = {}

    def _rid(self, client: bytes) -> int:
        rid = self.next_request.get(client, 1)
        self.next_request[client] = rid + 1
        return rid

    def put(self, key, value, client=A, ack=0):
        return self.sm.apply(encode_put(client, self._rid(client), ack, key, value))[1]

    def delete(self, key, prefix=False, client=A, ack=0):
        return self.sm.apply(encode_delete(client, self._rid(client), ack, key, prefix))[1]

    def cas(self, key, expected, new, client=A, ack=0):
        return self.sm.apply(encode_cas(client, self._rid(client), ack, key, expected, new))[1]


# -----------------------------------------------------------------------------------------------
# operations


def test_empty_machine():
    sm = StateMachine()
    assert (sm.revision, len(sm), sm.get("k"), sm.range()) == (0, 0, None, [])


def test_put_creates_then_updates_with_versions_and_mod_revision():
    d = Driver()
    assert d.put("k", "v1") == {"rev": 1}
    assert d.sm.get("k") == Entry("k", "v1", 1, 1)
    assert d.put("other", b"x") == {"rev": 2}
    assert d.put("k", b"v2") == {"rev": 3}
    assert d.sm.get("k") == Entry("k", b"v2", 2, 3)
    assert d.sm.get("other") == Entry("other", b"x", 1, 2)
    assert (d.sm.revision, len(d.sm)) == (3, 2)


def test_delete_counts_and_always_takes_a_revision():
    d = Driver()
    d.put("k", "v")
    assert d.delete("missing") == {"deleted": 0, "rev": 2}
    assert d.delete("k") == {"deleted": 1, "rev": 3}
    assert d.sm.get("k") is None and len(d.sm) == 0
    # A recreated key starts its version again.
    d.put("k", "again")
    assert d.sm.get("k") == Entry("k", "again", 1, 4)


def test_delete_prefix_removes_exactly_the_matching_keys():
    d = Driver()
    for key in ["a", "ab", "abc", "b", "aa"]:
        d.put(key, key)
    assert d.delete("ab", prefix=True) == {"deleted": 2, "rev": 6}
    assert [e.key for e in d.sm.range()] == ["a", "aa", "b"]
    assert d.delete("zz", prefix=True) == {"deleted": 0, "rev": 7}
    assert d.delete("", prefix=True) == {"deleted": 3, "rev": 8}
    assert len(d.sm) == 0


def test_cas_only_if_absent():
    d = Driver()
    assert d.cas("k", None, "v") == {"ok": True, "rev": 1}
    assert d.sm.get("k") == Entry("k", "v", 1, 1)
    assert d.cas("k", None, "w") == {"ok": False, "rev": 2}
    assert d.sm.get("k") == Entry("k", "v", 1, 1)  # a failed cas takes a revision but changes nothing


def test_cas_compares_value_and_type():
    d = Driver()
    d.put("k", "v")
    assert d.cas("k", b"v", "w") == {"ok": False, "rev": 2}  # bytes b"v" is not the str "v"
    assert d.cas("k", "other", "w") == {"ok": False, "rev": 3}
    assert d.cas("missing", "v", "w") == {"ok": False, "rev": 4}
    assert d.sm.get("missing") is None
    assert d.cas("k", "v", b"w") == {"ok": True, "rev": 5}
    assert d.sm.get("k") == Entry("k", b"w", 2, 5)


def test_range_is_sorted_and_filtered():
    d = Driver()
    for key in ["b", "a/2", "a/1", "c", "a/10"]:
        d.put(key, key.upper())
    assert d.sm.range("a/") == [Entry("a/1", "A/1", 1, 3), Entry("a/10", "A/10", 1, 5),
                                Entry("a/2", "A/2", 1, 2)]
    assert [e.key for e in d.sm.range()] == ["a/1", "a/10", "a/2", "b", "c"]
    assert d.sm.range("x") == []


def test_malformed_command_changes_nothing():
    d = Driver()
    d.put("k", "v")
    before = (d.sm.state_hash(), d.sm.snapshot())
    for junk in [b"", b"\xff", cbor2.dumps([1, A, 1, 0, "k"]), cbor2.dumps("put")]:
        identity, result = d.sm.apply(junk)
        assert identity is None and result["error"].startswith("malformed command")
    assert (d.sm.state_hash(), d.sm.snapshot()) == before


# -----------------------------------------------------------------------------------------------
# exactly-once


def test_retry_returns_first_result_without_a_second_revision():
    sm = StateMachine()
    first = encode_put(A, 1, 1, "k", "v1")
    assert sm.apply(first) == ((A, 1), {"rev": 1})
    sm.apply(encode_put(A, 2, 1, "k", "v2"))
    hash_before = sm.state_hash()
    assert sm.apply(first) == ((A, 1), {"rev": 1})
    assert sm.revision == 2 and sm.get("k") == Entry("k", "v2", 2, 2)
    assert sm.state_hash() == hash_before


def test_retry_of_each_kind_returns_its_first_result():
    sm = StateMachine()
    commands = [encode_cas(A, 1, 1, "k", None, "v"), encode_delete(A, 2, 1, "k"),
                encode_delete(A, 3, 1, "k", prefix=True), encode_cas(A, 4, 1, "k", "nope", "x")]
    firsts = [sm.apply(c) for c in commands]
    assert [r for _, r in firsts] == [{"ok": True, "rev": 1}, {"deleted": 1, "rev": 2},
                                      {"deleted": 0, "rev": 3}, {"ok": False, "rev": 4}]
    sm.apply(encode_put(A, 5, 1, "k", "later"))  # would change every answer if re-executed
    assert [sm.apply(c) for c in commands] == firsts
    assert sm.revision == 5


@pytest.mark.parametrize("first, second", [
    (encode_put(A, 1, 1, "k", "v"), encode_cas(A, 1, 1, "lock", None, "me")),
    (encode_cas(A, 1, 1, "lock", None, "me"), encode_delete(A, 1, 1, "k")),
    (encode_delete(A, 1, 1, "k"), encode_put(A, 1, 1, "k", "v")),
], ids=["put then cas", "cas then delete", "delete then put"])
def test_another_kind_of_command_under_a_remembered_identity_is_refused_not_answered(first, second):
    """Not a retry (a retry is the same command again): a client id two clients share (QA: a process
    forked after its client was made). It used to get the first command's result, so a ``cas --absent``
    was reported as taking a lock that was never written."""
    sm = StateMachine()
    _, first_result = sm.apply(first)
    hash_before, revision = sm.state_hash(), sm.revision
    identity, result = sm.apply(second)
    assert identity == (A, 1)
    assert "share one client id" in result["error"] and "not applied" in result["error"]
    assert sm.revision == revision and sm.state_hash() == hash_before
    assert sm.apply(first)[1] == first_result  # the real retry is still answered


def test_results_are_fresh_dicts():
    sm = StateMachine()
    command = encode_put(A, 1, 1, "k", "v")
    _, result = sm.apply(command)
    result["rev"] = 999
    assert sm.apply(command)[1] == {"rev": 1}


def test_same_request_id_from_another_client_is_a_new_request():
    sm = StateMachine()
    sm.apply(encode_put(A, 1, 1, "k", "a"))
    assert sm.apply(encode_put(B, 1, 1, "k", "b")) == ((B, 1), {"rev": 2})
    assert sm.get("k").value == "b"


def test_ack_below_prunes_results_and_makes_retries_stale():
    sm = StateMachine()
    old = [encode_put(A, rid, 1, f"k{rid}", "v") for rid in (1, 2, 3)]
    for command in old:
        sm.apply(command)
    assert sm.remembered(A) == (1, [1, 2, 3])
    sm.apply(encode_put(A, 4, 3, "k4", "v"))  # requests 1 and 2 were answered
    assert sm.remembered(A) == (3, [3, 4])
    snapshot_before = sm.snapshot()
    assert sm.apply(old[0]) == ((A, 1), {"error": "stale request"})
    assert sm.snapshot() == snapshot_before  # a stale retry changes nothing, not even LRU order
    assert sm.apply(old[2]) == ((A, 3), {"rev": 3})  # still remembered: at the floor


def test_lower_ack_below_does_not_lower_the_floor():
    sm = StateMachine()
    sm.apply(encode_put(A, 5, 5, "k", "v"))
    sm.apply(encode_put(A, 6, 2, "k", "w"))  # reordered or old client state; floor stays at 5
    assert sm.remembered(A) == (5, [5, 6])
    assert sm.apply(encode_put(A, 3, 0, "k", "stale"))[1] == {"error": "stale request"}
    assert sm.get("k").value == "w"


def test_unseen_request_above_floor_executes_out_of_order():
    # Pipelined requests may be decided out of order; a lower id above the floor is still new.
    sm = StateMachine()
    sm.apply(encode_put(A, 10, 5, "k", "ten"))
    assert sm.apply(encode_put(A, 7, 5, "k", "seven")) == ((A, 7), {"rev": 2})
    assert sm.get("k").value == "seven"


def test_result_cap_drops_lowest_request_and_raises_floor():
    sm = StateMachine()
    commands = [encode_put(A, rid, 0, "k", str(rid)) for rid in range(RESULTS_PER_CLIENT_MAX + 1)]
    for command in commands:
        sm.apply(command)
    floor, remembered = sm.remembered(A)
    assert floor == 1 and remembered == list(range(1, RESULTS_PER_CLIENT_MAX + 1))
    revision = sm.revision
    # The forgotten request must not run twice: its retry is stale, not re-executed.
    assert sm.apply(commands[0])[1] == {"error": "stale request"}
    assert sm.revision == revision and sm.get("k").value == str(RESULTS_PER_CLIENT_MAX)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)).map(lambda t: (t[0], min(t))), max_size=80))
def test_remembered_results_follow_the_floor_and_the_cap_with_ids_in_any_order(monkeypatch, requests):
    """The dedup rules, against a plain model: a remembered request gets its first result, one below
    the floor is stale, and one that executes keeps its result; every request that is not stale
    raises the floor to its ack_below (dropping the results below), and beyond RESULTS_PER_CLIENT_MAX
    results the lowest goes and the floor rises past it. Request ids and ack_below arrive in any
    order, as the pipelined requests of one client may be decided."""
    monkeypatch.setattr("kvstore.statemachine.RESULTS_PER_CLIENT_MAX", 4)
    sm = StateMachine()
    floor, kept = 0, {}

    def raise_floor(to: int) -> dict:
        return {r: rev for r, rev in kept.items() if r >= to}

    for request_id, ack_below in requests:
        _, result = sm.apply(encode_put(A, request_id, ack_below, "k", str(request_id)))
        if request_id in kept:
            assert result == {"rev": kept[request_id]}
            if ack_below > floor:
                floor, kept = ack_below, raise_floor(ack_below)
        elif request_id < floor:
            assert result == {"error": "stale request"}
        else:
            if ack_below > floor:
                floor, kept = ack_below, raise_floor(ack_below)
            kept[request_id] = result["rev"]
            if len(kept) > 4:
                oldest = min(kept)
                del kept[oldest]
                floor = max(floor, oldest + 1)
        assert sm.remembered(A) == (floor, sorted(kept)), (request_id, ack_below)


def test_results_of_all_clients_together_are_bounded_by_evicting_lru_clients(monkeypatch):
    monkeypatch.setattr("kvstore.statemachine.RESULTS_MAX", 10)
    monkeypatch.setattr("kvstore.statemachine.RESULTS_PER_CLIENT_MAX", 4)
    replicas = [StateMachine(), StateMachine()]
    commands = []
    for c in range(4):  # four clients, three unacknowledged requests each
        for rid in (1, 2, 3):
            commands.append(encode_put(_client(c), rid, 0, f"k{c}", f"v{c}.{rid}"))
    for sm in replicas:
        for command in commands[:9]:
            sm.apply(command)
        assert sm.results_count() == 9 and sm.clients_count() == 3
        for command in commands[9:]:  # 12 results > 10: the least recently used client goes
            sm.apply(command)
        assert sm.results_count() == 9 and sm.clients_count() == 3
        assert sm.remembered(_client(0)) is None
        assert sm.remembered(_client(3)) == (0, [1, 2, 3])  # the client just served is kept
        # Acknowledging frees room: pruned results leave the count too.
        sm.apply(encode_put(_client(1), 4, 4, "k1", "v1.4"))
        assert sm.remembered(_client(1)) == (4, [4])
        assert sm.results_count() == 7
    assert replicas[0].snapshot() == replicas[1].snapshot()  # the same on every replica
    restored = StateMachine.restore(replicas[0].snapshot())
    assert restored.results_count() == 7
    assert restored.snapshot() == replicas[0].snapshot()


def _client(i: int) -> bytes:
    return b"c%05d" % i


def _fill_clients(sm: StateMachine) -> None:
    for i in range(CLIENTS_MAX):
        sm.apply(encode_put(_client(i), 1, 0, "k", "v"))


def test_lru_client_is_evicted_deterministically():
    sm = StateMachine()
    _fill_clients(sm)
    assert sm.clients_count() == CLIENTS_MAX
    # Client 0 is the oldest, but a duplicate counts as use; client 1 becomes the least recent.
    sm.apply(encode_put(_client(0), 1, 0, "k", "v"))
    sm.apply(encode_put(b"newcomer", 1, 0, "k", "v"))
    assert sm.clients_count() == CLIENTS_MAX
    assert sm.remembered(_client(1)) is None
    assert sm.remembered(_client(0)) == (0, [1])
    assert sm.remembered(b"newcomer") == (0, [1])
    # Expiry off (and these ids have no stamp): the old price of eviction, a retry from an evicted client
    # executes again (tests/kvstore/test_client_expiry.py: what expiry changes).
    revision = sm.revision
    assert sm.apply(encode_put(_client(1), 1, 0, "k", "v"))[1] == {"rev": revision + 1}
    assert sm.remembered(_client(2)) is None  # ...and evicts the next least recent client


def test_eviction_is_identical_on_two_replicas_and_survives_snapshot():
    commands = [encode_put(_client(i), 1, 0, "k", "v") for i in range(CLIENTS_MAX)]
    commands += [encode_put(_client(5), 1, 0, "k", "v"), encode_put(b"x", 1, 0, "k", "v"),
                 encode_put(b"y", 1, 0, "k", "v")]
    one, two = StateMachine(), StateMachine()
    for command in commands:
        one.apply(command)
    restored = None
    for i, command in enumerate(commands):
        two.apply(command)
        if i == CLIENTS_MAX - 1:
            two = restored = StateMachine.restore(two.snapshot())
    assert restored is not None
    assert one.snapshot() == two.snapshot()
    assert [one.remembered(_client(i)) for i in range(3)] == [None, None, (0, [1])]


# -----------------------------------------------------------------------------------------------
# model-based test


KEYS = ["a", "ab", "abc", "b", "ba"]
VALUES = ["x", b"x", "y", b"", ""]
CLIENTS = [A, B, b"c"]


class Model:
    """A plain-dict model of what the state machine must do (no bounds reached in this test)."""

    def __init__(self):
        self.entries: dict[str, tuple] = {}
        self.revision = 0
        self.floor: dict[bytes, int] = {}
        self.results: dict[bytes, dict[int, dict]] = {}

    def apply(self, client, rid, ack, op, key, arg1=None, arg2=None) -> dict:
        results = self.results.setdefault(client, {})
        if rid in results:
            self._ack(client, ack)
            return dict(results[rid])
        if rid < self.floor.get(client, 0):
            return {"error": "stale request"}
        self.revision += 1
        rev = self.revision
        if op == "put":
            old = self.entries.get(key)
            self.entries[key] = (arg1, 1 if old is None else old[1] + 1, rev)
            result = {"rev": rev}
        elif op == "delete":
            doomed = [k for k in self.entries if (k.startswith(key) if arg1 else k == key)]
            for k in doomed:
                del self.entries[k]
            result = {"deleted": len(doomed), "rev": rev}
        else:
            old = self.entries.get(key)
            ok = old is None if arg1 is None else (old is not None and repr(old[0]) == repr(arg1))
            if ok:
                self.entries[key] = (arg2, 1 if old is None else old[1] + 1, rev)
            result = {"ok": ok, "rev": rev}
        results[rid] = result
        self._ack(client, ack)
        return dict(result)

    def _ack(self, client, ack):
        if ack > self.floor.get(client, 0):
            self.floor[client] = ack
            self.results[client] = {r: v for r, v in self.results[client].items() if r >= ack}


def _encode(client, rid, ack, op, key, arg1=None, arg2=None) -> bytes:
    if op == "put":
        return encode_put(client, rid, ack, key, arg1)
    if op == "delete":
        return encode_delete(client, rid, ack, key, arg1)
    return encode_cas(client, rid, ack, key, arg1, arg2)


class StateMachineVersusModel(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.sm = StateMachine()
        self.twin = StateMachine()  # fed the same bytes, never restored
        self.model = Model()
        self.next_rid = {c: 1 for c in CLIENTS}
        self.ack = {c: 0 for c in CLIENTS}   # the client's current ack_below
        self.sent: list[tuple] = []          # (client, rid, op, key, arg1, arg2) of every request
        # A snapshot under way while writes go on: (frozen view of twin, its piece iterator, pieces so
        # far, the snapshot bytes at the freeze). On the twin, which is never replaced by a restore.
        self.view = None

    def _run(self, client, rid, ack, op, key, arg1=None, arg2=None):
        command = _encode(client, rid, ack, op, key, arg1, arg2)
        expected = self.model.apply(client, rid, ack, op, key, arg1, arg2)
        assert self.sm.apply(command) == ((client, rid), expected)
        assert self.twin.apply(command) == ((client, rid), expected)

    def _new(self, client, op, key, arg1=None, arg2=None):
        rid = self.next_rid[client]
        self.next_rid[client] += 1
        self.sent.append((client, rid, op, key, arg1, arg2))
        self._run(client, rid, min(self.ack[client], rid), op, key, arg1, arg2)

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS), value=st.sampled_from(VALUES))
    def put(self, client, key, value):
        self._new(client, "put", key, value)

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS), prefix=st.booleans())
    def delete(self, client, key, prefix):
        self._new(client, "delete", key, prefix)

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS),
          expected=st.sampled_from([None, *VALUES]), new=st.sampled_from(VALUES))
    def cas(self, client, key, expected, new):
        self._new(client, "cas", key, expected, new)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def retry(self, data):
        client, rid, op, key, arg1, arg2 = data.draw(st.sampled_from(self.sent))
        # A retry carries the client's current ack_below, which never exceeds the retried id.
        self._run(client, rid, min(self.ack[client], rid), op, key, arg1, arg2)

    @rule(client=st.sampled_from(CLIENTS), step=st.integers(1, 3))
    def advance_ack(self, client, step):
        self.ack[client] = min(self.next_rid[client], self.ack[client] + step)

    @precondition(lambda self: self.view is None)
    @rule(per_chunk=st.integers(1, 4))
    def freeze(self, per_chunk):
        expected = self.twin.snapshot()
        frozen = self.twin.freeze()
        self.view = (frozen, frozen.chunks(per_chunk), [], expected)

    @precondition(lambda self: self.view is not None)
    @rule()
    def next_piece(self):
        frozen, pieces, taken, expected = self.view
        piece = next(pieces, None)
        if piece is None:
            assert b"".join(taken) == expected  # the state at the freeze, whatever was written since
            frozen.close()
            self.view = None
        else:
            taken.append(piece)

    @rule()
    def snapshot_and_restore(self):
        self.sm = StateMachine.restore(self.sm.snapshot())

    @rule(per_chunk=st.integers(1, 5))
    def restore_from_chunks(self, per_chunk):
        self.sm = StateMachine.restore(b"".join(self.sm.snapshot_chunks(per_chunk)))

    @invariant()
    def matches_model(self):
        expected = [Entry(k, *self.model.entries[k]) for k in sorted(self.model.entries)]
        assert self.sm.range() == expected
        assert len(self.sm) == len(expected)
        assert self.sm.revision == self.model.revision
        for key in KEYS:
            found = self.model.entries.get(key)
            assert self.sm.get(key) == (None if found is None else Entry(key, *found))
        for client in CLIENTS:
            remembered = self.sm.remembered(client)
            if client in self.model.results:
                assert remembered == (self.model.floor.get(client, 0), sorted(self.model.results[client]))

    @invariant()
    def twin_agrees(self):
        assert self.sm.state_hash() == self.twin.state_hash()
        assert self.sm.snapshot() == self.twin.snapshot()
        assert b"".join(self.twin.snapshot_chunks(2)) == self.twin.snapshot()


StateMachineVersusModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                                     deadline=None)
TestStateMachineVersusModel = StateMachineVersusModel.TestCase


# -----------------------------------------------------------------------------------------------
# determinism, hashing, snapshots


def _random_commands(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    commands = []
    next_rid = {c: 1 for c in CLIENTS}
    for _ in range(count):
        client = rng.choice(CLIENTS)
        rid = next_rid[client] if rng.random() < 0.8 else rng.randrange(1, next_rid[client] + 1)
        next_rid[client] = max(next_rid[client], rid + 1)
        ack = rng.randrange(0, rid + 1) if rng.random() < 0.3 else 0
        op = rng.choice(["put", "delete", "cas"])
        key = rng.choice(KEYS)
        if op == "put":
            commands.append(encode_put(client, rid, ack, key, rng.choice(VALUES)))
        elif op == "delete":
            commands.append(encode_delete(client, rid, ack, key, rng.random() < 0.3))
        else:
            commands.append(encode_cas(client, rid, ack, key, rng.choice([None, *VALUES]), rng.choice(VALUES)))
        if rng.random() < 0.05:
            commands.append(rng.randbytes(rng.randrange(0, 12)))  # junk in the log
    return commands


@pytest.mark.parametrize("seed", range(5))
def test_two_replicas_fed_the_same_commands_agree(seed):
    commands = _random_commands(seed, 400)
    one, two = StateMachine(), StateMachine()
    results_one = [one.apply(c) for c in commands]
    results_two = [two.apply(c) for c in commands]
    assert results_one == results_two
    assert one.state_hash() == two.state_hash()
    assert one.snapshot() == two.snapshot()


def test_state_hash_depends_on_values_versions_mod_revisions_and_revision():
    def machine(*commands):
        sm = StateMachine()
        for command in commands:
            sm.apply(command)
        return sm.state_hash()

    base = machine(encode_put(A, 1, 0, "k", "v"))
    assert base == machine(encode_put(B, 9, 0, "k", "v"))  # the dedup table is not hashed
    assert base != machine(encode_put(A, 1, 0, "k", b"v"))
    assert base != machine(encode_put(A, 1, 0, "k", "w"))
    assert base != machine(encode_put(A, 1, 0, "j", "v"))
    assert base != machine(encode_put(A, 1, 0, "k", "v"), encode_delete(A, 2, 0, "zz"))  # revision only
    assert base != machine(encode_put(A, 1, 0, "k", "v"), encode_put(A, 2, 0, "k", "v"))  # version
    # Same keys, values, versions and revision: only the entries' mod_revision (the order of the writes)
    # differs. Two replicas that applied the same writes in different orders must not agree.
    assert machine(encode_put(A, 1, 0, "j", "v"), encode_put(A, 2, 0, "k", "v")) != machine(
        encode_put(A, 1, 0, "k", "v"), encode_put(A, 2, 0, "j", "v"))
    assert re.fullmatch(r"[0-9a-f]{64}", base)  # hex SHA-256, as kv status prints it


def test_state_hash_follows_every_write():
    # state_hash is cached per revision; each executed write must give the hash a fresh machine
    # fed the same commands computes from scratch.
    sm, fresh_commands = StateMachine(), []
    seen = {sm.state_hash()}
    for command in [encode_put(A, 1, 0, "k", "v"), encode_cas(A, 2, 0, "k", "v", "w"),
                    encode_delete(A, 3, 0, "k"), encode_put(A, 1, 0, "k", "dup")]:
        sm.apply(command)
        fresh_commands.append(command)
        fresh = StateMachine()
        for earlier in fresh_commands:
            fresh.apply(earlier)
        assert sm.state_hash() == fresh.state_hash()
        seen.add(sm.state_hash())
    assert len(seen) == 4  # three writes changed it, the duplicate did not


def _busy_machine() -> StateMachine:
    sm = StateMachine()
    for command in _random_commands(42, 300):
        sm.apply(command)
    return sm


def test_snapshot_round_trip_keeps_state_and_dedup():
    sm = StateMachine()
    first = encode_put(A, 1, 0, "k", "v1")
    sm.apply(first)
    sm.apply(encode_cas(B, 1, 0, "j", None, b"bytes"))
    sm.apply(encode_put(A, 2, 2, "k", "v2"))  # A's floor is 2: request 1 was answered
    restored = StateMachine.restore(sm.snapshot())
    assert restored.state_hash() == sm.state_hash()
    assert restored.snapshot() == sm.snapshot()
    assert restored.range() == sm.range() and restored.revision == sm.revision == 3
    assert restored.remembered(A) == (2, [2]) and restored.remembered(B) == (0, [1])
    # A retried write after restore returns its first result and does not run again.
    assert restored.apply(encode_cas(B, 1, 0, "j", None, b"bytes")) == ((B, 1), {"ok": True, "rev": 2})
    assert restored.apply(first)[1] == {"error": "stale request"}
    assert restored.revision == 3


def test_snapshot_round_trip_of_busy_machine():
    sm = _busy_machine()
    restored = StateMachine.restore(sm.snapshot())
    assert restored.snapshot() == sm.snapshot()
    # Both continue identically.
    for command in _random_commands(7, 100):
        assert restored.apply(command) == sm.apply(command)
    assert restored.state_hash() == sm.state_hash()


def test_restore_stream_reads_a_file_region_like_restore(tmp_path):
    """A snapshot restored from a file (at an offset, with other bytes after it) gives the same state
    as restore of the bytes; a length that cuts it short or leaves bytes over is refused."""
    data = _busy_machine().snapshot()
    path = tmp_path / "snap"
    path.write_bytes(b"head" + data + b"more")
    with open(path, "rb") as file:
        file.seek(4)
        restored = StateMachine.restore_stream(file, len(data))
    assert restored.snapshot() == data and restored.state_hash() == StateMachine.restore(data).state_hash()
    for length, message in ((len(data) + 4, "4 trailing bytes"), (len(data) - 1, "runs 1 bytes past its end")):
        with open(path, "rb") as file:
            file.seek(4)
            with pytest.raises(SnapshotError, match=message):
                StateMachine.restore_stream(file, length)


def test_restore_of_every_truncation_raises_snapshot_error():
    data = _busy_machine().snapshot()
    step = max(1, len(data) // 600)
    for cut in list(range(0, len(data), step)) + [len(data) - 1]:
        with pytest.raises(SnapshotError):
            StateMachine.restore(data[:cut])


@pytest.mark.parametrize("layout", [1, 2])
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_restore_of_damaged_snapshot_raises_only_snapshot_error(layout, data):
    original = _SMALL_SNAPSHOT if layout == 1 else _SMALL_SNAPSHOT_V2
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(damaged) - 1))
        damaged[position] ^= data.draw(st.integers(1, 255))
    try:
        restored = StateMachine.restore(bytes(damaged))
    except SnapshotError:
        return
    # Some damage yields another valid state (e.g. a changed value byte); it must then be usable.
    assert StateMachine.restore(restored.snapshot()).state_hash() == restored.state_hash()


def _small_snapshot_v2() -> bytes:
    sm = StateMachine()
    for command in _random_commands(3, 40):
        sm.apply(command)
    return sm.snapshot()


def _small_snapshot() -> bytes:
    """The same state in format 1 (four fields per entry), which earlier versions wrote."""
    top = cbor2.loads(_small_snapshot_v2())
    flat = top["entries"]
    old: list = []
    for key, packed in zip(flat[0::2], flat[1::2], strict=True):
        kind, version, mod_revision = struct.unpack_from(">BQQ", packed)
        value = packed[25:].decode("utf-8") if kind else packed[25:]  # after the head and the digest
        old.extend((key, value, version, mod_revision))
    return cbor2.dumps({**top, "format": 1, "entries": old})


_SMALL_SNAPSHOT = _small_snapshot()
_SMALL_SNAPSHOT_V2 = _small_snapshot_v2()


def test_the_format_1_sample_restores_like_format_2():
    assert StateMachine.restore(_SMALL_SNAPSHOT).snapshot() == _SMALL_SNAPSHOT_V2


def _snapshot_with(**changes) -> bytes:
    top = cbor2.loads(_small_snapshot())
    top.update(changes)
    return cbor2.dumps(top)


def _entries() -> list:
    return cbor2.loads(_SMALL_SNAPSHOT)["entries"]


def _clients() -> list:
    return cbor2.loads(_SMALL_SNAPSHOT)["clients"]


def _replace(items: list, index: int, value) -> list:
    items = list(items)
    items[index] = value
    return items


@pytest.mark.parametrize("data, message", [
    (b"not cbor \xff", "not valid CBOR"),
    (_SMALL_SNAPSHOT + b"\x00", "trailing"),
    (cbor2.dumps([1, 2, 3]), "map"),
    (_snapshot_with(extra=1), "map"),
    (_snapshot_with(format=4), "format"),
    (_snapshot_with(format=True), "format"),
    (_snapshot_with(revision=-1), "revision"),
    (_snapshot_with(revision=1.0), "revision"),
    (_snapshot_with(revision=0), "mod_revision"),  # entries newer than the revision
    (_snapshot_with(entries=_entries()[:-1]), "flat list"),
    (_snapshot_with(entries=_entries()[4:8] + _entries()[0:4]), "increasing"),
    (_snapshot_with(entries=_entries()[0:4] + _entries()[0:4]), "increasing"),
    (_snapshot_with(entries=_replace(_entries(), 0, b"k")), "key"),
    (_snapshot_with(entries=_replace(_entries(), 0, "")), "key"),
    (_snapshot_with(entries=_replace(_entries(), 1, 5)), "value"),
    (_snapshot_with(entries=_replace(_entries(), 1, b"v" * (2**20 + 1))), "value longer"),
    (_snapshot_with(entries=_replace(_entries(), 2, 0)), "version"),
    (_snapshot_with(entries=_replace(_entries(), 2, True)), "version"),
    (_snapshot_with(entries=_replace(_entries(), 3, 10**6)), "mod_revision"),
    (_snapshot_with(clients={}), "clients"),
    (_snapshot_with(clients=[[A, 0, 0]]), "client 0"),
    (_snapshot_with(clients=[[b"", 0, 0, []]]), "client_id"),
    (_snapshot_with(clients=[[A, 0, 0, []], [A, 0, 0, []]]), "duplicate"),
    (_snapshot_with(clients=[[A, -1, 0, []]]), "floor"),
    (_snapshot_with(clients=[[A, 0, 2, []], [B, 0, 1, []]]), "last_revision"),
    (_snapshot_with(clients=[[A, 0, 10**6, []]]), "last_revision"),
    (_snapshot_with(clients=[[A, 0, 0, [1, 0, 1]]]), "results"),
    (_snapshot_with(clients=[[A, 5, 0, [4, 0, 1, 0]]]), "floor"),
    (_snapshot_with(clients=[[A, 0, 0, [2, 0, 1, 0, 1, 0, 1, 0]]]), "ascending"),
    (_snapshot_with(clients=[[A, 0, 0, [1, 7, 1, 0]]]), "kind"),
    (_snapshot_with(clients=[[A, 0, 0, [1, 2, 1, 2]]]), "kind"),  # cas extra must be 0 or 1
    (_snapshot_with(clients=[[A, 0, 0, [1, 0, 0, 0]]]), "rev"),
    (_snapshot_with(clients=[[A, 0, 0, [1, 0, 10**6, 0]]]), "rev"),
    (_snapshot_with(clients=[[A, 0, 0, [1, 0, 1, True]]]), "rev or extra"),
    (_snapshot_with(clients=[[b"c%d" % i, 0, 0, []] for i in range(CLIENTS_MAX + 1)]), "at most"),
])
def test_restore_rejects_inconsistent_snapshots(data, message):
    with pytest.raises(SnapshotError, match=message):
        StateMachine.restore(data)


def _v2_with(**changes) -> bytes:
    top = cbor2.loads(_SMALL_SNAPSHOT_V2)
    top.update(changes)
    return cbor2.dumps(top)


def _v2_entries() -> list:
    return cbor2.loads(_SMALL_SNAPSHOT_V2)["entries"]


def _packed(kind: int, version: int, mod_revision: int, value: bytes = b"v") -> bytes:
    """A packed entry for the first key of the sample, with a right digest (so other checks fire)."""
    key = _v2_entries()[0].encode("utf-8")
    head = struct.pack(">BQQ", kind, version, mod_revision)
    digest = hashlib.blake2b(len(key).to_bytes(4, "big") + key + head + value, digest_size=8).digest()
    return head + digest + value


def _bad_digest() -> bytes:
    packed = bytearray(_v2_entries()[1])
    packed[20] ^= 1
    return bytes(packed)


@pytest.mark.parametrize("data, message", [
    (_v2_with(entries=_v2_entries()[:-1]), "flat list"),
    (_v2_with(entries=_v2_entries()[2:4] + _v2_entries()[0:2]), "increasing"),
    (_v2_with(entries=_v2_entries()[0:2] + _v2_entries()[0:2]), "increasing"),
    (_v2_with(entries=_replace(_v2_entries(), 0, b"k")), "key"),
    (_v2_with(entries=_replace(_v2_entries(), 0, "")), "key"),
    (_v2_with(entries=_replace(_v2_entries(), 1, "a str")), "packed entry"),
    (_v2_with(entries=_replace(_v2_entries(), 1, b"short")), "packed entry"),
    (_v2_with(entries=_replace(_v2_entries(), 1, _packed(2, 1, 1))), "value type"),
    (_v2_with(entries=_replace(_v2_entries(), 1, _packed(0, 0, 1))), "version"),
    (_v2_with(entries=_replace(_v2_entries(), 1, _packed(0, 2, 1))), "version"),
    (_v2_with(entries=_replace(_v2_entries(), 1, _packed(0, 1, 10**6))), "revision"),
    (_v2_with(entries=_replace(_v2_entries(), 1, _packed(1, 1, 1, b"\xff\xfe"))), "UTF-8"),
    (_v2_with(entries=_replace(_v2_entries(), 1, _packed(0, 1, 1, b"v" * (2**20 + 1)))), "value longer"),
    (_v2_with(entries=_replace(_v2_entries(), 1, _bad_digest())), "digest"),
    (_v2_with(format=4), "format"),
])
def test_restore_rejects_inconsistent_format_2_entries(data, message):
    with pytest.raises(SnapshotError, match=message):
        StateMachine.restore(data)


def test_restore_rejects_non_bytes():
    with pytest.raises(SnapshotError):
        StateMachine.restore("snapshot")  # type: ignore[arg-type]


def test_incremental_state_hash_equals_a_full_recomputation():
    """state_hash is kept up to date write by write; a restored copy computes it from scratch. The two
    must agree after puts, overwrites, cas, single and prefix deletes."""
    import random as _random

    from kvstore import commands as _c
    from kvstore.statemachine import StateMachine as _SM

    rng = _random.Random(7)
    sm = _SM()
    cid = b"client-0"
    for rq in range(1, 400):
        key = f"k{rng.randrange(40)}"
        roll = rng.random()
        if roll < 0.6:
            cmd = _c.encode_put(cid, rq, rq, key, rng.choice(["a", "b", b"\x00c"]))
        elif roll < 0.75:
            cmd = _c.encode_cas(cid, rq, rq, key, rng.choice([None, "a", "b"]), "z")
        elif roll < 0.95:
            cmd = _c.encode_delete(cid, rq, rq, key)
        else:
            cmd = _c.encode_delete(cid, rq, rq, f"k{rng.randrange(4)}", prefix=True)
        sm.apply(cmd)
        if rq % 50 == 0:
            assert sm.state_hash() == _SM.restore(sm.snapshot()).state_hash()
    fresh = _SM.restore(sm.snapshot())
    assert sm.state_hash() == fresh.state_hash()
    sm.apply(_c.encode_put(cid, 500, 500, "new", "v"))
    assert sm.state_hash() != fresh.state_hash()


def test_membership_changes_are_kept_with_their_slot_and_survive_a_snapshot():
    """A membership change (paxos.membership) is not a key-value command: it changes no entry and no
    revision, and the machine keeps it with its slot so that a snapshot carries it."""
    from paxos.membership import Config, encode_change

    sm = StateMachine()
    change = encode_change(0, Config(node_ids=(1, 2, 3)).add_learner(4, "127.0.0.1:7004"))
    sm.slot = 9
    assert sm.apply(change) == (None, {"config": True})
    assert sm.revision == 0 and len(sm) == 0
    assert sm.changes == [(9, change)]
    restored = StateMachine.restore(sm.snapshot())
    assert restored.changes == [(9, change)] and restored.snapshot() == sm.snapshot()


@pytest.mark.parametrize("changes, problem", [
    ([[0, b"\x00paxos-config\x00{}"]], "change 0"),
    ([[3, b"not a change"]], "change 0"),
    ([[5, b"\x00paxos-config\x00{}"], [4, b"\x00paxos-config\x00{}"]], "out of slot order"),
    ({"a": 1}, "must be an array"),
])
def test_restore_rejects_malformed_changes(changes, problem):
    top = cbor2.loads(StateMachine().snapshot())
    with pytest.raises(SnapshotError, match=problem):
        StateMachine.restore(cbor2.dumps({**top, "changes": changes}))


def test_snapshot_pieces_of_large_values_are_bounded_by_bytes_and_add_up_to_the_snapshot():
    """A big run (1 MiB values, 4 writers): 2,048 entries per piece made a piece of up to 2 GB, encoded at
    once in the node's event loop at each snapshot: a stall longer than an election timeout, and a leader
    change. Pieces of entries now hold about ``bytes_per_chunk`` at most (one entry at least, however
    large), and still concatenate to exactly the snapshot."""
    d = Driver()
    for i in range(40):
        d.put(f"k{i:02d}", bytes([i]) * (1000 + 37 * i))
    d.put("small", "v")
    whole = d.sm.snapshot()
    with d.sm.freeze() as frozen:
        pieces = list(frozen.chunks(2048, 3000))
    assert b"".join(pieces) == whole
    entry_pieces = pieces[1:-3]  # (the head, then the entries; then the clients' head, results, changes)
    assert len(entry_pieces) > 10 and all(len(p) < 3000 + 3000 for p in entry_pieces), [len(p) for p in pieces]
    with d.sm.freeze() as frozen:
        one_each = list(frozen.chunks(2048, 1))  # one entry a piece
    assert b"".join(one_each) == whole and len(one_each) >= 41
    assert StateMachine.restore(b"".join(pieces)).state_hash() == d.sm.state_hash()


# -----------------------------------------------------------------------------------------------
# range answers: built from the packed entries, refused unbuilt past their bounds (QA: one range of
# 63 MB held a leader's event loop for 0.5 s, ten with limit 1 for 1.5 s)


class _CountingDict(dict):
    """The state machine's entries, counting the lookups a range makes."""

    lookups = 0

    def __getitem__(self, key):
        type(self).lookups += 1
        return super().__getitem__(key)


def _counting(sm: StateMachine) -> type[_CountingDict]:
    counting = type("Counting", (_CountingDict,), {"lookups": 0})
    sm._entries = counting(sm._entries)
    return counting


def test_range_items_are_the_range_in_each_shape_of_answer():
    d = Driver()
    for key, value in [("b", b"\x00\x01"), ("a/2", "two"), ("a/1", "one"), ("c", "C"), ("a/10", b"ten")]:
        d.put(key, value)
    d.put("a/1", "one again")
    for prefix in ("", "a/", "b", "x"):
        for limit in (0, 1, 2, 10):
            entries = d.sm.range(prefix)[:limit] if limit else d.sm.range(prefix)
            assert d.sm.range(prefix, limit) == entries
            assert d.sm.range_items(prefix, limit) == [[e.key, e.value] for e in entries]
            assert d.sm.range_items(prefix, limit, values=False) == [[e.key] for e in entries]
            assert d.sm.range_items(prefix, limit, meta=True) == [
                [e.key, e.value, e.version, e.mod_revision] for e in entries]
            assert d.sm.range_items(prefix, limit, values=False, meta=True) == [
                [e.key, e.version, e.mod_revision] for e in entries]


def test_a_limited_range_looks_at_its_limit_of_keys_only():
    d = Driver()
    for i in range(500):
        d.put(f"k{i:04d}", "v")
    counting = _counting(d.sm)
    assert d.sm.range_items("", 3) == [["k0000", "v"], ["k0001", "v"], ["k0002", "v"]]
    assert d.sm.range_items("k01", 2, meta=True)[1][0] == "k0101"
    assert [e.key for e in d.sm.range("k02", 1)] == ["k0200"]
    assert counting.lookups == 3 + 2 + 1


def test_a_range_over_items_max_is_refused_having_looked_at_one_key_more_and_built_nothing():
    d = Driver()
    for i in range(50):
        d.put(f"k{i:02d}", "v")
    counting = _counting(d.sm)
    for shape in ({}, {"values": False}, {"meta": True}):
        with pytest.raises(RangeTooLarge, match="more than 49 entries"):
            d.sm.range_items("", items_max=49, **shape)
        with pytest.raises(RangeTooLarge):
            d.sm.range_items("k", 50 + 1, items_max=49, **shape)  # a limit above the bound is no bound
    assert counting.lookups == 0
    assert len(d.sm.range_items("", items_max=50)) == 50  # exactly the bound: answered
    assert len(d.sm.range_items("", 49, items_max=49)) == 49  # the limit keeps it within


def test_a_range_over_the_byte_bound_is_refused_before_the_rest_is_built():
    d = Driver()
    for i in range(100):
        d.put(f"k{i:02d}", b"x" * 100)  # 3 + 100 bytes an entry
    counting = _counting(d.sm)
    with pytest.raises(RangeTooLarge):
        d.sm.range_items("", bytes_min_max=1000)
    assert counting.lookups == 10  # the 10th entry passed 1,000 bytes
    assert len(d.sm.range_items("", bytes_min_max=103 * 100)) == 100  # exactly the bound: answered
    assert len(d.sm.range_items("", values=False, bytes_min_max=300)) == 100  # keys only: 3 bytes each
    with pytest.raises(RangeTooLarge):
        d.sm.range_items("", values=False, bytes_min_max=299)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.one_of(st.text(max_size=20), st.binary(max_size=20))),
                max_size=30),
       st.booleans(), st.booleans())
def test_the_byte_bound_never_refuses_items_that_encode_within_it(pairs, values, meta):
    """The bound is a lower bound of the encoded items: a range whose items encode to at most N bytes
    is never refused at N (so no answer that fits a frame is refused by it)."""
    d = Driver()
    for key, value in pairs:
        d.put(key, value)
    items = d.sm.range_items("", values=values, meta=meta)
    encoded = len(cbor2.dumps(items))
    assert d.sm.range_items("", values=values, meta=meta, bytes_min_max=encoded) == items
