"""Profile ``replverify diff`` against the bare binary COPY of both sides, alternating in
one process (so that the ratio is measured under the same machine load):

    python benchmarks/profile_diff.py SRC_DSN TGT_DSN --repeat 3 [--profile out.txt]

Prints each run's seconds, the medians and their ratio, and with ``--profile`` writes a
pyinstrument profile of one more diff run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import asyncpg

from replverify.api import DiffOptions, diff


async def bare_copy(dsn: str, table: str, key: str) -> int:
    conn = await asyncpg.connect(dsn)
    n = 0

    async def sink(data: bytes) -> None:
        nonlocal n
        n += len(data)

    try:
        await conn.copy_from_query(
            f"SELECT * FROM {table} ORDER BY {key}", output=sink, format="binary"
        )
    finally:
        await conn.close()
    return n


async def copy_both(src: str, tgt: str, table: str, key: str) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(bare_copy(src, table, key), bare_copy(tgt, table, key))
    return time.perf_counter() - t0


async def one_diff(src: str, tgt: str, options: DiffOptions) -> tuple[float, int]:
    t0 = time.perf_counter()
    report = await diff(src, tgt, options)
    return time.perf_counter() - t0, sum(t.differences_total for t in report.tables)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("source")
    ap.add_argument("target")
    ap.add_argument("--table", default="public.t")
    ap.add_argument("--key", default="id")
    ap.add_argument("--digest", default="copy")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", type=Path)
    args = ap.parse_args()
    options = DiffOptions(tables=(args.table,), digest=args.digest, jobs=args.jobs)
    copies, diffs = [], []
    found = 0
    for _ in range(args.repeat):
        copies.append(asyncio.run(copy_both(args.source, args.target, args.table, args.key)))
        took, found = asyncio.run(one_diff(args.source, args.target, options))
        diffs.append(took)
        print(f"copy {copies[-1]:.3f} s   diff {diffs[-1]:.3f} s   differences {found}")
    c, d = statistics.median(copies), statistics.median(diffs)
    print(f"median: copy {c:.3f} s, diff {d:.3f} s, ratio {d / c:.3f}")
    if args.profile:
        from pyinstrument import Profiler

        with Profiler(async_mode="enabled") as prof:
            asyncio.run(one_diff(args.source, args.target, options))
        args.profile.write_text(prof.output_text(unicode=True, show_all=False))
        print(f"profile: {args.profile}")


if __name__ == "__main__":
    main()
