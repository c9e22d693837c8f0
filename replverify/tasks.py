"""Self-contained chunk tasks: one key range of one table, digested on both sides.

A :class:`ChunkTask` carries everything a worker needs — the table plan, the ``--where``
text, the key range, the digest mode and both endpoints *without passwords* — and
pickles, so an executor beyond this process (a Dask or Ray cluster, say) can run chunk
digests when one machine is not enough. Workers authenticate with their own means
(``PGPASSWORD``, ``.pgpass``, certificates); no secret travels with a task.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from replverify.db.connect import Endpoint, connect
from replverify.diff.align import TablePlan
from replverify.diff.hashing import ChunkDigest
from replverify.diff.ranges import KeyRange
from replverify.diff.sources import DigestMode, PostgresSource
from replverify.diff.sql import TableSQL, parse_where


@dataclass(frozen=True)
class ChunkTask:
    """The digest of ``range`` of ``plan``'s table on both sides."""

    source: Endpoint
    target: Endpoint
    plan: TablePlan
    range: KeyRange
    mode: DigestMode
    where: str | None = None

    @classmethod
    def make(
        cls,
        source: Endpoint,
        target: Endpoint,
        plan: TablePlan,
        rng: KeyRange,
        mode: DigestMode,
        where: str | None = None,
    ) -> ChunkTask:
        """A task whose endpoints carry no password."""
        return cls(source.without_secret(), target.without_secret(), plan, rng, mode, where)

    async def run(self) -> tuple[ChunkDigest, ChunkDigest]:
        """Connect to both sides (read-only, pinned settings) and digest the range."""
        sql = TableSQL(self.plan, parse_where(self.where) if self.where else None)

        async def side(endpoint: Endpoint) -> ChunkDigest:
            conn = await connect(endpoint)
            try:
                d = await PostgresSource(_OneConnection(conn), sql, self.mode).digest(self.range)
            finally:
                await conn.close()
            # A worker's result travels back to the driver: the COPY stream a ``copy``
            # digest carries for local narrowing stays behind.
            return ChunkDigest(d.count, d.total)

        src, tgt = await asyncio.gather(side(self.source), side(self.target))
        return src, tgt


class _OneConnection:
    """Just enough of a pool for one connection (``async with pool.acquire()``)."""

    def __init__(self, conn: object) -> None:
        self.conn = conn

    def acquire(self) -> _Acquired:
        return _Acquired(self.conn)


class _Acquired:
    def __init__(self, conn: object) -> None:
        self.conn = conn

    async def __aenter__(self) -> object:
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        return None
