"""Writing a journal.

:class:`JournalWriter` is the application side::

    with JournalWriter("writes.jsonl") as journal:
        async with journal.transaction() as tx:       # marker "committed" on success
            tx.intent("update", "public.orders", {"id": 42},
                      values={"status": "paid"}, before={"status": "new"})
            await conn.execute("UPDATE orders SET status = 'paid' WHERE id = 42")

An intent is appended *before* the statement runs, the marker after the database
answered. Leaving the block with a database refusal (an :class:`asyncpg.PostgresError`
that rolled the transaction back) writes ``aborted``; any other exception - a lost
connection, a timeout, a cancellation, an error of the COMMIT whose outcome is unknown -
writes nothing, so the transaction stays *in doubt*, which is the truth.

*Durability* (``fsync=``):

``"commit"`` (default)
    a commit marker (or a self-committed record) is on disk before
    :meth:`JournalTransaction.commit` returns; intents and aborts are written
    (visible to other processes, safe from a crash of the application) but reach the disk
    with the next commit's fsync, which covers everything appended before it. A power
    loss can therefore drop only intents of transactions that were never acknowledged.
``"always"``
    every record is on disk before the call returns (an intent is durable before the
    statement runs).
``"never"``
    no fsync; the operating system writes when it likes (a crash of the application
    loses nothing, a power loss may).

Concurrent commits share one fsync (group commit): a committer whose record an fsync
in progress already covers does not fsync again. The ``*_async`` methods and
``async with`` leave the fsync to the writer's fsync thread, so the event loop never
blocks on the disk.

*Concurrency*: a writer may be shared by threads and by asyncio tasks of one process.
Each record is one ``write(2)`` of a whole line to an ``O_APPEND`` file descriptor under
a lock, so lines never interleave. Sequence numbers (``seq``) increase in file order and
continue from the last record when a journal is reopened; default txids are
``<random prefix>-<n>``, unique across writers and restarts.

*Torn tail*: opening a journal whose last line has no newline (a crash mid-append)
truncates that fragment, logging how many bytes were cut, so that later appends never
turn it into a bad line in the middle of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import logging
import os
import secrets
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson

from replverify.errors import OutputError, UsageError
from replverify.journal.format import FORMAT_VERSION, Op, TxId, _Bad, _loads
from replverify.journal.reader import _record_from
from replverify.journal.statements import journal_value, render_sql

__all__ = [
    "FsyncPolicy",
    "JournalTransaction",
    "JournalWriter",
    "TxState",
    "definitely_failed",
]

log = logging.getLogger("replverify.journal.writer")

FsyncPolicy = Literal["commit", "always", "never"]


def definitely_failed(exc: BaseException) -> bool:
    """Whether the database surely rolled back after ``exc`` (then: ``aborted``); lost
    connections, timeouts and cancellations leave the transaction in doubt. The policy
    is :func:`replverify.db.errors.definitely_failed`."""
    # Imported here: reading a journal must not import the database driver.
    from replverify.db.errors import definitely_failed as policy

    return policy(exc)


class JournalWriter:
    """Append journal records for an application; see the module docs for the rules."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "commit",
        txid_prefix: str | None = None,
    ) -> None:
        if fsync not in ("commit", "always", "never"):
            raise UsageError(f"fsync must be 'commit', 'always' or 'never', not {fsync!r}")
        self.path = os.fspath(path)
        self.fsync: FsyncPolicy = fsync
        self.prefix = txid_prefix or secrets.token_hex(4)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._appended = 0  # records appended (tickets for group commit)
        self._synced = 0  # records known to be on disk
        self._txn = 0
        self._shapes: set[Hashable] = set()  # record shapes the reader accepted
        #: asyncio committers waiting for the fsync thread: (ticket, loop, future)
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._wake = threading.Condition(threading.Lock())
        self._syncer: threading.Thread | None = None
        #: bytes of a torn last line cut off when the journal was opened
        self.repaired = 0
        created = not os.path.exists(self.path)
        try:
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as e:
            raise UsageError(f"cannot open journal {self.path}: {e.strerror}") from None
        self._seq = self._recover()
        if created and fsync != "never":
            _fsync_dir(self.path)

    # ---- opening

    def _recover(self) -> int:
        """Cut a torn last line; return the next sequence number."""
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            tail = b""
            pos = size
            while pos > 0 and tail.count(b"\n") < 2:
                step = min(pos, 65536)
                pos -= step
                f.seek(pos)
                tail = f.read(step) + tail
        cut = 0
        if not tail.endswith(b"\n"):
            keep = tail.rfind(b"\n") + 1  # 0 when the file is one torn line
            cut = len(tail) - keep
            assert self._fd is not None
            os.ftruncate(self._fd, size - cut)
            os.fsync(self._fd)
            self.repaired = cut
            log.warning("%s: cut a torn last line of %d bytes (crash mid-append)", self.path, cut)
            tail = tail[:keep]
        lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
        try:
            seq = _loads(lines[-1]).get("seq") if lines[-1] else None
        except (ValueError, AttributeError):
            seq = None
        return seq + 1 if isinstance(seq, int) and not isinstance(seq, bool) else 0

    # ---- appending

    def _append(
        self, fields: dict[str, Any], *, durable: bool, shape: Hashable | None = None
    ) -> int:
        """Append one record (seq and ts filled in under the lock); return its seq."""
        return self._append_many([fields], durable=durable, shapes=(shape,))

    def _append_many(
        self,
        batch: Sequence[dict[str, Any]],
        *,
        durable: bool,
        shape: Hashable | None = None,
        shapes: Sequence[Hashable | None] | None = None,
        wait: bool = True,
    ) -> int:
        """Append records as one ``write(2)`` (consecutive seqs); return the first seq.

        Every record is checked with the reader first - except, when the caller names
        the records' ``shape`` (one for all, or ``shapes``, one per record: the fields,
        columns and kinds of values its own code puts in them), those of a shape already
        checked: the reader's verdict depends on the shape, and checking costs a third of
        an append. ``wait=False``: no fsync here even when the policy asks for one - the
        (asyncio) caller awaits :meth:`_sync_async` instead, which concurrent tasks share."""
        with self._lock:
            if self._fd is None:
                raise UsageError(f"journal {self.path} is closed")
            first = self._seq
            ts = _dt.datetime.now(_dt.timezone.utc).isoformat()
            lines = []
            for n, fields in enumerate(batch):
                record: dict[str, Any] = {"v": FORMAT_VERSION, "txid": fields["txid"],
                                          "seq": first + n, "ts": ts}  # fmt: skip
                record.update(fields)
                data = _dumps(record)
                kind = shape if shapes is None else shapes[n]
                if kind is None or kind not in self._shapes:
                    try:
                        _record_from(_loads(data), 0)  # never write what the reader refuses
                    except _Bad as e:
                        raise UsageError(f"not a valid journal record: {e}") from None
                lines.append(data)
            data = b"".join(lines)
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError as e:
                if len(view) < len(data):  # no torn line before the next record
                    with contextlib.suppress(OSError):
                        size = os.fstat(self._fd).st_size
                        os.ftruncate(self._fd, size - (len(data) - len(view)))
                # The caller must not run the write it could not journal.
                raise OutputError(f"cannot append to journal {self.path}: {e.strerror}") from None
            for kind in (shape,) if shapes is None else shapes:
                if kind is not None:
                    self._shapes.add(kind)
            self._seq = first + len(batch)
            self._appended += len(batch)
            ticket = self._appended
        if wait and (durable or self.fsync == "always") and self.fsync != "never":
            self._sync_to(ticket)
        return first

    async def _sync_async(self, ticket: int) -> None:
        """:meth:`_sync_to` from asyncio, by the writer's fsync thread: committers of
        any event loop share its fsyncs (one arriving while an fsync runs waits for the
        next, which covers everyone who arrived meanwhile).

        The thread goes straight from one fsync to the next while anyone waits, and
        wakes the waiters itself (one ``call_soon_threadsafe`` per loop): no trip through
        the event loop to start an fsync, and no task or future chain between the fsync
        and the committers, each link of which costs a turn of a busy loop. Each waiter
        has its own future, so cancelling one cancels no one else's wait."""
        if self._synced >= ticket or self._fd is None:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        with self._wake:
            self._waiters.append((ticket, loop, waiter))
            if self._syncer is None:
                self._syncer = threading.Thread(
                    target=self._sync_loop, name=f"journal-fsync {self.path}", daemon=True
                )
                self._syncer.start()
            self._wake.notify()
        await waiter

    def _sync_loop(self) -> None:
        """The fsync thread: fsync while anyone waits; hand each waiter its outcome."""
        while True:
            with self._wake:
                while not self._waiters and self._fd is not None:
                    self._wake.wait()
                if not self._waiters:
                    return  # closed, nobody waiting
                upto = max(w[0] for w in self._waiters)
            error: BaseException | None = None
            try:
                self._sync_to(upto)
            except BaseException as e:  # handed to the waiters, who raise it
                error = e
            closed = self._fd is None  # close() fsynced everything appended
            with self._wake:
                done = [w for w in self._waiters if closed or error or w[0] <= self._synced]
                self._waiters = [w for w in self._waiters if w not in done]
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for _, loop, fut in done:
                by_loop.setdefault(loop, []).append(fut)
            for loop, futs in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    loop.call_soon_threadsafe(_settle_waiters, futs, error)

    def _sync_to(self, ticket: int) -> None:
        """fsync unless an fsync that started after record ``ticket`` already covered it."""
        with self._sync_lock:
            if self._synced >= ticket:
                return
            with self._lock:
                upto, fd = self._appended, self._fd
            if fd is None:
                return
            try:
                os.fsync(fd)
            except OSError as e:
                raise OutputError(f"cannot fsync journal {self.path}: {e.strerror}") from None
            self._synced = upto

    def new_txid(self) -> str:
        with self._lock:
            self._txn += 1
            return f"{self.prefix}-{self._txn}"

    def transaction(self, txid: TxId | None = None, *, defer: bool = False) -> JournalTransaction:
        """A journaled transaction; a context manager (``with`` or ``async with``).

        ``defer``: hold each statement's post-images back and append them with the next
        intent, or by :meth:`JournalTransaction.flush`, which the caller runs before it
        sends COMMIT (see :class:`JournalTransaction`). Intents are never held back."""
        return JournalTransaction(self, txid if txid is not None else self.new_txid(), defer=defer)

    begin = transaction

    def write(
        self,
        op: Op,
        table: str,
        key: Mapping[str, object],
        values: Mapping[str, object] | None = None,
        before: Mapping[str, object] | None = None,
        *,
        txid: TxId | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Journal a write that has already committed (``state: committed``); its seq."""
        fields = _write_fields(op, table, key, values, before, meta)
        fields["txid"] = txid if txid is not None else self.new_txid()
        fields["state"] = "committed"
        return self._append(fields, durable=True)

    def close(self) -> None:
        with self._sync_lock:  # not in the middle of the fsync thread's fsync
            with self._lock:
                fd, self._fd = self._fd, None
            if fd is not None:
                if self.fsync != "never":
                    os.fsync(fd)
                os.close(fd)
        with self._wake:
            syncer = self._syncer
            self._wake.notify()
        if syncer is not None and syncer is not threading.current_thread():
            syncer.join(timeout=5)

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> JournalWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)


def _settle_waiters(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    """On a waiter's event loop: the fsync it waited for is done (or failed)."""
    for fut in futures:
        if not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)


def _dumps(record: Mapping[str, Any]) -> bytes:
    """One compact JSON line (UTF-8, not ASCII-escaped). orjson is several times faster
    than :mod:`json`; it refuses only integers beyond 64 bits, which :mod:`json` writes."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        return line.encode()


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
    if all(type(k) is str and type(v) in _PLAIN for k, v in image.items()):
        return dict(image)
    return journal_value(dict(image))  # type: ignore[return-value]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(str(Path(path).resolve().parent), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        for key, values in rows:
            fields = _write_fields(op, table, key, values, None, None)
            fields["txid"] = self.txid
            fields["state"] = "intent"
            fields["of"] = of
            batch.append(fields)
            shapes.append((same, _image_kinds(fields["key"]), _image_kinds(fields.get("values"))))
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
