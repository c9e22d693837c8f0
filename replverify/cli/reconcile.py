"""``replverify reconcile``: judge a write journal against the surviving database, and
write the replay script of the lost writes."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from replverify.cli.console import emit, fail, run_async, write_file
from replverify.cli.options import check_writable, output_options
from replverify.errors import EXIT_DIFFERENT, EXIT_OK, OutputError, ReplverifyError
from replverify.reports.formatting import Marks


@click.command()
@click.option(
    "--journal",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="The application's write journal (JSON Lines, see docs/journal.md).",
)
@click.option(
    "--target",
    required=True,
    metavar="DSN",
    help="The surviving database (the new primary) to check the writes against.",
)
@click.option(
    "--source",
    metavar="DSN",
    help="The old primary, when reachable: reported rows show what it holds, and the "
    "replay script takes its row images from there.",
)
@click.option(
    "--since",
    metavar="TS",
    help="Consider only writes journaled at or after this ISO 8601 timestamp "
    "(no offset: UTC), e.g. shortly before the failover.",
)
@click.option(
    "--replay-sql",
    type=click.Path(dir_okay=False),
    callback=check_writable,
    metavar="FILE",
    help="Write a script that restores the lost writes: one transaction, every statement "
    "guarded so it cannot overwrite newer data.",
)
@output_options
def reconcile(
    journal: str,
    target: str,
    source: str | None,
    since: str | None,
    replay_sql: str | None,
    fmt: str,
    output: str | None,
) -> None:
    """Name exactly the journaled writes a failover lost.

    Every write of the journal is judged against TARGET: durable, lost, superseded (a
    later write to the row is judged), conflicting (the row holds something else) or in
    doubt (never settled; reported as applied or not). Exit 0 when nothing was lost, 1
    when writes were lost or conflict, 2 when something could not be checked.
    """
    from replverify.reconcile.replay import replay_script
    from replverify.reconcile.run import parse_since
    from replverify.reconcile.run import reconcile as run_reconcile
    from replverify.reports.formats import RECONCILE_RENDERERS

    try:
        since_ts = parse_since(since) if since else None
    except ReplverifyError as e:
        raise click.BadParameter(e.message, param_hint="--since") from None
    report = run_async(run_reconcile(journal, target, source_dsn=source, since=since_ts))
    write_script_then_emit(
        replay_sql,
        lambda: replay_script(report),
        RECONCILE_RENDERERS[fmt](report),
        output,
        lambda marks: RECONCILE_RENDERERS.marked(report, marks),
    )
    sys.exit(EXIT_DIFFERENT if report.status == "loss" else EXIT_OK)


def write_script_then_emit(
    script_path: str | None,
    script: Callable[[], str],
    report: str,
    output: str | None,
    marked: Callable[[Marks], str] | None = None,
) -> None:
    """Write the replay script to ``script_path`` (if given), then the report; when the
    script cannot be written the report still is, and then the script's error ends the
    run (exit 2)."""
    failure: OutputError | None = None
    if script_path:
        try:
            write_file(script_path, script(), "the replay script")
        except OutputError as e:
            failure = e
    emit(report, output, marked)
    if failure is not None:
        fail(failure)
