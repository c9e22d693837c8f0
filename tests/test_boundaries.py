"""Chunk boundaries of integer keys from the planner's histogram (no index walk): the
ranges still cover every key, rows added since ANALYZE included."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_compare import fresh_pair

from replverify.api import DiffOptions, diff
from replverify.diff import sources
from replverify.diff.ranges import ranges_between
from replverify.diff.sources import cuts_within, histogram_cuts
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


def _chunk_cuts(
    cuts: list[int], keys: list[int], lo: int | None, hi: int | None, every: int, stride: int
) -> list[int]:
    """What ``PostgresSource.chunk_cuts`` makes of ``cuts`` over a table of ``keys``: the
    row-count part modelled as ``split`` runs it (every ``every × stride``-th key)."""
    inside, start, beyond = cuts_within(cuts, lo, hi, stride)
    if not beyond:
        return inside
    rest = [k for k in keys if (start is None or k > start) and (hi is None or k <= hi)]
    return inside + rest[every * stride - 1 :: every * stride]


@given(
    st.lists(st.integers(0, 400), min_size=1, max_size=60, unique=True),
    st.lists(st.integers(0, 500), max_size=120, unique=True),
    st.integers(1, 4),
    st.integers(1, 5),
)
def test_tasks_cut_the_chunks_of_one_cut(
    cuts: list[int], keys: list[int], every: int, stride: int
) -> None:
    # A cluster run's planner cuts the table into tasks of ``stride`` chunks, and each
    # task cuts its range into chunks: they must be the in-process run's chunks.
    cuts, keys = sorted(cuts), sorted(keys)
    whole = ranges_between([(c,) for c in _chunk_cuts(cuts, keys, None, None, every, 1)])
    tasks = ranges_between([(c,) for c in _chunk_cuts(cuts, keys, None, None, every, stride)])
    per_task = []
    for task in tasks:
        lo = None if task.lo is None else int(task.lo[0])  # type: ignore[call-overload]
        hi = None if task.hi is None else int(task.hi[0])  # type: ignore[call-overload]
        chunks = _chunk_cuts(cuts, keys, lo, hi, every, 1)
        per_task += ranges_between([(c,) for c in chunks], task.lo, task.hi)
    assert per_task == whole


def test_cuts_within() -> None:
    cuts = [10, 20, 30, 40, 50]
    assert cuts_within(cuts, None, None) == (cuts, 50, True)
    assert cuts_within(cuts, None, None, stride=2) == ([20, 40, 50], 50, True)
    assert cuts_within(cuts, 20, 40) == ([30], 50, False)  # all inside the statistics
    assert cuts_within(cuts, 40, None, stride=2) == ([50], 50, True)
    assert cuts_within(cuts, 60, 90) == ([], 60, True)  # past them: count from lo
    assert cuts_within([], 5, None) == ([], 5, True)


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
