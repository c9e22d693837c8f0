"""Prometheus metrics of ``replverify lag --metrics-port``: lag to graph and alert on.

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

import errno
import math
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

from . import __version__
from .connect import Endpoint
from .errors import MetricsError
from .lag import LagSample, judge

__all__ = ["INSTALL_HINT", "LagMetrics", "MetricsServer", "endpoint_label", "serve"]

INSTALL_HINT = "pip install 'replverify[metrics]'"


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MetricsError(f"metrics need the prometheus-client package: {INSTALL_HINT}") from None
    return prometheus_client


def endpoint_label(dsn: str) -> str:
    """``host:port/db`` of a DSN: all of it a metric label may show."""
    ep = Endpoint.parse(dsn)
    db = urllib.parse.urlsplit(ep.display).path.lstrip("/")
    return f"{ep.address}/{db}"


class LagMetrics:
    """The lag series of one source/target pair, in a registry of their own.

    The lag gauges appear with the first sample (a 0 before any measurement would read as
    "caught up"); the counters, ``replverify_up`` and ``replverify_rpo_seconds`` at once.
    """

    def __init__(self, source: str, target: str, *, rpo: float | None = None) -> None:
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
        info = pc.Gauge(
            "replverify_build_info", "replverify's version (always 1).", ["version"],
            registry=self.registry,
        )  # fmt: skip
        info.labels(version=__version__).set(1)
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


@dataclass
class MetricsServer:
    """The HTTP endpoint serving a :class:`LagMetrics` (in a daemon thread)."""

    server: Any
    thread: threading.Thread
    url: str

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(metrics: LagMetrics, *, addr: str = "127.0.0.1", port: int = 0) -> MetricsServer:
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
