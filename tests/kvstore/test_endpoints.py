"""Tests for kvstore.endpoints: which endpoint, endpoint-list and peer-list texts are accepted, and how.

What is checked, and how:

* Accepted forms parse to the exact (host, port) pair: host names, IPv4, IPv6 in brackets (short form,
  scope id kept), surrounding whitespace, ports 1 and 65535, leading zeros, etcdctl's ``http://`` prefix.
* Refused forms raise EndpointError (a ValueError, so callers that catch ValueError keep working), each
  with a message that quotes the text and names the problem: empty, no port, no host, a bare IPv6
  address, bad brackets, a bad host name, ports out of range or not ASCII digits, another scheme
  (https:// included: TLS comes from the certificate files) or a path, several endpoints separated by
  spaces or semicolons instead of commas.
* format_endpoint is parse_endpoint's inverse: the normal form parses back to the same pair.
* Lists: order kept, duplicates (by normal form) dropped, empty lists and empty entries refused.
* Peers: the error texts kvstore.server and ``kv serve`` have always given, ids out of range, an id
  given twice, two ids with one endpoint.
"""
from __future__ import annotations

import pytest

from kvstore.endpoints import (
    EndpointError,
    format_endpoint,
    parse_endpoint,
    parse_endpoint_list,
    parse_peers,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7001", ("127.0.0.1", 7001)),
        ("localhost:1", ("localhost", 1)),
        ("n1:65535", ("n1", 65535)),
        ("node-2.example_net:80", ("node-2.example_net", 80)),
        ("  10.0.0.1:7001\t", ("10.0.0.1", 7001)),
        ("a:007001", ("a", 7001)),
        ("[::1]:7001", ("::1", 7001)),
        ("[0:0:0:0:0:0:0:1]:7001", ("::1", 7001)),  # the short form, so duplicates compare equal
        ("[2001:DB8::1]:443", ("2001:db8::1", 443)),
        ("[fe80::1%eth0]:7001", ("fe80::1%eth0", 7001)),
        ("http://127.0.0.1:7301", ("127.0.0.1", 7301)),  # etcdctl's habit: plain TCP is what http means
        ("HTTP://n1:7301/", ("n1", 7301)),
        ("http://[::1]:7001", ("::1", 7001)),
    ],
)
def test_accepted_endpoints(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty endpoint"),
        ("   ", "empty endpoint"),
        ("foo", "expected HOST:PORT"),
        (":7001", "expected HOST:PORT"),
        ("a:", "port '' is not a number"),
        ("a:http", "port 'http' is not a number"),
        ("a:-1", "port -1 is out of range 1-65535"),
        ("a:+1", "port '+1' is not a number"),
        ("a:\u0667\u0660\u0660\u0661", "is not a number"),  # Arabic-Indic digits: isdigit() but not ASCII
        ("a:0", "out of range 1-65535"),
        ("a:65536", "out of range 1-65535"),
        ("a:99999", "out of range 1-65535"),
        ("a:" + "9" * 5000, "out of range 1-65535"),  # refused without converting 5000 digits
        ("::1:7001", "write IPv6 addresses as [ADDR]:PORT"),
        ("[::1:7001", "expected [IPv6]:PORT"),
        ("[::1]7001", "expected [IPv6]:PORT"),
        ("[::1]", "expected [IPv6]:PORT"),
        ("[zz]:1", "'zz' is not an IPv6 address"),
        ("[127.0.0.1]:1", "is not an IPv6 address"),
        ("a b:1", "bad host name 'a b'"),
        ("a/b:1", "bad host name"),
        ("h\u00e9te:1", "bad host name"),
        ("a:1,b:2", "one endpoint expected, not a comma list"),
        ("https://127.0.0.1:7301", "endpoints are HOST:PORT, without a scheme: use 127.0.0.1:7301; TLS is set"),
        ("unix:///tmp/kv.sock", "endpoints are HOST:PORT, without a scheme: use HOST:PORT"),
        ("http://127.0.0.1:7301/v3", "endpoints are HOST:PORT, without a path: use 127.0.0.1:7301"),
        ("a:1;b:2", "separate endpoints with commas: 'a:1,b:2'"),
        ("127.0.0.1:7303 127.0.0.1:7304", "separate endpoints with commas: '127.0.0.1:7303,127.0.0.1:7304'"),
        ("a:1; b:2;", "separate endpoints with commas: 'a:1,b:2'"),
    ],
)
def test_refused_endpoints_say_why(text, problem):
    with pytest.raises(EndpointError) as info:
        parse_endpoint(text)
    assert problem in str(info.value)
    if text.strip():
        assert repr(text) in str(info.value)  # the message quotes what the user typed
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["127.0.0.1:7001", "n1:1", "[::1]:7001", "[fe80::1%eth0]:65535"])
def test_format_endpoint_is_the_inverse_of_parse_endpoint(text):
    assert format_endpoint(*parse_endpoint(text)) == text
    assert parse_endpoint(format_endpoint(*parse_endpoint(text))) == parse_endpoint(text)


def test_endpoint_list_keeps_order_and_drops_duplicates():
    assert parse_endpoint_list("a:1, b:2") == [("a", 1), ("b", 2)]
    assert parse_endpoint_list(["b:2", "a:1"]) == [("b", 2), ("a", 1)]
    assert parse_endpoint_list("a:1,b:2,a:1, a:01") == [("a", 1), ("b", 2)]
    assert parse_endpoint_list("[::1]:7001,[0::1]:7001") == [("::1", 7001)]
    assert parse_endpoint_list(x for x in ["a:1"]) == [("a", 1)]


@pytest.mark.parametrize(
    ("endpoints", "problem"),
    [
        ("", "the endpoint list is empty"),
        (" ", "the endpoint list is empty"),
        ([], "the endpoint list is empty"),
        ("a:1,", "empty endpoint"),
        (",a:1", "empty endpoint"),
        ("a:1,,b:2", "empty endpoint"),
        (["a:1", ""], "empty endpoint"),
        ("a:1,b:0", "out of range"),
        (["a:1", "b"], "expected HOST:PORT"),
        ("127.0.0.1:7303 127.0.0.1:7304", "separate endpoints with commas"),  # KV_ENDPOINTS as a shell list
        ("a:1,b:2;c:3", "separate endpoints with commas: 'b:2,c:3'"),
    ],
)
def test_refused_endpoint_lists(endpoints, problem):
    with pytest.raises(EndpointError, match=problem):
        parse_endpoint_list(endpoints)


def test_peers_parse_to_a_map_of_node_id_to_endpoint():
    assert parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002, 3 = [::1]:7003") == {
        1: ("127.0.0.1", 7001),
        2: ("127.0.0.1", 7002),
        3: ("::1", 7003),
    }
    assert parse_peers("7=n7:1") == {7: ("n7", 1)}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no peers given"),
        (" ", "no peers given"),
        ("garbage", "peer 'garbage' is not ID=HOST:PORT"),
        ("x=127.0.0.1:7001", "peer 'x=127.0.0.1:7001' is not ID=HOST:PORT"),
        ("-1=a:1", "is not ID=HOST:PORT"),
        ("\u0661=a:1", "is not ID=HOST:PORT"),  # a non-ASCII digit
        ("0=a:1", "peer '0=a:1': node ids start at 1"),
        (f"{2**63}=a:1", "node ids are below 2**63"),
        ("9" * 5000 + "=a:1", "node ids are below 2**63"),
        ("1=a:1,1=b:2", "peer id 1 appears twice"),
        ("1=a:1,01=b:2", "peer id 1 appears twice"),
        ("1=a:1,2=a:1", "peers 1 and 2 have the same endpoint a:1"),
        ("1=[::1]:7,2=[0::1]:7", "peers 1 and 2 have the same endpoint [::1]:7"),
        ("1=a:1,", "empty entry in the peer list"),
        ("1=nowhere", "invalid endpoint 'nowhere'"),
        ("1=127.0.0.1:0", "out of range"),
        ("1=::1:7001", "write IPv6 addresses as [ADDR]:PORT"),
    ],
)
def test_refused_peer_lists_say_why(text, problem):
    with pytest.raises(EndpointError) as info:
        parse_peers(text)
    assert problem in str(info.value)


def test_largest_node_id_is_accepted():
    assert parse_peers(f"{2**63 - 1}=a:1") == {2**63 - 1: ("a", 1)}


def test_the_rotation_goes_on_after_the_hint_giver_and_skips_the_node_that_failed():
    from kvstore.endpoints import next_in_rotation

    assert next_in_rotation(0, 0, 3) == 1  # no hint: the next endpoint
    assert next_in_rotation(2, 2, 3) == 0  # wraps around
    assert next_in_rotation(0, 3, 4) == 1  # endpoint 0 hinted at 3 (appended), which failed: 1, not 0 again
    assert next_in_rotation(0, 1, 3) == 2  # the hinted endpoint is next in line, and it failed: skip it
    assert next_in_rotation(0, 0, 1) == 0  # one endpoint: itself
