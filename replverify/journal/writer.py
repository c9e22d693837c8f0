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
``async with`` never block the event loop on the disk: on Linux the kernel runs the
fsync (native AIO, :mod:`~replverify.journal.aiosync`) and the loop learns of its end
as of a socket's data; elsewhere the writer's fsync thread runs it.

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
import logging
import os
import queue
import secrets
import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from replverify.errors import OutputError, UsageError
from replverify.journal.aiosync import AioFsync, open_aio
from replverify.journal.encode import Clock, body, txid_head
from replverify.journal.format import Op, TxId, _Bad, _loads
from replverify.journal.reader import _record_from
from replverify.journal.transaction import (
    IntentTemplate,
    JournalTransaction,
    TxState,
    _write_fields,
    definitely_failed,
)

__all__ = [
    "FsyncPolicy",
    "IntentTemplate",
    "JournalTransaction",
    "JournalWriter",
    "TxState",
    "definitely_failed",
]

log = logging.getLogger("replverify.journal.writer")

FsyncPolicy = Literal["commit", "always", "never"]


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
        self._clock = Clock()
        #: asyncio committers waiting for the fsync thread: (ticket, loop, future); None
        #: (from close()) ends the thread
        self._requests: queue.SimpleQueue[
            tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]] | None
        ] = queue.SimpleQueue()
        self._start = threading.Lock()  # the thread is started, or ended, under it
        self._syncer: threading.Thread | None = None
        #: each event loop's AIO group commit; None: that loop uses the thread
        self._loops: dict[asyncio.AbstractEventLoop, _LoopFsyncs | None] = {}
        self._aio = True  # False: the thread for every loop (tests of the thread)
        #: fsyncs started (group commit: fewer than the commits they made durable)
        self.fsyncs = 0
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

    def _append_lines(
        self,
        head: bytes,
        bodies: Sequence[bytes],
        shapes: Sequence[Hashable | None],
        *,
        durable: bool,
        wait: bool = True,
    ) -> tuple[int, int]:
        """Append records of one txid as one ``write(2)`` (consecutive seqs): each line is
        ``head`` (:func:`~.encode.txid_head`), its seq, the time and its ``body``
        (:func:`~.encode.body`). Returns the first seq and the ticket that
        :meth:`_sync_to` / :meth:`_sync_async` take to make the lines durable.

        Every record is checked with the reader first - except those of a shape already
        checked (``shapes``, one per record, None for none: the fields, columns and kinds
        of values the caller's code puts in them): the reader's verdict depends on the
        shape, and checking costs a third of an append. ``wait=False``: no fsync here
        even when the policy asks for one - the (asyncio) caller awaits
        :meth:`_sync_async` instead, which concurrent tasks share."""
        with self._lock:
            fd = self._fd
            if fd is None:
                raise UsageError(f"journal {self.path} is closed")
            first = self._seq
            ts = self._clock.ts_field()
            n = len(bodies)
            if not self._shapes.issuperset(shapes):  # a shape not seen yet (None: never is)
                self._check(head, first, ts, bodies, shapes)
            if n == 1:  # the common append: one intent, or a marker
                data = b"%b%d%b%b" % (head, first, ts, bodies[0])
            else:
                data = b"".join(
                    [b"%b%d%b%b" % (head, seq, ts, rec) for seq, rec in enumerate(bodies, first)]
                )
            written = 0
            try:
                written = os.write(fd, data)
                while written < len(data):  # a short write (a signal, a nearly full disk)
                    written += os.write(fd, memoryview(data)[written:])
            except OSError as e:
                if written:  # no torn line before the next record
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, os.fstat(fd).st_size - written)
                # The caller must not run the write it could not journal.
                raise OutputError(f"cannot append to journal {self.path}: {e.strerror}") from None
            self._seq = first + n
            self._appended = ticket = self._appended + n
        if wait and (durable or self.fsync == "always") and self.fsync != "never":
            self._sync_to(ticket)
        return first, ticket

    def _check(
        self,
        head: bytes,
        first: int,
        ts: bytes,
        bodies: Sequence[bytes],
        shapes: Sequence[Hashable | None],
    ) -> None:
        """Check with the reader each record of a shape not checked yet; remember the
        shapes once every record passed (a refused one: nothing is written)."""
        new: list[Hashable] = []
        for seq, (record, kind) in enumerate(zip(bodies, shapes, strict=True), first):
            if kind in self._shapes:
                continue
            try:
                _record_from(_loads(b"%b%d%b%b" % (head, seq, ts, record)), 0)
            except _Bad as e:
                raise UsageError(f"not a valid journal record: {e}") from None
            if kind is not None:
                new.append(kind)
        self._shapes.update(new)

    async def _sync_async(self, ticket: int) -> None:
        """:meth:`_sync_to` from asyncio without blocking the loop: committers share
        fsyncs (one arriving while an fsync runs waits for the next, which covers
        everyone who arrived meanwhile). By the kernel where it can
        (:class:`_LoopFsyncs`), else by the writer's fsync thread, which the committers
        of every event loop share.

        The thread goes straight from one fsync to the next while anyone waits, and
        wakes the waiters itself (one ``call_soon_threadsafe`` per loop): no trip through
        the event loop to start an fsync, and no task or future chain between the fsync
        and the committers, each link of which costs a turn of a busy loop. Requests
        reach it through a :class:`queue.SimpleQueue` (C: no Python-level condition
        variable on either side, and the thread sleeps in ``get`` without the GIL).
        Each waiter has its own future, so cancelling one cancels no one else's wait."""
        if self._synced >= ticket or self._fd is None:
            return
        loop = asyncio.get_running_loop()
        fsyncs = self._loops.get(loop) if loop in self._loops else self._loop_fsyncs(loop)
        if fsyncs is not None and fsyncs.aio.pid != os.getpid():
            fsyncs = self._loop_fsyncs(loop)
        if fsyncs is not None:
            await fsyncs.wait(ticket)
            return
        waiter = loop.create_future()
        with self._start:  # not between close()'s last request and its own fsync
            if self._fd is None:
                return
            self._requests.put((ticket, loop, waiter))
            if self._syncer is None:
                self._syncer = threading.Thread(
                    target=self._sync_loop, name=f"journal-fsync {self.path}", daemon=True
                )
                self._syncer.start()
        await waiter

    def _loop_fsyncs(self, loop: asyncio.AbstractEventLoop) -> _LoopFsyncs | None:
        """``loop``'s AIO group commit, made on its first commit (None: the thread)."""
        with self._start:
            for other, fsyncs in list(self._loops.items()):
                if other.is_closed() or (fsyncs is not None and fsyncs.aio.pid != os.getpid()):
                    del self._loops[other]  # a finished asyncio.run(), a forked parent's
                    if fsyncs is not None:
                        fsyncs.aio.close()
            fsyncs = _LoopFsyncs(self, loop) if self._aio else None
            if fsyncs is not None and fsyncs.aio is None:
                fsyncs = None
            self._loops[loop] = fsyncs
            return fsyncs

    def _sync_loop(self) -> None:
        """The fsync thread: fsync while anyone waits; hand each waiter its outcome.
        Ends at close()'s ``None``, after the requests put before it."""
        requests = self._requests
        while True:
            first = requests.get()
            if first is None:
                return
            batch = [first]
            for _ in range(requests.qsize()):  # everyone waiting now shares this fsync
                request = requests.get_nowait()
                if request is None:
                    requests.put(None)  # after this batch
                    break
                batch.append(request)
            error: BaseException | None = None
            try:
                self._sync_to(max(r[0] for r in batch))
            except BaseException as e:  # handed to the waiters, who raise it
                error = e
            # the fsync covered every request of the batch (or close() did: it fsynced
            # everything appended): one wake-up per event loop settles them
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for _, loop, fut in batch:
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
            self.fsyncs += 1
            try:
                os.fsync(fd)
            except OSError as e:
                raise _fsync_failed(self.path, e.strerror) from None
            self._note_synced(upto)

    def _note_synced(self, upto: int) -> None:
        """Records up to ticket ``upto`` are on disk (fsyncs of other loops or threads may
        have covered more already)."""
        if upto > self._synced:
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
        fields["state"] = "committed"
        head = txid_head(txid if txid is not None else self.new_txid())
        return self._append_lines(head, [body(fields)], [None], durable=True)[0]

    def close(self) -> None:
        with self._sync_lock:  # not in the middle of the fsync thread's fsync
            with self._lock:
                fd, self._fd = self._fd, None
            if fd is not None:
                if self.fsync != "never":
                    os.fsync(fd)
                os.close(fd)
        with self._start:
            syncer = self._syncer
            if syncer is not None:
                self._requests.put(None)
            loops, self._loops = self._loops, {}
        for fsyncs in loops.values():
            if fsyncs is not None:
                fsyncs.closed()
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


class _LoopFsyncs:
    """Group commit on one event loop by kernel AIO: at most one fsync runs; a committer
    its fsync covers waits for it, any other for the next. The next starts when the
    running one ends, or, when none runs, once the tasks ready now have run: the
    database's answers to several COMMITs arrive together, and their committers then
    share one fsync instead of the first taking one of its own."""

    def __init__(self, writer: JournalWriter, loop: asyncio.AbstractEventLoop) -> None:
        self.writer = writer
        self.loop = loop
        self.aio: AioFsync = open_aio(loop, self._done)  # type: ignore[assignment]
        self.upto = 0  # the ticket the running fsync covers
        self.covered: list[asyncio.Future[None]] = []  # wait for the running fsync
        self.waiting: list[asyncio.Future[None]] = []  # wait for the next
        self.due = False  # the next fsync is scheduled (call_soon)

    async def wait(self, ticket: int) -> None:
        fut = self.loop.create_future()
        if self.aio.busy and self.upto >= ticket:
            self.covered.append(fut)
        else:
            self.waiting.append(fut)
            if not self.aio.busy and not self.due:
                self.due = True
                self.loop.call_soon(self._due)
        await fut

    def _due(self) -> None:
        self.due = False
        if self.waiting and not self.aio.busy:
            self._start()

    def _start(self) -> None:
        w = self.writer
        w.fsyncs += 1
        futs, self.waiting = self.waiting, []
        error: OutputError | None = None
        # under the writer's lock: close() cannot close the descriptor before the kernel
        # holds its own reference to the file (io_submit takes it)
        with w._lock:
            upto, fd = w._appended, w._fd
            if fd is not None:
                try:
                    self.aio.submit(fd)
                except OSError as e:
                    error = _fsync_failed(w.path, e.strerror)
        if fd is None or error is not None:
            # closed: close() fsynced everything appended, and nothing is appended after
            _settle_waiters(futs, error)
            if fd is None and not self.aio.busy:
                self.aio.close()  # made after close() took the loops it frees
            return
        self.upto, self.covered = upto, futs

    def _done(self, res: int) -> None:
        w = self.writer
        futs, self.covered = self.covered, []
        error = None
        if res < 0:
            error = _fsync_failed(w.path, os.strerror(-res))
        else:
            w._note_synced(self.upto)
        _settle_waiters(futs, error)
        if self.waiting:
            self._start()
        if not self.aio.busy and w._fd is None:
            self.aio.close()

    def closed(self) -> None:
        """The writer was closed (from any thread): free the AIO context once no fsync
        runs (:meth:`_done` does it for a running one)."""
        if self.loop.is_closed():
            self.aio.close()
            return
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._closed_on_loop)

    def _closed_on_loop(self) -> None:
        if not self.aio.busy:
            _settle_waiters(self.waiting, None)
            self.waiting = []
            self.aio.close()


def _fsync_failed(path: str, reason: str | None) -> OutputError:
    """The error of a failed fsync of the journal, by the thread or by the kernel."""
    return OutputError(f"cannot fsync journal {path}: {reason}")


def _settle_waiters(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    """On a waiter's event loop: the fsync it waited for is done (or failed)."""
    for fut in futures:
        if not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)


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
