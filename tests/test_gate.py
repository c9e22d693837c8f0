"""``replverify gate`` on the session's primary and standby."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.api import DiffOptions
from replverify.cli.main import main
from replverify.db.connect import Endpoint
from replverify.errors import UsageError
from replverify.ops.gate import gate
from replverify.testing.clusters import LocalClusters
from replverify.testing.servers import pause_replay, resume_replay


def _db(dsn: str, db: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + db


async def test_gate_waits_for_paused_replay(clusters: LocalClusters, make_db) -> None:  # type: ignore[no-untyped-def]
    # a pair of its own: pausing the shared standby would disturb other tests
    pair = await asyncio.to_thread(clusters.fresh_pair)
    (primary,) = await make_db(pair.primary_dsn, rows=200, matrix_rows=10)
    standby = _db(pair.standby_dsn, primary.rsplit("/", 1)[1])
    opts = DiffOptions(tables=("public.orders", "public.customers"))
    await pause_replay(pair.standby_dsn)
    try:
        conn = await asyncpg.connect(primary)
        try:
            await conn.execute("UPDATE orders SET note = 'gate' WHERE id <= 5")
        finally:
            await conn.close()
        report = await gate(primary, standby, timeout=0.5, options=opts)
        assert report.status == "not_caught_up" and report.diff is None
        assert report.replay_paused and report.lag_bytes
        assert any("SELECT pg_wal_replay_resume()" in n for n in report.notes), report.notes
        result = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["gate", primary, standby, "--timeout", "0.3", "--format", "json"],
        )
        assert result.exit_code == 1, result.output
        doc = json.loads(result.output)
        assert doc["schema"] == "replverify.gate/1" and doc["status"] == "not_caught_up"

        async def resume_later() -> None:
            await asyncio.sleep(0.6)
            await resume_replay(pair.standby_dsn)

        resumer = asyncio.create_task(resume_later())
        ticks: list[int] = []
        report = await gate(
            primary, standby, timeout=20, options=opts, progress=lambda b, s: ticks.append(b)
        )
        await resumer
    finally:
        await resume_replay(pair.standby_dsn)
    assert report.status == "safe", report.notes
    assert report.caught_up and report.waited_s >= 0.5 and ticks
    assert report.diff is not None and report.diff.status == "consistent"
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["gate", primary, standby, "--timeout", "10"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("SAFE")


async def test_gate_refuses_a_target_that_is_not_a_standby(clusters: LocalClusters) -> None:
    with pytest.raises(UsageError, match=r"not a physical standby|another cluster"):
        await gate(clusters.primary_dsn, clusters.other_dsn, timeout=1)
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["gate", clusters.primary_dsn, clusters.other_dsn]
    )
    assert result.exit_code == 2


async def test_gate_fence_makes_the_source_read_only(clusters: LocalClusters) -> None:
    pair = await asyncio.to_thread(clusters.fresh_pair)
    conn = await asyncpg.connect(pair.primary_dsn)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO t SELECT generate_series(1, 50)")
        report = await gate(pair.primary_dsn, pair.standby_dsn, timeout=20, fence=True)
        assert report.status == "safe" and report.fenced, report.notes
        assert any("ALTER SYSTEM RESET" in n for n in report.notes)
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("INSERT INTO t VALUES (51)")
    finally:
        await conn.close()


async def test_gate_parses_each_dsn_once(clusters: LocalClusters, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The DSNs are parsed into endpoints once; the wait, the fence and the diff use
    those endpoints (the diff does not parse the strings again)."""
    parsed: list[str] = []
    real = Endpoint.parse.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Endpoint], dsn: str) -> Endpoint:
        parsed.append(dsn)
        return real(cls, dsn)  # type: ignore[no-any-return]

    monkeypatch.setattr(Endpoint, "parse", classmethod(counting))
    report = await gate(clusters.primary_dsn, clusters.standby_dsn, timeout=20)
    assert report.diff is not None, report.notes
    assert parsed == [clusters.primary_dsn, clusters.standby_dsn]
