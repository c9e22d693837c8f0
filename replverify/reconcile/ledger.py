"""The state of reconcile's passes over the journal (pure: no I/O): the :class:`Ledger`
of pass 1 (which write of each row is judged), the :class:`ChainCollector` of pass 3
(the settled writes of the rows judged lost or conflicting) and the :class:`Folder` that
folds a row's writes into what restores it.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from replverify.reconcile.findings import Restore
from replverify.reconcile.judge import CHAIN_STATES, VERDICTS, ChainState, WriteId, _wid

if TYPE_CHECKING:
    from replverify.journal.format import JSONValue, Marker, RowId, RowWrite, TxId, WriteRecord

__all__ = [
    "SETTLED_WIDTH",
    "ChainCollector",
    "Folder",
    "Ledger",
    "fold",
]


#: a packed ledger entry: ((settled at << LINE_BITS | line) << OFFSET_BITS | byte offset)
#: << 1 | earlier; journals of up to 2**40 lines and 2**48 bytes
LINE_BITS = 40
OFFSET_BITS = 48
LINE_MASK = (1 << LINE_BITS) - 1
OFFSET_MASK = (1 << OFFSET_BITS) - 1
#: ints per settled write in :attr:`Ledger.settled`
SETTLED_WIDTH = 4
#: settled writes kept in memory before they go to ``spill``
SPILL_WRITES = 1 << 10


class Ledger:
    """Pass 1 (pure): settles transactions and keeps, per written row, the line and byte
    offset of the write that will be judged (its last settled write), so that pass 2
    reads only those lines, and the line at which it was settled.

    Every settled write is also logged, in settlement order, as four ints (the row's
    ``hash``, line, row index, byte offset) in :attr:`settled`; with ``spill`` given,
    every :data:`SPILL_WRITES` of them are handed to it and dropped here. Pass 3 finds
    the chains of the few rows it needs from this log instead of reading the journal.

    Memory: one entry per distinct row written in the window, plus the intents of the
    transactions still open (and the unspilled tail of the log).
    """

    def __init__(self, spill: Callable[[array[int]], None] | None = None) -> None:
        #: row -> its judged write, packed (see LINE_BITS)
        self.rows: dict[RowId, int] = {}
        #: txid -> its open intents and their lines' byte offsets
        self.open: dict[TxId, list[tuple[RowWrite, int]]] = {}
        self.counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)
        #: statement intents (writes journaled by effect) of open transactions, by seq
        self.statements: dict[TxId, dict[int, WriteRecord]] = {}
        #: (txid, seq) of open statement intents whose rows are journaled
        self.with_rows: set[tuple[TxId, int]] = set()
        #: the settled writes not yet spilled: hash(rid), line, index, offset each
        self.settled: array[int] = array("q")
        self._spill = spill

    def statement(self, rec: WriteRecord) -> None:
        self.statements.setdefault(rec.txid, {})[rec.seq] = rec

    def statement_of(self, w: RowWrite) -> WriteRecord | None:
        """The statement intent whose effect ``w`` is (open transactions only)."""
        of = w.record.of
        return None if of is None else self.statements.get(w.record.txid, {}).get(of)

    def write(self, w: RowWrite, offset: int = 0) -> None:
        """``w``, from the line at byte ``offset`` of the journal."""
        record = w.record
        if record.state == "committed":
            self._settle(w, offset, record.line)
            return
        if record.of is not None:
            self.with_rows.add((record.txid, record.of))
        tx = self.open.get(record.txid)
        if tx is None:
            self.open[record.txid] = [(w, offset)]
        else:
            tx.append((w, offset))

    def marker(self, m: Marker) -> None:
        if self.statements:
            for seq in self.statements.pop(m.txid, {}):
                self.with_rows.discard((m.txid, seq))
        writes = self.open.pop(m.txid, None)
        if not writes:
            return
        if m.state == "aborted":
            self.counts["aborted"] += len(writes)
            return
        for w, offset in writes:
            self._settle(w, offset, m.line)

    def _settle(self, w: RowWrite, offset: int, at: int) -> None:
        """Settle ``w`` (from byte ``offset``) while reading line ``at``."""
        rid = w.rid
        line = w.record.line
        rows = self.rows
        prev = rows.get(rid)
        rows[rid] = (((at << LINE_BITS | line) << OFFSET_BITS | offset) << 1) | (prev is not None)
        if prev is not None:
            self.counts["superseded"] += 1
        settled = self.settled
        settled.extend((hash(rid), line, w.index, offset))
        if self._spill is not None and len(settled) >= SPILL_WRITES * SETTLED_WIDTH:
            self._spill(settled)
            del settled[:]

    def judged(self) -> Iterator[tuple[int, int]]:
        """``(line, byte offset)`` of each line holding a judged write, ascending."""
        mask = (1 << (LINE_BITS + OFFSET_BITS)) - 1
        for v in sorted({v >> 1 & mask for v in self.rows.values()}):
            yield v >> OFFSET_BITS, v & OFFSET_MASK

    def is_judged(self, w: RowWrite) -> bool:
        v = self.rows.get(w.rid)
        return v is not None and (v >> 1 + OFFSET_BITS) & LINE_MASK == w.record.line

    def has_chain(self, w: RowWrite) -> bool:
        return bool(self.rows.get(w.rid, 0) & 1)

    def covered(self, w: RowWrite) -> bool:
        """An intent still open (``w``) was followed by a settled write to its row."""
        v = self.rows.get(w.rid)
        return v is not None and v >> 1 + OFFSET_BITS + LINE_BITS > w.record.line

    def in_doubt(self) -> list[RowWrite]:
        """Intents never settled (after the last record), in journal order."""
        return sorted((w for ws in self.open.values() for w, _ in ws), key=_wid)

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


class ChainCollector:
    """Pass 3 (pure): the settled writes of some rows, in settlement order.

    Per row it keeps the first write, the last :data:`CHAIN_STATES` writes (the states
    :func:`judge_chain` compares the target with) and a :class:`Folder` of all of them,
    so memory stays bounded however often a row was written. ``ends`` (optional): each
    row's judged write; once all are collected :attr:`complete` is true and the rest of
    the log of settled writes is not needed.
    """

    def __init__(self, rows: Iterable[RowId], ends: Mapping[RowId, WriteId] | None = None):
        self.first: dict[RowId, ChainState] = {}
        self.recent: dict[RowId, deque[ChainState]] = {r: deque(maxlen=CHAIN_STATES) for r in rows}
        self.folders: dict[RowId, Folder] = {r: Folder() for r in self.recent}
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

    def settled(self, w: RowWrite) -> None:
        """A settled write of one of the rows, in settlement order (from
        :attr:`Ledger.settled`)."""
        if w.rid not in self.recent:
            return
        state = ChainState.of(w)
        self.first.setdefault(w.rid, state)
        self.recent[w.rid].append(state)
        self.folders[w.rid].add(w)
        if self.ends is not None and self.ends.get(w.rid) == _wid(w):
            self._reached += 1


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
