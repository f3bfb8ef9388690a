"""``kvstore.acl``: parsing the rules, what each request needs, and where the check sits in routing.

How: ``parse`` on good and bad TOML (every mistake is one ``AclError`` naming the file); ``Acl.refusal``
over a table of principals and requests; a hypothesis property against a naive definition of a range
check (a range is allowed only if every key it may touch is, and the key equal to the prefix is one of
them); and ``ClientLinks._route`` on the fake node of ``tests/kvstore/test_clients`` with an ACL set: a
refused request is answered ``permission_denied`` and leaves nothing for the driver, an allowed one
goes on as before.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import wire
from kvstore.acl import Acl, AclError, Rules, load, parse
from kvstore.clients import ClientLinks
from kvstore.events import Proposal
from kvstore.tls import Principal

from ..kvstore import test_clients as routing

RULES = """
[clients.admin]
readwrite = [""]

[clients.reader]
read = ["app/"]

[clients.writer]
readwrite = ["app/", "tmp/"]
read = ["conf/"]
"""

CID = b"c" * 16


def put(key: str) -> wire.PutRequest:
    return wire.PutRequest(id=3, key=key, value="v", client_id=CID, request_id=1, ack_below=0)


def delete(key: str, prefix: bool = False) -> wire.DeleteRequest:
    return wire.DeleteRequest(id=3, key=key, prefix=prefix, client_id=CID, request_id=1, ack_below=0)


def cas(key: str) -> wire.CasRequest:
    return wire.CasRequest(id=3, key=key, expected=None, new="n", client_id=CID, request_id=1, ack_below=0)


def get(key: str) -> wire.GetRequest:
    return wire.GetRequest(id=3, key=key, linearizable=True)


def ls(prefix: str) -> wire.ListRequest:
    return wire.ListRequest(id=3, prefix=prefix, keys_only=False, linearizable=True, limit=1)


ADMIN = wire.AdminRequest(id=3, op="member_list", node=0, address="")
BACKUP = wire.BackupRequest(id=3, session=0, offset=0)
STATUS = wire.StatusRequest(id=3)


def test_parse_reads_the_rules():
    acl = parse(RULES)
    assert acl.clients == {"admin": Rules(readwrite=("",)), "reader": Rules(read=("app/",)),
                           "writer": Rules(read=("conf/",), readwrite=("app/", "tmp/"))}
    assert parse("").clients == {}


@pytest.mark.parametrize("text,words", [
    ("[clients.a\nread = []", "not valid TOML"),
    ("[client.a]\nread = []", "unknown top-level key(s) client"),
    ("[clients.a]\nwrite = ['x']", "clients.a: unknown key(s) write"),
    ("[clients.a]\nread = 'x'", "clients.a.read must be a list"),
    ("[clients.a]\nreadwrite = [1]", "clients.a.readwrite must be a list"),
    ("clients = 3", "'clients' must be a table"),
    ("[clients]\na = 1", "clients.a must be a table"),
], ids=["toml", "top-key", "client-key", "not-list", "not-string", "clients-not-table", "client-not-table"])
def test_every_mistake_is_one_error_naming_the_file(tmp_path, text, words):
    path = tmp_path / "acl.toml"
    path.write_text(text)
    with pytest.raises(AclError) as caught:
        load(path)
    assert words in str(caught.value) and str(path) in str(caught.value)


def test_an_unreadable_or_missing_file_is_an_acl_error(tmp_path):
    with pytest.raises(AclError, match="cannot read the ACL file"):
        load(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(AclError, match="not UTF-8"):
        load(tmp_path / "bad.toml")


ALLOWED = {
    "admin": [put("x"), delete("", prefix=True), get("any"), ls(""), ADMIN, BACKUP, STATUS],
    "reader": [get("app/a"), ls("app/"), ls("app/sub/"), STATUS],
    "writer": [put("app/a"), cas("tmp/t"), delete("app/a"), delete("app/", prefix=True), delete("app/x", prefix=True),
               get("conf/c"), ls("conf/"), ls("tmp/"), STATUS],
}
DENIED = {
    "reader": [put("app/a"), cas("app/a"), delete("app/a"), delete("app/", prefix=True), get("other"),
               get("app"), ls(""), ls("app"), ls("ap"), ADMIN, BACKUP],
    "writer": [put("conf/c"), delete("conf/", prefix=True), delete("", prefix=True), delete("ap", prefix=True),
               ls(""), ls("con"), put("other"), ADMIN, BACKUP],
    "stranger": [STATUS, get("app/a"), ls("app/"), put("app/a"), ADMIN],
}


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_what_each_client_may_do(name):
    acl = parse(RULES)
    for request in ALLOWED[name]:
        assert acl.refusal(Principal(name), request) is None, (name, request)


@pytest.mark.parametrize("name", sorted(DENIED))
def test_what_each_client_may_not_do(name):
    acl = parse(RULES)
    for request in DENIED[name]:
        refused = acl.refusal(Principal(name), request)
        assert refused is not None and refused.startswith("permission denied") and repr(name) in refused, request


def test_node_certificates_may_ask_status_only_and_no_certificate_gets_nothing():
    acl = parse(RULES)
    node = Principal("node-2", node_id=2)
    assert acl.refusal(node, STATUS) is None
    assert acl.refusal(node, get("app/a")) is not None and acl.refusal(node, ADMIN) is not None
    assert acl.refusal(None, STATUS) is not None and acl.refusal(None, get("x")) is not None


keys = st.text(alphabet="ab/", max_size=5)


@settings(max_examples=300, deadline=None)
@given(read=st.lists(keys, max_size=3), readwrite=st.lists(keys, max_size=3), prefix=keys,
       tails=st.lists(keys, min_size=1, max_size=5))
def test_a_range_is_allowed_exactly_when_every_key_it_may_touch_is(read, readwrite, prefix, tails):
    acl = Acl({"c": Rules(read=tuple(read), readwrite=tuple(readwrite))})
    me = Principal("c")

    def may_read(key):
        return any(key.startswith(p) for p in read + readwrite)

    def may_write(key):
        return any(key.startswith(p) for p in readwrite)

    range_read = acl.refusal(me, ls(prefix)) is None
    range_delete = acl.refusal(me, delete(prefix, prefix=True)) is None
    # The key equal to the prefix is in the range: a range is allowed only if it is ...
    assert range_read == may_read(prefix) and range_delete == may_write(prefix)
    # ... and then every key of the range is too.
    for tail in tails:
        if range_read:
            assert may_read(prefix + tail) and acl.refusal(me, get(prefix + tail)) is None
        if range_delete:
            assert may_write(prefix + tail) and acl.refusal(me, put(prefix + tail)) is None


class ConnOf(routing.FakeConn):
    def __init__(self, principal) -> None:
        super().__init__()
        self.principal = principal


def _route(acl, principal, request):
    node = routing.FakeNode()
    links = ClientLinks(node)
    links.acl = acl
    conn, events = ConnOf(principal), []
    links._route(conn, request, events)
    return conn, events, node


def test_routing_answers_a_refused_request_before_anything_is_queued():
    acl = parse(RULES)
    conn, events, node = _route(acl, Principal("reader"), put("app/a"))
    assert events == [] and len(conn.answers) == 1
    answer = conn.answers[0]
    assert isinstance(answer, wire.ErrorReply) and answer.code == wire.PERMISSION_DENIED and answer.id == 3
    assert node.waiters.requests["put", "denied"] == 1
    conn, events, _ = _route(acl, Principal("writer"), put("app/a"))
    assert conn.answers == [] and len(events) == 1 and isinstance(events[0], Proposal)
    conn, events, _ = _route(acl, Principal("reader"), get("app/a"))
    assert conn.answers == [] and len(events) == 1  # a read of its prefix: on to the leader's read path
    conn, events, _ = _route(None, None, put("anything"))  # no ACL: everything goes on as before
    assert conn.answers == [] and len(events) == 1
