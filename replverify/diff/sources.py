"""Row sources: what the comparison asks of one side of one table.

A :class:`RowSource` answers four questions about a key range: its digest, split keys,
(key → row hash) pairs, and full rows for some keys. :class:`PostgresSource` answers them
with SQL (hashing in the database, or hashing decoded rows here),
:class:`replverify.testing.memory.MemorySource` from a dict (tests and tools). The
comparison logic never knows which it talks to.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, cast

import asyncpg
import xxhash

from replverify.diff.align import TablePlan
from replverify.diff.copyscan import (
    SEND_SIZES,
    KeyOf,
    LearnedSkip,
    Skip,
    key_reader,
    row_skipper,
    skip_rows,
)
from replverify.diff.hashing import ChunkDigest, row_digest, to_unsigned64
from replverify.diff.ranges import KeyRange
from replverify.diff.sql import TableSQL, lossy
from replverify.errors import SchemaError
from replverify.types import Key
from replverify.values.canonical import Compare, Encoder, encode_row, encoder_for
from replverify.values.tags import TAG_LEN

#: How equal chunks are recognised: ``copy`` streams each chunk's binary COPY into xxh3
#: here (fastest; the whole table crosses the network), ``server`` sums row-text hashes in
#: the database (little transfer), ``client`` hashes decoded values canonically (exact
#: between servers whose output differs, e.g. major versions; slowest).
DigestMode = Literal["copy", "server", "client"]
Row = tuple[object, ...]


class RowSource(Protocol):
    async def digest(self, rng: KeyRange) -> ChunkDigest: ...
    async def digests(self, ranges: Sequence[KeyRange]) -> list[ChunkDigest]: ...
    async def boundary(self, after: Key | None, every: int) -> Key | None: ...
    async def split(self, rng: KeyRange, every: int, parts: int = 0) -> list[Key]: ...
    async def row_hashes(self, rng: KeyRange) -> dict[Key, int]: ...
    async def rows(self, rng: KeyRange, keys: Sequence[Key]) -> dict[Key, Row]: ...


#: Chunk boundaries of a single integer key come from the planner's histogram, when
#: ANALYZE made one (``{1,9871,...}``): the walk would read every key of the index once
#: more, on the source. A cluster run's planner and tasks take the same cuts (see
#: :func:`cuts_within`), so both executors make the same chunks. Off: every boundary is
#: walked (row-count exact chunks).
HISTOGRAM_BOUNDARIES = True

HISTOGRAM_SQL = (
    "SELECT histogram_bounds::text FROM pg_catalog.pg_stats"
    " WHERE schemaname = $1 AND tablename = $2 AND attname = $3"
)


def histogram_cuts(bounds: Sequence[int], rows: int, every: int) -> list[int]:
    """Keys cutting ``rows`` rows spread as ``bounds`` (equal-frequency histogram bounds,
    ascending) into ranges of about ``every`` rows (pure)."""
    bounds = sorted(set(bounds))
    if len(bounds) < 2 or rows <= every:
        return []
    per_bucket = rows / (len(bounds) - 1)
    cuts: list[int] = []
    if per_bucket < every:  # several buckets a chunk
        step = round(every / per_bucket)
        cuts = list(bounds[step::step])
    else:
        parts = round(per_bucket / every)
        for lo, hi in itertools.pairwise(bounds):
            cuts += [lo + (hi - lo) * j // parts for j in range(1, parts + 1)]
    out = sorted(set(cuts))
    return out if out and out[-1] == bounds[-1] else [*out, bounds[-1]]


@functools.lru_cache(maxsize=8)
def _cached_cuts(bounds: tuple[int, ...], rows: int, every: int) -> list[int]:
    return histogram_cuts(bounds, rows, every)


def cuts_within(
    cuts: Sequence[int], lo: int | None, hi: int | None, stride: int = 1
) -> tuple[list[int], int | None, bool]:
    """The histogram ``cuts`` (ascending, a whole table's) that bound chunks of the range
    ``(lo, hi]`` (pure): those strictly inside it at every ``stride``-th place of the whole
    list, and the last cut wherever it falls; then where row counting takes over and
    whether any of the range lies past the last cut (rows added since ANALYZE).

    A range cut at ``stride`` > 1 (a cluster run's tasks) is thereby cut at boundaries of
    ``stride`` = 1 (the in-process run's chunks), and past the last cut both count rows
    from it (or from ``lo``, itself such a boundary).
    """
    inside = [
        c
        for i, c in enumerate(cuts)
        if (lo is None or c > lo)
        and (hi is None or c < hi)
        and ((i + 1) % stride == 0 or i == len(cuts) - 1)
    ]
    last = cuts[-1] if cuts else None
    start = lo if last is None or (lo is not None and lo >= last) else last
    beyond = last is None or hi is None or hi > last
    return inside, start, beyond


#: A :func:`~replverify.diff.sql.shape` that drops nothing: every array's lower bounds
#: are 1 (what a decoded list implies) and every date and time decodes as it is.
_DEFAULT_DIMS = re.compile(r"(?:\[1:\d+\]|[(),;])*")


@dataclass(frozen=True)
class BoundedArray:
    """A value whose decoding dropped what a client reads (an array whose lower bounds are
    not all 1, ``'[0:1]={1,2}'``, also inside a composite; ``'infinity'::date``): the decoded
    ``values`` and the ``dims`` (:func:`~replverify.diff.sql.shape`) they do not carry."""

    dims: str
    values: object


def decoded(record: Sequence[object], start: int, sql: TableSQL) -> Row:
    """The compared columns of a ``rows``/``rows_with_hashes`` record from ``start``, with
    each value whose decoding dropped something (:attr:`TableSQL.bounded`) as a
    :class:`BoundedArray`."""
    n = len(sql.plan.columns)
    values = tuple(record[start : start + n])
    bounded = sql.bounded
    if not bounded:
        return values
    out = list(values)
    for j, i in enumerate(bounded):
        dims = record[start + n + j]
        if dims is not None and not _DEFAULT_DIMS.fullmatch(cast(str, dims)):
            out[i] = BoundedArray(cast(str, dims), out[i])
    return tuple(out)


def shown(record: Sequence[object], start: int, sql: TableSQL) -> Row:
    """:func:`decoded` for a report's row image: a date or time asyncpg cannot decode as
    it is (read as NULL beside its text) as that text, other values as decoded."""
    return tuple(
        (v.dims if v.values is None else v.values) if type(v) is BoundedArray else v
        for v in decoded(record, start, sql)
    )


def _with_bounds(encode: Encoder) -> Encoder:
    """A :func:`~replverify.diff.sql.lossy` column's encoder that also tells apart what
    decoding dropped: tag ``L`` (in :mod:`replverify.values.canonical`'s table), the
    shape text, then the value's own encoding."""

    def enc(v: object) -> bytes:
        if type(v) is BoundedArray:
            dims = v.dims.encode()
            return TAG_LEN(b"L", len(dims)) + dims + encode(v.values)
        return encode(v)

    return enc


def hashable(value: object) -> object:
    """Keys must be dict keys: arrays (lists) become tuples."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    return value


class RowHasher:
    """Canonical encoding + xxh3 of decoded rows, encoders chosen once per column:
    ``exact`` (binary send forms) or ``semantic`` (``=``) equality."""

    def __init__(self, plan: TablePlan, compare: Compare = "exact") -> None:
        self.encoders: list[Encoder] = [
            _with_bounds(encoder_for(c.type, compare))
            if lossy(c.type)
            else encoder_for(c.type, compare)
            for c in plan.columns
        ]

    def __call__(self, values: Sequence[object]) -> int:
        return row_digest(encode_row(self.encoders, values))

    def differing_columns(
        self, names: Sequence[str]
    ) -> Callable[[Sequence[object], Sequence[object]], tuple[str, ...]]:
        encoders = self.encoders

        def compare(a: Sequence[object], b: Sequence[object]) -> tuple[str, ...]:
            return tuple(
                name
                for name, enc, x, y in zip(names, encoders, a, b, strict=True)
                if enc(x) != enc(y)
            )

        return compare


class PostgresSource:
    """One side of one table on a PostgreSQL server."""

    #: Most bytes of one chunk's COPY stream kept for narrowing (see ``_copy_digest``).
    keep_stream_bytes = 16 << 20

    def __init__(
        self, pool: asyncpg.Pool, sql: TableSQL, mode: DigestMode, compare: Compare = "exact"
    ) -> None:
        self.pool = pool
        self.sql = sql
        self.mode = mode
        self.nkey = len(sql.plan.key)
        self.hasher = RowHasher(sql.plan, compare)
        by_name = {c.name: c for c in sql.plan.columns}
        # keys are dict keys: only array keys need converting (lists are unhashable)
        self._plain_keys = all(by_name[k].type.kind != "array" for k in sql.plan.key_names)
        self._int_key = self.nkey == 1 and by_name[sql.plan.key_names[0]].type.base in (
            "int2",
            "int4",
            "int8",
        )
        #: the key's histogram bounds (see ``_statistics_cuts``), once read
        self._bounds: tuple[int, ...] | None = None
        #: decodes keys out of this table's COPY rows; set when chunks keep their streams
        self.key_of: KeyOf | None = None
        #: walks this table's COPY rows (to locate differing keys in them)
        self.skip: Skip = skip_rows
        if mode == "copy" and self.nkey:
            positions = [
                i for k in sql.plan.key_names for i, c in enumerate(sql.plan.columns) if c.name == k
            ]
            bases = [by_name[k].type.base for k in sql.plan.key_names]
            self.key_of = key_reader(positions, bases)
            forms = sql.plan.copy_forms or ("binary",) * len(sql.plan.columns)
            sizes = [
                SEND_SIZES.get(c.type.base) if f == "binary" and c.type.kind == "base" else None
                for c, f in zip(sql.plan.columns, forms, strict=True)
            ]
            self.skip = LearnedSkip(len(sizes), row_skipper(sizes))

    def _key(self, record: Sequence[object]) -> Key:
        if self._plain_keys:
            return tuple(record[: self.nkey])
        return tuple(hashable(v) for v in record[: self.nkey])

    def _unique(self, pairs: list[tuple[Key, int]]) -> dict[Key, int]:
        out = dict(pairs)
        if len(out) == len(pairs):
            return out
        seen: set[Key] = set()
        for key, _ in pairs:
            if key in seen:
                plan = self.sql.plan
                raise SchemaError(
                    f"key ({', '.join(plan.key_names)}) is not unique in {plan.ref}: "
                    f"{key!r} appears more than once",
                    hint="give --key columns that identify a row, or omit --key to compare "
                    "the table as a row multiset",
                )
            seen.add(key)
        raise AssertionError("unreachable")

    async def digest(self, rng: KeyRange) -> ChunkDigest:
        if self.mode == "client":
            return await self._client_digest(rng)
        if self.mode == "copy":
            return await self._copy_digest(rng)
        text, params = self.sql.digest(rng)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(text, *params)
        assert row is not None
        return ChunkDigest(row[0], to_unsigned64(int(row[1])))

    async def digests(self, ranges: Sequence[KeyRange]) -> list[ChunkDigest]:
        """Digests of consecutive ranges. The parts of a mismatching chunk are few rows
        each: one grouped in-database query reads them all, where a COPY per part would
        cost a round trip each (``client`` mode hashes here, so it reads part by part)."""
        if self.mode == "client" or len(ranges) < 2:
            return [await self.digest(r) for r in ranges]
        whole = KeyRange(ranges[0].lo, ranges[-1].hi)
        cuts = [r.hi for r in ranges[:-1]]
        assert all(r.hi is not None for r in ranges[:-1]), "parts must be consecutive"
        text, params = self.sql.part_digests(whole, cast("list[Key]", cuts))
        async with self.pool.acquire() as conn:
            records = await conn.fetch(text, *params)
        out = [ChunkDigest(0, 0)] * len(ranges)
        for part, count, total in records:
            out[part] = ChunkDigest(count, to_unsigned64(int(total)))
        return out

    async def _copy_digest(self, rng: KeyRange) -> ChunkDigest:
        # Order-dependent, so the rows come in key order; the count is COPY's status.
        # The pieces are kept (by reference: asyncpg hands over a new buffer each time)
        # so that a mismatch can be located in them; see replverify.diff.copyscan.
        # A chunk of wide rows is not kept beyond ``keep_stream_bytes``, so memory stays
        # bounded by the chunks in flight whatever the rows hold; such a chunk is
        # narrowed by splitting instead.
        text, params = self.sql.copy_rows(rng)
        h = xxhash.xxh3_128()
        pieces: list[bytes | bytearray] = []
        kept = 0 if self.key_of is not None else -1

        async def sink(data: bytes | bytearray) -> None:
            nonlocal kept
            h.update(data)
            if kept >= 0:
                kept += len(data)
                if kept <= self.keep_stream_bytes:
                    pieces.append(data)
                else:
                    pieces.clear()
                    kept = -1

        async with self.pool.acquire() as conn:
            status = await conn.copy_from_query(text, *params, output=sink, format="binary")
        return ChunkDigest(int(status.rsplit(" ", 1)[1]), h.intdigest(), tuple(pieces))

    async def boundary(self, after: Key | None, every: int) -> Key | None:
        cuts = await self._statistics_cuts(every)
        if cuts:
            i = 0 if after is None else bisect.bisect_right(cuts, cast("int", after[0]))
            if i < len(cuts):
                return (cuts[i],)
        text, params = self.sql.next_boundary(after, every)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(text, *params)
        return None if row is None else tuple(hashable(v) for v in row)

    async def chunk_cuts(self, rng: KeyRange, every: int, stride: int = 1) -> list[Key]:
        """Boundaries cutting ``rng`` into chunks of about ``every`` rows (``stride`` > 1:
        into runs of ``stride`` such chunks), as ``boundary`` would walk them: from the
        statistics where they reach, then every ``every × stride``-th row."""
        cuts = await self._statistics_cuts(every)
        if not cuts:
            return await self._row_cuts(rng, every * stride)
        lo, hi = (None if k is None else cast("int", k[0]) for k in (rng.lo, rng.hi))
        inside, start, beyond = cuts_within(cuts, lo, hi, stride)
        out: list[Key] = [(c,) for c in inside]
        if beyond:
            rest = KeyRange(None if start is None else (start,), rng.hi)
            out += await self._row_cuts(rest, every * stride)
        return out

    async def _row_cuts(self, rng: KeyRange, every: int) -> list[Key]:
        text, params = self.sql.split(rng, every)
        async with self.pool.acquire() as conn:
            records = await conn.fetch(text, *params)
        return [tuple(hashable(v) for v in r) for r in records]

    async def _statistics_cuts(self, every: int) -> list[int]:
        """Chunk boundaries of an integer key from the planner's histogram, cut evenly in
        key span within each bucket: no index walk on the server (it would scan every
        key once more). Boundaries only shape the ranges: wrong statistics make chunks
        uneven, never the comparison wrong. Past the histogram's last key (rows added
        since ANALYZE) the walk takes over. [] when there is no histogram."""
        if not (HISTOGRAM_BOUNDARIES and self._int_key):
            return []
        if self._bounds is None:
            plan = self.sql.plan
            async with self.pool.acquire() as conn:
                text = await conn.fetchval(
                    HISTOGRAM_SQL, plan.ref.schema, plan.ref.name, plan.key_names[0]
                )
            self._bounds = tuple(int(v) for v in text.strip("{}").split(",")) if text else ()
        return _cached_cuts(self._bounds, self.sql.plan.estimated_rows, every)

    async def _client_digest(self, rng: KeyRange) -> ChunkDigest:
        text, params = self.sql.rows(rng)
        count = total = 0
        nkey, hasher = self.nkey, self.hasher
        async with self.pool.acquire() as conn, conn.transaction():
            async for rec in conn.cursor(text, *params, prefetch=2000):
                count += 1
                total += hasher(decoded(rec, nkey, self.sql))
        return ChunkDigest(count, total % (1 << 128))

    async def split(self, rng: KeyRange, every: int, parts: int = 0) -> list[Key]:
        if self._int_key and parts > 1 and rng.lo is not None and rng.hi is not None:
            # Integer keys: cut the key span evenly, no query. Uneven data only makes
            # some parts bigger; the comparison splits those again.
            lo, hi = int(rng.lo[0]), int(rng.hi[0])  # type: ignore[call-overload]
            if hi - lo >= 2:
                return [(lo + (hi - lo) * i // parts,) for i in range(1, parts)]
        if parts == 0:  # a whole table's or a task's chunks
            return await self.chunk_cuts(rng, every)
        return await self._row_cuts(rng, every)

    async def row_hashes(self, rng: KeyRange) -> dict[Key, int]:
        if self.mode == "client":
            text, params = self.sql.rows(rng)
            async with self.pool.acquire() as conn:
                records = await conn.fetch(text, *params)
            return self._unique(
                [(self._key(r), self.hasher(decoded(r, self.nkey, self.sql))) for r in records]
            )
        text, params = self.sql.row_hashes(rng)
        async with self.pool.acquire() as conn:
            records = await conn.fetch(text, *params)
        n = self.nkey
        if self._plain_keys and n == 1:
            return self._unique([((r[0],), r[1]) for r in records])
        return self._unique([(self._key(r), r[n]) for r in records])

    async def rows(self, rng: KeyRange, keys: Sequence[Key]) -> dict[Key, Row]:
        text, params = self.sql.rows(rng, keys)
        async with self.pool.acquire() as conn:
            records = await conn.fetch(text, *params)
        wanted = set(keys)
        out: dict[Key, Row] = {}
        for r in records:
            key = self._key(r)
            if key in wanted:
                out[key] = decoded(r, self.nkey, self.sql)
        return out
