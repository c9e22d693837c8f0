"""``replverify diff``: compare two servers' tables row by row, once or ``--every``
SECONDS (with a Prometheus exporter), and the exit code of a diff report."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable

import click

from replverify import api
from replverify.cli.console import emit_report, run_async
from replverify.cli.options import check_writable, output_options, scale_options, scale_settings
from replverify.cli.progress import ProgressLine
from replverify.db.connect import Endpoint
from replverify.errors import (
    EXIT_DIFFERENT,
    EXIT_OK,
    EXIT_TROUBLE,
    ConnectError,
    ReplverifyError,
    ServerError,
)
from replverify.reports.formats import DIFF_RENDERERS
from replverify.types import DiffReport
from replverify.values.canonical import Compare


def _split_cols(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    cols = tuple(c.strip() for c in value.split(","))
    if any(not c for c in cols):
        raise click.BadParameter("give column names separated by commas, e.g. --key a,b")
    return cols


@click.command()
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
    "values (slowest). auto = measure each side's round trip and link at start (about ten "
    "round trips), then copy on a fast link and server where hashing in the database beats "
    "moving the rows, never server where it cannot be exact; the report says what was "
    "measured and why. Between major versions copy reads as text the columns whose binary "
    "form is not known to be the same on both.",
)
@click.option(
    "--compare",
    type=click.Choice(["exact", "semantic"]),
    default="exact",
    show_default=True,
    help="When two values are equal: exact = the binary forms PostgreSQL sends are equal "
    "(numeric 1.10 vs 1.1, interval '1 day' vs '24 hours', float -0 vs 0 differ; one "
    "instant in two time zones does not); semantic = the type's = says so (for migrations "
    "that change representations on purpose).",
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
    callback=check_writable,
    metavar="FILE",
    help="Record verified chunks in FILE; run again with the same FILE to resume an "
    "interrupted diff where it stopped (same verdict as an uninterrupted run).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--allow-same-server",
    is_flag=True,
    help="Compare even when SOURCE and TARGET reach one database of one server "
    "(same system identifier, port and start time); otherwise that is refused (exit 2).",
)
@click.option(
    "--every",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Verify again every SECONDS (from the start of one run to the next) until Ctrl-C, "
    "one summary line per run on stderr; then the last report. An unreachable server is "
    "counted and retried at the next interval.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="With --every: serve Prometheus metrics of the latest results per table at "
    "http://ADDR:PORT/metrics (0: a free port, printed on stderr). Needs: "
    "pip install 'replverify[metrics]'.",
)
@click.option(
    "--metrics-addr",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDR",
    help="Address the metrics endpoint listens on (with --metrics-port).",
)
@scale_options
@output_options
@click.pass_context
def diff(
    ctx: click.Context,
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
    compare: Compare,
    fence: bool | None,
    lag_timeout: float,
    state: str | None,
    progress: bool | None,
    allow_same_server: bool,
    every: float | None,
    metrics_port: int | None,
    metrics_addr: str,
    executor: str,
    max_connections: int | None,
    max_load: int | None,
    max_lag: float | None,
    chunk_time: float,
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
        compare=compare,
        fence=fence,
        lag_timeout=lag_timeout,
        state=state,
        allow_same_server=allow_same_server,
        **scale_settings(ctx, executor, max_connections, max_load, max_lag, chunk_time),
    )
    if every is not None or metrics_port is not None:
        _diff_every(ctx, source, target, options, every, metrics_port, metrics_addr, fmt, output)
    show = sys.stderr.isatty() if progress is None else progress
    bar = ProgressLine(show)
    try:
        report = run_async(api.diff(source, target, options, progress=bar))
    finally:
        bar.close()
    emit_report(DIFF_RENDERERS, fmt, report, output)
    if report.aborted:
        click.echo(f"replverify: error: {report.aborted}", err=True)
    sys.exit(diff_exit_code(report))


def _diff_every(
    ctx: click.Context,
    source: str,
    target: str,
    options: api.DiffOptions,
    every: float | None,
    metrics_port: int | None,
    metrics_addr: str,
    fmt: str,
    output: str | None,
) -> None:
    """``diff --every``: verify until Ctrl-C, then render the last report and exit."""
    from replverify.lag.metrics import DiffMetrics, MetricsServer, serve

    if every is None:
        raise click.BadOptionUsage("metrics_port", "--metrics-port needs --every", ctx)
    if options.state is not None:
        raise click.BadOptionUsage(
            "state", "--state resumes one interrupted run; it cannot go with --every", ctx
        )
    # Parsed once: the metrics labels and every run use these.
    src_ep, tgt_ep = Endpoint.parse(source), Endpoint.parse(target)
    metrics: DiffMetrics | None = None
    server: MetricsServer | None = None
    if metrics_port is not None:
        metrics = DiffMetrics(src_ep, tgt_ep)
        server = serve(metrics, addr=metrics_addr, port=metrics_port)
        click.echo(f"replverify: serving metrics at {server.url}", err=True)
    failures: list[ReplverifyError] = []

    def on_report(report: DiffReport) -> None:
        failures.clear()
        if metrics is not None:
            metrics.observe(report, ended_at=time.time())
        click.echo(diff_run_line(report), err=True)

    def on_failure(error: ReplverifyError) -> None:
        failures.append(error)
        if metrics is not None:
            metrics.failed(ended_at=time.time())
        click.echo(f"replverify: verification failed, retrying in {every:g} s: {error.message}",
                   err=True)  # fmt: skip

    try:
        last = run_async(_diff_until_interrupt(src_ep, tgt_ep, options, every, on_report,
                                               on_failure))  # fmt: skip
    finally:
        if server is not None:
            server.close()
    if last is None:
        click.echo("replverify: stopped before any verification ended", err=True)
        sys.exit(EXIT_TROUBLE)
    emit_report(DIFF_RENDERERS, fmt, last, output)
    # The latest attempt failed: the report shown is older than that; never 0 then.
    sys.exit(EXIT_TROUBLE if failures else diff_exit_code(last))


def diff_run_line(report: DiffReport) -> str:
    """One line per ``--every`` run: when, the verdict, the counts."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = sum(t.rows_source for t in report.tables)
    diffs = sum(t.differences_total for t in report.tables)
    trouble = sum(not t.verified for t in report.tables)
    verdict = report.status if report.complete else "incomplete"
    return (
        f"{when}  {verdict}  {len(report.tables)} tables, {rows:,} rows, {diffs:,} "
        f"differences, {trouble} not verified, {report.elapsed_s:.1f} s"
    )


async def _diff_until_interrupt(
    source: Endpoint,
    target: Endpoint,
    options: api.DiffOptions,
    every: float,
    on_report: Callable[[DiffReport], None],
    on_failure: Callable[[ReplverifyError], None],
) -> DiffReport | None:
    """Run ``api.diff`` every ``every`` seconds until the first Ctrl-C (which cancels a
    run under way and keeps the last report); a second Ctrl-C interrupts at once.
    Unreachable servers and lost connections are reported and retried; anything else
    (bad options, unknown tables) ends the loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled = False

    def first_interrupt() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, first_interrupt)
        handled = True
    last: DiffReport | None = None
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            started = loop.time()
            run = asyncio.ensure_future(api.diff(source, target, options))
            await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError, ReplverifyError):
                    await run
                break
            try:
                last = run.result()
            except (ConnectError, ServerError) as e:
                on_failure(e)
            else:
                on_report(last)
            pause = max(every - (loop.time() - started), 0.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopping), pause)
    finally:
        stopping.cancel()
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
    return last


def diff_exit_code(report: DiffReport) -> int:
    if not report.complete:
        return EXIT_TROUBLE
    return EXIT_OK if report.status == "consistent" else EXIT_DIFFERENT
