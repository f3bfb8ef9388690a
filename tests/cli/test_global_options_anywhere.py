"""Global options after the subcommand, as etcdctl users type them (``kv status -w table``)."""
from kv_cli.main import hoist_global_options


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
