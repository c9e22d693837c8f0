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

The pure core (:class:`Ledger`, :class:`ChainCollector`, :func:`judge`,
:func:`judge_in_doubt`, :func:`judge_chain`, :func:`fold`) does no I/O. The edge is a
:class:`Target`: :class:`PostgresTarget` answers a batch of rows of one table with one
query (``unnest`` of keys and images joined to the table), inside one repeatable-read,
read-only snapshot; :class:`replverify.testing.memory.MemoryTarget` answers from Python
data (tests, benchmarks).

The journal is streamed in up to three passes: (1) validate every line and settle
transactions, keeping per written row only its judged write's line, plus the intents of
open transactions; (2) re-read only the judged lines, look them up in batches, judge;
(3) only for lost or conflicting rows written more than once in the window: collect
their chains, re-judge them against every state the row passed through, and fold each
chain into the image that restores it. ``since`` skips older writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol

import asyncpg
import sqlglot
from sqlglot import exp

from replverify.db import catalog
from replverify.db.catalog import TableInfo
from replverify.db.connect import DB_ERRORS, PINNED_SETTINGS, Endpoint, connect, trouble
from replverify.diff.sql import DIALECT, ident
from replverify.errors import JournalError, SchemaError, UsageError
from replverify.journal.format import (
    JSONValue,
    Marker,
    RowId,
    RowWrite,
    TornTail,
    TxId,
    WriteRecord,
)
from replverify.journal.reader import JournalReader
from replverify.journal.resolve import RowResolver
from replverify.types import ColumnType, TableRef
from replverify.values.canonical import Encoder, encoder_for
from replverify.values.pgtext import jsonable

__all__ = [
    "BATCH_ROWS",
    "SCHEMA",
    "ChainCollector",
    "ChainState",
    "Detail",
    "Finding",
    "Ledger",
    "Observation",
    "PostgresTarget",
    "Probe",
    "ReconcileReport",
    "Restore",
    "Target",
    "Verdict",
    "fold",
    "judge",
    "judge_chain",
    "judge_in_doubt",
    "parse_since",
    "reconcile",
    "reconcile_with",
]

SCHEMA = "replverify.reconcile/1"
Verdict = Literal["durable", "lost", "superseded", "conflict", "in_doubt", "aborted"]
VERDICTS: tuple[Verdict, ...] = ("durable", "lost", "superseded", "conflict", "in_doubt", "aborted")
#: rows per lookup query
BATCH_ROWS = 500
#: writes of a lost or conflicting row compared with the target (its first and last ones)
CHAIN_STATES = 32
Image = Mapping[str, JSONValue]
WriteId = tuple[int, int]  # (line, row index within the record)


def _wid(w: RowWrite) -> WriteId:
    return (w.record.line, w.index)


# --------------------------------------------------------------------------- the edge's answers


@dataclass(frozen=True, slots=True)
class Probe:
    """Ask the target about ``write``'s row and read ``images`` as the column types."""

    write: RowWrite
    images: tuple[Image, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    """The answer to a :class:`Probe`, as canonical encodings (type-aware equality)."""

    found: bool
    row: Mapping[str, bytes]  # the target's values of the images' columns
    images: tuple[Mapping[str, bytes], ...]  # each image read as the column types

    def holds(self, image: Mapping[str, bytes]) -> bool:
        """The row exists and equals ``image`` on its columns."""
        return self.found and all(self.row.get(c) == v for c, v in image.items())

    def differs(self, image: Mapping[str, bytes]) -> tuple[str, ...]:
        return tuple(c for c, v in image.items() if self.row.get(c) != v) if self.found else ()


@dataclass(frozen=True, slots=True)
class Detail:
    """A whole row as one side holds it (empty mappings when absent)."""

    found: bool
    text: Mapping[str, str | None]  # PostgreSQL text of every column (pinned settings)
    shown: Mapping[str, object]  # report form (pgtext.jsonable)
    encoded: Mapping[str, bytes]
    #: a journal image read as the column types, as text (for replay literals)
    image_text: Mapping[str, str | None] = field(default_factory=dict)


class BadValue(Exception):
    """A journal value the column's type cannot read (``index``: the probe in the batch)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


class Target(Protocol):
    """One side: answers batches of questions about rows of one table."""

    name: str
    tables: Mapping[TableRef, TableInfo]

    async def observe(self, info: TableInfo, probes: Sequence[Probe]) -> list[Observation]: ...

    async def details(
        self, info: TableInfo, keys: Sequence[RowWrite], images: Sequence[Image | None]
    ) -> list[Detail]: ...


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True, slots=True)
class Restore:
    """What restoring a lost row takes, from the journal (its settled writes, folded).

    ``insert``: the row's image to INSERT when it is absent (None: the journal never
    inserted it); ``update``: the columns to SET when it is present; ``delete``: the row
    should be gone. Values are journal JSON; :attr:`text` is PostgreSQL's text of
    :meth:`image` as the target reads it (filled by the lookup), for replay literals.
    """

    insert: Mapping[str, JSONValue] | None
    update: Mapping[str, JSONValue]
    delete: bool
    #: (txid, seq, op) of the last folded writes (at most CHAIN_STATES), oldest first
    writes: tuple[tuple[TxId, int, str], ...]
    first_line: int = 0  # journal line of the oldest folded write
    count: int = 1  # writes folded
    text: Mapping[str, str | None] = field(default_factory=dict)

    def image(self) -> dict[str, JSONValue]:
        return {**(self.insert or {}), **self.update}


@dataclass(frozen=True, slots=True)
class Finding:
    """The verdict on one row write, with its explanation as data."""

    verdict: Verdict
    write: RowWrite
    reason: str
    differs: tuple[str, ...] = ()
    #: in_doubt: whether the target shows the write (None: cannot tell)
    applied: bool | None = None
    #: in_doubt with a source: whether the old primary shows it
    applied_on_source: bool | None = None
    #: the row's settled writes in the window, oldest first (when more than this one;
    #: at most the last CHAIN_STATES of them)
    chain: tuple[tuple[TxId, int, str], ...] = ()
    #: how many settled writes the row had in the window (when more than this one)
    chain_total: int = 0
    #: the target's whole row (filled for reported findings)
    target_row: Detail | None = None
    #: the old primary's whole row (None: no source, or the table is missing there)
    source_row: Detail | None = None
    #: lost: what restores the row, from the journal
    restore: Restore | None = None

    @property
    def line(self) -> int:
        return self.write.record.line

    def columns(self) -> tuple[str, ...]:
        """The journaled columns (key, post-image, before-image)."""
        w = self.write
        cols = [c for c, _ in w.key]
        for c in (*w.values, *(w.before or {})):
            if c not in cols:
                cols.append(c)
        return tuple(cols)


@dataclass
class ReconcileReport:
    """The outcome of ``replverify reconcile`` (``replverify.reconcile/1``)."""

    journal: str
    target: str
    source: str | None
    since: _dt.datetime | None
    lines: int
    counts: dict[str, int]
    lost: list[Finding]
    conflicts: list[Finding]
    in_doubt: list[Finding]
    torn: TornTail | None = None
    #: write records older than ``since`` (not judged)
    outside_window: int = 0
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: the session settings the row texts were printed with (replay scripts pin them)
    settings: Mapping[str, str] = field(default_factory=dict)
    #: seconds per pass (pass1, pass2, in_doubt, pass3, details)
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        """Row writes considered (in the window), whatever their verdict."""
        return sum(self.counts.values())

    @property
    def status(self) -> Literal["no_loss", "loss"]:
        return "loss" if self.lost or self.conflicts else "no_loss"


# --------------------------------------------------------------------------- pass 1: the ledger


class Ledger:
    """Pass 1 (pure): settles transactions and keeps, per written row, the line of the
    write that will be judged (its last settled write).

    Memory: one entry per distinct row written in the window, plus the intents of the
    transactions still open.
    """

    def __init__(self) -> None:
        #: row -> judged line * 2 + (1 if an earlier settled write to the row exists)
        self.rows: dict[RowId, int] = {}
        self.open: dict[TxId, list[RowWrite]] = {}
        self.open_rows: dict[RowId, list[RowWrite]] = {}
        #: open intents that a later settled write to their row covers
        self.covered: set[WriteId] = set()
        self.counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)
        #: statement intents (writes journaled by effect) of open transactions, by seq
        self.statements: dict[TxId, dict[int, WriteRecord]] = {}
        #: (txid, seq) of open statement intents whose rows are journaled
        self.with_rows: set[tuple[TxId, int]] = set()

    def statement(self, rec: WriteRecord) -> None:
        self.statements.setdefault(rec.txid, {})[rec.seq] = rec

    def statement_of(self, w: RowWrite) -> WriteRecord | None:
        """The statement intent whose effect ``w`` is (open transactions only)."""
        of = w.record.of
        return None if of is None else self.statements.get(w.record.txid, {}).get(of)

    def write(self, w: RowWrite) -> None:
        if w.record.of is not None and w.record.state == "intent":
            self.with_rows.add((w.record.txid, w.record.of))
        if w.record.state == "committed":
            self._settle(w)
            return
        self.open.setdefault(w.record.txid, []).append(w)
        self.open_rows.setdefault(w.rid, []).append(w)

    def marker(self, m: Marker) -> None:
        for seq in self.statements.pop(m.txid, {}):
            self.with_rows.discard((m.txid, seq))
        writes = self.open.pop(m.txid, None)
        if not writes:
            return
        for w in writes:
            same_row = self.open_rows[w.rid]
            same_row.remove(w)
            if not same_row:
                del self.open_rows[w.rid]
        if m.state == "aborted":
            self.counts["aborted"] += len(writes)
            return
        for w in writes:
            self._settle(w)

    def _settle(self, w: RowWrite) -> None:
        prev = self.rows.get(w.rid)
        self.rows[w.rid] = w.record.line << 1 | (prev is not None)
        if prev is not None:
            self.counts["superseded"] += 1
        for i in self.open_rows.get(w.rid, ()):
            self.covered.add(_wid(i))

    def judged_lines(self) -> array[int]:
        """Lines holding a judged write, ascending (8 bytes each)."""
        return array("q", sorted({v >> 1 for v in self.rows.values()}))

    def is_judged(self, w: RowWrite) -> bool:
        v = self.rows.get(w.rid)
        return v is not None and v >> 1 == w.record.line

    def has_chain(self, w: RowWrite) -> bool:
        return bool(self.rows.get(w.rid, 0) & 1)

    def in_doubt(self) -> list[RowWrite]:
        """Intents never settled (after the last record), in journal order."""
        return sorted((w for ws in self.open.values() for w in ws), key=_wid)

    def statements_in_doubt(self) -> list[WriteRecord]:
        """Statement intents never settled whose rows were never journaled (the endpoint
        failed before the statement answered): only the statement is known."""
        return sorted(
            (
                rec
                for txid, recs in self.statements.items()
                for seq, rec in recs.items()
                if (txid, seq) not in self.with_rows
            ),
            key=lambda r: r.line,
        )


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


class ChainCollector:
    """Pass 3 (pure): the settled writes of some rows, in settlement order.

    Per row it keeps the first write, the last :data:`CHAIN_STATES` writes (the states
    :func:`judge_chain` compares the target with) and a :class:`Folder` of all of them,
    so memory stays bounded however often a row was written. ``ends`` (optional): each
    row's judged write; once all are collected :attr:`complete` is true and the rest of
    the journal is not needed.
    """

    def __init__(self, rows: Iterable[RowId], ends: Mapping[RowId, WriteId] | None = None):
        self.first: dict[RowId, ChainState] = {}
        self.recent: dict[RowId, deque[ChainState]] = {r: deque(maxlen=CHAIN_STATES) for r in rows}
        self.folders: dict[RowId, Folder] = {r: Folder() for r in self.recent}
        self.open: dict[TxId, list[RowWrite]] = {}
        self.ends = ends
        self._reached = 0

    @property
    def complete(self) -> bool:
        return self.ends is not None and self._reached == len(self.ends)

    def chain(self, rid: RowId) -> list[ChainState]:
        """The first write and the last :data:`CHAIN_STATES` ones, oldest first."""
        recent = list(self.recent[rid])
        first = self.first.get(rid)
        return recent if first is None or (recent and recent[0] is first) else [first, *recent]

    def write(self, w: RowWrite) -> None:
        if w.rid not in self.recent:
            return
        if w.record.state == "committed":
            self._append(w)
        else:
            self.open.setdefault(w.record.txid, []).append(w)

    def marker(self, m: Marker) -> None:
        self.settle(m.txid, m.state)

    def settle(self, txid: TxId, state: str) -> None:
        writes = self.open.pop(txid, None)
        if writes and state == "committed":
            for w in writes:
                self._append(w)

    def _append(self, w: RowWrite) -> None:
        state = ChainState.of(w)
        self.first.setdefault(w.rid, state)
        self.recent[w.rid].append(state)
        self.folders[w.rid].add(w)
        if self.ends is not None and self.ends.get(w.rid) == _wid(w):
            self._reached += 1


# --------------------------------------------------------------------------- judging (pure)


def probe_for(w: RowWrite) -> Probe:
    """The images of a judged or in-doubt write: its post-image, then its before-image."""
    images: tuple[Image, ...] = (w.post_image(),)
    if w.before is not None:
        images += (w.before,)
    return Probe(w, images)


def _who(w: RowWrite) -> str:
    return f"{w.op} {w.record.txid} #{w.record.seq}"


def judge(w: RowWrite, obs: Observation) -> tuple[Verdict, str, tuple[str, ...]]:
    """The verdict on the judged write ``w`` of a row: ``(verdict, reason, differing)``;
    ``obs`` answers :func:`probe_for` ``(w)``."""
    post = obs.images[0]
    before = obs.images[1] if w.before is not None else None
    if w.op == "delete":
        if not obs.found:
            return "durable", "the row is gone", ()
        if before is None:
            return "lost", "the row is still there", ()
        if obs.holds(before):
            return "lost", "the row is still there, as it was before the delete", ()
        return (
            "conflict",
            "the row is still there, and no longer as it was before the delete",
            obs.differs(before),
        )
    if obs.holds(post):
        return "durable", "the row holds the written values", ()
    differs = obs.differs(post)
    if w.op == "insert":
        if not obs.found:
            return "lost", "the row is absent", ()
        return "conflict", "a row with this key holds other values", differs
    if not obs.found:
        if w.op == "upsert":
            return "lost", "the row is absent", ()
        return "conflict", "the row is absent (and the journal has no insert of it)", ()
    if before is None:
        return "lost", "the row does not hold the written values", differs
    if obs.holds(before):
        return "lost", "the row still holds the before-image", differs
    return "conflict", "the row holds neither the written values nor the before-image", differs


def judge_in_doubt(w: RowWrite, obs: Observation, *, covered: bool) -> tuple[bool | None, str]:
    """Whether the unsettled write ``w`` shows on the target: ``(applied, reason)``."""
    shows = not obs.found if w.op == "delete" else obs.holds(obs.images[0])
    if shows:
        return True, "never settled; the target shows it applied"
    if covered:
        return None, "never settled; cannot tell: a later write decides what the row holds"
    return False, "never settled; the target does not show it"


@dataclass(frozen=True, slots=True)
class ChainState:
    """What re-judging needs of one earlier write of a row (lighter than a RowWrite)."""

    op: str
    txid: TxId
    seq: int
    post: Image
    before: Image | None

    @classmethod
    def of(cls, w: RowWrite) -> ChainState:
        return cls(w.op, w.record.txid, w.record.seq, w.post_image(), w.before)

    def who(self) -> str:
        return f"{self.op} {self.txid} #{self.seq}"


def chain_probe(write: RowWrite, chain: Sequence[ChainState]) -> Probe:
    """For every write of ``write``'s chain its post-image and before-image (``{}`` if
    unknown)."""
    images: list[Image] = []
    for w in chain:
        images.append(w.post)
        images.append(w.before if w.before is not None else {})
    return Probe(write, tuple(images))


def judge_chain(
    chain: Sequence[ChainState], obs: Observation, verdict: Verdict, reason: str
) -> tuple[Verdict, str]:
    """Re-judge the lost or conflicting last write of ``chain`` against every earlier
    state of the row: if the target holds one, the writes since never reached it (lost).
    ``obs`` answers :func:`chain_probe`."""
    if verdict not in ("lost", "conflict"):
        return verdict, reason
    first = chain[0]
    if first.op in ("insert", "upsert") and not obs.found:
        return "lost", f"the row is absent: nothing since {first.who()} created it arrived"
    for k, w in enumerate(chain):
        post, before = obs.images[2 * k], obs.images[2 * k + 1]
        if w.before is not None and obs.holds(before):
            return (
                "lost",
                f"the row holds the state before {w.who()}; that write and later ones are missing",
            )
        if k == len(chain) - 1:
            break
        holds = not obs.found if w.op == "delete" else obs.holds(post)
        if holds:
            return "lost", f"the row holds the state after {w.who()}; later writes are missing"
    return verdict, reason


class Folder:
    """Folds the settled writes of one row (oldest first), one at a time and in constant
    memory, into what restores its last state: an image to INSERT if the row is absent,
    columns to SET if it is present, or a delete."""

    def __init__(self) -> None:
        self.insert: dict[str, JSONValue] | None = None
        self.update: dict[str, JSONValue] = {}
        self.delete = False
        self.count = 0
        self.first_line = 0
        self.history: deque[tuple[TxId, int, str]] = deque(maxlen=CHAIN_STATES)

    def add(self, w: RowWrite) -> None:
        if not self.count:
            self.first_line = w.record.line
        self.count += 1
        self.history.append((w.record.txid, w.record.seq, w.op))
        keys = {c for c, _ in w.key}
        nonkey = {c: v for c, v in w.values.items() if c not in keys}
        if w.op == "delete":
            self.insert, self.update, self.delete = None, {}, True
        elif w.op == "insert":
            self.insert, self.update, self.delete = dict(w.values), nonkey, False
        elif w.op == "upsert":
            changed = {c: w.values[c] for c in w.on_conflict}
            if self.delete:
                self.insert, self.update, self.delete = dict(w.values), nonkey, False
            elif self.insert is not None:
                self.insert.update(changed)
                self.update.update(changed)
            else:
                self.insert = dict(w.values)
                self.update.update(changed)
        elif not self.delete:  # an update (after a delete it changed nothing)
            if self.insert is not None:
                self.insert.update(nonkey)
            self.update.update(nonkey)

    def result(self) -> Restore:
        return Restore(
            self.insert, self.update, self.delete, tuple(self.history), self.first_line, self.count
        )


def fold(chain: Iterable[RowWrite]) -> Restore:
    """:class:`Folder` over ``chain``."""
    folder = Folder()
    for w in chain:
        folder.add(w)
    return folder.result()


# --------------------------------------------------------------------------- values


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _is_json(ctype: ColumnType) -> bool:
    return ctype.kind == "base" and ctype.base in ("json", "jsonb")


def _undecimal(v: JSONValue) -> JSONValue:
    """Decimals as their exact text (the column's type reads the text)."""
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, list):
        return [_undecimal(x) for x in v]
    if isinstance(v, dict):
        return {k: _undecimal(x) for k, x in v.items()}
    return v


def json_text(v: JSONValue) -> str:
    """JSON text with Decimals as exact numbers."""
    if isinstance(v, Decimal):
        return str(v) if v.is_finite() else json.dumps(str(v))
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{json_text(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(json_text(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def column_value(v: JSONValue, ctype: ColumnType) -> JSONValue:
    """A journal value as ``jsonb_populate_record`` should see it for a ``ctype`` column:
    json columns take a string as JSON text (parsed here: ValueError if it is not);
    other columns read numbers through their exact text."""
    if _is_json(ctype):
        if isinstance(v, str):
            try:
                parsed: JSONValue = json.loads(
                    v, parse_float=Decimal, parse_constant=_reject_constant
                )
            except ValueError as e:
                raise ValueError(f"not JSON text: {e}") from None
            return parsed
        return v
    return _undecimal(v)


def _encoder(ctype: ColumnType) -> Encoder:
    if ctype.kind == "base" and ctype.base == "json":
        return encoder_for(ColumnType("jsonb", "jsonb"))  # json compares by value here
    return encoder_for(ctype)


def _ctype(info: TableInfo, name: str) -> ColumnType:
    c = info.column(name)
    return c.type if c is not None else ColumnType("text", "text")


# --------------------------------------------------------------------------- PostgreSQL

#: The lookup skeletons; the table, its row type and columns go in as sqlglot nodes.
_LOOKUP = (
    "SELECT j.n, t.ctid IS NOT NULL AS found"
    " FROM UNNEST(CAST($1 AS INT[]), CAST($2 AS JSONB[])) AS j(n, k)"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.k) AS kk"
    " LEFT JOIN _rv_table AS t ON TRUE"
)
_LOOKUP_IMAGES = (
    "SELECT j.n, t.ctid IS NOT NULL AS found"
    " FROM UNNEST(CAST($1 AS INT[]), CAST($2 AS JSONB[]), CAST($3 AS JSONB[])) AS j(n, k, img)"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.k) AS kk"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.img) AS p"
    " LEFT JOIN _rv_table AS t ON TRUE"
)


def _qcol(alias: str, name: str) -> exp.Column:
    return exp.Column(this=ident(name), table=exp.to_identifier(alias))


def lookup_sql(
    info: TableInfo,
    key: Sequence[str],
    target_cols: Sequence[str],
    image_cols: Sequence[str],
    *,
    as_text: bool,
) -> str:
    """One query for a batch of rows of ``info``.

    Returns ``n, found, t.col...`` (and with ``as_text`` ``t.col::text...``), then the
    images' columns read as the column types (``p.col``, ``::text`` with ``as_text``).
    Parameters: ``$1`` row numbers, ``$2`` keys, ``$3`` images (if ``image_cols``), as
    jsonb objects; ``jsonb_populate_record`` reads them with the columns' input functions.
    """
    with_image = bool(image_cols)
    tree = sqlglot.parse_one(_LOOKUP_IMAGES if with_image else _LOOKUP, read=DIALECT)
    tname = exp.Table(this=ident(info.ref.name), db=ident(info.ref.schema))
    rowtype = exp.DataType.build(tname.sql(DIALECT), dialect=DIALECT, udt=True)

    def fill(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.DataType) and node.sql(DIALECT) == "_rv_type":
            return rowtype.copy()
        if isinstance(node, exp.Table) and node.name == "_rv_table":
            return exp.Table(
                this=ident(info.ref.name),
                db=ident(info.ref.schema),
                alias=exp.TableAlias(this=exp.to_identifier("t")),
            )
        return node

    tree = tree.transform(fill)
    assert isinstance(tree, exp.Select)
    on = exp.and_(*(exp.EQ(this=_qcol("t", k), expression=_qcol("kk", k)) for k in key))
    for join in tree.args.get("joins") or []:
        if isinstance(join.this, exp.Table) and join.this.alias == "t":
            join.set("on", on)
    projections: list[exp.Expr] = [_qcol("t", c) for c in target_cols]
    if as_text:
        projections += [exp.cast(_qcol("t", c), "text") for c in target_cols]
    images: list[exp.Expr] = [_qcol("p", c) for c in image_cols]
    projections += [exp.cast(e, "text") for e in images] if as_text else images
    return tree.select(*projections).sql(DIALECT)


class _Retry(Exception):
    """A batch hit a value a column type cannot read: ask row by row to find it."""


class PostgresTarget:
    """A :class:`Target` on one asyncpg connection (keep it inside one read-only
    repeatable-read transaction: the whole report then reads one snapshot)."""

    def __init__(
        self, conn: asyncpg.Connection, name: str, tables: Mapping[TableRef, TableInfo]
    ) -> None:
        self.conn = conn
        self.name = name
        self.tables = tables
        self._encoders: dict[tuple[TableRef, str], Encoder] = {}

    def _enc(self, info: TableInfo, col: str) -> Encoder:
        e = self._encoders.get((info.ref, col))
        if e is None:
            e = self._encoders[(info.ref, col)] = _encoder(_ctype(info, col))
        return e

    def _payload(self, info: TableInfo, image: Image) -> str:
        parts = []
        for col, v in image.items():
            try:
                value = column_value(v, _ctype(info, col))
            except ValueError as e:
                raise BadValue(-1, f"{col}: {e}") from None
            parts.append(f"{json.dumps(col)}:{json_text(value)}")
        return "{" + ",".join(parts) + "}"

    async def _fetch(self, sql: str, args: Sequence[object], count: int) -> list[asyncpg.Record]:
        try:
            # a savepoint: a value the column type refuses must not end the snapshot
            async with self.conn.transaction():
                rows: list[asyncpg.Record] = await self.conn.fetch(sql, *args)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as e:
            if count == 1:
                raise BadValue(0, str(e)) from None
            raise _Retry() from e
        return rows

    async def observe(self, info: TableInfo, probes: Sequence[Probe]) -> list[Observation]:
        key = [c for c, _ in probes[0].write.key]
        cols: list[str] = []
        for pr in probes:
            for img in pr.images:
                cols.extend(c for c in img if c not in cols)
        flat: list[int] = []  # query row -> probe
        keys: list[str] = []
        imgs: list[str] = []
        for n, pr in enumerate(probes):
            try:
                k = self._payload(info, dict(pr.write.key))
                for img in pr.images or ({},):
                    flat.append(n)
                    keys.append(k)
                    imgs.append(self._payload(info, img))
            except BadValue as e:
                raise BadValue(n, e.message) from None
        sql = lookup_sql(info, key, cols, cols or key, as_text=False)
        try:
            rows = await self._fetch(sql, [list(range(len(flat))), keys, imgs], len(probes))
        except _Retry:
            out: list[Observation] = []
            for i, pr in enumerate(probes):
                try:
                    out.extend(await self.observe(info, [pr]))
                except BadValue as e:
                    raise BadValue(i, e.message) from None
            return out
        got: list[list[asyncpg.Record]] = [[] for _ in flat]
        for r in rows:
            got[r[0]].append(r)
        for n, g in enumerate(got):
            if len(g) != 1:
                w = probes[flat[n]].write
                raise SchemaError(
                    f"{info.ref}: key {dict(w.key_display)} matches {len(g)} rows on"
                    f" {self.name}: the journal's key is not unique there"
                )
        width = len(cols)
        at = {c: i for i, c in enumerate(cols)}
        encs = [self._enc(info, c) for c in cols]
        out = []
        n = 0
        for pr in probes:
            first = got[n][0]
            found = bool(first[1])
            row = {c: encs[i](first[2 + i]) for i, c in enumerate(cols)} if found else {}
            images = []
            for img in pr.images:
                r = got[n][0]
                images.append({c: encs[at[c]](r[2 + width + at[c]]) for c in img})
                n += 1
            if not pr.images:
                n += 1
            out.append(Observation(found, row, tuple(images)))
        return out

    async def details(
        self, info: TableInfo, keys: Sequence[RowWrite], images: Sequence[Image | None]
    ) -> list[Detail]:
        key = [c for c, _ in keys[0].key]
        cols = [c.name for c in info.columns]
        image_cols = cols if any(images) else []
        try:
            kp = []
            for i, w in enumerate(keys):
                try:
                    kp.append(self._payload(info, dict(w.key)))
                except BadValue as e:
                    raise BadValue(i, e.message) from None
            ip = []
            for i, img in enumerate(images):
                try:
                    ip.append(self._payload(info, img or {}))
                except BadValue as e:
                    raise BadValue(i, e.message) from None
            sql = lookup_sql(info, key, cols, image_cols, as_text=True)
            args: list[object] = [list(range(len(keys))), kp]
            if image_cols:
                args.append(ip)
            rows = await self._fetch(sql, args, len(keys))
        except _Retry:
            out: list[Detail] = []
            for i in range(len(keys)):
                try:
                    out.extend(await self.details(info, [keys[i]], [images[i]]))
                except BadValue as e:
                    raise BadValue(i, e.message) from None
            return out
        width = len(cols)
        by_n: dict[int, asyncpg.Record] = {}
        for r in rows:
            if r[0] in by_n:
                raise SchemaError(
                    f"{info.ref}: key {dict(keys[r[0]].key_display)} matches several rows on"
                    f" {self.name}: the journal's key is not unique there"
                )
            by_n[r[0]] = r
        out = []
        for n in range(len(keys)):
            r = by_n[n]
            img = images[n] or {}
            image_text = {c: r[2 + 2 * width + cols.index(c)] for c in img} if image_cols else {}
            if not r[1]:
                out.append(Detail(False, {}, {}, {}, image_text))
                continue
            text = {c: r[2 + width + i] for i, c in enumerate(cols)}
            shown = {c.name: jsonable(r[2 + i], c.type) for i, c in enumerate(info.columns)}
            encoded = {c: self._enc(info, c)(r[2 + i]) for i, c in enumerate(cols)}
            out.append(Detail(True, text, shown, encoded, image_text))
        return out


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
    ledger = Ledger()
    reader = JournalReader(path)
    outside = 0
    for rec in reader:
        if isinstance(rec, Marker):
            ledger.marker(rec)
        elif since is not None and rec.ts < since:
            outside += 1
        elif rec.stmt is not None:
            ledger.statement(rec)
        else:
            for w in resolver(rec):
                ledger.write(w)
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

    judged = ledger.judged_lines()
    batcher = _Batcher(target, batch_rows, on_judged, path)
    try:
        i = 0
        for line, raw in JournalReader(path).raw_lines():
            if i >= len(judged):
                break
            if line != judged[i]:
                continue
            i += 1
            rec = reader.parse(line, raw)
            assert isinstance(rec, WriteRecord)
            for w in resolver(rec):
                if not ledger.is_judged(w):
                    continue
                if w.rid in doubt_rows:
                    deferred[w.rid] = w
                else:
                    await batcher.add(probe_for(w))
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
                covered = _wid(w) in ledger.covered or any(o.line > w.line for o in ws)
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
    del ledger  # the per-row map is no longer needed
    if interest:
        ends = {f.write.rid: _wid(f.write) for f in findings if f.write.rid in interest}
        collector = ChainCollector(interest, ends)
        wanted = set(interest)
        table_names = {str(rid[1]).lower() for rid in interest}
        again = JournalReader(path)
        for line, raw in again.raw_lines():  # validated in pass 1: decode, look, skip
            if collector.complete:
                break
            obj = again.decode(raw)
            sql = obj.get("sql")
            if "op" not in obj and sql is None:
                collector.settle(obj["txid"], obj["state"])
            elif sql is not None and not any(n in sql.lower() for n in table_names):
                continue  # a statement that cannot name a table of interest: not parsed
            elif not wanted.isdisjoint(resolver.row_ids(obj)):
                rec = again.parse(line, raw)
                assert isinstance(rec, WriteRecord)
                if since is None or rec.ts >= since:
                    for w in resolver(rec):
                        collector.write(w)
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
