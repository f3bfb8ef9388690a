"""``kv member list|add|promote|remove`` and ``kv move-leader``: membership through the log
(paxos.membership, kvstore.members), in etcdctl's habits. Every command goes to the leader; a refusal
is one line on stderr and exit 1, with nothing changed."""
from __future__ import annotations

import shlex
from typing import Annotated, Any

import typer

from .common import Settings, UsageProblem, open_client, reporting_errors
from .output import OutputFormat, cell, echo, jsonable, print_json, print_table

member_app = typer.Typer(
    help="List and change the cluster's members: add a learner, promote it to voter, remove a member.\n\n"
    "Example: kv member add 4 127.0.0.1:7004; kv serve --id 4 --join 127.0.0.1:7001 --data-dir DIR; "
    "kv member promote 4; kv member list",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


# How long a member may take to answer for its own status in kv member list (a live one answers in
# milliseconds): a paused one made the list take the whole --command-timeout (QA)
MEMBER_STATUS_SECONDS = 1.0


def _reachability(client: Any, members: list[dict[str, Any]], timeout: float) -> None:
    """Ask each member for its own status (reachable, decided and applied slot), as etcdctl's endpoint
    status does. A member that answers shows its own decided slot beside its applied one, from the same
    answer: the leader's figure is the one the member last reported to it, up to a heartbeat older, and
    showed APPLIED above DECIDED now and then (QA). One that does not answer keeps the leader's."""
    def ask(member: dict[str, Any]) -> None:
        member["reachable"] = False
        member["applied_slot"] = None
        address = member.get("address")
        if not address:
            return
        try:
            status = client.status(address, timeout=timeout)
        except Exception:  # noqa: BLE001 -- unreachable is an answer here
            return
        if status.get("id") not in (None, member["id"]):
            return  # another node answers at its address (a removed one, started again: QA), not this one
        member["reachable"] = True
        member["applied_slot"] = status.get("applied_slot")
        if status.get("decided_slot") is not None:
            member["decided_slot"] = status.get("decided_slot")

    # All at once, each in a thread (the blocking client keeps a connection per thread): one after another,
    # a member that does not answer cost the whole --command-timeout each (QA: 7.4 s for one paused member).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(members)))) as pool:
        list(pool.map(ask, members))


def fault_tolerance_warning(result: dict[str, Any]) -> str | None:
    """A line for stderr when the new configuration tolerates fewer failed voters than an operator may
    think: 2 voters (a majority is both: the cluster stops if either is lost), or an even number (no
    more failures tolerated than with one voter fewer). None otherwise."""
    voters = sum(1 for m in result.get("members", ()) if m.get("role") == "voter")
    if voters == 2:
        return ("warning: 2 voters now: a majority is both of them, so the cluster stops if either is lost; "
                "add and promote another member (docs/operations.md, Membership)")
    if voters >= 4 and voters % 2 == 0:
        return (f"note: {voters} voters tolerate {(voters - 1) // 2} failed voter(s), as {voters - 1} would; "
                "an odd number of voters is the usual choice")
    return None


def show_members(settings: Settings, result: dict[str, Any], client: Any = None) -> None:
    members = [dict(m) for m in result["members"]]
    if client is not None:
        _reachability(client, members, min(settings.command_timeout, MEMBER_STATUS_SECONDS))
    if settings.write_out is OutputFormat.json:
        print_json(jsonable({**result, "members": members}))
        return
    headers = ["ID", "ADDRESS", "ROLE", "INCARNATION", "LEADER", "REACHABLE", "DECIDED", "APPLIED"]
    rows = [[m["id"], m.get("address"), m["role"], m.get("incarnation"), m.get("leader"), m.get("reachable"),
             m.get("decided_slot"), m.get("applied_slot")] for m in members]
    if client is None:  # (after a change: the leader's answer alone, nobody asked who is reachable)
        keep = [i for i, h in enumerate(headers) if h not in ("REACHABLE", "APPLIED")]
        headers = [headers[i] for i in keep]
        rows = [[row[i] for i in keep] for row in rows]
    if settings.write_out is OutputFormat.table:
        print_table(headers, rows)
    else:
        for row in rows:
            echo(", ".join(f"{h.lower()}={cell(v)}" for h, v in zip(headers, row, strict=True)))
    if result.get("change_in_progress"):
        echo(f"configuration epoch {result['epoch']} takes effect at slot {result.get('effective_slot')}",
                   err=True)


@member_app.command("list", epilog="Example: kv member list;  kv -w table member list")
def list_command(ctx: typer.Context) -> None:
    """Every member: id, address, role (voter or learner), incarnation, leader, reachable, decided/applied."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        with open_client(settings) as client:
            result = client.admin("member_list")
            show_members(settings, result, client)


@member_app.command("add", epilog="Example: kv member add 4 127.0.0.1:7004, then on that host: "
                                  "kv serve --id 4 --join 127.0.0.1:7001 --data-dir DIR")
def add_command(ctx: typer.Context,
                node_id: Annotated[int, typer.Argument(help="The new member's id (never used before).", min=1)],
                address: Annotated[str, typer.Argument(help="HOST:PORT it will serve on.")]) -> None:
    """Add a learner: it receives the log and snapshots and counts toward no quorum. Start it with
    kv serve --join, then kv member promote it once it caught up."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        from kvstore.endpoints import EndpointError, parse_endpoint

        try:
            parse_endpoint(address)
        except EndpointError as exc:
            raise UsageProblem(f"invalid address {address!r}: {exc}") from None
        with open_client(settings) as client:
            result = client.admin("member_add", node_id, address)
        cluster_id = result.get("cluster_id")
        cluster_flag = f" --cluster-id {shlex.quote(cluster_id)}" if cluster_id and cluster_id != "kv" else ""
        echo(f"added node {node_id} ({address}) as a learner; start it with: "
                   f"kv serve --id {node_id} --join <member HOST:PORT>{cluster_flag} --data-dir <empty dir>", err=True)
        show_members(settings, result)


@member_app.command("promote", epilog="Example: kv member promote 4")
def promote_command(ctx: typer.Context,
                    node_id: Annotated[int, typer.Argument(help="A learner that caught up.", min=1)]) -> None:
    """Make a caught-up learner a voter (refused while it lags, saying how far behind it is)."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        with open_client(settings) as client:
            result = client.admin("member_promote", node_id)
        echo(f"promoted node {node_id} to voter", err=True)
        show_members(settings, result)
        warning = fault_tolerance_warning(result)
        if warning:
            echo(warning, err=True)


@member_app.command("remove", epilog="Example: kv member remove 2")
def remove_command(ctx: typer.Context,
                   node_id: Annotated[int, typer.Argument(help="The member to remove.", min=1)]) -> None:
    """Remove a member (the leader hands over first; the last voter cannot be removed). Stop its process
    afterwards: it no longer counts and nobody talks to it."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        with open_client(settings) as client:
            result = client.admin("member_remove", node_id)
        echo(f"removed node {node_id}; stop its process now if it still runs", err=True)
        show_members(settings, result)
        warning = fault_tolerance_warning(result)
        if warning:
            echo(warning, err=True)


def move_leader_command(
    ctx: typer.Context,
    node_id: Annotated[int, typer.Argument(help="The voter to hand leadership to.", min=1)],
) -> None:
    """Hand leadership to another voter: it catches up, then campaigns; writes pause for at most an
    election timeout."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        with open_client(settings) as client:
            result = client.admin("move_leader", node_id)
        if settings.write_out is OutputFormat.json:  # (QA: -w json printed nothing on stdout)
            print_json(jsonable({"ok": True, **result}))
        elif settings.write_out is OutputFormat.table:
            print_table(["LEADER"], [[cell(result.get("leader"))]])
        echo(f"node {result.get('leader')} leads now", err=True)
