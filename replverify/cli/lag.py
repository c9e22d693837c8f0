"""``replverify lag``: sample how far a standby is behind, once or until Ctrl-C (with a
Prometheus exporter that outlives lost connections), and the exit code of a lag report."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from replverify.cli.console import emit, emit_report, run_async
from replverify.cli.options import output_options
from replverify.db.connect import Endpoint
from replverify.errors import (
    EXIT_DIFFERENT,
    EXIT_OK,
    EXIT_TROUBLE,
    ConnectError,
    ReplverifyError,
    ServerError,
)
from replverify.lag.model import LagReport, LagSample
from replverify.lag.sampler import measure_lag
from replverify.reports.formats import LAG_RENDERERS
from replverify.reports.lag import lag_sample_line, lag_samples_header, lag_to_text


@click.command()
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
