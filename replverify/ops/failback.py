"""``replverify failback``: what the old primary holds that the new primary lacks,
before the old one is rewound (``pg_rewind`` discards it).

The differing rows come from :func:`replverify.api.diff` (OLD as source, NEW as target).
Each is then attributed with commit timestamps (``pg_xact_commit_timestamp(xmin)``,
needs ``track_commit_timestamp = on``) against two instants read on the new primary:

* **divergence**: ``pg_last_xact_replay_timestamp()`` - the commit time of the last
  transaction the new primary replayed from the old one before its promotion (the old
  primary's own clock, like the old rows' commit timestamps; it stays static after
  promotion until the new primary restarts);
* **promotion**: the modification time of the new timeline's history file
  (``pg_stat_file('pg_wal/<tli>.history')``, needs superuser or pg_read_server_files);
  else the divergence time is used (say so: then the clocks of both servers matter).

A row of the old primary committed after the divergence is an ``old_only`` change (an
insert or update the new primary never received; a row the new primary replayed but the
old one no longer has was deleted on the old one afterwards). A row of the new primary
committed after the promotion is a ``new_only`` write. Both: ``conflict``. Neither, or
a timestamp the server cannot give (frozen rows, timestamps off, a restarted new
primary): ``unknown`` - never guessed.

:func:`replay_script` restores the ``old_only`` changes on the new primary, one
transaction, each statement guarded (INSERT ... ON CONFLICT DO NOTHING; UPDATE/DELETE
... WHERE the row still equals what was observed on the new primary, compared as text
under the pinned settings the script sets), so it never overwrites newer data and
running it twice is harmless. Conflicts and unknown rows are listed, never replayed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
from sqlglot import exp

from replverify import api
from replverify.db import catalog
from replverify.db.connect import DB_ERRORS, PINNED_SETTINGS, Endpoint, connect, trouble
from replverify.diff.sql import DIALECT, ident, set_local
from replverify.errors import UsageError
from replverify.reconcile.replay import delete_statement, insert_statement, update_statement
from replverify.types import Changed, DiffReport, Extra, Key, Missing, TableRef, TableResult
from replverify.values.pgtext import jsonable
from replverify.values.wording import count

__all__ = ["FailbackReport", "FailbackRow", "failback", "replay_script"]

Origin = Literal["old_only", "new_only", "conflict", "unknown"]
Change = Literal["insert", "update", "delete"]

_NEW_TIMES_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_xact_replay_timestamp() AS divergence,
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS tli"""
_HISTORY_SQL = "SELECT (pg_stat_file($1)).modification"
_TS_ALIAS = "_rv_commit_ts"


@dataclass(frozen=True)
class FailbackRow:
    """One differing row. ``change`` is what happened on the old primary (for
    ``old_only``) or on the new one (``new_only``); images are PostgreSQL text under
    replverify's pinned settings (None: the row is absent on that side)."""

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


@dataclass
class FailbackReport:
    old: str
    new: str
    divergence_at: _dt.datetime | None
    promoted_at: _dt.datetime | None
    promotion_source: str
    timeline: int | None
    rows: list[FailbackRow] = field(default_factory=list)
    diff: DiffReport | None = None
    #: tables whose differing rows could not be read for attribution, and why
    trouble: list[tuple[TableRef, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

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
        return self.divergence_at is not None

    def of(self, origin: Origin) -> list[FailbackRow]:
        return [r for r in self.rows if r.origin == origin]

    @property
    def status(self) -> Literal["nothing_to_recover", "old_only_changes", "unverified"]:
        risky = any(r.origin != "new_only" for r in self.rows)
        unnamed = self.diff is not None and any(
            t.key_mode == "none" and not t.consistent and t.error is None for t in self.diff.tables
        )
        if risky or unnamed:
            return "old_only_changes"
        return "unverified" if self.unverified else "nothing_to_recover"

    @property
    def complete(self) -> bool:
        return (self.diff is None or self.diff.complete) and not self.trouble

    def counts(self) -> dict[str, int]:
        out = {"old_only": 0, "new_only": 0, "conflict": 0, "unknown": 0}
        for r in self.rows:
            out[r.origin] += 1
        return out


async def failback(old: str, new: str, *, options: api.DiffOptions | None = None) -> FailbackReport:
    """Compare the old primary ``old`` with the promoted ``new`` one and attribute every
    differing row; see the module docstring. Trouble raises ReplverifyError."""
    started = time.perf_counter()
    old_ep, new_ep = Endpoint.parse(old), Endpoint.parse(new)
    oc = await connect(old_ep)
    nc: asyncpg.Connection | None = None
    options = options or api.DiffOptions()
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
        diff = await api.diff(old_ep, new_ep, options)
        report.diff = diff
        for t in diff.tables:
            if t.key_mode == "none" and not t.consistent and t.error is None:
                report.notes.append(
                    f"{t.table}: no key, compared as a row multiset: its "
                    f"{count(t.differences_total, 'differing row')} cannot be attributed"
                )
            elif t.truncated:
                report.notes.append(
                    f"{t.table}: only the first {len(t.differences)} of "
                    f"{count(t.differences_total, 'differing row')} are attributed "
                    "(raise max_diffs)"
                )
            if t.key_mode != "none" and t.differences:
                try:
                    report.rows.extend(await _attribute(report, t, oc, nc))
                except asyncpg.PostgresError as e:  # this table's trouble alone
                    why = old_ep.scrub(new_ep.scrub(str(e)))
                    report.trouble.append((t.table, f"its differing rows cannot be read: {why}"))
    except DB_ERRORS as e:
        raise trouble(e, old_ep, new_ep) from e
    finally:
        await asyncio.gather(
            *(c.close() for c in (oc, nc) if c is not None), return_exceptions=True
        )
    report.elapsed_s = time.perf_counter() - started
    return report


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
    if divergence is None:
        report.notes.append(
            "cannot tell which side wrote a row: NEW reports no last replayed transaction "
            "(restarted since its promotion, or never a standby); rows are 'unknown'"
        )
    elif promoted is None:
        report.promoted_at = divergence
        report.promotion_source = "divergence time (history file not readable)"
        report.notes.append(
            "the promotion time is unknown (the timeline history file is not readable); "
            "rows written on NEW are told apart by the divergence time, which assumes "
            "the two servers' clocks agree"
        )
    return report


def _lookup_sql(
    ref: TableRef, key: Sequence[str], columns: Sequence[str], *, dated: bool = True
) -> str:
    ts = (
        exp.func("pg_xact_commit_timestamp", exp.column("xmin", table=ident("t")))
        if dated
        else exp.cast(exp.Null(), "timestamptz")
    )
    cols: list[exp.Expr] = [exp.alias_(ts, _TS_ALIAS)]
    cols += [
        exp.alias_(exp.cast(exp.column(ident(c), table=ident("t")), "text"), ident(c))
        for c in columns
    ]
    cond = exp.and_(
        *(
            exp.EQ(
                this=exp.column(ident(k), table=ident("t")),
                expression=exp.Parameter(this=exp.Literal.number(i)),
            )
            for i, k in enumerate(key, start=1)
        )
    )
    table = exp.Table(
        this=ident(ref.name), db=ident(ref.schema), alias=exp.TableAlias(this=ident("t"))
    )
    return exp.select(*cols).from_(table).where(cond).sql(DIALECT)


async def _image(
    conn: asyncpg.Connection, sqls: tuple[str, str], key: Key, side: str, report: FailbackReport
) -> tuple[dict[str, str | None] | None, _dt.datetime | None]:
    try:
        row = await conn.fetchrow(sqls[0], *key)
    except asyncpg.ObjectNotInPrerequisiteStateError:  # track_commit_timestamp is off
        note = f"track_commit_timestamp is off on {side}: its rows cannot be dated"
        if note not in report.notes:
            report.notes.append(note)
        row = await conn.fetchrow(sqls[1], *key)
    if row is None:
        return None, None
    image = {k: v for k, v in row.items() if k != _TS_ALIAS}
    return image, row[_TS_ALIAS]


async def _attribute(
    report: FailbackReport, t: TableResult, oc: asyncpg.Connection, nc: asyncpg.Connection
) -> list[FailbackRow]:
    sqls = (
        _lookup_sql(t.table, t.key, t.columns),
        _lookup_sql(t.table, t.key, t.columns, dated=False),
    )
    out = []
    for d in t.differences:
        old_img, old_ts = await _image(oc, sqls, d.key, "OLD", report)
        new_img, new_ts = await _image(nc, sqls, d.key, "NEW", report)
        key = {k: jsonable(v) for k, v in zip(t.key, d.key, strict=True)}
        cols = d.columns if isinstance(d, Changed) else ()
        out.append(_classify(report, t.table, key, d, cols, old_img, old_ts, new_img, new_ts))
    return out


def _after(ts: _dt.datetime | None, bound: _dt.datetime | None) -> bool | None:
    if ts is None or bound is None:
        return None
    return ts > bound


def _classify(
    report: FailbackReport,
    table: TableRef,
    key: dict[str, Any],
    d: Missing | Extra | Changed,
    columns: tuple[str, ...],
    old_img: dict[str, str | None] | None,
    old_ts: _dt.datetime | None,
    new_img: dict[str, str | None] | None,
    new_ts: _dt.datetime | None,
) -> FailbackRow:
    old_after = _after(old_ts, report.divergence_at)
    # NEW was read-only between the divergence and its promotion, so the later of the
    # two bounds it (the history file's time has whole seconds only)
    bounds = [b for b in (report.divergence_at, report.promoted_at) if b is not None]
    new_after = _after(new_ts, max(bounds) if bounds else None)
    origin: Origin
    change: Change
    if isinstance(d, Missing):  # on OLD only
        change = "insert"
        if old_after:
            origin, reason = "old_only", "committed on OLD after the divergence; NEW lacks it"
        elif old_after is False:
            origin, change = "new_only", "delete"
            reason = "existed at the divergence; deleted on NEW after its promotion"
        else:
            origin, reason = "unknown", "OLD's commit time of the row is unknown"
    elif isinstance(d, Extra):  # on NEW only
        change = "delete"
        if new_after:
            origin, change = "new_only", "insert"
            reason = "committed on NEW after its promotion"
        elif new_after is False:
            origin = "old_only"
            reason = "NEW replayed it from OLD; OLD deleted it after the divergence"
        else:
            origin, reason = "unknown", "NEW's commit time of the row is unknown"
    else:
        change = "update"
        if old_after and new_after:
            origin, reason = "conflict", "changed on both sides after the divergence"
        elif old_after:
            origin, reason = "old_only", "changed on OLD after the divergence"
        elif new_after:
            origin, reason = "new_only", "changed on NEW after its promotion"
        else:
            origin, reason = "unknown", "neither side's commit time tells who changed it"
    return FailbackRow(
        table, key, origin, change, columns, old_ts, new_ts, old_img, new_img, reason
    )


# --------------------------------------------------------------------------- replay


def replay_statement(row: FailbackRow) -> str | None:
    """The guarded statement that brings ``row``'s old-only change to NEW (or None)."""
    if row.origin != "old_only":
        return None
    key = list(row.key)
    if row.change == "insert" and row.old_image is not None:
        return insert_statement(row.table, row.old_image)
    if row.change == "update" and row.old_image is not None and row.new_image is not None:
        changed = row.columns or tuple(c for c in row.old_image if c not in row.key)
        values = {c: row.old_image[c] for c in changed}
        return update_statement(row.table, key, row.new_image, values)
    if row.change == "delete" and row.new_image is not None:
        return delete_statement(row.table, key, row.new_image)
    return None


def _comment(text: str) -> str:
    return "-- " + text.replace("\n", " ")


def replay_script(report: FailbackReport, *, now: _dt.datetime | None = None) -> str:
    """A one-transaction SQL script for NEW restoring OLD's old-only changes (guarded)."""
    at = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
    lines = [
        _comment(f"replverify failback replay script, {at}"),
        _comment(f"old primary: {report.old}; new primary: {report.new}"),
        _comment(
            "run on the NEW primary; every statement is guarded: a row that changed "
            "since it was observed is left alone"
        ),
    ]
    for r in report.rows:
        if r.origin in ("conflict", "unknown"):
            lines.append(_comment(f"NOT replayed ({r.origin}): {r.table} {r.key}: {r.reason}"))
    lines += ["BEGIN;"]
    for name in ("TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits", "bytea_output"):
        lines.append(set_local(name, PINNED_SETTINGS[name]))
    lines.append("SET CONSTRAINTS ALL DEFERRED;")
    for r in report.rows:
        stmt = replay_statement(r)
        if stmt is None:
            continue
        lines.append(_comment(f"{r.table} {r.key}: {r.change} - {r.reason}"))
        lines.append(stmt + ";")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"
