"""``kvstore.identity``: how an unfounded node decides to start, and which peers a founded node accepts.

Pure functions on status dicts, checked case by case: a new cluster founds only when every member
answered unfounded; a node that was part of the founding takes the record; a wiped node (a new
incarnation, or an id the record lacks) is refused with a message saying what happened and what to do.
"""
from __future__ import annotations

import pytest

from kvstore.identity import IdentityError, check_peer, decide_founding, new_incarnation

IDS = (1, 2, 3)


def unfounded(incarnation):
    return {"incarnation": incarnation, "members": None}


def founded(members):
    return {"incarnation": members.get(1, "x"), "members": {str(k): v for k, v in members.items()}}


def test_incarnations_are_random_hex():
    a, b = new_incarnation(), new_incarnation()
    assert a != b and all(len(x) == 16 and set(x) <= set("0123456789abcdef") for x in (a, b))


def test_a_new_cluster_founds_only_when_every_member_answered():
    waiting = decide_founding(1, "i1", IDS, {2: unfounded("i2"), 3: None})
    assert waiting.members is None and waiting.waiting_for == (3,)
    done = decide_founding(1, "i1", IDS, {2: unfounded("i2"), 3: unfounded("i3")})
    assert done.members == {1: "i1", 2: "i2", 3: "i3"} and done.how == "new cluster"


def test_a_node_the_founding_recorded_takes_the_record():
    record = {1: "i1", 2: "i2", 3: "i3"}
    done = decide_founding(3, "i3", IDS, {1: founded(record), 2: None})
    assert done.members == record and done.how == "joined the founding"


@pytest.mark.parametrize("record", [{1: "i1", 2: "old2", 3: "i3"}, {1: "i1", 3: "i3"}])
def test_a_wiped_node_is_refused_even_with_a_majority_of_unfounded_peers(record):
    with pytest.raises(IdentityError, match="lost its data") as info:
        decide_founding(2, "new2", IDS, {1: None, 3: founded(record)})
    assert "docs/operations.md" in str(info.value) and "new2" in str(info.value)


def test_a_wiped_member_added_after_the_founding_is_named_as_its_configuration_knows_it():
    """The founding record names only the founders: a voter added later was reported as "no member at
    all". The peer's configuration knows it; and the message gives the guide's remedy (remove it, add a
    new id), not only "keep it down"."""
    status = founded({1: "i1", 2: "i2", 3: "i3"})
    status["config"] = {"voters": [1, 2, 3, 6], "learners": [], "epoch": 2, "incarnations": {"6": "old6"}}
    with pytest.raises(IdentityError) as info:
        decide_founding(6, "new6", (1, 2, 3, 6), {1: status})
    assert "knows node 6 as incarnation old6" in str(info.value)
    assert "kv member remove 6, then add a new member under a new id" in str(info.value)
    status["config"]["incarnations"] = {}
    with pytest.raises(IdentityError, match="knows node 6 as a member \\(voter\\)"):
        decide_founding(6, "new6", (1, 2, 3, 6), {1: status})
    status["config"]["voters"] = [1, 2, 3]
    with pytest.raises(IdentityError, match="knows node 6 as no member at all"):
        decide_founding(6, "new6", (1, 2, 3, 6), {1: status})


def test_peers_of_another_cluster_are_named_as_such_not_taken_for_a_lost_disk():
    """A cluster restored from a backup (``kv-restored-...``) started with ``--peers`` of the old cluster's
    running nodes: the old cluster knows node 3 under another incarnation, and the node was told that it
    lost its data and to remove node 3, a member of the old cluster (QA). The other cluster id is what
    is wrong; said so before anything else. Peers of the same cluster go on as before."""
    old = founded({1: "i1", 2: "i2", 3: "i3"})
    old["cluster_id"] = "kv-01c9ea3e"
    with pytest.raises(IdentityError) as info:
        decide_founding(3, "new3", IDS, {1: old, 2: None}, "kv-restored-14c483ea")
    text = str(info.value)
    assert text.startswith("node 1 answers as a member of cluster 'kv-01c9ea3e', but this node's data directory "
                           "is of cluster 'kv-restored-14c483ea': --peers names another cluster's nodes")
    assert "lost its data" not in text and "kv member remove" not in text
    with pytest.raises(IdentityError, match="lost its data"):  # (its own cluster: the lost disk it is)
        decide_founding(3, "new3", IDS, {1: old, 2: None}, "kv-01c9ea3e")
    fresh = unfounded("i2") | {"cluster_id": "kv-01c9ea3e"}
    with pytest.raises(IdentityError, match="--peers names another cluster's nodes"):
        decide_founding(1, "i1", IDS, {2: fresh, 3: None}, "mine")
    assert decide_founding(1, "i1", IDS, {2: fresh, 3: None}, "kv-01c9ea3e").waiting_for == (3,)


def test_a_single_node_cluster_founds_alone():
    assert decide_founding(1, "i1", (1,), {}).members == {1: "i1"}


def test_a_peer_without_an_incarnation_stops_the_founding():
    with pytest.raises(IdentityError, match="older version"):
        decide_founding(1, "i1", (1, 2), {2: {"members": None}})


def test_check_peer_accepts_the_known_incarnation_and_refuses_another():
    members = {1: "i1", 2: "i2"}
    assert check_peer(members, 2, "i2") is None
    assert "lost its data directory" in check_peer(members, 2, "0123456789abcdef")
    assert "older version" in check_peer(members, 2, None)
    assert "which is no incarnation (16 hex digits): not a kv node" in check_peer(members, 2, "zz")
    assert check_peer(members, 3, "i3") is None  # not recorded: the caller records it (directories from before)


# ---- the incarnation and the members record in the data directory (kvstore.storage, meta.json)

import json  # noqa: E402

from kvstore.storage import Storage, StorageError  # noqa: E402
from paxos.actions import PromiseRecord  # noqa: E402
from paxos.ballot import Ballot  # noqa: E402


def test_a_new_directory_gets_an_incarnation_that_survives_reopening(tmp_path):
    with Storage.open(tmp_path / "d", node_id=1, cluster_id="kv", fsync=False) as s:
        first = s.incarnation
        assert len(first) == 16 and s.members is None and not s.identity_legacy
        s.record_members({1: first, 2: "i2"})
    with Storage.open(tmp_path / "d", node_id=1, cluster_id="kv", fsync=False) as s:
        assert s.incarnation == first and s.members == {1: first, 2: "i2"}
    with Storage.open(tmp_path / "wiped", node_id=1, cluster_id="kv", fsync=False) as s:
        assert s.incarnation != first  # a new directory is a new acceptor


def test_a_directory_from_before_incarnations_gets_one_and_is_marked_legacy(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"format": 1, "node_id": 2, "cluster_id": "kv"}))
    with Storage.open(d, node_id=2, cluster_id="kv", fsync=False) as s:
        incarnation = s.incarnation
        assert s.identity_legacy and s.members == {2: incarnation} and incarnation
    with Storage.open(d, node_id=2, cluster_id="kv", fsync=False) as s:
        # founded (no founding check), the others to be recorded as they say Hello
        assert s.incarnation == incarnation and s.members == {2: incarnation}


def test_an_older_versions_directory_is_read_and_marked_so_that_older_versions_refuse_it(tmp_path):
    """Format 1 (every version before the log's fence) and 2 (before client expiry) are read as they are,
    and meta.json says format 3 from the first open on, before the log is written: each older version
    checks the format at open and refuses a newer one, before touching a file (QA: rolled back after this
    version appended to its log, one cut the appended records as a torn tail and lost acknowledged writes;
    downgraded after client expiry was on, one applied the retries the cluster had refused). A format this
    version does not know is refused, and a newer one is named as such."""
    d = tmp_path / "old"
    with Storage.open(d, node_id=2, cluster_id="kv", fsync=False) as s:
        s.append([PromiseRecord(Ballot(3, 2))])
        s.sync()
    meta = json.loads((d / "meta.json").read_text())
    assert meta["format"] == 3
    for older in (1, 2):  # as an older version left it (2: before client expiry)
        (d / "meta.json").write_text(json.dumps({**meta, "format": older}))
        with Storage.open(d, node_id=2, cluster_id="kv", fsync=False) as s:
            assert json.loads((d / "meta.json").read_text())["format"] == 3
            assert s.recovered.promised == Ballot(3, 2)
    for newer, said in ((4, "a newer version of kv wrote this directory"), ("3", "this program reads 1, 2, 3")):
        (d / "meta.json").write_text(json.dumps({**meta, "format": newer}))
        with pytest.raises(StorageError, match=said):
            Storage.open(d, node_id=2, cluster_id="kv", fsync=False)


@pytest.mark.parametrize("bad", [{"incarnation": 7}, {"incarnation": "x", "members": ["1"]}])
def test_a_damaged_identity_in_meta_is_refused(tmp_path, bad):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"format": 1, "node_id": 2, "cluster_id": "kv", **bad}))
    with pytest.raises(StorageError, match="unreadable"):
        Storage.open(d, node_id=2, cluster_id="kv", fsync=False)
