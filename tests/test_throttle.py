"""Throttling on production: --max-load, --max-lag, --chunk-time, --max-connections."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.api import DiffOptions, diff
from replverify.cli.main import main
from replverify.diff.throttle import MAX_CHUNK_ROWS, MIN_CHUNK_ROWS, Throttle, adapt_chunk_rows
from replverify.errors import UsageError
from replverify.reports.diff import diff_to_dict
from replverify.testing.servers import wait_for_replay


def test_chunk_size_moves_towards_the_chunk_time_by_at_most_a_factor_of_2():
    assert adapt_chunk_rows(1000, 1000, 0.25, 0.5) == 2000  # fast: grow (ideal 2000)
    assert adapt_chunk_rows(1000, 1000, 0.05, 0.5) == 2000  # ideal 10,000: capped at 2x
    assert adapt_chunk_rows(1000, 1000, 2.0, 0.5) == 500  # slow: shrink by 2 at most
    assert adapt_chunk_rows(1000, 1000, 0.6, 0.5) == 833
    assert adapt_chunk_rows(150, 150, 10.0, 0.5) == MIN_CHUNK_ROWS
    assert adapt_chunk_rows(MAX_CHUNK_ROWS, MAX_CHUNK_ROWS, 0.01, 0.5) == MAX_CHUNK_ROWS
    assert adapt_chunk_rows(1000, 0, 0.0, 0.5) == 1000  # an empty chunk says nothing


async def test_chunk_time_adapts_chunk_size_in_process(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=20_000)
    fixed = await diff(src, tgt, DiffOptions(tables=("orders",), chunk_rows=100))
    adapted = await diff(src, tgt, DiffOptions(tables=("orders",), chunk_rows=100, chunk_time=0.5))
    assert fixed.tables[0].chunks == 201
    # 100-row chunks take milliseconds: the size doubles chunk after chunk
    assert adapted.tables[0].chunks < 40
    assert adapted.tables[0].rows_source == 20_000 and adapted.status == "consistent"


async def _busy(dsn: str, backends: int) -> list[asyncio.Task[object]]:
    """``backends`` sessions active on ``dsn`` until their tasks are cancelled."""
    conns = [await asyncpg.connect(dsn) for _ in range(backends)]

    async def sleep(conn: asyncpg.Connection) -> object:
        try:
            return await conn.fetchval("SELECT pg_sleep(60)")
        finally:
            await conn.close()

    tasks = [asyncio.ensure_future(sleep(c)) for c in conns]
    await asyncio.sleep(0.3)  # until the server sees them active
    return tasks


@pytest.mark.parametrize("executor", ["inprocess", "local:1"])
async def test_max_load_pauses_while_the_source_is_busy(clusters, make_db, executor, monkeypatch):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=2_000)
    busy = await _busy(src, 2)
    seen = asyncio.Event()  # the throttle found the source too busy (a cluster may be slow)
    over = Throttle._over

    async def spy(self: Throttle) -> str | None:
        reason = await over(self)
        if reason == "load":
            seen.set()
        return reason

    monkeypatch.setattr(Throttle, "_over", spy)

    async def calm_down_later() -> None:
        await seen.wait()
        await asyncio.sleep(2.0)
        watch = await asyncpg.connect(src)
        try:
            await watch.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                " WHERE query = 'SELECT pg_sleep(60)'"
            )
        finally:
            await watch.close()

    calm = asyncio.ensure_future(calm_down_later())
    options = DiffOptions(tables=("orders",), max_load=1, executor=executor)
    try:
        report = await diff(src, tgt, options)
        await calm
    finally:
        await asyncio.gather(*busy, return_exceptions=True)
    assert report.status == "consistent" and report.complete
    assert report.paused is not None and report.paused.get("load", 0) >= 1.0
    assert "lag" not in report.paused
    doc = diff_to_dict(report)
    assert doc["summary"]["paused_s"]["load"] >= 1.0
    assert any("more than 1 active backends (--max-load)" in n for n in doc["notes"])


async def test_an_unthrottled_report_has_no_pause_figures(shop):
    src, _, other = shop
    report = await diff(src, other, DiffOptions(tables=("orders",)))
    assert report.paused is None and "paused_s" not in diff_to_dict(report)["summary"]


async def test_max_lag_pauses_while_the_standby_lags(clusters, make_db):
    (src,) = await make_db(clusters.primary_dsn, rows=2_000)
    db = src.rsplit("/", 1)[1]
    tgt = clusters.standby_dsn.rsplit("/", 1)[0] + "/" + db
    await wait_for_replay(clusters.primary_dsn, clusters.standby_dsn)
    standby = await asyncpg.connect(tgt)
    primary = await asyncpg.connect(src)
    try:
        await primary.execute("CREATE TABLE scratch (i int)")
        await wait_for_replay(clusters.primary_dsn, clusters.standby_dsn)
        await standby.execute("SELECT pg_wal_replay_pause()")
        await primary.execute("INSERT INTO scratch VALUES (1)")
        await asyncio.sleep(1.2)  # the standby is now behind by at least this

        async def resume_later() -> None:
            await asyncio.sleep(2.0)
            await standby.execute("SELECT pg_wal_replay_resume()")

        resume = asyncio.ensure_future(resume_later())
        options = DiffOptions(tables=("orders",), max_lag=0.5, fence=False)
        report = await diff(src, tgt, options)
        await resume
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")
        await standby.close()
        await primary.close()
    assert report.status == "consistent" and report.complete
    assert report.paused is not None and report.paused.get("lag", 0) >= 1.0
    assert any("replay lag exceeded 0.5 s (--max-lag)" in n for n in report.notes)


async def test_max_lag_needs_a_standby(shop):
    src, _, other = shop
    with pytest.raises(UsageError, match="--max-lag needs a target that is a streaming standby"):
        await diff(src, other, DiffOptions(max_lag=1))


async def test_max_connections_beyond_what_the_server_has_free_is_refused(shop):
    src, _, other = shop
    async with asyncpg.create_pool(src, min_size=1, max_size=1) as pool:
        most = int(await pool.fetchval("SHOW max_connections"))
    too_many = r"\d+ connections on the source \(--max-connections\): it allows"
    with pytest.raises(UsageError, match=too_many):
        await diff(src, other, DiffOptions(max_connections=most + 5, jobs=most + 5))
    # within the budget: jobs are capped so the source holds at most N connections
    report = await diff(src, other, DiffOptions(max_connections=2, jobs=8, tables=("orders",)))
    assert report.status == "consistent"


def test_cli_takes_the_scale_options(shop):
    src, _, other = shop
    result = CliRunner().invoke(
        main,
        ["diff", src, other, "-t", "orders", "--max-connections", "4", "--max-load", "1000",
         "--chunk-time", "0.2", "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert '"paused_s"' in result.output
    bad = CliRunner().invoke(main, ["diff", src, other, "--executor", "ray://x"])
    assert bad.exit_code == 2 and "--executor 'ray://x'" in bad.output


async def test_explicit_chunk_rows_keeps_chunks_fixed(shop):
    import click

    from replverify.cli.options import scale_settings

    ctx = click.Context(main)
    ctx.set_parameter_source("chunk_rows", click.core.ParameterSource.COMMANDLINE)
    assert scale_settings(ctx, "inprocess", None, None, None, 0.5)["chunk_time"] is None
    ctx.set_parameter_source("chunk_rows", click.core.ParameterSource.DEFAULT)
    assert scale_settings(ctx, "inprocess", None, None, None, 0.5)["chunk_time"] == 0.5
    assert scale_settings(ctx, "inprocess", None, None, None, 0)["chunk_time"] is None
    assert dataclasses.replace(DiffOptions(), chunk_time=0.5).chunk_time == 0.5
