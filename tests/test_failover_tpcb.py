"""The test that matters: pgbench's TPC-B transaction from eight tasks through
``FailoverPool.transaction()``, the standby cut off and the primary killed mid-load, the
standby promoted, the tasks carrying on; then ``reconcile`` names exactly the
acknowledged transactions the new primary lacks, and exactly the in-doubt ones."""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

import asyncpg

from replverify.errors import InDoubtError, ReplverifyError
from replverify.failover.pool import FailoverEvent, FailoverPool, is_outage
from replverify.reconcile.replay import replay_script
from replverify.reconcile.run import reconcile
from replverify.testing.clusters import (
    LocalClusters,
    cut_replication,
    execute,
    find_bindir,
    promote,
    wait_for_replay,
)

TASKS = 8
SCALE = 1

#: pgbench's built-in "tpcb-like" script, as statements with parameters
TPCB = (
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler)"
    " VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP, $5)",
)


def pgbench_init(dsn: str) -> None:
    subprocess.run(
        [str(find_bindir() / "pgbench"), "-i", "-q", "-s", str(SCALE), dsn],
        check=True,
        capture_output=True,
        timeout=300,
    )


async def test_tpcb_failover_mid_load_reconciles_exactly(
    clusters: LocalClusters, tmp_path: Path
) -> None:
    pair = await asyncio.to_thread(clusters.fresh_pair)
    await asyncio.to_thread(pgbench_init, pair.primary_dsn)
    # a COMMIT that takes seconds (a deferred trigger), so that the kill surely lands
    # while one transaction waits for its COMMIT answer
    await execute(
        pair.primary_dsn,
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.filler LIKE 'slow%' THEN PERFORM pg_sleep(3); END IF; RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON pgbench_history"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    )
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    journal = tmp_path / "writes.jsonl"
    events: list[str] = []

    async def promote_standby(event: FailoverEvent) -> None:
        events.append(event.name)
        await promote(pair.standby_dsn)

    pool = FailoverPool(
        pair.primary_dsn, pair.standby_dsn, journal=journal, connect_timeout=3, max_size=TASKS
    )
    pool.on("endpoint_switch_required", promote_standby)
    pool.on("endpoint_switched", lambda e: events.append(e.name))
    await pool.start()

    acknowledged: dict[object, str] = {}  # txid -> the history row's tag
    in_doubt: set[object] = set()
    after_switch = 0
    stop = asyncio.Event()
    slow = asyncio.Event()  # client 0's next transaction gets the slow COMMIT

    async def client(n: int) -> None:
        nonlocal after_switch
        rng = random.Random(n)
        i = 0
        while not stop.is_set():
            i += 1
            aid = rng.randint(1, 100_000 * SCALE)
            tid = rng.randint(1, 10 * SCALE)
            bid = rng.randint(1, SCALE)
            delta = rng.randint(-5000, 5000)
            tag = f"c{n}-{i}"
            if n == 0 and slow.is_set():
                slow.clear()
                tag = f"slow-{i}"
            txid = None
            try:
                async with pool.transaction() as tx:
                    txid = tx.txid
                    await tx.execute(TPCB[0], delta, aid)
                    await tx.fetchval(TPCB[1], aid)
                    await tx.execute(TPCB[2], delta, tid)
                    await tx.execute(TPCB[3], delta, bid)
                    await tx.execute(TPCB[4], tid, bid, aid, delta, tag)
            except InDoubtError as e:
                assert e.txid == txid is not None
                in_doubt.add(e.txid)
                continue
            except Exception as e:  # the endpoint failed mid-transaction: carry on
                if not (is_outage(e) or isinstance(e, ReplverifyError)):
                    raise
                await asyncio.sleep(0.01)
                continue
            acknowledged[txid] = tag
            if pool.switches:
                after_switch += 1

    tasks = [asyncio.create_task(client(n)) for n in range(TASKS)]
    try:
        await asyncio.sleep(1.5)
        replicated = len(acknowledged)
        await cut_replication(pair.standby_dsn)
        await asyncio.sleep(1.5)  # these commits never reach the standby
        cut = len(acknowledged)
        slow.set()
        await asyncio.sleep(1.5)  # the slow transaction is in its COMMIT now
        await asyncio.to_thread(pair.primary.stop, "immediate")  # killed mid-load
        deadline = asyncio.get_running_loop().time() + 60
        while after_switch < 50 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()

    assert replicated > 0 and cut > replicated and after_switch >= 50
    assert events == ["endpoint_switch_required", "endpoint_switched"]
    assert pool.active == "alternate" and pool.switches == 1

    conn = await asyncpg.connect(pair.standby_dsn)
    try:
        present = {r[0].strip() for r in await conn.fetch("SELECT filler FROM pgbench_history")}
    finally:
        await conn.close()
    lacking = {txid for txid, tag in acknowledged.items() if tag not in present}
    assert lacking, "the cut should have lost acknowledged transactions"

    report = await reconcile(journal, pair.standby_dsn)
    lost = {f.write.record.txid for f in report.lost}
    doubted = {f.write.record.txid for f in report.in_doubt}
    assert lost == lacking, (len(lost), len(lacking), lost ^ lacking)
    assert not report.conflicts, report.conflicts[:3]
    assert in_doubt and doubted == in_doubt, (doubted, in_doubt)
    assert report.status == "loss"

    # the replay script restores what was lost (the history rows have no key: guarded by
    # NOT EXISTS), and running it twice changes nothing
    script = replay_script(report)
    conn = await asyncpg.connect(pair.standby_dsn)
    try:
        await conn.execute(script)
        await conn.execute(script)
        restored = await conn.fetchval("SELECT count(*) FROM pgbench_history")
    finally:
        await conn.close()
    assert restored == len(present) + len(lacking)
    again = await reconcile(journal, pair.standby_dsn)
    assert not again.lost and not again.conflicts, again.counts
    print(
        f"acknowledged {len(acknowledged)}, lost {len(lost)}, in doubt {len(in_doubt)},"
        f" after the switch {after_switch}; counts {report.counts}"
    )
