"""What reconcile reports: a :class:`Finding` per reported row write (with the rows
as each side holds them, :class:`Detail`, and what restores a lost one, :class:`Restore`),
gathered in a :class:`ReconcileReport` (``replverify.reconcile/1``). Data only.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from replverify.reconcile.judge import Verdict

if TYPE_CHECKING:
    from replverify.journal.format import JSONValue, RowWrite, TornTail, TxId

__all__ = [
    "SCHEMA",
    "Detail",
    "Finding",
    "ReconcileReport",
    "Restore",
]

SCHEMA = "replverify.reconcile/1"


@dataclass(frozen=True, slots=True)
class Detail:
    """A whole row as one side holds it (empty mappings when absent)."""

    found: bool
    text: Mapping[str, str | None]  # PostgreSQL text of every column (pinned settings)
    shown: Mapping[str, object]  # report form (pgtext.jsonable)
    encoded: Mapping[str, bytes]
    #: a journal image read as the column types, as text (for replay literals)
    image_text: Mapping[str, str | None] = field(default_factory=dict)


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
