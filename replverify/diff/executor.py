"""Where chunk work runs (``--executor``): this process, or the workers of a Dask cluster.

A table is cut into tasks, key ranges of many chunks each (a small table is one task).
A task carries everything a worker needs: the table plan, the ``--where`` text, the key
range, the options, and both endpoints *without passwords*: a worker authenticates
with its own environment (``PGPASSWORD``, ``PGPASSFILE``, ``PGSERVICE``, certificates).
It opens its own connection to each side, runs the same comparison machine as this
process on its range, narrows mismatches there, and sends back the differences and the
counts, never rows. This process merges the results into the report an in-process run
gives, records finished tasks in ``--state`` and reports progress as tasks complete.

A task whose worker dies runs again on another (Dask reschedules it); the scheduler
lost mid-run ends the run with what was verified so far and an error per table that was
not finished (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from replverify.db.connect import Endpoint, open_pool
from replverify.diff.align import TablePlan
from replverify.diff.fence import Fence
from replverify.diff.ranges import KeyRange, ranges_between
from replverify.diff.sources import DigestMode, PostgresSource, RowHasher
from replverify.diff.sql import TableSQL, parse_where
from replverify.diff.state import StateFile, range_id
from replverify.diff.throttle import Throttle, adapt_chunk_rows
from replverify.errors import ReplverifyError, UsageError
from replverify.types import TableRef, TableResult

if TYPE_CHECKING:
    from replverify.diff.run import DiffOptions

#: Chunks per task of a big table: enough work per task that its fixed cost (two
#: connections, a plan, a round trip to the scheduler) stays small beside it.
CHUNKS_PER_TASK = 16
#: Seconds to reach a scheduler, and how long it may stay unreachable mid-run.
CONNECT_TIMEOUT = 10.0
LOST_AFTER = 5.0
INSTALL_HINT = "pip install 'replverify[dask]'"


class ExecutorError(ReplverifyError):
    """The Dask scheduler could not be reached, or was lost mid-run."""


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed ``--executor``."""

    kind: Literal["inprocess", "local", "dask"]
    workers: int = 0
    address: str = ""

    @classmethod
    def parse(cls, text: str) -> ExecutorSpec:
        if text == "inprocess":
            return cls("inprocess")
        if text.startswith("local:"):
            n = text.partition(":")[2]
            if n.isdigit() and int(n) >= 1:
                return cls("local", workers=int(n))
        elif text.startswith("dask://"):
            hostport = text.removeprefix("dask://")
            host, _, port = hostport.rpartition(":")
            if host and port.isdigit():
                return cls("dask", address=f"tcp://{hostport}")
        raise UsageError(
            f"--executor {text!r}: use inprocess, local:N (N >= 1 worker processes) or "
            "dask://HOST:PORT (a running Dask scheduler)"
        )


def import_distributed() -> Any:
    """The ``distributed`` module, or a UsageError that says what to install."""
    try:
        import distributed
    except ImportError:
        raise UsageError(
            "--executor local:N and dask://... need the Dask extra, which is not installed",
            hint=INSTALL_HINT,
        ) from None
    return distributed


# -- tasks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One key range of one table, compared on a worker."""

    source: Endpoint
    target: Endpoint
    plan: TablePlan
    where: str | None
    range: KeyRange
    mode: DigestMode
    options: DiffOptions
    fence: bool
    #: chunk size for this task (adapted from earlier tasks with ``--chunk-time``)
    chunk_rows: int


@dataclass
class TaskOutcome:
    """What a task sends back: the range's result (counts, differences), and timings."""

    result: TableResult
    seconds: float


def run_task(task: Task) -> TaskOutcome:
    """The function a worker runs (in a thread of its own: no event loop is running)."""
    return asyncio.run(_run_task(task))


async def _run_task(task: Task) -> TaskOutcome:
    from replverify.diff.table import compare_table

    started = time.perf_counter()
    options = dataclasses.replace(task.options, chunk_rows=task.chunk_rows, state=None)
    sql = TableSQL(task.plan, parse_where(task.where) if task.where else None)
    pools: list[asyncpg.Pool] = []
    try:
        for ep in (task.source, task.target):
            # ``jobs`` chunks at a time, as in-process (no boundary walk: the range is cut
            # in one query)
            pools.append(await open_pool(ep, options.jobs))
        src, tgt = pools
        fence = Fence(src, tgt, timeout=options.lag_timeout) if task.fence else None
        result = await compare_table(
            sql, src, tgt, task.mode, options, fence=fence, whole=task.range
        )  # fmt: skip
    except ReplverifyError as e:  # exceptions of ours need not unpickle on the client
        result = TableResult(task.plan.ref, task.plan.key_names, task.plan.key_mode)
        result.error = e.message
    finally:
        for pool in pools:
            pool.terminate()
    return TaskOutcome(result, time.perf_counter() - started)


# -- merging (pure) --------------------------------------------------------------------------
@dataclass
class TableMerge:
    """The results of one table's tasks, merged into the table's result."""

    plan: TablePlan
    tasks: int
    max_diffs: int | None
    results: dict[int, TableResult] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    @property
    def done(self) -> bool:
        return len(self.results) == self.tasks

    @property
    def rows_done(self) -> int:
        return sum(r.rows_source for r in self.results.values())

    def add(self, index: int, result: TableResult) -> None:
        self.results[index] = result
        if self.done:
            self.finished = time.perf_counter()

    def merged(self, missing_reason: str | None = None) -> TableResult:
        """The table's result; ``missing_reason`` explains tasks that never finished."""
        parts = [self.results[i] for i in sorted(self.results)]
        base = next((p for p in parts if p.digest), parts[0] if parts else None)
        plan = self.plan
        out = TableResult(
            plan.ref,
            plan.key_names,
            plan.key_mode,
            schema_differences=plan.schema_differences,
            columns=tuple(c.name for c in plan.columns),
        )
        if base is not None:
            out.digest, out.digest_bits = base.digest, base.digest_bits
            out.column_forms = base.column_forms
        diffs = [d for p in parts for d in p.differences]
        with contextlib.suppress(TypeError):
            diffs.sort(key=lambda d: d.key)
        out.differences_total = sum(p.differences_total for p in parts)
        out.differences = diffs if self.max_diffs is None else diffs[: self.max_diffs]
        out.truncated = out.differences_total > len(out.differences)
        for p in parts:
            out.rows_source += p.rows_source
            out.rows_target += p.rows_target
            out.chunks += p.chunks
            out.chunks_mismatched += p.chunks_mismatched
            out.unstable.extend(p.unstable)
        errors = [p.error for p in parts if p.error]
        if missing_reason and not self.done:
            left = self.tasks - len(self.results)
            errors.append(
                f"{missing_reason}: {left} of {self.tasks} key ranges were not verified "
                f"(verified so far: {len(self.results)} ranges, {out.rows_source:,} source rows)"
            )
        out.error = "; ".join(dict.fromkeys(errors)) or None
        out.elapsed_s = (self.finished or time.perf_counter()) - self.started
        return out


# -- the client side -------------------------------------------------------------------------
async def free_connections(pool: asyncpg.Pool) -> tuple[int, int, int, int]:
    """``(max_connections, reserved, in use by others, free)`` on ``pool``'s server;
    this process's own connections do not count as in use."""
    text = (
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int,"
        " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
    )
    async with pool.acquire() as conn:
        most, reserved, used = await conn.fetchrow(text)
    others = max(used - pool.get_size(), 0)
    return most, reserved, others, most - reserved - others


async def check_budget(pool: asyncpg.Pool, wanted: int, side: str, given: bool) -> None:
    """Refuse a run that would hold more connections on a server than it has free."""
    most, reserved, others, free = await free_connections(pool)
    if wanted <= free:
        return
    why = "--max-connections" if given else "--jobs per worker thread, and 2 for the client"
    raise UsageError(
        f"{wanted} connections on the {side} ({why}): it allows {most} connections "
        f"({reserved} reserved for superusers) and {others} are in use by others, so at "
        f"most {free} are free",
        hint="lower --max-connections (or the number of workers)",
    )


@dataclass
class ClusterRun:
    """Runs the tasks of every table on a Dask cluster and merges their results."""

    source: Endpoint
    target: Endpoint
    src_pool: asyncpg.Pool
    tgt_pool: asyncpg.Pool
    mode: DigestMode
    options: DiffOptions
    fence: bool
    progress: Callable[[TableRef, int, int], None] | None
    state: StateFile | None
    throttle: Throttle
    chunk_time: float | None
    notes: list[str] = field(default_factory=list)
    #: every task submitted (tests check that none carries a password)
    submitted: list[Task] = field(default_factory=list)
    chunk_rows: int = 0
    #: why the run ended early (the scheduler was lost), or None
    lost: str | None = None

    async def plan(self, sql: TableSQL) -> list[KeyRange]:
        """A table's tasks: ranges of ``CHUNKS_PER_TASK`` chunks, cut at chunk
        boundaries (so the chunks are those of an in-process run); one for a small
        table or one without a key."""
        plan = sql.plan
        task_rows = self.options.chunk_rows * CHUNKS_PER_TASK
        if plan.multiset or plan.estimated_rows <= task_rows:
            return [KeyRange()]
        source = PostgresSource(self.src_pool, sql, self.mode, self.options.compare)
        cuts = await source.chunk_cuts(KeyRange(), self.options.chunk_rows, CHUNKS_PER_TASK)
        return ranges_between(cuts)

    def _task_id(self, plan: TablePlan, rng: KeyRange) -> str:
        names = [c.name for c in plan.columns]
        by_name = dict(zip(names, RowHasher(plan, self.options.compare).encoders, strict=True))
        encoders = [by_name[k] for k in plan.key_names]
        return "task:" + range_id(encoders, rng)

    async def run(
        self, sqls: Sequence[TableSQL], unreadable: Sequence[str | None]
    ) -> list[TableResult]:
        distributed = import_distributed()
        spec = ExecutorSpec.parse(self.options.executor)
        self.chunk_rows = self.options.chunk_rows
        cluster = None
        where = spec.address
        try:
            if spec.kind == "local":
                cluster = await distributed.LocalCluster(
                    n_workers=spec.workers,
                    threads_per_worker=1,
                    processes=True,
                    asynchronous=True,
                    dashboard_address=":0",
                    silence_logs=logging.ERROR,
                )
                where = cluster.scheduler_address
            if spec.kind == "dask":
                await _probe(spec)
            try:
                client = await asyncio.wait_for(
                    distributed.Client(where, asynchronous=True, timeout=CONNECT_TIMEOUT),
                    CONNECT_TIMEOUT + 5,
                )
            except (OSError, asyncio.TimeoutError) as e:
                raise ExecutorError(
                    f"cannot reach the Dask scheduler at {where}: {e or type(e).__name__}",
                    hint="start one with `dask scheduler` (and workers with `dask worker "
                    "ADDRESS`), or use --executor local:N",
                ) from None
            try:
                return await self._run(distributed, client, sqls, unreadable, where)
            finally:
                with _quiet():  # a lost scheduler cannot be told goodbye: do not wait on it
                    await asyncio.wait_for(client.close(timeout=2 if self.lost else 10), 5)
        finally:
            if cluster is not None:
                with _quiet():
                    await asyncio.wait_for(cluster.close(timeout=2 if self.lost else 20), 5)

    async def _run(
        self,
        distributed: Any,
        client: Any,
        sqls: Sequence[TableSQL],
        unreadable: Sequence[str | None],
        where: str,
    ) -> list[TableResult]:
        threads = sum((await client.nthreads()).values()) or 1
        given = self.options.max_connections is not None
        from replverify.diff.table import CLIENT_CONNECTIONS

        jobs = self.options.jobs  # connections per side of one running task
        if given:
            assert self.options.max_connections is not None
            in_flight = (self.options.max_connections - CLIENT_CONNECTIONS) // jobs
            if in_flight < 1:
                raise UsageError(
                    f"--max-connections {self.options.max_connections}: a cluster run needs "
                    f"{CLIENT_CONNECTIONS} connections per server here and --jobs ({jobs}) "
                    "per running task"
                )
        else:
            in_flight = threads
        for pool, side in ((self.src_pool, "source"), (self.tgt_pool, "target")):
            await check_budget(pool, CLIENT_CONNECTIONS + in_flight * jobs, side, given)
        merges: list[TableMerge | None] = []
        queue: list[tuple[int, int, Task]] = []  # (table, task index, task)
        results: list[TableResult | None] = []
        for t, (sql, reason) in enumerate(zip(sqls, unreadable, strict=True)):
            plan = sql.plan
            if reason:
                from replverify.diff.table import _unverified

                results.append(_unverified(plan, reason))
                merges.append(None)
                continue
            ranges = await self.plan(sql)
            merge = TableMerge(plan, len(ranges), self.options.max_diffs)
            merges.append(merge)
            results.append(None)
            for i, rng in enumerate(ranges):
                known = self._known(plan, rng)
                if known is not None:
                    merge.add(i, known)
                    continue
                task = Task(
                    self.source.without_secret(),
                    self.target.without_secret(),
                    plan,
                    self.options.where,
                    rng,
                    self.mode,
                    dataclasses.replace(self.options, state=None),
                    self.fence,
                    self.chunk_rows,
                )
                queue.append((t, i, task))
        if self.progress is not None:
            for m in merges:
                if m is not None:
                    self.progress(m.plan.ref, m.rows_done, max(m.plan.estimated_rows, m.rows_done))
        running: dict[asyncio.Future[Any], tuple[int, int, Task]] = {}
        lost: str | None = None
        unreachable_since: float | None = None
        try:
            while queue or running:
                while queue and len(running) < in_flight:
                    await self.throttle.wait()
                    t, i, task = queue.pop(0)
                    task = dataclasses.replace(task, chunk_rows=self.chunk_rows)
                    self.submitted.append(task)
                    future = client.submit(run_task, task, pure=False)
                    running[asyncio.ensure_future(_result(future))] = (t, i, task)
                done, _ = await asyncio.wait(
                    running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                )
                if client.status != "running":
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > LOST_AFTER:
                        lost = f"the Dask scheduler at {where} was lost mid-run"
                        break
                else:
                    unreachable_since = None
                for fut in done:
                    t, i, task = running.pop(fut)
                    merge_of = merges[t]
                    assert merge_of is not None
                    try:
                        outcome: TaskOutcome = fut.result()
                    except (asyncio.CancelledError, OSError) as e:
                        lost = f"the Dask scheduler at {where} was lost mid-run ({e!r})"
                        break
                    except Exception as e:
                        result = TableResult(task.plan.ref, task.plan.key_names, task.plan.key_mode)
                        result.error = f"{task.plan.ref}: a task failed on the cluster: {e}"
                        outcome = TaskOutcome(result, 0.0)
                    self._finished(merge_of, i, task, outcome)
                if lost:
                    break
        finally:
            for fut in running:
                fut.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        if lost:
            self.notes.append(
                f"{lost}: the tables and key ranges finished before are in this report; "
                "the others were not verified"
            )
        out: list[TableResult] = []
        for m, r in zip(merges, results, strict=True):
            if m is None:
                assert r is not None
                out.append(r)
            else:
                out.append(m.merged(lost))
        self.lost = lost
        return out

    def _known(self, plan: TablePlan, rng: KeyRange) -> TableResult | None:
        """A task an earlier run verified (``--state``), as a result, or None."""
        if self.state is None or plan.multiset:
            return None
        rid = self._task_id(plan, rng)
        rows = self.state.known(plan.ref.qualified, rid)
        if rows is None:
            return None
        from replverify.diff.table import DIGEST_DESCRIPTIONS, _column_forms

        r = TableResult(plan.ref, plan.key_names, plan.key_mode)
        r.digest, r.column_forms = DIGEST_DESCRIPTIONS[self.mode], _column_forms(plan, self.mode)
        r.digest_bits = 64 if self.mode == "server" else 128
        r.rows_source = r.rows_target = rows
        r.chunks = self.state.chunks.get((plan.ref.qualified, rid), 1)
        return r

    def _finished(self, merge: TableMerge, index: int, task: Task, outcome: TaskOutcome) -> None:
        result = outcome.result
        merge.add(index, result)
        verified = not result.error and not result.differences_total and not result.unstable
        if self.state is not None and verified and not task.plan.multiset:
            rid = self._task_id(task.plan, task.range)
            self.state.record(task.plan.ref.qualified, rid, result.rows_source, result.chunks)
        if self.chunk_time and result.chunks:
            per_chunk = outcome.seconds / result.chunks
            rows = result.rows_source // result.chunks
            self.chunk_rows = adapt_chunk_rows(self.chunk_rows, rows, per_chunk, self.chunk_time)
        if self.progress is not None:
            done = merge.rows_done
            self.progress(merge.plan.ref, done, max(merge.plan.estimated_rows, done))


async def _probe(spec: ExecutorSpec) -> None:
    """Fail fast on a scheduler address nothing listens on: Dask itself retries
    until its timeout."""
    host, _, port = spec.address.removeprefix("tcp://").rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), CONNECT_TIMEOUT
        )
    except (OSError, asyncio.TimeoutError) as e:
        raise ExecutorError(
            f"cannot reach the Dask scheduler at {spec.address}: {e.strerror or e!r}"
            if isinstance(e, OSError)
            else f"cannot reach the Dask scheduler at {spec.address}: timed out",
            hint="start one with `dask scheduler` (and workers with `dask worker ADDRESS`), "
            "or use --executor local:N",
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _result(future: Any) -> Any:
    return await future.result()


def _quiet() -> contextlib.suppress:
    """Closing a client or cluster whose scheduler is gone may fail or hang: that does
    not change what was verified."""
    return contextlib.suppress(Exception)
