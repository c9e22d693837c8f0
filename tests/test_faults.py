"""Faults during a run: a side dying mid-diff gives a partial report and exit 2."""

from __future__ import annotations

import asyncio

from replverify.api import DiffOptions, diff
from replverify.cli.diff import diff_exit_code
from replverify.reports.diff import diff_to_dict, diff_to_text
from replverify.testing.servers import wait_for_replay


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


async def test_interrupted_diff_resumes_from_state_to_the_same_verdict(clusters, make_db, tmp_path):
    import asyncpg

    pair = await asyncio.to_thread(clusters.fresh_pair)
    src, tgt = await make_db(clusters.other_dsn, pair.primary_dsn, rows=60_000)
    conn = await asyncpg.connect(tgt)
    await conn.execute("DELETE FROM orders WHERE id IN (10, 30000, 59999)")
    await conn.execute("UPDATE orders SET paid = NOT paid WHERE id = 45000")
    await conn.close()
    state = tmp_path / "state.jsonl"
    options = DiffOptions(tables=("orders",), chunk_rows=1_000, jobs=1, state=str(state))
    killed: list[asyncio.Task[None]] = []

    def progress(table, done, estimate):
        if done >= 20_000 and not killed:
            killed.append(asyncio.ensure_future(asyncio.to_thread(pair.primary.stop, "immediate")))

    first = await diff(src, tgt, options, progress=progress)
    await asyncio.gather(*killed)
    assert diff_exit_code(first) == 2
    verified = len(state.read_text().splitlines()) - 1
    assert verified >= 15  # chunks found equal before the target died

    await asyncio.to_thread(pair.primary.start)
    resumed = await diff(src, tgt, options)
    whole = await diff(src, tgt, DiffOptions(tables=("orders",), chunk_rows=1_000))
    assert resumed.complete and diff_exit_code(resumed) == 1
    assert resumed.tables[0].differences == whole.tables[0].differences
    assert len(resumed.tables[0].differences) == 4
    assert resumed.tables[0].rows_source == whole.tables[0].rows_source == 60_000
    assert "password" not in state.read_text()


async def test_state_file_of_another_comparison_is_refused(shop, tmp_path):
    import pytest

    from replverify.errors import UsageError

    primary, _, other = shop
    state = str(tmp_path / "s.jsonl")
    await diff(primary, other, DiffOptions(tables=("orders",), state=state))
    with pytest.raises(UsageError, match="another comparison"):
        await diff(primary, other, DiffOptions(tables=("customers",), state=state))


# ------------------------------------------------------------- issue 19: more faults


async def test_source_dying_mid_diff_gives_partial_report(clusters, make_db):
    pair = await asyncio.to_thread(clusters.fresh_pair)
    src, tgt = await make_db(pair.primary_dsn, clusters.other_dsn, rows=60_000)
    killed: list[asyncio.Task[None]] = []

    def progress(table, done, estimate):
        if done >= 5_000 and not killed:
            killed.append(asyncio.ensure_future(asyncio.to_thread(pair.primary.stop, "immediate")))

    options = DiffOptions(tables=("orders",), chunk_rows=1_000, jobs=1)
    report = await diff(src, tgt, options, progress=progress)
    await asyncio.gather(*killed)
    assert killed, "the source was never stopped"
    (orders,) = report.tables
    assert orders.error and "source" in orders.error
    assert 5_000 <= orders.rows_source < 60_000
    assert not report.complete and diff_exit_code(report) == 2
    await asyncio.to_thread(pair.close)


async def test_both_restarted_mid_run_then_resume_gives_the_verdict(clusters, make_db, tmp_path):
    pair = await asyncio.to_thread(clusters.fresh_pair)
    (src,) = await make_db(pair.primary_dsn, rows=60_000)
    tgt = pair.standby.dsn(src.rsplit("/", 1)[1])
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    state = tmp_path / "state.jsonl"
    options = DiffOptions(tables=("orders",), chunk_rows=1_000, jobs=1, state=str(state))
    restarted: list[asyncio.Task[None]] = []

    def restart_both() -> None:
        pair.standby.stop("immediate")
        pair.primary.stop("immediate")
        pair.primary.start()
        pair.standby.start()

    def progress(table, done, estimate):
        if done >= 10_000 and not restarted:
            restarted.append(asyncio.ensure_future(asyncio.to_thread(restart_both)))

    first = await diff(src, tgt, options, progress=progress)
    await asyncio.gather(*restarted)
    assert restarted
    # either the retries rode out the restart, or the run says it is incomplete
    assert (first.complete and diff_exit_code(first) == 0) or diff_exit_code(first) == 2
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    resumed = await diff(src, tgt, options)
    assert resumed.complete and diff_exit_code(resumed) == 0
    assert resumed.tables[0].rows_source == 60_000
    await asyncio.to_thread(pair.close)


async def test_a_connection_cut_mid_copy_is_retried_to_the_right_verdict(clusters, make_db):
    from replverify.testing.proxy import CutProxy

    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=30_000)
    conn = await asyncpg_connect(tgt)
    await conn.execute("DELETE FROM orders WHERE id IN (5, 25000)")
    await conn.close()
    port = int(tgt.rsplit(":", 1)[1].split("/", 1)[0])
    async with CutProxy(port, cut_after=400_000) as proxy:
        via = tgt.replace(f":{port}/", f":{proxy.port}/")

        async def heal() -> None:
            while not proxy.refusing:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            proxy.cut_after = None
            proxy.heal()

        healer = asyncio.ensure_future(heal())
        options = DiffOptions(tables=("orders",), chunk_rows=1_000, jobs=2, digest="copy")
        report = await diff(src, via, options)
        await healer
    assert proxy.cuts > 0
    assert report.complete, report.tables[0].error
    assert {d.key for d in report.tables[0].differences} == {(5,), (25000,)}


async def asyncpg_connect(dsn: str):
    import asyncpg

    return await asyncpg.connect(dsn)
