"""Journaled execution: a write run with its RETURNING, its intent and post-images in
the journal around it, and the write-on-its-own transaction of ``FailoverPool.execute``.

The catalog lookup (:data:`~replverify.failover.effects.TABLE_SQL`) and the bound
statement are cached per table and per statement text, so a statement shape costs one
catalog query for the life of the pool."""

from __future__ import annotations

import contextlib

import asyncpg

from replverify.db.connect import DB_OR_TIMEOUT_ERRORS
from replverify.db.errors import is_outage
from replverify.errors import UsageError
from replverify.failover.effects import (
    TABLE_SQL,
    Effect,
    TableMeta,
    WritePlan,
    bind_effect,
    plan_write,
)
from replverify.failover.switching import Side, _Progress
from replverify.journal.writer import (
    IntentTemplate,
    JournalTransaction,
    JournalWriter,
    definitely_failed,
)
from replverify.types import TableRef

__all__ = ["EFFECT_BATCH", "EffectRunner"]

#: rows of a multi-row effect fetched (and journaled) at a time: memory stays bounded
EFFECT_BATCH = 1000


def _tag(op: str, count: int) -> str:
    """The command tag PostgreSQL gives the statement without our RETURNING."""
    if count == 1:  # a keyed statement's: made once
        return _ONE_ROW[op]
    return f"{'INSERT 0' if op in ('insert', 'upsert') else op.upper()} {count}"


_ONE_ROW = {"insert": "INSERT 0 1", "upsert": "INSERT 0 1", "update": "UPDATE 1",
            "delete": "DELETE 1"}  # fmt: skip


class EffectRunner:
    """Runs writes journaled by their effect; holds the per-pool catalog caches."""

    def __init__(self) -> None:
        self._tables: dict[str, TableMeta] = {}
        self._effects: dict[str, Effect] = {}
        #: the encoded constant part of each statement's intent, per endpoint (its meta)
        self._intents: dict[tuple[str, Side], IntentTemplate] = {}

    async def table_meta(self, conn: asyncpg.Connection, plan: WritePlan) -> TableMeta:
        meta = self._tables.get(plan.table_text)
        if meta is None:
            row = await conn.fetchrow(TABLE_SQL, plan.table_text)
            if row is None:
                raise UsageError(f"cannot journal a write of {plan.table_text}: no such table")
            meta = TableMeta(TableRef(row[0], row[1]), tuple(row[2]), tuple(row[3]))
            self._tables[plan.table_text] = meta
        return meta

    async def effect_of(self, conn: asyncpg.Connection, plan: WritePlan, query: str) -> Effect:
        effect = self._effects.get(query)
        if effect is None:
            effect = self._effects[query] = bind_effect(plan, await self.table_meta(conn, plan))
        return effect

    def known_effect(self, query: str) -> Effect | None:
        """The bound statement of ``query`` when it ran before (no coroutine: the common
        case, once per statement); None: :meth:`effect_of` binds it."""
        return self._effects.get(query)

    async def run_effect(
        self,
        conn: asyncpg.Connection,
        journal: JournalTransaction,
        effect: Effect,
        query: str,
        args: tuple[object, ...],
        side: Side,
        *,
        keep: bool,
        timeout: float | None,
    ) -> tuple[str, list[asyncpg.Record]]:
        """Journal the intent, run the statement with RETURNING inside the open
        transaction, journal its rows ``EFFECT_BATCH`` at a time (streamed through a
        portal, so a 100k-row UPDATE never sits in memory); the command tag, and the rows
        when ``keep``."""
        plan = effect.plan
        template = self._intents.get((query, side))
        if template is None:
            table = effect.table.ref.qualified
            template = IntentTemplate(plan.op, table, query, {"endpoint": side})
            self._intents[(query, side)] = template
        # in the file before the statement is sent (durable first with fsync="always");
        # no coroutine for the other policies: this runs for every statement
        of = journal.intent_from(template, args, wait=False)
        if journal.writer.fsync == "always":
            await journal.durable_async()
        if effect.bound is not None and effect.bound <= EFFECT_BATCH:
            # a handful of rows at most: one round trip (a portal would need a second)
            records = await conn.fetch(effect.sql, *args, timeout=timeout)
            journal.effect_records(of, effect.rows, records)
            return _tag(plan.op, len(records)), records if keep else []
        kept: list[asyncpg.Record] = []
        batch: list[asyncpg.Record] = []
        count = 0
        cursor = conn.cursor(effect.sql, *args, prefetch=EFFECT_BATCH, timeout=timeout)
        async for record in cursor:
            count += 1
            batch.append(record)
            if keep:
                kept.append(record)
            if len(batch) >= EFFECT_BATCH:
                journal.effect_records(of, effect.rows, batch)
                await journal.flush_async()  # a transaction holds no more than a batch
                batch = []
        journal.effect_records(of, effect.rows, batch)
        return _tag(plan.op, count), kept

    async def write(
        self,
        conn: asyncpg.Connection,
        writer: JournalWriter | None,
        side: Side,
        progress: _Progress,
        query: str,
        args: tuple[object, ...],
        *,
        keep: bool,
        timeout: float | None,
    ) -> tuple[str, list[asyncpg.Record]]:
        """A write on its own: BEGIN, the statement, COMMIT, journaled in between. Until
        COMMIT is sent an endpoint failure cannot have committed anything (safe to run
        again elsewhere); after it, the outcome is unknown."""
        plan = plan_write(query)
        if plan is None or writer is None:
            progress.ambiguous = plan is not None
            if keep:
                return "", await conn.fetch(query, *args, timeout=timeout)
            return await conn.execute(query, *args, timeout=timeout), []
        effect = await self.effect_of(conn, plan, query)
        progress.key = effect.table.key
        tx = writer.transaction(defer=True)
        progress.txid = tx.txid
        await conn.execute("BEGIN")
        try:
            result = await self.run_effect(
                conn, tx, effect, query, args, side, keep=keep, timeout=timeout
            )
            await tx.flush_async()  # the rows in the file before COMMIT is sent
        except BaseException:
            # no COMMIT was sent: nothing of it can have committed
            with contextlib.suppress(*DB_OR_TIMEOUT_ERRORS):
                await conn.execute("ROLLBACK")
            if tx.intents:
                await tx.abort_async()
            raise
        progress.ambiguous = True
        try:
            await conn.execute("COMMIT")
        except asyncpg.PostgresError as e:
            if is_outage(e) or not definitely_failed(e):
                tx.leave_in_doubt()
            else:
                await tx.abort_async()
                progress.ambiguous = False
            raise
        except BaseException:
            tx.leave_in_doubt()
            raise
        await tx.commit_async()
        return result
