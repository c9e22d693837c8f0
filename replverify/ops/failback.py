"""``replverify failback``: what the old primary holds that the new primary lacks,
before the old one is rewound (``pg_rewind`` discards it).

The differing rows come from :func:`replverify.api.diff` (OLD as source, NEW as target).
Each is attributed by the xmin of its row version on each side against the xid horizon
H of NEW's promotion (:mod:`replverify.ops.xidhorizon`, read from NEW's WAL; needs superuser
or ``pg_read_server_files`` on NEW), which works on default settings:

* on OLD, a row version is OLD's own change after the divergence when its xmin >= H, or
  when its xmin < H and NEW's ``pg_xact_status(xmin)`` is not ``committed`` (OLD
  committed it after the WAL that reached NEW);
* on NEW, a row version with xmin >= H is NEW's own write after its promotion;
* xmins inside an uncertain horizon window ``[lo, hi)`` cannot be told: ``unknown``.

xmins are 32-bit; each is widened to a 64-bit xid against its server's next xid (an
unfrozen xmin is less than 2^31 old). When ``track_commit_timestamp`` is on on both
sides, each keyed row is also attributed by commit timestamps against two instants read
on NEW (the last replayed commit time, and the history file's modification time); a row
the two methods disagree on is ``unknown``, never guessed.

Keyed rows: on OLD only and OLD's change -> ``old_only`` insert; on OLD only and older
than the divergence -> NEW deleted it (``new_only``); on NEW only and NEW's write ->
``new_only`` insert; on NEW only and replicated -> OLD deleted it (``old_only`` delete);
on both -> ``old_only``/``new_only``/``conflict`` update by who changed it. Keyless
tables are compared per distinct row image (copies on each side and their xmins):
copies OLD inserted after the divergence are ``old_only`` inserts, replicated copies
OLD lacks are ``old_only`` deletes (and the same for NEW); a mix is ``unknown``.

Where it cannot tell, in words: a row NEW deleted after its promotion that OLD changed
after the divergence looks like a row OLD inserted (a delete leaves no row to read); a
frozen row from an earlier xid epoch whose raw xmin happens to fall after H looks
written after the divergence (freezing keeps the raw xmin since PostgreSQL 9.4).

Every differing row is attributed and counted (``counts``); ``max_diffs`` limits only
the rows kept for listing. The replay script (:class:`ReplayFile`) is written as rows are
attributed, so memory stays flat in the rows' images; the diff still holds the keys.
It restores the ``old_only`` changes on NEW in one transaction, each statement guarded
(INSERT ... ON CONFLICT DO NOTHING; UPDATE/DELETE ... WHERE the row still equals what
was observed on NEW; keyless rows by their count of copies), so it never overwrites newer
data and running it twice is harmless. Conflicts and unknown rows are never replayed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import io
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import asyncpg
from sqlglot import exp

from replverify import api
from replverify.db import catalog
from replverify.db.connect import DB_ERRORS, PINNED_SETTINGS, Endpoint, connect, trouble
from replverify.diff.align import plan_table
from replverify.diff.sources import hashable
from replverify.diff.sql import ALIAS, DIALECT, TableSQL, ident, set_local
from replverify.diff.sql import table as aliased_table
from replverify.errors import UsageError
from replverify.ops.xidhorizon import (
    FIRST_NORMAL_XID,
    Horizon,
    parse_history,
    scan_segment,
    segment_name,
    widen,
)
from replverify.reconcile.replay import delete_statement, guard, insert_statement, update_statement
from replverify.types import Changed, Column, DiffReport, Extra, Missing, TableRef, TableResult
from replverify.values.canonical import jsonable

__all__ = [
    "FAILBACK_SCHEMA",
    "FailbackReport",
    "FailbackRow",
    "ReplayFile",
    "failback",
    "replay_script",
]

FAILBACK_SCHEMA = "replverify.failback/1"
Origin = Literal["old_only", "new_only", "conflict", "unknown"]
Change = Literal["insert", "update", "delete"]
ORIGINS: tuple[Origin, ...] = ("old_only", "new_only", "conflict", "unknown")

_NEW_TIMES_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_xact_replay_timestamp() AS divergence,
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS tli"""
_HISTORY_SQL = "SELECT (pg_stat_file($1)).modification"
_NEXT_XID_SQL = (
    "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next,"
    " current_setting('track_commit_timestamp')::bool AS ts"
)
_WAL_SQL = "SELECT bytes_per_wal_segment AS seg, wal_block_size AS block FROM pg_control_init()"
_READ_SQL = "SELECT pg_read_binary_file($1, $2, $3)"
_READ_TEXT_SQL = "SELECT pg_read_file($1)"
_STATUS_SQL = "SELECT x::bigint, pg_xact_status(x::xid8) FROM unnest($1::text[]) AS x"
_TS_ALIAS, _XMIN_ALIAS = "_rv_commit_ts", "_rv_xmin"
#: differing keyed rows looked up per query, per side
BATCH = 500


@dataclass(frozen=True)
class FailbackRow:
    """One differing row (for a keyless table: one copy of a row image). ``change`` is
    what happened on the old primary (for ``old_only``) or on the new one
    (``new_only``); images are PostgreSQL text under replverify's pinned settings
    (None: the row is absent on that side)."""

    table: TableRef
    key: dict[str, Any]
    origin: Origin
    change: Change
    columns: tuple[str, ...]
    old_commit: _dt.datetime | None
    new_commit: _dt.datetime | None
    old_image: dict[str, str | None] | None
    new_image: dict[str, str | None] | None
    reason: str
    old_xmin: int | None = None
    new_xmin: int | None = None
    #: a row of a table without a key (``key`` is the whole row image)
    keyless: bool = False


@dataclass
class FailbackReport:
    old: str
    new: str
    divergence_at: _dt.datetime | None
    promoted_at: _dt.datetime | None
    promotion_source: str
    timeline: int | None
    #: the rows kept for listing (``max_diffs`` per table); :meth:`counts` counts all
    rows: list[FailbackRow] = field(default_factory=list)
    diff: DiffReport | None = None
    #: tables whose differing rows could not be read for attribution, and why
    trouble: list[tuple[TableRef, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: the xid horizon of NEW's promotion (None: it could not be read)
    horizon: Horizon | None = None
    #: how rows were attributed: "xid", "xid+commit timestamps", "commit timestamps"
    method: str = ""
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ORIGINS, 0))
    #: keyed rows both methods judged, and those they disagreed on (commit timestamps on)
    agreement: dict[str, int] = field(default_factory=lambda: {"compared": 0, "disagreed": 0})
    #: statements in the replay script
    replayed: int = 0

    def __post_init__(self) -> None:
        # a report built from listed rows alone (tests, callers) counts those rows
        if self.rows and not any(self.totals.values()):
            for r in self.rows:
                self.totals[r.origin] += 1

    @property
    def unverified(self) -> list[tuple[TableRef, str]]:
        """Tables the old primary may hold unseen changes in, and why: not verified by
        the diff (could not be read, say), or their rows could not be attributed."""
        tables = self.diff.tables if self.diff is not None else []
        out = [
            (t.table, t.error or "rows written to while compared") for t in tables if not t.verified
        ]
        return out + self.trouble

    @property
    def can_tell(self) -> bool:
        return self.horizon is not None or "commit timestamps" in self.method

    def of(self, origin: Origin) -> list[FailbackRow]:
        """The listed rows of ``origin`` (see :meth:`counts` for how many there are)."""
        return [r for r in self.rows if r.origin == origin]

    @property
    def status(self) -> Literal["nothing_to_recover", "old_only_changes", "unverified"]:
        if any(n for o, n in self.totals.items() if o != "new_only"):
            return "old_only_changes"
        return "unverified" if self.unverified else "nothing_to_recover"

    @property
    def complete(self) -> bool:
        return (self.diff is None or self.diff.complete) and not self.trouble

    def counts(self) -> dict[str, int]:
        """Every differing row by origin, listed or not."""
        return dict(self.totals)


class ReplayFile:
    """The replay script, written statement by statement as rows are attributed."""

    def __init__(self, out: IO[str], old: str, new: str, now: _dt.datetime | None = None):
        self.out = _Guarded(out)
        at = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
        self.skipped: dict[str, int] = {"conflict": 0, "unknown": 0}
        self.statements = 0
        for line in (
            _comment(f"replverify failback replay script, {at}"),
            _comment(f"old primary: {old}; new primary: {new}"),
            _comment(
                "run on the NEW primary; every statement is guarded: a row that changed "
                "since it was observed is left alone"
            ),
            "BEGIN;",
        ):
            out.write(line + "\n")
        for name in (
            "TimeZone",
            "DateStyle",
            "IntervalStyle",
            "extra_float_digits",
            "bytea_output",
        ):
            out.write(set_local(name, PINNED_SETTINGS[name]) + "\n")
        out.write("SET CONSTRAINTS ALL DEFERRED;\n")

    def add(self, row: FailbackRow, stmt: str | None) -> None:
        if row.origin in self.skipped:
            self.skipped[row.origin] += 1
            self.out.write(
                _comment(f"NOT replayed ({row.origin}): {row.table} {row.key}: {row.reason}") + "\n"
            )
        elif stmt is not None:
            self.statements += 1
            self.out.write(_comment(f"{row.table} {row.key}: {row.change} - {row.reason}") + "\n")
            self.out.write(stmt + ";\n")

    def statement(self, stmt: str) -> None:
        self.statements += 1
        self.out.write(_comment("the keyless rows above: insert the copies NEW lacks") + "\n")
        self.out.write(stmt + ";\n")

    def close(self) -> None:
        self.out.write(
            _comment(
                f"{self.statements} statements; not replayed: {self.skipped['conflict']} "
                f"conflicting and {self.skipped['unknown']} unknown rows"
            )
            + "\n"
        )
        self.out.write("COMMIT;\n")
        try:
            self.out.raw.flush()
        except OSError as e:
            self.out.error = self.out.error or e

    @property
    def error(self) -> OSError | None:
        """Why the script could not be written (None: it was)."""
        return self.out.error


class _Guarded:
    """A text file whose first write error is kept (``error``) and ends the writing, so
    that the attribution and its report go on (the caller says the script failed)."""

    def __init__(self, out: IO[str]) -> None:
        self.raw = out
        self.error: OSError | None = None

    def write(self, text: str) -> None:
        if self.error is None:
            try:
                self.raw.write(text)
            except OSError as e:
                self.error = e


@dataclass
class _Context:
    """What attribution needs to know about the two servers."""

    report: FailbackReport
    next_old: int
    next_new: int
    dated: bool  # commit timestamps on both sides
    new_ep: Endpoint | None = None
    statuses: dict[int, str | None] = field(default_factory=dict)

    def old_post(self, xmin: int) -> tuple[bool | None, str]:
        """Whether OLD's row version was written after the divergence, and why not known."""
        h = self.report.horizon
        if h is None:
            return None, "the xid horizon of the promotion is unknown"
        x = widen(xmin, self.next_old)
        if x < FIRST_NORMAL_XID:
            return False, ""
        if x >= h.hi:
            return True, ""
        if x >= h.lo:
            return None, f"its xmin {x} on OLD lies in the uncertain horizon [{h.lo}, {h.hi})"
        status = self.statuses.get(x, "committed")
        return status not in ("committed", None), ""

    def new_post(self, xmin: int) -> tuple[bool | None, str]:
        h = self.report.horizon
        if h is None:
            return None, "the xid horizon of the promotion is unknown"
        x = widen(xmin, self.next_new)
        if x < FIRST_NORMAL_XID or x < h.lo:
            return False, ""
        if x >= h.hi:
            return True, ""
        return None, f"its xmin {x} on NEW lies in the uncertain horizon [{h.lo}, {h.hi})"

    async def resolve(self, nc: asyncpg.Connection, xmins: Iterable[int]) -> None:
        """Ask NEW for the status of OLD's xmins below the horizon."""
        h = self.report.horizon
        if h is None:
            return
        wanted = {
            x
            for x in (widen(m, self.next_old) for m in xmins)
            if FIRST_NORMAL_XID <= x < h.lo and x not in self.statuses
        }
        if not wanted:
            return
        if len(self.statuses) > 200_000:
            self.statuses.clear()
        for rec in await nc.fetch(_STATUS_SQL, [str(x) for x in sorted(wanted)]):
            self.statuses[rec[0]] = rec[1]


Emit = Callable[[FailbackRow, "str | None"], None]


async def failback(
    old: str,
    new: str,
    *,
    options: api.DiffOptions | None = None,
    replay: ReplayFile | None = None,
) -> FailbackReport:
    """Compare the old primary ``old`` with the promoted ``new`` one and attribute every
    differing row; see the module docstring. ``replay`` receives the replay script's
    statements as they are made. Trouble raises ReplverifyError."""
    started = time.perf_counter()
    options = options or api.DiffOptions()
    listed = options.max_diffs
    old_ep, new_ep = Endpoint.parse(old), Endpoint.parse(new)
    oc = await connect(old_ep)
    nc: asyncpg.Connection | None = None
    try:
        nc = await connect(new_ep)
        old_info, new_info = await catalog.server_info(oc), await catalog.server_info(nc)
        if not options.allow_same_server:
            catalog.refuse_same_database(
                old_info, new_info, old_ep, new_ep, "OLD and NEW", option="--allow-same-server"
            )
            options = dataclasses.replace(options, allow_same_server=True)
        await _refuse_swapped(oc, nc, old_info, new_info)
        report = await _times(nc, str(old_ep), str(new_ep))
        ctx = await _context(report, oc, nc)
        ctx.new_ep = new_ep
        # every differing row is attributed; ``listed`` only limits what is kept
        diff = await api.diff(old, new, dataclasses.replace(options, max_diffs=None))
        report.diff = diff
        plans = await _keyless_plans(oc, nc, diff)
        for t in diff.tables:
            shown = 0

            def emit(row: FailbackRow | None, stmt: str | None) -> None:
                nonlocal shown
                if row is None:  # a statement restoring several rows listed before it
                    if replay is not None and stmt is not None:
                        replay.statement(stmt)
                    return
                report.totals[row.origin] += 1
                if listed is None or shown < listed:
                    report.rows.append(row)
                    shown += 1
                if replay is not None:
                    replay.add(row, stmt)

            if t.error is not None or t.consistent:
                continue
            rows: AsyncIterator[tuple[FailbackRow | None, str | None]]
            if t.key_mode == "none":
                if t.table not in plans:
                    continue
                rows = _keyless(t, plans[t.table], oc, nc, ctx)
            elif t.differences:
                rows = _keyed(t, oc, nc, ctx)
            else:
                continue
            try:
                async for row, stmt in rows:
                    emit(row, stmt)
            except asyncpg.PostgresError as e:  # this table's trouble alone
                why = old_ep.scrub(new_ep.scrub(str(e)))
                report.trouble.append((t.table, f"its differing rows cannot be read: {why}"))
            if listed is not None and t.differences_total > listed:
                report.notes.append(
                    f"{t.table}: {t.differences_total} differing rows, all attributed and "
                    f"counted; the first {listed} are listed (raise --max-diffs)"
                )
    except DB_ERRORS as e:
        raise trouble(e, old_ep, new_ep) from e
    finally:
        await asyncio.gather(
            *(c.close() for c in (oc, nc) if c is not None), return_exceptions=True
        )
    if replay is not None:
        report.replayed = replay.statements
    report.elapsed_s = time.perf_counter() - started
    return report


async def _context(
    report: FailbackReport, oc: asyncpg.Connection, nc: asyncpg.Connection
) -> _Context:
    o, n = await oc.fetchrow(_NEXT_XID_SQL), await nc.fetchrow(_NEXT_XID_SQL)
    assert o is not None and n is not None
    ctx = _Context(report, int(o["next"]), int(n["next"]), bool(o["ts"] and n["ts"]))
    if report.timeline is not None and report.timeline > 1:
        report.horizon = await _horizon(nc, report.timeline, ctx.next_new, report.notes)
    if report.horizon is not None:
        report.method = "xid" + ("+commit timestamps" if ctx.dated else "")
    elif ctx.dated and report.divergence_at is not None:
        report.method = "commit timestamps"
    else:
        report.notes.append(
            "cannot tell which side wrote a row: the xid horizon of NEW's promotion could "
            "not be read and commit timestamps are off or unusable; rows are 'unknown'"
        )
    return ctx


#: segments of NEW's own WAL after the switch read at most for the upper bound (the
#: first writes can follow many full-page images: hint bits are WAL-logged after the
#: promotion's checkpoint when wal_log_hints or checksums are on)
_MAX_SEGMENTS = 4


async def _horizon(
    nc: asyncpg.Connection, tli: int, next_new: int, notes: list[str]
) -> Horizon | None:
    """Read H from NEW's WAL around the switch to its timeline ``tli``: the segment up to
    the switch and 1 MiB after it first; more of NEW's own WAL while the bounds differ."""
    try:
        history = parse_history(await nc.fetchval(_READ_TEXT_SQL, f"pg_wal/{tli:08X}.history"))
        if history is None:
            notes.append(f"pg_wal/{tli:08X}.history on NEW names no switch point")
            return None
        switch = history[1]
        wal = await nc.fetchrow(_WAL_SQL)
        assert wal is not None
        seg, block = int(wal["seg"]), int(wal["block"])
        name = segment_name(tli, switch, seg)
        upto = min(seg, (switch % seg) + (1 << 20))
        data = await nc.fetchval(_READ_SQL, f"pg_wal/{name}", 0, upto - upto % block)
    except asyncpg.PostgresError as e:
        notes.append(
            "the xid horizon of the promotion cannot be read from NEW's WAL around its "
            f"switch point (needs superuser or pg_read_server_files, and the segment still "
            f"in pg_wal): {e}"
        )
        return None
    start = switch - switch % seg
    scan = scan_segment(data, start, switch, block, next_new)
    lo = scan.lo if scan.lo is not None else 0
    his = [next_new] + ([scan.hi] if scan.hi is not None else [])
    if min(his) > lo and upto < seg:  # the rest of the switch segment
        data = await _read_wal(nc, f"pg_wal/{name}", seg)
        more = scan_segment(data, start, switch, block, next_new) if data else None
        if more is not None and more.hi is not None:
            his.append(more.hi)
    for n in range(1, _MAX_SEGMENTS):
        if min(his) <= lo:
            break
        data = await _read_wal(nc, f"pg_wal/{segment_name(tli, start + n * seg, seg)}", seg)
        if not data:
            break
        more = scan_segment(data, start + n * seg, 0, block, next_new)
        if more.hi is not None:
            his.append(more.hi)
    del data
    hi = min(his)
    if lo > hi:
        notes.append(f"NEW's WAL gives contradictory xid horizon bounds ({lo} > {hi})")
        return None
    at = f"{switch >> 32:X}/{switch & 0xFFFFFFFF:X}"
    source = f"WAL segment {name} on NEW around the switch point {at}"
    if lo != hi:
        notes.append(
            f"the xid horizon of the promotion is only known to lie in [{lo}, {hi}]: rows "
            "whose xmin falls in between are 'unknown'"
        )
    return Horizon(lo, hi, source)


async def _read_wal(nc: asyncpg.Connection, path: str, seg: int) -> bytes | None:
    """A whole WAL segment of NEW, or None when it is not there (not written yet)."""
    try:
        data: bytes = await nc.fetchval(_READ_SQL, path, 0, seg)
    except asyncpg.UndefinedFileError:
        return None
    return data


_TIMELINE_SQL = """\
SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS tli"""
_READ_HISTORY_SQL = "SELECT pg_read_file($1)"


def history_ancestors(text: str) -> set[int]:
    """The parent timelines a ``pg_wal/<tli>.history`` file lists (its first column)."""
    out = set()
    for line in text.splitlines():
        first = line.split("\t", 1)[0].strip()
        if first.isdigit():
            out.add(int(first))
    return out


async def _refuse_swapped(
    oc: asyncpg.Connection,
    nc: asyncpg.Connection,
    old_info: catalog.ServerInfo,
    new_info: catalog.ServerInfo,
) -> None:
    """Raise :class:`UsageError` when OLD is the promoted server and NEW the old primary:
    of one cluster, the promoted server runs on the higher timeline, and the old
    primary's timeline is an ancestor of it."""
    if (
        old_info.system_identifier != new_info.system_identifier
        or old_info.in_recovery
        or new_info.in_recovery
    ):
        return
    old_tli, new_tli = int(await oc.fetchval(_TIMELINE_SQL)), int(await nc.fetchval(_TIMELINE_SQL))
    if old_tli <= new_tli:
        return
    ancestry = ""
    try:
        history = await oc.fetchval(_READ_HISTORY_SQL, f"pg_wal/{old_tli:08X}.history")
    except asyncpg.PostgresError:
        history = None  # not readable without superuser or pg_read_server_files
    if history is not None and new_tli in history_ancestors(history):
        ancestry = f", and OLD's timeline history lists timeline {new_tli} as its ancestor"
    raise UsageError(
        f"OLD and NEW look swapped: OLD is on timeline {old_tli} and NEW on timeline "
        f"{new_tli}{ancestry}; the promoted (new) primary is the one on the higher timeline",
        hint="give the old primary first: replverify failback OLD NEW",
    )


async def _times(nc: asyncpg.Connection, old: str, new: str) -> FailbackReport:
    row = await nc.fetchrow(_NEW_TIMES_SQL)
    assert row is not None
    if row["in_recovery"]:
        raise UsageError(
            "NEW is still in recovery (a standby): failback compares the old primary with "
            "the promoted one"
        )
    tli, divergence = int(row["tli"]), row["divergence"]
    promoted, source = None, ""
    if tli > 1:
        try:
            promoted = await nc.fetchval(_HISTORY_SQL, f"pg_wal/{tli:08X}.history")
            source = f"modification time of pg_wal/{tli:08X}.history on NEW"
        except asyncpg.PostgresError:
            promoted = None
    report = FailbackReport(old, new, divergence, promoted, source, tli)
    if divergence is not None and promoted is None:
        report.promoted_at = divergence
        report.promotion_source = "divergence time (history file not readable)"
    return report


# --------------------------------------------------------------------------- keyed rows


def _lookup_sql(
    ref: TableRef, key: Sequence[str], columns: Sequence[str], n: int, dated: bool
) -> str:
    """Key columns, xmin, [commit time,] every column as text of the ``n`` keys given as
    parameters ($1.. in key order, one key after the other)."""
    t = ident(ALIAS)
    cols: list[exp.Expr] = [
        exp.alias_(exp.column(ident(k), table=t), f"_rv_k{i}") for i, k in enumerate(key)
    ]
    xmin = exp.column("xmin", table=t)
    cols.append(exp.alias_(exp.cast(exp.cast(xmin, "text"), "bigint"), _XMIN_ALIAS))
    if dated:
        cols.append(exp.alias_(exp.func("pg_xact_commit_timestamp", xmin), _TS_ALIAS))
    cols += [exp.alias_(exp.cast(exp.column(ident(c), table=t), "text"), ident(c)) for c in columns]
    width = len(key)

    def param(i: int) -> exp.Expr:
        return exp.Parameter(this=exp.Literal.number(i))

    if width == 1:
        cond: exp.Expr = exp.In(
            this=exp.column(ident(key[0]), table=t), expressions=[param(i + 1) for i in range(n)]
        )
    else:
        cond = exp.In(
            this=exp.Tuple(expressions=[exp.column(ident(k), table=t) for k in key]),
            expressions=[
                exp.Tuple(expressions=[param(r * width + j + 1) for j in range(width)])
                for r in range(n)
            ],
        )
    return exp.select(*cols).from_(aliased_table(ref)).where(cond).sql(DIALECT)


_Found = dict[tuple[object, ...], tuple[int, _dt.datetime | None, dict[str, str | None]]]


async def _lookup(
    conn: asyncpg.Connection, t: TableResult, keys: Sequence[tuple[object, ...]], dated: bool
) -> _Found:
    sql = _lookup_sql(t.table, t.key, t.columns, len(keys), dated)
    found: _Found = {}
    for rec in await conn.fetch(sql, *(v for k in keys for v in k)):
        key = tuple(hashable(rec[f"_rv_k{i}"]) for i in range(len(t.key)))
        image = {c: rec[c] for c in t.columns}
        found[key] = (rec[_XMIN_ALIAS], rec[_TS_ALIAS] if dated else None, image)
    return found


async def _keyed(
    t: TableResult, oc: asyncpg.Connection, nc: asyncpg.Connection, ctx: _Context
) -> AsyncIterator[tuple[FailbackRow | None, str | None]]:
    diffs = t.differences
    for start in range(0, len(diffs), BATCH):
        batch = diffs[start : start + BATCH]
        keys = [tuple(d.key) for d in batch]
        old_rows = await _lookup(oc, t, keys, ctx.dated)
        new_rows = await _lookup(nc, t, keys, ctx.dated)
        await ctx.resolve(nc, (x for x, _, _ in old_rows.values()))
        for d, k in zip(batch, keys, strict=True):
            o, n = old_rows.get(k), new_rows.get(k)
            row = _attribute(ctx, t.table, dict(zip(t.key, k, strict=True)), d, o, n)
            yield row, replay_statement(row)


def _attribute(
    ctx: _Context,
    table: TableRef,
    raw_key: dict[str, object],
    d: Missing | Extra | Changed,
    o: tuple[int, _dt.datetime | None, dict[str, str | None]] | None,
    n: tuple[int, _dt.datetime | None, dict[str, str | None]] | None,
) -> FailbackRow:
    key = {c: jsonable(v) for c, v in raw_key.items()}
    # by what the two reads found (a row may have changed since the diff read it)
    kind = "changed" if o and n else "missing" if o else "extra"
    old_post, old_why = ctx.old_post(o[0]) if o is not None else (None, "")
    new_post, new_why = ctx.new_post(n[0]) if n is not None else (None, "")
    if o is None and n is None:
        origin, change, reason = "unknown", "update", "gone from both sides since the diff"
    elif ctx.report.horizon is None and ctx.dated:
        origin, change, reason = _by_times(ctx.report, kind, o, n)
    else:
        origin, change, reason = decide(kind, old_post, new_post, old_why or new_why)
        if ctx.dated and ctx.report.divergence_at is not None:
            ctx.report.agreement["compared"] += 1
            by_ts = _by_times(ctx.report, kind, o, n)
            if by_ts[0] != origin:
                ctx.report.agreement["disagreed"] += 1
                reason = (
                    f"the xid method says {origin} ({reason}) but commit timestamps say "
                    f"{by_ts[0]} ({by_ts[2]})"
                )
                origin = "unknown"
    cols = d.columns if isinstance(d, Changed) else ()
    return FailbackRow(
        table,
        key,
        origin,  # type: ignore[arg-type]
        change,  # type: ignore[arg-type]
        cols,
        o[1] if o else None,
        n[1] if n else None,
        o[2] if o else None,
        n[2] if n else None,
        reason,
        widen(o[0], ctx.next_old) if o else None,
        widen(n[0], ctx.next_new) if n else None,
    )


def decide(
    kind: str, old_post: bool | None, new_post: bool | None, why: str = ""
) -> tuple[Origin, Change, str]:
    """Who changed a differing keyed row, from whether each side's row version was
    written after the divergence (None: cannot tell, ``why``)."""
    if kind == "missing":  # on OLD only
        if old_post:
            return "old_only", "insert", "written on OLD after the divergence; NEW lacks it"
        if old_post is False:
            return "new_only", "delete", "existed at the divergence; deleted on NEW after it"
        return "unknown", "insert", why or "who wrote OLD's row cannot be told"
    if kind == "extra":  # on NEW only
        if new_post:
            return "new_only", "insert", "written on NEW after its promotion"
        if new_post is False:
            return "old_only", "delete", "NEW replicated it from OLD; OLD deleted it after"
        return "unknown", "delete", why or "who wrote NEW's row cannot be told"
    if old_post is None or new_post is None:
        return "unknown", "update", why or "who changed it cannot be told"
    if old_post and new_post:
        return "conflict", "update", "changed on both sides after the divergence"
    if old_post:
        return "old_only", "update", "changed on OLD after the divergence"
    if new_post:
        return "new_only", "update", "changed on NEW after its promotion"
    return "unknown", "update", "neither side's row version is newer than the divergence"


def _by_times(
    report: FailbackReport,
    kind: str,
    o: tuple[int, _dt.datetime | None, dict[str, str | None]] | None,
    n: tuple[int, _dt.datetime | None, dict[str, str | None]] | None,
) -> tuple[Origin, Change, str]:
    """The same decision from commit timestamps (``track_commit_timestamp = on``)."""

    def after(ts: _dt.datetime | None, bound: _dt.datetime | None) -> bool | None:
        return None if ts is None or bound is None else ts > bound

    # NEW was read-only between the divergence and its promotion, so the later of the
    # two bounds it (the history file's time has whole seconds only)
    bounds = [b for b in (report.divergence_at, report.promoted_at) if b is not None]
    old_after = after(o[1], report.divergence_at) if o else None
    new_after = after(n[1], max(bounds) if bounds else None) if n else None
    return decide(kind, old_after, new_after, "a commit time is unknown")


# --------------------------------------------------------------------------- keyless


async def _keyless_plans(
    oc: asyncpg.Connection, nc: asyncpg.Connection, diff: DiffReport
) -> dict[TableRef, TableSQL]:
    wanted = [t.table for t in diff.tables if t.key_mode == "none" and not t.consistent]
    if not wanted:
        return {}
    servers = await catalog.server_info(oc), await catalog.server_info(nc)
    src, tgt = await catalog.load_tables(oc), await catalog.load_tables(nc)
    out = {}
    for ref in wanted:
        if ref in src and ref in tgt:
            plan = plan_table(
                src[ref], tgt[ref], source_server=servers[0], target_server=servers[1]
            )
            out[ref] = TableSQL(plan)
    return out


def _groups_sql(sql: TableSQL) -> str:
    """Per distinct row image: hash, copies, their xmins, the image as text; by hash."""
    t = ident(ALIAS)
    h = exp.alias_(sql.row_hash(), "_rv_h", quoted=True)
    xmins = exp.func("array_agg", exp.cast(exp.cast(exp.column("xmin", table=t), "text"), "bigint"))
    cols = [
        exp.alias_(
            exp.func("min", exp.cast(exp.column(ident(c.name), table=t), "text")), ident(c.name)
        )
        for c in sql.plan.columns
    ]
    q = exp.select(
        h, exp.alias_(exp.Count(this=exp.Star()), "_rv_c"), exp.alias_(xmins, "_rv_x"), *cols
    )
    q = q.from_(aliased_table(sql.plan.ref)).group_by(exp.column("_rv_h", quoted=True))
    return q.order_by(exp.column("_rv_h", quoted=True)).sql(DIALECT)


_Group = tuple[int, int, list[int], dict[str, str | None]]


async def _groups(conn: asyncpg.Connection, sql: TableSQL, text: str) -> AsyncIterator[_Group]:
    names = [c.name for c in sql.plan.columns]
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(text)
        while batch := await cursor.fetch(2000):
            for r in batch:
                yield r["_rv_h"], r["_rv_c"], list(r["_rv_x"]), {c: r[c] for c in names}


async def _keyless(
    t: TableResult, sql: TableSQL, oc: asyncpg.Connection, nc: asyncpg.Connection, ctx: _Context
) -> AsyncIterator[tuple[FailbackRow | None, str | None]]:
    """Merge both sides' row images in hash order; attribute each image whose number of
    copies differs. Memory holds a batch of differing images, not the table."""
    text = _groups_sql(sql)
    # the two cursors need their own connections: attribution asks NEW in between
    o_it, n_it = _groups(oc, sql, text), _groups(nc, sql, text)
    pending: list[tuple[_Group | None, _Group | None]] = []
    assert ctx.new_ep is not None
    sc = await connect(ctx.new_ep)
    try:

        async def flush() -> AsyncIterator[tuple[FailbackRow | None, str | None]]:
            await ctx.resolve(sc, (x for og, _ in pending if og for x in og[2]))
            inserts: list[tuple[dict[str, str | None], int]] = []
            for og, ng in pending:
                for item in _attribute_image(ctx, sql, og, ng, inserts):
                    yield item
            pending.clear()
            if inserts:
                yield None, keyless_inserts(sql.plan.ref, sql.plan.columns, inserts)

        o, n = await anext(o_it, None), await anext(n_it, None)
        while o is not None or n is not None:
            if n is None or (o is not None and o[0] < n[0]):
                pending.append((o, None))
                o = await anext(o_it, None)
            elif o is None or n[0] < o[0]:
                pending.append((None, n))
                n = await anext(n_it, None)
            else:
                if o[1] != n[1]:
                    pending.append((o, n))
                o, n = await anext(o_it, None), await anext(n_it, None)
            if len(pending) >= BATCH:
                async for item in flush():
                    yield item
        async for item in flush():
            yield item
    finally:
        await sc.close()


def _attribute_image(
    ctx: _Context,
    sql: TableSQL,
    og: _Group | None,
    ng: _Group | None,
    inserts: list[tuple[dict[str, str | None], int]],
) -> list[tuple[FailbackRow, str | None]]:
    old_x = og[2] if og else []
    new_x = ng[2] if ng else []
    a, b = len(old_x), len(new_x)
    image = (og or ng)[3]  # type: ignore[index]
    olds = [ctx.old_post(x) for x in old_x]
    news = [ctx.new_post(x) for x in new_x]
    k = sum(1 for p, _ in olds if p)
    m = sum(1 for p, _ in news if p)
    p_, q_ = a - k, b - m
    unsure = [why for p, why in olds + news if p is None]
    change: Change
    if unsure:
        origin, change, count = "unknown", "insert" if a > b else "delete", abs(a - b)
        reason = unsure[0]
    elif m == 0 and k > 0 and p_ == q_:
        origin, change, count = "old_only", "insert", k
        reason = "inserted on OLD after the divergence"
    elif k == 0 and m > 0 and p_ == q_:
        origin, change, count = "new_only", "insert", m
        reason = "inserted on NEW after its promotion"
    elif k == 0 and m == 0 and p_ < q_:
        origin, change, count = "old_only", "delete", q_ - p_
        reason = "NEW replicated it from OLD; OLD deleted it after the divergence"
    elif k == 0 and m == 0 and p_ > q_:
        origin, change, count = "new_only", "delete", p_ - q_
        reason = "existed at the divergence; deleted on NEW after its promotion"
    else:
        origin, change, count = "unknown", "insert" if a > b else "delete", abs(a - b)
        reason = "copies of this row image were changed on both sides"
    key = dict(image)
    row = FailbackRow(
        sql.plan.ref,
        key,
        origin,  # type: ignore[arg-type]
        change,
        (),
        None,
        None,
        image if og else None,
        image if ng else None,
        f"{reason} (keyless: {a} copies on OLD, {b} on NEW)",
        keyless=True,
    )
    stmt = None
    if origin == "old_only" and change == "delete":
        stmt = keyless_delete(sql.plan.ref, image, a)
    elif origin == "old_only":
        inserts.append((image, a))
    return [(row, stmt if i == 0 else None) for i in range(count)]


def _plain(ref: TableRef) -> exp.Table:
    return exp.Table(this=ident(ref.name), db=ident(ref.schema))


def _row_text(columns: Sequence[exp.Expr]) -> exp.Expr:
    return exp.cast(exp.Anonymous(this="ROW", expressions=list(columns)), "text")


def keyless_inserts(
    ref: TableRef, columns: Sequence[Column], images: Sequence[tuple[dict[str, str | None], int]]
) -> str:
    """One INSERT that makes NEW hold, of each keyless row image, as many copies as
    OLD holds (``images``: image as text, OLD's copies). Guarded by the copies NEW holds
    (one scan, hash-joined on the row's text), so running it again inserts nothing."""
    width = len(columns)
    template = _SHAPES.get(("k", ref, tuple(columns)))
    if template is None:
        template = _keyless_template(ref, columns)
        _SHAPES[("k", ref, tuple(columns))] = template
    one = "(" + ", ".join(f"'\x01{i}\x01'" for i in range(width + 1)) + ")"
    rows = ", ".join(
        "(" + ", ".join([*(_quote(img[c.name]) for c in columns), _quote(str(n))]) + ")"
        for img, n in images
    )
    return template.replace(one, rows, 1)


def _quote(v: str | None) -> str:
    """A text literal as sqlglot writes one (standard_conforming_strings)."""
    return "NULL" if v is None else "'" + v.replace("'", "''") + "'"


def _keyless_template(ref: TableRef, columns: Sequence[Column]) -> str:
    """keyless_inserts' statement with one row of marker values (see :func:`_shaped`):
    the rows' values are text (or NULL) literals, cast to the columns' types in it."""
    names = [f"_rv_c{i}" for i in range(len(columns))]
    w, have = ident("_rv_w"), ident("_rv_have")
    marks = [exp.Literal.string(f"\x01{i}\x01") for i in range(len(columns) + 1)]
    values = exp.Values(
        expressions=[exp.Tuple(expressions=marks)],
        alias=exp.TableAlias(this=w, columns=[ident(x) for x in (*names, "_rv_n")]),
    )
    typed = [
        exp.cast(
            exp.column(ident(n), table=w.copy()),
            exp.DataType.build(c.type.name, dialect=DIALECT, udt=True),
        )
        for n, c in zip(names, columns, strict=True)
    ]
    row_t = _row_text([exp.column(ident(c.name), table=ident(ALIAS)) for c in columns])
    held = (
        exp.select(exp.alias_(row_t, "_rv_r"), exp.alias_(exp.Count(this=exp.Star()), "_rv_k"))
        .from_(aliased_table(ref))
        .group_by(exp.Literal.number(1))
        .subquery(have.copy())
    )
    on = exp.EQ(
        this=exp.column("_rv_r", table=have.copy()), expression=_row_text([t.copy() for t in typed])
    )
    missing = exp.Sub(
        this=exp.cast(exp.column(ident("_rv_n"), table=w.copy()), "int"),
        expression=exp.func(
            "COALESCE", exp.column("_rv_k", table=have.copy()), exp.Literal.number(0)
        ),
    )
    copies = exp.Lateral(
        this=exp.func("generate_series", exp.Literal.number(1), missing),
        alias=exp.TableAlias(this=ident("_rv_g")),
    )
    select = (
        exp.select(*typed)
        .from_(values)
        .join(held, on=on, join_type="left")
        .join(copies, on=exp.true())
    )
    text = exp.Insert(
        this=exp.Schema(this=_plain(ref), expressions=[ident(c.name) for c in columns]),
        expression=select,
    ).sql(DIALECT)
    one = "(" + ", ".join(f"'\x01{i}\x01'" for i in range(len(columns) + 1)) + ")"
    if one not in text:
        raise AssertionError(f"keyless insert template without its marker row: {text}")
    return text


def keyless_delete(ref: TableRef, image: dict[str, str | None], copies: int) -> str:
    """DELETE the copies of a keyless row ``image`` NEW holds beyond ``copies`` (as many
    as OLD holds): guarded by the count, so running it again deletes nothing."""
    match = guard((), image)
    held = exp.Subquery(
        this=exp.select(exp.Count(this=exp.Star())).from_(_plain(ref)).where(match.copy())
    )
    surplus = exp.Sub(this=held, expression=exp.Literal.number(copies))
    ctid = exp.column("ctid")
    doomed = (
        exp.select(ctid.copy())
        .from_(_plain(ref))
        .where(match.copy())
        .limit(exp.func("GREATEST", exp.Literal.number(0), surplus))
    )
    return exp.Delete(
        this=_plain(ref), where=exp.Where(this=exp.In(this=ctid, query=exp.Subquery(this=doomed)))
    ).sql(DIALECT)


# --------------------------------------------------------------------------- replay


_MARK = re.compile("'\x01(\\d+)\x01'")
#: statement texts by shape (table, kind, columns, which values are NULL), built once by
#: sqlglot with marker literals that each row's values then replace, quoted as sqlglot
#: quotes a string literal: building every statement anew cost ~2 ms a row
_SHAPES: dict[tuple[object, ...], str] = {}


def _shaped(
    shape: tuple[object, ...], build: Callable[[list[str | None]], str], values: list[str | None]
) -> str:
    text = _SHAPES.get(shape)
    if text is None:
        marks = [None if v is None else f"\x01{i}\x01" for i, v in enumerate(values)]
        text = build(marks)
        if len(_SHAPES) > 4096:
            _SHAPES.clear()
        _SHAPES[shape] = text

    def fill(m: re.Match[str]) -> str:
        v = values[int(m.group(1))]
        assert v is not None
        return "'" + v.replace("'", "''") + "'"

    return _MARK.sub(fill, text)


def replay_statement(row: FailbackRow) -> str | None:
    """The guarded statement that brings ``row``'s old-only change to NEW (or None)."""
    if row.origin != "old_only":
        return None
    key = list(row.key)
    old, new = row.old_image, row.new_image
    if row.change == "insert" and old is not None:
        cols = list(old)
        vals = [old[c] for c in cols]
        return _shaped(
            ("i", row.table, tuple(cols), tuple(v is None for v in vals)),
            lambda m: insert_statement(row.table, dict(zip(cols, m, strict=True))),
            vals,
        )
    if row.change == "update" and old is not None and new is not None:
        changed = row.columns or tuple(c for c in old if c not in row.key)
        seen, sets = list(new), list(changed)
        vals = [new[c] for c in seen] + [old[c] for c in sets]
        return _shaped(
            ("u", row.table, tuple(key), tuple(seen), tuple(sets), tuple(v is None for v in vals)),
            lambda m: update_statement(
                row.table,
                key,
                dict(zip(seen, m[: len(seen)], strict=True)),
                dict(zip(sets, m[len(seen) :], strict=True)),
            ),
            vals,
        )
    if row.change == "delete" and new is not None:
        seen = list(new)
        vals = [new[c] for c in seen]
        return _shaped(
            ("d", row.table, tuple(key), tuple(seen), tuple(v is None for v in vals)),
            lambda m: delete_statement(row.table, key, dict(zip(seen, m, strict=True))),
            vals,
        )
    return None


def _comment(text: str) -> str:
    return "-- " + text.replace("\n", " ")


def replay_script(report: FailbackReport, *, now: _dt.datetime | None = None) -> str:
    """The replay script of the rows ``report`` lists (all of them unless ``max_diffs``
    cut the listing: for every row, pass a :class:`ReplayFile` to :func:`failback`).
    Keyless rows are replayed by the CLI's streamed script only."""
    buf = io.StringIO()
    out = ReplayFile(buf, report.old, report.new, now)
    for r in report.rows:
        out.add(r, None if r.keyless else replay_statement(r))
    out.close()
    return buf.getvalue()
