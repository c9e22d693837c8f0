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

Journaling. Each INSERT / UPDATE / DELETE / INSERT ... ON CONFLICT sent through
:meth:`FailoverPool.execute` (or ``fetch*`` with RETURNING) is one journaled transaction:
an ``intent`` carrying the statement rendered with literal values (``"sql"``, via
:func:`replverify.journal.records.render_sql`) is appended before it runs; ``committed`` after
the server confirmed it, ``aborted`` when the server refused it; when the endpoint failed
mid-statement nothing is appended, so the intent stays *in doubt* - the truth: it may or
may not have committed before the primary died. The retry on the other endpoint is a new
journaled transaction. ``replverify reconcile`` checks the journal later. A write
statement the journal cannot describe (e.g. ``SET v = v + 1``) is refused with
:class:`~replverify.errors.UsageError` before it runs, so no write goes unjournaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import inspect
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import asyncpg
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from replverify.db.connect import DB_ERRORS, DB_OR_TIMEOUT_ERRORS, Endpoint, redact_text
from replverify.db.errors import is_outage
from replverify.errors import ConnectError, FailoverError, UsageError
from replverify.journal.records import (
    FsyncPolicy,
    JournalTransaction,
    JournalWriter,
    definitely_failed,
)

__all__ = [
    "EVENTS",
    "FailoverEvent",
    "FailoverPool",
    "PoolTransaction",
    "alternate_dsn",
    "is_outage",
]

T = TypeVar("T")
Side = Literal["primary", "alternate"]
EventName = Literal["endpoint_switch_required", "endpoint_switched"]
EVENTS: tuple[EventName, ...] = ("endpoint_switch_required", "endpoint_switched")
Callback = Callable[["FailoverEvent"], object]

SUFFIX = "--s"

# ----------------------------------------------------------------------- alternate_dsn


def _alternate_host(host: str) -> str:
    if not host or host.startswith("/") or host == "localhost" or ":" in host:
        raise UsageError(
            f"no alternate host name for {host or '(default host)'!r}: the '--s' convention "
            "needs a DNS name such as contoso.db.example.com"
        )
    label, dot, rest = host.partition(".")
    if not dot or re.fullmatch(r"[\d.]+", host):
        raise UsageError(
            f"no alternate host name for {host!r}: the '--s' convention needs a DNS name "
            "such as contoso.db.example.com"
        )
    label = label[: -len(SUFFIX)] if label.endswith(SUFFIX) else label + SUFFIX
    return f"{label}.{rest}"


def alternate_dsn(dsn: str) -> str:
    """The DSN of the alternate (secondary) endpoint by the ``--s`` naming convention:
    host ``contoso.db.example.com`` becomes ``contoso--s.db.example.com`` (and back).

    Works for ``postgresql://`` URLs and ``key=value`` strings; every host of a
    multi-host DSN is mapped; everything else (user, password, port, options) is kept.
    Raises :class:`~replverify.errors.UsageError` when there is no DNS name to map.
    """
    text = dsn.strip()
    if text.startswith(("postgresql://", "postgres://")):
        url = urllib.parse.urlsplit(text)
        userinfo, at, hosts = url.netloc.rpartition("@")
        mapped = []
        for part in hosts.split(","):
            if part.startswith("["):
                raise UsageError("no alternate host name for an IPv6 address")
            host, colon, port = part.partition(":")
            mapped.append(_alternate_host(host) + colon + port)
        netloc = userinfo + at + ",".join(mapped)
        return urllib.parse.urlunsplit(url._replace(netloc=netloc))
    Endpoint.parse(text)  # a clear error for what is not a DSN at all
    m = re.search(r"(^|\s)host\s*=\s*('(?:[^'\\]|\\.)*'|\S*)", text)
    if m is None:
        raise UsageError("no alternate host name: the connection string names no host")
    value = m.group(2)
    quoted = value.startswith("'")
    hosts = re.sub(r"\\(.)", r"\1", value[1:-1]) if quoted else value
    new = ",".join(_alternate_host(h) for h in hosts.split(","))
    if quoted:
        new = "'" + new.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text[: m.start(2)] + new + text[m.end(2) :]


# ----------------------------------------------------------------------- failures


@dataclass(frozen=True)
class FailoverEvent:
    """What a callback receives. DSNs are display forms (no passwords)."""

    name: EventName
    from_endpoint: Side
    to_endpoint: Side
    from_dsn: str
    to_dsn: str
    reason: str
    at: _dt.datetime


# ----------------------------------------------------------------------- statements

_WRITES = (exp.Insert, exp.Update, exp.Delete)


def _is_write(query: str) -> bool:
    """Whether ``query`` is an INSERT/UPDATE/DELETE (the writes the journal describes).

    Statements sqlglot cannot parse, DDL and reads are not journaled."""
    try:
        trees = sqlglot.parse(query, read="postgres")
    except SqlglotError:
        return bool(re.match(r"\s*(insert|update|delete|merge)\b", query, re.I))
    return any(isinstance(t, _WRITES) for t in trees if t is not None)


# ----------------------------------------------------------------------- the pool


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


class FailoverPool(_Rows):
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
        self._endpoints: dict[Side, Endpoint] = {
            "primary": Endpoint.parse(primary),
            "alternate": Endpoint.parse(alternate),
        }
        self.auto_switch_enabled = auto_switch
        self._min, self._max = min_size, max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._settings = {"application_name": "replverify-failover", **(server_settings or {})}
        self._callbacks: dict[EventName, list[Callback]] = {n: [] for n in EVENTS}
        self._active: Side = "primary"
        self._pool: asyncpg.Pool | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._owns_journal = journal is not None and not isinstance(journal, JournalWriter)
        if journal is None or isinstance(journal, JournalWriter):
            self.journal = journal
        else:
            self.journal = JournalWriter(journal, fsync=fsync)
        #: switches so far (for monitoring)
        self.switches = 0

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

    def on(self, event: str, callback: Callback) -> None:
        """Call ``callback(event)`` (a function or coroutine function) on ``event``."""
        if event not in EVENTS:
            raise UsageError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        self._callbacks[event].append(callback)

    @property
    def active(self) -> Side:
        """``"primary"`` or ``"alternate"``: the endpoint calls go to."""
        return self._active

    def dsn(self, side: Side) -> str:
        """The display DSN of an endpoint (no password)."""
        return str(self._endpoints[side])

    async def _open(self, side: Side) -> asyncpg.Pool:
        ep = self._endpoints[side]
        kw = dict(ep.kwargs)
        kw["timeout"] = self._connect_timeout
        # A floor of idle connections (min_size > 0) makes asyncpg keep reconnecting to a
        # dead endpoint, logging a traceback each time, until the switch closes its pool;
        # the default 0 avoids that, and one connection is still made here so that an
        # unreachable endpoint is found now, not at the first query.
        pool = None
        try:
            pool = await asyncpg.create_pool(
                min_size=self._min,
                max_size=self._max,
                command_timeout=self._command_timeout,
                server_settings=self._settings,
                **kw,
            )
            assert pool is not None
            async with pool.acquire():
                pass
        except DB_OR_TIMEOUT_ERRORS as e:
            if pool is not None:
                pool.terminate()
            raise ConnectError(ep.scrub(f"cannot connect to the {side} ({ep}): {_why(e)}")) from e
        return pool

    # ---- events and switching

    async def _fire(self, event: FailoverEvent) -> None:
        for cb in list(self._callbacks[event.name]):
            result = cb(event)
            if inspect.isawaitable(result):
                await result

    async def _switch(self, generation: int, cause: BaseException) -> None:
        """Switch to the other endpoint unless another call already did (same lock)."""
        async with self._lock:
            if self._generation != generation:
                return
            old: Side = self._active
            new: Side = "alternate" if old == "primary" else "primary"
            reason = self._endpoints[old].scrub(_why(cause))
            now = _dt.datetime.now(_dt.timezone.utc)
            args = (old, new, self.dsn(old), self.dsn(new), reason)
            await self._fire(FailoverEvent("endpoint_switch_required", *args, now))
            try:
                pool = await self._open(new)
            except ConnectError as e:
                raise FailoverError(
                    f"both endpoints failed: the {old} ({self.dsn(old)}): {reason}; "
                    f"{self._endpoints[new].scrub(e.message)}"
                ) from e
            previous, self._pool = self._pool, pool
            self._active = new
            self._generation += 1
            self.switches += 1
            if previous is not None:
                previous.terminate()
            await self._fire(
                FailoverEvent("endpoint_switched", *args, _dt.datetime.now(_dt.timezone.utc))
            )

    async def _call(self, run: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``run(conn)`` on the active endpoint; on an outage switch and retry once."""
        return await self._switching(lambda: self._attempt(run))

    async def _switching(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` on the active endpoint; on an outage switch and retry once."""
        if self._pool is None:
            raise UsageError("the FailoverPool is closed (or was never started)")
        generation, side = self._generation, self._active
        try:
            return await attempt()
        except Exception as e:
            if not is_outage(e):
                raise
            if not self.auto_switch_enabled:
                ep = self._endpoints[side]
                raise ConnectError(
                    ep.scrub(f"the {side} ({ep}) failed: {_why(e)} (auto-switch is off)")
                ) from e
            first = e
        await self._switch(generation, first)
        try:
            return await attempt()
        except Exception as e:
            if not is_outage(e):
                raise
            ep, other = self._endpoints[side], self._endpoints[self._active]
            raise FailoverError(
                f"both endpoints failed: the {side} ({ep}): {ep.scrub(_why(first))}; "
                f"the {self._active} ({other}): {other.scrub(_why(e))}"
            ) from e

    async def _attempt(self, run: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            return await run(conn)

    # ---- the application's calls

    async def _journaled(
        self, query: str, args: tuple[object, ...], call: Callable[..., Awaitable[T]]
    ) -> T:
        """Run ``call(query, *args)`` inside one journaled transaction (intent → settle)."""
        if self.journal is None or not _is_write(query):
            return await call(query, *args)
        tx: JournalTransaction = self.journal.transaction()
        tx.intent_sql(query, *args, meta={"endpoint": self._active})
        try:
            result = await call(query, *args)
        except asyncpg.PostgresError as e:
            if is_outage(e) or not definitely_failed(e):
                tx.leave_in_doubt()
            else:
                await tx.abort_async()
            raise
        except BaseException:
            tx.leave_in_doubt()
            raise
        await tx.commit_async()
        return result

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        """Run a statement (journaled when it writes); returns the command tag."""

        async def run(conn: asyncpg.Connection) -> str:
            async def call(q: str, *a: object) -> str:
                status: str = await conn.execute(q, *a, timeout=timeout)
                return status

            return await self._journaled(query, args, call)

        return await self._call(run)

    async def fetch(
        self, query: str, *args: object, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        async def run(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            async def call(q: str, *a: object) -> list[asyncpg.Record]:
                rows: list[asyncpg.Record] = await conn.fetch(q, *a, timeout=timeout)
                return rows

            return await self._journaled(query, args, call)

        return await self._call(run)

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

    async def _checkout(self) -> tuple[asyncpg.Pool, asyncpg.Connection, Side]:
        """A connection of the active endpoint inside a started transaction."""
        assert self._pool is not None
        pool, side = self._pool, self._active
        conn = await pool.acquire()
        try:
            await conn.execute("BEGIN")
        except BaseException:
            with contextlib.suppress(*DB_ERRORS):
                await pool.release(conn)
            raise
        return pool, conn, side

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
            self._journal = self._owner.journal.transaction()
        return self

    def _connection(self) -> asyncpg.Connection:
        if self._conn is None:
            raise UsageError("use the transaction inside 'async with pool.transaction()'")
        return self._conn

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        conn = self._connection()
        self._intent(query, args)
        status: str = await self._lost_as_connect_error(
            lambda: conn.execute(query, *args, timeout=timeout)
        )
        return status

    async def fetch(
        self, query: str, *args: object, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        conn = self._connection()
        self._intent(query, args)
        rows: list[asyncpg.Record] = await self._lost_as_connect_error(
            lambda: conn.fetch(query, *args, timeout=timeout)
        )
        return rows

    async def _lost_as_connect_error(self, call: Callable[[], Awaitable[T]]) -> T:
        """asyncpg detaches a pooled connection the server closed, and then says it was
        "released back to the pool": inside the transaction that means the connection was
        lost, and is reported so (:class:`~replverify.errors.ConnectError`)."""
        try:
            return await call()
        except asyncpg.InterfaceError as e:
            if "released back to the pool" not in str(e) and not is_outage(e):
                raise
            ep = self._owner._endpoints[self.endpoint]
            raise ConnectError(
                ep.scrub(f"the {self.endpoint} ({ep}) closed the connection inside a transaction")
            ) from e

    def _intent(self, query: str, args: tuple[object, ...]) -> None:
        if self._journal is not None and _is_write(query):
            self._journal.intent_sql(query, *args, meta={"endpoint": self.endpoint})

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        conn, pool, journal = self._connection(), self._pool, self._journal
        assert pool is not None
        self._conn = None
        failure = exc
        try:
            if exc is None:
                try:
                    await conn.execute("COMMIT")
                except BaseException as e:
                    failure = e
                    if journal is not None and journal.intents:
                        # refused (e.g. a deferred constraint): rolled back; lost: unknown
                        if isinstance(e, asyncpg.PostgresError) and not is_outage(e):
                            await journal.abort_async()
                        else:
                            journal.leave_in_doubt()
                    raise
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


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return redact_text(
        f"{type(exc).__name__}: {text}" if not isinstance(exc, ConnectError) else text
    )
