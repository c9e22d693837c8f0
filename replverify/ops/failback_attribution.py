"""Failback's pure part: the records of a failback run and the rules that attribute a
differing row to the side that changed it. No I/O: :mod:`replverify.ops.failback` reads
the servers and feeds the row versions in.

Each row version is judged by its xmin against the xid horizon H of NEW's promotion
(:mod:`replverify.ops.xidhorizon`):

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
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from replverify.ops.xidhorizon import FIRST_NORMAL_XID, Horizon, widen
from replverify.types import Changed, DiffReport, Extra, Missing, TableRef
from replverify.values.pgtext import jsonable

__all__ = [
    "ORIGINS",
    "Attribution",
    "Change",
    "FailbackReport",
    "FailbackRow",
    "Found",
    "Group",
    "Origin",
    "attribute",
    "attribute_image",
    "decide",
]

Origin = Literal["old_only", "new_only", "conflict", "unknown"]
Change = Literal["insert", "update", "delete"]
ORIGINS: tuple[Origin, ...] = ("old_only", "new_only", "conflict", "unknown")
#: a keyed row version as read on one side: xmin, commit time, image as text
Found = tuple[int, _dt.datetime | None, dict[str, str | None]]
#: a keyless row image as read on one side: hash, copies, their xmins, image as text
Group = tuple[int, int, list[int], dict[str, str | None]]


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


@dataclass
class Attribution:
    """What attribution needs to know about the two servers."""

    report: FailbackReport
    next_old: int
    next_new: int
    dated: bool  # commit timestamps on both sides
    #: NEW's ``pg_xact_status`` of OLD's xids below the horizon, as far as asked
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

    def unresolved(self, xmins: Iterable[int]) -> set[int]:
        """OLD's xids below the horizon whose status on NEW is not known yet (ask NEW,
        then put the answers in :attr:`statuses`)."""
        h = self.report.horizon
        if h is None:
            return set()
        wanted = {
            x
            for x in (widen(m, self.next_old) for m in xmins)
            if FIRST_NORMAL_XID <= x < h.lo and x not in self.statuses
        }
        if wanted and len(self.statuses) > 200_000:
            self.statuses.clear()
        return wanted


def attribute(
    ctx: Attribution,
    table: TableRef,
    raw_key: dict[str, object],
    d: Missing | Extra | Changed,
    o: Found | None,
    n: Found | None,
) -> FailbackRow:
    """The differing keyed row ``d`` attributed from its row versions on OLD (``o``)
    and NEW (``n``) as read after the diff (None: absent on that side)."""
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
    o: Found | None,
    n: Found | None,
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


def attribute_image(
    ctx: Attribution, ref: TableRef, og: Group | None, ng: Group | None
) -> tuple[FailbackRow, int]:
    """A keyless row image whose number of copies differs between OLD (``og``) and NEW
    (``ng``): the row, and how many of its copies differ (one row stands for each)."""
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
        ref,
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
    return row, count
