"""``--digest auto``: choose between binary COPY digests (hash here; the table crosses the
link) and in-database digests (hash there; only sums cross), from what is measured at
start: each side's round trip, the time to read one chunk both ways (so the link's
throughput and the servers' hashing speed), and the servers' versions.

:func:`decide` is pure; :func:`probe` measures one side.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import asyncpg
import xxhash

from replverify.db.connect import DB_ERRORS
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
LINK_SQL = "SELECT repeat('x', $1::int)"
MIN_ROUNDS, MAX_ROUNDS = 1, 5
#: after MIN_ROUNDS, another round only while the probe has taken less than this
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
    link_mbit_s: float = 0.0
    #: ``jobs`` concurrent ``SELECT 1`` through the pool: what every read costs besides
    #: its work (round trips of the statement and of the pool's reset)
    base_s: float = 0.0

    def chunk_s(self, took: float, chunk_rows: int) -> float:
        """A probe read's time scaled to a chunk: the fixed cost once, the work by rows."""
        base = min(self.base_s, took)
        return base + (took - base) * max(chunk_rows / max(self.rows, 1), 1.0)

    @property
    def copy_work_s(self) -> float:
        return max(self.copy_s - self.rtt_ms / 1000, 1e-6)

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
        copy_s = max(p.chunk_s(p.copy_s, chunk_rows) for p in probes)
        server_s = max(p.chunk_s(p.server_s, chunk_rows) for p in probes)
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


async def _rtt(pool: asyncpg.Pool) -> float:
    """Best of three ``SELECT 1`` round trips, in ms."""
    async with pool.acquire() as conn:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            await conn.fetchval("SELECT 1")
            best = min(best, time.perf_counter() - t0)
    return best * 1000


async def _link(pool: asyncpg.Pool, rtt_ms: float) -> float:
    """Mbit/s of the link alone (best of three; one when clearly slow): a string the
    server makes at no cost."""
    best = 0.0
    async with pool.acquire() as conn:
        for _ in range(3):
            t0 = time.perf_counter()
            await conn.fetchval(LINK_SQL, LINK_BYTES)
            took = max(time.perf_counter() - t0 - rtt_ms / 1000, 1e-6)
            best = max(best, LINK_BYTES * 8 / took / 1e6)
            if best < FAST_LINK_MBIT / 4 or best >= FAST_LINK_MBIT:
                break
    return best


async def _nothing(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def _copy_read(pool: asyncpg.Pool, sql: TableSQL, rng: KeyRange) -> tuple[int, int]:
    """One COPY digest of ``rng`` as the comparison computes it: (rows, bytes)."""
    h = xxhash.xxh3_128()
    nbytes = 0

    async def sink(data: bytes | bytearray) -> None:
        nonlocal nbytes
        h.update(data)
        nbytes += len(data)

    text, params = sql.copy_rows(rng)
    async with pool.acquire() as conn:
        status = await conn.copy_from_query(text, *params, output=sink, format="binary")
    return int(status.rsplit(" ", 1)[1]), nbytes


async def _timed(jobs: int, read: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(read() for _ in range(jobs)))
    return time.perf_counter() - t0, results[0]


async def probe(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    sql: TableSQL,
    rng: KeyRange,
    versions: tuple[int, int],
    jobs: int,
) -> tuple[SideProbe, SideProbe]:
    """Both sides at once, as a run reads them: round trips, then ``jobs`` concurrent
    COPY digests of ``rng`` per side, then ``jobs`` concurrent in-database digests."""
    rtts = await asyncio.gather(*(_rtt(p) for p in pools))
    links = await asyncio.gather(*(_link(p, rtt) for p, rtt in zip(pools, rtts, strict=True)))
    if min(links) >= FAST_LINK_MBIT:
        fast = [
            SideProbe(v, rtt, 0, jobs, 0.0, 0, 0.0, link)
            for v, rtt, link in zip(versions, rtts, links, strict=True)
        ]
        return fast[0], fast[1]
    copies: list[list[tuple[float, tuple[int, int]]]] = [[], []]
    servers: list[list[float]] = [[], []]
    # Rounds while they are cheap, the best of each kept (a busy machine is noisy); over
    # a slow link one round costs several percent of a run already.
    bases: list[list[float]] = [[], []]
    started = time.perf_counter()
    for round_ in range(MAX_ROUNDS):
        if round_ >= MIN_ROUNDS and time.perf_counter() - started > ROUNDS_BUDGET_S:
            break
        for side, result in enumerate(
            await asyncio.gather(
                *(_timed(jobs, functools.partial(_copy_read, p, sql, rng)) for p in pools)
            )
        ):
            copies[side].append(result)
        for side, (took, _digest) in enumerate(
            await asyncio.gather(
                *(
                    _timed(jobs, functools.partial(PostgresSource(p, sql, "server").digest, rng))
                    for p in pools
                )
            )
        ):
            servers[side].append(took)
        for side, (took, _none) in enumerate(
            await asyncio.gather(*(_timed(jobs, functools.partial(_nothing, p)) for p in pools))
        ):
            bases[side].append(took)
    src, tgt = (
        SideProbe(v, rtt, min(c)[1][0], jobs, min(c)[0], min(c)[1][1], min(srv), link, min(b))
        for v, rtt, c, srv, link, b in zip(
            versions, rtts, copies, servers, links, bases, strict=True
        )
    )
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
