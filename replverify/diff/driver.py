"""The async driver: runs a table comparison's requests against two row sources.

Requests of one table run concurrently up to ``jobs`` at a time; the two sides of each
request are read concurrently. Everything the driver learns goes back into the I/O-free
:class:`~replverify.diff.machine.TableComparison`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import asyncpg

from replverify.diff.fence import Fence, read
from replverify.diff.hashing import ChunkDigest
from replverify.diff.machine import (
    NeedBoundary,
    NeedDigest,
    NeedDigests,
    NeedRowHashes,
    NeedRows,
    NeedSplit,
    Request,
    TableComparison,
)
from replverify.diff.sources import RowSource, decoded, hashable, shown
from replverify.diff.sql import TableSQL
from replverify.diff.state import TableCheckpoint
from replverify.diff.throttle import Throttle, adapt_chunk_rows
from replverify.types import Extra, Missing

T = TypeVar("T")
#: ``progress(rows_done_on_source)`` after each top-level chunk.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Sides:
    source: RowSource
    target: RowSource
    #: set when the target is a streaming standby of the source: target reads wait for it
    fence: Fence | None = None

    async def both(
        self, source: Callable[[], Awaitable[T]], target: Callable[[], Awaitable[T]]
    ) -> tuple[T, T]:
        """Read both sides: concurrently, or source first and then the fenced target."""
        if self.fence is not None:
            return await self.fence.read(source, target)
        s, t = await asyncio.gather(read("source", source), read("target", target))
        return s, t


async def answer(req: Request, sides: Sides) -> object:
    """Ask both sides (or the named one) the question ``req`` stands for."""
    src, tgt = sides.source, sides.target
    if isinstance(req, NeedSplit):
        side = src if req.side == "source" else tgt
        return await read(req.side, lambda: side.split(req.range, req.every, req.parts))
    if isinstance(req, NeedBoundary):
        return await read("source", lambda: src.boundary(req.after, req.every))
    if isinstance(req, NeedDigest):
        return await sides.both(lambda: src.digest(req.range), lambda: tgt.digest(req.range))
    if isinstance(req, NeedDigests):
        return await sides.both(lambda: src.digests(req.ranges), lambda: tgt.digests(req.ranges))
    if isinstance(req, NeedRowHashes):
        return await sides.both(
            lambda: src.row_hashes(req.range), lambda: tgt.row_hashes(req.range)
        )
    assert isinstance(req, NeedRows)
    return await sides.both(
        lambda: src.rows(req.range, req.keys), lambda: tgt.rows(req.range, req.keys)
    )


async def run(
    machine: TableComparison,
    sides: Sides,
    *,
    jobs: int = 2,
    progress: Progress | None = None,
    checkpoint: TableCheckpoint | None = None,
    throttle: Throttle | None = None,
    chunk_time: float | None = None,
) -> TableComparison:
    """Drive ``machine`` to completion, ``jobs`` requests at a time.

    The chunk-boundary walk runs beside them (one small index query at a time, on a
    connection of its own) and stays only a few chunks ahead, so memory does not grow
    with the table. Narrowing requests go ahead of unstarted chunks, so differences
    surface early. With a ``checkpoint``, chunks verified by an earlier run are taken
    from it instead of being read, and newly verified chunks are added to it. A
    ``throttle`` is waited on before each new read; with ``chunk_time`` the chunk size
    adapts towards that many seconds a chunk.
    """
    queue: deque[Request] = deque()
    running: dict[asyncio.Task[object], Request] = {}
    held: list[NeedBoundary] = []  # the walk, paused while enough chunks are queued
    ahead = 4 * jobs
    began: dict[int, float] = {}  # request id → start, for chunk_time

    def start(req: Request) -> None:
        if checkpoint and isinstance(req, NeedDigest) and req.top:
            rows = checkpoint.known(req.range)
            if rows is not None:
                done = asyncio.get_running_loop().create_future()
                done.set_result((ChunkDigest(rows, 0), ChunkDigest(rows, 0)))
                running[done] = req  # type: ignore[index]
                return
        began[req.id] = time.monotonic()
        running[asyncio.ensure_future(answer(req, sides))] = req

    def submit(requests: list[Request], urgent: bool) -> None:
        for req in reversed(requests) if urgent else requests:
            if isinstance(req, NeedBoundary):
                held.append(req)
            elif urgent:
                queue.appendleft(req)
            else:
                queue.append(req)

    submit(machine.start(), urgent=False)
    try:
        while queue or running or held:
            if held and len(queue) < ahead:
                start(held.pop())
            busy = sum(not isinstance(r, NeedBoundary) for r in running.values())
            while queue and busy < jobs:
                if throttle is not None:
                    await throttle.wait()
                start(queue.popleft())
                busy += 1
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                req = running.pop(task)
                planning = isinstance(req, NeedBoundary) or (isinstance(req, NeedSplit) and req.top)
                result = task.result()
                follow = machine.feed(req, result)
                if checkpoint and isinstance(req, NeedDigest) and req.top:
                    src_digest, tgt_digest = cast("tuple[ChunkDigest, ChunkDigest]", result)
                    if src_digest == tgt_digest:
                        checkpoint.record(req.range, src_digest.count)
                if isinstance(req, NeedDigest) and req.top:
                    t0 = began.pop(req.id, None)
                    if chunk_time and machine.walk_boundaries and t0 is not None:
                        took = time.monotonic() - t0
                        src_digest = cast("tuple[ChunkDigest, ChunkDigest]", result)[0]
                        machine.chunk_rows = adapt_chunk_rows(
                            machine.chunk_rows, src_digest.count, took, chunk_time
                        )
                    if progress:
                        progress(machine.stats.rows_source)
                else:
                    began.pop(req.id, None)
                submit(follow, urgent=not planning)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return machine


async def compare_multiset(
    sql: TableSQL,
    source: asyncpg.Pool,
    target: asyncpg.Pool,
    machine: TableComparison,
    fence: Fence | None = None,
    encode: Callable[[Sequence[object]], bytes] | None = None,
) -> TableComparison:
    """Compare a table without a key as a multiset of rows (duplicates count).

    The two sides stream ``(128-bit row hash, count)`` in hash order and are merged here,
    so memory stays flat; only rows whose counts differ are then read in full, and each
    surplus copy is reported as missing or extra with the whole row as its key. Row
    hashes are of the row text, which can differ where the compared values do not (a
    ``semantic`` comparison, another major version's output): surplus rows whose
    ``encode`` (the comparison's encoding of the row) is equal cancel out. On a fenced
    (live standby) pair a surplus is confirmed by comparing again; one that keeps
    changing marks the table's rows unstable instead.
    """
    surplus, rows_s, rows_t = await _surplus(sql, source, target, fence)
    for _ in range(machine.confirm_rounds if fence else 0):
        if not surplus:
            break
        again, rows_s, rows_t = await _surplus(sql, source, target, fence)
        if again == surplus:
            break
        surplus = again
    else:
        if surplus and fence:
            machine.unstable.append(("(table rows kept changing)",))
            surplus = {}
    stats = machine.stats
    stats.rows_source, stats.rows_target, stats.chunks = rows_s, rows_t, 1
    if not surplus:
        return machine
    wanted = sorted(surplus)
    images: dict[uuid.UUID, tuple[object, ...]] = {}
    values: dict[uuid.UUID, tuple[object, ...]] = {}
    for pool in (source, target):
        text, params = sql.rows_with_hashes(wanted)
        async with pool.acquire() as conn:
            for rec in await conn.fetch(text, *params):
                if rec[0] not in images:
                    values[rec[0]] = decoded(rec, 1, sql)
                    images[rec[0]] = tuple(hashable(v) for v in shown(rec, 1, sql))
    net: dict[uuid.UUID, int] = {}  # a representative row hash per distinct encoding → count
    by_encoding: dict[bytes, uuid.UUID] = {}
    for h in wanted:
        if encode is not None and h in values:
            h_rep = by_encoding.setdefault(encode(values[h]), h)
        else:
            h_rep = h
        net[h_rep] = net.get(h_rep, 0) + surplus[h]
    if not any(net.values()):
        return machine
    stats.chunks_mismatched = 1
    for h, n in net.items():
        image = images.get(h, ())
        for _ in range(abs(n)):
            machine.record(Missing(image) if n > 0 else Extra(image))
    return machine


Pair = tuple[uuid.UUID, int]  # a 128-bit row hash and its count


async def _surplus(
    sql: TableSQL, source: asyncpg.Pool, target: asyncpg.Pool, fence: Fence | None
) -> tuple[dict[uuid.UUID, int], int, int]:
    """``{row hash: source count - target count}`` where they differ, and the row counts."""
    text, params = sql.hash_counts()
    snapshot_taken = asyncio.Event()

    async def stream(pool: asyncpg.Pool, out: asyncio.Queue[list[Pair] | None]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1")  # the repeatable-read snapshot starts here
            snapshot_taken.set()
            cursor = await conn.cursor(text, *params)
            while batch := await cursor.fetch(5000):
                await out.put([(r[0], r[1]) for r in batch])
        await out.put(None)

    async def fenced_target() -> None:
        await snapshot_taken.wait()
        if fence is not None:
            await fence.wait(await fence.position())
        await stream(target, qt)

    qs: asyncio.Queue[list[Pair] | None] = asyncio.Queue(4)
    qt: asyncio.Queue[list[Pair] | None] = asyncio.Queue(4)
    tasks = [asyncio.ensure_future(stream(source, qs)), asyncio.ensure_future(fenced_target())]
    surplus: dict[uuid.UUID, int] = {}
    rows_s = rows_t = 0
    try:
        src_items, tgt_items = _items(qs), _items(qt)
        s, t = await anext(src_items, None), await anext(tgt_items, None)
        while s is not None or t is not None:
            if t is None or (s is not None and s[0] < t[0]):
                assert s is not None
                surplus[s[0]] = s[1]
                rows_s += s[1]
                s = await anext(src_items, None)
            elif s is None or t[0] < s[0]:
                surplus[t[0]] = -t[1]
                rows_t += t[1]
                t = await anext(tgt_items, None)
            else:
                if s[1] != t[1]:
                    surplus[s[0]] = s[1] - t[1]
                rows_s += s[1]
                rows_t += t[1]
                s, t = await anext(src_items, None), await anext(tgt_items, None)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return surplus, rows_s, rows_t


async def _items(queue: asyncio.Queue[list[Pair] | None]) -> AsyncIterator[Pair]:
    while (batch := await queue.get()) is not None:
        for item in batch:
            yield item
