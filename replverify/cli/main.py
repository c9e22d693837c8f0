"""The ``replverify`` command: parse options, call the API, render, exit.

Exit codes (as diff(1)): 0 verified, 1 differences, 2 trouble. They are decided here and
nowhere else, from the report or from the :class:`~replverify.errors.ReplverifyError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from replverify import __version__, api
from replverify.cli import logs
from replverify.cli.console import emit, emit_report, fail, run_async, write_file
from replverify.cli.options import check_writable, output_options, scale_options, scale_settings
from replverify.cli.progress import FilesProgress, ProgressLine
from replverify.db.connect import Endpoint
from replverify.errors import (
    EXIT_DIFFERENT,
    EXIT_OK,
    EXIT_TROUBLE,
    ConfigError,
    ConnectError,
    OutputError,
    ReplverifyError,
    ServerError,
)
from replverify.lag.model import LagReport, LagSample
from replverify.lag.sampler import measure_lag
from replverify.reports.formats import DIFF_RENDERERS, LAG_RENDERERS
from replverify.reports.formatting import Marks
from replverify.reports.lag import lag_sample_line, lag_samples_header, lag_to_text
from replverify.types import DiffReport
from replverify.values.canonical import Compare

if TYPE_CHECKING:
    from replverify.cli.config import Param
    from replverify.ops.files import RpoCheck


class ReplverifyGroup(click.Group):
    """The ``replverify`` group: an error of ours that no command handles itself (a bad
    configuration file, an unset ``${VAR}`` of the profile, a metrics port in use) is one
    line on stderr and its exit code (2), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReplverifyError as e:
            fail(e)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:
            # A bug, not a user mistake: keep the traceback for the report, and exit 2
            # (Python's default 1 would read as "differences found").
            traceback.print_exc()
            click.echo(
                "replverify: internal error: this is a bug in replverify; please report it "
                "with the traceback above",
                err=True,
            )
            sys.exit(EXIT_TROUBLE)


def config_key(param: click.Parameter) -> str:
    """The key of ``param`` in a profile: an option's long name with ``_`` for ``-``
    (``--chunk-rows``: ``chunk_rows``, ``--format``: ``format``), an argument's name,
    and for a repeatable option its parameter name (``-t/--table``: ``tables``)."""
    assert param.name is not None
    if isinstance(param, click.Option) and not param.multiple:
        longs = [o for o in param.opts if o.startswith("--")]
        if longs:
            return longs[0][2:].replace("-", "_")
    return param.name


#: Profile keys that mean different things in different commands: only in a command's
#: own table. (``fence = true`` meant for diff's fenced reads must not make gate fence
#: the source.)
CONFIG_COMMAND_ONLY = frozenset({"fence", "replay_sql"})
#: Commands that take no shared profile keys, only their own table: ``files`` compares
#: storage locations, not the profile's DSNs, and its ``--rpo`` judges a blob account.
CONFIG_OWN_TABLE_ONLY = frozenset({"files"})


def config_schema(group: click.Group) -> dict[str, dict[str, Param]]:
    """What each command accepts in a profile, from its click parameters (one list of
    options: the CLI's)."""
    from replverify.cli.config import Kind, Param

    def describe(p: click.Parameter, own_table_only: bool) -> Param:
        assert p.name is not None
        t = p.type
        kind: Kind
        if isinstance(t, click.types.BoolParamType):
            kind = "bool"
        elif isinstance(t, click.types.IntParamType):
            kind = "int"
        elif isinstance(t, click.types.FloatParamType):
            kind = "float"
        else:
            kind = "str"

        def check(value: object) -> str | None:
            try:
                t.convert(value, p, None)
            except click.BadParameter as e:
                return e.message.rstrip(".")
            return None

        choices = tuple(map(str, t.choices)) if isinstance(t, click.Choice) else ()
        numeric = kind in ("int", "float")
        shared = config_key(p) not in CONFIG_COMMAND_ONLY
        check_ = check if numeric else None
        return Param(p.name, kind, p.multiple, choices, check_, shared, own_table_only)

    return {
        name: {
            config_key(p): describe(p, name in CONFIG_OWN_TABLE_ONLY)
            for p in command.params
            if p.name
        }
        for name, command in group.commands.items()
    }


def profile_defaults(
    group: click.Group, profile: str, config_file: str | None
) -> dict[str, dict[str, object]]:
    """``ctx.default_map`` for ``profile``: per command, per parameter, the value; one
    that names ``${VAR}`` is given as a callable, which click calls only for what the
    command line leaves out, so an unset variable matters only when its value is used."""
    from replverify.cli.config import CONFIG_ENV, CONFIG_FILE, discover, load

    path = Path(config_file) if config_file else discover()
    if path is None:
        raise ConfigError(
            f"--profile {profile}: no {CONFIG_FILE} in the current directory; "
            f"name the file with --config FILE or ${CONFIG_ENV}"
        )
    chosen = load(path, config_schema(group)).profile(profile)
    return {
        command: {
            name: value if value.refers else value.resolve() for name, value in values.items()
        }
        for command, values in chosen.commands.items()
    }


@click.group(
    cls=ReplverifyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="replverify")
@click.option(
    "--profile",
    metavar="NAME",
    envvar="REPLVERIFY_PROFILE",
    show_envvar=True,
    help="Take DSNs and option values from profile NAME of the configuration file; "
    "what the command line gives overrides them.",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    envvar="REPLVERIFY_CONFIG",
    show_envvar=True,
    help="The configuration file of --profile.  [default: ./replverify.toml]",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    envvar="REPLVERIFY_VERBOSE",
    show_envvar=True,
    help="Details on stderr: replverify's debug log, the libraries' (asyncpg) log "
    "records and their tracebacks, which are otherwise never shown.",
)
@click.pass_context
def main(ctx: click.Context, profile: str | None, config_file: str | None, verbose: bool) -> None:
    """Verify PostgreSQL replication and find exactly the data a failover lost.

    DSNs are libpq URLs (postgresql://user@host:port/db) or key=value strings; the
    standard PG* environment variables apply. Passwords never appear in output.

    With --profile NAME, DSNs and options come from [profiles.NAME] of replverify.toml
    (see README, Configuration); the command line overrides them.

    Exit codes: 0 verified, 1 differences found, 2 trouble (bad arguments, unreachable
    server, something that could not be checked).
    """
    logs.configure(verbose=verbose)
    if profile is not None:
        ctx.default_map = profile_defaults(main, profile, config_file)
    elif ctx.get_parameter_source("config_file") is click.core.ParameterSource.COMMANDLINE:
        from replverify.cli.config import load

        names = ", ".join(sorted(load(config_file or "", config_schema(main)).profiles))
        raise ConfigError(f"--config {config_file}: choose a profile with --profile ({names})")


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
    "values (slowest). auto = copy; between major versions it reads as text the columns "
    "whose binary form is not known to be the same on both.",
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


@main.command()
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the clusters running; print their DSNs and the commands that stop them.",
)
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
    from replverify.testing.demo import run_demo

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
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics at http://ADDR:PORT/metrics while sampling. Implies "
    "--watch; a lost connection is counted and retried instead of ending the run. 0 picks "
    "a free port (the URL is printed on stderr). Needs: pip install 'replverify[metrics]'.",
)
@click.option(
    "--metrics-addr",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDR",
    help="Address the metrics endpoint listens on (with --metrics-port); 0.0.0.0 or :: "
    "exposes it beyond this host.",
)
@output_options
@click.pass_context
def lag(
    ctx: click.Context,
    source: str,
    target: str,
    samples: int | None,
    interval: float,
    rpo: float | None,
    heartbeat: bool,
    watch: bool,
    metrics_port: int | None,
    metrics_addr: str,
    fmt: str,
    output: str | None,
) -> None:
    """Measure how far TARGET is behind SOURCE: WAL bytes and seconds, over time.

    Bytes are the distance between the source's current WAL position and the target's
    replay position; seconds are the age of the oldest change the target has not
    replayed (0 on a caught-up pair, however long ago the last commit was). The target
    must be a physical standby of the source, or use --heartbeat. Exit 0 when within
    --rpo (or no --rpo), 1 when it was exceeded, 2 when lag could not be measured.

    With --metrics-port the lag is also served to Prometheus (replverify_lag_seconds,
    replverify_lag_bytes, replverify_within_rpo, ...; see README, Lag).
    """
    from replverify.lag.metrics import LagMetrics, MetricsServer, serve

    if metrics_port is None and (
        ctx.get_parameter_source("metrics_addr") is click.core.ParameterSource.COMMANDLINE
    ):
        raise click.BadOptionUsage("metrics_addr", "--metrics-addr needs --metrics-port", ctx)
    # Parsed once: the metrics labels and every (retried) measurement use these.
    src_ep, tgt_ep = Endpoint.parse(source), Endpoint.parse(target)
    metrics: LagMetrics | None = None
    server: MetricsServer | None = None
    if metrics_port is not None:
        watch = True
        # Errors (prometheus-client missing, port in use) exit 2 through ReplverifyGroup.
        metrics = LagMetrics(src_ep, tgt_ep, rpo=rpo)
        server = serve(metrics, addr=metrics_addr, port=metrics_port)
        click.echo(f"replverify: serving metrics at {server.url}", err=True)
    count = samples if samples is not None else (None if watch else 5)
    on_sample = None
    to_stderr = fmt != "text" or output is not None
    if watch:
        printed: list[LagSample] = []

        def on_sample(sample: LagSample) -> None:
            if metrics is not None:
                metrics.observe(sample)
            if not printed:
                click.echo(lag_samples_header(), err=to_stderr)
            printed.append(sample)
            click.echo(lag_sample_line(sample), err=to_stderr)

    failures: list[ReplverifyError] = []
    on_failure = None
    if metrics is not None:

        def on_failure(error: ReplverifyError, retry_in: float) -> None:
            failures.append(error)
            metrics.failed()
            click.echo(
                f"replverify: sampling failed, retrying in {retry_in:g} s: {error.message}",
                err=True,
            )

    try:
        lagging = _lag_until_interrupt(
            src_ep, tgt_ep, count, interval, rpo, heartbeat, on_sample,
            stop_on_sigint=watch, on_failure=on_failure,
        )  # fmt: skip
        report = run_async(lagging)
    finally:
        if server is not None:
            server.close()
    if watch and not to_stderr:
        # The samples are on the screen already, under their header: only the summary.
        emit(
            lag_to_text(report, samples=False),
            output,
            lambda marks: lag_to_text(report, marks, samples=False),
        )
    else:
        emit_report(LAG_RENDERERS, fmt, report, output)
    # Lag was not measured while sampling failed: never 0 then.
    sys.exit(EXIT_TROUBLE if failures else lag_exit_code(report))


async def _lag_until_interrupt(
    source: str | Endpoint,
    target: str | Endpoint,
    samples: int | None,
    interval: float,
    rpo: float | None,
    heartbeat: bool,
    on_sample: Callable[[LagSample], None] | None,
    *,
    stop_on_sigint: bool,
    on_failure: Callable[[ReplverifyError, float], None] | None = None,
) -> LagReport:
    """``measure_lag``; with ``stop_on_sigint`` a first Ctrl-C ends sampling and keeps the
    summary, a second one interrupts at once (exit 130). With ``on_failure``, see
    :func:`_measure_retrying`."""
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
    measure = functools.partial(
        measure_lag, source, target, interval=interval, rpo=rpo, heartbeat=heartbeat, stop=stop
    )
    try:
        if on_failure is not None:
            return await _measure_retrying(measure, samples, interval, on_sample, stop, on_failure)
        return await measure(samples=samples, on_sample=on_sample)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)


async def _measure_retrying(
    measure: Callable[..., Coroutine[Any, Any, LagReport]],
    samples: int | None,
    interval: float,
    on_sample: Callable[[LagSample], None] | None,
    stop: asyncio.Event,
    on_failure: Callable[[ReplverifyError, float], None],
) -> LagReport:
    """``measure(samples=, on_sample=)`` (a bound ``measure_lag``) that outlives an
    unreachable server or a lost connection, for a metrics exporter that must keep
    serving: each failure goes to ``on_failure(error, pause)``, and sampling starts again
    after ``pause`` (the interval, doubled while failures follow each other, at most
    30 s) until ``samples`` are taken or ``stop`` is set. Bad arguments, or a target that
    is not a standby, still end the run.

    The report holds the samples of every attempt and a note of the failures. Stopped
    while failing, there is no report: the last error is raised.
    """
    taken: list[LagSample] = []

    def record(sample: LagSample) -> None:
        taken.append(sample)
        if on_sample is not None:
            on_sample(sample)

    failed: list[ReplverifyError] = []
    streak = 0
    while True:
        before = len(taken)
        try:
            report = await measure(
                samples=None if samples is None else samples - len(taken), on_sample=record
            )
            break
        except (ConnectError, ServerError) as e:
            if samples is not None and len(taken) >= samples:
                raise
            failed.append(e)
            streak = 1 if len(taken) > before else streak + 1
            pause = min(interval * 2 ** (streak - 1), 30.0)
            on_failure(e, pause)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            if stop.is_set():
                raise
    if not failed:
        return report
    note = (
        f"{len(failed)} attempt(s) to sample failed and were retried; lag is unknown for "
        f"those times; the last failure: {failed[-1].message}"
    )
    return dataclasses.replace(report, samples=tuple(taken), notes=(*report.notes, note))


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
    from replverify.ops.health import health as run_health
    from replverify.reports.formats import HEALTH_RENDERERS

    report = run_async(run_health(source, target, rpo=rpo))
    emit_report(HEALTH_RENDERERS, fmt, report, output)
    if report.status == "unknown":
        sys.exit(EXIT_TROUBLE)
    sys.exit(EXIT_OK if report.status == "ok" else EXIT_DIFFERENT)


@main.command()
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
