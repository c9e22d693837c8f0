"""The I/O-free comparison: scripted answers and in-memory sources, no database."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replverify.diff.driver import Sides, run
from replverify.diff.hashing import ChunkDigest
from replverify.diff.machine import (
    NeedBoundary,
    NeedDigest,
    NeedDigests,
    NeedRowHashes,
    NeedRows,
    NeedSplit,
    TableComparison,
)
from replverify.diff.ranges import KeyRange, ranges_between, split_step
from replverify.testing.memory import MemorySource, run_in_memory
from replverify.types import Changed, Extra, Missing


def compare_cols(a, b):
    return tuple(f"c{i}" for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


def hasher(values):
    return hash(("salt", *values)) & ((1 << 64) - 1)


# -- plan ---------------------------------------------------------------------------------
def test_ranges_between_cover_exactly_and_drop_repeats():
    rs = ranges_between([(3,), (3,), (7,), (10,)], lo=(0,), hi=(10,))
    assert rs == [KeyRange((0,), (3,)), KeyRange((3,), (7,)), KeyRange((7,), (10,))]
    assert ranges_between([]) == [KeyRange()]


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_split_step_makes_at_most_parts(rows, parts):
    step = split_step(rows, parts)
    assert step >= 1
    assert -(-rows // step) <= max(parts, 1) or rows == 0


# -- scripted -----------------------------------------------------------------------------
def test_equal_chunks_need_no_narrowing():
    m = TableComparison(compare_cols, chunk_rows=10, walk_boundaries=False)
    (split,) = m.start()
    assert isinstance(split, NeedSplit) and split.top and split.every == 10
    digests = m.feed(split, [(10,), (20,)])
    assert [d.range for d in digests] == [
        KeyRange(None, (10,)),
        KeyRange((10,), (20,)),
        KeyRange((20,), None),
    ]
    for d in digests:
        assert m.feed(d, (ChunkDigest(10, 5), ChunkDigest(10, 5))) == []
    assert m.done and m.differences == [] and m.stats.chunks == 3
    assert m.stats.rows_source == 30


def test_mismatch_goes_split_then_rows_then_changed():
    m = TableComparison(
        compare_cols, chunk_rows=100, leaf_rows=10, split_factor=4, walk_boundaries=False
    )
    (split,) = m.start()
    (digest,) = m.feed(split, [])
    (sub,) = m.feed(digest, (ChunkDigest(40, 1), ChunkDigest(39, 2)))
    assert isinstance(sub, NeedSplit) and sub.side == "source" and sub.every == 10
    (parts,) = m.feed(sub, [(10,), (20,), (30,)])
    assert isinstance(parts, NeedDigests) and len(parts.ranges) == 4
    src = [ChunkDigest(10, 1)] * 4
    tgt = [ChunkDigest(10, 1 if i != 2 else 2) for i in range(4)]
    (hashes,) = m.feed(parts, (src, tgt))
    assert isinstance(hashes, NeedRowHashes) and hashes.range == KeyRange((20,), (30,))
    (rows,) = m.feed(hashes, ({(21,): 1, (22,): 2, (23,): 3}, {(22,): 2, (23,): 9, (24,): 4}))
    assert isinstance(rows, NeedRows) and rows.keys == ((23,),)
    assert m.feed(rows, ({(23,): ("a", 1)}, {(23,): ("a", 2)})) == []
    assert m.done
    assert set(m.differences) == {Missing((21,)), Extra((24,)), Changed((23,), ("c1",))}


def test_rows_equal_after_canonical_compare_are_not_differences():
    m = TableComparison(lambda a, b: (), chunk_rows=10, walk_boundaries=False)
    (split,) = m.start()
    (digest,) = m.feed(split, [])
    (hashes,) = m.feed(digest, (ChunkDigest(1, 1), ChunkDigest(1, 2)))
    (rows,) = m.feed(hashes, ({(1,): 1}, {(1,): 2}))
    m.feed(rows, ({(1,): ("1.0",)}, {(1,): ("1.00",)}))
    assert m.done and m.differences == [] and m.differences_total == 0


def test_unsplittable_range_is_resolved_row_by_row():
    m = TableComparison(compare_cols, chunk_rows=10, leaf_rows=2, walk_boundaries=False)
    (split,) = m.start()
    (digest,) = m.feed(split, [])
    (sub,) = m.feed(digest, (ChunkDigest(5, 1), ChunkDigest(5, 2)))
    (hashes,) = m.feed(sub, [])  # no cut possible
    assert isinstance(hashes, NeedRowHashes)


def test_max_diffs_keeps_counting():
    m = TableComparison(compare_cols, chunk_rows=10, max_diffs=2, walk_boundaries=False)
    (split,) = m.start()
    (digest,) = m.feed(split, [])
    (hashes,) = m.feed(digest, (ChunkDigest(5, 1), ChunkDigest(0, 0)))
    m.feed(hashes, ({(i,): i for i in range(5)}, {}))
    assert m.differences_total == 5 and len(m.differences) == 2 and m.truncated


def test_boundary_walk_pipelines_chunks():
    m = TableComparison(compare_cols, chunk_rows=10)
    (first,) = m.start()
    assert isinstance(first, NeedBoundary) and first.after is None
    nxt, chunk = m.feed(first, (10,))
    assert isinstance(nxt, NeedBoundary) and nxt.after == (10,)
    assert isinstance(chunk, NeedDigest) and chunk.range == KeyRange(None, (10,))
    (last,) = m.feed(nxt, None)
    assert last.range == KeyRange((10,), None)
    m.feed(chunk, (ChunkDigest(10, 1), ChunkDigest(10, 1)))
    m.feed(last, (ChunkDigest(3, 1), ChunkDigest(3, 1)))
    assert m.done and m.stats.chunks == 2 and m.stats.rows_source == 13


def _to_leaf(m):
    (split,) = m.start()
    (digest,) = m.feed(split, [])
    (hashes,) = m.feed(digest, (ChunkDigest(3, 1), ChunkDigest(3, 2)))
    return hashes


def test_confirmation_drops_transient_keeps_stable_flags_moving_rows():
    m = TableComparison(compare_cols, chunk_rows=10, walk_boundaries=False, confirm_rounds=2)
    hashes = _to_leaf(m)
    (rows,) = m.feed(hashes, ({(1,): 1, (2,): 2, (3,): 3}, {(1,): 9, (2,): 9}))
    assert rows.keys == ((1,), (2,), (3,)) and rows.round == 0
    # round 0: all three still differ
    (again,) = m.feed(
        rows, ({(1,): ("a",), (2,): ("b",), (3,): ("c",)}, {(1,): ("x",), (2,): ("y",)})
    )
    assert again.round == 1
    # round 1: 1 caught up (transient), 2 still differs, 3 still missing
    (last,) = m.feed(
        again, ({(1,): ("a",), (2,): ("b2",), (3,): ("c",)}, {(1,): ("a",), (2,): ("y",)})
    )
    assert last.keys == ((2,), (3,)) and last.round == 2
    # round 2: 2's source image moved again -> unstable; 3 stayed missing -> difference
    assert m.feed(last, ({(2,): ("b3",), (3,): ("c",)}, {(2,): ("y",)})) == []
    assert m.done
    assert m.differences == [Missing((3,))] and m.unstable == [(2,)]


def test_unexpected_answer_is_refused():
    m = TableComparison(compare_cols)
    m.start()
    with pytest.raises(ValueError):
        m.feed(NeedDigest(KeyRange()), (ChunkDigest(0, 0), ChunkDigest(0, 0)))


def test_bad_parameters():
    with pytest.raises(ValueError):
        TableComparison(compare_cols, split_factor=1)


# -- in-memory sources, adversarial data --------------------------------------------------
def _expected(src, tgt):
    out = set()
    for k, v in src.items():
        if k not in tgt:
            out.add(Missing(k))
        elif tgt[k] != v:
            out.add(Changed(k, compare_cols(v, tgt[k])))
    out |= {Extra(k) for k in tgt if k not in src}
    return out


def _answer_sync(src: MemorySource, tgt: MemorySource):
    def answer(req):
        return asyncio.run(_answer(req, src, tgt))

    return answer


async def _answer(req, src, tgt):
    from replverify.diff.driver import answer

    return await answer(req, Sides(src, tgt))


rows_st = st.dictionaries(
    st.tuples(st.integers(-1000, 1000)),
    st.tuples(st.integers(0, 3), st.sampled_from(["a", "b", "ü", ""])),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(rows_st, st.data(), st.integers(1, 60), st.integers(1, 20), st.integers(2, 8), st.booleans())
def test_memory_sources_report_exactly_the_planted_differences(
    base, data, chunk_rows, leaf_rows, factor, walk
):
    tgt = dict(base)
    keys = sorted(base)
    for k in data.draw(st.lists(st.sampled_from(keys), max_size=10) if keys else st.just([])):
        action = data.draw(st.sampled_from(["delete", "change"]))
        if action == "delete":
            tgt.pop(k, None)
        else:
            tgt[k] = (tgt.get(k, (0, ""))[0] + 1, "changed")
    for k in data.draw(st.lists(st.integers(-1100, 1100), max_size=5)):
        tgt.setdefault((k,), (9, "new"))
    src_s, tgt_s = MemorySource(base, hasher), MemorySource(tgt, hasher)
    m = TableComparison(
        compare_cols,
        chunk_rows=chunk_rows,
        leaf_rows=leaf_rows,
        split_factor=factor,
        walk_boundaries=walk,
    )
    run_in_memory(m, _answer_sync(src_s, tgt_s))
    assert set(m.differences) == _expected(base, tgt)
    assert len(m.differences) == m.differences_total
    assert m.stats.rows_source == len(base) and m.stats.rows_target == len(tgt)


async def test_async_driver_matches_and_narrowing_reads_little():
    rng = random.Random(7)
    base = {(i,): (i % 5, "v") for i in range(20_000)}
    tgt = dict(base)
    planted = rng.sample(sorted(base), 10)
    for k in planted:
        tgt[k] = (99, "x")
    src_s, tgt_s = MemorySource(base, hasher), MemorySource(tgt, hasher)
    m = TableComparison(compare_cols, chunk_rows=1000, leaf_rows=100)
    await run(m, Sides(src_s, tgt_s), jobs=4)
    assert {d.key for d in m.differences} == set(planted)
    # narrowing transfers grow with the differences, not with the table
    assert m.stats.rows_hashed <= 10 * 2 * 100
    assert m.stats.rows_fetched == 20


async def test_boundary_walk_stays_a_few_chunks_ahead():
    base = {(i,): (0, "v") for i in range(5_000)}
    machine = TableComparison(compare_cols, chunk_rows=10)
    most = 0

    class Watching(MemorySource):
        async def digest(self, rng):
            nonlocal most
            most = max(most, len(machine._pending))
            return await super().digest(rng)

    await run(machine, Sides(MemorySource(base, hasher), Watching(base, hasher)), jobs=2)
    assert machine.stats.chunks == 501  # 500 boundaries, then the empty tail
    assert most <= 4 * 2 + 2 + 1  # queued chunks + running + the walk


def test_a_located_mismatch_reads_just_the_differing_rows():
    m = TableComparison(
        compare_cols, chunk_rows=10_000, walk_boundaries=False, locate=lambda s, t: [(500,)]
    )
    (split,) = m.start()
    (digest,) = m.feed(split, [])
    (rows,) = m.feed(digest, (ChunkDigest(10_000, 1), ChunkDigest(10_000, 2)))
    assert isinstance(rows, NeedRows) and rows.keys == ((500,),) and rows.range == KeyRange()
    assert m.feed(rows, ({(500,): ("a", 1)}, {(500,): ("a", 2)})) == []
    assert m.differences == [Changed((500,), ("c1",))]
    assert m.stats.chunks_located == 1 and m.stats.chunks_mismatched == 1


def test_an_unlocated_mismatch_splits_and_digests_the_parts_together():
    m = TableComparison(
        compare_cols, chunk_rows=10_000, walk_boundaries=False, locate=lambda s, t: None
    )
    (split,) = m.start()
    (digest,) = m.feed(split, [])
    (sub,) = m.feed(digest, (ChunkDigest(10_000, 1), ChunkDigest(10_000, 2)))
    assert isinstance(sub, NeedSplit) and sub.parts == 16
