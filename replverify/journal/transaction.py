"""A journaled transaction: its intents, their rows, their settlement (the writer's
:meth:`~replverify.journal.writer.JournalWriter.transaction` makes one), and how its
records are built."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from replverify.errors import OutputError, UsageError
from replverify.journal.encode import (
    IntentTemplate,
    RowTemplate,
    body,
    image,
    image_kinds,
    txid_head,
)
from replverify.journal.format import Op, TxId
from replverify.journal.statements import journal_value, render_sql

if TYPE_CHECKING:
    from replverify.journal.writer import JournalWriter

__all__ = ["IntentTemplate", "JournalTransaction", "TxState", "definitely_failed"]

log = logging.getLogger("replverify.journal.writer")


def definitely_failed(exc: BaseException) -> bool:
    """Whether the database surely rolled back after ``exc`` (then: ``aborted``); lost
    connections, timeouts and cancellations leave the transaction in doubt. The policy
    is :func:`replverify.db.errors.definitely_failed`."""
    # Imported here: reading a journal must not import the database driver.
    from replverify.db.errors import definitely_failed as policy

    return policy(exc)


def _write_fields(
    op: str,
    table: str,
    key: Mapping[str, object],
    values: Mapping[str, object] | None,
    before: Mapping[str, object] | None,
    meta: Mapping[str, object] | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"op": op, "table": table, "key": image(key)}
    if values is not None:
        fields["values"] = image(values)
    if before is not None:
        fields["before"] = journal_value(dict(before))
    if meta is not None:
        fields["meta"] = journal_value(dict(meta))
    return fields


TxState = Literal["open", "committed", "aborted", "in doubt"]

_MARKERS = {state: body({"state": state}) for state in ("committed", "aborted")}


class JournalTransaction:
    """The intents of one database transaction and their settlement.

    Every intent is appended when it is journaled - before its statement is sent - so a
    reader of the file sees it while the statement runs (fsync by the policy). With
    ``defer=True`` the post-images (:meth:`effect_rows`) are held back and go in the same
    write as the next intent, :meth:`flush` or the marker: one write per statement, not
    two. The caller flushes before it sends COMMIT, so the rows are in the file before
    anything of the transaction can commit; a crash before then loses only rows of a
    transaction whose connection dies with it, so the server rolls it back, and its
    intents are in the file (in doubt, which is the truth).

    Records are encoded when they are journaled (:mod:`.encode`); the writer's lock is
    held only to number, stamp and write them.
    """

    def __init__(self, writer: JournalWriter, txid: TxId, *, defer: bool = False) -> None:
        self.writer = writer
        self.txid = txid
        self.state: TxState = "open"
        #: intents journaled or held back
        self.intents = 0
        self.defer = defer
        #: encoded records held back (their ``body``), and their shapes
        self._pending: list[bytes] = []
        self._pending_shapes: list[Hashable | None] = []
        try:
            self._head = txid_head(txid)
        except TypeError:  # not JSON: raised by the first append, as it always was
            self._head = b""
        #: the part of every record's shape the txid makes
        self._txid_kind = (type(txid), txid == "")

    def _txid_head(self) -> bytes:
        return self._head or txid_head(self.txid)

    def intent(
        self,
        op: Op,
        table: str,
        key: Mapping[str, object],
        values: Mapping[str, object] | None = None,
        before: Mapping[str, object] | None = None,
        *,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Append an intent (call it *before* running the statement); returns its seq."""
        fields = _write_fields(op, table, key, values, before, meta)
        fields["state"] = "intent"
        return self._intent(body(fields))

    def intent_sql(
        self,
        query: str,
        *args: object,
        before: Mapping[str, object] | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Append an intent for ``query`` with ``$n`` parameters ``args`` rendered as
        literals; refuses (UsageError) a statement reconcile could not check."""
        fields: dict[str, Any] = {"sql": render_sql(query, args)}
        if before is not None:
            fields["before"] = journal_value(dict(before))
        if meta is not None:
            fields["meta"] = journal_value(dict(meta))
        fields["state"] = "intent"
        return self._intent(body(fields))

    def intent_statement(
        self,
        op: Op,
        table: str,
        stmt: str,
        params: Sequence[object] = (),
        *,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Append the intent of a write journaled by its effect: the statement and its
        parameters (call it before the statement runs); its rows follow with
        :meth:`effect_rows`. Returns its seq."""
        return self.intent_from(IntentTemplate(op, table, stmt, meta), params)

    async def intent_statement_async(
        self,
        op: Op,
        table: str,
        stmt: str,
        params: Sequence[object] = (),
        *,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """:meth:`intent_statement` from asyncio: with ``fsync="always"`` the fsync that
        makes the intent durable is shared with concurrent tasks (group commit) and runs
        in a worker thread, instead of blocking the event loop once per intent."""
        return await self.intent_from_async(IntentTemplate(op, table, stmt, meta), params)

    def intent_from(
        self, template: IntentTemplate, params: Sequence[object] = (), *, wait: bool = True
    ) -> int:
        """:meth:`intent_statement` of the statement ``template`` was made for (a caller
        that runs a statement many times keeps its template: less to encode each time).
        ``wait=False``: no fsync even with ``fsync="always"``; the asyncio caller awaits
        :meth:`durable_async` before it sends the statement (what
        :meth:`intent_from_async` does).

        The record's shape (see :meth:`JournalWriter._append_lines`): the template's
        (the literal statement, the meta object's kinds), whether it has parameters (the
        reader checks the list, not its JSON items) and the txid's kind."""
        shape = (template.shape, bool(params), self._txid_kind)
        return self._intent(template.body(params), shape, wait=wait)

    async def intent_from_async(
        self, template: IntentTemplate, params: Sequence[object] = ()
    ) -> int:
        """:meth:`intent_from` with the fsync of ``fsync="always"`` shared, as
        :meth:`intent_statement_async`."""
        seq = self.intent_from(template, params, wait=False)
        if self.writer.fsync == "always":  # no coroutine call for the other policies
            await self.durable_async()
        return seq

    def effect_rows(
        self,
        of: int,
        op: Op,
        table: str,
        rows: Iterable[tuple[Mapping[str, object], Mapping[str, object] | None]],
    ) -> int:
        """Journal the post-images ``(key, values)`` of rows statement intent ``of`` (its
        seq) touched (``values`` None for a delete): all in one write, or held back
        (``defer``) for the next write; how many."""
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        bodies = []
        shapes: list[Hashable | None] = []
        # the shape of these records but for their keys and values, made once
        same = ("rows", op, table, self._txid_kind, type(of))
        for key, values in rows:
            # the fields of _write_fields(op, table, key, values), built inline: once per row
            k = image(key)
            if values is None:
                bodies.append(body({"op": op, "table": table, "key": k, "state": "intent",
                                    "of": of}))  # fmt: skip
                shapes.append((same, image_kinds(k), None))
            else:
                v = image(values)
                bodies.append(body({"op": op, "table": table, "key": k, "values": v,
                                    "state": "intent", "of": of}))  # fmt: skip
                shapes.append((same, image_kinds(k), image_kinds(v)))
        return self._rows(bodies, shapes)

    def effect_records(
        self, of: int, template: RowTemplate, rows: Iterable[Sequence[object]]
    ) -> int:
        """:meth:`effect_rows` of rows as the statement's RETURNING gave them, made into
        records by ``template`` (see :class:`~replverify.journal.encode.RowTemplate`)."""
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        same = (template.shape, self._txid_kind)
        record = template.record
        if self.defer:  # held back for the next write: straight onto the pending lists
            bodies, shapes, before = self._pending, self._pending_shapes, len(self._pending)
        else:
            bodies, shapes, before = [], [], 0
        try:
            for row in rows:
                encoded, kinds = record(row, of)
                bodies.append(encoded)
                shapes.append((same, kinds))
        except BaseException:
            del bodies[before:], shapes[before:]  # none of this statement's rows held
            raise
        if self.defer:
            self.intents += len(bodies) - before
            return len(bodies) - before
        return self._rows(bodies, shapes)

    def _rows(self, bodies: list[bytes], shapes: list[Hashable | None]) -> int:
        """Append row records, or hold them back (``defer``) for the next write; how many."""
        if bodies and self.defer:
            self._pending += bodies
            self._pending_shapes += shapes
        elif bodies:
            self.writer._append_lines(self._txid_head(), bodies, shapes, durable=False)
        self.intents += len(bodies)
        return len(bodies)

    def _intent(self, record: bytes, shape: Hashable | None = None, *, wait: bool = True) -> int:
        """Append held-back rows and the intent (its ``body``) in one write; its seq."""
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        bodies, shapes = self._pending, self._pending_shapes
        if bodies:
            self._pending, self._pending_shapes = [], []
            bodies.append(record)
            shapes.append(shape)
        else:  # nothing held back: the lists stay for the next rows
            bodies, shapes = [record], [shape]
        held = len(bodies) - 1
        try:
            first, _ = self.writer._append_lines(
                self._txid_head(), bodies, shapes, durable=False, wait=wait
            )
        except BaseException:
            self.intents -= held  # dropped with it: the caller must not go on
            raise
        self.intents += 1
        return first + held

    def _take(self) -> tuple[list[bytes], list[Hashable | None]]:
        pending, shapes = self._pending, self._pending_shapes
        self._pending, self._pending_shapes = [], []
        return pending, shapes

    def flush(self, *, wait: bool = True) -> None:
        """Append the held-back rows in one write (deferred; call it before COMMIT is
        sent). When that fails they are dropped (the caller must not commit)."""
        if not self._pending:
            return
        bodies, shapes = self._take()
        try:
            self.writer._append_lines(self._txid_head(), bodies, shapes, durable=False, wait=wait)
        except BaseException:
            self.intents -= len(bodies)
            raise

    async def flush_async(self) -> None:
        """:meth:`flush`, with the fsync of ``fsync="always"`` shared (group commit)."""
        self.flush(wait=False)
        if self.writer.fsync == "always":
            await self.durable_async()

    async def durable_async(self) -> None:
        """Make what was appended durable when the policy says every record must be
        (``fsync="always"``), the fsync shared with concurrent tasks."""
        w = self.writer
        if w.fsync == "always":
            with w._lock:
                ticket = w._appended
            await w._sync_async(ticket)

    def _settle(
        self, state: Literal["committed", "aborted"], *, sync: bool, wait: bool = True
    ) -> tuple[int, int]:
        """Append held-back rows and the marker in one write: the marker's seq, and the
        writer's ticket for them (see :meth:`JournalWriter._sync_async`)."""
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        self.state = state
        bodies, shapes = self._take()
        held = len(bodies)
        bodies.append(_MARKERS[state])
        shapes.append(("marker", state, self._txid_kind))
        durable = sync and state == "committed"
        first, ticket = self.writer._append_lines(
            self._txid_head(), bodies, shapes, durable=durable, wait=wait
        )
        return first + held, ticket

    def commit(self) -> None:
        """Mark every intent committed (after the database confirmed the COMMIT)."""
        self._settle("committed", sync=True)

    def abort(self) -> None:
        """Mark every intent aborted (after the database rolled the transaction back)."""
        self._settle("aborted", sync=True)

    def leave_in_doubt(self) -> None:
        """Write no marker: the outcome is unknown (the intents stay in doubt). Rows
        still held back are appended, to be reported in doubt."""
        try:
            self.flush()
        except (OutputError, UsageError) as e:
            log.warning("journal %s: in-doubt rows of %s lost: %s", self.writer.path,
                        self.txid, e)  # fmt: skip
        self.state = "in doubt"

    async def commit_async(self) -> None:
        """:meth:`commit`, with the fsync in a worker thread (group commit)."""
        await self._settle_async("committed")

    async def abort_async(self) -> None:
        await self._settle_async("aborted")

    async def _settle_async(self, state: Literal["committed", "aborted"]) -> None:
        _, ticket = self._settle(state, sync=False, wait=False)
        w = self.writer
        if w.fsync != "never" and (state == "committed" or w.fsync == "always"):
            await w._sync_async(ticket)

    def _outcome(self, exc: BaseException | None) -> Literal["committed", "aborted"] | None:
        """How leaving the ``with`` block settles the transaction (None: write nothing)."""
        if self.state != "open" or not self.intents:
            return None
        if exc is None:
            return "committed"
        if definitely_failed(exc):
            return "aborted"
        self.leave_in_doubt()
        return None

    def __enter__(self) -> JournalTransaction:
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = self._outcome(exc)
        if outcome is not None:
            self._settle(outcome, sync=True)

    async def __aenter__(self) -> JournalTransaction:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = self._outcome(exc)
        if outcome is not None:
            await self._settle_async(outcome)
