"""Tests of ``tests/checker/linearizability.py``, the checker the nemesis tests rely on.

A checker that accepts everything would make every nemesis test pass, so most of this file is about
rejecting: hand-made broken histories (a stale read, a lost write, a cas that succeeded twice with the
same expected value, a read of a value never written, an unknown write seen before it was invoked),
and hypothesis-generated ones. Generated histories come from a sequential register model with
intervals drawn around each linearization point (always linearizable, also with unknown outcomes that
did or did not take effect); mutating one result of a non-overlapping history must make it fail; and on
small random histories the checker must agree with a brute-force search over every order and every
subset of unknown operations (written here independently of the checker's model).
"""
from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from .linearizability import (
    UNKNOWN,
    History,
    Op,
    check,
    check_key,
    history_from_json,
    history_to_json,
)

INF = math.inf


def op(i, process, kind, key, invoke, complete, result=None, *, value=None, expected=None):
    if complete == INF:
        result = UNKNOWN
    return Op(index=i, process=process, kind=kind, key=key, value=value, expected=expected,
              invoke=invoke, complete=complete, result=result)


def put(i, p, inv, comp, value, key="k"):
    return op(i, p, "put", key, inv, comp, None, value=value)


def get(i, p, inv, comp, result, key="k"):
    return op(i, p, "get", key, inv, comp, result)


def cas(i, p, inv, comp, expected, value, result, key="k"):
    return op(i, p, "cas", key, inv, comp, result, value=value, expected=expected)


def delete(i, p, inv, comp, result, key="k"):
    return op(i, p, "delete", key, inv, comp, result)


# ---------------------------------------------------------------------------------------------------
# hand-made histories


def test_empty_and_sequential_histories_are_linearizable():
    assert check([]).ok is True
    h = [put(0, 1, 0, 1, "a"), get(1, 1, 2, 3, "a"), cas(2, 1, 4, 5, "a", "b", True),
         cas(3, 1, 6, 7, "a", "c", False), delete(4, 1, 8, 9, True), get(5, 1, 10, 11, None),
         delete(6, 1, 12, 13, False), cas(7, 1, 14, 15, None, "d", True), get(8, 1, 16, 17, "d")]
    assert check(h).ok is True


def test_concurrent_reads_may_see_old_or_new_value():
    # put(b) overlaps both reads: one sees a, the later one b, which is a valid order.
    h = [put(0, 1, 0, 1, "a"), put(1, 1, 2, 10, "b"), get(2, 2, 3, 4, "a"), get(3, 3, 5, 6, "b")]
    assert check(h).ok is True
    # ...but once a read saw b, a read that starts after it ended cannot see a again.
    h2 = h + [get(4, 2, 7, 8, "a")]
    verdict = check(h2)
    assert verdict.ok is False
    assert verdict.key == "k"


def test_stale_read_is_caught_and_explained():
    h = [put(0, 1, 0, 1, "v1"), put(1, 1, 2, 3, "v2"), get(2, 2, 4, 5, "v1")]
    verdict = check(h)
    assert verdict.ok is False
    assert verdict.key == "k"
    assert "get('k')" in verdict.explanation and "'v1'" in verdict.explanation
    assert 2 in {o.index for o in verdict.ops}, "the stale read is among the ops named"


def test_lost_write_is_caught():
    # An acknowledged write that later reads (started after it completed) never see.
    h = [put(0, 1, 0, 1, "v1"), put(1, 2, 2, 3, "v2"), get(2, 3, 4, 5, "v1"), get(3, 1, 6, 7, "v1")]
    assert check(h).ok is False
    # Reads of "absent" after an acknowledged put into an absent key: lost too.
    assert check([put(0, 1, 0, 1, "v1"), get(1, 2, 2, 3, None)]).ok is False


def test_cas_succeeding_twice_with_the_same_expected_value_is_caught():
    h = [put(0, 1, 0, 1, "a"), cas(1, 1, 2, 6, "a", "b", True), cas(2, 2, 3, 7, "a", "c", True)]
    verdict = check(h)
    assert verdict.ok is False
    # One of them failing is fine.
    ok = [put(0, 1, 0, 1, "a"), cas(1, 1, 2, 6, "a", "b", True), cas(2, 2, 3, 7, "a", "c", False)]
    assert check(ok).ok is True


def test_double_delete_success_is_caught():
    h = [put(0, 1, 0, 1, "a"), delete(1, 1, 2, 5, True), delete(2, 2, 3, 6, True)]
    assert check(h).ok is False


def test_read_of_a_value_never_written_is_caught():
    assert check([put(0, 1, 0, 1, "a"), get(1, 2, 0.5, 3, "zzz")]).ok is False


def test_unknown_write_may_take_effect_late_or_never():
    took_effect_late = [put(0, 1, 0, INF, "u"), put(1, 2, 1, 2, "a"), get(2, 2, 3, 4, "a"),
                        get(3, 2, 5, 6, "u")]
    assert check(took_effect_late).ok is True
    never = [put(0, 1, 0, INF, "u"), put(1, 2, 1, 2, "a"), get(2, 2, 3, 4, "a"), get(3, 2, 5, 6, "a")]
    assert check(never).ok is True
    # It cannot take effect before it was invoked.
    too_early = [get(0, 2, 0, 1, "u"), put(1, 1, 2, INF, "u")]
    assert check(too_early).ok is False
    # Once seen and then overwritten, it cannot come back.
    back = [put(0, 1, 0, INF, "u"), get(1, 2, 1, 2, "u"), put(2, 2, 3, 4, "b"), get(3, 2, 5, 6, "u")]
    assert check(back).ok is False


def test_unknown_cas_and_delete_are_optional():
    h = [put(0, 1, 0, 1, "a"), cas(1, 1, 2, INF, "a", "b", None), get(2, 2, 3, 4, "a"),
         get(3, 2, 5, 6, "b")]
    assert check(h).ok is True
    h2 = [put(0, 1, 0, 1, "a"), delete(1, 1, 2, INF, None), get(2, 2, 3, 4, "a"), get(3, 2, 5, 6, None),
          cas(4, 2, 7, 8, None, "c", True)]
    assert check(h2).ok is True
    # An unknown cas whose expected value was never there cannot have written its new value.
    h3 = [put(0, 1, 0, 1, "a"), cas(1, 1, 2, INF, "x", "b", None), get(2, 2, 3, 4, "b")]
    assert check(h3).ok is False


def test_keys_are_independent_and_the_failing_key_is_named():
    h = [put(0, 1, 0, 1, "a1", key="a"), put(1, 1, 0, 1, "b1", key="b"), get(2, 2, 2, 3, "a1", key="a"),
         get(3, 2, 2, 3, None, key="b")]
    verdict = check(h)
    assert verdict.ok is False and verdict.key == "b"
    assert check(h, initial=None).ok is False
    assert check(h[:3]).ok is True


def test_initial_state_is_respected():
    h = [get(0, 1, 0, 1, "old")]
    assert check(h).ok is False
    assert check(h, initial={"k": "old"}).ok is True


def test_search_budget_gives_no_answer_rather_than_a_wrong_one():
    # Many concurrent writes all overlapping, then a read of a value nobody wrote: the full search is
    # large; with a tiny budget the verdict must be None (no answer), never True.
    ops = [put(i, i, 0, 10, f"v{i}") for i in range(12)] + [get(12, 99, 11, 12, "nope")]
    assert check(ops, max_states=50).ok is None
    assert check(ops).ok is False


def test_history_recorder_and_json_round_trip():
    clock = iter(range(100)).__next__
    h = History(clock=lambda: float(clock()))
    a = h.invoke(1, "put", "k", value=b"\x00bin")
    h.ok(a)
    b = h.invoke(2, "cas", "k", expected=b"\x00bin", value="s")
    c = h.invoke(3, "get", "k")
    h.ok(b, True)
    h.ok(c, "s")
    d = h.invoke(1, "delete", "k")
    h.unknown(d)
    e = h.invoke(2, "put", "k", value="never")
    h.fail(e)
    f = h.invoke(3, "get", "other")  # still open: recorded as unknown
    ops = h.ops()
    assert [o.index for o in ops] == [a, b, c, d, f]
    assert ops[3].unknown and ops[3].complete == INF
    assert check(ops).ok is True
    again = history_from_json(history_to_json(ops))
    assert again == ops
    with pytest.raises(ValueError):
        h.ok(h.invoke(1, "cas", "k", expected="s", value="t"), "yes")  # cas result must be a bool
    with pytest.raises(ValueError):
        h.invoke(1, "increment", "k")


# ---------------------------------------------------------------------------------------------------
# generated histories


@st.composite
def sequential_histories(draw, max_ops=14, unknown=True):
    """Ops linearized at points 10, 20, 30...; intervals drawn around them; results from a register.

    Each op takes effect at its point. With ``unknown``, some writes get an unknown outcome: either
    they took effect (at their point) or they never did (skipped by the model).
    """
    count = draw(st.integers(1, max_ops))
    keys = draw(st.sampled_from([["k"], ["k", "j"]]))
    state: dict = {}
    ops = []
    written = 0
    for i in range(count):
        point = 10.0 * (i + 1)
        before = draw(st.floats(0, 25))
        after = draw(st.floats(0, 25))
        key = draw(st.sampled_from(keys))
        kind = draw(st.sampled_from(["put", "put", "get", "get", "cas", "delete"]))
        cur = state.get(key)
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "unknown_applied", "unknown_skipped"])) if unknown else "ok"
        if kind == "get" and outcome != "ok":
            outcome = "ok"
        inv, comp = point - before, point + after
        if kind == "put":
            written += 1
            value = f"v{written}"
            if outcome != "unknown_skipped":
                state[key] = value
            ops.append(put(i, i % 4, inv, INF if outcome != "ok" else comp, value, key))
        elif kind == "get":
            ops.append(get(i, i % 4, inv, comp, cur, key))
        elif kind == "cas":
            written += 1
            expected = draw(st.sampled_from([cur, None, "v0"] + [f"v{j}" for j in range(1, written)]))
            value = f"v{written}"
            swapped = cur == expected
            if swapped and outcome != "unknown_skipped":
                state[key] = value
            ops.append(cas(i, i % 4, inv, INF if outcome != "ok" else comp, expected, value, swapped, key))
        else:
            existed = cur is not None
            if outcome != "unknown_skipped":
                state.pop(key, None)
            ops.append(delete(i, i % 4, inv, INF if outcome != "ok" else comp, existed, key))
    return ops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_histories())
def test_histories_from_a_sequential_model_are_linearizable(ops):
    verdict = check(ops)
    assert verdict.ok is True, verdict.explanation


@settings(max_examples=300, deadline=None)
@given(sequential_histories(), st.data())
def test_a_read_of_a_value_never_written_is_always_rejected(ops, data):
    reads = [o for o in ops if o.kind == "get"]
    assume(reads)
    victim = data.draw(st.sampled_from(reads))
    mutated = [Op(**{**o.__dict__, "result": "never-written"}) if o is victim else o for o in ops]
    assert check(mutated).ok is False


@settings(max_examples=300, deadline=None)
@given(sequential_histories(unknown=False), st.data())
def test_changing_one_result_of_a_non_overlapping_history_is_rejected(ops, data):
    # Squeeze every interval inside its own slot so the only possible order is the real-time one.
    tight = [Op(**{**o.__dict__, "invoke": 10.0 * (o.index + 1) - 1, "complete": 10.0 * (o.index + 1) + 1})
             for o in ops]
    candidates = [o for o in tight if o.kind in ("get", "cas", "delete")]
    assume(candidates)
    victim = data.draw(st.sampled_from(candidates))
    if victim.kind == "get":
        values = {None} | {o.value for o in tight if o.kind in ("put", "cas")}
        new_result = data.draw(st.sampled_from(sorted(values - {victim.result}, key=repr))) if len(values) > 1 else "x"
    else:
        new_result = not victim.result
    mutated = [Op(**{**o.__dict__, "result": new_result}) if o is victim else o for o in tight]
    assert check(mutated).ok is False


def _brute_force(ops: list[Op]) -> bool:
    """Every subset of unknown ops x every order respecting real time, checked on a dict register."""
    known = [o for o in ops if o.result is not UNKNOWN]
    unknown = [o for o in ops if o.result is UNKNOWN and o.kind != "get"]
    for r in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, r):
            group = known + list(chosen)
            for order in itertools.permutations(group):
                if _respects_real_time(order) and _legal(order):
                    return True
    return False


def _respects_real_time(order) -> bool:
    for a_pos, a in enumerate(order):
        for b in order[a_pos + 1:]:
            if b.complete < a.invoke:  # b finished before a started, yet comes after a
                return False
    return True


def _legal(order) -> bool:
    regs: dict = {}
    for o in order:
        cur = regs.get(o.key)
        if o.kind == "put":
            regs[o.key] = o.value
        elif o.kind == "get":
            if o.result is not UNKNOWN and o.result != cur:
                return False
        elif o.kind == "cas":
            hit = cur == o.expected
            if o.result is not UNKNOWN and o.result != hit:
                return False
            if hit:
                regs[o.key] = o.value
        else:
            if o.result is not UNKNOWN and o.result != (cur is not None):
                return False
            regs.pop(o.key, None)
    return True


@st.composite
def random_small_histories(draw):
    """Arbitrary (mostly non-linearizable) histories of up to 6 ops over 3 values on one key."""
    count = draw(st.integers(1, 6))
    ops = []
    for i in range(count):
        inv = draw(st.integers(0, 10))
        unknown = draw(st.integers(0, 5)) == 0
        comp = INF if unknown else inv + draw(st.integers(0, 6))
        kind = draw(st.sampled_from(["put", "get", "cas", "delete"]))
        if kind == "put":
            ops.append(put(i, i, inv, comp, draw(st.sampled_from(["a", "b", "c"]))))
        elif kind == "get":
            ops.append(get(i, i, inv, comp, draw(st.sampled_from([None, "a", "b", "c"]))))
        elif kind == "cas":
            ops.append(cas(i, i, inv, comp, draw(st.sampled_from([None, "a", "b"])),
                           draw(st.sampled_from(["a", "b", "c"])), draw(st.booleans())))
        else:
            ops.append(delete(i, i, inv, comp, draw(st.booleans())))
    return ops


@settings(max_examples=800, deadline=None)
@given(random_small_histories())
def test_checker_agrees_with_brute_force_on_small_histories(ops):
    assert check(ops).ok is _brute_force(ops)


def test_check_key_on_a_long_concurrent_history_finishes():
    # 4 processes, 400 ops, heavy overlap, unique values: the memoised search must finish quickly
    # enough to be used on nemesis histories (no timing assertion: it must simply terminate).
    ops = []
    t = 0.0
    n = 0
    last_written = None
    for _round in range(100):
        for p in range(4):
            if p == 0:
                n += 1
                last_written = f"w{n}"
                ops.append(put(len(ops), p, t, t + 3, last_written))
            else:
                ops.append(get(len(ops), p, t + 0.5 * p, t + 3.5, last_written))
        t += 5
    assert check_key("k", ops).ok is True
