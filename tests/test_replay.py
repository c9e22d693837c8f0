"""Replay scripts: one guarded transaction that restores lost writes and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import sqlglot

from replverify.db.catalog import TableInfo
from replverify.diff.sql import ident, quote_table
from replverify.reconcile.findings import ReconcileReport
from replverify.reconcile.replay import plan_replay, replay_script
from replverify.reconcile.run import reconcile, reconcile_with
from replverify.testing.memory import MemoryTarget
from replverify.types import Column, ColumnType, TableRef

ORDERS = TableRef("public", "orders")
INFO = TableInfo(
    ORDERS,
    1,
    (
        Column("id", ColumnType("bigint", "int8")),
        Column("status", ColumnType("text", "text")),
        Column("amount", ColumnType("numeric(12,2)", "numeric")),
        Column("note", ColumnType("text", "text")),
    ),
    ("id",),
    0,
)
TABLES = {ORDERS: INFO}
TS = "2026-11-23T10:00:00+00:00"


def journal(path: Path, *writes: dict) -> Path:
    lines = []
    for i, w in enumerate(writes):
        lines.append(
            json.dumps(
                {
                    "v": 1,
                    "txid": f"t{i}",
                    "seq": i,
                    "ts": TS,
                    "state": "committed",
                    "table": "orders",
                    **w,
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def row(id: int, status: str = "new", amount: str = "1.00", note: str | None = None) -> dict:
    return {"id": id, "status": status, "amount": amount, "note": note}


WRITES = (
    {"op": "insert", "key": {"id": 1}, "values": {"status": "new", "amount": "12.50"}},
    {"op": "update", "key": {"id": 2}, "values": {"status": "paid"}, "before": {"status": "new"}},
    {"op": "delete", "key": {"id": 3}, "before": {"status": "new"}},
    {"op": "update", "key": {"id": 4}, "values": {"status": "paid"}, "before": {"status": "new"}},
    {"op": "update", "key": {"id": 5}, "values": {"note": "it's\nmultiline"}},
    {"op": "upsert", "key": {"id": 6}, "values": {"status": "new", "amount": 6}},
    {
        "op": "insert",
        "key": {"id": 7},
        "values": {"status": "new", "amount": 7},
        "state": "intent",
        "txid": "crashed",
    },
)
TARGET_ROWS = [row(2), row(3), row(4, "shipped"), row(5, note="old"), row(6, "paid", "6.00")]


async def lost_report(tmp_path: Path, source: list[dict] | None = None) -> ReconcileReport:
    path = journal(tmp_path / "j.jsonl", *WRITES)
    target = MemoryTarget(TABLES, {ORDERS: TARGET_ROWS})
    src = MemoryTarget(TABLES, {ORDERS: source}, name="old") if source is not None else None
    return await reconcile_with(path, target, source=src)


def statements(script: str) -> list[str]:
    """The statements between BEGIN and COMMIT (each ends a line with ";")."""
    body = script.split("BEGIN;\n", 1)[1].rsplit("COMMIT;", 1)[0]
    out = []
    for chunk in body.split(";\n"):
        lines = [x for x in chunk.splitlines() if not x.startswith("--")]
        if "".join(lines).strip():
            out.append("\n".join(lines).strip())
    return out


async def test_the_script_is_one_guarded_transaction(tmp_path):
    report = await lost_report(tmp_path)
    assert [f.write.key_display[0][1] for f in report.lost] == [1, 2, 3, 5, 6]
    script = replay_script(report)
    lines = script.splitlines()
    assert lines[0] == "-- replverify replay script"
    assert script.count("BEGIN;") == 1 and script.rstrip().endswith("COMMIT;")
    body = statements(script)
    for stmt in body:
        if not stmt.startswith("SET CONSTRAINTS"):
            assert sqlglot.parse_one(stmt, read="postgres") is not None
    writes = [s for s in body if s.startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == [
        'INSERT INTO "public"."orders" ("id", "status", "amount") VALUES (\'1\', \'new\','
        " '12.50') ON CONFLICT DO NOTHING",
        'UPDATE "public"."orders" SET "status" = \'paid\' WHERE "id" = \'2\' AND CAST("status"'
        " AS TEXT) IS NOT DISTINCT FROM 'new' AND CAST(\"amount\" AS TEXT) IS NOT DISTINCT"
        " FROM '1.00' AND \"note\" IS NULL",
        'DELETE FROM "public"."orders" WHERE "id" = \'3\' AND CAST("status" AS TEXT) IS NOT'
        " DISTINCT FROM 'new' AND CAST(\"amount\" AS TEXT) IS NOT DISTINCT FROM '1.00' AND"
        ' "note" IS NULL',
        'UPDATE "public"."orders" SET "note" = \'it\'\'s\nmultiline\' WHERE "id" = \'5\''
        ' AND CAST("status" AS TEXT) IS NOT DISTINCT FROM \'new\' AND CAST("amount" AS TEXT)'
        " IS NOT DISTINCT FROM '1.00' AND CAST(\"note\" AS TEXT) IS NOT DISTINCT FROM 'old'",
        'UPDATE "public"."orders" SET "status" = \'new\', "amount" = \'6.00\' WHERE "id" ='
        " '6' AND CAST(\"status\" AS TEXT) IS NOT DISTINCT FROM 'paid' AND CAST(\"amount\" AS"
        " TEXT) IS NOT DISTINCT FROM '6.00' AND \"note\" IS NULL",
    ]
    assert "SET LOCAL TimeZone = 'UTC'" in body
    head = script.split("BEGIN;")[0]
    assert "Restores 5 of 5 lost write(s)" in head and "values from the journal" in head
    assert "conflict: public.orders id=4 (t3 #3 update)" in head
    assert "in doubt: public.orders id=7 (crashed #6 insert)" in head
    assert "the target does not show it" in head


async def test_values_come_from_the_old_primary_when_there_is_one(tmp_path):
    old = [row(1, "paid", "99.00"), row(2, "paid"), row(5, note="from old"), row(6)]
    report = await lost_report(tmp_path, source=old)
    steps = {s.finding.write.key_display[0][1]: s for s in plan_replay(report)}
    assert {k: (s.action, s.origin) for k, s in steps.items()} == {
        1: ("insert", "old primary"),
        2: ("update", "old primary"),
        3: ("delete", "old primary"),  # the old primary no longer has it either
        5: ("update", "old primary"),
        6: ("update", "old primary"),
    }
    assert "'99.00'" in steps[1].sql and "'paid'" in steps[1].sql  # the old row, not the journal
    assert "SET \"note\" = 'from old'" in steps[5].sql
    assert "SET \"status\" = 'new', \"amount\" = '1.00'" in steps[6].sql
    script = replay_script(report)
    assert "values from the old primary (old)" in script
    assert "in doubt: public.orders id=7 (crashed #6 insert): never settled" in script
    assert "the old primary does not show it" in script


async def test_rows_the_old_primary_lost_too_are_skipped_with_the_reason(tmp_path):
    report = await lost_report(tmp_path, source=[row(2), row(3)])
    steps = {s.finding.write.key_display[0][1]: s for s in plan_replay(report)}
    assert (
        steps[1].action == "skip" and steps[1].reason == "the old primary no longer holds the row"
    )
    assert steps[2].action == "skip" and "already equals" in steps[2].reason
    assert steps[3].action == "skip" and "still holds it" in steps[3].reason
    script = replay_script(report)
    assert (
        "lost: public.orders id=1 (t0 #0 insert): the old primary no longer holds the row" in script
    )


async def test_nothing_to_replay(tmp_path):
    path = journal(tmp_path / "j.jsonl", WRITES[1])
    report = await reconcile_with(path, MemoryTarget(TABLES, {ORDERS: [row(2, "paid")]}))
    script = replay_script(report)
    assert "Restores 0 of 0 lost write(s)" in script and "Not replayed: nothing." in script
    assert [s for s in statements(script) if not s.startswith(("SELECT", "SET"))] == []


async def _database(dsn: str, name: str, rows: list[dict]) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {ident(name).sql('postgres')}")
        await conn.execute(f"CREATE DATABASE {ident(name).sql('postgres')}")
    finally:
        await conn.close()
    url = dsn.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"CREATE TABLE {quote_table(ORDERS)} (id bigint PRIMARY KEY, status text,"
            " amount numeric(12,2), note text)"
        )
        for r in rows:
            await conn.execute(
                "INSERT INTO orders SELECT * FROM jsonb_populate_record(NULL::orders, $1)",
                json.dumps(r),
            )
    finally:
        await conn.close()
    return url


async def test_guards_keep_newer_data_and_a_second_run_changes_nothing(clusters, tmp_path):
    url = await _database(clusters.primary_dsn, "replay_guards", TARGET_ROWS)
    path = journal(tmp_path / "j.jsonl", *WRITES)
    report = await reconcile(path, url)
    assert len(report.lost) == 5
    script = replay_script(report)
    conn = await asyncpg.connect(url)
    try:
        # someone writes row 2 after reconcile looked: the replay must not overwrite it
        await conn.execute("UPDATE orders SET note = 'newer' WHERE id = 2")
        await conn.execute(script)
        rows = {r["id"]: dict(r) for r in await conn.fetch("SELECT * FROM orders")}
        assert rows[2]["status"] == "new" and rows[2]["note"] == "newer"
        assert rows[1]["status"] == "new" and str(rows[1]["amount"]) == "12.50"
        assert 3 not in rows and rows[5]["note"] == "it's\nmultiline"
        assert rows[4]["status"] == "shipped"  # the conflict is left alone
        before = await conn.fetch("SELECT * FROM orders ORDER BY id")
        await conn.execute(script)
        assert await conn.fetch("SELECT * FROM orders ORDER BY id") == before
        # the server's settings do not change what the guards compare
        await conn.execute("SET DateStyle = 'SQL, DMY'; SET extra_float_digits = 0")
        await conn.execute(script)
    finally:
        await conn.close()
    again = await reconcile(path, url)
    assert [f.write.key_display[0][1] for f in again.lost] == [2]  # still lost: guarded
    assert [f.write.key_display[0][1] for f in again.conflicts] == [4]


async def test_psql_prints_no_result_tables_for_the_pinned_settings(tmp_path, clusters):
    import shutil
    import subprocess

    path = journal(tmp_path / "j.jsonl", WRITES[1])
    report = await reconcile_with(path, MemoryTarget(TABLES, {ORDERS: [row(2, "paid")]}))
    script = tmp_path / "replay.sql"
    script.write_text(replay_script(report), encoding="utf-8")
    psql = shutil.which("psql")
    assert psql, "psql is needed to run a replay script"
    proc = subprocess.run(
        [psql, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(script), clusters.other_dsn],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "set_config" not in proc.stdout and "row)" not in proc.stdout, proc.stdout
    assert proc.stdout.count("SET") >= 6  # one command tag per pinned setting
