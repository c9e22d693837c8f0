"""A journaled transaction: its intents, their rows, their settlement (the writer's
:meth:`~replverify.journal.writer.JournalWriter.transaction` makes one), and how its
records are built."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from replverify.errors import OutputError, UsageError
from replverify.journal.format import Op, TxId
from replverify.journal.statements import journal_value, render_sql

if TYPE_CHECKING:
    from replverify.journal.writer import JournalWriter

__all__ = ["JournalTransaction", "TxState", "definitely_failed"]

log = logging.getLogger("replverify.journal.writer")


def definitely_failed(exc: BaseException) -> bool:
    """Whether the database surely rolled back after ``exc`` (then: ``aborted``); lost
    connections, timeouts and cancellations leave the transaction in doubt. The policy
    is :func:`replverify.db.errors.definitely_failed`."""
    # Imported here: reading a journal must not import the database driver.
    from replverify.db.errors import definitely_failed as policy

    return policy(exc)


def _kinds(fields: Mapping[str, object]) -> Hashable:
    """The shape of a record: what the reader's verdict on it depends on. Its fields;
    for an object field (``key``, ``values``) its column names and the JSON kind of each
    value (the reader looks no deeper: a key must be a scalar, a value any JSON); for a
    string whether it is empty; the literal text of ``op``/``table``/``stmt`` is part of
    the caller's shape."""
    out: list[object] = []
    for name, v in fields.items():
        if isinstance(v, dict):
            out.append((name, tuple(v), tuple(map(type, v.values()))))
        elif isinstance(v, list):
            out.append((name, len(v) > 0))
        else:
            out.append((name, type(v), v == ""))
    return tuple(out)


def _image_kinds(image: Mapping[str, object] | None) -> Hashable:
    """:func:`_kinds` of one object field: its column names and the type of each value."""
    return None if image is None else (tuple(image), tuple(map(type, image.values())))


_PLAIN = frozenset({int, str, bool, type(None)})


def _image(image: Mapping[str, object]) -> dict[str, Any]:
    """``journal_value`` of a key or post-image, without its per-value walk when every
    value is already JSON (ints and strings: the common row)."""
    # a loop, not all() over a generator: this runs for every key and row journaled
    for k, v in image.items():
        if type(v) not in _PLAIN or type(k) is not str:
            return journal_value(dict(image))  # type: ignore[return-value]
    return dict(image)


def _write_fields(
    op: str,
    table: str,
    key: Mapping[str, object],
    values: Mapping[str, object] | None,
    before: Mapping[str, object] | None,
    meta: Mapping[str, object] | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"op": op, "table": table, "key": _image(key)}
    if values is not None:
        fields["values"] = _image(values)
    if before is not None:
        fields["before"] = journal_value(dict(before))
    if meta is not None:
        fields["meta"] = journal_value(dict(meta))
    return fields


TxState = Literal["open", "committed", "aborted", "in doubt"]


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
    """

    def __init__(self, writer: JournalWriter, txid: TxId, *, defer: bool = False) -> None:
        self.writer = writer
        self.txid = txid
        self.state: TxState = "open"
        #: intents journaled or held back
        self.intents = 0
        self.defer = defer
        self._pending: list[dict[str, Any]] = []
        self._pending_shapes: list[Hashable | None] = []

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
        return self._intent(fields)

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
        return self._intent(fields)

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
        return self._intent(*self._statement_fields(op, table, stmt, params, meta))

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
        seq = self._intent(*self._statement_fields(op, table, stmt, params, meta), wait=False)
        if self.writer.fsync == "always":  # no coroutine call for the other policies
            await self._sync_policy()
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
        batch = []
        shapes: list[Hashable | None] = []
        # what _kinds would say of these fields, without walking them all
        same = ("rows", op, table, type(self.txid), self.txid == "", type(of))
        txid = self.txid
        for key, values in rows:
            # the fields of _write_fields(op, table, key, values), built inline: once per row
            k = _image(key)
            if values is None:
                fields = {"op": op, "table": table, "key": k, "txid": txid, "state": "intent",
                          "of": of}  # fmt: skip
                shapes.append((same, _image_kinds(k), None))
            else:
                v = _image(values)
                fields = {"op": op, "table": table, "key": k, "values": v, "txid": txid,
                          "state": "intent", "of": of}  # fmt: skip
                shapes.append((same, _image_kinds(k), _image_kinds(v)))
            batch.append(fields)
        if batch and self.defer:
            self._pending += batch
            self._pending_shapes += shapes
            self.intents += len(batch)
        elif batch:
            self.writer._append_many(batch, durable=False, shapes=shapes)
            self.intents += len(batch)
        return len(batch)

    def _statement_fields(
        self,
        op: Op,
        table: str,
        stmt: str,
        params: Sequence[object],
        meta: Mapping[str, object] | None,
    ) -> tuple[dict[str, Any], Hashable]:
        """A statement intent's fields and its shape (see :meth:`JournalWriter._append_many`):
        the literal statement, whether it has parameters (the reader checks the list, not
        its JSON items), the meta object's kinds and the txid's."""
        fields: dict[str, Any] = {"op": op, "table": table, "stmt": stmt}
        fields["params"] = [a if type(a) in _PLAIN else journal_value(a) for a in params]
        if meta is not None:
            fields["meta"] = _image(meta)
        shape = ("stmt", op, table, stmt, bool(params), _image_kinds(fields.get("meta")),
                 type(self.txid), self.txid == "")  # fmt: skip
        return fields, shape

    def _intent(
        self, fields: dict[str, Any], shape: Hashable | None = None, *, wait: bool = True
    ) -> int:
        """Append held-back rows and the intent ``fields`` in one write; the intent's seq."""
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        fields["txid"] = self.txid
        fields["state"] = "intent"
        pending, shapes = self._take()
        try:
            first = self.writer._append_many(
                [*pending, fields], durable=False, shapes=[*shapes, shape], wait=wait
            )
        except BaseException:
            self.intents -= len(pending)  # dropped with it: the caller must not go on
            raise
        self.intents += 1
        return first + len(pending)

    def _take(self) -> tuple[list[dict[str, Any]], list[Hashable | None]]:
        pending, shapes = self._pending, self._pending_shapes
        self._pending, self._pending_shapes = [], []
        return pending, shapes

    def flush(self, *, wait: bool = True) -> None:
        """Append the held-back rows in one write (deferred; call it before COMMIT is
        sent). When that fails they are dropped (the caller must not commit)."""
        pending, shapes = self._take()
        if not pending:
            return
        try:
            self.writer._append_many(pending, durable=False, shapes=shapes, wait=wait)
        except BaseException:
            self.intents -= len(pending)
            raise

    async def flush_async(self) -> None:
        """:meth:`flush`, with the fsync of ``fsync="always"`` shared (group commit)."""
        self.flush(wait=False)
        if self.writer.fsync == "always":
            await self._sync_policy()

    async def _sync_policy(self) -> None:
        """Make what was appended durable when the policy says every record must be."""
        w = self.writer
        if w.fsync == "always":
            with w._lock:
                ticket = w._appended
            await w._sync_async(ticket)

    def _settle(
        self, state: Literal["committed", "aborted"], *, sync: bool, wait: bool = True
    ) -> int:
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        self.state = state
        fields = {"txid": self.txid, "state": state}
        shape = ("marker", state, type(self.txid))
        durable = sync and state == "committed"
        # held-back rows and the marker: one write
        pending, shapes = self._take()
        first = self.writer._append_many(
            [*pending, fields], durable=durable, shapes=[*shapes, shape], wait=wait
        )
        return first + len(pending)

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
        self._settle(state, sync=False, wait=False)
        w = self.writer
        if w.fsync != "never" and (state == "committed" or w.fsync == "always"):
            with w._lock:
                ticket = w._appended
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
