"""``replverify diff --every S --metrics-port N``: verification that keeps running, scraped
over HTTP from a real run against real servers, and the Grafana dashboard in docs/."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from replverify.cli.main import main
from replverify.lag.metrics import DIFF_METRICS, LAG_METRICS, DiffMetrics, LagMetrics
from replverify.lag.model import LagSample
from replverify.testing.postgres import free_port
from replverify.types import DiffReport, TableRef, TableResult

SECRET = "Dv-pw-52kqz"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode("utf-8"))


def with_password(dsn: str) -> str:
    return dsn.replace("postgres@", f"postgres:{SECRET}@")


ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, labels other than source/target) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            kept = ((k, v) for k, v in s.labels.items() if k not in ("source", "target"))
            labels = tuple(sorted(kept))
            out[(s.name, labels)] = s.value
    return out


def table(name: str, **kw: Any) -> TableResult:
    schema, rel = name.split(".")
    return TableResult(TableRef(schema, rel), ("id",), "primary key", **kw)


# ============================================================== in-process, no database


def test_diff_metrics_follow_the_latest_run() -> None:
    m = DiffMetrics(f"postgresql://app:{SECRET}@db1/shop", "postgresql://app@db2/shop")
    first = series(m.render())
    assert first[("replverify_diff_up", ())] == 0
    assert first[("replverify_diff_runs_total", ())] == 0
    assert not any(name == "replverify_diff_differences" for name, _ in first)
    report = DiffReport(
        "a", "b",
        [table("public.orders", rows_source=10, rows_target=9, differences_total=1,
               elapsed_s=0.5),
         table("public.users", rows_source=3, rows_target=3, error="boom")],
        elapsed_s=0.7,
    )  # fmt: skip
    m.observe(report, ended_at=1000.0)
    v = series(m.render())
    orders, users = (("table", "public.orders"),), (("table", "public.users"),)
    assert v[("replverify_diff_differences", orders)] == 1
    assert v[("replverify_diff_trouble", orders)] == 0
    assert v[("replverify_diff_trouble", users)] == 1
    assert v[("replverify_diff_duration_seconds", orders)] == 0.5
    assert v[("replverify_diff_rows", (("side", "source"), *orders))] == 10
    assert v[("replverify_diff_rows", (("side", "target"), *orders))] == 9
    assert v[("replverify_diff_last_verified_timestamp_seconds", orders)] == 1000.0
    # Not verified: no "last verified" time for it.
    assert ("replverify_diff_last_verified_timestamp_seconds", users) not in v
    assert v[("replverify_diff_up", ())] == 1 and v[("replverify_diff_runs_total", ())] == 1
    assert v[("replverify_diff_run_duration_seconds", ())] == 0.7
    # A failed run keeps the table series and says so; a dropped table's series go.
    m.failed(ended_at=1010.0)
    v = series(m.render())
    assert v[("replverify_diff_up", ())] == 0
    assert v[("replverify_diff_run_failures_total", ())] == 1
    assert v[("replverify_diff_last_run_timestamp_seconds", ())] == 1010.0
    assert v[("replverify_diff_differences", orders)] == 1
    m.observe(DiffReport("a", "b", [table("public.orders", rows_source=10, rows_target=10)]),
              ended_at=1020.0)  # fmt: skip
    v = series(m.render())
    assert v[("replverify_diff_differences", orders)] == 0
    assert not any(labels == users for _, labels in v)
    assert v[("replverify_diff_last_verified_timestamp_seconds", orders)] == 1020.0


def test_metric_name_lists_are_what_is_served() -> None:
    """The name lists the dashboard test relies on are exactly the served series."""
    d = DiffMetrics("postgresql://db1/shop", "postgresql://db2/shop")
    d.observe(DiffReport("a", "b", [table("public.t")]), ended_at=1.0)

    def served(text: str) -> set[str]:  # less prometheus-client's *_created companions
        return {name for name, _ in series(text) if not name.endswith("_created")}

    assert served(d.render()) == set(DIFF_METRICS)
    at = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)
    lag = LagMetrics("postgresql://db1/shop", "postgresql://db2/shop", rpo=1)
    lag.observe(LagSample(at=at, lag_bytes=1, lag_seconds=0.1, method="lsn-history", source_lsn=1))
    assert served(lag.render()) == set(LAG_METRICS)


def test_grafana_dashboard_uses_only_served_metrics() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] and doc["panels"]
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) >= 8
    used = set()
    for expr in exprs:
        used |= set(re.findall(r"\breplverify_[a-z_]+", expr))
    known = set(LAG_METRICS) | set(DIFF_METRICS)
    assert used <= known, used - known
    # Both exporters are on it, and each per-table diff series.
    assert {"replverify_lag_seconds", "replverify_diff_differences", "replverify_diff_trouble",
            "replverify_diff_rows", "replverify_diff_duration_seconds",
            "replverify_diff_last_verified_timestamp_seconds"} <= used  # fmt: skip
    # Every panel's datasource is the dashboard's Prometheus variable.
    assert any(v["type"] == "datasource" for v in doc["templating"]["list"])


def test_options_that_do_not_go_together() -> None:
    runner = CliRunner()
    args = ["diff", "postgresql://a/x", "postgresql://b/x"]
    r = runner.invoke(main, [*args, "--metrics-port", "0"])
    assert r.exit_code == 2 and "--metrics-port needs --every" in r.output
    r = runner.invoke(
        main, ["diff", "postgresql://a/x", "postgresql://b/x", "--every", "5", "--state", "s"]
    )
    assert r.exit_code == 2 and "cannot go with --every" in r.output
    r = runner.invoke(main, ["diff", "postgresql://a/x", "postgresql://b/x", "--every", "0"])
    assert r.exit_code == 2


# ============================================================== a real run, scraped


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "replverify", "diff", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scrape_until(proc: subprocess.Popen[str], url: str, done: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            text = scrape(url)
        except OSError:
            time.sleep(0.1)
            continue
        v = series(text)
        if done(v):
            return v, text
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"timed out scraping {url}: {proc.communicate()}")


async def test_every_serves_the_latest_results_and_ctrl_c_ends_with_the_summary(
    primary_dsn: str, other_dsn: str, make_db: Any
) -> None:
    source, target = await make_db(primary_dsn, other_dsn, rows=300, matrix_rows=10)
    port = free_port()
    proc = start(
        with_password(source), target, "--every", "0.5", "--metrics-port", str(port),
        "-t", "public.customers", "-t", "public.orders", "--format", "json",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    orders = (("table", "public.orders"),)
    try:
        v, text = scrape_until(
            proc, url, lambda v: v.get(("replverify_diff_runs_total", ()), 0) >= 1
        )
        assert v[("replverify_diff_differences", orders)] == 0
        assert v[("replverify_diff_trouble", orders)] == 0
        assert v[("replverify_diff_rows", (("side", "source"), *orders))] > 0
        verified = v[("replverify_diff_last_verified_timestamp_seconds", orders)]
        assert abs(verified - time.time()) < 60
        assert v[("replverify_diff_duration_seconds", orders)] > 0
        assert SECRET not in text
        conn = await asyncpg.connect(target)
        try:
            await conn.execute("DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)")
        finally:
            await conn.close()
        runs = v[("replverify_diff_runs_total", ())]
        v, _ = scrape_until(
            proc, url,
            lambda v: v[("replverify_diff_runs_total", ())] >= runs + 2
            and v[("replverify_diff_differences", orders)] == 1,
        )  # fmt: skip
        assert v[("replverify_diff_last_verified_timestamp_seconds", orders)] > verified
        os.kill(proc.pid, signal.SIGINT)  # first Ctrl-C: stop, print the last summary
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, (stdout, stderr)  # the last run found the deleted row
    doc = json.loads(stdout)
    assert doc["schema"] == "replverify.diff/1" and doc["status"] == "different"
    assert f"serving metrics at {url}" in stderr
    assert re.search(r"Z  consistent  2 tables, [\d,]+ rows, 0 differences", stderr), stderr
    assert re.search(r"Z  different  2 tables, [\d,]+ rows, 1 differences", stderr), stderr
    assert "Traceback" not in stderr and SECRET not in stdout + stderr


def test_unreachable_is_counted_and_retried_then_ctrl_c(primary_dsn: str) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    port = free_port()
    proc = start(primary_dsn, dead, "--every", "0.3", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        v, _ = scrape_until(
            proc, url, lambda v: v.get(("replverify_diff_run_failures_total", ()), 0) >= 2
        )
        assert v[("replverify_diff_up", ())] == 0 and v[("replverify_diff_runs_total", ())] == 0
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, (stdout, stderr)  # nothing was verified: never 0
    assert "verification failed, retrying in 0.3 s" in stderr
    assert "stopped before any verification ended" in stderr and "Traceback" not in stderr
