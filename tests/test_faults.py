"""Faults during a run: a side dying mid-diff gives a partial report and exit 2."""

from __future__ import annotations

import asyncio

from replverify.api import DiffOptions, diff
from replverify.cli import diff_exit_code
from replverify.report import diff_to_dict, diff_to_text
from replverify.testing import wait_for_replay


async def test_target_dying_mid_diff_gives_partial_report(clusters, make_db):
    pair = await asyncio.to_thread(clusters.fresh_pair)
    (src,) = await make_db(pair.primary_dsn, rows=60_000)
    tgt = pair.standby.dsn(src.rsplit("/", 1)[1])
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    killed: list[asyncio.Task[None]] = []

    def progress(table, done, estimate):
        if done >= 5_000 and not killed:
            killed.append(asyncio.ensure_future(asyncio.to_thread(pair.standby.stop, "immediate")))

    options = DiffOptions(tables=("orders",), chunk_rows=1_000, jobs=1)
    report = await diff(src, tgt, options, progress=progress)
    await asyncio.gather(*killed)
    assert killed, "the target was never stopped"
    (orders,) = report.tables
    assert orders.error and "target" in orders.error and "not checked" in orders.error
    assert 5_000 <= orders.rows_source < 60_000  # what was verified before the fault
    assert not report.complete and diff_exit_code(report) == 2
    assert diff_to_dict(report)["tables"][0]["verified"] is False
    assert "NOT VERIFIED" in diff_to_text(report) and "INCOMPLETE" in diff_to_text(report)
