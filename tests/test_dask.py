"""``--executor local:N`` / ``dask://``: chunk tasks on real Dask worker processes.

Reports are the same whichever executor ran them; a worker killed mid-task costs a rerun,
not a verdict; a scheduler lost mid-run gives a partial report and exit 2; no password
reaches a task or a worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import signal
import subprocess
import sys

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.api import DiffOptions, diff
from replverify.cli.main import diff_exit_code, main
from replverify.diff.executor import ExecutorSpec, TableMerge
from replverify.errors import UsageError
from replverify.reports.common import diff_to_dict


def _timeless(doc: object) -> object:
    """``doc`` without timings (the one thing that may differ between executors)."""
    if isinstance(doc, dict):
        return {k: _timeless(v) for k, v in doc.items() if k != "elapsed_s"}
    if isinstance(doc, list):
        return [_timeless(v) for v in doc]
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
    spread = await diff(src, tgt, dataclasses.replace(base, executor="local:2"))
    assert local.status == "different"
    assert _timeless(diff_to_dict(spread)) == _timeless(diff_to_dict(local))
    orders = next(t for t in spread.tables if t.table.name == "orders")
    assert orders.chunks == 41 and orders.differences_total == 3


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
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'replverify[dask]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_scheduler_is_exit_2_with_a_clear_message(primary_dsn, other_dsn):
    result = CliRunner().invoke(
        main, ["diff", primary_dsn, other_dsn, "--executor", "dask://127.0.0.1:9"]
    )
    assert result.exit_code == 2, result.output
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output
