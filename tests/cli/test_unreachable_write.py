"""A write that never left this machine (every endpoint refused the connection) was certainly not
applied, and both clients say so, as they do when every node turned it away ("no leader"): ``kv put``
used to end with only "... Connection refused", which leaves the user to wonder. Nothing listens on the
ports used here, so every connect is refused at once; the deadline is short.
"""
from __future__ import annotations

import sys

import pytest

from kvstore.client import Client
from kvstore.client import Unavailable as AsyncClientUnavailable
from kvstore.oneshot import OneShotClient
from kvstore.oneshot import Unavailable as OneShotUnavailable
from tests.cli.test_closed_streams import _kv_in_shell
from tests.ports import free_ports


@pytest.mark.parametrize(("make", "unavailable"), [(OneShotClient, OneShotUnavailable),
                                                    (Client, AsyncClientUnavailable)])
def test_a_write_no_endpoint_accepted_was_not_applied(make, unavailable):
    endpoints = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with make(endpoints, timeout=0.5) as client:
        with pytest.raises(unavailable) as caught:
            client.put("k", "v")
        assert str(caught.value).endswith("; the write was not applied"), caught.value
        assert not caught.value.outcome_unknown
        with pytest.raises(unavailable) as read:
            client.get("k")
        assert "applied" not in str(read.value)  # (a read says nothing of writes)


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX shell")
def test_kv_put_says_the_write_was_not_applied():
    result = _kv_in_shell("put k v", "", free_ports(1)[0])
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no answer from the cluster within 2s")
    assert "Connection refused" in result.stderr and "; the write was not applied" in result.stderr, result.stderr
