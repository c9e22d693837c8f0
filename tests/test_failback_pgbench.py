"""``replverify failback`` on real lossy failovers with pgbench as the workload, on
default settings (``track_commit_timestamp`` off), through to ``pg_rewind``.

Each scenario: a fresh primary + standby, ``pgbench -i -s 1``, load that replicates, the
standby cut off while pgbench goes on writing on the primary, then the standby promoted.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from replverify.api import DiffOptions, diff
from replverify.cli.main import main
from replverify.ops.failback import failback
from replverify.testing.cluster import pgbench
from replverify.testing.clusters import DEFAULT_LIKE_SETTINGS, LocalClusters, Pair
from replverify.testing.servers import (
    cut_replication,
    drop_slot,
    execute,
    fetchval,
    promote,
    wait_for_replay,
)

HISTORY = "public.pgbench_history"
KEYED = ("public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers")


@dataclass
class Failover:
    pair: Pair
    old: str
    new: str


async def lossy_failover(
    clusters: LocalClusters,
    *,
    settings: dict[str, str] | None = None,
    restart_old: bool = False,
    seconds: int = 2,
) -> Failover:
    """pgbench on a primary; the standby cut off for ``seconds`` of writes, promoted."""
    pair = await asyncio.to_thread(clusters.fresh_pair, settings=settings or DEFAULT_LIKE_SETTINGS)
    port, sport = pair.primary.port, pair.standby.port
    await execute(pair.primary_dsn, "CREATE DATABASE bench")
    await asyncio.to_thread(pgbench, port, "-i", "-s", "1", "-q", dbname="bench")
    await asyncio.to_thread(pgbench, port, "-c", "2", "-T", "1", dbname="bench")
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    await cut_replication(pair.standby_dsn)
    # -n: without it pgbench first truncates pgbench_history (then OLD's deletes of the
    # replicated history rows are old-only too)
    await asyncio.to_thread(pgbench, port, "-n", "-c", "2", "-T", str(seconds), dbname="bench")
    if restart_old:
        await asyncio.to_thread(pair.primary.stop, "fast")
        await asyncio.to_thread(pair.primary.start)
    await promote(pair.standby_dsn)
    await drop_slot(pair.primary_dsn, pair.slot)
    old = pair.primary.dsn("bench")
    new = f"postgresql://postgres@127.0.0.1:{sport}/bench"
    return Failover(pair, old, new)


async def cli(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    return result.exit_code, result.output


async def test_a_no_writes_on_new_every_row_old_only_then_the_whole_runbook(
    clusters: LocalClusters, tmp_path: Path
) -> None:
    f = await lossy_failover(clusters)
    before = await diff(f.old, f.new, DiffOptions(max_diffs=None))
    lost = {str(t.table): t.differences_total for t in before.tables}
    assert lost[HISTORY] > 0 and lost["public.pgbench_accounts"] > 0, lost

    # 1. failback OLD NEW --replay-sql F (a small --max-diffs: counts and script cover all)
    script = tmp_path / "failback.sql"
    code, out = await cli(
        "failback", f.old, f.new, "--replay-sql", str(script), "--max-diffs", "3",
        "--format", "json",
    )  # fmt: skip
    assert code == 1, out
    doc = json.loads(out)
    total = sum(lost.values())
    assert doc["counts"] == {"old_only": total, "new_only": 0, "conflict": 0, "unknown": 0}
    assert len(doc["rows"]) <= 3 * len(lost)
    assert {r["origin"] for r in doc["rows"]} == {"old_only"}
    history_rows = [r for r in doc["rows"] if r["table"] == HISTORY]
    assert history_rows and all(r["change"] == "insert" for r in history_rows)
    text = script.read_text()
    assert text.startswith("-- replverify failback") and text.rstrip().endswith("COMMIT;")
    history_on_new = await fetchval(f.new, "SELECT count(*) FROM pgbench_history")

    # 2. apply F to NEW (twice: guarded, the second run changes nothing)
    await execute(f.new, text)
    await execute(f.new, text)
    assert await fetchval(f.new, "SELECT count(*) FROM pgbench_history") == (
        history_on_new + lost[HISTORY]  # type: ignore[operator]
    )

    # 3. diff OLD NEW: keyed tables identical, history rows restored
    after = await diff(f.old, f.new)
    assert after.status == "consistent", [(t.table, t.differences_total) for t in after.tables]

    # 4.-5. stop OLD, pg_rewind it onto NEW, start it as NEW's standby
    await asyncio.to_thread(f.pair.primary.rewind_onto, f.pair.standby)
    # 6. gate NEW OLD passes
    code, out = await cli("gate", f.new, f.old, "--timeout", "60")
    assert code == 0, out


async def test_b_c_new_writes_are_kept_and_conflicts_never_replayed(
    clusters: LocalClusters, tmp_path: Path
) -> None:
    f = await lossy_failover(clusters)
    changed = await diff(f.old, f.new, DiffOptions(tables=("public.pgbench_accounts",)))
    (accounts,) = changed.tables
    both = sorted(d.key[0] for d in accounts.differences)[:5]  # type: ignore[type-var]
    ids = ", ".join(str(a) for a in both)
    await execute(
        f.new,
        # (b) rows OLD never touched
        "INSERT INTO pgbench_accounts VALUES (900001, 1, 7, 'new only'), (900002, 1, 8, '')",
        "INSERT INTO pgbench_history VALUES (1, 1, 900001, 7, now(), 'new')",
        # (c) rows OLD changed after the divergence
        f"UPDATE pgbench_accounts SET abalance = abalance + 1000000 WHERE aid IN ({ids})",
    )
    report = await failback(f.old, f.new, options=DiffOptions(max_diffs=None))
    assert report.horizon is not None and report.method == "xid"
    rows = {(str(r.table), tuple(r.key.values())[:1]): r for r in report.rows}
    for aid in (900001, 900002):
        r = rows[("public.pgbench_accounts", (aid,))]
        assert (r.origin, r.change) == ("new_only", "insert")
    for aid in both:
        assert rows[("public.pgbench_accounts", (aid,))].origin == "conflict"
    counts = report.counts()
    assert counts["unknown"] == 0 and counts["conflict"] == len(both)
    assert counts["new_only"] == 3  # two accounts and one history row

    script = tmp_path / "f.sql"
    code, out = await cli("failback", f.old, f.new, "--replay-sql", str(script))
    assert code == 1, out
    query = f"SELECT array_agg(abalance ORDER BY aid) FROM pgbench_accounts WHERE aid IN ({ids})"
    kept = await fetchval(f.new, query)
    await execute(f.new, script.read_text())
    # NEW's values stay (compared as they were: pgbench balances may be negative, so
    # "+ 1000000" alone does not put them above any fixed mark)
    assert await fetchval(f.new, query) == kept
    again = await failback(f.old, f.new)
    assert again.counts() == {
        "old_only": 0, "new_only": 3, "conflict": len(both), "unknown": 0,
    }  # fmt: skip


async def test_d_old_restarted_after_the_failover(clusters: LocalClusters) -> None:
    f = await lossy_failover(clusters, restart_old=True)
    report = await failback(f.old, f.new)
    counts = report.counts()
    assert counts["old_only"] > 0 and counts["unknown"] == 0, (counts, report.notes)
    assert counts["new_only"] == counts["conflict"] == 0

    # a role that cannot read NEW's WAL: the horizon is unknown, so is every row
    await execute(
        f.new,
        "CREATE ROLE reader LOGIN",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader",
    )
    blind = await failback(f.old, f.new.replace("postgres@", "reader@"))
    assert blind.horizon is None and not blind.can_tell
    assert blind.counts() == {
        "old_only": 0, "new_only": 0, "conflict": 0, "unknown": sum(counts.values()),
    }  # fmt: skip
    assert any("cannot be read from NEW's WAL" in n for n in blind.notes), blind.notes
    assert {r.reason for r in blind.rows} >= {"the xid horizon of the promotion is unknown"}


async def test_e_commit_timestamps_on_give_the_same_answer(clusters: LocalClusters) -> None:
    on = dict(DEFAULT_LIKE_SETTINGS, track_commit_timestamp="on")
    f = await lossy_failover(clusters, settings=on)
    await execute(
        f.new,
        "INSERT INTO pgbench_accounts VALUES (900001, 1, 7, 'new only')",
        "UPDATE pgbench_accounts SET abalance = 5 WHERE aid = 1",
    )
    report = await failback(f.old, f.new)
    assert report.method == "xid+commit timestamps"
    assert report.agreement["compared"] > 0 and report.agreement["disagreed"] == 0
    assert report.counts()["unknown"] == 0 and report.counts()["old_only"] > 0
