"""One database transaction through the failover pool, journaled as one transaction."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import asyncpg

from replverify.db.connect import DB_ERRORS
from replverify.db.errors import is_outage
from replverify.errors import ConnectError, InDoubtError, UsageError
from replverify.failover.effects import plan_write
from replverify.failover.switching import Side, _why
from replverify.journal.writer import JournalTransaction

if TYPE_CHECKING:
    from replverify.failover.pool import FailoverPool

__all__ = ["PoolTransaction"]


class _Rows:
    """``fetchrow`` and ``fetchval`` on top of ``fetch`` (the pool's and a transaction's)."""

    async def fetch(
        self, query: str, *args: object, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def fetchrow(
        self, query: str, *args: object, timeout: float | None = None
    ) -> asyncpg.Record | None:
        rows = await self.fetch(query, *args, timeout=timeout)
        return rows[0] if rows else None

    async def fetchval(self, query: str, *args: object, timeout: float | None = None) -> Any:
        row = await self.fetchrow(query, *args, timeout=timeout)
        return None if row is None else row[0]


class PoolTransaction(_Rows):
    """One database transaction through a :class:`FailoverPool` (see
    :meth:`FailoverPool.transaction`); ``execute`` and ``fetch*`` as on the pool."""

    def __init__(self, owner: FailoverPool) -> None:
        self._owner = owner
        self._generation = owner._generation
        self._pool: asyncpg.Pool | None = None
        self._conn: asyncpg.Connection | None = None
        self._journal: JournalTransaction | None = None
        #: the endpoint the transaction runs on
        self.endpoint: Side = owner.active

    async def __aenter__(self) -> PoolTransaction:
        self._pool, self._conn, self.endpoint = await self._owner._switching(self._owner._checkout)
        self._generation = self._owner._generation  # after any switch the checkout made
        if self._owner.journal is not None:
            # each intent is appended before its statement is sent; its rows go with
            # the next write (the next intent, or the flush before COMMIT)
            self._journal = self._owner.journal.transaction(defer=True)
        return self

    def _connection(self) -> asyncpg.Connection:
        if self._conn is None:
            raise UsageError("use the transaction inside 'async with pool.transaction()'")
        return self._conn

    @property
    def txid(self) -> object:
        """The journal txid of this transaction (None without a journal)."""
        return self._journal.txid if self._journal is not None else None

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        return (await self._run(query, args, keep=False, timeout=timeout))[0]

    async def fetch(
        self, query: str, *args: object, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        return (await self._run(query, args, keep=True, timeout=timeout))[1]

    async def _run(
        self, query: str, args: tuple[object, ...], *, keep: bool, timeout: float | None
    ) -> tuple[str, list[asyncpg.Record]]:
        conn = self._connection()
        plan = plan_write(query)
        journal = self._journal
        try:
            if plan is None or journal is None:
                if keep:
                    return "", await conn.fetch(query, *args, timeout=timeout)
                return await conn.execute(query, *args, timeout=timeout), []
            runner = self._owner._runner
            effect = runner.known_effect(query) or await runner.effect_of(conn, plan, query)
            return await runner.run_effect(
                conn, journal, effect, query, args, self.endpoint, keep=keep, timeout=timeout
            )
        except asyncpg.InterfaceError as e:
            lost = self._lost(e)
            if lost is None:
                raise
            raise lost from e

    def _lost(self, e: asyncpg.InterfaceError) -> ConnectError | None:
        """asyncpg detaches a pooled connection the server closed, and then says it was
        "released back to the pool": inside the transaction that means the connection was
        lost, and is reported so (:class:`~replverify.errors.ConnectError`)."""
        if "released back to the pool" not in str(e) and not is_outage(e):
            return None
        ep = self._owner._endpoints[self.endpoint]
        return ConnectError(
            ep.scrub(f"the {self.endpoint} ({ep}) closed the connection inside a transaction")
        )

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        conn, pool, journal = self._connection(), self._pool, self._journal
        assert pool is not None
        self._conn = None
        failure = exc
        try:
            if exc is None and journal is not None:
                try:
                    await journal.flush_async()
                except BaseException as e:
                    # not journaled, so not committed
                    failure = e
                    with contextlib.suppress(*DB_ERRORS):
                        await conn.execute("ROLLBACK")
                    raise
            if exc is None:
                try:
                    await conn.execute("COMMIT")
                except BaseException as e:
                    failure = e
                    # refused (e.g. a deferred constraint): rolled back; lost: unknown
                    refused = isinstance(e, asyncpg.PostgresError) and not is_outage(e)
                    if journal is not None and journal.intents:
                        if refused:
                            await journal.abort_async()
                        else:
                            journal.leave_in_doubt()
                    if refused or not isinstance(e, Exception):
                        raise
                    ep = self._owner._endpoints[self.endpoint]
                    txid = journal.txid if journal is not None else None
                    raise InDoubtError(
                        ep.scrub(
                            f"the {self.endpoint} ({ep}) failed during COMMIT ({_why(e)}): the"
                            " transaction may have committed or not"
                            + (f"; journal txid {txid}" if txid is not None else "")
                        ),
                        txid=txid,
                    ) from e
                if journal is not None and journal.intents:
                    await journal.commit_async()
            else:
                # No COMMIT was sent, so nothing of the transaction can have committed.
                with contextlib.suppress(*DB_ERRORS):
                    await conn.execute("ROLLBACK")
                if journal is not None and journal.intents:
                    await journal.abort_async()
        finally:
            with contextlib.suppress(*DB_ERRORS):
                await pool.release(conn)
            if (
                failure is not None
                and (isinstance(failure, ConnectError) or is_outage(failure))
                and self._owner.auto_switch_enabled
            ):
                await self._owner._switch(self._generation, failure)
