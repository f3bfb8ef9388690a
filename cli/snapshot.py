"""``kv snapshot save|status|restore``: backups of the whole store and new clusters made from them,
in the habits of ``etcdctl snapshot save`` and ``etcdutl snapshot status|restore`` (kvstore.backup).

``save`` asks the leader for a consistent backup (after a read barrier: every write acknowledged
before it began is in it) and writes it, checksummed, to FILE. ``status`` checks a backup file and
describes it. ``restore`` makes the data directory of one node of a NEW cluster from a backup: run it
for every node of ``--peers``, then start every node with the ``kv serve`` line it prints. A damaged
file or a refused target is one line on stderr and exit 1, with nothing made.
"""
from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import (
    EXIT_INTERRUPTED,
    OperationFailed,
    Settings,
    UsageProblem,
    error_line,
    open_client,
    output_file_problem,
    reporting_errors,
)
from .output import OutputFormat, echo, jsonable, print_json, print_table

snapshot_app = typer.Typer(
    help="Back up the store to a file (save), check a backup (status), make a new cluster from one (restore).\n\n"
    "Example: kv snapshot save backup.kvbak; kv snapshot status backup.kvbak; kv snapshot restore backup.kvbak "
    "--id 1 --peers 1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003 --data-dir DIR",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


def _show(settings: Settings, facts: dict[str, Any], headline: str) -> None:
    if settings.write_out is OutputFormat.json:
        print_json(jsonable(facts))
    elif settings.write_out is OutputFormat.table:
        print_table(list(map(str.upper, facts)), [list(facts.values())])
    else:
        echo(headline)


@snapshot_app.command("save", epilog="Example: kv snapshot save /backups/kv-$(date +%F).kvbak")
def save_command(ctx: typer.Context,
                 file: Annotated[str, typer.Argument(help="Where to write the backup (replaced atomically if "
                                                          "it exists).")]) -> None:
    """Write a consistent, checksummed backup of the whole store, taken on the leader."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        problem = output_file_problem(file)
        if problem is not None:  # before the leader does any work (a directory failed at the rename, after it)
            raise UsageProblem(problem)  # (exit 2, as kv dump: nothing was attempted)
        from kvstore.backup import BackupError, save_backup

        with open_client(settings) as client:
            try:
                info = save_backup(client.backup, file)
            except BackupError as exc:
                raise _failed(exc) from None
            except KeyboardInterrupt:  # (save_backup removed what it had written: FILE.part)
                error_line(f"interrupted: no backup written to {file}")
                raise typer.Exit(EXIT_INTERRUPTED) from None
        facts = info.describe()
        _show(settings, facts, f"Snapshot saved at {file}: cluster {facts['cluster_id']}, slot {facts['slot']}, "
                               f"revision {facts['revision']}, {facts['keys']} keys, {facts['bytes']} bytes, "
                               f"sha256 {facts['sha256']}")


@snapshot_app.command("status", epilog="Example: kv -w table snapshot status backup.kvbak")
def status_command(ctx: typer.Context,
                   file: Annotated[str, typer.Argument(help="A file written by kv snapshot save.")]) -> None:
    """Check a backup file (header, length, SHA-256) and describe it: slot, revision, keys, state hash."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        from kvstore.backup import BackupError, read_backup

        try:
            facts = read_backup(file).describe()
        except BackupError as exc:
            raise _failed(exc) from None
        _show(settings, facts, ", ".join(f"{k}={v}" for k, v in facts.items()))


@snapshot_app.command(
    "restore",
    epilog="Example (for each node i of the new cluster): kv snapshot restore backup.kvbak --id 1 "
           "--peers 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001 --data-dir /var/lib/kv/node-1",
)
def restore_command(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="A file written by kv snapshot save.")],
    data_dir: Annotated[str, typer.Option("--data-dir", help="The new node's data directory (absent or empty).")],
    node_id: Annotated[int, typer.Option("--id", help="The new node's id, a key of --peers.", min=1)],
    peers: Annotated[str, typer.Option("--peers", help="Every member of the new cluster: ID=HOST:PORT,...; "
                                                       "give the same list to every node's restore.")],
    cluster_id: Annotated[str | None, typer.Option(
        "--cluster-id", help="The new cluster's id. Default: derived from the backup and --peers (the same "
                             "for every node restored alike), never the old cluster's.")] = None,
) -> None:
    """Make the data directory of node ID of a NEW cluster from a backup: a new cluster id, a new
    incarnation, the state at the backup's slot, and --peers as the configuration. Restore every node
    of --peers, then start them all; they found the new cluster together."""
    settings = _settings(ctx)
    with reporting_errors(settings):
        from kvstore.backup import BackupError, restore_backup
        from kvstore.endpoints import EndpointError, parse_peers

        try:
            peer_map = parse_peers(peers)
        except EndpointError as exc:
            raise UsageProblem(f"invalid --peers {peers!r}: {exc}") from None
        if node_id not in peer_map:
            raise UsageProblem(f"--id {node_id} is not one of the --peers ids {sorted(peer_map)}")
        if cluster_id is not None and not cluster_id.strip():
            raise UsageProblem("--cluster-id must not be empty")
        try:
            made = restore_backup(file, data_dir, node_id, peer_map, cluster_id)
        except BackupError as exc:
            raise _failed(exc) from None
        _show(settings, made, f"restored node {node_id} into {data_dir} from {file}: cluster {made['cluster_id']} "
                              f"(was {made['old_cluster_id']}), incarnation {made['incarnation']}, slot "
                              f"{made['slot']}, {made['keys']} keys")
        if settings.write_out is OutputFormat.simple:
            echo(f"start it with: {made['serve']}")
            echo("restore every node of --peers from the same backup, then start them all: they found "
                       "the new cluster together", err=True)


def _failed(exc: Exception) -> Exception:
    return OperationFailed(str(exc))
