"""Keys and values on the command line are text: bytes that are not UTF-8 are refused before connecting.

Python hands undecodable bytes of the command line over as lone surrogates (PEP 383). Before this
check ``kv put $'k\\xff' v`` connected and then failed with an internal ``UnicodeEncodeError`` (exit
1, after the whole command timeout when the cluster was down). Now it is a usage error (exit 2) that
names the argument and says where binary values go, whatever the endpoints."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kv_cli.main import not_text_argument

BAD = os.fsdecode(b"k\xff")  # what sys.argv holds for the bytes k, 0xff


@pytest.mark.parametrize("argv", [
    ["put", BAD, "v"], ["put", "k", BAD], ["get", BAD], ["del", "--prefix", BAD], ["cas", "k", BAD, "b"],
    ["ls", BAD], ["-w", "json", "put", "k", BAD], ["--endpoints", "h:1", "get", BAD], ["watch", "--prefix", BAD],
])
def test_a_key_or_value_that_is_not_utf8_is_named(argv):
    problem = not_text_argument(argv)
    assert problem is not None and "'k\\xff' is not valid UTF-8" in problem
    # the stdin hint only where it helps: a value for put (QA: it was given for get, del and cas too)
    command = next(a for a in argv if a in ("put", "get", "del", "cas", "ls", "watch"))
    assert ("kv put KEY < FILE" in problem) == (command == "put"), problem
    assert ("cannot be compared" in problem) == (command == "cas"), problem


@pytest.mark.parametrize("argv", [
    ["put", "k", "v"], ["get", "ключ"], ["-w", "json", "get", "k"], [],
    ["serve", "--data-dir", BAD],  # not a key or value: paths may be any bytes
])
def test_text_and_other_commands_pass(argv):
    assert not_text_argument(argv) is None


def test_the_kv_command_exits_2_before_connecting():
    script = "import sys; from kv_cli.main import run; sys.argv[0] = 'kv'; run()"
    result = subprocess.run([sys.executable, "-c", script, "--endpoints", "127.0.0.1:1", "--command-timeout", "30",
                             "put", b"k\xff".decode("utf-8", "surrogateescape"), "v"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2, result.stderr
    assert "is not valid UTF-8" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv,fragment", [
    (["endpoint", "status"], "kv status and kv health are etcdctl's endpoint status and endpoint health"),
    (["--endpoints", "h:1", "-w", "json", "endpoint", "health"], "kv status and kv health"),
    (["lease", "grant", "10"], "kv has no leases"), (["txn"], "kv cas KEY EXPECTED NEW"),
])
def test_etcdctl_commands_kv_lacks_are_named_with_what_to_use(argv, fragment):
    """etcd QA: `kv endpoint status` got typer's "No such command" and no hint toward kv status."""
    from kv_cli.main import etcdctl_hint

    hint = etcdctl_hint(argv)
    assert hint is not None and fragment in hint


def test_kv_s_own_commands_get_no_etcdctl_hint():
    from kv_cli.main import etcdctl_hint

    assert all(etcdctl_hint(argv) is None for argv in (["status"], ["get", "endpoint"], ["put", "watch", "v"],
                                                           ["watch", "k"], []))
    script = "import sys; from kv_cli.main import run; sys.argv[0] = 'kv'; run()"
    result = subprocess.run([sys.executable, "-c", script, "endpoint", "status"], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 2 and "kv status and kv health" in result.stderr, result.stderr
