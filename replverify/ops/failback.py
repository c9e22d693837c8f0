"""``replverify failback``: what the old primary holds that the new primary lacks,
before the old one is rewound (``pg_rewind`` discards it).

The differing rows come from :func:`replverify.api.diff` (OLD as source, NEW as target).
Each is attributed by the xmin of its row version on each side against the xid horizon
H of NEW's promotion (:mod:`replverify.ops.xidhorizon`, read from NEW's WAL; needs superuser
or ``pg_read_server_files`` on NEW), which works on default settings, and by commit
timestamps when ``track_commit_timestamp`` is on on both sides. The rules are in
:mod:`replverify.ops.failback_attribution` (pure); this module reads what they judge from
the two servers; :mod:`replverify.ops.failback_replay` writes the replay script.

Where it cannot tell, in words: a row NEW deleted after its promotion that OLD changed
after the divergence looks like a row OLD inserted (a delete leaves no row to read); a
frozen row from an earlier xid epoch whose raw xmin happens to fall after H looks
written after the divergence (freezing keeps the raw xmin since PostgreSQL 9.4).

Every differing row is attributed and counted (``counts``); ``max_diffs`` limits only
the rows kept for listing. The replay script (:class:`ReplayFile`) is written as rows are
attributed, so memory stays flat in the rows' images; the diff still holds the keys.
It restores the ``old_only`` changes on NEW in one transaction, each statement guarded,
so it never overwrites newer data and running it twice is harmless. Conflicts and
unknown rows are never replayed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterable, Sequence

import asyncpg
from sqlglot import exp

from replverify import api
from replverify.db import catalog
from replverify.db.connect import DB_ERRORS, Endpoint, connect, trouble
from replverify.diff.align import plan_table
from replverify.diff.sources import hashable
from replverify.diff.sql import ALIAS, DIALECT, TableSQL, ident
from replverify.diff.sql import table as aliased_table
from replverify.errors import UsageError
from replverify.ops.failback_attribution import (
    Attribution,
    FailbackReport,
    FailbackRow,
    Found,
    Group,
    attribute,
    attribute_image,
)
from replverify.ops.failback_replay import (
    ReplayFile,
    keyless_inserts,
    keyless_replay,
    replay_script,
    replay_statement,
)
from replverify.ops.xidhorizon import Horizon, parse_history, scan_segment, segment_name
from replverify.types import DiffReport, TableRef, TableResult

# the records and the replay script are imported from here by the CLI and the reports
__all__ = [
    "FailbackReport",
    "FailbackRow",
    "ReplayFile",
    "failback",
    "replay_script",
]

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
        # every differing row is attributed; ``listed`` only limits what is kept
        diff = await api.diff(old_ep, new_ep, dataclasses.replace(options, max_diffs=None))
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
                rows = _keyless(t, plans[t.table], oc, nc, new_ep, ctx)
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
) -> Attribution:
    o, n = await oc.fetchrow(_NEXT_XID_SQL), await nc.fetchrow(_NEXT_XID_SQL)
    assert o is not None and n is not None
    ctx = Attribution(report, int(o["next"]), int(n["next"]), bool(o["ts"] and n["ts"]))
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


async def _resolve(ctx: Attribution, nc: asyncpg.Connection, xmins: Iterable[int]) -> None:
    """Ask NEW for the status of OLD's xmins below the horizon."""
    wanted = ctx.unresolved(xmins)
    if wanted:
        for rec in await nc.fetch(_STATUS_SQL, [str(x) for x in sorted(wanted)]):
            ctx.statuses[rec[0]] = rec[1]


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


_Found = dict[tuple[object, ...], Found]


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
    t: TableResult, oc: asyncpg.Connection, nc: asyncpg.Connection, ctx: Attribution
) -> AsyncIterator[tuple[FailbackRow | None, str | None]]:
    diffs = t.differences
    for start in range(0, len(diffs), BATCH):
        batch = diffs[start : start + BATCH]
        keys = [tuple(d.key) for d in batch]
        old_rows = await _lookup(oc, t, keys, ctx.dated)
        new_rows = await _lookup(nc, t, keys, ctx.dated)
        await _resolve(ctx, nc, (x for x, _, _ in old_rows.values()))
        for d, k in zip(batch, keys, strict=True):
            o, n = old_rows.get(k), new_rows.get(k)
            row = attribute(ctx, t.table, dict(zip(t.key, k, strict=True)), d, o, n)
            yield row, replay_statement(row)


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


async def _groups(conn: asyncpg.Connection, sql: TableSQL, text: str) -> AsyncIterator[Group]:
    names = [c.name for c in sql.plan.columns]
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(text)
        while batch := await cursor.fetch(2000):
            for r in batch:
                yield r["_rv_h"], r["_rv_c"], list(r["_rv_x"]), {c: r[c] for c in names}


async def _keyless(
    t: TableResult,
    sql: TableSQL,
    oc: asyncpg.Connection,
    nc: asyncpg.Connection,
    new_ep: Endpoint,
    ctx: Attribution,
) -> AsyncIterator[tuple[FailbackRow | None, str | None]]:
    """Merge both sides' row images in hash order; attribute each image whose number of
    copies differs. Memory holds a batch of differing images, not the table."""
    text, ref = _groups_sql(sql), sql.plan.ref
    # the two cursors need their own connections: attribution asks NEW in between
    o_it, n_it = _groups(oc, sql, text), _groups(nc, sql, text)
    pending: list[tuple[Group | None, Group | None]] = []
    sc = await connect(new_ep)
    try:

        async def flush() -> AsyncIterator[tuple[FailbackRow | None, str | None]]:
            await _resolve(ctx, sc, (x for og, _ in pending if og for x in og[2]))
            inserts: list[tuple[dict[str, str | None], int]] = []
            for og, ng in pending:
                row, count = attribute_image(ctx, ref, og, ng)
                stmt = keyless_replay(row, len(og[2]) if og else 0, inserts)
                for i in range(count):
                    yield row, stmt if i == 0 else None
            pending.clear()
            if inserts:
                yield None, keyless_inserts(ref, sql.plan.columns, inserts)

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
