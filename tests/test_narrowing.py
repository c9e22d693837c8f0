"""Narrowing cost grows with the differences, not with the chunk: on real servers, the
keys that differ are found in the COPY streams already read, and only those rows are
read again."""

from __future__ import annotations

import asyncpg
import pytest

from replverify.api import DiffOptions, diff
from replverify.diff import table as diff_table
from replverify.diff.machine import TableComparison
from replverify.testing.servers import execute
from replverify.types import Changed, Extra, Missing


@pytest.fixture
def machines(monkeypatch):
    """Every TableComparison the diff makes (a spy: the comparison itself runs as is)."""
    made: list[TableComparison] = []

    class Recorded(TableComparison):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(diff_table, "TableComparison", Recorded)
    return made


@pytest.fixture(scope="module")
async def pair(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=10, matrix_rows=1)
    create = (
        "CREATE TABLE wide_int (id bigint PRIMARY KEY, v text, n numeric)",
        "INSERT INTO wide_int SELECT g, md5(g::text), g / 7.0 FROM generate_series(1, 30000) g",
        "CREATE TABLE by_text (k text PRIMARY KEY, v int)",
        "INSERT INTO by_text SELECT 'Key-' || md5(g::text), g FROM generate_series(1, 30000) g",
    )
    await execute(src, *create)
    await execute(tgt, *create)
    await execute(
        tgt,
        "UPDATE wide_int SET n = -n WHERE id = 5000",
        "DELETE FROM wide_int WHERE id = 15000",
        "INSERT INTO wide_int VALUES (30001, 'new', 1)",
        "UPDATE by_text SET v = -v WHERE v = 12345",
    )
    return src, tgt


async def test_single_differences_are_located_without_rereading_chunks(pair, machines):
    src, tgt = pair
    key_12345 = await _text_key(src, 12345)
    report = await diff(
        src, tgt, DiffOptions(tables=("wide_int", "by_text"), chunk_rows=10_000, digest="copy")
    )
    by_name = {t.table.name: t for t in report.tables}
    assert set(by_name["wide_int"].differences) == {
        Changed((5000,), ("n",)),
        Missing((15000,)),
        Extra((30001,)),
    }
    assert by_name["by_text"].differences == [Changed((key_12345,), ("v",))]
    for m in machines:
        assert m.stats.chunks_mismatched >= 1
        assert m.stats.chunks_located == m.stats.chunks_mismatched
        # just the differing rows are read, not the 10,000 of a chunk
        assert m.stats.rows_hashed == 0
        assert m.stats.rows_fetched <= 2 * m.differences_total


async def test_without_a_decodable_key_the_parts_are_digested_together(pair, machines):
    src, tgt = pair
    report = await diff(
        src, tgt, DiffOptions(tables=("wide_int",), chunk_rows=10_000, digest="server")
    )
    assert report.tables[0].differences_total == 3
    (m,) = machines
    assert m.stats.chunks_located == 0
    # each mismatching chunk: itself, then its 16 parts in one grouped query per side
    assert m.stats.ranges_digested <= m.stats.chunks + 16 * m.stats.chunks_mismatched


async def _text_key(dsn: str, v: int) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT k FROM by_text WHERE v = $1", v)
    finally:
        await conn.close()


async def test_a_chunk_too_big_to_keep_is_narrowed_by_splitting(pair, machines, monkeypatch):
    from replverify.diff.sources import PostgresSource

    monkeypatch.setattr(PostgresSource, "keep_stream_bytes", 100_000)  # < a 10k-row chunk
    src, tgt = pair
    report = await diff(
        src, tgt, DiffOptions(tables=("wide_int",), chunk_rows=10_000, digest="copy")
    )
    assert set(report.tables[0].differences) == {
        Changed((5000,), ("n",)),
        Missing((15000,)),
        Extra((30001,)),
    }
    (m,) = machines
    # the two full chunks were split; only the one-row tail chunk fitted
    assert m.stats.chunks_mismatched == 3 and m.stats.chunks_located == 1
    assert m.stats.ranges_digested > m.stats.chunks
