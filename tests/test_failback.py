"""``replverify failback``: the old primary's own changes after a lossy failover."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
from click.testing import CliRunner

from replverify.api import DiffOptions
from replverify.cli.main import main
from replverify.ops.failback import failback, replay_script
from replverify.testing.clusters import LocalClusters
from replverify.testing.servers import cut_replication, execute, promote, wait_for_replay


async def test_failback_names_old_only_rows_and_replays_them(
    clusters: LocalClusters,
    make_db,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    pair = await asyncio.to_thread(clusters.fresh_pair)
    (old,) = await make_db(pair.primary_dsn, rows=200, matrix_rows=10)
    new = pair.standby_dsn.rsplit("/", 1)[0] + "/" + old.rsplit("/", 1)[1]
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    await cut_replication(pair.standby_dsn)
    # committed on the old primary after the standby was cut off: lost by the failover
    await execute(
        old,
        "INSERT INTO orders SELECT 1001, customer, 'paid', 99.95, placed_at, items, true, "
        "'old only' FROM orders WHERE id = 1",
        "UPDATE orders SET status = 'shipped', amount = 12.50 WHERE id = 5",
        "DELETE FROM order_lines WHERE order_id = 7",
        "DELETE FROM orders WHERE id = 7",
        "UPDATE orders SET note = 'old side' WHERE id = 8",
    )
    await promote(pair.standby_dsn)
    # written on the new primary after its promotion: to keep
    await execute(
        new,
        "INSERT INTO orders SELECT 2001, customer, 'new', 1, placed_at, items, false, "
        "'new only' FROM orders WHERE id = 2",
        "UPDATE orders SET note = 'new side' WHERE id IN (6, 8)",
    )
    opts = DiffOptions(tables=("public.orders", "public.order_lines"))
    report = await failback(old, new, options=opts)
    got = {
        (str(r.table), r.key.get("id", r.key.get("order_id")), r.origin, r.change)
        for r in report.rows
    }
    lines7 = {("public.order_lines", 7, "old_only", "delete")}
    assert (
        got
        == {
            ("public.orders", 1001, "old_only", "insert"),
            ("public.orders", 5, "old_only", "update"),
            ("public.orders", 7, "old_only", "delete"),
            ("public.orders", 8, "conflict", "update"),
            ("public.orders", 2001, "new_only", "insert"),
            ("public.orders", 6, "new_only", "update"),
        }
        | lines7
    ), got
    assert report.can_tell and report.timeline == 2
    assert report.promoted_at is not None and report.divergence_at is not None
    assert report.status == "old_only_changes"

    script = replay_script(report)
    assert "ON CONFLICT DO NOTHING" in script and "IS NOT DISTINCT FROM" in script
    assert "NOT replayed (conflict)" in script
    await execute(new, script)
    await execute(new, script)  # guarded: twice is harmless
    conn = await asyncpg.connect(new)
    try:
        assert await conn.fetchval("SELECT note FROM orders WHERE id = 1001") == "old only"
        assert await conn.fetchval("SELECT status::text FROM orders WHERE id = 5") == "shipped"
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE id = 7") == 0
        assert await conn.fetchval("SELECT note FROM orders WHERE id = 8") == "new side"
        assert await conn.fetchval("SELECT note FROM orders WHERE id = 2001") == "new only"
    finally:
        await conn.close()
    # after the replay only the new primary's own writes (and the conflict) remain
    again = await failback(old, new, options=opts)
    assert {r.origin for r in again.rows} == {"new_only", "conflict"}

    replay = tmp_path / "replay.sql"
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        [
            "failback",
            old,
            new,
            "-t",
            "public.orders",
            "--replay-sql",
            str(replay),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "replverify.failback/1" and doc["counts"]["conflict"] == 1
    assert replay.read_text().startswith("-- replverify failback")
