"""``--executor local:N`` / ``dask://``: chunk tasks on real Dask worker processes.

Reports are the same whichever executor ran them; a worker killed mid-task costs a rerun,
not a verdict; a scheduler lost mid-run gives a partial report and exit 2; no password
reaches a task or a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pickle
import signal
import socket
import subprocess
import sys

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.api import DiffOptions, diff
from replverify.cli.diff import diff_exit_code
from replverify.cli.main import main
from replverify.diff.executor import ExecutorSpec, TableMerge
from replverify.errors import UsageError
from replverify.reports.diff import diff_to_dict


def _timeless(doc: object) -> object:
    """``doc`` without timings and what ``--digest auto`` measured (round trips and
    throughput: timings too), the only things that may differ between executors."""
    if isinstance(doc, dict):
        return {k: _timeless(v) for k, v in doc.items() if k not in ("elapsed_s", "digest_choice")}
    if isinstance(doc, list):
        return [
            _timeless(v)
            for v in doc
            if not (isinstance(v, str) and v.startswith("--digest auto chose"))
        ]
    return doc


async def _planted(make_db, clusters, rows: int = 20_000) -> tuple[str, str]:
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=rows)
    conn = await asyncpg.connect(tgt)
    try:
        await conn.execute("DELETE FROM order_lines WHERE order_id IN (5, 15000)")
        await conn.execute("DELETE FROM orders WHERE id IN (5, 15000)")
        await conn.execute("UPDATE orders SET amount = amount + 1 WHERE id = 7000")
        await conn.execute("DELETE FROM events WHERE ctid = (SELECT min(ctid) FROM events)")
    finally:
        await conn.close()
    return src, tgt


def test_executor_spec_parsing():
    assert ExecutorSpec.parse("inprocess").kind == "inprocess"
    assert ExecutorSpec.parse("local:3") == ExecutorSpec("local", workers=3)
    assert ExecutorSpec.parse("dask://sched:8786").address == "tcp://sched:8786"
    for bad in ("local:0", "local:x", "dask://nohost", "ray://x:1", ""):
        with pytest.raises(UsageError):
            ExecutorSpec.parse(bad)


async def test_local_cluster_report_is_the_in_process_report(clusters, make_db):
    src, tgt = await _planted(make_db, clusters)
    base = DiffOptions(chunk_rows=500)  # orders: 20,000 rows = 3 tasks of 16 chunks
    local = await diff(src, tgt, base)
    spread = await diff(src, tgt, dataclasses.replace(base, executor="local:1"))
    assert local.status == "different"
    assert _timeless(diff_to_dict(spread)) == _timeless(diff_to_dict(local))
    orders = next(t for t in spread.tables if t.table.name == "orders")
    # the chunks are cut from the planner's histogram (100 buckets of 200 rows: two a chunk)
    assert orders.chunks == 51 and orders.differences_total == 3


async def test_tasks_cut_the_chunks_of_an_in_process_run_past_the_statistics(clusters, make_db):
    # rows added since ANALYZE: chunks from the histogram, then walked (in-process) or
    # counted by the tasks past its last key; both make the same chunks
    src, tgt = await _planted(make_db, clusters)
    for dsn in (src, tgt):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO orders (id, customer, status, amount, placed_at, items, paid)"
                " SELECT i, 'c', 'new', 1, '2026-01-01Z', '[]', false"
                " FROM generate_series(20001, 27300) i"
            )
        finally:
            await conn.close()
    base = DiffOptions(chunk_rows=500, tables=("orders",))
    local = await diff(src, tgt, base)
    spread = await diff(src, tgt, dataclasses.replace(base, executor="local:1"))
    assert _timeless(diff_to_dict(spread)) == _timeless(diff_to_dict(local))
    (orders,) = spread.tables
    # 50 chunks up to the histogram's last key, 14 walked past it, and the tail
    assert orders.rows_source == 27_300 and orders.differences_total == 3
    assert orders.chunks == 65, orders.chunks


def test_merge_keeps_max_diffs_and_counts_every_difference():
    from replverify.diff.align import TablePlan  # noqa: F401  (the plan's type)
    from replverify.types import Missing, TableRef, TableResult

    class Plan:
        ref = TableRef("public", "t")
        key_names = ("id",)
        key_mode = "primary key"
        schema_differences = ()
        columns = ()

    merge = TableMerge(Plan(), tasks=3, max_diffs=2)  # type: ignore[arg-type]
    for i, keys in enumerate([[(5,), (1,)], [(9,)]]):
        r = TableResult(Plan.ref, ("id",), "primary key")
        r.differences = [Missing(k) for k in keys]
        r.differences_total, r.rows_source, r.chunks = len(keys), 10, 2
        merge.add(i, r)
    out = merge.merged("the scheduler was lost")
    assert [d.key for d in out.differences] == [(1,), (5,)]
    assert out.differences_total == 3 and out.truncated and out.chunks == 4
    assert out.error and "1 of 3 key ranges were not verified" in out.error


def test_without_the_extra_the_error_names_it(primary_dsn, other_dsn):
    # a fresh interpreter in which `import distributed` fails, as without the extra
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "from replverify.cli.main import main\n"
        f"main(['diff', {primary_dsn!r}, {other_dsn!r}, '--executor', 'local:1'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'replverify[dask]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_scheduler_is_exit_2_with_a_clear_message(primary_dsn, other_dsn):
    result = CliRunner().invoke(
        main, ["diff", primary_dsn, other_dsn, "--executor", "dask://127.0.0.1:9"]
    )
    assert result.exit_code == 2, result.output
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output


@pytest.fixture(scope="module")
async def dask_cluster():
    """Two real worker processes (each restarted by its nanny when killed)."""
    import distributed

    cluster = await distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, asynchronous=True,
        dashboard_address=":0",
    )  # fmt: skip
    try:
        yield cluster
    finally:
        await cluster.close()


def _dask(cluster) -> str:
    return "dask://" + cluster.scheduler_address.removeprefix("tcp://")


async def test_no_password_reaches_the_task_graph_or_a_worker_log(
    clusters, make_db, dask_cluster, monkeypatch, tmp_path
):
    import distributed

    (src,) = await make_db(clusters.primary_dsn, rows=20_000)
    (tgt,) = await make_db(clusters.other_dsn, rows=20_000)
    secret = "Pw-7c1d9e-never-shipped"
    with_pw = [d.replace("postgres@", f"postgres:{secret}@", 1) for d in (src, tgt)]
    assert all(secret in d for d in with_pw)
    shipped: list[bytes] = []
    submit = distributed.Client.submit

    def recording(self, func, *args, **kwargs):
        shipped.append(pickle.dumps((func, args, kwargs)))
        return submit(self, func, *args, **kwargs)

    monkeypatch.setattr(distributed.Client, "submit", recording)
    options = DiffOptions(chunk_rows=500, executor=_dask(dask_cluster), state=str(tmp_path / "s"))
    report = await diff(*with_pw, options)
    assert report.status == "consistent" and report.complete
    assert len(shipped) >= 3  # orders alone is 3 tasks
    assert not any(secret.encode() in blob for blob in shipped)
    client = await distributed.Client(dask_cluster, asynchronous=True)
    try:
        logs = [await client.get_worker_logs(), await client.get_scheduler_logs()]
    finally:
        await client.close()
    assert secret not in repr(logs)
    # --state resumes at task granularity: every task verified before is skipped (a
    # keyless table is one multiset comparison, never recorded, in-process neither)
    shipped.clear()
    again = await diff(*with_pw, options)
    assert [pickle.loads(b)[1][0].plan.ref.name for b in shipped] == ["events"]
    assert _timeless(diff_to_dict(again)) == _timeless(diff_to_dict(report))


async def test_a_worker_killed_mid_task_reruns_it_with_the_same_verdict(
    clusters, make_db, dask_cluster
):
    import distributed

    src, tgt = await _planted(make_db, clusters, rows=40_000)
    base = DiffOptions(chunk_rows=250, tables=("orders",))
    expected = await diff(src, tgt, base)
    client = await distributed.Client(dask_cluster, asynchronous=True)
    killed: list[str] = []

    async def kill_a_busy_worker() -> None:
        pids = await client.run(os.getpid)
        while not killed:
            for addr, keys in (await client.processing()).items():
                if keys and addr in pids:
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(addr)
                    return
            await asyncio.sleep(0.02)

    killer = asyncio.ensure_future(kill_a_busy_worker())
    try:
        spread = await diff(src, tgt, dataclasses.replace(base, executor=_dask(dask_cluster)))
    finally:
        killer.cancel()
        await asyncio.gather(killer, return_exceptions=True)
        await client.close()
    assert killed, "no worker was ever seen holding a task"
    assert spread.complete and spread.status == "different"
    assert _timeless(diff_to_dict(spread)) == _timeless(diff_to_dict(expected))


async def test_scheduler_lost_mid_run_gives_a_partial_report_and_exit_2(
    clusters, make_db, monkeypatch
):
    import distributed

    from replverify.diff import executor

    monkeypatch.setattr(executor, "LOST_AFTER", 1.0)
    src, tgt = await _planted(make_db, clusters, rows=40_000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    cli = [sys.executable, "-m", "distributed.cli"]
    scheduler = subprocess.Popen(
        [*cli[:2], "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
         str(port), "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = subprocess.Popen(
        [*cli[:2], "distributed.cli.dask_worker", f"tcp://{address}", "--nthreads", "1",
         "--no-dashboard", "--no-nanny"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):  # until the scheduler has its worker
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                client = await asyncio.wait_for(
                    distributed.Client(address, asynchronous=True, timeout=2), 5
                )
                try:
                    await client.wait_for_workers(1, timeout=30)
                finally:
                    await client.close()
                break
            await asyncio.sleep(0.1)

        def progress(table, done, estimate):
            if done and scheduler.poll() is None:  # the first task is in: kill the scheduler
                scheduler.kill()

        options = DiffOptions(chunk_rows=250, tables=("orders",), executor=f"dask://{address}")
        report = await diff(src, tgt, options, progress=progress)
    finally:
        for proc in (scheduler, worker):
            proc.kill()
            proc.wait()
    assert report.aborted and "was lost mid-run" in report.aborted
    (orders,) = report.tables
    assert not report.complete and diff_exit_code(report) == 2
    assert 0 < orders.rows_source < 40_000
    assert orders.error and "key ranges were not verified" in orders.error
