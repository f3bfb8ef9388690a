"""kvstore.loadgen: stopping rules, op mix, key choice and error counting, against in-memory fake targets.

No server and no timing assertions: fake targets answer at once (or fail on purpose), and the checks are
on counts, keys and the shape of the result.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from kvstore.client import RequestError, Unavailable
from kvstore.loadgen import (
    LoadSpec,
    LoadSpecError,
    _histogram,
    _interval_summary,
    _record_all,
    error_kind,
    run_load,
    timeline_to_plot,
)


class FakeTarget:
    """Keeps what is put (``store``); a get returns the value, None for a key never put."""

    def __init__(self, log: list, fail_every: int = 0) -> None:
        self.log = log
        self.fail_every = fail_every
        self.store: dict[str, str] = {}

    async def put(self, key, value):
        await trio.lowlevel.checkpoint()
        self.log.append(("put", key, len(value)))
        if self.fail_every and len(self.log) % self.fail_every == 0:
            raise Unavailable("nope", outcome_unknown=True)
        self.store[key] = value

    async def get(self, key, consistency):
        await trio.lowlevel.checkpoint()
        self.log.append(("get", key, consistency))
        return self.store.get(key)


class FakeSubmitTarget(FakeTarget):
    """Takes submitted requests, as our store's client does (``_KvTarget.submit``): each answer
    comes from a later callback of the trio loop, never from inside ``submit``. Tracks how many
    requests were in flight at most."""

    def __init__(self, log: list, fail_every: int = 0) -> None:
        super().__init__(log, fail_every)
        self.in_flight = self.most_in_flight = 0

    async def put(self, key, value):
        raise AssertionError("a closed loop against submit targets must not await put")

    def submit(self, is_get, key, value, consistency, done):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

        def answer() -> None:
            self.in_flight -= 1
            if is_get:
                self.log.append(("get", key, consistency))
                outcome = self.store.get(key)  # None: absent
            else:
                self.log.append(("put", key, len(value)))
                outcome = 1
                if self.fail_every and len(self.log) % self.fail_every == 0:
                    outcome = Unavailable("nope", outcome_unknown=True)
                else:
                    self.store[key] = value
            done(outcome)

        trio.lowlevel.current_trio_token().run_sync_soon(answer)


def fake_targets(log, fail_every=0, opened=None, submit=False, made=None):
    @asynccontextmanager
    async def open_targets(spec):
        targets = [(FakeSubmitTarget if submit else FakeTarget)(log, fail_every) for _ in range(spec.conns)]
        if made is not None:
            made.extend(targets)
        if opened is not None:
            opened.append(len(targets))
        yield targets
    return open_targets


@pytest.fixture(params=[False, True], ids=["tasks", "submit"])
def submit(request):
    """Run a test against targets driven by tasks, and again against targets that take submits."""
    return request.param


async def test_total_stops_the_run_and_counts_every_request(submit):
    log, opened, made = [], [], []
    spec = LoadSpec(endpoints=["x:1"], clients=8, conns=3, total=500, key_size=6, val_size=100)
    result = await run_load(spec, open_targets=fake_targets(log, opened=opened, submit=submit, made=made))
    if submit:  # 8 in flight over 3 targets: 3, 3 and 2
        assert sorted(t.most_in_flight for t in made) == [2, 3, 3]
    assert opened == [3]
    assert result.ok == 500 and result.errors == {} and result.stopped_by == "total"
    assert len(log) == 500 and all(op == "put" and len(k) == 6 and n == 100 for op, k, n in log)
    d = result.to_dict()
    assert d["ok"] == 500 and d["latency_ms"]["p50"] is not None and d["machine"]["nproc"] >= 1
    assert set(d["latency_ms"]) >= {"min", "p50", "p90", "p99", "max"}
    assert "Throughput" in result.format_text()


async def test_duration_stops_the_run(autojump_clock):
    log = []

    @asynccontextmanager
    async def slow_targets(spec):
        class Slow(FakeTarget):
            async def put(self, key, value):
                await trio.sleep(0.01)
                self.log.append(("put", key, len(value)))
        yield [Slow(log)]

    spec = LoadSpec(endpoints=["x:1"], clients=4, total=None, duration=2.0)
    result = await run_load(spec, open_targets=slow_targets)
    assert result.stopped_by == "duration"
    assert 0 < result.ok == len(log) <= 4 * 2.0 / 0.01 + 4
    assert len(result.timeline) >= 2


async def test_a_cluster_that_dies_mid_run_is_timed_to_the_end_of_the_run(autojump_clock):
    """Puts succeed for 1 s, then every put fails after a 1 s timeout: the run's time (and so its
    throughput) covers the failures too, not only up to the last success."""
    log = []

    @asynccontextmanager
    async def dying_targets(spec):
        class Dying(FakeTarget):
            async def put(self, key, value):
                if trio.current_time() >= died_at:
                    await trio.sleep(1.0)
                    raise Unavailable("no answer", outcome_unknown=True)
                await trio.sleep(0.01)
                self.log.append(("put", key, len(value)))
        yield [Dying(log)]

    died_at = trio.current_time() + 1.0
    spec = LoadSpec(endpoints=["x:1"], clients=2, total=None, duration=3.0)
    result = await run_load(spec, open_targets=dying_targets)
    assert result.stopped_by == "duration" and result.ok == len(log) and result.errors
    assert result.elapsed_s >= 3.0, result.elapsed_s
    assert result.last_error == "no answer"


async def test_a_warm_up_that_reaches_no_node_stops_before_the_run(autojump_clock):
    from kvstore.loadgen import Unreachable

    @asynccontextmanager
    async def nobody(spec):
        class Nobody(FakeTarget):
            async def put(self, key, value):
                await trio.sleep(spec.timeout)
                raise Unavailable("no answer from the cluster within 5s")
        async with trio.open_nursery():  # as kv_targets: the error leaves through a nursery
            yield [Nobody([]), Nobody([])]

    spec = LoadSpec(endpoints=["x:1"], clients=2, conns=2, total=100, warmup=3)
    with pytest.raises(Unreachable, match="no answer from the cluster"):
        await run_load(spec, open_targets=nobody)


async def test_a_submitted_request_that_never_comes_back_ends_at_the_time_limit(autojump_clock):
    """A closed loop of submits whose answers stop coming: the run still ends by itself."""
    class Lost(FakeSubmitTarget):
        answered = 0

        def submit(self, is_get, key, value, consistency, done):
            if self.answered < 10:
                self.answered += 1
                super().submit(is_get, key, value, consistency, done)
            # else: never answered

    @asynccontextmanager
    async def lost_targets(spec):
        yield [Lost([])]

    spec = LoadSpec(endpoints=["x:1"], clients=4, total=None, duration=1.0, timeout=2.0)
    result = await run_load(spec, open_targets=lost_targets)
    assert result.stopped_by == "time limit" and result.ok == 10


async def test_a_submit_refused_on_the_spot_is_counted_and_ends_its_slot():
    """A request its target refuses before sending (submit raises) counts as an error, and the slot
    stops (the next would be refused too) instead of looping; the run still ends. An error that every
    request would get (``too_large``) also stops the other slots: no request leaves after it."""
    class Refusing(FakeSubmitTarget):
        def submit(self, is_get, key, value, consistency, done):
            if len(self.log) >= 20:
                raise RequestError("value too large", "too_large")
            super().submit(is_get, key, value, consistency, done)

    @asynccontextmanager
    async def refusing(spec):
        yield [Refusing([])]

    spec = LoadSpec(endpoints=["x:1"], clients=3, total=1000)
    result = await run_load(spec, open_targets=refusing)
    assert result.ok >= 20 and result.errors == {"RequestError:too_large": 1}
    assert result.stopped_by == "error" and result.sent == result.ok + 1


async def test_an_open_loop_awaits_each_request_even_against_submit_targets(autojump_clock):
    """--rate schedules every request at its own time, so it keeps one task per request."""
    class Both(FakeSubmitTarget):
        async def put(self, key, value):
            await trio.lowlevel.checkpoint()
            self.log.append(("put", key, len(value)))

        def submit(self, *args):
            raise AssertionError("an open loop must not submit")

    @asynccontextmanager
    async def both(spec):
        yield [Both([])]

    spec = LoadSpec(endpoints=["x:1"], clients=4, total=None, duration=1.0, rate=100)
    assert (await run_load(spec, open_targets=both)).ok == 100


async def test_open_loop_sends_the_scheduled_number_of_requests(autojump_clock):
    log = []
    spec = LoadSpec(endpoints=["x:1"], clients=4, total=None, duration=1.0, rate=200)
    result = await run_load(spec, open_targets=fake_targets(log))
    assert result.ok == 200  # requests scheduled at i/200 s for i < 200
    assert result.sent == 200 and "Offered:" not in result.format_text()


async def test_an_open_loop_the_store_cannot_keep_up_with_says_how_much_was_sent(autojump_clock):
    """2 in flight at most, each request 0.1 s: of the 200 requests 100/s schedules over 2 s, about 40
    leave; the summary says so instead of only reporting the 40."""
    @asynccontextmanager
    async def slow(spec):
        class Slow(FakeTarget):
            async def put(self, key, value):
                await trio.sleep(0.1)
        yield [Slow([])]

    spec = LoadSpec(endpoints=["x:1"], clients=2, total=None, duration=2.0, rate=100)
    result = await run_load(spec, open_targets=slow)
    assert result.sent < 60 and result.ok <= result.sent
    assert f"Offered:     {result.sent} of the 200 requests --rate scheduled were sent" in result.format_text()


async def test_sequential_keys_walk_the_key_space(submit):
    log = []
    spec = LoadSpec(endpoints=["x:1"], clients=1, total=25, key_space_size=10, sequential_keys=True, key_size=3)
    await run_load(spec, open_targets=fake_targets(log, submit=submit))
    assert [k for _, k, _ in log] == [f"{i % 10:03d}" for i in range(25)]


async def test_mixed_ops_and_consistency(submit):
    log = []
    spec = LoadSpec(endpoints=["x:1"], clients=4, total=400, op="mixed", read_ratio=0.5, consistency="s")
    result = await run_load(spec, open_targets=fake_targets(log, submit=submit))
    gets = [e for e in log if e[0] == "get"]
    assert 100 < len(gets) < 300 and all(e[2] == "s" for e in gets)
    assert result.ok == 400  # a get of an absent key (None) is a success
    log.clear()
    await run_load(LoadSpec(endpoints=["x:1"], clients=2, total=50, op="get"),
                   open_targets=fake_targets(log, submit=submit))
    assert all(e[0] == "get" and e[2] == "l" for e in log)


async def test_gets_count_hits_and_misses_and_mixed_runs_report_each_operation(submit):
    """A get of an absent key succeeds but is a miss; with both operations, each has its own counts
    and latency histogram, which add up to the run's."""
    log = []
    spec = LoadSpec(endpoints=["x:1"], clients=1, total=300, op="mixed", read_ratio=0.5, key_space_size=20)
    result = await run_load(spec, open_targets=fake_targets(log, fail_every=7, submit=submit))
    gets, puts = result.by_op["get"], result.by_op["put"]
    logged_gets = sum(1 for e in log if e[0] == "get")
    assert gets["ok"] == logged_gets and gets["errors"] == 0  # (only puts fail here)
    assert gets["hits"] > 0 and gets["misses"] > 0 and gets["hits"] + gets["misses"] == gets["ok"]
    assert puts["ok"] + puts["errors"] == len(log) - logged_gets and puts["errors"] == sum(result.errors.values())
    assert gets["ok"] + puts["ok"] == result.ok
    assert gets["histogram"].get_total_count() == gets["ok"] and puts["histogram"].get_total_count() == puts["ok"]
    assert result.histogram.get_total_count() == result.ok
    d = result.to_dict()["by_op"]
    assert d["get"]["hits"] == gets["hits"] and d["get"]["latency_ms"]["p99"] is not None
    assert set(d["put"]) == {"ok", "errors", "latency_ms"}
    text = result.format_text()
    said = f"  Gets:        {gets['ok']} ok ({gets['hits']} hits, {gets['misses']} misses), 0 errors; latency p50 "
    assert said in text
    assert f"  Puts:        {puts['ok']} ok, {puts['errors']} errors; latency p50 " in text

    only_gets = await run_load(LoadSpec(endpoints=["x:1"], clients=2, total=50, op="get"),
                               open_targets=fake_targets([], submit=submit))
    assert only_gets.by_op["get"]["misses"] == 50 and "put" not in only_gets.by_op
    assert "  Gets:        50 ok (0 hits, 50 misses), 0 errors" in only_gets.format_text().splitlines()
    only_puts = await run_load(LoadSpec(endpoints=["x:1"], clients=2, total=50), open_targets=fake_targets([]))
    assert list(only_puts.by_op) == ["put"] and "Puts:" not in only_puts.format_text()


def test_every_key_of_a_run_is_as_wide():
    """Numbers are padded to the wider of key_size and the largest key number's digits: with 100,000 keys
    and key_size 4, 00000 .. 99999, not 0000 .. 99999."""
    spec = LoadSpec(key_size=4, key_space_size=100_000)
    assert (spec.key(0), spec.key(42), spec.key(99_999)) == ("00000", "00042", "99999")
    assert LoadSpec(key_size=8, key_space_size=100_000).key(7) == "00000007"  # compare.py's load file's keys
    assert LoadSpec(key_size=1, key_space_size=10).key(9) == "9"


async def test_errors_are_counted_by_kind_and_the_run_goes_on(submit):
    log = []
    spec = LoadSpec(endpoints=["x:1"], clients=2, total=100)
    result = await run_load(spec, open_targets=fake_targets(log, fail_every=4, submit=submit))
    assert result.ok == 75 and result.errors == {"Unavailable(outcome unknown)": 25}
    assert result.to_dict()["error_count"] == 25


def test_error_kinds():
    assert error_kind(RequestError("bad", "bad_request")) == "RequestError:bad_request"
    assert error_kind(Unavailable("x")) == "Unavailable"
    assert error_kind(ValueError("x")) == "ValueError"


@pytest.mark.parametrize("changes", [
    {"clients": 0}, {"conns": 0}, {"total": None, "duration": None}, {"total": 0}, {"op": "scan"},
    {"consistency": "x"}, {"read_ratio": 1.5}, {"rate": 0}, {"key_space_size": 0},
])
async def test_impossible_specs_are_refused(changes):
    spec = LoadSpec(endpoints=["x:1"], **changes)
    with pytest.raises(LoadSpecError):
        await run_load(spec, open_targets=fake_targets([]))


def test_per_second_percentiles_match_hdrhistogram():
    """The timeline's p50/p99/max come from a sorted list; they must agree with HdrHistogram (the
    whole-run figures) up to its precision."""
    import random

    rng = random.Random(7)
    for n in (1, 2, 99, 100, 1000, 5000):
        latencies = [rng.randrange(50, 200_000) for _ in range(n)]
        hist = _histogram()
        for us in latencies:
            hist.record_value(us)
        got = _interval_summary(latencies)
        pct = hist.get_percentile_to_value_dict([50, 99])
        for name, want in (("p50", pct[50]), ("p99", pct[99]), ("max", hist.get_max_value())):
            assert got[name] == pytest.approx(want / 1000.0, rel=2e-3), (n, name)
    assert _interval_summary([]) == {"p50": None, "p99": None, "max": None}
    assert _interval_summary(list(range(1000, 101_000, 1000))) == {"p50": 50.0, "p99": 99.0, "max": 100.0}


def test_recording_a_second_at_once_gives_the_same_histogram():
    """The workers keep each second's latencies in a list and the histogram takes the list once a
    second, one record per distinct value: it must hold exactly what one record per request would."""
    import random

    rng = random.Random(11)
    latencies = [rng.randrange(1, 50) * rng.choice([1, 7, 1000]) for _ in range(20_000)]
    one_by_one, at_once = _histogram(), _histogram()
    for us in latencies:
        one_by_one.record_value(us)
    _record_all(at_once, latencies)
    assert at_once.get_total_count() == one_by_one.get_total_count() == len(latencies)
    assert at_once.encode() == one_by_one.encode()


async def test_the_whole_run_histogram_counts_every_success():
    log = []
    spec = LoadSpec(endpoints=["x:1"], clients=3, total=250)
    result = await run_load(spec, open_targets=fake_targets(log, fail_every=5))
    assert result.ok == 200
    assert result.histogram.get_total_count() == 200


def _entry(t_s, ok, errors=0):
    return {"t_s": t_s, "ok": ok, "errors": errors, "p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0}


def test_the_plot_leaves_out_a_tail_of_a_few_milliseconds_and_rates_a_longer_one_by_its_length():
    """The last entry is the partial second the run ended in: 4 ms holding 30 answers would be drawn as
    30 req/s (or, by its length, 7,500 req/s) against 8,000 in whole seconds; left out. A tail of 0.6 s is
    a real sample: kept, and its rate is its count over 0.6 s."""
    short = [_entry(1, 8000), _entry(2, 8000), _entry(2.004, 30)]
    kept, spans = timeline_to_plot(short)
    assert [e["t_s"] for e in kept] == [1, 2] and spans == [1, 1]
    long_tail = [_entry(1, 8000), _entry(2, 0), _entry(3, 8000), _entry(3.6, 4800)]
    kept, spans = timeline_to_plot(long_tail)
    assert [e["t_s"] for e in kept] == [1, 3, 3.6]  # (an empty second is no point)
    assert [e["ok"] / span for e, span in zip(kept, spans, strict=True)] == pytest.approx([8000, 8000, 8000])
    only = [_entry(0.2, 100)]  # a run shorter than an interval keeps its one sample
    assert timeline_to_plot(only) == (only, [pytest.approx(0.2)])
