"""One error for a key or value over the store's limits, at every size, before anything is sent.

How: keys of KEY_BYTES_MAX + 1 bytes and far more, values of VALUE_BYTES_MAX + 1 bytes and far more
(20 MB, past the 8 MiB frame), through ``kv`` (the typer app and the fast path, the value as an
argument and on stdin, with the fake client: nothing may connect), and through the client library
(``kvstore.client.AsyncClient`` and ``kvstore.oneshot.OneShotClient``, pointed at a port where nothing
listens: the check must come first). Every case gives the same message form, naming the limit; kv
prints it as one line and exits 1. The limits are the state machine's (``kvstore.commands``).
"""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kv_cli import fast
from kv_cli.main import app
from kvstore import commands, limits
from kvstore.limits import KEY_BYTES_MAX, VALUE_BYTES_MAX, TooLarge

EP = ["--endpoints", "127.0.0.1:7001"]
KEYS = {"key just over": "k" * (KEY_BYTES_MAX + 1), "key far over": "k" * (3 * 1024 * 1024),
        "key just over in UTF-8": "é" * (KEY_BYTES_MAX // 2 + 1)}
VALUES = {"value just over": "v" * (VALUE_BYTES_MAX + 1), "value far over": "v" * 20_000_000}


def expected(what: str, size: int, limit: int) -> str:
    return f"{what} is too large: {size} bytes, the limit is {limit} bytes"


def test_the_limits_are_what_the_state_machine_enforces():
    # The clients check the sizes of kvstore.limits; the command codec the servers run must accept
    # exactly those and refuse one byte more.
    cid = b"client"
    commands.encode_put(cid, 1, 0, "k" * limits.KEY_BYTES_MAX, "v")
    commands.encode_put(cid, 1, 0, "k", b"v" * limits.VALUE_BYTES_MAX)
    with pytest.raises(ValueError):
        commands.encode_put(cid, 1, 0, "k" * (limits.KEY_BYTES_MAX + 1), "v")
    with pytest.raises(ValueError):
        commands.encode_put(cid, 1, 0, "k", b"v" * (limits.VALUE_BYTES_MAX + 1))


def test_the_largest_key_and_value_pass():
    limits.check_key("k" * KEY_BYTES_MAX)
    limits.check_value(b"v" * VALUE_BYTES_MAX)
    limits.check_value("é" * (VALUE_BYTES_MAX // 2))


def run_typer(*args: str, input: bytes | str | None = None):
    result = CliRunner().invoke(app, [*EP, *args], input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def run_fast(capfd, monkeypatch, *args: str, input: bytes | None = None):
    if input is not None:
        import io
        import sys

        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input)))
    try:
        assert fast.run_fast([*EP, *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capfd.readouterr()
    return code, out, err


def _check(outcome, message: str, fake) -> None:
    code, out, err = outcome
    assert code == 1
    assert out == ""
    assert err == f"Error: {message}\n"
    assert fake.connects == [] and fake.calls == []


@pytest.mark.parametrize("name", list(KEYS))
@pytest.mark.parametrize("command", [["put", "{key}", "v"], ["get", "{key}"], ["del", "{key}"],
                                     ["cas", "{key}", "a", "b"]])
def test_a_key_over_the_limit(fake, capfd, monkeypatch, name, command):
    key = KEYS[name]
    args = [a.format(key=key) for a in command]
    message = expected("key", len(key.encode()), KEY_BYTES_MAX)
    _check(run_typer(*args), message, fake)
    _check(run_fast(capfd, monkeypatch, *args), message, fake)


@pytest.mark.parametrize("name", list(KEYS))
@pytest.mark.parametrize("command", [["get", "--prefix", "{key}"], ["del", "--prefix", "{key}"]])
def test_a_prefix_over_the_limit(fake, name, command):
    """A prefix longer than any key can be matches nothing: the same error as a key (the get's was sent,
    and answered with no keys)."""
    key = KEYS[name]
    args = [a.format(key=key) for a in command]
    _check(run_typer(*args), expected("prefix", len(key.encode()), KEY_BYTES_MAX), fake)


@pytest.mark.parametrize("name", list(VALUES))
def test_a_value_over_the_limit(fake, capfd, monkeypatch, name):
    value = VALUES[name]
    message = expected("value", len(value), VALUE_BYTES_MAX)
    _check(run_typer("put", "k", value), message, fake)
    _check(run_typer("put", "k", input=value.encode()), message, fake)
    _check(run_fast(capfd, monkeypatch, "put", "k", value), message, fake)
    _check(run_fast(capfd, monkeypatch, "put", "k", input=value.encode()), message, fake)
    binary = b"\xff" * len(value)
    _check(run_typer("put", "k", input=binary), message, fake)
    _check(run_typer("cas", "k", "old", value), expected("new value", len(value), VALUE_BYTES_MAX), fake)
    _check(run_typer("cas", "k", value, "new"), expected("expected value", len(value), VALUE_BYTES_MAX), fake)


@pytest.mark.parametrize("size", [VALUE_BYTES_MAX + 1, 20_000_000])
async def test_the_async_client_refuses_before_sending(size):
    from kvstore.client import connect

    async with connect(["127.0.0.1:1"], timeout=0.2) as kv:
        with pytest.raises(TooLarge) as value:
            await kv.put("k", b"v" * size)
        with pytest.raises(TooLarge) as key:
            await kv.get("k" * (KEY_BYTES_MAX + 1))
        with pytest.raises(TooLarge):
            await kv.delete("k" * size)
        with pytest.raises(TooLarge) as new:
            await kv.cas("k", None, "v" * size)
        with pytest.raises(TooLarge):
            kv.submit_put("k", b"v" * size, lambda outcome: None)
        assert kv._unanswered == []  # nothing waits for the refused writes
    assert str(value.value) == expected("value", size, VALUE_BYTES_MAX)
    assert str(key.value) == expected("key", KEY_BYTES_MAX + 1, KEY_BYTES_MAX)
    assert str(new.value) == expected("new value", size, VALUE_BYTES_MAX)


@pytest.mark.parametrize("size", [VALUE_BYTES_MAX + 1, 20_000_000])
def test_the_blocking_clients_refuse_before_sending(size):
    from kvstore.client import Client
    from kvstore.oneshot import OneShotClient

    for make in (Client, OneShotClient):
        with make(["127.0.0.1:1"], timeout=0.2) as kv:
            with pytest.raises(TooLarge) as value:
                kv.put("k", "v" * size)
            with pytest.raises(TooLarge) as key:
                kv.get("k" * (KEY_BYTES_MAX + 1))
        assert str(value.value) == expected("value", size, VALUE_BYTES_MAX)
        assert str(key.value) == expected("key", KEY_BYTES_MAX + 1, KEY_BYTES_MAX)


def test_too_large_is_what_a_caller_caught_before():
    from kvstore import wire

    assert issubclass(TooLarge, wire.FrameTooLarge) and issubclass(TooLarge, ValueError)


# --- wrong types and text that is not valid: refused before anything is sent too --------------------
# (the server answered a protocol error and closed the connection, taking the other requests on it along)

WRONG = [
    ("put", (1, "v"), TypeError, "key must be a str, got int"),
    ("put", (b"k", "v"), TypeError, "key must be a str, got bytes"),
    ("put", ("k", None), TypeError, "value must be str or bytes, got NoneType"),
    ("put", ("k", 5), TypeError, "value must be str or bytes, got int"),
    ("get", (1,), TypeError, "key must be a str, got int"),
    ("list", (1,), TypeError, "prefix must be a str, got int"),
    ("cas", ("k", "a", None), TypeError, "new value must be str or bytes, got NoneType"),
    ("put", ("\ud800", "v"), ValueError, "key is not valid text: it holds a lone surrogate ('\\ud800' at index 0)"),
    ("put", ("k", "ok\udcff"), ValueError, "value is not valid text: it holds a lone surrogate"),
]


@pytest.mark.parametrize("method,args,error,message", WRONG, ids=lambda v: repr(v)[:40])
async def test_the_async_client_refuses_wrong_types_and_bad_text_before_sending(method, args, error, message):
    from kvstore.client import connect

    async with connect(["127.0.0.1:1"], timeout=0.2) as kv:  # nothing listens: a send would fail otherwise
        with pytest.raises(error) as raised:
            await getattr(kv, method)(*args)
    assert message in str(raised.value)
    assert not isinstance(raised.value, TooLarge)


@pytest.mark.parametrize("method,args,error,message", WRONG, ids=lambda v: repr(v)[:40])
def test_the_blocking_clients_refuse_wrong_types_and_bad_text_before_sending(method, args, error, message):
    from kvstore.client import Client
    from kvstore.oneshot import OneShotClient

    for make in (Client, OneShotClient):
        with make(["127.0.0.1:1"], timeout=0.2) as kv:
            with pytest.raises(error) as raised:
                getattr(kv, method)(*args)
        assert message in str(raised.value)


def test_none_is_cas_s_absent_and_bytes_are_values():
    limits.check_value(None, "expected value", optional=True)
    limits.check_value(b"\xff\x00")
    limits.check_value(bytearray(b"x"))
    limits.check_key("ключ")
