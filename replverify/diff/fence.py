"""LSN fences: compare a busy primary with its streaming standby without false alarms.

A chunk is read on the source first; the source's WAL insert position after that read
covers every change the read could see. The target's read of the same chunk starts only
once the standby has replayed up to that position, so it holds at least what the source
read held. Rows written after the source read may still differ; the comparison reads
those again (confirmation rounds) before it calls anything a difference.

Reads cancelled by a recovery conflict on the standby are retried with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from replverify.db.connect import DB_ERRORS
from replverify.db.errors import transient
from replverify.errors import LagTimeout, ReadError, ReplayPaused

T = TypeVar("T")


async def read(side: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call`` with retries; a failure that remains names the side."""
    try:
        return await retrying(call)
    except DB_ERRORS as e:
        raise ReadError(side, e) from e


#: The target's replay position and whether its replay is paused (or a pause requested):
#: a paused standby never reaches a fence until someone resumes it.
_TARGET_REPLAY_SQL = (
    "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS replayed,"
    " CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS paused"
)


async def retrying(
    call: Callable[[], Awaitable[T]], *, attempts: int = 5, first_delay: float = 0.05
) -> T:
    """Run ``call``; on a retryable server error wait (doubling) and run it again."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return await call()
        except DB_ERRORS as e:
            if not transient(e) or attempt == attempts - 1:
                raise
        await asyncio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


class Fence:
    """Waits until the target (a streaming standby) has replayed what the source saw."""

    def __init__(self, source: asyncpg.Pool, target: asyncpg.Pool, *, timeout: float) -> None:
        self.source = source
        self.target = target
        self.timeout = timeout
        self.replayed = 0  # highest replay position seen on the target
        self.waits = 0
        self.waited_s = 0.0

    async def position(self) -> int:
        """The source's WAL insert position, as a byte offset."""
        async with self.source.acquire() as conn:
            value = await conn.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
            )
        return int(value)

    async def wait(self, fence: int) -> None:
        """Return once the target has replayed to ``fence`` (or to everything the source
        has flushed, when the insert position sits past a page header nothing follows)."""
        if self.replayed >= fence:
            return
        started = time.monotonic()
        delay = 0.002
        while True:
            async with self.target.acquire() as conn:
                row = await conn.fetchrow(_TARGET_REPLAY_SQL)
            assert row is not None
            replayed, paused = int(row["replayed"]), bool(row["paused"])
            self.replayed = max(self.replayed, replayed)
            if replayed >= fence:
                break
            async with self.source.acquire() as conn:
                flushed = int(
                    await conn.fetchval(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint"
                    )
                )
            if flushed < fence and replayed >= flushed:
                break
            if paused:
                raise ReplayPaused(
                    "WAL replay is paused on the target (pg_wal_replay_pause()), so it cannot "
                    f"replay what the source read saw ({fence - replayed:,} bytes behind)",
                    hint="resume replay on the standby: SELECT pg_wal_replay_resume(); "
                    "or compare what it holds now with --no-fence",
                )
            if time.monotonic() - started > self.timeout:
                raise LagTimeout(
                    f"the target did not replay the source's WAL within {self.timeout:g} s "
                    f"({fence - replayed:,} bytes behind)",
                    hint="raise --lag-timeout, or check the standby with replverify lag",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.waits += 1
        self.waited_s += time.monotonic() - started

    async def read(
        self, source: Callable[[], Awaitable[T]], target: Callable[[], Awaitable[T]]
    ) -> tuple[T, T]:
        """Read the source, fence, then read the target."""
        s = await read("source", source)
        try:
            await self.wait(await self.position())
        except DB_ERRORS as e:
            raise ReadError("target", e) from e
        t = await read("target", target)
        return s, t
