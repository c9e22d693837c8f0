"""Journal the writes of a SQLAlchemy application (async engine, asyncpg dialect).

>>> from sqlalchemy.ext.asyncio import create_async_engine
>>> from replverify.failover.sqlalchemy import journal_engine
>>> engine = create_async_engine("postgresql+asyncpg://app@db1/shop")
>>> journal_engine(engine, "writes.jsonl")          # configuration, not a rewrite

Every INSERT, UPDATE, DELETE and INSERT ... ON CONFLICT the engine sends (Core or ORM) is
then journaled by its effect, as :class:`~replverify.failover.pool.FailoverPool` journals it
(``pip install 'replverify[sqlalchemy]'``):

* ``before_cursor_execute`` (and ``do_executemany``, which runs each parameter set on
  its own so that each returns its rows): the statement intent (``stmt``, ``params``) is
  appended before the statement runs, and the statement is sent with a ``RETURNING`` of
  the key and written columns (aliased ``_rv_<n>``, after any RETURNING of its own);
* ``after_cursor_execute``: the post-images of the rows it touched are appended (and
  rows the application asked for itself are handed back to SQLAlchemy);
* the dialect's ``do_commit``/``do_rollback`` are wrapped, because SQLAlchemy has no
  event *after* a COMMIT: the ``committed`` marker is appended (and fsync'd) once the
  server confirmed it, ``aborted`` after a rollback or a refused COMMIT, and nothing when
  the COMMIT's answer was lost - the transaction stays in doubt, for ``reconcile``.

One journal transaction per database transaction (its txid is in
``connection.info["replverify_txid"]`` while it is open). Handing rows of the
application's own RETURNING back to SQLAlchemy uses the asyncpg adapter cursor's row
buffer; :func:`journal_engine` checks the engine uses that dialect.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_

from replverify.db.errors import is_outage
from replverify.errors import OutputError, UsageError
from replverify.failover.effects import (
    TABLE_SQL,
    Effect,
    TableMeta,
    bind_effect,
    plan_write,
)
from replverify.journal.writer import (
    FsyncPolicy,
    IntentTemplate,
    JournalTransaction,
    JournalWriter,
    definitely_failed,
)
from replverify.types import TableRef

__all__ = ["EngineJournal", "journal_engine"]

_TX = "replverify_tx"


class EngineJournal:
    """The hooks :func:`journal_engine` installs (``.journal``: the writer)."""

    def __init__(self, engine: AsyncEngine, journal: JournalWriter) -> None:
        self.engine = engine
        self.journal = journal
        self._tables: dict[str, TableMeta] = {}
        self._effects: dict[str, Effect] = {}
        #: the encoded constant part of each statement's intent
        self._intents: dict[str, IntentTemplate] = {}
        #: open journal transactions by DBAPI connection (its adapter has __slots__)
        self._open: dict[int, JournalTransaction] = {}

    # ---- statements

    def _effect(self, cursor: Any, statement: str) -> Effect | None:
        plan = plan_write(statement)
        if plan is None:
            return None
        effect = self._effects.get(statement)
        if effect is None:
            meta = self._tables.get(plan.table_text)
            if meta is None:
                cursor.execute(TABLE_SQL, (plan.table_text,))
                row = cursor.fetchone()
                if row is None:
                    raise UsageError(f"cannot journal a write of {plan.table_text}: no such table")
                meta = TableMeta(TableRef(row[0], row[1]), tuple(row[2]), tuple(row[3]))
                self._tables[plan.table_text] = meta
            effect = self._effects[statement] = bind_effect(plan, meta)
        return effect

    def _intent(self, effect: Effect, statement: str) -> IntentTemplate:
        template = self._intents.get(statement)
        if template is None:
            template = IntentTemplate(effect.plan.op, effect.table.ref.qualified, statement)
            self._intents[statement] = template
        return template

    def _transaction(self, conn: Any) -> JournalTransaction:
        key = _key(conn.connection)
        tx = self._open.get(key)
        if tx is None:
            # rows held back for the next write: one write per statement, not two
            tx = self._open[key] = self.journal.transaction(defer=True)
            conn.info["replverify_txid"] = tx.txid
        return tx

    def before_cursor_execute(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:  # fmt: skip
        if executemany and _many(parameters):
            return statement, parameters  # do_executemany takes it (insertmanyvalues: not)
        effect = self._effect(cursor, statement)
        if effect is None:
            return statement, parameters
        tx = self._transaction(conn)
        params = tuple(parameters or ())
        of = self._intent_of(tx, self._intent(effect, statement), params)
        conn.info[_TX] = (effect, of)
        return effect.sql, parameters

    def after_cursor_execute(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
        executemany: bool,
    ) -> None:  # fmt: skip
        pending = conn.info.pop(_TX, None)
        if pending is None:
            return
        effect, of = pending
        self._journal_rows(conn, cursor, effect, of)

    def _intent_of(
        self, tx: JournalTransaction, template: IntentTemplate, params: tuple[object, ...]
    ) -> int:
        """Append a statement's intent, in the file before the statement is sent (on
        disk too with fsync="always", :meth:`_durable`)."""
        of = tx.intent_from(template, params, wait=False)
        self._durable(tx)
        return of

    def _durable(self, tx: JournalTransaction) -> None:
        """With fsync="always", wait for what was appended to be on disk (the fsync
        shared with other tasks); other policies do not wait, so no trip through the
        event loop from SQLAlchemy's greenlet."""
        if self.journal.fsync == "always":
            await_(tx.durable_async())

    def _journal_rows(self, conn: Any, cursor: Any, effect: Effect, of: int) -> None:
        rows = cursor.fetchall()
        tx = self._transaction(conn)
        tx.effect_records(of, effect.rows, rows)
        if effect.plan.own_returning:
            cursor._rows.extend(rows)  # the application's own RETURNING rows, handed back
        else:
            # The statement as the application wrote it returns no rows: SQLAlchemy then
            # builds no result metadata for ours (a third of its work per statement), and
            # the result is what it would be unjournaled (returns_rows False, no keys).
            try:
                cursor.description = None
            except AttributeError:  # SQLAlchemy 2.1: a property over _description
                cursor._description = None

    def do_executemany(
        self, cursor: Any, statement: str, parameters: Sequence[Any], context: Any
    ) -> bool | None:
        effect = self._effect(cursor, statement)
        if effect is None:
            return None
        conn = context.root_connection
        tx = self._transaction(conn)
        template = self._intent(effect, statement)
        for params in parameters:
            of = self._intent_of(tx, template, tuple(params))
            cursor.execute(effect.sql, params)
            self._journal_rows(conn, cursor, effect, of)
        return True

    # ---- settling

    def install(self) -> None:
        sync = self.engine.sync_engine
        dialect = sync.dialect
        if dialect.driver != "asyncpg":
            raise UsageError(
                f"journal_engine needs the asyncpg dialect (postgresql+asyncpg://), not"
                f" {dialect.name}+{dialect.driver}"
            )
        event.listen(sync, "before_cursor_execute", self.before_cursor_execute, retval=True)
        event.listen(sync, "after_cursor_execute", self.after_cursor_execute)
        event.listen(sync, "do_executemany", self.do_executemany)
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            tx = self._open.pop(_key(dbapi_connection), None)
            if tx is not None:
                try:
                    tx.flush(wait=False)  # the rows in the file before COMMIT is sent
                    self._durable(tx)
                except BaseException:
                    # not journaled, so not committed
                    with contextlib.suppress(Exception):
                        rollback(dbapi_connection)
                    with contextlib.suppress(OutputError, UsageError):
                        tx.abort()
                    raise
            try:
                commit(dbapi_connection)
            except Exception as e:
                if tx is not None:
                    cause = e.__cause__ if e.__cause__ is not None else e  # asyncpg's error
                    if is_outage(cause) or not definitely_failed(cause):
                        tx.leave_in_doubt()
                    else:
                        tx.abort()
                raise
            if tx is not None:
                await_(tx.commit_async())

        def do_rollback(dbapi_connection: Any) -> None:
            tx = self._open.pop(_key(dbapi_connection), None)
            rollback(dbapi_connection)
            if tx is not None:
                tx.abort()  # no COMMIT was sent: nothing of it committed

        dialect.do_commit = do_commit  # type: ignore[method-assign]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def _many(parameters: Any) -> bool:
    """Whether ``parameters`` are several parameter sets (a real executemany)."""
    return (
        isinstance(parameters, (list, tuple))
        and bool(parameters)
        and isinstance(parameters[0], (list, tuple, dict))
    )


def _key(connection: Any) -> int:
    """The DBAPI connection under a pool's proxy (what do_commit receives) or itself."""
    return id(getattr(connection, "dbapi_connection", connection))


def journal_engine(
    engine: AsyncEngine,
    journal: str | os.PathLike[str] | JournalWriter,
    *,
    fsync: FsyncPolicy = "commit",
) -> EngineJournal:
    """Journal every write ``engine`` sends, by its effect (see the module docs)."""
    writer = journal if isinstance(journal, JournalWriter) else JournalWriter(journal, fsync=fsync)
    hooks = EngineJournal(engine, writer)
    hooks.install()
    return hooks
