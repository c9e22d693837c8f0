"""``replverify demo``: a real failover with real loss on a local primary + standby.

1. start a primary and a streaming hot standby (local PostgreSQL binaries, temp dir);
2. load the sample shop, let it replicate, and verify the pair is consistent;
3. cut the standby off from WAL, keep committing on the primary (these writes will be
   lost), then promote the standby: an unplanned failover;
4. diff the old primary against the new one: exactly the lost rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

from . import sample, testing
from .api import DiffOptions, diff
from .report import diff_to_text

Echo = Callable[[str], None]

LOST_WRITES = [
    "UPDATE orders SET status = 'paid', amount = amount + 10 WHERE id IN (3, 14, 15)",
    "INSERT INTO orders SELECT id + 1000000, customer, 'new', amount, placed_at, items, false, "
    "'placed during the outage' FROM orders WHERE id BETWEEN 20 AND 24",
    "DELETE FROM order_lines WHERE order_id = 42",
    "UPDATE customers SET email = 'new-address@example.com' WHERE code = 'Zürich-4'",
    "INSERT INTO events VALUES ('2026-11-23 10:00:00+00', 'checkout', '{\"order\": 1000020}')",
]


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC"})
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


async def run_demo(*, rows: int = 20_000, keep: bool = False, echo: Echo = print) -> int:
    """Run the story; returns the exit code (0 when the demo itself worked)."""
    clusters = testing.LocalClusters(use_env=False).start_empty()
    try:
        return await _story(clusters, rows=rows, keep=keep, echo=echo)
    finally:
        if not keep:
            await asyncio.to_thread(clusters.close)


async def _story(clusters: testing.LocalClusters, *, rows: int, keep: bool, echo: Echo) -> int:
    t0 = time.monotonic()
    echo("== 1. a primary and its streaming hot standby")
    pair = await asyncio.to_thread(clusters.fresh_pair)
    primary, standby = pair.primary.dsn("shop"), pair.standby.dsn("shop")
    await _execute(pair.primary_dsn, "CREATE DATABASE shop")
    await sample.setup(primary, rows)
    await testing.wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    echo(f"   primary {primary}\n   standby {standby}  ({time.monotonic() - t0:.1f} s)")

    echo("\n== 2. before the failure: is the standby complete?")
    report = await diff(primary, standby)
    echo(_indent(_last_line(diff_to_text(report))))

    echo("\n== 3. replication lag")
    echo("   (not yet: `replverify lag` arrives with the lag milestone)")

    echo("\n== 4. the standby stops receiving WAL; the primary keeps committing")
    await testing.cut_replication(pair.standby_dsn)
    await _execute(primary, *LOST_WRITES)
    for s in LOST_WRITES:
        echo(f"   committed on primary: {s[:88]}{'…' if len(s) > 88 else ''}")

    echo("\n== 5. unplanned failover: the standby is promoted")
    await testing.promote(pair.standby_dsn)
    await testing.drop_slot(pair.primary_dsn, pair.slot)
    echo("   the standby is now a primary; the old primary still holds the lost writes")

    echo("\n== 6. what did the failover lose?  replverify diff OLD_PRIMARY NEW_PRIMARY")
    report = await diff(primary, standby, DiffOptions(chunk_rows=2_000))
    echo(_indent(diff_to_text(report)))

    echo("== 7. reconcile the application's journal, replay, failback")
    echo("   (not yet: journal reconciliation, replay scripts and failback arrive later)")
    if keep:
        echo(
            f"\nclusters kept running under {clusters.base_dir}:\n"
            f"   old primary {primary}\n   new primary {standby}"
        )
    echo(f"\ndemo finished in {time.monotonic() - t0:.1f} s")
    return 0


def _indent(text: str) -> str:
    return "\n".join(("   " + line) if line else "" for line in text.rstrip("\n").split("\n"))


def _last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]
