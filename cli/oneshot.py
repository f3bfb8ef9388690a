"""The one-shot client commands, ``kv put|get|del|cas|ls|status|health``: what each does once its
arguments are parsed, without typer.

Two parsers call these functions: the typer app (``kv_cli.app``), and for the hottest, well-formed
invocations the fast path (``kv_cli.fast``), which spares a command typer's start-up. So each function
gets plain values, checks them before connecting (STYLE.md: usage errors exit 2, size limits and failed
operations exit 1, one line on stderr), talks through ``common.open_oneshot_client`` (a
``kvstore.oneshot.OneShotClient``: no trio), and prints in the ``-w`` format.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from typing import Any

from kvstore.errors import RequestError
from kvstore.frames import TOO_LARGE

from . import nodestatus
from .common import (
    OperationFailed,
    Settings,
    UsageProblem,
    open_oneshot_client,
    reporting_errors,
    unreachable_hint,
)
from .output import OutputFormat, cell, echo, echo_value, jsonable, print_json, print_table, value_fields

CONSISTENCY_CHOICES = ("l", "s")


def _check_key_given(key: str) -> None:
    if key == "":
        raise UsageProblem("the key must not be empty")


def _check_sizes(key: str, *values: tuple[str | bytes | None, str], key_what: str = "key") -> None:
    """The store's limits (``kvstore.limits``), checked before connecting: ``TooLarge``, exit 1."""
    from kvstore.limits import check_key, check_value

    check_key(key, key_what)
    for value, what in values:
        check_value(value, what, optional=True)  # (cas --absent's expected value is None)


def _read_stdin_value() -> str | bytes:
    if sys.stdin is None:  # Python's stand-in for a descriptor closed at start (kv put k <&-)
        raise UsageProblem("no value given and standard input is closed (kv put KEY VALUE, or KEY < FILE)")
    if sys.stdin.isatty():  # typed at a terminal: say what it waits for
        print("kv put: reading the value from the terminal; end it with Ctrl-D (or give it: kv put KEY VALUE)",
              file=sys.stderr, flush=True)
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


# --------------------------------------------------------------------------------------------------
# put / get / del / cas / ls


@contextlib.contextmanager
def _interrupted_write(command: str, key: str) -> Iterator[None]:
    """Ctrl-C during a write: say that it may have been applied before the "Aborted!" that follows (QA:
    ``kv cas`` printed only that, as if nothing had been sent)."""
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{command}: interrupted; the write may or may not have been applied "
                         f"(kv get {shlex.quote(key)} shows what the key holds)")
        raise


def put(settings: Settings, key: str, value: str | None) -> None:
    """``kv put KEY [VALUE]``: the value from stdin (exactly, bytes allowed) when not given; prints OK."""
    with reporting_errors(settings):
        _check_key_given(key)
        settings.endpoints()  # validate before reading stdin or connecting
        settings.tls()
        _check_sizes(key)
        data: str | bytes = _read_stdin_value() if value is None else value
        _check_sizes(key, (data, "value"))  # before connecting: one error for every size over the limit
        with open_oneshot_client(settings) as client, _interrupted_write("kv put", key):
            revision = client.put(key, data)
        if settings.write_out is OutputFormat.json:
            print_json({"ok": True, "key": key, "revision": revision})
        elif settings.write_out is OutputFormat.table:
            print_table(["KEY", "REVISION"], [[key, revision]])
        else:
            echo("OK")


def _entry_record(key: str, value: Any, *, keys_only: bool, entry: Any = None) -> dict[str, Any]:
    record: dict[str, Any] = {"key": key}
    if not keys_only and value is not None:
        record.update(value_fields(value))
    if entry is not None:
        for name in ("version", "mod_revision", "create_revision"):
            if getattr(entry, name, None) is not None:
                record[name] = getattr(entry, name)
    return record


def _range_record(item: list[Any], *, keys_only: bool) -> dict[str, Any]:
    """The record of one item of a ``list`` reply: ``[key, value]`` or ``[key]`` (keys only), each
    followed by the version and mod_revision when the node gave them (``range_items`` with meta)."""
    width = 1 if keys_only else 2
    record = _entry_record(item[0], None if keys_only else item[1], keys_only=keys_only)
    if len(item) == width + 2:
        record["version"], record["mod_revision"] = item[width], item[width + 1]
    return record


def get(settings: Settings, key: str, *, prefix: bool = False, keys_only: bool = False,
        consistency: str = "l", print_value_only: bool = False, limit: int = 0) -> None:
    """``kv get KEY`` (exit 1 if absent) or ``kv get --prefix PREFIX`` (none found is not an error);
    ``limit``: at most that many keys of a prefix (0: all); ``print_value_only``: etcdctl's, the values
    alone in simple output."""
    with reporting_errors(settings):
        if keys_only and print_value_only:
            raise UsageProblem("--keys-only and --print-value-only together would print nothing")
        if limit and not prefix:
            raise UsageProblem("--limit needs --prefix (one key is one key)")
        if not prefix:
            _check_key_given(key)
        settings.endpoints()
        _check_sizes(key, key_what="prefix" if prefix else "key")
        records: list[dict[str, Any]] = []
        more = False
        with open_oneshot_client(settings) as client:
            if prefix:
                try:
                    # (one more than asked: whether the limit cut the range, etcd's "more")
                    # (each key's version and mod_revision only where they are printed)
                    items = client.range_items(key, keys_only=keys_only, consistency=consistency,
                                               limit=limit + 1 if limit else 0,
                                               meta=settings.write_out is not OutputFormat.simple)
                except RequestError as exc:
                    if exc.code != TOO_LARGE:
                        raise
                    raise OperationFailed(f"{exc}; or write the whole range as JSON lines: kv dump --prefix "
                                          f"{shlex.quote(key)} FILE") from None
                more = bool(limit) and len(items) > limit
                for item in items[:limit] if more else items:
                    records.append(_range_record(item, keys_only=keys_only))
            else:
                entry = client.get_entry(key, consistency=consistency)
                if entry is not None:
                    records.append(_entry_record(entry.key, entry.value, keys_only=keys_only, entry=entry))
        if not prefix and not records:
            if settings.write_out is OutputFormat.json:
                print_json({"kvs": [], "count": 0})
            raise OperationFailed(f"key not found: {key}")
        _print_records(settings, records, keys_only=keys_only, values_only=print_value_only,
                       more=more if prefix else None)


def _print_records(settings: Settings, records: list[dict[str, Any]], *, keys_only: bool,
                   values_only: bool = False, more: bool | None = None) -> None:
    """``more`` (a prefix's): whether ``--limit`` left keys of the range out (said in -w json)."""
    if settings.write_out is OutputFormat.json:
        print_json({"kvs": records, "count": len(records), **({} if more is None else {"more": more})})
    elif settings.write_out is OutputFormat.table:
        headers = ["KEY"] if keys_only else ["KEY", "VALUE"]
        extra = [n for n in ("version", "mod_revision") if any(n in r for r in records)]
        headers += [n.upper() for n in extra]
        rows = []
        for r in records:
            row: list[Any] = [r["key"]]
            if not keys_only:
                value = r.get("value")
                row.append(f"base64:{value}" if r.get("value_encoding") == "base64" else value)
            row += [r.get(n) for n in extra]
            rows.append(row)
        print_table(headers, rows)
    else:
        for r in records:
            if not values_only:
                echo(r["key"])
            if not keys_only:
                echo_value(_raw_value(r))


def _raw_value(record: dict[str, Any]) -> str | bytes:
    if record.get("value_encoding") == "base64":
        import binascii

        return binascii.a2b_base64(record["value"])
    value: str | bytes = record.get("value", "")
    return value


def delete(settings: Settings, key: str, *, prefix: bool = False) -> None:
    """``kv del KEY`` or ``kv del --prefix PREFIX``; prints how many keys were deleted."""
    with reporting_errors(settings):
        if not prefix:
            _check_key_given(key)
        settings.endpoints()
        _check_sizes(key, key_what="prefix" if prefix else "key")
        with open_oneshot_client(settings) as client, _interrupted_write("kv del", key):
            if prefix:
                deleted = int(client.delete_prefix(key))
            else:
                deleted = 1 if client.delete(key) else 0
        if settings.write_out is OutputFormat.json:
            print_json({"deleted": deleted, "key": key, "prefix": prefix})
        elif settings.write_out is OutputFormat.table:
            print_table(["KEY", "PREFIX", "DELETED"], [[key, prefix, deleted]])
        else:
            echo(str(deleted))


def cas(settings: Settings, key: str, values: list[str], *, absent: bool = False) -> None:
    """``kv cas KEY EXPECTED NEW`` or ``kv cas --absent KEY NEW``; exit 1 on a mismatch."""
    with reporting_errors(settings):
        _check_key_given(key)
        expected: str | None
        if absent:
            if len(values) != 1:
                raise UsageProblem("with --absent give exactly KEY NEW (kv cas --absent KEY NEW)")
            expected, new = None, values[0]
        else:
            if len(values) != 2:
                raise UsageProblem("give KEY EXPECTED NEW (or --absent KEY NEW)")
            expected, new = values
        settings.endpoints()
        _check_sizes(key, (expected, "expected value"), (new, "new value"))
        with open_oneshot_client(settings) as client:
            with _interrupted_write("kv cas", key):
                succeeded = bool(client.cas(key, expected, new))
            # Say why: a key that is not there at all reads better than "its value is not X" (read after
            # the compare, so it tells what the key holds now, which is what the user acts on)
            missing = False
            if not succeeded and expected is not None:
                try:
                    missing = client.get(key) is None
                except Exception:  # noqa: BLE001 - only the wording of the failure depends on it
                    missing = False
        if settings.write_out is OutputFormat.json:
            print_json({"succeeded": succeeded, "key": key})
        elif settings.write_out is OutputFormat.table:
            print_table(["KEY", "SUCCEEDED"], [[key, succeeded]])
        elif succeeded:
            echo("OK")
        if not succeeded:
            if expected is None:
                raise OperationFailed(f"compare failed: {key} exists")
            if missing:
                raise OperationFailed(f"compare failed: {key} does not exist (kv cas --absent creates it)")
            raise OperationFailed(f"compare failed: the value of {key} is not {expected!r}")


def ls(settings: Settings, prefix: str = "", *, consistency: str = "l", limit: int = 0) -> None:
    """``kv ls [PREFIX]``: the keys in key order (the first ``limit`` of them; 0: all)."""
    with reporting_errors(settings):
        settings.endpoints()
        with open_oneshot_client(settings) as client:
            keys = [k for k, _ in client.list(prefix, keys_only=True, consistency=consistency,
                                              limit=limit + 1 if limit else 0)]
        more = bool(limit) and len(keys) > limit  # (one more than asked: whether the limit cut the range)
        keys = keys[:limit] if more else keys
        if settings.write_out is OutputFormat.json:
            print_json({"keys": keys, "count": len(keys), "more": more})
        elif settings.write_out is OutputFormat.table:
            print_table(["KEY"], [[k] for k in keys])
        else:
            for k in keys:
                echo(k)


# --------------------------------------------------------------------------------------------------
# status / health


def status_rows(statuses: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    columns = nodestatus.present_columns(statuses)
    extra = nodestatus.extra_keys(statuses)
    rows = []
    for status in statuses:
        row = [nodestatus.field(status, c) for c in columns]
        if "STATE_HASH" in columns:  # the full digest is in -w json
            i = columns.index("STATE_HASH")
            row[i] = nodestatus.short_hash(row[i])
        row += [status.get(k) for k in extra]
        rows.append(row)
    return columns + [k.upper() for k in extra], rows


def status(settings: Settings) -> None:
    """``kv status``: every node's status; exit 1 if no endpoint is reachable."""
    with reporting_errors(settings):
        settings.endpoints()
        with open_oneshot_client(settings) as client:
            statuses = [dict(s) for s in client.cluster_status()]
        if settings.write_out is OutputFormat.json:
            print_json(jsonable(statuses))
        else:
            headers, rows = status_rows(statuses)
            if settings.write_out is OutputFormat.table:
                print_table(headers, rows)
            else:
                for row in rows:
                    echo(", ".join(f"{h.lower()}={cell(v)}" for h, v in zip(headers, row, strict=True)))
            for line in nodestatus.disk_problems(statuses):
                echo(line, err=True)
        if not any(nodestatus.is_reachable(s) for s in statuses):
            errors = [str(s.get("error", "")) for s in statuses]
            if all(_denied(s) for s in statuses):  # they answered: this client may not ask
                raise OperationFailed(errors[0])
            raise OperationFailed("no endpoint is reachable" + unreachable_hint(settings, errors))


def _denied(status: dict[str, Any]) -> bool:
    """A node that answered, refusing this client's status request (``--acl``): not an unreachable one."""
    return not nodestatus.is_reachable(status) and str(status.get("error", "")).startswith("permission denied")


# kv health notes a reachable node whose decided slot is this far behind the leader's (a thrifty follower
# trails by the slots of a tick or so; the statuses are also read at slightly different moments)
LAG_NOTE_SLOTS = 100


def _lagging(statuses: list[dict[str, Any]], leader: Any) -> dict[int, int]:
    """``{id(status): slots behind}`` for the reachable nodes LAG_NOTE_SLOTS or more behind the leader:
    in decided slots, or, for an eager learner, in applied slots (a follower with a slow disk learns
    decisions at once and applies late; a lazy learner's applies lag by design)."""
    leader_status = next((s for s in statuses if nodestatus.is_reachable(s) and leader is not None
                          and nodestatus.field(s, "ID") == leader), None)
    if leader_status is None:
        return {}
    behind = {}
    for s in statuses:
        if not nodestatus.is_reachable(s):
            continue
        lags = []
        for key in ("decided_slot", "applied_slot"):
            top, slot = leader_status.get(key), s.get(key)
            if type(top) is int and type(slot) is int and (key == "decided_slot" or s.get("learner") == "eager"):
                lags.append(top - slot)
        if lags and max(lags) >= LAG_NOTE_SLOTS:
            behind[id(s)] = max(lags)
    return behind


def _voters(answered: list[dict[str, Any]]) -> list[int] | None:
    """The voters of the newest configuration the reachable nodes report, None if none reports one."""
    newest: dict[str, Any] | None = None
    for s in answered:
        config = s.get("config")
        if isinstance(config, dict) and isinstance(config.get("voters"), list) and type(config.get("epoch")) is int:
            if newest is None or config["epoch"] > newest["epoch"]:
                newest = config
    return None if newest is None else [v for v in newest["voters"] if type(v) is int]


def _asked_ids(statuses: list[dict[str, Any]], answered: list[dict[str, Any]]) -> set[int]:
    """The ids of the nodes whose address is an endpoint that did not answer (by the configurations the
    others report): asked, not reachable, as opposed to not asked at all."""
    addresses: dict[str, int] = {}
    for s in answered:
        config = s.get("config")
        if isinstance(config, dict) and isinstance(config.get("addresses"), dict):
            for node, address in config["addresses"].items():
                if isinstance(address, str) and str(node).isdigit():
                    addresses[address] = int(node)
    return {addresses[str(s.get("endpoint"))] for s in statuses
            if not nodestatus.is_reachable(s) and str(s.get("endpoint")) in addresses}


def health(settings: Settings) -> None:
    """``kv health``: exit 0 if a quorum of the endpoints is reachable and a leader is known, else 1."""
    with reporting_errors(settings):
        endpoints = settings.endpoints()
        with open_oneshot_client(settings) as client:
            statuses = [dict(s) for s in client.cluster_status()]
        answered = [s for s in statuses if nodestatus.is_reachable(s)]
        clusters = sorted({str(s["cluster_id"]) for s in answered if s.get("cluster_id") is not None})
        if len(clusters) > 1:
            raise OperationFailed(f"the endpoints belong to {len(clusters)} different clusters (cluster ids "
                                  f"{', '.join(clusters)}): give the endpoints of one cluster (kv status shows "
                                  "each node's cluster_id)")
        # Nodes, not endpoints: two addresses of one node count once (QA: 127.0.0.1:7001 and localhost:7001);
        # two nodes of one id are two clusters (started by hand, both with the default cluster id: QA)
        incarnations: dict[Any, set[str]] = {}
        for s in answered:
            if s.get("incarnation"):
                incarnations.setdefault(s.get("id"), set()).add(str(s["incarnation"]))
        twice = sorted(str(i) for i, seen in incarnations.items() if len(seen) > 1)
        if twice:
            raise OperationFailed(f"two different nodes answer as node {', '.join(twice)} (their incarnations differ): "
                                  "the endpoints are not of one cluster (kv status shows each node's incarnation)")
        ids = [s.get("id") for s in answered]
        aliased = len(ids) - len(set(ids)) if None not in ids else 0
        reachable = len(answered) - aliased
        voters = _voters(answered)
        notes = []
        if voters is None:  # (no node said its configuration: older nodes) the endpoints are the members
            total = max(len(endpoints), len(statuses)) - aliased
            quorum = total // 2 + 1
        else:
            # The quorum is the configuration's, whatever the endpoints (QA: 3 endpoints of a cluster grown to
            # 5 voters said "3/3 reachable (quorum 2)"); a voter not among them is not reachable from here.
            total = len(voters)
            quorum = total // 2 + 1
            reachable = len({i for i in ids if i in voters})
            unasked = sorted(set(voters) - set(ids) - _asked_ids(statuses, answered))
            if unasked:
                notes.append(f"voter{'s' if len(unasked) > 1 else ''} {', '.join(map(str, unasked))} not among the "
                             "endpoints (kv member list has every address)")
        if aliased:
            verb = "s reach" if aliased > 1 else " reaches"
            notes.append(f"{aliased} endpoint{verb} a node another endpoint reaches")
        leader = nodestatus.confirmed_leader(statuses)
        healthy = reachable >= quorum and leader is not None
        lagging = _lagging(statuses, leader)
        if settings.write_out is OutputFormat.json:
            print_json(
                {
                    "healthy": healthy,
                    "reachable": reachable,
                    "endpoints": len(endpoints),  # (given; the quorum is of the voters when they are known)
                    "quorum": quorum,
                    "voters": voters,
                    "leader": jsonable(leader),
                    "nodes": jsonable(statuses),
                }
            )
        elif settings.write_out is OutputFormat.table:
            rows = [
                [nodestatus.field(s, "ADDRESS"), nodestatus.is_reachable(s), nodestatus.field(s, "LEADER")]
                for s in statuses
            ]
            print_table(["ADDRESS", "REACHABLE", "LEADER"], rows)
        else:
            for s in statuses:
                state = ("reachable" if nodestatus.is_reachable(s) else
                         f"answered, refusing this client: {s.get('error')}" if _denied(s) else "unreachable")
                if nodestatus.is_reachable(s) and s.get("disk") not in (None, "ok"):
                    state += f", disk {s.get('disk')}"  # serves reads only, votes for nothing
                if id(s) in lagging:
                    state += f", {lagging[id(s)]} slots behind the leader"
                echo(f"{nodestatus.field(s, 'ADDRESS') or '?'}: {state}")
        summary = (f"{reachable}/{total} reachable (quorum {quorum}), "
                   f"leader {leader if leader is not None else 'unknown'}")
        for note in notes:
            summary += f"; {note}"
        if lagging:
            # Healthy by its definition, but a node that far behind is slow (its disk, its CPU) or cut off
            # from the leader, and one more failure may leave a majority that waits for it (QA: a node
            # with a slow disk 5,000 slots behind, and kv health said nothing).
            summary += f"; {len(lagging)} of them {LAG_NOTE_SLOTS}+ slots behind the leader"
        fenced = sum(1 for s in statuses if nodestatus.is_reachable(s) and s.get("disk") not in (None, "ok"))
        if fenced:
            # Reachable, so counted above, but a node whose disk is not ok votes for nothing: one more
            # failure may cost the quorum.
            summary += f"; {fenced} of them with a disk not ok (kv status)"
        if not healthy and any(_denied(s) for s in statuses):
            raise OperationFailed(f"cannot tell whether the cluster is healthy: {summary}; this client may not "
                                  "ask for status (docs/security.md, access rules)")
        if not healthy:
            raise OperationFailed(f"cluster is unhealthy: {summary}")
        if settings.write_out is not OutputFormat.json:  # (json has the same facts as fields)
            echo(f"cluster is healthy: {summary}")  # under the table too: the table has no leader or quorum
