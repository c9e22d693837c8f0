"""Prometheus metrics of ``replverify lag --metrics-port`` (lag to graph and alert on) and
``replverify diff --every S --metrics-port`` (the latest verification of each table).

>>> metrics = LagMetrics(source_dsn, target_dsn, rpo=30)
>>> server = serve(metrics, addr="127.0.0.1", port=9187)   # http://127.0.0.1:9187/metrics
>>> metrics.observe(sample)          # after each LagSample; metrics.failed() after a failure
>>> server.close()

Every series carries ``source`` and ``target`` labels of the form ``host:port/db``: no
user, no password, nothing else of the DSN. The metrics live in a registry of their own
(not prometheus-client's global one), so several pairs, runs or tests never collide, and
nothing but these series is served (no process or Python metrics).

prometheus-client is an optional dependency (``pip install 'replverify[metrics]'``),
imported only when metrics are asked for.
"""

from __future__ import annotations

import contextlib
import errno
import math
import threading
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from replverify import __version__
from replverify.db.connect import Endpoint
from replverify.errors import MetricsError
from replverify.lag.model import LagSample, judge

if TYPE_CHECKING:
    from replverify.types import DiffReport

__all__ = [
    "DIFF_METRICS",
    "INSTALL_HINT",
    "LAG_METRICS",
    "DiffMetrics",
    "LagMetrics",
    "MetricsServer",
    "endpoint_label",
    "serve",
]

#: every series name each exporter serves (as scraped: counters end in ``_total``); the
#: Grafana dashboard in docs/ may use only these, and a test holds it to that
LAG_METRICS = (
    "replverify_lag_seconds",
    "replverify_lag_bytes",
    "replverify_rpo_seconds",
    "replverify_within_rpo",
    "replverify_last_sample_timestamp_seconds",
    "replverify_up",
    "replverify_lag_samples_total",
    "replverify_lag_sample_failures_total",
    "replverify_build_info",
)
DIFF_METRICS = (
    "replverify_diff_last_verified_timestamp_seconds",
    "replverify_diff_differences",
    "replverify_diff_trouble",
    "replverify_diff_duration_seconds",
    "replverify_diff_rows",
    "replverify_diff_up",
    "replverify_diff_last_run_timestamp_seconds",
    "replverify_diff_run_duration_seconds",
    "replverify_diff_runs_total",
    "replverify_diff_run_failures_total",
    "replverify_build_info",
)


class _Exported(Protocol):
    registry: Any


INSTALL_HINT = "pip install 'replverify[metrics]'"


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MetricsError(f"metrics need the prometheus-client package: {INSTALL_HINT}") from None
    return prometheus_client


def endpoint_label(dsn: str | Endpoint) -> str:
    """``host:port/db`` of a DSN: all of it a metric label may show."""
    ep = dsn if isinstance(dsn, Endpoint) else Endpoint.parse(dsn)
    db = urllib.parse.urlsplit(ep.display).path.lstrip("/")
    return f"{ep.address}/{db}"


def _build_info(registry: Any) -> None:
    """``replverify_build_info{version}`` = 1 in ``registry`` (every exporter has it)."""
    pc = _prometheus()
    info = pc.Gauge(
        "replverify_build_info", "replverify's version (always 1).", ["version"], registry=registry
    )
    info.labels(version=__version__).set(1)


class LagMetrics:
    """The lag series of one source/target pair, in a registry of their own.

    The lag gauges appear with the first sample (a 0 before any measurement would read as
    "caught up"); the counters, ``replverify_up`` and ``replverify_rpo_seconds`` at once.
    """

    def __init__(
        self, source: str | Endpoint, target: str | Endpoint, *, rpo: float | None = None
    ) -> None:
        pc = _prometheus()
        self.rpo = rpo
        self.registry = pc.CollectorRegistry()
        self.labels = {"source": endpoint_label(source), "target": endpoint_label(target)}
        names = list(self.labels)

        def gauge(name: str, doc: str) -> Any:
            return pc.Gauge(name, doc, names, registry=self.registry)

        self._lag_seconds = gauge(
            "replverify_lag_seconds",
            "Age of the oldest change the target has not replayed (0 when caught up).",
        )
        self._lag_bytes = gauge(
            "replverify_lag_bytes", "WAL bytes the source wrote that the target has not replayed."
        )
        self._rpo = gauge("replverify_rpo_seconds", "The recovery point objective (--rpo).")
        self._within = gauge(
            "replverify_within_rpo",
            "1 when the latest sample is within --rpo, 0 when over it, NaN when it cannot "
            "be told (a lower bound within the RPO).",
        )
        self._last = gauge(
            "replverify_last_sample_timestamp_seconds",
            "When the latest sample was taken (the source's clock, Unix time).",
        )
        self._up = gauge(
            "replverify_up", "1 when the latest attempt to sample succeeded, 0 when it failed."
        )
        self._samples = pc.Counter(
            "replverify_lag_samples", "Lag samples taken.", names, registry=self.registry
        )
        self._failures = pc.Counter(
            "replverify_lag_sample_failures",
            "Attempts to sample that failed (server unreachable, connection lost); sampling "
            "is retried.",
            names,
            registry=self.registry,
        )
        _build_info(self.registry)
        self._up.labels(**self.labels).set(0)
        self._samples.labels(**self.labels)
        self._failures.labels(**self.labels)
        if rpo is not None:
            self._rpo.labels(**self.labels).set(rpo)

    def observe(self, sample: LagSample) -> None:
        """Record a sample."""
        labels = self.labels
        self._lag_seconds.labels(**labels).set(sample.lag_seconds)
        self._lag_bytes.labels(**labels).set(sample.lag_bytes)
        self._last.labels(**labels).set(sample.at.timestamp())
        if self.rpo is not None:
            within = judge([sample], self.rpo)
            self._within.labels(**labels).set(math.nan if within is None else float(within))
        self._samples.labels(**labels).inc()
        self._up.labels(**labels).set(1)

    def failed(self) -> None:
        """Record a failed attempt to sample; the lag gauges keep their last values (and
        ``replverify_last_sample_timestamp_seconds`` shows how old they are)."""
        self._failures.labels(**self.labels).inc()
        self._up.labels(**self.labels).set(0)

    def render(self) -> str:
        """The metrics in Prometheus' text format (what ``/metrics`` serves)."""
        text: bytes = _prometheus().generate_latest(self.registry)
        return text.decode("utf-8")


class DiffMetrics:
    """The latest ``diff --every`` results of one source/target pair, per table.

    Table series carry a ``table`` label (``schema.table``) besides ``source`` and
    ``target``; they appear with the first run that reached the table and go when a later
    run no longer compares it (dropped, excluded). A run that fails as a whole (a server
    unreachable) leaves the table series as they were and sets ``replverify_diff_up`` 0:
    ``replverify_diff_last_verified_timestamp_seconds`` then shows how old they are.
    """

    def __init__(self, source: str | Endpoint, target: str | Endpoint) -> None:
        pc = _prometheus()
        self.registry = pc.CollectorRegistry()
        self.labels = {"source": endpoint_label(source), "target": endpoint_label(target)}
        pair = list(self.labels)
        per_table = [*pair, "table"]

        def gauge(name: str, doc: str, names: list[str]) -> Any:
            return pc.Gauge(name, doc, names, registry=self.registry)

        self._verified_at = gauge(
            "replverify_diff_last_verified_timestamp_seconds",
            "When the latest run that fully verified the table ended (Unix time).",
            per_table,
        )
        self._differences = gauge(
            "replverify_diff_differences",
            "Rows (and schema differences) that differ in the latest run: missing, extra, changed.",
            per_table,
        )
        self._trouble = gauge(
            "replverify_diff_trouble",
            "1 when the latest run could not verify the table (an error, rows still being "
            "written), else 0.",
            per_table,
        )
        self._duration = gauge(
            "replverify_diff_duration_seconds",
            "How long the latest run took to compare the table.",
            per_table,
        )
        self._rows = gauge(
            "replverify_diff_rows",
            "Rows of the table on each side in the latest run (side: source or target).",
            [*per_table, "side"],
        )
        self._up = gauge(
            "replverify_diff_up", "1 when the latest run ended with a report, 0 when it failed.",
            pair,
        )  # fmt: skip
        self._last_run = gauge(
            "replverify_diff_last_run_timestamp_seconds",
            "When the latest run ended, with a report or not (Unix time).",
            pair,
        )
        self._run_duration = gauge(
            "replverify_diff_run_duration_seconds", "How long the latest complete run took.", pair
        )
        self._runs = pc.Counter(
            "replverify_diff_runs", "Runs that ended with a report.", pair, registry=self.registry
        )
        self._failures = pc.Counter(
            "replverify_diff_run_failures",
            "Runs that failed as a whole (server unreachable, connection lost); retried at "
            "the next interval.",
            pair,
            registry=self.registry,
        )
        _build_info(self.registry)
        self._up.labels(**self.labels).set(0)
        self._runs.labels(**self.labels)
        self._failures.labels(**self.labels)
        self._tables: set[str] = set()

    def observe(self, report: DiffReport, *, ended_at: float) -> None:
        """Record a run's report; ``ended_at`` is Unix time."""
        seen = set()
        for t in report.tables:
            name = t.table.qualified
            seen.add(name)
            labels = {**self.labels, "table": name}
            differences = t.differences_total + len(t.schema_differences)
            self._differences.labels(**labels).set(differences)
            self._trouble.labels(**labels).set(0 if t.verified else 1)
            self._duration.labels(**labels).set(t.elapsed_s)
            self._rows.labels(**labels, side="source").set(t.rows_source)
            self._rows.labels(**labels, side="target").set(t.rows_target)
            if t.verified:
                self._verified_at.labels(**labels).set(ended_at)
        for gone in self._tables - seen:
            labels = {**self.labels, "table": gone}
            for g in (self._differences, self._trouble, self._duration, self._verified_at):
                with contextlib.suppress(KeyError):
                    g.remove(*labels.values())
            for side in ("source", "target"):
                with contextlib.suppress(KeyError):
                    self._rows.remove(*labels.values(), side)
        self._tables = seen
        self._up.labels(**self.labels).set(1)
        self._last_run.labels(**self.labels).set(ended_at)
        self._run_duration.labels(**self.labels).set(report.elapsed_s)
        self._runs.labels(**self.labels).inc()

    def failed(self, *, ended_at: float) -> None:
        """Record a run that failed as a whole."""
        self._failures.labels(**self.labels).inc()
        self._up.labels(**self.labels).set(0)
        self._last_run.labels(**self.labels).set(ended_at)

    def render(self) -> str:
        """The metrics in Prometheus' text format (what ``/metrics`` serves)."""
        text: bytes = _prometheus().generate_latest(self.registry)
        return text.decode("utf-8")


@dataclass
class MetricsServer:
    """The HTTP endpoint serving a :class:`LagMetrics` or :class:`DiffMetrics` (in a
    daemon thread)."""

    server: Any
    thread: threading.Thread
    url: str

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(metrics: _Exported, *, addr: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``metrics`` at ``http://addr:port/metrics`` (``port=0``: a free port, see
    :attr:`MetricsServer.url`). A port in use or an address that cannot be bound is a
    :class:`~replverify.errors.MetricsError`."""
    pc = _prometheus()
    host = f"[{addr}]" if ":" in addr else addr
    try:
        server, thread = pc.start_http_server(port, addr=addr, registry=metrics.registry)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise MetricsError(
                f"cannot serve metrics on {host}:{port}: the port is in use "
                "(choose another --metrics-port)"
            ) from None
        raise MetricsError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
    return MetricsServer(server, thread, f"http://{host}:{server.server_port}/metrics")
