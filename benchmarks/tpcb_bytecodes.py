"""Python bytecodes the client executes per TPC-B transaction, by function: a measure of
the client's work that other jobs on the machine do not change.

    python benchmarks/tpcb_bytecodes.py [--transactions 200] [--top 25]

The CPU time per transaction that ``tpcb_bench.py`` reports swings with the load of a
shared machine (the same code measured 450-1100 µs a transaction within an hour); the
number of bytecodes does not. Runs ``tpcb_bench.py``'s transaction from one client
through plain asyncpg, ``FailoverPool`` and the journaled pool (``--fsync`` policies)
against a local primary + standby, with ``sys.settrace`` counting opcodes of the event
loop's thread (the fsync thread's are not counted; C code counts as the one opcode that
called it). Compare two versions with ``PYTHONPATH=<other checkout>``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg

from replverify.failover import FailoverPool
from replverify.testing.clusters import LocalClusters
from replverify.testing.postgres import find_bindir

sys.path.insert(0, str(Path(__file__).parent))
import tpcb_bench as tb

Counts = collections.Counter[tuple[str, str]]


def _tracer(counts: Counts) -> Any:
    def trace(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[(frame.f_code.co_filename, frame.f_code.co_name)] += 1
        return trace

    return trace


async def _statements(x: Any, aid: int, tid: int, bid: int, delta: int) -> None:
    """pgbench's TPC-B statements through an asyncpg connection or a pool transaction."""
    await x.execute(tb.UPDATE_ACCOUNT, delta, aid)
    await x.fetchval(tb.SELECT_ACCOUNT, aid)
    await x.execute(tb.UPDATE_TELLER, delta, tid)
    await x.execute(tb.UPDATE_BRANCH, delta, bid)
    await x.execute(tb.INSERT_HISTORY, tid, bid, aid, delta)


async def count(mode: str, dsn: str, standby: str, n: int, tmp: Path) -> Counts:
    """Opcodes of ``n`` transactions of ``mode`` (after 50 unmeasured ones)."""
    fsync = mode.partition("[")[2].rstrip("]") or None
    if mode == "asyncpg":
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        assert pool is not None

        async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await _statements(conn, aid, tid, bid, delta)

        close = pool.close
    else:
        journal = tmp / f"{mode}.jsonl" if fsync else None
        fpool = await FailoverPool.connect(
            dsn, standby, journal=journal, min_size=1, max_size=1, fsync=fsync or "commit"
        )

        async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
            async with fpool.transaction() as tx:
                await _statements(tx, aid, tid, bid, delta)

        close = fpool.close
    rng = random.Random(1)
    counts: Counts = collections.Counter()
    try:
        for _ in range(50):  # statements prepared, plans and templates made
            await txn(*tb.params(rng, 8))
        sys.settrace(_tracer(counts))
        try:
            for _ in range(n):
                await txn(*tb.params(rng, 8))
        finally:
            sys.settrace(None)
    finally:
        await close()
    return counts


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=200)
    p.add_argument("--top", type=int, default=25, help="functions of replverify shown")
    p.add_argument("--fsync", nargs="+", default=["never", "commit"],
                   choices=["commit", "always", "never"])  # fmt: skip
    a = p.parse_args()
    modes = ["asyncpg", "failover", *(f"failover+journal[{f}]" for f in a.fsync)]
    with LocalClusters(use_env=False).start_empty() as lc:
        pair = await asyncio.to_thread(lc.fresh_pair)
        subprocess.run(
            [str(find_bindir() / "pgbench"), "-i", "-q", "-s", "8", pair.primary_dsn],
            check=True,
            capture_output=True,
        )
        with tempfile.TemporaryDirectory(prefix="tpcb-bytecodes-") as d:
            for mode in modes:
                counts = await count(mode, pair.primary_dsn, pair.standby_dsn,
                                     a.transactions, Path(d))  # fmt: skip
                n = a.transactions
                print(f"{mode:<26} {sum(counts.values()) / n:8.0f} bytecodes per transaction")
                ours: Counts = collections.Counter()
                for (path, name), c in counts.items():
                    if "replverify" in path:
                        ours[("/".join(Path(path).parts[-2:]), name)] += c
                for (path, name), c in ours.most_common(a.top):
                    print(f"    {c / n:8.0f}  {path}:{name}")


if __name__ == "__main__":
    asyncio.run(main())
