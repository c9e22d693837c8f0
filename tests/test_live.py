"""A busy primary against its streaming standby: the LSN fence leaves no false alarms."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from replverify.api import DiffOptions, diff
from replverify.reports.diff import diff_to_dict
from replverify.testing.servers import wait_for_replay


def on(dsn: str, db: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + db


async def writer(dsn: str, stop: asyncio.Event, counter: list[int], base: int) -> None:
    """Commits as fast as it can: updates of random orders and new orders and lines."""
    rng = random.Random(1)
    conn = await asyncpg.connect(dsn)
    try:
        i = 0
        while not stop.is_set():
            i += 1
            async with conn.transaction():
                await conn.execute(
                    "UPDATE orders SET amount = amount + 1, note = $1 WHERE id = $2",
                    f"w{i}",
                    rng.randint(1, 20_000),
                )
                await conn.execute(
                    "INSERT INTO orders SELECT $1, customer, status, amount, placed_at, items, "
                    "paid, 'new' FROM orders WHERE id = 1",
                    base + i,
                )
                await conn.execute(
                    "INSERT INTO order_lines VALUES ($1, 1, 'SKU', 1, 1.00)", base + i
                )
            counter[0] = i
            await asyncio.sleep(0)
    finally:
        await conn.close()


async def _busy_diff(src: str, tgt: str, fence: bool | None, base: int):
    stop, counter = asyncio.Event(), [0]
    task = asyncio.ensure_future(writer(src, stop, counter, base))
    try:
        await asyncio.sleep(0.3)
        options = DiffOptions(chunk_rows=5_000, tables=("orders", "order_lines"), fence=fence)
        report = await diff(src, tgt, options)
        writes_during = counter[0]
    finally:
        stop.set()
        await task
    assert writes_during > 20, "the writer must really run during the diff"
    return report


async def test_busy_primary_vs_delayed_standby_reports_no_false_differences(clusters, make_db):
    pair = await asyncio.to_thread(clusters.fresh_pair)
    (src,) = await make_db(pair.primary_dsn, rows=10_000)
    tgt = on(pair.standby_dsn, src.rsplit("/", 1)[1])
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    conn = await asyncpg.connect(pair.standby_dsn)
    await conn.execute("ALTER SYSTEM SET recovery_min_apply_delay = '150ms'")
    await conn.execute("SELECT pg_reload_conf()")
    await conn.close()

    # without the fence a lagging standby looks like lost rows...
    unfenced = await _busy_diff(src, tgt, fence=False, base=1_000_000)
    assert unfenced.status == "different"
    # ...with it, nothing is called different that is merely in flight
    report = await _busy_diff(src, tgt, fence=None, base=2_000_000)
    assert any("LSN fence" in n for n in report.notes)
    for t in report.tables:
        assert t.differences == [], diff_to_dict(report)
    assert report.status == "consistent", diff_to_dict(report)
    assert report.complete  # in-flight rows settled on confirmation, none left unstable


async def test_fence_off_on_independent_pair_and_forced_fence_refused(shop):
    primary, _, other = shop
    report = await diff(primary, other, DiffOptions(tables=("orders",)))
    assert not any("LSN fence" in n for n in report.notes)
    import pytest

    from replverify.errors import UsageError

    with pytest.raises(UsageError, match="streaming standby"):
        await diff(primary, other, DiffOptions(tables=("orders",), fence=True))
