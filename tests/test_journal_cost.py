"""What keeps the journal cheap (issue 20's cost goal) without bending its contract: an
intent is in the file before its statement is sent, a statement's rows go with the next
write, and concurrent tasks share an fsync."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
import time
from pathlib import Path

import asyncpg
import pytest

from replverify.errors import OutputError
from replverify.failover import FailoverPool
from replverify.journal.aiosync import AioFsync
from replverify.journal.reader import JournalReader
from replverify.journal.writer import JournalWriter
from replverify.reconcile.run import reconcile
from replverify.testing.clusters import LocalClusters
from replverify.testing.servers import execute


async def test_an_intent_is_in_the_file_before_its_statement_runs(
    clusters: LocalClusters, make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN.md: an intent is "written before the statement runs" - inside
    pool.transaction() too. Each statement's rows go with the next write: one write per
    statement, the last rows before COMMIT, the marker after."""
    (dsn,) = await make_db(clusters.primary_dsn, rows=10, matrix_rows=1)
    await execute(
        dsn,
        "CREATE TABLE acc (id int PRIMARY KEY, bal int)",
        "INSERT INTO acc SELECT g, 0 FROM generate_series(1, 3) g",
    )
    journal = tmp_path / "writes.jsonl"

    def on_file() -> list[dict]:
        return [json.loads(x) for x in journal.read_text().splitlines()]

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
            # the transaction is open, the statement ran: its intent is in the file
            seen = on_file()
            assert [(r["state"], r["stmt"], r["params"]) for r in seen] == [
                ("intent", "UPDATE acc SET bal = bal + $1 WHERE id = $2", [5, 1])
            ]
            assert seen[0]["txid"] == tx.txid
            await tx.execute("UPDATE acc SET bal = bal + $1 WHERE id = $2", 7, 2)
            seen = on_file()
            # the first statement's row went with the second intent
            assert [("stmt" in r, r.get("params"), r.get("of")) for r in seen] == [
                (True, [5, 1], None),
                (False, None, seen[0]["seq"]),
                (True, [7, 2], None),
            ]
        monkeypatch.undo()
    # intent; row + intent; the last row (before COMMIT); the marker
    assert writes == [1, 2, 1, 1]
    records = list(JournalReader(journal))
    assert [r.seq for r in records] == sorted(r.seq for r in records)
    stmts = [r for r in records if getattr(r, "stmt", None)]
    rows = [r for r in records if getattr(r, "of", None) is not None]
    assert [r.of for r in rows] == [s.seq for s in stmts]
    lines = on_file()
    assert [x["values"]["bal"] for x in lines if "of" in x] == [5, 7]
    assert lines[-1]["state"] == "committed"
    report = await reconcile(journal, dsn)
    assert report.counts["durable"] == 2 and report.status == "no_loss"


async def test_always_makes_each_intent_durable_before_its_statement(
    clusters: LocalClusters, make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync="always" fsyncs an intent before its statement is sent - by the kernel (or
    the writer's thread), shared by concurrent tasks, never on the event loop."""
    (dsn,) = await make_db(clusters.primary_dsn, rows=10, matrix_rows=1)
    await execute(
        dsn,
        "CREATE TABLE acc (id int PRIMARY KEY, bal int)",
        "INSERT INTO acc SELECT g, 0 FROM generate_series(1, 8) g",
    )
    journal = tmp_path / "writes.jsonl"
    async with FailoverPool(dsn, clusters.standby_dsn, journal=journal, fsync="always") as pool:
        await pool.start()
        w = pool.journal
        assert w is not None
        loop_thread = threading.get_ident()
        on_loop = 0
        real_fsync = os.fsync

        def watched_fsync(fd: int) -> None:
            nonlocal on_loop
            on_loop += threading.get_ident() == loop_thread
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", watched_fsync)
        # for each statement sent: whether its intent was durable (seq s is record s+1
        # of this new journal; the writer counts the records it fsynced)
        durable_at_send: list[bool] = []
        real_fetch = asyncpg.Connection.fetch

        async def watched_fetch(self: asyncpg.Connection, query: str, *args: object, **kw: object):
            if "_rv_" in query:
                lines = [json.loads(x) for x in journal.read_text().splitlines()]
                seq = next(r["seq"] for r in lines if r.get("params") == list(args))
                durable_at_send.append(seq < w._synced)
            return await real_fetch(self, query, *args, **kw)

        monkeypatch.setattr(asyncpg.Connection, "fetch", watched_fetch)

        async def one(i: int) -> None:
            async with pool.transaction() as tx:
                await tx.execute("UPDATE acc SET bal = bal + $1 WHERE id = $2", 1, i)

        await asyncio.gather(*(one(i) for i in range(1, 9)))
        monkeypatch.undo()
    assert durable_at_send == [True] * 8
    assert on_loop == 0
    report = await reconcile(journal, dsn)
    assert report.counts["durable"] == 8 and report.status == "no_loss"


def _aio_resources() -> tuple[int, int]:
    """This process's eventfds and AIO rings (mapped as ``/[aio]``)."""
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds += "eventfd" in os.readlink(f"/proc/self/fd/{fd}")
    rings = Path("/proc/self/maps").read_text().count("[aio]")
    return fds, rings


async def test_concurrent_commits_share_an_fsync_by_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Linux the fsync of an asyncio commit is the kernel's (native AIO), finished on
    the event loop: no thread runs, and committers share fsyncs. Twenty tasks commit in
    one turn of the loop: one fsync for all, started once they all have (not one for
    the first and another for the nineteen that came while it ran)."""
    w = JournalWriter(tmp_path / "j.jsonl", fsync="commit")
    submits = 0
    real_submit = AioFsync.submit

    def counted(self: AioFsync, fd: int) -> None:
        nonlocal submits
        submits += 1
        real_submit(self, fd)

    monkeypatch.setattr(AioFsync, "submit", counted)
    synced_at_return: list[bool] = []

    async def one(i: int) -> None:
        tx = w.transaction(defer=True)
        tx.intent("update", "public.acc", {"id": i}, values={"bal": i})
        await tx.commit_async()
        synced_at_return.append(w._synced >= 2 * (i + 1))  # its marker is record 2i+2

    before = _aio_resources()
    threads = threading.active_count()
    await asyncio.gather(*(one(i) for i in range(20)))
    assert threading.active_count() == threads  # no fsync thread started
    assert _aio_resources() == (before[0] + 1, before[1] + 1)
    assert w._syncer is None
    assert submits == 1 == w.fsyncs
    assert all(synced_at_return)
    w.close()
    await asyncio.sleep(0)  # the loop frees the AIO context and its eventfd
    assert _aio_resources() == before
    records = list(JournalReader(tmp_path / "j.jsonl"))
    assert len(records) == 40 and sum(r.state == "committed" for r in records) == 20


def _block_stat(path: Path) -> Path | None:
    """The sysfs ``stat`` of the disk under ``path`` (None: no block device, tmpfs)."""
    dev = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not block.exists():
        return None
    block = block.resolve()
    if (block / "partition").exists():
        block = block.parent  # flushes are counted for the whole disk
    return block / "stat" if (block / "stat").exists() else None


def _disk_flushes(stat: Path) -> int:
    """Cache flushes the disk has completed (the 16th field, Linux 5.5+): an fsync on
    ext4 with a write-back cache sends one."""
    return int(stat.read_text().split()[15])


async def test_a_kernel_fsync_reaches_the_disk() -> None:
    """The kernel's fsync is an fsync: each of 20 commits in turn makes the disk flush
    its cache (a wrong ``struct iocb`` would run another operation, a read of 0 bytes
    say, and "succeed" without any). The journal is on a disk (the checkout's, else
    /var/tmp's or the home directory's): on tmpfs an fsync flushes nothing."""
    disks = [d for d in (Path(__file__).parent, Path("/var/tmp"), Path.home())
             if _block_stat(d) is not None]  # fmt: skip
    assert disks, "no directory on a block device to test a disk's flushes in"
    where = disks[0] / ".replverify-journal-fsync"
    where.mkdir(exist_ok=True)
    stat = _block_stat(where)
    assert stat is not None
    try:
        w = JournalWriter(where / "j.jsonl", fsync="commit")
        tx = w.transaction()
        tx.intent("update", "public.acc", {"id": 0}, values={"bal": 0})
        await tx.commit_async()
        assert w._loops[asyncio.get_running_loop()] is not None  # the kernel's, no thread
        before = _disk_flushes(stat)
        for i in range(1, 21):
            tx = w.transaction()
            tx.intent("update", "public.acc", {"id": i}, values={"bal": i})
            await tx.commit_async()
        flushes = _disk_flushes(stat) - before
        w.close()
        assert w._syncer is None
        assert flushes >= 20
    finally:
        for f in where.iterdir():
            f.unlink()
        where.rmdir()


async def test_concurrent_commits_share_an_fsync_by_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no native AIO, the writer's fsync thread runs the fsyncs, shared by
    the committers that arrive while one runs."""
    w = JournalWriter(tmp_path / "j.jsonl", fsync="commit")
    w._aio = False
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


async def test_close_settles_the_committers_of_a_kernel_fsync(tmp_path: Path) -> None:
    """close() while a kernel fsync runs and more committers wait for the next: the one
    running settles its committers, close()'s own fsync the others; then the AIO
    context and its eventfd are freed."""
    w = JournalWriter(tmp_path / "j.jsonl", fsync="commit")

    async def one(i: int) -> None:
        tx = w.transaction()
        tx.intent("update", "public.acc", {"id": i}, values={"bal": i})
        await tx.commit_async()

    first = asyncio.create_task(one(0))
    loop = asyncio.get_running_loop()
    while not w._loops or not w._loops[loop].aio.busy:  # type: ignore[union-attr]
        await asyncio.sleep(0)
    fsyncs = w._loops[loop]
    assert fsyncs is not None
    rest = [asyncio.create_task(one(i)) for i in range(1, 6)]
    for _ in range(3):
        await asyncio.sleep(0)
    if fsyncs.aio.busy:
        assert fsyncs.waiting  # they wait for the next fsync
    w.close()
    await asyncio.wait_for(asyncio.gather(first, *rest), timeout=5)
    for _ in range(3):
        await asyncio.sleep(0)
    assert fsyncs.aio.closed
    records = list(JournalReader(tmp_path / "j.jsonl"))
    assert sum(r.state == "committed" for r in records) == 6


async def test_a_failed_kernel_fsync_reaches_its_committers(tmp_path: Path) -> None:
    """An fsync the kernel reports failed (EIO) fails the commits waiting for it, with
    the journal's path; the next commit starts a new fsync."""
    w = JournalWriter(tmp_path / "j.jsonl", fsync="commit")
    tx = w.transaction()
    tx.intent("update", "public.acc", {"id": 1}, values={"bal": 1})
    await tx.commit_async()  # the loop's AIO group commit exists now
    fsyncs = w._loops[asyncio.get_running_loop()]
    assert fsyncs is not None
    real_done = fsyncs._done
    fsyncs.aio._done = lambda res: real_done(-errno.EIO)
    tx = w.transaction()
    tx.intent("update", "public.acc", {"id": 2}, values={"bal": 2})
    with pytest.raises(OutputError, match=r"cannot fsync journal .*j\.jsonl: Input/output error"):
        await tx.commit_async()
    fsyncs.aio._done = real_done
    tx = w.transaction()
    tx.intent("update", "public.acc", {"id": 3}, values={"bal": 3})
    await tx.commit_async()
    w.close()


async def test_close_settles_the_committers_queued_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync thread ends at close() - after settling every committer that queued
    before it (close() fsynced their markers) - and one that comes after the close
    returns at once instead of waiting for a thread that is gone."""
    w = JournalWriter(tmp_path / "j.jsonl", fsync="commit")
    w._aio = False
    real_sync = w._sync_to

    def slow_sync(ticket: int) -> None:
        time.sleep(0.05)
        real_sync(ticket)

    monkeypatch.setattr(w, "_sync_to", slow_sync)

    async def one(i: int) -> None:
        tx = w.transaction()
        tx.intent("update", "public.acc", {"id": i}, values={"bal": i})
        await tx.commit_async()

    tasks = [asyncio.create_task(one(i)) for i in range(6)]
    await asyncio.sleep(0.01)  # all queued, the first fsync running
    await asyncio.to_thread(w.close)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert w._syncer is not None and not w._syncer.is_alive()
    await asyncio.wait_for(w._sync_async(10**6), timeout=1)  # closed: nothing to wait for
    records = list(JournalReader(tmp_path / "j.jsonl"))
    assert sum(r.state == "committed" for r in records) == 6
