"""One table compared between two servers (the unit of work of a run or a cluster task):
the digest descriptions, column forms and the comparison itself."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg

from replverify.diff.align import TablePlan
from replverify.diff.copyscan import locate_chunk
from replverify.diff.driver import Sides, compare_multiset, run
from replverify.diff.fence import Fence
from replverify.diff.machine import TableComparison
from replverify.diff.ranges import KeyRange
from replverify.diff.sources import DigestMode, PostgresSource, RowHasher
from replverify.diff.sql import TableSQL, quote_table
from replverify.diff.state import StateFile, TableCheckpoint
from replverify.diff.throttle import Throttle
from replverify.errors import ReplverifyError
from replverify.types import TableRef, TableResult
from replverify.values.canonical import encode_row

#: Connections per server this process holds when the chunk work runs on a cluster.
CLIENT_CONNECTIONS = 2

if TYPE_CHECKING:
    from replverify.diff.run import DiffOptions


DIGEST_DESCRIPTIONS: dict[DigestMode, str] = {
    "copy": "copy: xxh3-128 of each chunk's binary COPY stream, read in key order",
    "server": "server: hashtextextended of the row text with pinned settings, 64-bit sums",
    "client": "client: xxh3-128 of canonical values, 128-bit sums",
}


MULTISET_DIGEST = "multiset: md5 (128-bit) of each row's text with pinned settings, counted"


def _column_forms(plan: TablePlan, mode: DigestMode) -> dict[str, str]:
    """How each compared column is read for the digest: ``binary``, ``text`` or
    ``decoded`` (client-side, from asyncpg's decoded value)."""
    if mode == "client":
        return {c.name: "decoded" for c in plan.columns}
    if mode == "server" or plan.multiset:
        return {c.name: "text" for c in plan.columns}
    forms = plan.copy_forms or ("binary",) * len(plan.columns)
    return {c.name: f for c, f in zip(plan.columns, forms, strict=True)}


def _unverified(plan: TablePlan, why: str, partial: TableResult | None = None) -> TableResult:
    """The result of a table that could not be verified, keeping what a partial
    comparison (``partial``) counted before it stopped."""
    result = partial or TableResult(
        plan.ref,
        plan.key_names,
        plan.key_mode,
        schema_differences=plan.schema_differences,
        columns=tuple(c.name for c in plan.columns),
    )
    result.error = why if partial is None or not partial.error else f"{why}; {partial.error}"
    return result


async def compare_table(
    sql: TableSQL,
    source: asyncpg.Pool,
    target: asyncpg.Pool,
    mode: DigestMode,
    options: DiffOptions,
    progress: Callable[[TableRef, int, int], None] | None = None,
    fence: Fence | None = None,
    state: StateFile | None = None,
    *,
    whole: KeyRange | None = None,
    throttle: Throttle | None = None,
    chunk_time: float | None = None,
) -> TableResult:
    """Compare one planned table (or the key range ``whole`` of it: a task on a worker);
    server errors end up in ``TableResult.error``."""
    plan = sql.plan
    started = time.perf_counter()
    hasher = RowHasher(plan, options.compare)
    names = [c.name for c in plan.columns]
    machine = TableComparison(
        hasher.differing_columns(names),
        chunk_rows=options.chunk_rows,
        # ``client`` digests decode every row anyway: splitting a chunk would decode it
        # again per level, where settling it by row hashes decodes it once.
        leaf_rows=options.leaf_rows
        or (min(options.chunk_rows, 10_000) if fence or mode == "client" else 1_000),
        max_diffs=options.max_diffs,
        # one index probe per boundary needs the key order to be an index order
        walk_boundaries=plan.key_mode == "primary key" and not any(k.collate_c for k in plan.key),
        confirm_rounds=options.confirm_rounds if fence else 0,
        whole=whole,
    )
    src_side = PostgresSource(source, sql, mode, options.compare)
    tgt_side = PostgresSource(target, sql, mode, options.compare)
    key_of = src_side.key_of
    if key_of is not None and plan.key_mode == "primary key":  # merging needs unique keys
        machine.locate = functools.partial(locate_chunk, key_of=key_of, skip=src_side.skip)
    result = TableResult(
        plan.ref,
        plan.key_names,
        plan.key_mode,
        schema_differences=plan.schema_differences,
        columns=tuple(names),
        digest=MULTISET_DIGEST if plan.multiset else DIGEST_DESCRIPTIONS[mode],
        # keyless tables always use 128-bit row hashes (see compare_multiset)
        digest_bits=64 if mode == "server" and not plan.multiset else 128,
        column_forms=_column_forms(plan, mode),
    )
    hint: str | None = None
    try:
        if plan.multiset:
            encoders = hasher.encoders
            await compare_multiset(
                sql, source, target, machine, fence, encode=lambda v: encode_row(encoders, v)
            )
        else:
            sides = Sides(src_side, tgt_side, fence)
            estimate = plan.estimated_rows

            def tick(done: int) -> None:
                if progress:
                    progress(plan.ref, done, max(estimate, done))

            checkpoint = None
            if state is not None:
                by_name = dict(zip(names, hasher.encoders, strict=True))
                encoders = [by_name[k] for k in plan.key_names]
                checkpoint = TableCheckpoint(state, plan.ref.qualified, encoders)
            await run(
                machine,
                sides,
                jobs=options.jobs,
                progress=tick,
                checkpoint=checkpoint,
                throttle=throttle,
                chunk_time=chunk_time,
            )
    except asyncpg.PostgresError as e:
        result.error = f"{quote_table(plan.ref)}: {type(e).__name__}: {e}"
    except ReplverifyError as e:
        result.error = e.message
        hint = e.hint
    except (ValueError, OverflowError) as e:
        if not _decoding_failed(e):
            raise
        # asyncpg cannot build a Python value of what the server sent (a BC date or
        # 24:00 in a key, array, range or composite): this table cannot be verified row
        # by row here, and the others still can
        result.error = (
            f"{quote_table(plan.ref)}: a value could not be decoded by the client library"
            f" ({type(e).__name__}: {e}; e.g. a BC date or a 24:00 time in a key, an array,"
            " a range or a composite)"
        )
        hint = "psql shows its rows (it reads them as text); --exclude skips the table"
    if result.error:
        stats = machine.stats
        result.error += (
            f" (stopped after verifying {stats.chunks:,} chunks, {stats.rows_source:,} source"
            " rows; the rest of the table was not checked)"
        )
        if hint:
            result.error += f"; hint: {hint}"
    stats = machine.stats
    result.rows_source, result.rows_target = stats.rows_source, stats.rows_target
    result.chunks, result.chunks_mismatched = stats.chunks, stats.chunks_mismatched
    result.differences = _sorted(machine.differences)
    result.differences_total = machine.differences_total
    result.truncated = machine.truncated
    result.unstable = machine.unstable
    result.elapsed_s = time.perf_counter() - started
    if progress is not None:
        progress(plan.ref, stats.rows_source, stats.rows_source)
    return result


def _decoding_failed(e: BaseException) -> bool:
    """Whether ``e`` was raised inside asyncpg's decoding of a row (its innermost frame)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "asyncpg" in tb.tb_frame.f_code.co_filename


def _sorted(diffs: list) -> list:  # type: ignore[type-arg]
    try:
        return sorted(diffs, key=lambda d: d.key)
    except TypeError:
        return diffs
