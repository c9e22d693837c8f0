"""CPU of the journal calls of one TPC-B transaction, no database.

    python benchmarks/journal_write_bench.py [--transactions 3000] [--fsync never commit]

Drives :class:`~replverify.journal.writer.JournalWriter` as the failover pool does for
pgbench's TPC-B transaction (``tpcb_bench.py``): four statement intents, each followed by
its row record (held back, written with the next record), the flush before COMMIT and the
commit marker, from one asyncio task. Prints wall and process CPU (all threads, the fsync
thread's included) per transaction for each ``--fsync`` policy. Compare two versions by
alternating processes (``PYTHONPATH=<other checkout>``): one run is noisy on a shared
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import tempfile
import time

from replverify.journal.writer import FsyncPolicy, JournalTransaction, JournalWriter

try:  # the pool keeps one template per statement (its intent's constant part, encoded)
    from replverify.journal.writer import IntentTemplate
except ImportError:  # a version from before templates (PYTHONPATH=<other checkout>)
    IntentTemplate = None  # type: ignore[assignment,misc]

UPDATES = (
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
)
INSERT = (
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
    " VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
)
META = {"endpoint": "primary"}


async def run(policy: FsyncPolicy, transactions: int, directory: str) -> tuple[float, float]:
    writer = JournalWriter(os.path.join(directory, f"journal-{policy}.jsonl"), fsync=policy)

    templates: dict[str, object] = {}

    async def intent(tx: JournalTransaction, op: str, table: str, q: str, args: tuple) -> int:
        """The intent as the failover pool journals it."""
        if IntentTemplate is None:
            return await tx.intent_statement_async(op, table, q, args, meta=META)  # type: ignore[arg-type]
        template = templates.get(q)
        if template is None:
            template = templates[q] = IntentTemplate(op, table, q, META)
        return await tx.intent_from_async(template, args)  # type: ignore[arg-type]

    async def txn(i: int) -> None:
        tx = writer.transaction(defer=True)
        for q in UPDATES:
            of = await intent(tx, "update", "public.t", q, (i, 5))
            tx.effect_rows(of, "update", "public.t", [({"aid": i}, {"abalance": 17})])
        of = await intent(tx, "insert", "public.h", INSERT, (1, 2, i, 5))
        now = dt.datetime.now(dt.timezone.utc)
        row = {"tid": 1, "bid": 2, "aid": i, "delta": 5, "mtime": now}
        tx.effect_rows(of, "insert", "public.h", [(row, {"filler": None})])
        await tx.flush_async()
        await tx.commit_async()

    try:
        for i in range(200):  # shapes checked, caches warm
            await txn(i)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(transactions):
            await txn(i)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        writer.close()
    return 1e6 * wall / transactions, 1e6 * cpu / transactions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=3000)
    p.add_argument("--fsync", nargs="+", default=["never", "commit"],
                   choices=["never", "commit", "always"])  # fmt: skip
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="journal-write-") as d:
        for policy in a.fsync:
            wall, cpu = asyncio.run(run(policy, a.transactions, d))
            print(f"{policy:<7} {wall:8.1f} µs wall  {cpu:7.1f} µs CPU per transaction")


if __name__ == "__main__":
    main()
