"""``kv get --prefix`` prints each key's version and mod_revision in ``-w json`` and ``-w table`` (asked of the
node with ``meta``; the simple output does not ask), and a node that predates ``meta`` still gets its
range printed, without them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvstore.client import KVError
from kvstore.oneshot import OneShotClient
from tests.cli.fakenodes import Store
from tests.cli.test_parse_output import EP, run


def test_json_asks_for_versions_and_prints_them_and_simple_output_does_not_ask(fake):
    fake.set("a", "1")
    fake.set("a", "2")
    fake.set("b", "x")
    shown = json.loads(run(*EP, "-w", "json", "get", "--prefix", "").stdout)
    assert shown["kvs"] == [{"key": "a", "value": "2", "version": 2, "mod_revision": 2},
                            {"key": "b", "value": "x", "version": 1, "mod_revision": 3}]
    keys = json.loads(run(*EP, "-w", "json", "get", "--prefix", "", "--keys-only").stdout)
    assert keys["kvs"] == [{"key": "a", "version": 2, "mod_revision": 2}, {"key": "b", "version": 1, "mod_revision": 3}]
    assert run(*EP, "get", "--prefix", "").stdout == "a\n2\nb\nx\n"
    asked = [kwargs["meta"] for name, _, kwargs in fake.calls if name == "range_items"]
    assert asked == [True, True, False]


def test_a_node_from_before_meta_gets_its_range_printed_without_versions(nodes):
    """The fake node here answers ``list`` as nodes did before ``meta``: it ignores the field."""
    node = nodes(Store().handle)
    with OneShotClient([node.address], timeout=2) as kv:
        kv.put("k", "v")
        with pytest.raises(KVError, match="without versions"):
            kv.list_entries("")
        assert kv.range_items("", meta=True) == [["k", "v"]]
    shown = subprocess.run([sys.executable, "-m", "kv_cli", "--endpoints", node.address, "-w", "json", "get",
                            "--prefix", ""], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["kvs"] == [{"key": "k", "value": "v"}]
