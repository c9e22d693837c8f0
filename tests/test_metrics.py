"""``replverify lag --metrics-port``: Prometheus metrics, scraped over HTTP from a real run."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from replverify.cli.main import main
from replverify.lag.metrics import LagMetrics, endpoint_label, serve
from replverify.lag.model import LagSample
from replverify.testing.postgres import free_port
from replverify.testing.servers import wait_for_replay

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Mx-pw-81ddq"


def values(text: str) -> dict[str, float]:
    """Sample name -> value of one exposition (each series of ours has one label set)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = s.value
    return out


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


def sample(lag_seconds: float, method="lsn-history", nbytes: int = 100) -> LagSample:
    at = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)
    return LagSample(at=at, lag_bytes=nbytes, lag_seconds=lag_seconds, method=method, source_lsn=1)


# ============================================================== in-process, no database


def test_labels_are_host_port_db_only():
    assert endpoint_label(f"postgresql://app:{SECRET}@db1.geo:5433/shop?sslmode=require") == (
        "db1.geo:5433/shop"
    )
    assert endpoint_label(f"host=db2 port=6432 user=app password={SECRET} dbname=shop") == (
        "db2:6432/shop"
    )


def test_gauges_and_counters_follow_the_samples():
    m = LagMetrics(f"postgresql://app:{SECRET}@db1/shop", "postgresql://app@db2/shop", rpo=2)
    first = values(m.render())
    # Before any sample: counters at 0, up 0, the RPO, but no lag (0 would read "caught up").
    assert first["replverify_lag_samples_total"] == 0 and first["replverify_up"] == 0
    assert first["replverify_rpo_seconds"] == 2 and "replverify_lag_seconds" not in first
    m.observe(sample(0.5, nbytes=4096))
    v = values(m.render())
    assert (v["replverify_lag_seconds"], v["replverify_lag_bytes"]) == (0.5, 4096)
    assert (v["replverify_within_rpo"], v["replverify_up"]) == (1, 1)
    assert v["replverify_lag_samples_total"] == 1
    assert v["replverify_last_sample_timestamp_seconds"] == sample(0).at.timestamp()
    m.observe(sample(3.0))
    assert values(m.render())["replverify_within_rpo"] == 0
    m.observe(sample(1.0, "history-bound"))  # a lower bound within the RPO proves nothing
    assert math.isnan(values(m.render())["replverify_within_rpo"])
    m.failed()
    v = values(m.render())
    assert (v["replverify_lag_sample_failures_total"], v["replverify_up"]) == (1, 0)
    assert v["replverify_lag_seconds"] == 1.0  # kept; the timestamp tells its age
    text = m.render()
    assert SECRET not in text and "app@" not in text
    assert 'source="db1:5432/shop",target="db2:5432/shop"' in text
    # Without --rpo there is no RPO series at all.
    assert "replverify_rpo_seconds{" not in LagMetrics("host=a", "host=b").render()


def test_each_exporter_has_its_own_registry():
    a, b = LagMetrics("host=a", "host=b"), LagMetrics("host=a", "host=b")
    a.observe(sample(1.0))
    assert values(a.render())["replverify_lag_samples_total"] == 1
    assert values(b.render())["replverify_lag_samples_total"] == 0
    server = serve(a, port=0)
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/metrics")
        assert values(scrape(server.url))["replverify_lag_seconds"] == 1.0
    finally:
        server.close()


def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["lag", "host=a", "host=b", "--metrics-port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"cannot serve metrics on 127.0.0.1:{port}: the port is in use" in result.stderr
    assert "Traceback" not in result.output


def test_missing_prometheus_client_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    result = CliRunner().invoke(main, ["lag", "host=a", "host=b", "--metrics-port", "0"])
    assert result.exit_code == 2, result.output
    assert "pip install 'replverify[metrics]'" in result.stderr


def test_metrics_addr_needs_metrics_port():
    result = CliRunner().invoke(main, ["lag", "host=a", "host=b", "--metrics-addr", "0.0.0.0"])
    assert result.exit_code == 2 and "--metrics-addr needs --metrics-port" in result.output


# ============================================================== a real run, scraped


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "replverify", "lag", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scrape_until(proc, url: str, done, timeout: float = 20) -> dict[str, float]:
    """Scrape ``url`` until ``done(values)``; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            text = scrape(url)
        except OSError:  # not listening yet
            time.sleep(0.05)
            continue
        v = values(text)
        if done(v):
            assert SECRET not in text
            return v
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out scraping {url}: {proc.communicate()}")


def with_password(dsn: str) -> str:
    return dsn.replace("postgres@", f"postgres:{SECRET}@")


async def test_scraped_while_sampling_an_idle_pair(primary_dsn, standby_dsn, tmp_path):
    await wait_for_replay(primary_dsn, standby_dsn)
    port = free_port()
    out = tmp_path / "lag.json"
    proc = start(
        with_password(primary_dsn), standby_dsn, "--metrics-port", str(port), "--interval",
        "0.2", "--samples", "8", "--rpo", "5", "--format", "json", "-o", str(out),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        v = scrape_until(proc, url, lambda v: v.get("replverify_lag_samples_total", 0) >= 3)
        taken = int(v["replverify_lag_samples_total"])
        text = scrape(url)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert f"serving metrics at {url}" in stderr
    assert stderr.count("caught-up") == 8  # --metrics-port implies --watch: one line each
    doc = json.loads(out.read_text())
    assert len(doc["samples"]) == 8 and doc["within_rpo"] is True
    # The scraped values are those of the sample taken last before the scrape.
    seen = doc["samples"][taken - 1]
    assert v["replverify_lag_bytes"] == seen["lag_bytes"] <= 300  # idle: (almost) nothing
    assert v["replverify_lag_seconds"] == seen["lag_seconds"] == 0.0
    at = datetime.fromisoformat(seen["at"]).timestamp()
    assert v["replverify_last_sample_timestamp_seconds"] == pytest.approx(at, abs=1e-3)
    assert (v["replverify_rpo_seconds"], v["replverify_within_rpo"], v["replverify_up"]) == (
        5, 1, 1,
    )  # fmt: skip
    assert v["replverify_lag_sample_failures_total"] == 0
    # Labels: host:port/db, no user, no password.
    port_of = primary_dsn.rsplit(":", 1)[1].split("/")[0]
    assert f'source="127.0.0.1:{port_of}/postgres"' in text
    assert SECRET not in text and "postgres@" not in text and SECRET not in stderr + stdout


async def test_lost_connections_are_counted_and_sampling_goes_on(primary_dsn, standby_dsn):
    port = free_port()
    proc = start(primary_dsn, standby_dsn, "--metrics-port", str(port), "--interval", "0.2")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        before = scrape_until(proc, url, lambda v: v.get("replverify_lag_samples_total", 0) >= 2)
        conn = await asyncpg.connect(primary_dsn)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'replverify' AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert killed >= 1
        after = scrape_until(
            proc,
            url,
            lambda v: (
                v["replverify_lag_sample_failures_total"] >= 1
                and v["replverify_up"] == 1
                and v["replverify_lag_samples_total"] >= before["replverify_lag_samples_total"] + 2
            ),
        )
        assert after["replverify_lag_seconds"] == 0.0
        os.kill(proc.pid, signal.SIGINT)  # first Ctrl-C: stop, print the summary
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, (stdout, stderr)  # lag was unknown for a while: never 0
    assert "sampling failed, retrying in 0.2 s" in stderr, stderr
    assert "LAG: max lag" in stdout and "attempt(s) to sample failed" in stdout, stdout
