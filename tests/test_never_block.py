"""A verification never holds up production: an ALTER TABLE on the source while the
table is being compared waits well under a second (what the diff then reports is
tests/test_unreadable.py's: compared again from the start, never mixed)."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from replverify.api import DiffOptions, diff


async def _timed_alter(dsn: str, sql: str, took: list[float]) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": "10s"})
    try:
        started = time.perf_counter()
        await conn.execute(sql)
        took.append(time.perf_counter() - started)
        took.append(time.perf_counter())  # when it was done
    finally:
        await conn.close()


async def test_an_alter_on_the_source_mid_diff_waits_under_a_second(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=30_000)
    took: list[float] = []
    tasks: list[asyncio.Future[None]] = []
    alter = "ALTER TABLE orders ADD COLUMN extra int DEFAULT 7"

    def progress(ref, done, estimate):
        # well inside the table: its reads are running on both sides right now
        if ref.name == "orders" and done >= 3_000 and not tasks:
            tasks.append(asyncio.ensure_future(_timed_alter(src, alter, took)))

    for jobs in (1, 4):
        took.clear()
        tasks.clear()
        report = await diff(
            src, tgt, DiffOptions(tables=("orders",), chunk_rows=300, jobs=jobs), progress=progress
        )
        finished = time.perf_counter()
        await asyncio.gather(*tasks)
        assert took, "the ALTER never ran"
        assert took[0] < 1.0, f"ALTER TABLE waited {took[0]:.2f} s behind the diff (jobs={jobs})"
        (orders,) = report.tables
        assert took[1] < finished, "the ALTER ended after the diff: nothing was measured"
        # one definition throughout: the new column on the source, compared as such
        assert orders.schema_differences == ("column extra (integer) only on source",)
        assert any("definition changed on the source" in n for n in report.notes)
        conn = await asyncpg.connect(src)
        await conn.execute("ALTER TABLE orders DROP COLUMN extra")
        await conn.close()
