"""Benchmark ``--executor``: in-process against ``local:1`` and ``local:2`` Dask workers.

    python benchmarks/scale.py --rows 1000000 [--rows 5000000] [--repeat 2]

Starts two independent local PostgreSQL clusters, loads the ``narrow`` table (7 columns)
identically on both, and times ``replverify.api.diff`` in-process and on a local Dask
cluster of 1 and 2 worker processes (started before the timing: a cluster's start-up is
reported apart). Also measures the fixed cost of one task (a 1-row table compared as one
task, against the same in-process) and the CPU both servers spend per row, which gives
the scaling model in ``benchmarks/README.md``. Writes Markdown + JSON to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from run import server_cpu  # type: ignore[import-not-found]

from replverify.api import DiffOptions, diff
from replverify.testing.clusters import LocalClusters
from replverify.testing.sample import BENCH_SQL

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def load(dsn: str, name: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
        await conn.execute(BENCH_SQL.format(name=name, rows=rows))
        await conn.execute(f"VACUUM ANALYZE {name}")
    finally:
        await conn.close()


async def timed(src: str, tgt: str, options: DiffOptions, lc: LocalClusters) -> dict[str, Any]:
    cpu0 = server_cpu((lc.primary, lc.other))
    t0 = time.perf_counter()
    report = await diff(src, tgt, options)
    wall = time.perf_counter() - t0
    cpu1 = server_cpu((lc.primary, lc.other))
    (table,) = report.tables
    assert report.status == "consistent" and report.complete, report.notes
    return {
        "wall_s": round(wall, 3),
        "rows": table.rows_source,
        "chunks": table.chunks,
        "server_cpu_s": round(cpu1[0] - cpu0[0], 3) if cpu0 and cpu1 else None,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, action="append", help="table sizes (repeatable)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    sizes = args.rows or [1_000_000]
    import distributed

    lc = LocalClusters()
    lc.start()
    results: dict[str, Any] = {"sizes": {}, "cpus": os.cpu_count()}
    try:
        assert lc.primary is not None and lc.other is not None
        src_base, tgt_base = lc.primary.dsn(), lc.other.dsn()
        await load(src_base, "tiny", 1)
        await load(tgt_base, "tiny", 1)
        clusters: dict[str, Any] = {}
        for n in (1, 2):
            t0 = time.perf_counter()
            clusters[f"local:{n}"] = await distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, asynchronous=True,
                dashboard_address=":0",
            )  # fmt: skip
            results[f"startup_local:{n}_s"] = round(time.perf_counter() - t0, 2)
        executors = {"inprocess": "inprocess"} | {
            name: "dask://" + c.scheduler_address.removeprefix("tcp://")
            for name, c in clusters.items()
        }
        # the fixed cost of one task: a 1-row table, one task, against in-process
        tiny: dict[str, float] = {}
        for name, ex in executors.items():
            walls = [
                (await timed(src_base, tgt_base, DiffOptions(tables=("tiny",), executor=ex), lc))[
                    "wall_s"
                ]
                for _ in range(5)
            ]
            tiny[name] = statistics.median(walls)
        results["tiny_table_wall_s"] = tiny
        for rows in sizes:
            log(f"loading {rows:,} rows on both servers")
            await load(src_base, "narrow", rows)
            await load(tgt_base, "narrow", rows)
            per: dict[str, Any] = {}
            for name, ex in executors.items():
                runs = []
                for _ in range(args.repeat):
                    r = await timed(
                        src_base, tgt_base, DiffOptions(tables=("narrow",), executor=ex), lc
                    )
                    log(f"{rows:,} rows, {name}: {r}")
                    runs.append(r)
                best = min(runs, key=lambda r: r["wall_s"])
                best["rows_per_s"] = round(best["rows"] / best["wall_s"])
                per[name] = best
            results["sizes"][str(rows)] = per
        for c in clusters.values():
            await c.close()
    finally:
        lc.close()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d-%H%M%S")
    out = HERE / "results" / f"scale-{stamp}.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))
    log(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
