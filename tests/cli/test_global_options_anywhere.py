"""Global options after the subcommand, as etcdctl users type them (``kv status -w table``)."""
import json
import sys

import pytest

from kv_cli.main import MissingValue, hoist_global_options, run


def test_global_options_after_the_command_move_to_the_front():
    assert hoist_global_options(["get", "k", "-w", "json"]) == ["-w", "json", "get", "k"]
    assert hoist_global_options(["status", "--write-out=table", "--debug"]) == [
        "--write-out=table", "--debug", "status"]
    assert hoist_global_options(["--endpoints", "h:1", "put", "k", "v", "--command-timeout", "2"]) == [
        "--endpoints", "h:1", "--command-timeout", "2", "put", "k", "v"]


def test_values_and_commands_with_their_own_flags_are_left_alone():
    assert hoist_global_options(["put", "k", "--", "-w"]) == ["put", "k", "--", "-w"]
    assert hoist_global_options(["bench", "-w", "json"]) == ["bench", "-w", "json"]
    assert hoist_global_options(["serve", "--id", "1"]) == ["serve", "--id", "1"]
    assert hoist_global_options(["cluster", "status", "--data-dir", "d"]) == [
        "cluster", "status", "--data-dir", "d"]


def test_an_attached_short_value_after_the_command_moves_too():
    assert hoist_global_options(["get", "k", "-wjson"]) == ["-wjson", "get", "k"]
    assert hoist_global_options(["put", "k", "--", "-wjson"]) == ["put", "k", "--", "-wjson"]


@pytest.mark.parametrize("argv", [["get", "k", "-w"], ["get", "k", "--command-timeout"], ["status", "--endpoints"]])
def test_a_global_option_last_without_its_value_is_a_usage_error(argv, monkeypatch, capsys):
    """Moved to the front alone, it took the command's name as its value ("'get' is not one of ...")."""
    with pytest.raises(MissingValue):
        hoist_global_options(argv)
    monkeypatch.setattr(sys, "argv", ["kv", *argv])
    with pytest.raises(SystemExit) as caught:
        run()
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"Error: option {argv[-1]} needs a value\n"


def test_an_attached_short_value_after_the_command_is_used(fake, monkeypatch, capsys):
    fake.set("k", "v")
    monkeypatch.setattr(sys, "argv", ["kv", "--endpoints", "127.0.0.1:7001", "get", "k", "-wjson"])
    run()
    assert json.loads(capsys.readouterr().out)["kvs"][0]["value"] == "v"
