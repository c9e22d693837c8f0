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
before it runs; the statement goes with a ``RETURNING`` of the key and the written
columns (the whole row for INSERT), added through sqlglot (:func:`bind_effect`); the
post-images of the rows it touched are journaled as they arrive (1000 at a time, through
a portal, so memory stays bounded) before COMMIT is sent; ``committed`` after the server
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
import contextlib
import datetime as _dt
import functools
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
from replverify.errors import ConnectError, FailoverError, InDoubtError, UsageError
from replverify.journal.format import Op
from replverify.journal.statements import journal_value, parse_statement, render_sql
from replverify.journal.writer import (
    FsyncPolicy,
    JournalTransaction,
    JournalWriter,
    definitely_failed,
)
from replverify.types import TableRef

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
#: rows of a multi-row effect fetched (and journaled) at a time: memory stays bounded
EFFECT_BATCH = 1000
#: the table's schema, name, columns and primary key (a constant query; the table's name
#: as the statement wrote it is the parameter, resolved through the search_path)
TABLE_SQL = (
    "SELECT n.nspname::text, c.relname::text,"
    " ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid"
    "  AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),"
    " ARRAY(SELECT a.attname::text FROM pg_index i"
    "  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
    "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
    "  WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.oid = to_regclass($1)"
)


@dataclass(frozen=True)
class WritePlan:
    """How a write is journaled by its effect (one per statement text, cached)."""

    op: Op
    tree: exp.Expr
    #: the table as the statement names it (for the catalog lookup)
    table_text: str
    #: what RETURNING columns are qualified with (the alias, or the table's name)
    qualifier: exp.Identifier
    #: UPDATE: the SET columns
    sets: tuple[str, ...] = ()
    #: the application asked for rows itself
    own_returning: bool = False


@dataclass(frozen=True)
class TableMeta:
    ref: TableRef
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the primary key (empty: none)


@dataclass(frozen=True)
class Effect:
    """A plan bound to its table: the statement with RETURNING added, and how to read
    a returned row into a journal row (key, post-image)."""

    plan: WritePlan
    table: TableMeta
    sql: str
    returned: tuple[str, ...]  # our columns, the last ones of each returned row
    #: at most this many rows (keyed UPDATE/DELETE, INSERT ... VALUES); None: unbounded
    bound: int | None = None

    def row(self, record: Any) -> tuple[dict[str, object], dict[str, object] | None]:
        width = len(self.returned)
        values = dict(zip(self.returned, tuple(record)[len(record) - width :], strict=True))
        key_cols = self.table.key
        if not key_cols:  # no primary key: the row is identified by its whole image
            key = {c: v for c, v in values.items() if _scalar(v)}
            rest = {c: v for c, v in values.items() if c not in key}
            return key, (None if self.plan.op == "delete" else rest)
        key = {c: values[c] for c in key_cols}
        if self.plan.op == "delete":
            return key, None
        return key, {c: v for c, v in values.items() if c not in key}


def _scalar(v: object) -> bool:
    return v is not None and not isinstance(journal_value(v), (dict, list))


def _ident_name(node: exp.Identifier) -> str:
    return str(node.this) if node.quoted else str(node.this).lower()


@functools.lru_cache(maxsize=2048)
def plan_write(query: str) -> WritePlan | None:
    """The effect plan of ``query``; None when it does not write (a read, DDL).

    A write the journal cannot describe by its effect (several statements in one string,
    a write inside WITH, MERGE) raises :class:`~replverify.errors.UsageError` before it
    runs, so no write goes unjournaled."""
    try:
        trees = [t for t in sqlglot.parse(query, read="postgres") if t is not None]
    except SqlglotError as e:
        if re.match(r"\s*(insert|update|delete|merge)\b", query, re.I):
            raise UsageError(f"cannot journal this statement: {e}") from None
        return None
    writes = [t for t in trees if t.find(*_WRITES, exp.Merge) is not None]
    if not writes:
        return None
    if len(trees) != 1:
        raise UsageError("cannot journal this statement: send one statement per call")
    tree = trees[0]
    if not isinstance(tree, _WRITES) or tree.args.get("with_") or tree.args.get("with"):
        raise UsageError(
            "cannot journal this statement: only a plain INSERT, UPDATE, DELETE or"
            " INSERT ... ON CONFLICT can be journaled (not MERGE or a write inside WITH)"
        )
    target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier):
        raise UsageError("cannot journal this statement: it must write one named table")
    name = exp.Table(this=target.this.copy(), db=target.args.get("db"))
    alias = target.args.get("alias")
    qualifier = (
        alias.this
        if isinstance(alias, exp.TableAlias) and isinstance(alias.this, exp.Identifier)
        else target.this
    )
    own = tree.args.get("returning") is not None
    if isinstance(tree, exp.Insert):
        op: Op = "upsert" if tree.args.get("conflict") is not None else "insert"
        return WritePlan(op, tree, name.sql("postgres"), qualifier.copy(), own_returning=own)
    if isinstance(tree, exp.Delete):
        return WritePlan("delete", tree, name.sql("postgres"), qualifier.copy(), own_returning=own)
    sets = []
    for a in tree.expressions:
        if not isinstance(a, exp.EQ) or not isinstance(a.this, exp.Column):
            raise UsageError(f"cannot journal this statement: SET {a.sql('postgres')!r}")
        sets.append(_ident_name(a.this.this))
    return WritePlan(
        "update", tree, name.sql("postgres"), qualifier.copy(), tuple(sets), own_returning=own
    )


def bind_effect(plan: WritePlan, table: TableMeta) -> Effect:
    """``plan``'s statement with a RETURNING of the key and the written columns (the
    whole row for INSERT and upsert), each aliased ``_rv_<n>``, after the application's
    own RETURNING items."""
    key = table.key
    if plan.op in ("insert", "upsert"):
        cols = table.columns
    elif plan.op == "delete":
        cols = key or table.columns
    else:
        if not key:
            raise UsageError(
                f"cannot journal an UPDATE of {table.ref}: it has no primary key, so its rows"
                " cannot be found again"
            )
        if any(c in key for c in plan.sets):
            raise UsageError(
                f"cannot journal this UPDATE of {table.ref}: it changes the primary key"
                " (journal it as a DELETE and an INSERT)"
            )
        cols = key + tuple(c for c in plan.sets if c not in key)
    tree = plan.tree.copy()
    returning = tree.args.get("returning")
    items = list(returning.expressions) if returning is not None else []
    for i, c in enumerate(cols):
        column = exp.Column(this=exp.to_identifier(c, quoted=True), table=plan.qualifier.copy())
        items.append(exp.alias_(column, f"_rv_{i}"))
    tree.set("returning", exp.Returning(expressions=items))
    return Effect(plan, table, tree.sql("postgres"), tuple(cols), _row_bound(plan, key))


def _row_bound(plan: WritePlan, key: tuple[str, ...]) -> int | None:
    """How many rows the statement can touch at most, when its text says so: INSERT ...
    VALUES (one per row), UPDATE/DELETE pinning every key column to a parameter or a
    literal (one). None: a range, a subquery, INSERT ... SELECT - stream it."""
    tree = plan.tree
    if isinstance(tree, exp.Insert):
        values = tree.expression
        return len(values.expressions) if isinstance(values, exp.Values) else None
    where = tree.args.get("where")
    if (
        not key
        or not isinstance(where, exp.Where)
        or tree.args.get("from_")
        or tree.args.get("using")
    ):
        return None
    conds = where.this.flatten() if isinstance(where.this, exp.And) else [where.this]
    pinned = set()
    for c in conds:
        if isinstance(c, exp.EQ):
            col, val = (
                (c.this, c.expression) if isinstance(c.this, exp.Column) else (c.expression, c.this)
            )
            if isinstance(col, exp.Column) and isinstance(val, (exp.Parameter, exp.Literal)):
                pinned.add(_ident_name(col.this))
    return 1 if pinned.issuperset(key) else None


def safe_to_repeat(query: str, args: tuple[object, ...], key: tuple[str, ...]) -> bool:
    """Whether running ``query`` twice leaves what running it once does: reads; and
    writes with literal values that pin their rows by the whole primary key (UPDATE,
    DELETE) or say what an existing row becomes (INSERT ... ON CONFLICT)."""
    try:
        if plan_write(query) is None:
            return True
        stmt = parse_statement(render_sql(query, args))
    except UsageError:
        return False
    if stmt.op == "upsert":
        return True
    if stmt.op in ("update", "delete"):
        pinned = {c for c, _ in stmt.where}
        return bool(key) and pinned.issuperset(key)
    return False  # a plain INSERT: a second run adds a row (or fails on the key)


async def _each(records: Any) -> Any:
    """Iterate a list or an asyncpg cursor alike."""
    if isinstance(records, list):
        for r in records:
            yield r
    else:
        async for r in records:
            yield r


@dataclass
class _Progress:
    """How far one attempt got: whether an endpoint failure leaves its outcome unknown."""

    ambiguous: bool = False
    txid: object = None
    key: tuple[str, ...] = ()


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
        self._tables: dict[str, TableMeta] = {}
        self._effects: dict[str, Effect] = {}

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

    async def _call(
        self,
        run: Callable[[asyncpg.Connection, _Progress], Awaitable[T]],
        query: str,
        args: tuple[object, ...],
    ) -> T:
        """``run(conn, progress)`` on the active endpoint; on an outage switch, and retry
        once when that cannot apply a write twice (see :meth:`execute`)."""

        async def attempt(progress: _Progress) -> T:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                if conn.is_closed():
                    raise asyncpg.ConnectionDoesNotExistError("connection is closed")
                return await run(conn, progress)

        return await self._switching(attempt, query, args)

    async def _switching(
        self,
        attempt: Callable[[_Progress], Awaitable[T]],
        query: str | None = None,
        args: tuple[object, ...] = (),
    ) -> T:
        """``attempt()`` on the active endpoint; on an outage switch and retry once,
        unless the failure left a write's outcome unknown and repeating it is not safe:
        then :class:`~replverify.errors.InDoubtError` (after the switch)."""
        if self._pool is None:
            raise UsageError("the FailoverPool is closed (or was never started)")
        generation, side = self._generation, self._active
        progress = _Progress()
        try:
            return await attempt(progress)
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
        if progress.ambiguous and (query is None or not safe_to_repeat(query, args, progress.key)):
            ep = self._endpoints[side]
            txid = progress.txid
            raise InDoubtError(
                ep.scrub(
                    f"the {side} ({ep}) failed after the write reached it ({_why(first)}): it"
                    " may have committed or not, so it was not run again"
                    + (f"; journal txid {txid}" if txid is not None else "")
                ),
                txid=txid,
                hint="reconcile the journal, or check the row, before writing it again",
            ) from first
        try:
            return await attempt(_Progress())
        except Exception as e:
            if not is_outage(e):
                raise
            ep, other = self._endpoints[side], self._endpoints[self._active]
            raise FailoverError(
                f"both endpoints failed: the {side} ({ep}): {ep.scrub(_why(first))}; "
                f"the {self._active} ({other}): {other.scrub(_why(e))}"
            ) from e

    # ---- journaling by effect

    async def _table_meta(self, conn: asyncpg.Connection, plan: WritePlan) -> TableMeta:
        meta = self._tables.get(plan.table_text)
        if meta is None:
            row = await conn.fetchrow(TABLE_SQL, plan.table_text)
            if row is None:
                raise UsageError(f"cannot journal a write of {plan.table_text}: no such table")
            meta = TableMeta(TableRef(row[0], row[1]), tuple(row[2]), tuple(row[3]))
            self._tables[plan.table_text] = meta
        return meta

    async def _effect_of(self, conn: asyncpg.Connection, plan: WritePlan, query: str) -> Effect:
        effect = self._effects.get(query)
        if effect is None:
            effect = self._effects[query] = bind_effect(plan, await self._table_meta(conn, plan))
        return effect

    async def _run_effect(
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
        plan, table = effect.plan, effect.table.ref.qualified
        of = journal.intent_statement(plan.op, table, query, args, meta={"endpoint": side})
        kept: list[asyncpg.Record] = []
        batch: list[tuple[dict[str, object], dict[str, object] | None]] = []
        count = 0
        if effect.bound is not None and effect.bound <= EFFECT_BATCH:
            # a handful of rows at most: one round trip (a portal would need a second)
            records: Any = await conn.fetch(effect.sql, *args, timeout=timeout)
        else:
            records = conn.cursor(effect.sql, *args, prefetch=EFFECT_BATCH, timeout=timeout)
        async for record in _each(records):
            count += 1
            batch.append(effect.row(record))
            if keep:
                kept.append(record)
            if len(batch) >= EFFECT_BATCH:
                journal.effect_rows(of, plan.op, table, batch)
                journal.flush()  # a deferred transaction holds no more than a batch
                batch = []
        journal.effect_rows(of, plan.op, table, batch)
        verb = "INSERT 0" if plan.op in ("insert", "upsert") else plan.op.upper()
        return f"{verb} {count}", kept

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
        """A write on its own: BEGIN, the statement, COMMIT, journaled in between. Until
        COMMIT is sent an endpoint failure cannot have committed anything (safe to run
        again elsewhere); after it, the outcome is unknown."""
        plan = plan_write(query)
        if plan is None or self.journal is None:
            progress.ambiguous = plan is not None
            if keep:
                return "", await conn.fetch(query, *args, timeout=timeout)
            return await conn.execute(query, *args, timeout=timeout), []
        effect = await self._effect_of(conn, plan, query)
        progress.key = effect.table.key
        tx = self.journal.transaction(defer=True)
        progress.txid = tx.txid
        await conn.execute("BEGIN")
        try:
            result = await self._run_effect(
                conn, tx, effect, query, args, self._active, keep=keep, timeout=timeout
            )
            tx.flush()  # the intent and its rows, one write, before COMMIT is sent
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

    # ---- the application's calls

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

    async def _checkout(
        self, progress: _Progress | None = None
    ) -> tuple[asyncpg.Pool, asyncpg.Connection, Side]:
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
            # intents held back and appended in one write before COMMIT is sent: until
            # then nothing of the transaction can commit
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
        if plan is None or journal is None:
            if keep:
                rows: list[asyncpg.Record] = await self._lost_as_connect_error(
                    lambda: conn.fetch(query, *args, timeout=timeout)
                )
                return "", rows
            status: str = await self._lost_as_connect_error(
                lambda: conn.execute(query, *args, timeout=timeout)
            )
            return status, []
        owner = self._owner

        async def effect() -> tuple[str, list[asyncpg.Record]]:
            bound = await owner._effect_of(conn, plan, query)
            return await owner._run_effect(
                conn, journal, bound, query, args, self.endpoint, keep=keep, timeout=timeout
            )

        return await self._lost_as_connect_error(effect)

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
                    journal.flush()
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


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return redact_text(
        f"{type(exc).__name__}: {text}" if not isinstance(exc, ConnectError) else text
    )
