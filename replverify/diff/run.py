"""Diff orchestration: options, digest choice, planning and running every table's comparison.

:mod:`replverify.api` re-exports the documented names (``diff``, ``DiffOptions``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from replverify.db import catalog
from replverify.db.catalog import ServerInfo, TableInfo
from replverify.db.connect import DB_ERRORS, DB_OR_TIMEOUT_ERRORS, Endpoint, open_pool, trouble
from replverify.diff.align import TablePlan, plan_table
from replverify.diff.choose import choose as choose_auto
from replverify.diff.choose import server_inexact
from replverify.diff.fence import Fence
from replverify.diff.sources import DigestMode
from replverify.diff.sql import ALIAS, TableSQL, parse_where
from replverify.diff.state import StateFile
from replverify.diff.table import (
    CLIENT_CONNECTIONS,
    _unverified,
    compare_table,
)
from replverify.diff.throttle import Throttle, paused_note
from replverify.errors import ReplverifyError, SchemaError, UsageError
from replverify.lag.estimate import LsnHistory
from replverify.lag.sampler import snapshot as lag_snapshot
from replverify.types import DiffReport, TableRef, TableResult
from replverify.values.canonical import Compare

DigestChoice = Literal["auto", "copy", "server", "client"]


@dataclass(frozen=True)
class DiffOptions:
    """What ``diff`` compares and how; :meth:`validate` reports every problem at once."""

    tables: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    where: str | None = None
    key: tuple[str, ...] = ()
    chunk_rows: int = 10_000
    #: A mismatching range of at most this many rows is settled row by row (one more
    #: read of it); larger ones are split first. ``None``: 1,000; on a fenced (live
    #: standby) pair the whole chunk, since every extra step waits for replay.
    leaf_rows: int | None = None
    jobs: int = 2
    max_diffs: int | None = 1_000
    digest: DigestChoice = "auto"
    #: ``exact``: equal when the binary forms PostgreSQL sends are (what clients read);
    #: ``semantic``: equal when the type's ``=`` says so
    compare: Compare = "exact"
    #: ``None``: fence target reads when the target is a streaming standby of the source
    fence: bool | None = None
    #: seconds a fenced read may wait for the standby to replay
    lag_timeout: float = 60.0
    #: extra reads of rows that look different on a fenced (live) pair
    confirm_rounds: int = 2
    #: a file recording verified chunks, so an interrupted run resumes (``--state``)
    state: str | None = None
    #: compare a database with itself (both DSNs reach one server) instead of refusing
    allow_same_server: bool = False
    #: where chunk work runs: ``inprocess``, ``local:N`` (N worker processes) or
    #: ``dask://HOST:PORT`` (a running Dask scheduler); see docs/dask.md
    executor: str = "inprocess"
    #: connections per server, this process and all workers together
    max_connections: int | None = None
    #: pause new reads while the source has more than this many active backends
    max_load: int | None = None
    #: pause new reads while the standby's replay lag exceeds this many seconds
    max_lag: float | None = None
    #: adapt the chunk size towards this many seconds a chunk (``None`` or 0: fixed
    #: ``chunk_rows``, which keeps chunk counts the same from run to run)
    chunk_time: float | None = None

    def __post_init__(self) -> None:
        # A str is a sequence of characters: DiffOptions(tables="public.orders") would
        # select tables 'p', 'u', ... One string is taken as one pattern (or column).
        for name in ("tables", "exclude", "key"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def validate(self) -> None:
        problems = []
        for name in ("tables", "exclude", "key"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                problems.append(f"{name} must be a string or a sequence of strings, not {value!r}")
        if problems:  # the checks below assume the types are right
            raise UsageError("; ".join(problems))
        if self.chunk_rows < 1:
            problems.append("--chunk-rows must be at least 1")
        if self.leaf_rows is not None and self.leaf_rows < 1:
            problems.append("leaf_rows must be at least 1")
        if self.jobs < 1:
            problems.append("--jobs must be at least 1")
        if self.max_diffs is not None and self.max_diffs < 0:
            problems.append("--max-diffs must not be negative")
        if self.digest not in ("auto", "copy", "server", "client"):
            problems.append("--digest must be auto, copy, server or client")
        if self.compare not in ("exact", "semantic"):
            problems.append("--compare must be exact or semantic")
        if self.lag_timeout <= 0:
            problems.append("--lag-timeout must be positive")
        if self.confirm_rounds < 0:
            problems.append("confirm_rounds must not be negative")
        if len(set(self.key)) != len(self.key):
            problems.append("--key names a column twice")
        if self.max_connections is not None and self.max_connections < 2:
            problems.append("--max-connections must be at least 2")
        if self.max_load is not None and self.max_load < 0:
            problems.append("--max-load must not be negative")
        if self.max_lag is not None and self.max_lag < 0:
            problems.append("--max-lag must not be negative")
        if self.chunk_time is not None and self.chunk_time < 0:
            problems.append("--chunk-time must not be negative")
        try:
            from replverify.diff.executor import ExecutorSpec

            ExecutorSpec.parse(self.executor)
        except UsageError as e:
            problems.append(e.message)
        if problems:
            raise UsageError("; ".join(problems))


def choose_digest(
    choice: DigestChoice, source: ServerInfo, target: ServerInfo
) -> tuple[DigestMode, str | None]:
    """Binary COPY digests unless another mode is asked for. Returns the mode and, when
    the servers' major versions differ, how the columns are read for it.

    Equal bytes or equal text always mean equal values, so a digest can only err towards
    "different"; such chunks are then settled row by row with the comparison's encodings
    of decoded values. Between major versions a COPY digest reads each column whose
    binary form is the same on both versions as binary, and the others as text
    (``TablePlan.copy_forms``): the cost of the slower path falls on those columns only.
    """
    if choice == "server" and min(source.version_num, target.version_num) < 110000:
        raise UsageError("--digest server needs PostgreSQL 11 or later on both sides")
    mode: DigestMode = "copy" if choice == "auto" else choice
    if source.version_num // 10000 == target.version_num // 10000 or mode != "copy":
        return mode, None
    return mode, (
        f"servers differ in major version ({source.version_num // 10000} vs "
        f"{target.version_num // 10000}): COPY digests read as binary the columns whose "
        "binary form is the same on both versions, and the others as text (see each "
        "table's column forms); a chunk that differs is settled by decoded values"
    )


def _forms_note(plans: Sequence[TablePlan]) -> str | None:
    """Which columns a COPY digest reads as text, when any besides arrays/composites."""
    texts = [
        f"{p.ref}.{c.name} ({c.type.name})"
        for p in plans
        for c, form in zip(p.columns, p.copy_forms, strict=False)
        if form == "text" and c.type.kind not in ("array", "composite")
    ]
    if not texts:
        return None
    shown = ", ".join(texts[:10]) + (f" and {len(texts) - 10} more" if len(texts) > 10 else "")
    return f"columns read as text in COPY digests (binary form not known to match): {shown}"


#: A lag snapshot beside a diff may fail either way; the diff goes on.
_LAG_FAILURES: tuple[type[BaseException], ...] = (*DB_ERRORS, ReplverifyError)


async def _check(pool: asyncpg.Pool, sql: TableSQL, side: str) -> str | None:
    """Why ``sql``'s table cannot be read on ``side`` (permission denied, a lock timeout,
    gone since the catalog was read), or None. A ``--where`` that does not fit the table
    is the user's mistake, not the table's trouble: raised as a UsageError."""
    text, params = sql.check()
    async with pool.acquire() as conn:
        try:
            await conn.fetch(text, *params)
        except asyncpg.PostgresError as e:
            reason = f"cannot read {sql.plan.ref} on the {side}: " + str(e).replace(f"{ALIAS}.", "")
            if sql.where is None:
                return reason
            text, params = TableSQL(sql.plan, None).check()
            try:
                await conn.fetch(text, *params)
            except asyncpg.PostgresError:
                return reason
            raise UsageError(reason) from e
    return None


async def _readable(src_pool: asyncpg.Pool, tgt_pool: asyncpg.Pool, sql: TableSQL) -> str | None:
    """Why the table cannot be read on one side or both, or None."""
    reasons = await asyncio.gather(_check(src_pool, sql, "source"), _check(tgt_pool, sql, "target"))
    return "; ".join(r for r in reasons if r) or None


def _plans(
    src_tables: dict[TableRef, TableInfo],
    tgt_tables: dict[TableRef, TableInfo],
    chosen: Sequence[TableRef],
    options: DiffOptions,
    src_server: ServerInfo,
    tgt_server: ServerInfo,
) -> tuple[list[TablePlan], list[TableResult]]:
    plans: list[TablePlan] = []
    absent: list[TableResult] = []
    key_used = False
    for ref in chosen:
        s, t = src_tables.get(ref), tgt_tables.get(ref)
        if s is None or t is None:
            where = "target" if t is None else "source"
            absent.append(
                TableResult(ref, (), "none", schema_differences=(f"table missing on the {where}",))
            )
            continue
        plan = _plan(s, t, options, src_server, tgt_server)
        key_used = key_used or plan.key_mode == "--key"
        plans.append(plan)
    if options.key and not key_used:
        raise UsageError(f"--key {','.join(options.key)}: no selected table has those columns")
    return plans, absent


def _plan(
    s: TableInfo, t: TableInfo, options: DiffOptions, src_server: ServerInfo, tgt_server: ServerInfo
) -> TablePlan:
    key = options.key if options.key and all(s.column(k) for k in options.key) else ()
    return plan_table(s, t, key=key, source_server=src_server, target_server=tgt_server)


async def diff(
    source: str | Endpoint,
    target: str | Endpoint,
    options: DiffOptions | None = None,
    *,
    progress: Callable[[TableRef, int, int], None] | None = None,
) -> DiffReport:
    """Compare tables of ``source`` and ``target``; differences are in the report.

    Raises :class:`~replverify.errors.ReplverifyError` for trouble (bad options,
    unreachable servers, unknown tables); never for a difference.
    ``progress(table, rows_done, rows_estimated)`` is called for every planned table with
    0 rows done before the comparison starts, as chunks complete, and once more when a
    table is done (``rows_done == rows_estimated``).
    """
    options = options or DiffOptions()
    options.validate()
    started = time.perf_counter()
    # a caller that parsed the DSNs already (gate, failback) passes the endpoints
    src_ep = source if isinstance(source, Endpoint) else Endpoint.parse(source)
    tgt_ep = target if isinstance(target, Endpoint) else Endpoint.parse(target)
    where = parse_where(options.where) if options.where else None
    if options.executor != "inprocess":
        # chunk work runs on the workers: this process only plans, throttles and fences
        sizes = (CLIENT_CONNECTIONS, CLIENT_CONNECTIONS)
    else:
        jobs = options.jobs
        if options.max_connections is not None:
            jobs = min(jobs, options.max_connections - 1)  # one more for the boundary walk
        options = dataclasses.replace(options, jobs=jobs)
        sizes = (jobs + 1, jobs)
    pools = await asyncio.gather(
        open_pool(src_ep, sizes[0]), open_pool(tgt_ep, sizes[1]), return_exceptions=True
    )
    src_pool, tgt_pool = pools
    try:
        for p in pools:
            if isinstance(p, BaseException):
                raise p
        assert isinstance(src_pool, asyncpg.Pool) and isinstance(tgt_pool, asyncpg.Pool)
        report = await _diff(src_ep, tgt_ep, src_pool, tgt_pool, options, where, started, progress)
        for t in report.tables:
            if t.error:
                t.error = src_ep.scrub(tgt_ep.scrub(t.error))
        report.notes = [src_ep.scrub(tgt_ep.scrub(n)) for n in report.notes]
        return report
    except DB_ERRORS as e:
        raise trouble(e, src_ep, tgt_ep) from e
    finally:
        await asyncio.gather(*(_close(p) for p in pools if isinstance(p, asyncpg.Pool)))


async def _close(pool: asyncpg.Pool) -> None:
    """Close gracefully; a pool whose server died is terminated instead of waited on."""
    try:
        await asyncio.wait_for(pool.close(), timeout=5)
    except DB_OR_TIMEOUT_ERRORS:
        pool.terminate()


async def _diff(
    src_ep: Endpoint,
    tgt_ep: Endpoint,
    src_pool: asyncpg.Pool,
    tgt_pool: asyncpg.Pool,
    options: DiffOptions,
    where: object,
    started: float,
    progress: Callable[[TableRef, int, int], None] | None,
) -> DiffReport:
    async with src_pool.acquire() as sc, tgt_pool.acquire() as tc:
        # both sides at once: catalog reads are a good part of a small run's time
        src_server, tgt_server = await asyncio.gather(
            catalog.server_info(sc), catalog.server_info(tc)
        )
        if not options.allow_same_server:
            catalog.refuse_same_database(
                src_server, tgt_server, src_ep, tgt_ep, "SOURCE and TARGET",
                option="--allow-same-server",
            )  # fmt: skip
        # read before the tables: a change after it shows when the table's comparison ends
        defined = await asyncio.gather(catalog.definitions(sc), catalog.definitions(tc))
        src_tables, tgt_tables = await asyncio.gather(
            catalog.load_tables(sc), catalog.load_tables(tc)
        )
    chosen = catalog.select_tables(list(src_tables), options.tables, options.exclude)
    if not options.tables:
        on_target = catalog.select_tables(list(tgt_tables), (), options.exclude)
        chosen += [r for r in on_target if r not in src_tables]
    plans, results = _plans(src_tables, tgt_tables, chosen, options, src_server, tgt_server)
    report = DiffReport(str(src_ep), str(tgt_ep), results, compare=options.compare)
    auto = await choose_auto(
        options.digest,
        options.compare,
        (src_pool, tgt_pool),
        [TableSQL(p, where) for p in plans],  # type: ignore[arg-type]
        (src_server.version_num, tgt_server.version_num),
        options.chunk_rows,
        options.jobs,
    )
    if auto is not None:
        report.digest_choice = auto.as_dict()
    elif options.digest == "server" and (inexact := server_inexact(plans, options.compare)):
        report.notes.append(
            "--digest server cannot be exact for " + ", ".join(inexact) + ": their text "
            "shows every NaN alike, so values that differ only in NaN bits pass as equal "
            "(--digest copy or client tells them apart)"
        )
    mode, why = choose_digest(auto.mode if auto else options.digest, src_server, tgt_server)
    if why:
        report.notes.append(why)
        forms = _forms_note(plans)
        if forms:
            report.notes.append(forms)
    if auto is not None:
        report.notes.append(f"--digest auto chose {auto.why}")
    fence = None
    standby = catalog.streams_from(src_server, tgt_server)
    history = LsnHistory()
    if options.max_lag is not None and not standby:
        raise UsageError("--max-lag needs a target that is a streaming standby of the source")
    if options.max_connections is not None and options.executor == "inprocess":
        from replverify.diff.executor import check_budget

        for pool, size, side in ((src_pool, options.jobs + 1, "source"),
                                 (tgt_pool, options.jobs, "target")):  # fmt: skip
            await check_budget(pool, size, side, given=True)
    if standby:
        await _record_lag(report, "start", src_pool, tgt_pool, history)
    if options.fence is not False and standby:
        fence = Fence(src_pool, tgt_pool, timeout=options.lag_timeout)
        report.notes.append(
            "the target is a streaming standby of the source: each target read waited until "
            "the standby had replayed what the source read saw (LSN fence), and rows that "
            f"differed were read again up to {options.confirm_rounds} times"
        )
    elif options.fence:
        raise UsageError("--fence needs a target that is a streaming standby of the source")
    sqls = [TableSQL(p, where) for p in plans]  # type: ignore[arg-type]
    # every table is checked before any is compared, so that a --where mistake stops the
    # run at once; a table that cannot be read is that table's trouble alone
    unreadable = [await _readable(src_pool, tgt_pool, s) for s in sqls]

    if progress is not None:
        # Every table first, so a progress display knows the whole run ("table 3/6").
        for p in plans:
            progress(p.ref, 0, p.estimated_rows)
    sem = asyncio.Semaphore(options.jobs)
    state = None
    if options.state:
        state = StateFile.open(
            options.state,
            {
                "source": str(src_ep),
                "target": str(tgt_ep),
                "tables": list(options.tables),
                "exclude": list(options.exclude),
                "where": options.where,
                "key": list(options.key),
                "chunk_rows": options.chunk_rows,
                "digest": mode,
                "compare": options.compare,
            },
        )

    throttle = Throttle(
        src_pool, tgt_pool, max_load=options.max_load, max_lag=options.max_lag
    )  # fmt: skip
    chunk_time = options.chunk_time or None
    if chunk_time and state is not None and options.executor == "inprocess":
        # adapted chunks have other boundaries on each run: nothing could be resumed
        chunk_time = None
        report.notes.append(
            "--chunk-time was not applied: with --state in-process, chunks keep their size "
            "so that a resumed run finds the chunks an earlier one verified"
        )
    tables = _TableRun(
        src_pool,
        tgt_pool,
        mode,
        options,
        where,
        (src_server, tgt_server),
        progress,
        fence,
        state,
        throttle=throttle,
        chunk_time=chunk_time,
    )

    async def one(sql: TableSQL, reason: str | None) -> TableResult:
        ref = sql.plan.ref
        async with sem:
            return await tables.verify(sql, reason, (defined[0].get(ref), defined[1].get(ref)))

    try:
        if options.executor != "inprocess":
            from replverify.diff.executor import ClusterRun

            cluster = ClusterRun(
                src_ep, tgt_ep, src_pool, tgt_pool, mode, options, fence is not None,
                progress, state, throttle, chunk_time,
            )  # fmt: skip
            results = await cluster.run(sqls, unreadable)
            for i, r in enumerate(results):  # a table altered meanwhile mixes definitions
                ref = sqls[i].plan.ref
                after = await tables._definition(ref)
                if after != (defined[0].get(ref), defined[1].get(ref)) and r.error is None:
                    results[i] = _unverified(
                        sqls[i].plan, f"{ref}: its definition changed during the run", r
                    )
            report.tables.extend(results)
            report.notes.extend(cluster.notes)
            report.aborted = cluster.lost
        else:
            report.tables.extend(
                await asyncio.gather(*(one(s, r) for s, r in zip(sqls, unreadable, strict=True)))
            )
        report.notes.extend(tables.notes)
    finally:
        if state is not None:
            state.close()
    if throttle.active:
        report.paused = {k: round(v, 3) for k, v in throttle.paused.items()}
        report.notes.append(paused_note(throttle.paused, options.max_load, options.max_lag))
    report.tables.sort(key=lambda t: t.table)
    if standby:
        await _record_lag(report, "end", src_pool, tgt_pool, history)
        if (note := _paused_note(report)) is not None:
            report.notes.insert(0, note)
    report.elapsed_s = time.perf_counter() - started
    return report


#: How often a table is compared when its definition keeps changing while it is read.
ATTEMPTS = 3
Definition = tuple[str | None, str | None]  # source, target; None: no such table


@dataclass
class _TableRun:
    """Verifies each table on its own, so that one table's trouble (it cannot be read, it
    is dropped or altered while read) stays in that table's result.

    A table is only reported from a comparison during which its definition stayed the
    same on both sides: one altered meanwhile is planned and compared again, so a result
    never mixes two definitions.
    """

    source: asyncpg.Pool
    target: asyncpg.Pool
    mode: DigestMode
    options: DiffOptions
    where: object
    servers: tuple[ServerInfo, ServerInfo]
    progress: Callable[[TableRef, int, int], None] | None
    fence: Fence | None
    state: StateFile | None
    notes: list[str] = field(default_factory=list)
    throttle: Throttle | None = None
    chunk_time: float | None = None

    async def verify(
        self, sql: TableSQL, unreadable: str | None, before: Definition
    ) -> TableResult:
        ref = sql.plan.ref
        for attempt in range(1, ATTEMPTS + 1):
            result: TableResult | None = None
            failure: Exception | None = None
            try:
                if unreadable:
                    result = _unverified(sql.plan, unreadable)
                else:
                    # chunks recorded by an earlier attempt saw another definition
                    state = self.state if attempt == 1 else None
                    result = await compare_table(
                        sql,
                        self.source,
                        self.target,
                        self.mode,
                        self.options,
                        self.progress,
                        self.fence,
                        state,
                        throttle=self.throttle,
                        chunk_time=self.chunk_time,
                    )
            except Exception as e:  # raised again below unless the table changed meanwhile
                failure = e
            try:
                after = await self._definition(ref)
            except DB_ERRORS as e:  # a side went away: its error is in the result already
                if failure is not None:
                    raise failure from e
                assert result is not None
                if not result.error:
                    result.error = f"{ref}: its definition could not be read again: {e}"
                return result
            if after == before:
                if failure is not None:
                    raise failure
                assert result is not None
                return result
            gone = [side for side, d in zip(("source", "target"), after, strict=True) if d is None]
            if gone:
                why = f"{ref} was dropped on the {' and the '.join(gone)} during the run"
                return _unverified(sql.plan, why, result)
            changed = [
                side
                for side, b, a in zip(("source", "target"), before, after, strict=True)
                if a != b
            ]
            where = f"on the {' and the '.join(changed)}"
            if attempt == ATTEMPTS:
                why = (
                    f"{ref}: its definition changed {where} during each of {ATTEMPTS} "
                    "comparisons; not verified"
                )
                return _unverified(sql.plan, why)  # what it found may mix definitions
            self.notes.append(
                f"{ref}: its definition changed {where} during the run (altered or "
                "re-created); it was planned and compared again from the start"
            )
            before = after
            try:
                sql = await self._replan(ref)
            except ReplverifyError as e:
                return _unverified(sql.plan, f"{ref}: cannot be compared again: {e}")
            unreadable = await _readable(self.source, self.target, sql)
        raise AssertionError("unreachable")

    async def _definition(self, ref: TableRef) -> Definition:
        async def one(pool: asyncpg.Pool) -> str | None:
            async with pool.acquire() as conn:
                return (await catalog.definitions(conn, ref)).get(ref)

        s, t = await asyncio.gather(one(self.source), one(self.target))
        return s, t

    async def _replan(self, ref: TableRef) -> TableSQL:
        infos = []
        for pool in (self.source, self.target):  # one connection at a time: no pool waits
            async with pool.acquire() as conn:  # on another while holding one
                infos.append((await catalog.load_tables(conn)).get(ref))
        s, t = infos
        if s is None or t is None:
            raise SchemaError(f"table missing on the {'source' if s is None else 'target'}")
        return TableSQL(_plan(s, t, self.options, *self.servers), self.where)  # type: ignore[arg-type]


async def _record_lag(
    report: DiffReport, when: str, source: asyncpg.Pool, target: asyncpg.Pool, history: LsnHistory
) -> None:
    try:
        async with source.acquire() as sc, target.acquire() as tc:
            sample = await lag_snapshot(sc, tc, history=history)
    except _LAG_FAILURES as e:
        report.notes.append(f"lag at {when} could not be measured: {e}")
        return
    if sample is not None:
        report.lag[when] = {
            "lag_bytes": sample.lag_bytes,
            "lag_seconds": round(sample.lag_seconds, 3),
            "method": sample.method,
            "replay_paused": sample.replay_paused,
        }


def _paused_note(report: DiffReport) -> str | None:
    """A note when the standby's replay was paused at the start or end of the run."""
    when = [w for w, lag in report.lag.items() if lag.get("replay_paused")]
    if not when:
        return None
    return (
        f"WAL replay was paused on the target at the {' and the '.join(when)} of the run: "
        "it holds only what it replayed before the pause (resume it on the standby with "
        "SELECT pg_wal_replay_resume())"
    )
