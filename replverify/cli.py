"""The ``replverify`` command: parse options, call the API, render, exit.

Exit codes (as diff(1)): 0 verified, 1 differences, 2 trouble. They are decided here and
nowhere else, from the report or from the :class:`~replverify.errors.ReplverifyError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__, api
from .errors import EXIT_DIFFERENT, EXIT_OK, EXIT_TROUBLE, ReplverifyError
from .lag import LagReport, LagSample, measure_lag
from .report import DIFF_RENDERERS, LAG_RENDERERS, lag_sample_line
from .types import DiffReport, TableRef

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

FORMATS = click.Choice(["text", "json", "markdown"])


def output_options(f: F) -> F:
    f = click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, writable=True),
        help="Write the report to FILE instead of standard output.",
    )(f)
    f = click.option(
        "--format", "fmt", type=FORMATS, default="text", show_default=True, help="Report format."
    )(f)
    return f


def emit(text: str, output: str | None) -> None:
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise click.FileError(output, hint=e.strerror) from None
    else:
        click.echo(text, nl=False)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; turn our errors into a message and exit code 2 (never a traceback)."""
    try:
        return asyncio.run(coro)
    except ReplverifyError as e:
        click.echo(f"replverify: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("replverify: interrupted", err=True)
        sys.exit(130)


class ProgressLine:
    """``rows done, rate, ETA`` on stderr, redrawn in place; silent when not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.done: dict[TableRef, tuple[int, int]] = {}
        self.last = 0.0

    def __call__(self, table: TableRef, done: int, estimate: int) -> None:
        if not self.enabled:
            return
        self.done[table] = (done, estimate)
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        rows = sum(d for d, _ in self.done.values())
        total = sum(e for _, e in self.done.values())
        rate = rows / max(now - self.started, 1e-6)
        eta = f", ETA {max(total - rows, 0) / rate:.0f} s" if rate > 0 and total > rows else ""
        click.echo(f"\r\033[K{table}  {rows:,} rows  {rate:,.0f} rows/s{eta}", err=True, nl=False)

    def close(self) -> None:
        if self.enabled and self.done:
            click.echo("\r\033[K", err=True, nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="replverify")
def main() -> None:
    """Verify PostgreSQL replication and find exactly the data a failover lost.

    DSNs are libpq URLs (postgresql://user@host:port/db) or key=value strings; the
    standard PG* environment variables apply. Passwords never appear in output.

    Exit codes: 0 verified, 1 differences found, 2 trouble (bad arguments, unreachable
    server, something that could not be checked).
    """


def _split_cols(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    cols = tuple(c.strip() for c in value.split(","))
    if any(not c for c in cols):
        raise click.BadParameter("give column names separated by commas, e.g. --key a,b")
    return cols


@main.command()
@click.argument("source")
@click.argument("target")
@click.option(
    "-t",
    "--table",
    "tables",
    multiple=True,
    metavar="TABLE",
    help="schema.table or table (schema public); globs allowed; repeatable. "
    "Default: every ordinary user table.",
)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip matching tables; repeatable.")
@click.option(
    "--where",
    metavar="SQL",
    help="Compare only rows matching this boolean condition (on both sides).",
)
@click.option(
    "--key",
    callback=_split_cols,
    metavar="COLS",
    help="Key columns (comma-separated) for tables without a primary key; "
    "otherwise such tables are compared as row multisets.",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Rows per chunk (key range) hashed and compared at once.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Chunks read at once per side (connections per side).",
)
@click.option(
    "--max-diffs",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Differences kept per table (all are counted).",
)
@click.option(
    "--digest",
    type=click.Choice(["auto", "copy", "server", "client"]),
    default="auto",
    show_default=True,
    help="How equal chunks are recognised: copy = xxh3 of each chunk's binary COPY here "
    "(fastest, the table crosses the network); server = row-text hashes summed in the "
    "database (little transfer: use over slow links); client = canonical hashes of decoded "
    "values (exact across major versions, slowest). auto = copy, or client when the "
    "major versions differ.",
)
@click.option(
    "--fence/--no-fence",
    default=None,
    help="When TARGET is a streaming standby of SOURCE (detected), each target read waits "
    "until the standby has replayed what the source read saw, and rows that differ are "
    "read again before they count; rows still being written are reported as unstable. "
    "Default: on for a standby.",
)
@click.option(
    "--lag-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a fenced read may wait for the standby to replay.",
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Record verified chunks in FILE; run again with the same FILE to resume an "
    "interrupted diff where it stopped (same verdict as an uninterrupted run).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr (default: when stderr is a terminal).",
)
@output_options
def diff(
    source: str,
    target: str,
    tables: tuple[str, ...],
    exclude: tuple[str, ...],
    where: str | None,
    key: tuple[str, ...],
    chunk_rows: int,
    jobs: int,
    max_diffs: int,
    digest: api.DigestChoice,
    fence: bool | None,
    lag_timeout: float,
    state: str | None,
    progress: bool | None,
    fmt: str,
    output: str | None,
) -> None:
    """Compare tables of SOURCE (primary) and TARGET (secondary) row by row.

    Rows are hashed in key-ordered chunks; mismatching chunks are narrowed to the exact
    rows: missing (in source only), extra (in target only) and changed (with the columns
    that differ). Exit 0 when identical, 1 when different, 2 when something could not be
    checked.
    """
    options = api.DiffOptions(
        tables=tables,
        exclude=exclude,
        where=where,
        key=key,
        chunk_rows=chunk_rows,
        jobs=jobs,
        max_diffs=max_diffs,
        digest=digest,
        fence=fence,
        lag_timeout=lag_timeout,
        state=state,
    )
    show = sys.stderr.isatty() if progress is None else progress
    bar = ProgressLine(show)
    try:
        report = run_async(api.diff(source, target, options, progress=bar))
    finally:
        bar.close()
    emit(DIFF_RENDERERS[fmt](report), output)
    sys.exit(diff_exit_code(report))


def diff_exit_code(report: DiffReport) -> int:
    if not report.complete:
        return EXIT_TROUBLE
    return EXIT_OK if report.status == "consistent" else EXIT_DIFFERENT


@main.command()
@click.option("--keep", is_flag=True, help="Leave the clusters running and print their DSNs.")
@click.option(
    "--rows",
    type=click.IntRange(min=100),
    default=20_000,
    show_default=True,
    help="Rows of sample data.",
)
def demo(keep: bool, rows: int) -> None:
    """Start a local primary + standby, fail over with real loss, and show the reports.

    Needs the PostgreSQL 15 server binaries (pg_config --bindir). Everything runs in a
    temporary directory on loopback ports and is removed afterwards (unless --keep).
    """
    from .demo import run_demo

    sys.exit(run_async(run_demo(rows=rows, keep=keep, echo=click.echo)))


@main.command()
@click.argument("source")
@click.argument("target")
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=None,
    help="Samples to take.  [default: 5; with --watch: until Ctrl-C]",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="S",
    help="Seconds between samples (the source's WAL position is polled 5 times as often).",
)
@click.option(
    "--rpo",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Recovery point objective: exit 1 when the lag ever exceeds it, 0 when within.",
)
@click.option(
    "--heartbeat",
    is_flag=True,
    help="For targets that are not physical standbys (e.g. logical replication): write a "
    "timestamp row into replverify.heartbeat on the source (created if missing; the one "
    "write replverify makes) and read it on the target.",
)
@click.option(
    "--watch", is_flag=True, help="Sample until Ctrl-C, one line per sample, then the summary."
)
@output_options
def lag(
    source: str,
    target: str,
    samples: int | None,
    interval: float,
    rpo: float | None,
    heartbeat: bool,
    watch: bool,
    fmt: str,
    output: str | None,
) -> None:
    """Measure how far TARGET is behind SOURCE: WAL bytes and seconds, over time.

    Bytes are the distance between the source's current WAL position and the target's
    replay position; seconds are the age of the oldest change the target has not
    replayed (0 on a caught-up pair, however long ago the last commit was). The target
    must be a physical standby of the source, or use --heartbeat. Exit 0 when within
    --rpo (or no --rpo), 1 when it was exceeded, 2 when lag could not be measured.
    """
    count = samples if samples is not None else (None if watch else 5)
    on_sample = None
    if watch:
        to_stderr = fmt != "text" or output is not None

        def on_sample(sample: LagSample) -> None:
            click.echo(lag_sample_line(sample), err=to_stderr)

    report = run_async(
        _lag_until_interrupt(
            source, target, count, interval, rpo, heartbeat, on_sample, stop_on_sigint=watch
        )
    )
    emit(LAG_RENDERERS[fmt](report), output)
    sys.exit(lag_exit_code(report))


async def _lag_until_interrupt(
    source: str,
    target: str,
    samples: int | None,
    interval: float,
    rpo: float | None,
    heartbeat: bool,
    on_sample: Callable[[LagSample], None] | None,
    *,
    stop_on_sigint: bool,
) -> LagReport:
    """``measure_lag``; with ``stop_on_sigint`` a first Ctrl-C ends sampling and keeps the
    summary, a second one interrupts at once (exit 130)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = False

    def first_interrupt() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    if stop_on_sigint:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, first_interrupt)
            handled = True
    try:
        return await measure_lag(
            source,
            target,
            samples=samples,
            interval=interval,
            rpo=rpo,
            heartbeat=heartbeat,
            on_sample=on_sample,
            stop=stop,
        )
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)


def lag_exit_code(report: LagReport) -> int:
    if not report.samples:
        return EXIT_TROUBLE
    if report.rpo_seconds is None:
        return EXIT_OK
    within = report.within_rpo
    if within is None:
        return EXIT_TROUBLE
    return EXIT_OK if within else EXIT_DIFFERENT


@main.command()
@click.option(
    "--journal",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="The application's write journal (JSON Lines, see DESIGN.md).",
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
    type=click.Path(dir_okay=False, writable=True),
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
    from .reconcile import parse_since
    from .reconcile import reconcile as run_reconcile
    from .replay import replay_script
    from .report import RECONCILE_RENDERERS

    try:
        since_ts = parse_since(since) if since else None
    except ReplverifyError as e:
        raise click.BadParameter(e.message, param_hint="--since") from None
    report = run_async(run_reconcile(journal, target, source_dsn=source, since=since_ts))
    if replay_sql:
        try:
            Path(replay_sql).write_text(replay_script(report), encoding="utf-8")
        except OSError as e:
            raise click.FileError(replay_sql, hint=e.strerror) from None
    emit(RECONCILE_RENDERERS[fmt](report), output)
    sys.exit(EXIT_DIFFERENT if report.status == "loss" else EXIT_OK)


# == failover toolkit: gate, failback, health, files =========================================


@main.command()
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
@output_options
def gate(
    source: str,
    target: str,
    timeout: float,
    fence: bool,
    progress: bool | None,
    fmt: str,
    output: str | None,
) -> None:
    """Planned failover: wait until TARGET has replayed all of SOURCE, then verify.

    TARGET must be a physical standby of SOURCE. Exit 0 only when a switch now loses
    nothing (caught up and identical), 1 when not caught up within --timeout or
    different, 2 on trouble.
    """
    from .gate import gate as run_gate
    from .report_ops import GATE_RENDERERS

    show = sys.stderr.isatty() if progress is None else progress

    def tick(lag_bytes: int, waited: float) -> None:
        if show:
            click.echo(
                f"\r\033[Kwaiting for replay: {lag_bytes:,} bytes behind, {waited:.1f} s",
                err=True,
                nl=False,
            )

    try:
        report = run_async(run_gate(source, target, timeout=timeout, fence=fence, progress=tick))
    finally:
        if show:
            click.echo("\r\033[K", err=True, nl=False)
    emit(GATE_RENDERERS[fmt](report), output)
    if not report.complete:
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_OK if report.status == "safe" else EXIT_DIFFERENT)


@main.command()
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
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Write a guarded one-transaction script that brings the old primary's own "
    "changes to NEW (INSERT ... ON CONFLICT DO NOTHING, UPDATE/DELETE ... WHERE the row "
    "is still what was observed).",
)
@output_options
def failback(
    old: str,
    new: str,
    tables: tuple[str, ...],
    replay_sql: str | None,
    fmt: str,
    output: str | None,
) -> None:
    """What the old primary OLD holds that the new primary NEW lacks (before a rewind).

    Rows changed on OLD after the divergence are told apart from writes made on NEW
    after its promotion by commit timestamps (track_commit_timestamp). Exit 0 when OLD
    holds nothing NEW lacks, 1 when it does (or who wrote a row cannot be told), 2 on
    trouble.
    """
    from .failback import failback as run_failback
    from .failback import replay_script
    from .report_ops import FAILBACK_RENDERERS

    options = api.DiffOptions(tables=tables)
    report = run_async(run_failback(old, new, options=options))
    if replay_sql:
        try:
            Path(replay_sql).write_text(replay_script(report), encoding="utf-8")
        except OSError as e:
            raise click.FileError(replay_sql, hint=e.strerror) from None
    emit(FAILBACK_RENDERERS[fmt](report), output)
    if not report.complete:
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_OK if report.status == "nothing_to_recover" else EXIT_DIFFERENT)


@main.command()
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
    from .health import health as run_health
    from .report_ops import HEALTH_RENDERERS

    report = run_async(run_health(source, target, rpo=rpo))
    emit(HEALTH_RENDERERS[fmt](report), output)
    if report.status == "unknown":
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_OK if report.status == "ok" else EXIT_DIFFERENT)


@main.command()
@click.argument("dir_a", type=click.Path(file_okay=False))
@click.argument("dir_b", type=click.Path(file_okay=False))
@output_options
def files(dir_a: str, dir_b: str, fmt: str, output: str | None) -> None:
    """Compare two directory trees (attachment / blob copies): missing, extra, changed.

    Sizes first, then xxh3-128 of the content read in blocks; symlinks are compared by
    target, never followed; unreadable entries are reported. Exit 0 identical, 1
    different, 2 when something could not be read.
    """
    from .errors import UsageError
    from .files import compare_trees
    from .report_ops import FILES_RENDERERS

    try:
        report = compare_trees(dir_a, dir_b)
    except UsageError as e:
        click.echo(f"replverify: error: {e}", err=True)
        sys.exit(EXIT_TROUBLE)
    emit(FILES_RENDERERS[fmt](report), output)
    if not report.complete:
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_OK if report.status == "identical" else EXIT_DIFFERENT)
