"""``replverify files``: compare attachment and blob copies (directories or object
stores), with the geo-secondary's RPO of an Azure account."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from replverify.cli.console import emit_report, fail
from replverify.cli.options import output_options
from replverify.cli.progress import FilesProgress
from replverify.errors import EXIT_DIFFERENT, EXIT_OK, EXIT_TROUBLE

if TYPE_CHECKING:
    from replverify.ops.files import RpoCheck


@click.command()
@click.argument("dir_a", metavar="SOURCE")
@click.argument("dir_b", metavar="TARGET")
@click.option(
    "--rpo",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Also judge the geo-secondary of an az:// account: its last sync time (Get Blob "
    "Service Stats) must be at most SECONDS old. Exit 1 when older, 2 when the account "
    "cannot tell (not read-access geo-redundant).",
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Record which objects' content was read and found equal; run again with the same "
    "FILE to resume an interrupted run without reading them again.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr (default: when stderr is a terminal).",
)
@output_options
def files(
    dir_a: str,
    dir_b: str,
    rpo: float | None,
    state: str | None,
    progress: bool | None,
    fmt: str,
    output: str | None,
) -> None:
    """Compare attachment / blob copies: missing, extra, changed objects.

    SOURCE and TARGET: a directory, file:///DIR, az://CONTAINER[/PREFIX],
    s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX] (credentials from each store's standard
    environment: AZURE_STORAGE_CONNECTION_STRING, AWS_*, ...; object stores need
    pip install 'replverify[blob]'). Objects are settled from the listings when the sizes
    differ or both sides list a Content-MD5, otherwise their content is read and hashed
    (xxh3-128); the report says which. Two directories are compared as trees (symlinks by
    target, directories as such). Exit 0 identical, 1 different or RPO exceeded, 2 when
    something could not be checked.
    """
    source, target = dir_a, dir_b  # (the parameter names are the profile keys of old)
    from replverify.errors import UsageError
    from replverify.ops.files import HashLedger, compare_objects, compare_trees
    from replverify.ops.objstore import StoreError, is_local, local_path, open_store
    from replverify.reports.formats import FILES_RENDERERS

    show = sys.stderr.isatty() if progress is None else progress
    bar = FilesProgress(show)
    ledger: HashLedger | None = None
    try:
        if rpo is not None:
            rpo_check = _files_rpo(source, target, rpo)
        if state is not None:
            ledger = HashLedger(state, source, target)
        if is_local(source) and is_local(target):
            report = compare_trees(
                local_path(source), local_path(target), progress=bar.path, ledger=ledger
            )
        else:
            report = compare_objects(
                open_store(source), open_store(target), progress=bar, ledger=ledger
            )
    except (UsageError, StoreError) as e:
        bar.close()
        fail(e)
    finally:
        if ledger is not None:
            ledger.close()
    bar.close()
    if rpo is not None:
        report.rpo = rpo_check
    emit_report(FILES_RENDERERS, fmt, report, output)
    if not report.complete:
        sys.exit(EXIT_TROUBLE)
    if report.status != "identical" or report.within_rpo is False:
        sys.exit(EXIT_DIFFERENT)
    sys.exit(EXIT_OK)


def _files_rpo(source: str, target: str, rpo: float) -> RpoCheck:
    """Get Blob Service Stats of the az:// account among SOURCE and TARGET."""
    import datetime as dt

    from replverify.errors import UsageError
    from replverify.ops.files import RpoCheck
    from replverify.ops.objstore import AzureStore, StoreError, open_store

    for location in (source, target):
        if location.startswith(("az://", "abfs://", "azure://")):
            store = open_store(location)
            assert isinstance(store, AzureStore)
            now = dt.datetime.now(dt.timezone.utc)
            try:
                stats = store.geo_stats()
            except StoreError as e:
                return RpoCheck(rpo, now, note=f"cannot tell: {e.message}")
            note = ""
            if stats.emulator:
                note = (
                    "the storage emulator (Azurite) answers every request with status live "
                    "and the request's own time as last sync: it cannot tell a real RPO"
                )
            elif stats.status != "live":
                note = f"the secondary is {stats.status}: its last sync time does not bound loss"
            return RpoCheck(rpo, now, stats.status, stats.last_sync, note)
    raise UsageError(
        "--rpo needs an az:// location: only an Azure read-access geo-redundant account "
        "reports its secondary's last sync time; local directories, S3 and GCS cannot tell"
    )
