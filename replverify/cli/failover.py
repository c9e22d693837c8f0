"""The failover toolkit's server commands: ``gate`` (a planned switch loses nothing),
``failback`` (what the old primary holds that the new one lacks) and ``health``."""

from __future__ import annotations

import sys

import click

from replverify import api
from replverify.cli.console import emit, emit_report, fail, run_async
from replverify.cli.options import check_writable, output_options, scale_options, scale_settings
from replverify.errors import EXIT_DIFFERENT, EXIT_OK, EXIT_TROUBLE, OutputError


@click.command()
@click.argument("source")
@click.argument("target")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="S",
    help="Seconds to wait for the target to replay everything the source has written.",
)
@click.option(
    "--fence",
    is_flag=True,
    help="First stop the source taking writes: ALTER SYSTEM SET "
    "default_transaction_read_only = on + pg_reload_conf() (the one write gate makes; "
    "undo with ALTER SYSTEM RESET default_transaction_read_only).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr while waiting (default: when stderr is a terminal).",
)
@scale_options
@output_options
@click.pass_context
def gate(
    ctx: click.Context,
    source: str,
    target: str,
    timeout: float,
    fence: bool,
    progress: bool | None,
    executor: str,
    max_connections: int | None,
    max_load: int | None,
    max_lag: float | None,
    chunk_time: float,
    fmt: str,
    output: str | None,
) -> None:
    """Planned failover: wait until TARGET has replayed all of SOURCE, then verify.

    TARGET must be a physical standby of SOURCE. Exit 0 only when a switch now loses
    nothing (caught up and identical), 1 when not caught up within --timeout or
    different, 2 on trouble.
    """
    from replverify.ops.gate import gate as run_gate
    from replverify.reports.formats import GATE_RENDERERS

    show = sys.stderr.isatty() if progress is None else progress

    def tick(lag_bytes: int, waited: float) -> None:
        if show:
            click.echo(
                f"\r\033[Kwaiting for replay: {lag_bytes:,} bytes behind, {waited:.1f} s",
                err=True,
                nl=False,
            )

    try:
        scale = scale_settings(ctx, executor, max_connections, max_load, max_lag, chunk_time)
        options = api.DiffOptions(**scale)
        report = run_async(
            run_gate(source, target, timeout=timeout, fence=fence, progress=tick, options=options)
        )
    finally:
        if show:
            click.echo("\r\033[K", err=True, nl=False)
    emit_report(GATE_RENDERERS, fmt, report, output)
    if not report.complete:
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_OK if report.status == "safe" else EXIT_DIFFERENT)


@click.command()
@click.argument("old")
@click.argument("new")
@click.option(
    "-t",
    "--table",
    "tables",
    multiple=True,
    metavar="TABLE",
    help="Only these tables (as diff -t); repeatable.",
)
@click.option(
    "--replay-sql",
    type=click.Path(dir_okay=False),
    callback=check_writable,
    metavar="FILE",
    help="Write a guarded one-transaction script that brings the old primary's own "
    "changes to NEW (INSERT ... ON CONFLICT DO NOTHING, UPDATE/DELETE ... WHERE the row "
    "is still what was observed; keyless rows by their number of copies). It covers "
    "every old-only row, whatever --max-diffs lists.",
)
@click.option(
    "--max-diffs",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Rows listed per table; every row is still attributed, counted and replayed.",
)
@click.option(
    "--allow-same-server",
    is_flag=True,
    help="Compare even when OLD and NEW reach one database of one server; otherwise "
    "that is refused (exit 2).",
)
@output_options
def failback(
    old: str,
    new: str,
    tables: tuple[str, ...],
    replay_sql: str | None,
    max_diffs: int,
    allow_same_server: bool,
    fmt: str,
    output: str | None,
) -> None:
    """What the old primary OLD holds that the new primary NEW lacks (before a rewind).

    Rows changed on OLD after the divergence are told apart from writes made on NEW
    after its promotion by the xid horizon of NEW's promotion (read from NEW's WAL: needs
    superuser or pg_read_server_files on NEW), checked against commit timestamps when
    track_commit_timestamp is on. Exit 0 when OLD holds nothing NEW lacks, 1 when it
    does (or who wrote a row cannot be told), 2 on trouble.
    """
    from replverify.db.connect import Endpoint
    from replverify.ops.failback import ReplayFile
    from replverify.ops.failback import failback as run_failback
    from replverify.reports.formats import FAILBACK_RENDERERS

    options = api.DiffOptions(
        tables=tables, max_diffs=max_diffs, allow_same_server=allow_same_server
    )
    failure: OutputError | None = None
    if replay_sql:
        # streamed to the file as rows are attributed (check_writable vetted the path)
        try:
            handle = open(replay_sql, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            msg = f"cannot write the replay script to {replay_sql}: {e.strerror}"
            raise OutputError(msg) from None
        replay = ReplayFile(handle, str(Endpoint.parse(old)), str(Endpoint.parse(new)))
        try:
            report = run_async(run_failback(old, new, options=options, replay=replay))
            replay.close()
        finally:
            error = replay.error
            try:
                handle.close()
            except OSError as e:  # the last buffered write (a full disk)
                error = error or e
        if error is not None:
            failure = OutputError(
                f"cannot write the replay script to {replay_sql}: {error.strerror}"
            )
    else:
        report = run_async(run_failback(old, new, options=options))
    emit(
        FAILBACK_RENDERERS[fmt](report),
        output,
        lambda marks: FAILBACK_RENDERERS.marked(report, marks),
    )
    if failure is not None:
        fail(failure)
    if not report.complete:
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_OK if report.status == "nothing_to_recover" else EXIT_DIFFERENT)


@click.command()
@click.argument("source")
@click.argument("target")
@click.option(
    "--rpo",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Recovery point objective: a lag above it is a failure.",
)
@output_options
def health(source: str, target: str, rpo: float | None, fmt: str, output: str | None) -> None:
    """Signs of a problem with SOURCE (primary) and TARGET (standby), one line each.

    Reachability, recovery state, WAL receiver, replication slot, replay, lag (against
    --rpo) and timelines. Exit 0 all ok, 1 a problem found, 2 could not check.
    """
    from replverify.ops.health import health as run_health
    from replverify.reports.formats import HEALTH_RENDERERS

    report = run_async(run_health(source, target, rpo=rpo))
    emit_report(HEALTH_RENDERERS, fmt, report, output)
    if report.status == "unknown":
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_OK if report.status == "ok" else EXIT_DIFFERENT)
