"""The comparison of one table as an I/O-free state machine.

The machine never touches a database. It hands out *requests* ("the digest of this key
range on both sides", "split this range", "the row hashes of this range", "the rows with
these keys") and is fed the answers; :mod:`replverify.diff.driver` runs the requests against
PostgreSQL, tests run them against in-memory sources or scripted answers.

Narrowing: a chunk whose digests match is done. When the digests of a mismatching chunk
say which keys differ (a ``locate`` function given the COPY streams they were hashed
from, see :mod:`replverify.diff.copyscan`), just those rows are read. Otherwise a range larger
than ``leaf_rows`` is split into ``split_factor`` parts at keys taken from the side that
holds more rows, and the parts are digested again together (one grouped query per side);
a small one is resolved with its (key, row hash) pairs, and only the rows whose hashes
differ are read in full and compared column by column. Transfer grows with the number of
differences, not with the table size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

from replverify.diff.ranges import KeyRange, split_step
from replverify.types import Changed, Difference, Extra, Key, Missing

Side = Literal["source", "target"]
Row = Sequence[object]


class Digest(Protocol):
    @property
    def count(self) -> int: ...


_ids = itertools.count(1)


@dataclass(frozen=True)
class NeedDigest:
    """Answer: ``(source_digest, target_digest)`` of the rows in ``range``."""

    range: KeyRange
    top: bool = False
    id: int = field(default_factory=lambda: next(_ids), compare=False)


@dataclass(frozen=True)
class NeedDigests:
    """Answer: ``(source_digests, target_digests)``, one digest per range of ``ranges``.

    The ranges are the consecutive parts of one mismatching range; asking for all of them
    at once lets a side answer with a single grouped query instead of one per part.
    """

    ranges: tuple[KeyRange, ...]
    id: int = field(default_factory=lambda: next(_ids), compare=False)


@dataclass(frozen=True)
class NeedSplit:
    """Answer: keys of ``side`` inside ``range`` at every ``every``-th row, ascending.

    ``parts`` is the number of parts wanted; a source may cut evenly by key value
    instead of counting rows (integer keys), since the parts need not be equal.
    """

    range: KeyRange
    side: Side
    every: int
    top: bool = False
    parts: int = 0
    id: int = field(default_factory=lambda: next(_ids), compare=False)


@dataclass(frozen=True)
class NeedBoundary:
    """Answer: the source key ``every`` rows after ``after`` (``None``: start), or ``None``
    when fewer rows remain. Walks the chunk boundaries one at a time, so digests start
    after the first one instead of after a scan of every key."""

    after: Key | None
    every: int
    id: int = field(default_factory=lambda: next(_ids), compare=False)


@dataclass(frozen=True)
class NeedRowHashes:
    """Answer: ``(source, target)`` mappings key → row hash for the rows in ``range``."""

    range: KeyRange
    id: int = field(default_factory=lambda: next(_ids), compare=False)


@dataclass(frozen=True)
class NeedRows:
    """Answer: ``(source, target)`` mappings key → compared column values, for ``keys``.

    ``round`` > 0 marks a confirmation read of rows that looked different before.
    """

    range: KeyRange
    keys: tuple[Key, ...]
    round: int = 0
    id: int = field(default_factory=lambda: next(_ids), compare=False)


Request = NeedDigest | NeedDigests | NeedSplit | NeedBoundary | NeedRowHashes | NeedRows
RowComparer = Callable[[Row, Row], tuple[str, ...]]
#: ``locate(source_digest, target_digest)``: the keys two top-level chunks differ in, when
#: the digests can tell (see :mod:`replverify.diff.copyscan`), else ``None``.
Locator = Callable[[object, object], "Sequence[Key] | None"]


@dataclass
class Stats:
    rows_source: int = 0
    rows_target: int = 0
    chunks: int = 0
    chunks_mismatched: int = 0
    chunks_located: int = 0
    ranges_digested: int = 0
    rows_hashed: int = 0
    rows_fetched: int = 0


class TableComparison:
    """Compare one table by key ranges; feed it answers until :attr:`done`."""

    def __init__(
        self,
        compare_rows: RowComparer,
        *,
        chunk_rows: int = 10_000,
        leaf_rows: int = 1_000,
        split_factor: int = 16,
        max_diffs: int | None = None,
        whole: KeyRange | None = None,
        walk_boundaries: bool = True,
        confirm_rounds: int = 0,
        locate: Locator | None = None,
    ) -> None:
        if chunk_rows < 1 or leaf_rows < 1 or split_factor < 2:
            raise ValueError("chunk_rows and leaf_rows must be >= 1, split_factor >= 2")
        self.compare_rows = compare_rows
        self.chunk_rows = chunk_rows
        self.leaf_rows = leaf_rows
        self.split_factor = split_factor
        self.max_diffs = max_diffs
        self.whole = whole or KeyRange()
        self.walk_boundaries = walk_boundaries and self.whole.is_whole
        self.confirm_rounds = confirm_rounds
        self.locate = locate
        #: keys still different after every confirmation while their source row kept
        #: changing: not verified, and not called a difference either.
        self.unstable: list[Key] = []
        self._last_source: dict[Key, Row | None] = {}
        self.stats = Stats()
        self.differences: list[Difference] = []
        self.differences_total = 0
        self._pending: set[int] = set()
        self._started = False

    # -- driving -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._started and not self._pending

    @property
    def truncated(self) -> bool:
        return self.max_diffs is not None and self.differences_total > len(self.differences)

    def start(self) -> list[Request]:
        """The first request: chunk boundaries, every ``chunk_rows`` keys of the source.

        With ``walk_boundaries`` (the key order has an index) boundaries come one at a
        time and each chunk is digested as soon as its upper key is known; otherwise all
        boundaries come from one ordered scan. Asked even for tables whose statistics
        say they are small: statistics may be stale.
        """
        self._started = True
        if self.walk_boundaries:
            return self._issue([NeedBoundary(None, self.chunk_rows)])
        return self._issue([NeedSplit(self.whole, "source", self.chunk_rows, top=True)])

    def feed(self, request: Request, answer: object) -> list[Request]:
        """Give the answer to ``request``; returns the follow-up requests."""
        if request.id not in self._pending:
            raise ValueError(f"unexpected answer for request {request.id}")
        self._pending.discard(request.id)
        if isinstance(request, NeedDigest):
            src, tgt = cast("tuple[Digest, Digest]", answer)
            return self._issue(self._on_digest(request.range, src, tgt, top=request.top))
        if isinstance(request, NeedDigests):
            srcs, tgts = cast("tuple[Sequence[Digest], Sequence[Digest]]", answer)
            if not len(srcs) == len(tgts) == len(request.ranges):
                raise ValueError(f"expected {len(request.ranges)} digests per side")
            follow: list[Request] = []
            for rng, src, tgt in zip(request.ranges, srcs, tgts, strict=True):
                follow += self._on_digest(rng, src, tgt, top=False)
            return self._issue(follow)
        if isinstance(request, NeedSplit):
            return self._issue(self._on_split(request, list(cast("list[Key]", answer))))
        if isinstance(request, NeedBoundary):
            return self._issue(self._on_boundary(request, cast("Key | None", answer)))
        if isinstance(request, NeedRowHashes):
            hashes = cast("tuple[Mapping[Key, object], Mapping[Key, object]]", answer)
            return self._issue(self._on_row_hashes(request, *hashes))
        rows = cast("tuple[Mapping[Key, Row], Mapping[Key, Row]]", answer)
        return self._issue(self._on_rows(request, *rows))

    # -- transitions ---------------------------------------------------------------------
    def _issue(self, requests: Iterable[Request]) -> list[Request]:
        out = list(requests)
        self._pending.update(r.id for r in out)
        return out

    def _on_boundary(self, req: NeedBoundary, key: Key | None) -> list[Request]:
        if key is None or key == req.after:
            return [NeedDigest(KeyRange(req.after, None), top=True)]
        # ``chunk_rows`` may have been adapted since (``--chunk-time``): the next chunk uses it
        nxt = NeedBoundary(key, self.chunk_rows)
        return [nxt, NeedDigest(KeyRange(req.after, key), top=True)]

    def _on_split(self, req: NeedSplit, boundaries: list[Key]) -> list[Request]:
        ranges = req.range.split(boundaries)
        if req.top:
            return [NeedDigest(r, top=True) for r in ranges]
        if len(ranges) == 1:
            # The side could not be cut further (e.g. all its rows share a range edge):
            # resolve the range row by row rather than loop.
            return [NeedRowHashes(req.range)]
        return [NeedDigests(tuple(ranges))]

    def _on_digest(self, rng: KeyRange, src: Digest, tgt: Digest, *, top: bool) -> list[Request]:
        self.stats.ranges_digested += 1
        if top:
            self.stats.chunks += 1
            self.stats.rows_source += src.count
            self.stats.rows_target += tgt.count
        if src == tgt:
            return []
        if top:
            self.stats.chunks_mismatched += 1
            keys = self.locate(src, tgt) if self.locate else None
            if keys:
                self.stats.chunks_located += 1
                return [NeedRows(rng, tuple(keys))]
        rows = max(src.count, tgt.count)
        if rows <= self.leaf_rows:
            return [NeedRowHashes(rng)]
        side: Side = "source" if src.count >= tgt.count else "target"
        every = split_step(rows, self.split_factor)
        return [NeedSplit(rng, side, every, parts=-(-rows // every))]

    def _on_row_hashes(
        self, req: NeedRowHashes, src: Mapping[Key, object], tgt: Mapping[Key, object]
    ) -> list[Request]:
        self.stats.rows_hashed += len(src) + len(tgt)
        differing: list[Key] = []
        for key, h in src.items():
            if key not in tgt:
                if self.confirm_rounds:
                    differing.append(key)
                else:
                    self.record(Missing(key))
            elif tgt[key] != h:
                differing.append(key)
        for key in tgt:
            if key not in src:
                if self.confirm_rounds:
                    differing.append(key)
                else:
                    self.record(Extra(key))
        return [NeedRows(req.range, tuple(differing))] if differing else []

    def _on_rows(
        self, req: NeedRows, src: Mapping[Key, Row], tgt: Mapping[Key, Row]
    ) -> list[Request]:
        """Record what differs; with confirmation rounds, read it again first.

        A row that differs on the last round is a difference if its source image stayed
        the same since the round before, and *unstable* (being written to while compared)
        if it did not.
        """
        self.stats.rows_fetched += len(src) + len(tgt)
        again: list[Key] = []
        last = req.round >= self.confirm_rounds
        for key in req.keys:
            s, t = src.get(key), tgt.get(key)
            diff = self._classify(key, s, t)
            if diff is None:
                self._last_source.pop(key, None)
                continue
            if not last:
                self._last_source[key] = s
                again.append(key)
            elif req.round and not self._same(self._last_source.pop(key, None), s):
                self.unstable.append(key)
            else:
                self._last_source.pop(key, None)
                self.record(diff)
        return [NeedRows(req.range, tuple(again), req.round + 1)] if again else []

    def _classify(self, key: Key, s: Row | None, t: Row | None) -> Difference | None:
        if s is None and t is None:
            return None
        if t is None:
            return Missing(key)
        if s is None:
            return Extra(key)
        columns = self.compare_rows(s, t)
        return Changed(key, columns) if columns else None

    def _same(self, a: Row | None, b: Row | None) -> bool:
        if a is None or b is None:
            return a is b
        return not self.compare_rows(a, b)

    def record(self, diff: Difference) -> None:
        """Count a difference; keep it unless ``max_diffs`` are kept already."""
        self.differences_total += 1
        if self.max_diffs is None or len(self.differences) < self.max_diffs:
            self.differences.append(diff)
