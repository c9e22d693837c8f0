"""Reconcile: name exactly the journaled writes a failover lost.

>>> report = await reconcile("writes.jsonl", "postgresql://app@new-primary/shop",
...                          source_dsn="postgresql://app@old-primary/shop")
>>> report.status, report.counts
('loss', {'durable': 40, 'lost': 3, 'superseded': 12, 'conflict': 1, 'in_doubt': 1, ...})
>>> print(replay_script(report))          # replverify.reconcile.replay

Each written row (table + key) is judged once, by its *last settled write*; earlier
writes to it are ``superseded``. "Last" is the order in which writes were settled: a
commit marker settles its transaction's intents at the marker's position (in their
journal order), a self-committed record at its own. Two transactions that write one row
are serialised by PostgreSQL's row lock, so the one that committed last holds the row,
whatever order their intents were journaled in. Aborted writes are counted, not judged.

Verdicts. Values are compared type-aware: PostgreSQL itself reads the
journal's values as the column types (``jsonb_populate_record`` of the table's row type),
then both sides are compared with :mod:`replverify.values.canonical` encodings - ``"12.50"`` =
12.5, timestamps as instants, json by value, NULL = NULL:

``durable``     the target row equals the post-image on the judged columns (is absent,
                for a delete);
``lost``        the target shows the write never happened: an insert's or upsert's row
                is absent, a delete's row is present, an update's row differs and (when
                a before-image is known) holds it - or holds a state the row passed
                through earlier in the journal (then this write *and* those between are
                missing);
``conflict``    the row matches neither the post-image nor any state the journal knows
                (someone else wrote it; an update's row is gone);
``in_doubt``    an intent never settled; ``applied`` says whether the target shows its
                post-image (None: cannot tell, a later settled write decides the row);
``superseded``  a later settled write to the row exists (and is judged instead), or a
                later in-doubt write whose post-image the target shows.


:mod:`.judge` holds the verdicts (pure), :mod:`.ledger` the passes' state (pure),
:mod:`.targets` the edge that reads the target's rows, :mod:`.findings` the report's
data; this module drives the passes.

The journal is streamed once and then read back only where needed: (1) validate every
line and settle transactions, keeping per written row only its judged write's line and
byte offset, plus the intents of open transactions, and logging every settled write (its
row's hash, line, index and offset; spilled to a temporary file, so memory stays flat in
the journal's length); (2) read back only the judged lines, by offset, look them up in
batches, judge (a row that holds its judged write's post-image byte for byte is
answered by the server with a flag alone, :data:`~.judge.HELD`); (3) only for lost or
conflicting rows written more than once in the window: read back, from the log, the
lines of their settled writes (a hash match is checked against the whole row), re-judge
them against every state the row passed through, and fold each chain into the image
that restores it. ``since`` skips older writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import os
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import BinaryIO

import asyncpg

from replverify.db import catalog
from replverify.db.connect import DB_ERRORS, PINNED_SETTINGS, Endpoint, connect, trouble
from replverify.errors import JournalError, UsageError
from replverify.journal.format import (
    MAX_LINE_BYTES,
    Marker,
    Record,
    RowId,
    RowWrite,
    WriteRecord,
)
from replverify.journal.reader import JournalReader
from replverify.journal.resolve import RowResolver
from replverify.reconcile.findings import Detail, Finding, ReconcileReport, Restore
from replverify.reconcile.judge import (
    Image,
    Observation,
    Probe,
    WriteId,
    _wid,
    chain_probe,
    judge,
    judge_chain,
    judge_in_doubt,
    probe_for,
)
from replverify.reconcile.ledger import (
    SETTLED_WIDTH,
    ChainCollector,
    Ledger,
    fold,
)
from replverify.reconcile.spill import Spill
from replverify.reconcile.targets import BadValue, PostgresTarget, Target, json_text
from replverify.types import TableRef

__all__ = [
    "BATCH_ROWS",
    "describe_statement",
    "first_pass",
    "parse_since",
    "reconcile",
    "reconcile_with",
    "statement_write",
]

#: rows per lookup query
BATCH_ROWS = 500
#: probes added between two turns of the event loop while a query is in flight
_YIELD_EVERY = 16


def statement_write(rec: WriteRecord) -> RowWrite:
    """A statement intent as a write of no known row (for an in-doubt finding)."""
    return RowWrite(
        record=rec,
        index=0,
        op=rec.op,
        table=rec.table,
        key=(),
        rid=(rec.table.schema, rec.table.name, "#statement", rec.line),
        key_display=(),
        values={},
        check=(),
        before=None,
    )


def describe_statement(rec: WriteRecord) -> str:
    """``UPDATE ... WHERE aid = $2 with (5, 42)``: the statement and its parameters."""
    text = " ".join((rec.stmt or "").split())
    return f"{text} with ({', '.join(json_text(p) for p in rec.params)})" if rec.params else text


# --------------------------------------------------------------------------- the driver


class _Batcher:
    """Collects probes per table and sends a batch when it is full, with one query in
    flight while the journal is read on."""

    def __init__(
        self,
        target: Target,
        size: int,
        on_result: Callable[[Probe, Observation], None],
        path: str,
    ) -> None:
        self.target = target
        self.size = size
        self.on_result = on_result
        self.path = path
        self.pending: dict[TableRef, list[Probe]] = {}
        self.inflight: asyncio.Future[None] | None = None
        self.queries = 0

    async def add(self, probe: Probe) -> None:
        batch = self.pending.setdefault(probe.write.table, [])
        batch.append(probe)
        if len(batch) >= self.size:
            del self.pending[probe.write.table]
            await self._send(probe.write.table, batch)
        elif not len(batch) % _YIELD_EVERY and self.inflight is not None:
            # adding never waits, so without this the query in flight would not go on
            # (its savepoint's answer, then the query itself) until the next batch is full:
            # the server would work while we wait instead of while we read
            await asyncio.sleep(0)

    async def _send(self, table: TableRef, batch: list[Probe]) -> None:
        if self.inflight is not None:
            await self.inflight
        self.queries += 1
        self.inflight = asyncio.ensure_future(self._run(table, batch))
        await asyncio.sleep(0)  # the query goes out; the server works while we read on

    async def _run(self, table: TableRef, batch: list[Probe]) -> None:
        try:
            observations = await self.target.observe(self.target.tables[table], batch)
        except BadValue as e:
            w = batch[e.index].write
            raise JournalError(
                f"{w.table}: a value does not fit its column: {e.message}",
                path=self.path,
                line=w.record.line,
            ) from None
        for probe, obs in zip(batch, observations, strict=True):
            self.on_result(probe, obs)

    async def flush(self) -> None:
        for table, batch in list(self.pending.items()):
            del self.pending[table]
            await self._send(table, batch)
        if self.inflight is not None:
            task, self.inflight = self.inflight, None
            await task

    async def close(self) -> None:
        """Cancel a query still in flight (after an error elsewhere)."""
        if self.inflight is not None and not self.inflight.done():
            self.inflight.cancel()
            with contextlib.suppress(BaseException):
                await self.inflight


class _LineAt:
    """Reads single lines of the journal by byte offset (opened on first use)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def read(self, offset: int) -> bytes:
        f = self._file
        if f is None:
            try:
                f = self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            except OSError as e:
                raise UsageError(f"cannot read journal {self.path}: {e.strerror}") from None
        f.seek(offset)
        return f.readline(MAX_LINE_BYTES + 1)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _collect_chains(
    collector: ChainCollector,
    log: Iterable[array[int]],
    lines: _LineAt,
    parse: Callable[[int, bytes], Record],
    resolver: RowResolver,
) -> None:
    """Feed ``collector`` the settled writes of its rows, in settlement order, from pass
    1's log of settled writes (:attr:`Ledger.settled`): only the lines of writes whose
    row hash matches are read again, and their rows are compared whole."""
    wanted = {hash(rid) for rid in collector.recent}
    last: tuple[int, list[RowWrite]] = (0, [])
    for chunk in log:
        hashes = chunk[::SETTLED_WIDTH]
        for k, h in enumerate(hashes):
            if h not in wanted:
                continue
            at = k * SETTLED_WIDTH
            line, index, offset = chunk[at + 1], chunk[at + 2], chunk[at + 3]
            if last[0] != line:
                rec = parse(line, lines.read(offset))
                assert isinstance(rec, WriteRecord)
                last = (line, resolver(rec))
            collector.settled(last[1][index])
            if collector.complete:
                return


async def _observe_all(
    target: Target, probes: Iterable[Probe], batch_rows: int, path: str
) -> dict[WriteId, Observation]:
    answers: dict[WriteId, Observation] = {}

    def keep(p: Probe, o: Observation) -> None:
        answers[_wid(p.write)] = o

    batcher = _Batcher(target, batch_rows, keep, path)
    try:
        for p in probes:
            await batcher.add(p)
        await batcher.flush()
    finally:
        await batcher.close()
    return answers


def first_pass(
    path: str, resolver: RowResolver, since: _dt.datetime | None, spill: Spill
) -> tuple[Ledger, JournalReader, int]:
    """Pass 1: validate every line, settle transactions, find each row's judged write.
    Returns the ledger, the reader (lines read, torn tail) and the writes before
    ``since``."""
    ledger = Ledger(spill)
    reader = JournalReader(path)
    outside = 0
    offset = 0  # of the line in the file: passes 2 and 3 read only the lines they need
    parse = reader.parse
    for line, raw in reader.raw_lines():
        rec = parse(line, raw)
        at = offset
        offset += len(raw)
        if isinstance(rec, Marker):
            ledger.marker(rec)
        elif since is not None and rec.ts < since:
            outside += 1
        elif rec.stmt is not None:
            ledger.statement(rec)
        else:
            for w in resolver(rec):
                ledger.write(w, at)
    return ledger, reader, outside


def parse_since(text: str) -> _dt.datetime:
    """``--since``: an ISO 8601 timestamp; without an offset it is read as UTC."""
    try:
        ts = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since {text!r} is not an ISO 8601 timestamp",
            hint="e.g. --since 2026-11-23T10:00:00+00:00",
        ) from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=_dt.timezone.utc)


async def reconcile(
    journal_path: str | os.PathLike[str],
    target_dsn: str,
    *,
    source_dsn: str | None = None,
    since: _dt.datetime | str | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ReconcileReport:
    """Check every journaled write against ``target_dsn`` (the surviving database).

    With ``source_dsn`` (the old primary, when reachable) each reported row also shows
    what the old primary holds, and :func:`replverify.reconcile.replay.replay_script` takes row
    images from there. ``since`` considers only writes journaled at or after it (naive:
    UTC). Raises :class:`~replverify.errors.ReplverifyError` for trouble (a bad journal
    line, an unreachable server); lost writes are results, never exceptions.
    """
    since_ts = parse_since(since) if isinstance(since, str) else since
    if since_ts is not None and since_ts.tzinfo is None:
        since_ts = since_ts.replace(tzinfo=_dt.timezone.utc)
    path = os.fspath(journal_path)
    if not os.path.isfile(path):
        raise UsageError(f"journal {path} does not exist or is not a file")
    if os.path.getsize(path) == 0:
        raise UsageError(
            f"journal {path} is empty: there is nothing to check",
            hint="point --journal at the file the application writes",
        )
    endpoints = [Endpoint.parse(target_dsn)]
    if source_dsn is not None:
        endpoints.append(Endpoint.parse(source_dsn))
    opened = await asyncio.gather(*(connect(ep) for ep in endpoints), return_exceptions=True)
    conns = [c for c in opened if isinstance(c, asyncpg.Connection)]

    try:
        for c in opened:
            if isinstance(c, BaseException):
                raise c
        sides: list[PostgresTarget] = []
        async with contextlib.AsyncExitStack() as stack:
            for conn, ep in zip(conns, endpoints, strict=True):
                await stack.enter_async_context(
                    conn.transaction(isolation="repeatable_read", readonly=True)
                )
                sides.append(PostgresTarget(conn, str(ep), await catalog.load_tables(conn)))
            report = await reconcile_with(
                path,
                sides[0],
                source=sides[1] if len(sides) > 1 else None,
                since=since_ts,
                batch_rows=batch_rows,
            )
        if report.torn is not None and report.lines <= 1:
            # a lone torn line is not a journal that was checked and found complete
            raise UsageError(f"journal {path} holds no complete record (its only line is torn)")
        return report
    except DB_ERRORS as e:
        raise trouble(e, *endpoints) from e
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def reconcile_with(
    journal_path: str | os.PathLike[str],
    target: Target,
    *,
    source: Target | None = None,
    since: _dt.datetime | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ReconcileReport:
    """:func:`reconcile` against any :class:`Target` (rows are resolved against the
    target's catalog, ``target.tables``)."""
    started = time.perf_counter()
    path = os.fspath(journal_path)
    resolver = RowResolver(target.tables, path=path)

    # pass 1: validate every line, settle transactions, find each row's judged write
    spill = Spill()
    lines = _LineAt(path)
    try:
        return await _passes(
            path, target, source, since, batch_rows, resolver, spill, lines, started
        )
    finally:
        spill.close()
        lines.close()


async def _passes(
    path: str,
    target: Target,
    source: Target | None,
    since: _dt.datetime | None,
    batch_rows: int,
    resolver: RowResolver,
    spill: Spill,
    lines: _LineAt,
    started: float,
) -> ReconcileReport:
    ledger, reader, outside = first_pass(path, resolver, since, spill)
    parse = reader.parse
    counts = ledger.counts
    doubt_rows: dict[RowId, list[RowWrite]] = {}
    for w in ledger.in_doubt():
        doubt_rows.setdefault(w.rid, []).append(w)

    timings = {"pass1": time.perf_counter() - started}
    # pass 2: judge the last settled write of every row, in batches
    findings: list[Finding] = []
    deferred: dict[RowId, RowWrite] = {}  # judged writes of rows with in-doubt writes

    def on_judged(probe: Probe, obs: Observation) -> None:
        verdict, reason, differs = judge(probe.write, obs)
        counts[verdict] += 1
        if verdict != "durable":
            findings.append(Finding(verdict, probe.write, reason, differs))

    batcher = _Batcher(target, batch_rows, on_judged, path)
    try:
        for line, at in ledger.judged():
            rec = parse(line, lines.read(at))
            assert isinstance(rec, WriteRecord)
            for w in resolver(rec):
                if not ledger.is_judged(w):
                    continue
                if w.rid in doubt_rows:
                    deferred[w.rid] = w
                else:
                    await batcher.add(probe_for(w, verdict_only=True))
        await batcher.flush()
    finally:
        await batcher.close()

    timings["pass2"] = time.perf_counter() - started - sum(timings.values())
    # rows with in-doubt writes: their settled write and their intents together
    doubt_findings: list[Finding] = []
    doubt_obs: dict[WriteId, Observation] = {}
    superseded_by_doubt = 0
    if doubt_rows:
        probes = [
            probe_for(w)
            for rid, ws in doubt_rows.items()
            for w in ([deferred[rid]] if rid in deferred else []) + ws
        ]
        answers = await _observe_all(target, probes, batch_rows, path)
        for rid, ws in doubt_rows.items():
            for w in ws:
                obs = doubt_obs[_wid(w)] = answers[_wid(w)]
                covered = ledger.covered(w) or any(o.line > w.line for o in ws)
                applied, reason = judge_in_doubt(w, obs, covered=covered)
                stmt = ledger.statement_of(w)
                if stmt is not None:
                    reason += f" (a row of {describe_statement(stmt)})"
                counts["in_doubt"] += 1
                doubt_findings.append(Finding("in_doubt", w, reason, applied=applied))
            j = deferred.get(rid)
            if j is None:
                continue
            verdict, reason, differs = judge(j, answers[_wid(j)])
            if verdict in ("lost", "conflict"):
                for w in ws:
                    if w.line > j.line and judge_in_doubt(w, doubt_obs[_wid(w)], covered=False)[0]:
                        verdict = "superseded"
                        superseded_by_doubt += 1
                        break
            counts[verdict] += 1
            if verdict in ("lost", "conflict"):
                findings.append(Finding(verdict, j, reason, differs))

    for rec in ledger.statements_in_doubt():
        counts["in_doubt"] += 1
        reason = (
            "never settled; the endpoint failed before the statement answered, so the rows"
            f" it touched are unknown: {describe_statement(rec)}"
        )
        doubt_findings.append(Finding("in_doubt", statement_write(rec), reason, applied=None))

    timings["in_doubt"] = time.perf_counter() - started - sum(timings.values())
    # pass 3: lost or conflicting rows written more than once: their chains
    folds: dict[RowId, Restore] = {}
    interest = [f.write.rid for f in findings if ledger.has_chain(f.write)]
    spill(ledger.settled)  # the log's tail
    del ledger  # the per-row map is no longer needed
    if interest:
        ends = {f.write.rid: _wid(f.write) for f in findings if f.write.rid in interest}
        collector = ChainCollector(interest, ends)
        _collect_chains(collector, spill.chunks(), lines, parse, resolver)
        judged_writes = {f.write.rid: f.write for f in findings}
        answers = await _observe_all(
            target,
            (chain_probe(judged_writes[rid], collector.chain(rid)) for rid in interest),
            max(1, batch_rows // 16),  # a chain probe reads up to 2 * CHAIN_STATES images
            path,
        )
        rejudged = []
        for f in findings:
            if f.write.rid not in collector.recent:
                rejudged.append(f)
                continue
            chain = collector.chain(f.write.rid)
            verdict, reason = judge_chain(chain, answers[_wid(f.write)], f.verdict, f.reason)
            if verdict != f.verdict:
                counts[f.verdict] -= 1
                counts[verdict] += 1
            folder = collector.folders[f.write.rid]
            folds[f.write.rid] = folder.result()
            rejudged.append(
                dataclasses.replace(
                    f,
                    verdict=verdict,
                    reason=reason,
                    chain=tuple(folder.history),
                    chain_total=folder.count,
                )
            )
        findings = rejudged

    timings["pass3"] = time.perf_counter() - started - sum(timings.values())
    # whole rows of every reported write (target, source), and restoring images
    restores = {
        _wid(f.write): folds.get(f.write.rid) or fold([f.write])
        for f in findings
        if f.verdict == "lost"
    }
    reported = findings + doubt_findings
    tgt_rows = await _details(target, reported, restores, path, batch_rows)
    src_rows: dict[WriteId, Detail | None] = {}
    notes: list[str] = []
    if source is not None:
        src_rows = await _details(source, reported, {}, path, batch_rows)
        missing = sorted(
            {str(f.write.table) for f in reported if f.write.table not in source.tables}
        )
        if missing:
            notes.append(f"tables missing on the source: {', '.join(missing)}")
    final: list[Finding] = []
    for f in reported:
        k = _wid(f.write)
        d = tgt_rows[k]
        restore = restores.get(k)
        if restore is not None and d is not None:
            restore = dataclasses.replace(restore, text=dict(d.image_text))
        s = src_rows.get(k)
        applied_src = None
        if f.verdict == "in_doubt" and s is not None and k in doubt_obs:
            if f.write.op == "delete":
                applied_src = not s.found
            else:
                post = doubt_obs[k].images[0]
                applied_src = s.found and all(s.encoded.get(c) == v for c, v in post.items())
        final.append(
            dataclasses.replace(
                f, target_row=d, source_row=s, restore=restore, applied_on_source=applied_src
            )
        )
    final.sort(key=lambda f: _wid(f.write))
    timings["details"] = time.perf_counter() - started - sum(timings.values())
    if superseded_by_doubt:
        notes.append(
            f"{superseded_by_doubt} settled write(s) were overwritten by in-doubt writes the"
            " target shows applied (counted as superseded)"
        )
    if reader.torn is not None:
        notes.append(reader.torn.describe())
    return ReconcileReport(
        journal=path,
        target=target.name,
        source=source.name if source is not None else None,
        since=since,
        lines=reader.lines,
        counts=counts,
        lost=[f for f in final if f.verdict == "lost"],
        conflicts=[f for f in final if f.verdict == "conflict"],
        in_doubt=[f for f in final if f.verdict == "in_doubt"],
        torn=reader.torn,
        outside_window=outside,
        notes=notes,
        elapsed_s=time.perf_counter() - started,
        timings={k: round(v, 3) for k, v in timings.items()},
        settings=dict(PINNED_SETTINGS),
    )


async def _details(
    side: Target,
    findings: Sequence[Finding],
    restores: Mapping[WriteId, Restore],
    path: str,
    batch_rows: int,
) -> dict[WriteId, Detail | None]:
    """Whole rows of ``findings`` on one side, a query per table and batch (None: the
    table or a key column is missing on that side)."""
    out: dict[WriteId, Detail | None] = {}
    by_table: dict[TableRef, list[Finding]] = {}
    for f in findings:
        if not f.write.key:  # a statement whose rows are unknown
            out[_wid(f.write)] = None
            continue
        by_table.setdefault(f.write.table, []).append(f)
    for ref, fs in by_table.items():
        info = side.tables.get(ref)
        if info is None or any(info.column(c) is None for c, _ in fs[0].write.key):
            out.update({_wid(f.write): None for f in fs})
            continue
        for start in range(0, len(fs), batch_rows):
            chunk = fs[start : start + batch_rows]
            imgs: list[Image | None] = []
            for f in chunk:
                r = restores.get(_wid(f.write))
                imgs.append(r.image() if r is not None else None)
            try:
                got = await side.details(info, [f.write for f in chunk], imgs)
            except BadValue as e:
                raise JournalError(e.message, path=path, line=chunk[e.index].line) from None
            out.update({_wid(f.write): d for f, d in zip(chunk, got, strict=True)})
    return out
