"""A failover-aware application connection pool that journals every write.

>>> pool = await FailoverPool.connect(primary, alternate_dsn(primary), journal="writes.jsonl")
>>> pool.on("endpoint_switch_required", lambda event: log.warning("%s", event))
>>> await pool.execute("INSERT INTO t(id, v) VALUES ($1, $2)", 1, "x")
>>> pool.active
'primary'

Unlike replverify's own (read-only) connections, these are ordinary read-write asyncpg
pools: the application writes through them.

Switching. A call that fails because the *endpoint* failed (connection refused or lost,
the server shutting down or not accepting connections, a connect timeout) - with
``auto_switch_enabled`` - fires ``endpoint_switch_required``, connects to the other
endpoint, fires ``endpoint_switched`` and runs the call once more there. If that fails
too, :class:`~replverify.errors.FailoverError` says both endpoints failed (passwords
redacted). Errors of the statement itself (syntax, constraint violations, a read-only
server refusing a write, serialization failures) are raised as they are and never
switch. Without auto-switch an endpoint failure raises
:class:`~replverify.errors.ConnectError` at once. Concurrent calls that fail together
cause one switch: events fire once each, in order.

Journaling, by effect. Each INSERT / UPDATE / DELETE / INSERT ... ON CONFLICT sent
through :meth:`FailoverPool.execute`, ``fetch*`` or a :meth:`FailoverPool.transaction`
is journaled by what it did, whatever its values (``bal = bal + $1``, a range WHERE, a
subquery, ``CURRENT_TIMESTAMP``): a statement intent (the statement and its parameters)
in the file before the statement is sent; the statement goes with a ``RETURNING`` of the
key and the written columns (the whole row for INSERT), added through sqlglot
(:func:`~replverify.failover.effects.bind_effect`); the post-images of the rows it
touched are journaled as they arrive (with the next write, or 1000 at a time through a
portal, so memory stays bounded) before COMMIT is sent; ``committed`` after the server
confirmed the COMMIT, ``aborted`` when it refused or no COMMIT was sent. A COMMIT whose
answer was lost settles nothing: the transaction is *in doubt*, the truth.

Never twice. :meth:`FailoverPool.execute` runs a write in a transaction of its own; after
an endpoint failure the call runs again on the other endpoint only if that cannot apply
it twice: the failure came before COMMIT was sent, or the statement is idempotent by
construction (:func:`safe_to_repeat`). Otherwise :class:`~replverify.errors.InDoubtError`
names the journal txid. A write the journal cannot describe (MERGE, a write inside WITH,
several statements in one string) is refused with :class:`~replverify.errors.UsageError`
before it runs, so no write goes unjournaled.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg

from replverify.errors import ConnectError
from replverify.failover.dsn import alternate_dsn
from replverify.failover.effects import plan_write
from replverify.failover.journaled import EffectRunner
from replverify.failover.switching import EVENTS, FailoverEvent, Switching, _Progress, is_outage
from replverify.failover.transaction import PoolTransaction, _Rows
from replverify.journal.writer import FsyncPolicy, JournalWriter

__all__ = [
    "EVENTS",
    "FailoverEvent",
    "FailoverPool",
    "PoolTransaction",
    "alternate_dsn",
    "is_outage",
]


class FailoverPool(Switching, _Rows):
    """Two endpoints, one active asyncpg pool; see the module docstring."""

    def __init__(
        self,
        primary: str,
        alternate: str,
        *,
        journal: str | os.PathLike[str] | JournalWriter | None = None,
        auto_switch: bool = True,
        min_size: int = 0,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float | None = None,
        fsync: FsyncPolicy = "commit",
        server_settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            primary,
            alternate,
            auto_switch=auto_switch,
            min_size=min_size,
            max_size=max_size,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            server_settings=server_settings,
        )
        self._owns_journal = journal is not None and not isinstance(journal, JournalWriter)
        if journal is None or isinstance(journal, JournalWriter):
            self.journal = journal
        else:
            self.journal = JournalWriter(journal, fsync=fsync)
        self._runner = EffectRunner()

    # ---- construction

    @classmethod
    async def connect(
        cls,
        primary: str,
        alternate: str,
        *,
        journal: str | os.PathLike[str] | JournalWriter | None = None,
        auto_switch: bool = True,
        **options: Any,
    ) -> FailoverPool:
        """Open a pool on ``primary``; if it cannot be reached and ``auto_switch`` is on,
        switch to ``alternate`` at once. Callbacks registered later cannot see that
        switch: to observe it, build with ``FailoverPool(...)``, call :meth:`on`, then
        ``await pool.start()``. ``options``: ``min_size``, ``max_size``,
        ``connect_timeout``, ``command_timeout``, ``fsync`` (journal), ``server_settings``."""
        pool = cls(primary, alternate, journal=journal, auto_switch=auto_switch, **options)
        await pool.start()
        return pool

    async def start(self) -> None:
        """Connect to the primary (switching to the alternate if it is down)."""
        try:
            self._pool = await self._open("primary")
        except ConnectError as first:
            if not self.auto_switch_enabled:
                self._close_journal()
                raise
            try:
                await self._switch(0, first)
            except BaseException:
                self._close_journal()
                raise

    # ---- the application's calls

    async def _write(
        self,
        conn: asyncpg.Connection,
        progress: _Progress,
        query: str,
        args: tuple[object, ...],
        *,
        keep: bool,
        timeout: float | None,
    ) -> tuple[str, list[asyncpg.Record]]:
        return await self._runner.write(
            conn, self.journal, self._active, progress, query, args, keep=keep, timeout=timeout
        )

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        """Run a statement (journaled by its effect when it writes); the command tag.

        A write runs in a transaction of its own, with the intent journaled before, the
        touched rows after the statement and the marker after COMMIT. When the endpoint
        fails, the pool switches and runs the call again on the other endpoint only if
        that cannot apply it twice: the failure came before COMMIT was sent (nothing can
        have committed), or the statement is idempotent by construction (literal values
        pinning the primary key, or an upsert). Otherwise it raises
        :class:`~replverify.errors.InDoubtError` naming the journal txid."""

        async def run(conn: asyncpg.Connection, progress: _Progress) -> str:
            return (await self._write(conn, progress, query, args, keep=False, timeout=timeout))[0]

        return await self._call(run, query, args)

    async def fetch(
        self, query: str, *args: object, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        """Rows of a query; a write with RETURNING is journaled as by :meth:`execute` (its
        rows then end with the journal's ``_rv_<n>`` columns)."""

        async def run(conn: asyncpg.Connection, progress: _Progress) -> list[asyncpg.Record]:
            if plan_write(query) is None:
                rows: list[asyncpg.Record] = await conn.fetch(query, *args, timeout=timeout)
                return rows
            return (await self._write(conn, progress, query, args, keep=True, timeout=timeout))[1]

        return await self._call(run, query, args)

    def transaction(self) -> PoolTransaction:
        """Several statements in one database transaction, journaled as one transaction:
        ``async with pool.transaction() as tx: await tx.execute(...)``.

        The connection is taken on the active endpoint (switching first if it is down).
        Each write's intent is journaled before it runs; leaving the block commits, and
        the intents are marked committed once the server confirmed the COMMIT. An
        exception inside the block rolls back (the intents are marked aborted: no COMMIT
        was sent). A COMMIT whose answer was lost leaves them in doubt. An endpoint
        failure inside the block switches endpoints and is raised: the block itself is
        not retried, since only the application knows whether running it again is right.
        """
        return PoolTransaction(self)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        try:
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), timeout=5)
                except (asyncio.TimeoutError, OSError, asyncpg.InterfaceError):
                    pool.terminate()
        finally:
            if self._owns_journal and self.journal is not None:
                await asyncio.to_thread(self.journal.close)

    def _close_journal(self) -> None:
        if self._owns_journal and self.journal is not None:
            self.journal.close()

    async def __aenter__(self) -> FailoverPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
