"""The async driver: runs a table comparison's requests against two row sources.

Requests of one table run concurrently up to ``jobs`` at a time; the two sides of each
request are read concurrently. Everything the driver learns goes back into the I/O-free
:class:`~replverify.bisect.TableComparison`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from .bisect import (
    NeedBoundary,
    NeedDigest,
    NeedRowHashes,
    NeedRows,
    NeedSplit,
    Request,
    TableComparison,
)
from .sources import RowSource, hashable
from .sql import TableSQL
from .types import Extra, Missing

#: ``progress(rows_done_on_source)`` after each top-level chunk.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Sides:
    source: RowSource
    target: RowSource


async def answer(req: Request, sides: Sides) -> object:
    """Ask both sides (or the named one) the question ``req`` stands for."""
    src, tgt = sides.source, sides.target
    if isinstance(req, NeedSplit):
        side = src if req.side == "source" else tgt
        return await side.split(req.range, req.every)
    if isinstance(req, NeedBoundary):
        return await src.boundary(req.after, req.every)
    if isinstance(req, NeedDigest):
        return await asyncio.gather(src.digest(req.range), tgt.digest(req.range))
    if isinstance(req, NeedRowHashes):
        return await asyncio.gather(src.row_hashes(req.range), tgt.row_hashes(req.range))
    assert isinstance(req, NeedRows)
    return await asyncio.gather(src.rows(req.range, req.keys), tgt.rows(req.range, req.keys))


async def run(
    machine: TableComparison, sides: Sides, *, jobs: int = 2, progress: Progress | None = None
) -> TableComparison:
    """Drive ``machine`` to completion, ``jobs`` requests at a time.

    The chunk-boundary walk runs beside them (one small index query at a time, on a
    connection of its own) and stays only a few chunks ahead, so memory does not grow
    with the table. Narrowing requests go ahead of unstarted chunks, so differences
    surface early.
    """
    queue: deque[Request] = deque()
    running: dict[asyncio.Task[object], Request] = {}
    held: list[NeedBoundary] = []  # the walk, paused while enough chunks are queued
    ahead = 4 * jobs

    def start(req: Request) -> None:
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
                start(queue.popleft())
                busy += 1
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                req = running.pop(task)
                planning = isinstance(req, NeedBoundary) or (isinstance(req, NeedSplit) and req.top)
                follow = machine.feed(req, task.result())
                if isinstance(req, NeedDigest) and req.top and progress:
                    progress(machine.stats.rows_source)
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
) -> TableComparison:
    """Compare a table without a key as a multiset of rows (duplicates count).

    The two sides stream ``(row hash, count)`` in hash order and are merged here, so
    memory stays flat; only rows whose counts differ are then read in full, and each
    surplus copy is reported as missing or extra with the whole row as its key.
    """
    text, params = sql.hash_counts()
    surplus: dict[int, int] = {}  # hash -> source count minus target count

    async def stream(pool: asyncpg.Pool, out: asyncio.Queue[tuple[int, int] | None]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            async for rec in conn.cursor(text, *params, prefetch=5000):
                await out.put((rec[0], rec[1]))
        await out.put(None)

    qs: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue(10_000)
    qt: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue(10_000)
    tasks = [asyncio.ensure_future(stream(source, qs)), asyncio.ensure_future(stream(target, qt))]
    try:
        s, t = await qs.get(), await qt.get()
        rows_s = rows_t = 0
        while s is not None or t is not None:
            if t is None or (s is not None and s[0] < t[0]):
                assert s is not None
                surplus[s[0]] = s[1]
                rows_s += s[1]
                s = await qs.get()
            elif s is None or t[0] < s[0]:
                surplus[t[0]] = -t[1]
                rows_t += t[1]
                t = await qt.get()
            else:
                if s[1] != t[1]:
                    surplus[s[0]] = s[1] - t[1]
                rows_s += s[1]
                rows_t += t[1]
                s, t = await qs.get(), await qt.get()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    stats = machine.stats
    stats.rows_source, stats.rows_target, stats.chunks = rows_s, rows_t, 1
    if not surplus:
        return machine
    stats.chunks_mismatched = 1
    wanted = sorted(surplus)
    images: dict[int, tuple[object, ...]] = {}
    for pool in (source, target):
        text, params = sql.rows_with_hashes(wanted)
        async with pool.acquire() as conn:
            for rec in await conn.fetch(text, *params):
                images.setdefault(rec[0], tuple(hashable(v) for v in tuple(rec)[1:]))
    for h in wanted:
        n, image = surplus[h], images.get(h, ())
        for _ in range(abs(n)):
            machine.record(Missing(image) if n > 0 else Extra(image))
    return machine
