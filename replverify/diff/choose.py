"""``--digest auto``: choose between binary COPY digests (hash here; the table crosses the
link) and in-database digests (hash there; only sums cross), from what is measured at
start: each side's round trip, the time to read one chunk both ways (so the link's
throughput and the servers' hashing speed), and the servers' versions.

:func:`decide` is pure; :func:`probe` measures both sides at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import asyncpg
import xxhash
from asyncpg.prepared_stmt import PreparedStatement

from replverify.db.connect import DB_ERRORS, release_rounds
from replverify.diff.align import TablePlan
from replverify.diff.ranges import KeyRange
from replverify.diff.sources import DigestMode, PostgresSource
from replverify.diff.sql import TableSQL
from replverify.types import ColumnType
from replverify.values.canonical import Compare

#: Floating-point types whose text prints every NaN as ``NaN`` where the binary send form
#: keeps the bits. Scalar float columns go into the server digest as their send form
#: (``TableSQL.row_text``); inside these containers they cannot.
T = TypeVar("T")
_FLOAT_BASES = frozenset({"float4", "float8"})
_GEOMETRIC = frozenset({"point", "line", "lseg", "box", "path", "polygon", "circle"})
#: ``server`` must be this much faster than ``copy`` by the probe (scaled to a chunk) to
#: be chosen: a near tie goes to ``copy`` (128-bit digests, differences located in the
#: bytes already read, less work for the servers). A LAN never gets here (see
#: ``FAST_LINK_MBIT``): small reads timed on a busy machine there are mostly noise.
SERVER_MARGIN = 0.9
#: Rows of the probe range: enough that the work shows beyond a round trip, few enough
#: that measuring costs a few percent of a run over a slow link.
PROBE_ROWS = 2_000
#: A link at least this fast (Mbit/s) is a LAN: ``copy`` without timing the reads (a
#: busy machine's loopback measured 300 and more; a 100 Mbit/s link cannot reach it).
FAST_LINK_MBIT = 200
LINK_BYTES = 1 << 20
LINK_SQL = f"SELECT repeat('x', {LINK_BYTES})"
#: The link alone is measured only under this round trip (ms): its megabyte costs a few
#: percent of a run over a slow link, and a link this far away is no LAN; the timed reads
#: decide there.
LINK_RTT_MS = 10.0
#: Round trips timed on each connection: the side's round trip is the best of them.
RTT_SAMPLES = 3
MIN_ROUNDS, MAX_ROUNDS = 1, 5
#: after MIN_ROUNDS, another round only while the rounds stay within this (s)
ROUNDS_BUDGET_S = 0.25


def _hides_float(ctype: ColumnType, top: bool = True) -> bool:
    if ctype.base in _GEOMETRIC:
        return True
    if ctype.base in _FLOAT_BASES:
        return not top
    if ctype.element is not None and _hides_float(ctype.element, False):
        return True
    return any(_hides_float(t, False) for _, t in ctype.fields)


def server_inexact(plans: Sequence[TablePlan], compare: Compare) -> list[str]:
    """Columns an in-database (text) digest cannot compare exactly: under ``exact``,
    floats inside arrays, composites or geometric types, whose text shows every NaN
    alike while their binary forms differ. (Under ``semantic`` text only ever errs
    towards "different", which the row-by-row step settles.)"""
    if compare != "exact":
        return []
    return [
        f"{p.ref}.{c.name} ({c.type.name})"
        for p in plans
        if not p.multiset
        for c in p.columns
        if _hides_float(c.type)
    ]


@dataclass(frozen=True)
class SideProbe:
    """What one side measured (seconds, bytes): its round trip, and the time ``jobs``
    concurrent reads of one probe range took each way, as a run reads ``jobs`` chunks at
    once: over a capped link COPYs queue behind each other, hashing in the database runs
    on the server's cores."""

    version_num: int
    rtt_ms: float
    #: rows of the probe range, and how many reads of it ran at once
    rows: int
    jobs: int
    copy_s: float
    copy_bytes: int
    server_s: float
    #: the link alone: a megabyte the server makes at no cost, the round trip taken off
    #: (0: not measured, over a round trip of ``LINK_RTT_MS`` or more)
    link_mbit_s: float = 0.0
    #: what a run's read costs besides its work: its statement's round trip, and before
    #: PostgreSQL 14 the pool's reset of the connection after it
    #: (:func:`~replverify.db.connect.release_rounds`)
    base_s: float = 0.0
    #: round trips a COPY read takes besides its own: 2 when asyncpg has the server quote
    #: its parameters (keys other than integers)
    copy_rounds: int = 0

    def chunk_s(self, work: float, chunk_rows: int, rounds: int = 0) -> float:
        """A probe read's work scaled to a chunk, and the fixed cost of a read once."""
        scale = max(chunk_rows / max(self.rows, 1), 1.0)
        return self.base_s + rounds * self.rtt_ms / 1000 + work * scale

    @property
    def copy_work_s(self) -> float:
        """A probe's COPY reads beyond their round trips (they ran on held connections)."""
        return max(self.copy_s - (1 + self.copy_rounds) * self.rtt_ms / 1000, 1e-6)

    @property
    def server_work_s(self) -> float:
        return max(self.server_s - self.rtt_ms / 1000, 1e-6)

    @property
    def mbit_s(self) -> float:
        """Throughput of the COPY reads, the round trip taken off."""
        return self.copy_bytes * self.jobs * 8 / self.copy_work_s / 1e6


@dataclass(frozen=True)
class Choice:
    mode: DigestMode
    why: str
    #: what was measured (``None`` when nothing needed measuring), for the JSON report
    measured: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "why": self.why, "measured": self.measured}


def decide(
    source_version: int,
    target_version: int,
    inexact: Sequence[str],
    probes: tuple[SideProbe, SideProbe] | None,
    chunk_rows: int | None = None,
) -> Choice:
    """The digest for ``auto`` (pure). ``probes``: both sides' measurements, or None
    when nothing could be measured (no keyed table with rows)."""
    if min(source_version, target_version) < 110000:
        return Choice("copy", "copy: the server digest needs PostgreSQL 11 or later on both sides")
    majors = {source_version // 10000, target_version // 10000}
    if len(majors) > 1 and min(majors) < 12:
        return Choice(
            "copy",
            "copy: float text output changed in PostgreSQL 12, so in-database text digests "
            "of servers on both sides of it would differ for equal values",
        )
    if inexact:
        shown = ", ".join(inexact[:5]) + (
            f" and {len(inexact) - 5} more" if len(inexact) > 5 else ""
        )
        return Choice(
            "copy",
            "copy: an in-database digest cannot be exact for " + shown + " (their text shows "
            "every NaN alike; --compare exact tells the bits apart)",
        )
    if probes is None:
        return Choice("copy", "copy: no keyed table with rows to measure the link on")
    src, tgt = probes
    carried = min(src.link_mbit_s, tgt.link_mbit_s)
    if carried >= FAST_LINK_MBIT:
        # Over such a link the table crossing it costs less than the servers' work
        # to produce it; timing small reads against each other is mostly noise then.
        return Choice(
            "copy",
            f"copy: the links carry {carried:,.0f} Mbit/s (at least {FAST_LINK_MBIT:,} "
            f"measured: reading the table here is cheaper than hashing it there)",
            {"source": _side(src), "target": _side(tgt)},
        )
    # Both sides are read at once: each chunk takes as long as its slower side. The
    # round trip is the same either way (one statement per chunk) and overlaps between
    # chunks in flight, so what is compared is the work beyond it.
    if chunk_rows:  # the whole cost of a chunk, as a run pays it
        copy_s = max(p.chunk_s(p.copy_work_s, chunk_rows, p.copy_rounds) for p in probes)
        server_s = max(p.chunk_s(p.server_work_s, chunk_rows) for p in probes)
    else:
        copy_s = max(src.copy_work_s, tgt.copy_work_s)
        server_s = max(src.server_work_s, tgt.server_work_s)
    measured = {
        "probe_rows": max(src.rows, tgt.rows),
        "source": _side(src),
        "target": _side(tgt),
        "copy_work_s": round(copy_s, 4),
        "server_work_s": round(server_s, 4),
    }
    slow = max((src, tgt), key=lambda p: p.copy_work_s)
    link = f"rtt {slow.rtt_ms:.1f} ms, {slow.mbit_s:,.0f} Mbit/s to the slower side"
    timing = (
        f"{src.jobs} reads of {max(src.rows, tgt.rows):,} rows at once, scaled to "
        f"{chunk_rows:,}-row chunks: {copy_s * 1000:.0f} ms by COPY, "
        f"{server_s * 1000:.0f} ms in the database"
        if chunk_rows
        else f"{src.jobs} reads of {max(src.rows, tgt.rows):,} rows at once took "
        f"{copy_s * 1000:.0f} ms by COPY, {server_s * 1000:.0f} ms in the database "
        "beyond the round trip"
    )
    if server_s < copy_s * SERVER_MARGIN:
        return Choice(
            "server",
            f"server: {timing} ({link}): hashing in the database moves only sums (64-bit digests)",
            measured,
        )
    return Choice("copy", f"copy: {timing} ({link})", measured)


def _side(p: SideProbe) -> dict[str, Any]:
    d = asdict(p)
    d["copy_s"], d["server_s"] = round(p.copy_s, 4), round(p.server_s, 4)
    d["rtt_ms"] = round(p.rtt_ms, 2)
    d["mbit_s"] = round(p.mbit_s, 1)
    d["link_mbit_s"] = round(p.link_mbit_s, 1)
    d["base_s"] = round(p.base_s, 4)
    return d


async def _prepare(conn: asyncpg.Connection, text: str) -> tuple[float, PreparedStatement]:
    """Prepare ``text``: one round trip, timed (the server's parse of it is small)."""
    t0 = time.perf_counter()
    stmt = await conn.prepare(text)
    return time.perf_counter() - t0, stmt


async def _round_trips(conn: asyncpg.Connection, n: int) -> float:
    """The best of ``n`` bare round trips on ``conn`` (the simple protocol, a statement
    the server answers at once)."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        await conn.execute("SELECT 1")
        best = min(best, time.perf_counter() - t0)
    return best


async def _link(conn: asyncpg.Connection, rtt_ms: float) -> float:
    """Mbit/s of the link alone (best of three; one when clearly slow): a string the
    server makes at no cost, by the simple protocol (one round trip, nothing prepared)."""
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        await conn.execute(LINK_SQL)
        took = max(time.perf_counter() - t0 - rtt_ms / 1000, 1e-6)
        best = max(best, LINK_BYTES * 8 / took / 1e6)
        if best < FAST_LINK_MBIT / 4 or best >= FAST_LINK_MBIT:
            break
    return best


async def _copy_read(
    conn: asyncpg.Connection, text: str, params: Sequence[object]
) -> tuple[int, int]:
    """One COPY digest of the probe range as the comparison computes it: (rows, bytes)."""
    h = xxhash.xxh3_128()
    nbytes = 0

    async def sink(data: bytes | bytearray) -> None:
        nonlocal nbytes
        h.update(data)
        nbytes += len(data)

    status = await conn.copy_from_query(text, *params, output=sink, format="binary")
    return int(status.rsplit(" ", 1)[1]), nbytes


async def _all(aws: Sequence[Awaitable[T]]) -> tuple[list[T], BaseException | None]:
    """Await all of ``aws``: what succeeded (in order), and the first error. A held
    connection is given back only once nothing runs on it (asyncpg refuses to reset one
    mid-statement), and what was acquired before an error is given back too."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    error = next((r for r in results if isinstance(r, BaseException)), None)
    return ok, error


async def _settled(aws: Sequence[Awaitable[T]]) -> list[T]:
    """:func:`_all`, raising its error."""
    ok, error = await _all(aws)
    if error is not None:
        raise error
    return ok


async def _timed(reads: Sequence[Awaitable[T]]) -> tuple[float, T]:
    t0 = time.perf_counter()
    results = await _settled(reads)
    return time.perf_counter() - t0, results[0]


@dataclass
class _Side:
    """One side's connections, held through the probe: each read then costs its own
    round trip only (no pool reset between), and connections a run opens anyway are
    opened before anything is timed."""

    pool: asyncpg.Pool
    version: int
    conns: list[asyncpg.Connection]
    rtt_ms: float = 0.0
    link: float = 0.0
    stmts: list[PreparedStatement] = field(default_factory=list)

    @classmethod
    async def open(cls, pool: asyncpg.Pool, version: int, jobs: int, digest_sql: str) -> _Side:
        conns, error = await _all(
            [pool.acquire() for _ in range(max(1, min(jobs, pool.get_max_size())))]
        )
        side = cls(pool, version, conns)
        try:
            if error is not None:
                raise error
            await side._start(digest_sql)
        except BaseException:
            await side.close()
            raise
        return side

    async def _start(self, digest_sql: str) -> None:
        # preparing the in-database digest is one round trip on each connection (the
        # timed reads then skip the preparing), and RTT_SAMPLES - 1 bare ones follow: a
        # busy client reads one answer milliseconds late, so the side's round trip is
        # the best of them all
        prepared = await _settled([_prepare(c, digest_sql) for c in self.conns])
        again = await _settled([_round_trips(c, RTT_SAMPLES - 1) for c in self.conns])
        self.rtt_ms = min([took for took, _ in prepared] + again) * 1000
        self.stmts = [stmt for _, stmt in prepared]
        if self.rtt_ms < LINK_RTT_MS:
            self.link = await _link(self.conns[0], self.rtt_ms)

    async def close(self) -> None:
        await _all([self.pool.release(c) for c in self.conns])


async def probe(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    sql: TableSQL,
    rng: KeyRange,
    versions: tuple[int, int],
    jobs: int,
) -> tuple[SideProbe, SideProbe]:
    """Both sides at once, as a run reads them: round trips (and, under ``LINK_RTT_MS``,
    the link alone), then concurrent COPY digests of ``rng`` per side, one per
    connection a run reads with, then as many in-database digests."""
    digest_sql, digest_params = sql.digest(rng)
    copy_sql, copy_params = sql.copy_rows(rng)
    sides, error = await _all(
        [_Side.open(p, v, jobs, digest_sql) for p, v in zip(pools, versions, strict=True)]
    )
    try:
        if error is not None:
            raise error
        return await _measure((sides[0], sides[1]), copy_sql, copy_params, digest_params)
    finally:
        await asyncio.gather(*(s.close() for s in sides))


async def _measure(
    sides: tuple[_Side, _Side],
    copy_sql: str,
    copy_params: Sequence[object],
    digest_params: Sequence[object],
) -> tuple[SideProbe, SideProbe]:
    if min(s.link for s in sides) >= FAST_LINK_MBIT:
        fast = [SideProbe(s.version, s.rtt_ms, 0, len(s.conns), 0.0, 0, 0.0, s.link) for s in sides]
        return fast[0], fast[1]
    # asyncpg has the server quote a COPY's parameters: two more round trips a read
    extra = 2 if copy_params else 0
    copies: list[list[tuple[float, tuple[int, int]]]] = [[], []]
    servers: list[list[float]] = [[], []]
    # Rounds while they are cheap, the best of each kept (a busy machine is noisy); over
    # a slow link one round costs a few percent of a run already.
    started = time.perf_counter()
    for round_ in range(MAX_ROUNDS):
        spent = time.perf_counter() - started
        if round_ >= MIN_ROUNDS and spent * (round_ + 1) / round_ > ROUNDS_BUDGET_S:
            break  # another round would take the probe past its budget
        for side, result in enumerate(
            await _settled(
                [_timed([_copy_read(c, copy_sql, copy_params) for c in s.conns]) for s in sides]
            )
        ):
            copies[side].append(result)
        for side, (took, _row) in enumerate(
            await _settled([_timed([st.fetchrow(*digest_params) for st in s.stmts]) for s in sides])
        ):
            servers[side].append(took)
    src, tgt = (
        SideProbe(
            s.version, s.rtt_ms, min(c)[1][0], len(s.conns), min(c)[0], min(c)[1][1], min(srv),
            s.link, (1 + release_rounds(s.version)) * s.rtt_ms / 1000, extra,
        )
        for s, c, srv in zip(sides, copies, servers, strict=True)
    )  # fmt: skip
    return src, tgt


async def choose(
    choice: str,
    compare: Compare,
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    sqls: Sequence[TableSQL],
    versions: tuple[int, int],
    chunk_rows: int,
    jobs: int,
) -> Choice | None:
    """The ``auto`` choice, measured on the first chunk of the biggest keyed table; None
    for any other ``--digest`` (it is used as given)."""
    if choice != "auto":
        return None
    plans = [s.plan for s in sqls]
    inexact = server_inexact(plans, compare)
    keyed = [s for s in sqls if not s.plan.multiset]
    if inexact or not keyed or min(versions) < 110000:
        return decide(*versions, inexact, None)
    sql = max(keyed, key=lambda s: s.plan.estimated_rows)
    try:
        hi = await PostgresSource(pools[0], sql, "copy").boundary(None, min(chunk_rows, PROBE_ROWS))
        probes = await probe(pools, sql, KeyRange(None, hi), versions, jobs)
    except DB_ERRORS as e:  # the table's own trouble shows when it is compared
        return Choice("copy", f"copy: the link could not be measured ({e})")
    if probes[0].rows == 0 and probes[0].link_mbit_s < FAST_LINK_MBIT:
        return decide(*versions, inexact, None)
    return decide(*versions, inexact, probes, chunk_rows)
