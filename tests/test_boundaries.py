"""Chunk boundaries of integer keys from the planner's histogram (no index walk): the
ranges still cover every key, rows added since ANALYZE included."""

from __future__ import annotations

import pytest
from test_compare import fresh_pair

from replverify.api import DiffOptions, diff
from replverify.diff import sources
from replverify.diff.sources import histogram_cuts
from replverify.types import Changed, Extra, Missing


def test_histogram_cuts() -> None:
    bounds = list(range(0, 1_000_001, 10_000))
    assert histogram_cuts(bounds, 1_000_000, 10_000) == bounds[1:]
    five = histogram_cuts(list(range(0, 5_000_001, 50_000)), 5_000_000, 10_000)
    assert len(five) == 500 and five[:2] == [10_000, 20_000] and five[-1] == 5_000_000
    # a skewed key: buckets are equal in rows, not in key span
    skewed = histogram_cuts([1, 2, 3, 10**12], 300, 50)
    assert skewed[:2] == [1, 2] and skewed[-1] == 10**12
    assert histogram_cuts([1, 5], 3, 10) == []  # one chunk: nothing to cut
    assert histogram_cuts([7], 1000, 10) == []


FILL = (
    "CREATE TABLE h (id bigint PRIMARY KEY, v text);"
    "INSERT INTO h SELECT i, md5(i::text) FROM generate_series(1, 20000) i; ANALYZE h;"
)


async def test_chunks_from_statistics_cover_every_key(
    primary_dsn: str, other_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "HISTOGRAM_BOUNDARIES", True)
    # after ANALYZE: rows past its last key, a changed row and a row only the target has
    later = "INSERT INTO h SELECT i, md5(i::text) FROM generate_series(20001, 26000) i;"
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        FILL + later,
        FILL + later + "UPDATE h SET v = 'x' WHERE id = 25000; DELETE FROM h WHERE id = 7;"
        "INSERT INTO h VALUES (-5, 'below')",
    )
    report = await diff(src, tgt, DiffOptions(chunk_rows=1_000))
    (table,) = report.tables
    assert table.rows_source == 26_000 and table.rows_target == 26_000
    kinds = {(type(d), d.key) for d in table.differences}
    assert kinds == {(Changed, (25000,)), (Missing, (7,)), (Extra, (-5,))}
    # about 20 chunks from the histogram, 6 more from the walk past its end
    assert 20 <= table.chunks <= 32, table.chunks
