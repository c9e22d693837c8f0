"""FailoverPool on real clusters: a primary stopped mid-run, the standby promoted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from replverify.errors import ConnectError, FailoverError, InDoubtError, UsageError
from replverify.failover.pool import FailoverEvent, FailoverPool, alternate_dsn, is_outage
from replverify.reconcile.run import reconcile
from replverify.testing.clusters import LocalClusters
from replverify.testing.postgres import free_port
from replverify.testing.servers import execute, promote, wait_for_replay

# --------------------------------------------------------------------------- alternate_dsn


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://app:pw@contoso.db.example.com:5432/shop?sslmode=require",
            "postgresql://app:pw@contoso--s.db.example.com:5432/shop?sslmode=require",
        ),
        ("postgresql://contoso.db.example.com/shop", "postgresql://contoso--s.db.example.com/shop"),
        (
            "host=contoso.db.example.com port=5432 dbname=shop",
            "host=contoso--s.db.example.com port=5432 dbname=shop",
        ),
        (
            "dbname=shop host='a.db.example.com,b.db.example.com'",
            "dbname=shop host='a--s.db.example.com,b--s.db.example.com'",
        ),
        ("postgresql://contoso--s.db.example.com/shop", "postgresql://contoso.db.example.com/shop"),
    ],
)
def test_alternate_dsn(dsn: str, expected: str) -> None:
    assert alternate_dsn(dsn) == expected


@pytest.mark.parametrize(
    "dsn", ["postgresql://127.0.0.1:5432/x", "postgresql://localhost/x", "dbname=x", "nonsense"]
)
def test_alternate_dsn_needs_a_dns_name(dsn: str) -> None:
    with pytest.raises(UsageError):
        alternate_dsn(dsn)


def test_outages_are_not_statement_errors() -> None:
    assert is_outage(ConnectionRefusedError())
    assert is_outage(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert not is_outage(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not is_outage(asyncpg.exceptions.PostgresSyntaxError("syntax error"))
    assert not is_outage(asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"))


# --------------------------------------------------------------------------- no server needed


async def test_both_endpoints_down_is_a_clear_redacted_error() -> None:
    a = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/db"
    b = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/db"
    pool = FailoverPool(a, b, connect_timeout=2)
    seen: list[str] = []
    pool.on("endpoint_switch_required", lambda e: seen.append(e.name))
    with pytest.raises(FailoverError) as info:
        await pool.start()
    text = str(info.value)
    assert "both endpoints failed" in text
    assert "s3cret" not in text and "primary" in text
    assert seen == ["endpoint_switch_required"]


async def test_no_auto_switch_raises_at_once() -> None:
    pool = FailoverPool(
        f"postgresql://app:pw@127.0.0.1:{free_port()}/db",
        f"postgresql://app:pw@127.0.0.1:{free_port()}/db",
        auto_switch=False,
        connect_timeout=2,
    )
    seen: list[FailoverEvent] = []
    pool.on("endpoint_switch_required", seen.append)
    with pytest.raises(ConnectError) as info:
        await pool.start()
    assert "pw@" not in str(info.value) and not seen
    with pytest.raises(UsageError):
        pool.on("no_such_event", seen.append)


# --------------------------------------------------------------------------- real failover


async def test_pool_survives_primary_loss_and_journal_reconciles(
    clusters: LocalClusters, tmp_path: Path
) -> None:
    pair = await asyncio.to_thread(clusters.fresh_pair)
    conn = await asyncpg.connect(pair.primary_dsn)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, amount numeric(8,2))")
    finally:
        await conn.close()
    journal = tmp_path / "writes.jsonl"
    order: list[str] = []

    def on_required(event: FailoverEvent) -> None:
        order.append(f"required:{event.from_endpoint}->{event.to_endpoint}")

    async def promote_standby(event: FailoverEvent) -> None:
        # what an operator (or orchestrator) does when told a switch is required
        order.append("promoting")
        await promote(pair.standby_dsn)

    async def on_switched(event: FailoverEvent) -> None:
        await asyncio.sleep(0)
        order.append(f"switched:{event.to_endpoint}")

    pool = FailoverPool(pair.primary_dsn, pair.standby_dsn, journal=journal, connect_timeout=3)
    pool.on("endpoint_switch_required", on_required)
    pool.on("endpoint_switch_required", promote_standby)
    pool.on("endpoint_switched", on_switched)
    await pool.start()
    try:
        assert pool.active == "primary" and pool.auto_switch_enabled
        await pool.execute("INSERT INTO t (id, v, amount) VALUES ($1, $2, $3)", 1, "one", 1.5)
        await pool.execute("INSERT INTO t (id, v, amount) VALUES ($1, $2, $3)", 2, "two", 2)
        await pool.execute("UPDATE t SET v = $1 WHERE id = $2", "uno", 1)
        # statement errors never switch
        with pytest.raises(asyncpg.UniqueViolationError):
            await pool.execute("INSERT INTO t (id, v) VALUES ($1, $2)", 1, "dup")
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await pool.execute("SELEC 1")
        assert pool.active == "primary" and order == []
        await wait_for_replay(pair.primary_dsn, pair.standby_dsn)

        await asyncio.to_thread(pair.primary.stop, "fast")
        await pool.execute("INSERT INTO t (id, v, amount) VALUES ($1, $2, $3)", 3, "three", 3.25)

        assert order == ["required:primary->alternate", "promoting", "switched:alternate"]
        assert pool.active == "alternate" and pool.switches == 1
        rows = await pool.fetch("SELECT id, v FROM t ORDER BY id")
        assert [(r["id"], r["v"]) for r in rows] == [(1, "uno"), (2, "two"), (3, "three")]
        assert await pool.fetchval("SELECT pg_is_in_recovery()") is False
        assert order == ["required:primary->alternate", "promoting", "switched:alternate"]
    finally:
        await pool.close()

    records = [json.loads(line) for line in journal.read_text().splitlines()]
    states = [r["state"] for r in records]
    # 1, 2, the update and 3 (on the alternate) committed; each a statement intent and
    # the post-image of its row (from RETURNING)
    assert states.count("committed") == 4
    assert "aborted" in states  # the duplicate key (and 3, if BEGIN reached the dying primary)
    statements = [r for r in records if "stmt" in r]
    assert statements[0]["params"] == [1, "one", 1.5]
    rows = [r for r in records if "key" in r]
    assert rows[0]["values"] == {"v": "one", "amount": "1.50"} and rows[0]["of"] == 0
    assert records[-3]["meta"] == {"endpoint": "alternate"} and "stmt" in records[-3]

    report = await reconcile(journal, pair.standby_dsn)
    assert report.status == "no_loss", report
    assert report.counts["durable"] >= 3 and report.counts["lost"] == 0
    # the attempt the primary died under is in doubt, or superseded by the retry
    assert report.counts["in_doubt"] + report.counts["superseded"] >= 1, report.counts


async def test_retry_on_alternate_that_fails_too(clusters: LocalClusters) -> None:
    pair = await asyncio.to_thread(clusters.fresh_pair)
    pool = FailoverPool(
        pair.primary_dsn, f"postgresql://127.0.0.1:{free_port()}/postgres", connect_timeout=2
    )
    events: list[str] = []
    pool.on("endpoint_switch_required", lambda e: events.append(e.name))
    pool.on("endpoint_switched", lambda e: events.append(e.name))
    await pool.start()
    try:
        assert await pool.fetchval("SELECT 1") == 1
        await asyncio.to_thread(pair.primary.stop, "immediate")
        with pytest.raises(FailoverError, match="both endpoints failed"):
            await pool.fetch("SELECT 1")
        assert events == ["endpoint_switch_required"]
        assert pool.active == "primary"
    finally:
        await pool.close()


async def test_multi_statement_transactions_are_journaled_as_one(
    clusters: LocalClusters, tmp_path: Path
) -> None:
    pair = await asyncio.to_thread(clusters.fresh_pair)
    await execute(pair.primary_dsn, "CREATE TABLE acct (id int PRIMARY KEY, balance int)")
    journal = tmp_path / "writes.jsonl"
    events: list[str] = []

    async def promote_standby(event: FailoverEvent) -> None:
        events.append(f"{event.name}:{event.to_endpoint}")
        await promote(pair.standby_dsn)

    pool = FailoverPool(pair.primary_dsn, pair.standby_dsn, journal=journal, connect_timeout=3)
    pool.on("endpoint_switch_required", promote_standby)
    await pool.start()
    try:
        # committed: both writes, one txid
        async with pool.transaction() as tx:
            await tx.execute("INSERT INTO acct VALUES ($1, $2)", 1, 100)
            await tx.execute("INSERT INTO acct VALUES ($1, $2)", 2, 0)
            assert await tx.fetchval("SELECT count(*) FROM acct") == 2
        # an application error inside the block: rolled back, journaled as aborted
        with pytest.raises(RuntimeError):
            async with pool.transaction() as tx:
                await tx.execute("UPDATE acct SET balance = $1 WHERE id = $2", 50, 1)
                raise RuntimeError("insufficient funds")
        assert await pool.fetchval("SELECT balance FROM acct WHERE id = 1") == 100
        await wait_for_replay(pair.primary_dsn, pair.standby_dsn)

        # the primary dies inside the block: no COMMIT was sent, so nothing committed;
        # the pool switches (events fire) and the application runs the block again
        with pytest.raises(Exception) as raised:
            async with pool.transaction() as tx:
                await tx.execute("UPDATE acct SET balance = $1 WHERE id = $2", 90, 1)
                await asyncio.to_thread(pair.primary.stop, "fast")
                await tx.execute("UPDATE acct SET balance = $1 WHERE id = $2", 10, 2)
        assert isinstance(raised.value, ConnectError) or is_outage(raised.value)
        assert events == ["endpoint_switch_required:alternate"] and pool.active == "alternate"
        async with pool.transaction() as tx:
            assert tx.endpoint == "alternate"
            await tx.execute("UPDATE acct SET balance = $1 WHERE id = $2", 90, 1)
            await tx.execute("UPDATE acct SET balance = $1 WHERE id = $2", 10, 2)
    finally:
        await pool.close()

    records = [json.loads(line) for line in journal.read_text().splitlines()]
    by_tx: dict[str, list[str]] = {}
    for r in records:
        by_tx.setdefault(r["txid"], []).append(r["state"])
    assert list(by_tx.values()) == [
        # each write: its statement intent, then its row's post-image (RETURNING)
        ["intent"] * 4 + ["committed"],
        ["intent", "intent", "aborted"],
        # the second UPDATE's intent is written before it runs; no COMMIT was ever sent
        ["intent"] * 3 + ["aborted"],
        ["intent"] * 4 + ["committed"],
    ]
    report = await reconcile(journal, pair.standby_dsn)
    assert report.status == "no_loss", report
    # the inserts were overwritten by the last transaction's updates: superseded, not lost
    assert report.counts["lost"] == 0 and report.counts["conflict"] == 0
    assert report.counts["durable"] + report.counts["superseded"] == 4, report.counts


async def test_a_write_whose_commit_answer_is_lost_is_not_run_twice(
    clusters: LocalClusters, tmp_path: Path
) -> None:
    """``bal = bal + 1`` whose COMMIT answer the dying primary never sent: in doubt (the
    txid named), not retried on the alternate; a keyed literal write is retried."""
    pair = await asyncio.to_thread(clusters.fresh_pair)
    await execute(
        pair.primary_dsn,
        "CREATE TABLE acc (id int PRIMARY KEY, bal int)",
        "INSERT INTO acc VALUES (1, 100), (2, 100)",
        # a COMMIT that takes seconds, so that the primary dies while it is answered
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " PERFORM pg_sleep(2); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON acc DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW EXECUTE FUNCTION slow()",
    )
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    journal = tmp_path / "writes.jsonl"
    pool = FailoverPool(pair.primary_dsn, pair.standby_dsn, journal=journal, connect_timeout=3)
    pool.on("endpoint_switch_required", lambda e: promote(pair.standby_dsn))
    await pool.start()
    try:

        async def kill_soon() -> None:
            await asyncio.sleep(1)
            await asyncio.to_thread(pair.primary.stop, "immediate")

        killer = asyncio.ensure_future(kill_soon())
        with pytest.raises(InDoubtError) as info:
            await pool.execute("UPDATE acc SET bal = bal + $1 WHERE id = $2", 1, 1)
        await killer
        assert info.value.txid is not None and str(info.value.txid) in str(info.value)
        assert pool.active == "alternate" and pool.switches == 1
        # not run again: the new primary never saw it
        assert await pool.fetchval("SELECT bal FROM acc WHERE id = 1") == 100
        # a keyed write with literal values is safe to repeat: it would have been retried
        await pool.execute("UPDATE acc SET bal = $1 WHERE id = $2", 7, 2)
        assert await pool.fetchval("SELECT bal FROM acc WHERE id = 2") == 7
    finally:
        await pool.close()
    report = await reconcile(journal, pair.standby_dsn)
    assert [f.write.record.txid for f in report.in_doubt] == [info.value.txid]
    assert report.in_doubt[0].applied is False and report.status == "no_loss"


async def test_a_range_update_streams_its_post_images_in_batches(
    clusters: LocalClusters, make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replverify.failover import journaled

    (dsn,) = await make_db(clusters.primary_dsn, rows=10, matrix_rows=1)
    await execute(
        dsn,
        "CREATE TABLE counters (id int PRIMARY KEY, n int)",
        "INSERT INTO counters SELECT g, 0 FROM generate_series(1, 95) g",
    )
    monkeypatch.setattr(journaled, "EFFECT_BATCH", 10)
    journal = tmp_path / "writes.jsonl"
    async with FailoverPool(dsn, clusters.standby_dsn, journal=journal) as pool:
        await pool.start()
        status = await pool.execute("UPDATE counters SET n = n + $1 WHERE n >= $2", 3, 0)
        assert status == "UPDATE 95"
    rows = [json.loads(line) for line in journal.read_text().splitlines() if '"of"' in line]
    assert len(rows) == 95 and {r["values"]["n"] for r in rows} == {3}
    # fetched through a portal and appended ten at a time: ten batches, one ts each
    assert len({r["ts"] for r in rows}) == 10
    report = await reconcile(journal, dsn)
    assert report.counts["durable"] == 95 and report.status == "no_loss"
