"""``--digest auto``: choose between binary COPY digests (hash here; the table crosses the
link) and in-database digests (hash there; only sums cross), from what is measured at
start: each side's round trip, the time to read one chunk both ways (so the link's
throughput and the servers' hashing speed), and the servers' versions.

:func:`decide` is pure; :func:`probe` measures one side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

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
_FLOAT_BASES = frozenset({"float4", "float8"})
_GEOMETRIC = frozenset({"point", "line", "lseg", "box", "path", "polygon", "circle"})
#: ``server`` must be this much faster than ``copy`` by the probe to be chosen: a near
#: tie goes to ``copy`` (128-bit digests, differences located in the bytes already read).
SERVER_MARGIN = 0.9


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
    """What one side measured: seconds, bytes."""

    version_num: int
    rtt_ms: float
    #: rows of the probe chunk, and how long its COPY digest and server digest took
    rows: int
    copy_s: float
    copy_bytes: int
    server_s: float

    @property
    def mbit_s(self) -> float:
        """Throughput of the COPY read, its round trip taken off."""
        busy = max(self.copy_s - self.rtt_ms / 1000, 1e-6)
        return self.copy_bytes * 8 / busy / 1e6


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
    # Both sides are read at once: a run takes as long as the slower side of each chunk.
    copy_s = max(src.copy_s, tgt.copy_s)
    server_s = max(src.server_s, tgt.server_s)
    measured = {
        "probe_rows": max(src.rows, tgt.rows),
        "source": _side(src),
        "target": _side(tgt),
        "chunk_copy_s": round(copy_s, 4),
        "chunk_server_s": round(server_s, 4),
    }
    slow = max((src, tgt), key=lambda p: p.copy_s)
    link = f"rtt {slow.rtt_ms:.1f} ms, {slow.mbit_s:,.0f} Mbit/s to the slower side"
    timing = (
        f"one chunk took {copy_s * 1000:.0f} ms by COPY, {server_s * 1000:.0f} ms in the database"
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
    return d


async def probe(pool: asyncpg.Pool, sql: TableSQL, rng: KeyRange, version_num: int) -> SideProbe:
    """Round trip (best of three ``SELECT 1``) and one chunk's digest both ways on one
    side, each as the comparison computes it."""
    async with pool.acquire() as conn:
        rtts = []
        for _ in range(3):
            t0 = time.perf_counter()
            await conn.fetchval("SELECT 1")
            rtts.append(time.perf_counter() - t0)
        h = xxhash.xxh3_128()
        nbytes = 0

        async def sink(data: bytes | bytearray) -> None:
            nonlocal nbytes
            h.update(data)
            nbytes += len(data)

        text, params = sql.copy_rows(rng)
        t0 = time.perf_counter()
        status = await conn.copy_from_query(text, *params, output=sink, format="binary")
        copy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await PostgresSource(pool, sql, "server").digest(rng)
    server_s = time.perf_counter() - t0
    rows = int(status.rsplit(" ", 1)[1])
    return SideProbe(version_num, min(rtts) * 1000, rows, copy_s, nbytes, server_s)


async def choose(
    choice: str,
    compare: Compare,
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    sqls: Sequence[TableSQL],
    versions: tuple[int, int],
    chunk_rows: int,
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
        hi = await PostgresSource(pools[0], sql, "copy").boundary(None, chunk_rows)
        rng = KeyRange(None, hi)
        probes = await asyncio.gather(
            probe(pools[0], sql, rng, versions[0]), probe(pools[1], sql, rng, versions[1])
        )
    except DB_ERRORS as e:  # the table's own trouble shows when it is compared
        return Choice("copy", f"copy: the link could not be measured ({e})")
    if probes[0].rows == 0:
        return decide(*versions, inexact, None)
    return decide(*versions, inexact, (probes[0], probes[1]))
