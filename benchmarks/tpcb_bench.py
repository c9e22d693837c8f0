"""What journaling costs: pgbench's TPC-B transaction through five clients of one server.

    python benchmarks/tpcb_bench.py --clients 8 --seconds 10 --repeat 3 --scale 8

Starts a local primary with a streaming standby (``replverify.testing.clusters``; the servers'
defaults, fsync on), loads it with ``pgbench -i -s SCALE`` and runs pgbench's built-in
"tpcb-like" transaction (UPDATE accounts, SELECT its balance, UPDATE tellers, UPDATE
branches, INSERT INTO history with CURRENT_TIMESTAMP) from ``--clients`` concurrent tasks
for ``--seconds`` through:

* ``asyncpg``        - a plain asyncpg pool (``conn.transaction()``): the yardstick;
* ``failover``       - :class:`~replverify.failover.pool.FailoverPool` without a journal;
* ``failover+journal`` - the same with the journal at its default fsync policy
  (``commit``): each write's intent and post-images, a fsync'd marker per transaction;
* ``sqlalchemy``     - an async SQLAlchemy engine (asyncpg dialect), no journal;
* ``sqlalchemy+journal`` - the same with :func:`replverify.failover.sqlalchemy.journal_engine`.

The modes run in turn, ``--repeat`` rounds, so that a noisy neighbour hits all alike;
the report gives the median round of each (transactions/s, p50 and p99 latency) and the
journal's cost relative to the plain pool. Results go to
``benchmarks/results/tpcb-<timestamp>.json`` and ``.md`` unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from replverify.failover.pool import FailoverPool
from replverify.testing.clusters import LocalClusters, find_bindir

RESULTS = Path(__file__).parent / "results"

UPDATE_ACCOUNT = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
SELECT_ACCOUNT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
UPDATE_TELLER = "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2"
UPDATE_BRANCH = "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2"
INSERT_HISTORY = (
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
    " VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
)

Txn = Callable[[int, int, int, int], Awaitable[None]]


def params(rng: random.Random, scale: int) -> tuple[int, int, int, int]:
    return (
        rng.randint(1, 100_000 * scale),
        rng.randint(1, 10 * scale),
        rng.randint(1, scale),
        rng.randint(-5000, 5000),
    )


async def run_clients(txn: Txn, clients: int, seconds: float, scale: int) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(n: int) -> None:
        rng = random.Random(n)
        while time.perf_counter() < stop:
            aid, tid, bid, delta = params(rng, scale)
            t0 = time.perf_counter()
            await txn(aid, tid, bid, delta)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "transactions": len(latencies),
        "tps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


async def mode_asyncpg(dsn: str, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=a.clients, max_size=a.clients)
    assert pool is not None

    async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(UPDATE_ACCOUNT, delta, aid)
            await conn.fetchval(SELECT_ACCOUNT, aid)
            await conn.execute(UPDATE_TELLER, delta, tid)
            await conn.execute(UPDATE_BRANCH, delta, bid)
            await conn.execute(INSERT_HISTORY, tid, bid, aid, delta)

    try:
        return await run_clients(txn, a.clients, a.seconds, a.scale)
    finally:
        await pool.close()


async def mode_failover(
    dsn: str, standby: str, a: argparse.Namespace, tmp: Path, *, journal: bool
) -> dict[str, Any]:
    path = tmp / f"journal-{time.monotonic_ns()}.jsonl"
    pool = await FailoverPool.connect(
        dsn,
        standby,
        journal=path if journal else None,
        min_size=a.clients,
        max_size=a.clients,
        fsync=a.fsync,
    )

    async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
        async with pool.transaction() as tx:
            await tx.execute(UPDATE_ACCOUNT, delta, aid)
            await tx.fetchval(SELECT_ACCOUNT, aid)
            await tx.execute(UPDATE_TELLER, delta, tid)
            await tx.execute(UPDATE_BRANCH, delta, bid)
            await tx.execute(INSERT_HISTORY, tid, bid, aid, delta)

    try:
        out = await run_clients(txn, a.clients, a.seconds, a.scale)
    finally:
        await pool.close()
    if journal:
        out["journal_bytes_per_txn"] = path.stat().st_size / max(1, out["transactions"])
        path.unlink()
    return out


async def mode_sqlalchemy(
    dsn: str, a: argparse.Namespace, tmp: Path, *, journal: bool
) -> dict[str, Any]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from replverify.failover.sqlalchemy import journal_engine

    engine = create_async_engine(
        dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
        pool_size=a.clients,
        max_overflow=0,
    )
    path = tmp / f"journal-{time.monotonic_ns()}.jsonl"
    hooks = journal_engine(engine, path, fsync=a.fsync) if journal else None
    stmts = [
        text("UPDATE pgbench_accounts SET abalance = abalance + :d WHERE aid = :aid"),
        text("SELECT abalance FROM pgbench_accounts WHERE aid = :aid"),
        text("UPDATE pgbench_tellers SET tbalance = tbalance + :d WHERE tid = :tid"),
        text("UPDATE pgbench_branches SET bbalance = bbalance + :d WHERE bid = :bid"),
        text(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
            " VALUES (:tid, :bid, :aid, :d, CURRENT_TIMESTAMP)"
        ),
    ]

    async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
        p = {"aid": aid, "tid": tid, "bid": bid, "d": delta}
        async with engine.begin() as conn:
            await conn.execute(stmts[0], {"d": delta, "aid": aid})
            (await conn.execute(stmts[1], {"aid": aid})).scalar()
            await conn.execute(stmts[2], {"d": delta, "tid": tid})
            await conn.execute(stmts[3], {"d": delta, "bid": bid})
            await conn.execute(stmts[4], p)

    try:
        out = await run_clients(txn, a.clients, a.seconds, a.scale)
    finally:
        await engine.dispose()
        if hooks is not None:
            hooks.journal.close()
    if journal:
        out["journal_bytes_per_txn"] = path.stat().st_size / max(1, out["transactions"])
        path.unlink()
    return out


RANGE_UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid <= $2"


def _hwm_kib() -> int:
    """Peak resident set size since the last reset (Linux VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _reset_hwm() -> int:
    """Reset the peak to the current RSS (``clear_refs`` 5); the current RSS, KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _hwm_kib()


async def range_update(dsn: str, standby: str, rows: int, tmp: Path) -> dict[str, Any]:
    """One UPDATE touching ``rows`` rows: plain asyncpg (``execute``, no rows back), and
    through the journaling pool (every post-image journaled, streamed 1000 at a time)."""
    out: dict[str, Any] = {"rows": rows}
    conn = await asyncpg.connect(dsn)
    try:
        base = _reset_hwm()
        t0 = time.perf_counter()
        await conn.execute(RANGE_UPDATE, 1, rows)
        out["asyncpg_s"] = time.perf_counter() - t0
        out["asyncpg_peak_kib"] = _hwm_kib() - base
    finally:
        await conn.close()
    path = tmp / "range.jsonl"
    pool = await FailoverPool.connect(dsn, standby, journal=path)
    try:
        base = _reset_hwm()
        t0 = time.perf_counter()
        await pool.execute(RANGE_UPDATE, 1, rows)
        out["journaled_s"] = time.perf_counter() - t0
        out["journaled_peak_kib"] = _hwm_kib() - base
    finally:
        await pool.close()
    out["journal_bytes"] = path.stat().st_size
    out["journal_lines"] = sum(1 for _ in path.open("rb"))
    path.unlink()
    print(
        f"range UPDATE of {rows} rows: asyncpg {out['asyncpg_s']:.2f} s"
        f" (+{out['asyncpg_peak_kib']} KiB peak), journaled {out['journaled_s']:.2f} s"
        f" (+{out['journaled_peak_kib']} KiB peak, {out['journal_lines']} lines)",
        flush=True,
    )
    return out


MODES = ("asyncpg", "failover", "failover+journal", "sqlalchemy", "sqlalchemy+journal")


async def bench(a: argparse.Namespace) -> dict[str, Any]:
    lc = LocalClusters(use_env=False).start_empty()
    try:
        pair = await asyncio.to_thread(lc.fresh_pair)
        dsn, standby = pair.primary_dsn, pair.standby_dsn
        subprocess.run(
            [str(find_bindir() / "pgbench"), "-i", "-q", "-s", str(a.scale), dsn],
            check=True,
            capture_output=True,
        )
        tmp = Path(tempfile.mkdtemp(prefix="tpcb-journal-", dir=a.journal_dir))
        rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in a.modes}
        for r in range(a.repeat):
            for m in a.modes:
                if m == "asyncpg":
                    res = await mode_asyncpg(dsn, a, tmp)
                elif m.startswith("failover"):
                    res = await mode_failover(dsn, standby, a, tmp, journal="journal" in m)
                else:
                    res = await mode_sqlalchemy(dsn, a, tmp, journal="journal" in m)
                rounds[m].append(res)
                print(
                    f"round {r + 1} {m:<20} {res['tps']:8.1f} tps"
                    f"  p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms",
                    flush=True,
                )
        ranged = await range_update(dsn, standby, a.range_rows, tmp) if a.range_rows else None
        os.rmdir(tmp)
    finally:
        lc.close()
    medians = {}
    for m, rs in rounds.items():
        best = sorted(rs, key=lambda x: x["tps"])[len(rs) // 2]
        medians[m] = {**best, "tps_all": [round(x["tps"], 1) for x in rs]}
    base = medians.get("asyncpg", {}).get("tps")
    for m in medians.values():
        if base:
            m["cost_vs_asyncpg"] = 1 - m["tps"] / base
    return {
        "benchmark": "tpcb",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "clients": a.clients,
        "seconds": a.seconds,
        "repeat": a.repeat,
        "scale": a.scale,
        "journal_dir": a.journal_dir or tempfile.gettempdir(),
        "fsync": a.fsync,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "medians": medians,
        "rounds": rounds,
        "range_update": ranged,
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# TPC-B through the journal ({doc['at']})",
        "",
        f"{doc['clients']} clients, {doc['seconds']} s per run, {doc['repeat']} rounds"
        f" (median round shown), pgbench scale {doc['scale']}; primary with a streaming"
        f" standby, fsync on; journal in {doc['journal_dir']} (fsync policy `{doc['fsync']}`).",
        f"Machine: {doc['machine']['cpus']} CPUs, load average at the end"
        f" {', '.join(f'{x:.1f}' for x in doc['machine']['load_avg'])}.",
        "",
        "| mode | tps | p50 ms | p99 ms | cost vs asyncpg | journal bytes/txn | tps per round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for m, r in doc["medians"].items():
        cost = r.get("cost_vs_asyncpg")
        jb = r.get("journal_bytes_per_txn")
        lines.append(
            f"| {m} | {r['tps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
            f" {'' if cost is None else f'{100 * cost:+.1f}%'} |"
            f" {'' if jb is None else f'{jb:.0f}'} | {', '.join(map(str, r['tps_all']))} |"
        )
    r = doc.get("range_update")
    if r:
        lines += [
            "",
            f"One `UPDATE ... WHERE aid <= {r['rows']}` ({r['rows']:,} rows):"
            f" plain asyncpg {r['asyncpg_s']:.2f} s; through the journaling pool"
            f" {r['journaled_s']:.2f} s, {r['journal_lines']:,} journal lines"
            f" ({r['journal_bytes'] / 2**20:.1f} MiB), peak memory growth"
            f" {r['journaled_peak_kib'] / 1024:.1f} MiB (rows streamed 1000 at a time).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--journal-dir", default=None, help="where the journals go (default /tmp)")
    p.add_argument("--range-rows", type=int, default=100_000, help="0: skip the range UPDATE")
    p.add_argument("--fsync", default="commit", choices=["commit", "always", "never"])
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args()
    doc = asyncio.run(bench(a))
    text = markdown(doc)
    print(text)
    if not a.no_save:
        RESULTS.mkdir(exist_ok=True)
        stem = RESULTS / f"tpcb-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
        print(f"saved {stem}.json and .md")


if __name__ == "__main__":
    main()
