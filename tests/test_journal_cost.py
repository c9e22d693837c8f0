"""What keeps the journal cheap (issue 20's cost goal): a pool transaction's intents and
rows go in one write before COMMIT, and concurrent commits share an fsync."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from replverify.failover.pool import FailoverPool
from replverify.journal.reader import JournalReader
from replverify.journal.writer import JournalWriter
from replverify.reconcile.run import reconcile
from replverify.testing.clusters import LocalClusters
from replverify.testing.servers import execute


async def test_a_pool_transaction_is_appended_in_one_write_before_commit(
    clusters: LocalClusters, make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (dsn,) = await make_db(clusters.primary_dsn, rows=10, matrix_rows=1)
    await execute(
        dsn,
        "CREATE TABLE acc (id int PRIMARY KEY, bal int)",
        "INSERT INTO acc SELECT g, 0 FROM generate_series(1, 3) g",
    )
    journal = tmp_path / "writes.jsonl"
    async with FailoverPool(dsn, clusters.standby_dsn, journal=journal) as pool:
        await pool.start()
        assert pool.journal is not None
        writes: list[int] = []
        real_write = os.write

        def counting_write(fd: int, data: bytes) -> int:
            writes.append(bytes(data).count(b"\n"))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", counting_write)
        async with pool.transaction() as tx:
            await tx.execute("UPDATE acc SET bal = bal + $1 WHERE id = $2", 5, 1)
            await tx.execute("UPDATE acc SET bal = bal + $1 WHERE id = $2", 7, 2)
            assert writes == []  # held back: nothing can commit before COMMIT
        monkeypatch.undo()
    # the two intents and their rows in one write, then the marker
    assert writes == [4, 1]
    records = list(JournalReader(journal))
    assert [r.seq for r in records[:4]] == sorted(r.seq for r in records[:4])
    stmts = [r for r in records if getattr(r, "stmt", None)]
    rows = [r for r in records if getattr(r, "of", None) is not None]
    assert [r.of for r in rows] == [s.seq for s in stmts]
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert [x["values"]["bal"] for x in lines if "of" in x] == [5, 7]
    report = await reconcile(journal, dsn)
    assert report.counts["durable"] == 2 and report.status == "no_loss"


async def test_concurrent_commits_share_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = JournalWriter(tmp_path / "j.jsonl", fsync="commit")
    hops = 0  # worker-thread fsync calls
    real_sync = w._sync_to

    def slow_sync(ticket: int) -> None:
        nonlocal hops
        hops += 1
        real_sync(ticket)
        time.sleep(0.05)  # a slow disk: later committers arrive while it runs

    monkeypatch.setattr(w, "_sync_to", slow_sync)

    async def one(i: int) -> None:
        tx = w.transaction(defer=True)
        tx.intent("update", "public.acc", {"id": i}, values={"bal": i})
        await tx.commit_async()

    await asyncio.gather(*(one(i) for i in range(20)))
    w.close()
    assert 1 <= hops <= 3  # not a thread per commit
    records = list(JournalReader(tmp_path / "j.jsonl"))
    assert len(records) == 40 and sum(r.state == "committed" for r in records) == 20
