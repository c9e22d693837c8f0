"""Reports that must not mislead (issue 12, items 6-8): a paused standby, stale notes of
``lag``, progress over a whole database. Real PostgreSQL; pairs that get paused are
fresh (``clusters.fresh_pair()``)."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.cli.main import main
from replverify.reports.diff import fmt_chance
from replverify.testing.servers import pause_replay, resume_replay


def _db(dsn: str, db: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + db


@pytest.fixture(scope="module")
def pair(clusters):  # type: ignore[no-untyped-def]
    """A disposable primary + standby: these tests pause its replay."""
    p = clusters.fresh_pair()
    try:
        yield p
    finally:
        p.close()


async def _execute(dsn: str, *sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for s in sql:
            await conn.execute(s)
    finally:
        await conn.close()


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


async def test_fenced_diff_on_a_paused_standby_says_replay_is_paused(pair, make_db) -> None:  # type: ignore[no-untyped-def]
    (primary,) = await make_db(pair.primary_dsn, rows=200, matrix_rows=10)
    standby = _db(pair.standby_dsn, primary.rsplit("/", 1)[1])
    from replverify.testing.servers import wait_for_replay

    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    await pause_replay(pair.standby_dsn)
    try:
        await _execute(primary, "UPDATE orders SET note = 'paused' WHERE id <= 5")
        args = ["diff", primary, standby, "-t", "orders", "-t", "customers"]
        text = await asyncio.to_thread(_invoke, *args, "--lag-timeout", "30")
        doc_run = await asyncio.to_thread(_invoke, *args, "--lag-timeout", "30", "--format", "json")
        md = await asyncio.to_thread(_invoke, *args, "--format", "markdown")
        html = await asyncio.to_thread(_invoke, *args, "--format", "html")
    finally:
        await resume_replay(pair.standby_dsn)
    assert text.exit_code == 2, text.output
    out = text.output
    assert "raise --lag-timeout" not in out
    assert "replay is paused" in out and "SELECT pg_wal_replay_resume()" in out
    assert "INCOMPLETE: 2 tables, 0 differing, 2 not verified, 0 differences" in out
    assert "0e+00" not in out and "no chunk was compared" in out
    doc = json.loads(doc_run.output)
    assert doc["schema"] == "replverify.diff/1" and doc["complete"] is False
    summary = doc["summary"]
    assert (summary["tables_different"], summary["tables_unverified"]) == (0, 2)
    assert {"tables", "rows_compared", "differences", "elapsed_s"} <= set(summary)
    assert "2 tables, 0 differing, 2 not verified" in md.output
    assert "tables not verified" in html.output


def test_collision_bound_is_readable() -> None:
    assert fmt_chance(0.0) == "0"
    assert fmt_chance(2.0**-120) == "7.5e-37 (about 2^-120)"
    assert fmt_chance(0.25) == "0.25"


async def test_lag_paused_note_names_the_paused_samples_and_the_resume(pair) -> None:  # type: ignore[no-untyped-def]
    from replverify.lag.model import LagSample
    from replverify.lag.sampler import measure_lag
    from replverify.reports.lag import lag_to_text

    async def pause_then_resume(s: LagSample) -> None:
        taken.append(s)
        if len(taken) == 1:
            await pause_replay(pair.standby_dsn)
        elif len(taken) == 3:
            await resume_replay(pair.standby_dsn)

    taken: list[LagSample] = []
    try:
        report = await measure_lag(
            pair.primary_dsn, pair.standby_dsn, samples=5, interval=0.2,
            on_sample=pause_then_resume,
        )  # fmt: skip
    finally:
        await resume_replay(pair.standby_dsn)
    assert [s.replay_paused for s in report.samples] == [False, True, True, False, False]
    (note,) = [n for n in report.notes if "paused" in n]
    assert "samples 2-3" in note and "of 5" in note and "replaying again from sample 4" in note
    assert "still paused" not in note
    assert report.replication.replay_paused is False
    text = lag_to_text(report)
    assert "replay     paused" not in text and "replaying again from sample 4" in text


def test_paused_note_still_paused_at_the_end() -> None:
    from datetime import datetime, timedelta, timezone

    from replverify.lag.model import LagSample, paused_note

    t0 = datetime(2026, 12, 2, 1, 0, tzinfo=timezone.utc)
    samples = [
        LagSample(t0 + timedelta(seconds=i), 0, 0.0, "caught-up", 0, replay_paused=p)
        for i, p in enumerate([True, False, True, True])
    ]
    note = paused_note(samples)
    assert note is not None
    assert "sample 1 (01:00:00.000), samples 3-4 (01:00:02.000 to 01:00:03.000) of 4" in note
    assert "still paused at the last sample" in note and "pg_wal_replay_resume()" in note
    assert paused_note(samples[1:2]) is None


def test_progress_line_labels_each_table_with_its_own_count() -> None:
    from replverify.cli.progress import DiffProgress, fmt_duration
    from replverify.types import TableRef

    a, b, c = TableRef("public", "a"), TableRef("public", "b"), TableRef("public", "c")
    p = DiffProgress()
    for t, est in ((a, 1000), (b, 3000), (c, 6000)):
        p.update(t, 0, est)
    p.update(a, 1000, 1000)
    p.update(b, 500, 3000)
    line = p.line(elapsed=1.0)
    assert line.startswith("table 2/3 public.b  500 / 3,000 rows")
    assert "all: 1,500 / 10,000 rows, 1,500 rows/s, ETA 6 s" in line
    p.update(c, 7000, 6000)  # more rows than estimated: the estimate grows
    assert p.line(elapsed=10.0).startswith("table 3/3 public.c  7,000 / 7,000 rows")
    assert (fmt_duration(42.4), fmt_duration(200), fmt_duration(7500)) == (
        "42 s",
        "3 min 20 s",
        "2 h 05 min",
    )


async def test_progress_of_a_whole_database_before_analyze(clusters, make_db) -> None:  # type: ignore[no-untyped-def]
    from replverify.api import DiffOptions, diff
    from replverify.cli.progress import DiffProgress
    from replverify.db import catalog

    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=300, matrix_rows=10)
    for dsn in (src, tgt):
        await _execute(
            dsn,
            "CREATE TABLE fresh (id int PRIMARY KEY, note text)",
            "INSERT INTO fresh SELECT g, 'row ' || g FROM generate_series(1, 20000) g",
        )
    conn = await asyncpg.connect(src)
    try:
        assert await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'fresh'") == -1
        tables = await catalog.load_tables(conn)
    finally:
        await conn.close()
    estimate = next(t.estimated_rows for r, t in tables.items() if r.name == "fresh")
    assert 20000 / 3 < estimate < 20000 * 3  # from the heap's size: an ETA before ANALYZE

    calls: list[tuple[str, int, int]] = []
    state = DiffProgress()
    lines: list[str] = []

    def progress(table, done, est):  # type: ignore[no-untyped-def]
        calls.append((str(table), done, est))
        state.update(table, done, est)
        lines.append(state.line(1.0))

    report = await diff(src, tgt, DiffOptions(chunk_rows=1000, jobs=1), progress=progress)
    names = [t.table.qualified for t in report.tables]
    n = len(names)
    assert sorted(c[0] for c in calls[:n]) == names and all(c[1] == 0 for c in calls[:n])
    assert all(done <= est for _, done, est in calls)
    assert any(f"table {i}/{n} " in line for line in lines for i in range(2, n + 1))
    for t in report.tables:  # each table ends at its own size, not the run's
        assert (str(t.table), t.rows_source, t.rows_source) in calls
