"""``reconcile`` against real PostgreSQL: a failover with real loss, fixtures, errors, CLI.

The failover test journals writes with :class:`~replverify.journal.writer.JournalWriter` while it
runs them on a fresh primary, cuts the standby off, writes more, promotes the standby,
edits one row by hand there, and checks that reconcile names exactly what was lost;
then it applies the replay script and checks that nothing is lost any more and that
the new primary equals the old one but for the hand-edited row.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.api import DiffOptions, diff
from replverify.cli.main import main
from replverify.db.catalog import TableInfo
from replverify.diff.sql import ident, quote_table
from replverify.errors import JournalError
from replverify.journal.writer import JournalWriter
from replverify.reconcile.findings import Finding, ReconcileReport
from replverify.reconcile.replay import replay_script
from replverify.reconcile.run import reconcile, reconcile_with
from replverify.reports.reconcile import reconcile_to_dict
from replverify.testing import clusters as testing
from replverify.testing.memory import MemoryTarget
from replverify.types import Column, ColumnType, TableRef

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "journals"


def with_db(dsn: str, db: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + db


def items(findings: list[Finding]) -> list[tuple[str, str, object]]:
    """(op, table, key) of findings, for readable assertions."""
    out = []
    for f in findings:
        key = dict(f.write.key_display)
        out.append(
            (f.write.op, f.write.table.name, key if len(key) > 1 else next(iter(key.values())))
        )
    return out


# --------------------------------------------------------------------------- failover


async def _run(conn: asyncpg.Connection, journal: JournalWriter, writes: list[dict]) -> None:
    """Run and journal one transaction of ``writes`` ({op, table, key, values, before, sql,
    args, run}); ``run=False`` journals the intent only."""
    async with journal.transaction() as tx, conn.transaction():
        for w in writes:
            if "sql" in w:
                tx.intent_sql(w["sql"], *w.get("args", ()), before=w.get("before"))
                await conn.execute(w["sql"], *w.get("args", ()))
                continue
            tx.intent(w["op"], w["table"], w["key"], w.get("values"), w.get("before"))
            await conn.execute(w["stmt"], *w.get("args", ()))


@pytest.fixture
async def failover(clusters, make_db, tmp_path) -> Iterator[tuple[str, str, Path]]:
    """A fresh pair with journaled writes before and after a cut, the standby promoted
    and one row edited by hand there: (old primary, new primary, journal)."""
    pair = await asyncio.to_thread(clusters.fresh_pair)
    try:
        (old,) = await make_db(pair.primary_dsn, rows=300)
        new = with_db(pair.standby_dsn, old.rsplit("/", 1)[1])
        path = tmp_path / "writes.jsonl"
        conn = await asyncpg.connect(old)
        journal = JournalWriter(path)
        try:
            await _before_cut(conn, journal)
            await testing.wait_for_replay(pair.primary_dsn, pair.standby_dsn)
            await testing.cut_replication(pair.standby_dsn)
            await _after_cut(conn, journal)
        finally:
            journal.close()
            await conn.close()
        await testing.promote(pair.standby_dsn)
        await testing.drop_slot(pair.primary_dsn, pair.slot)
        hand = await asyncpg.connect(new)
        try:
            await hand.execute("UPDATE orders SET note = 'fixed by hand' WHERE id = 1")
        finally:
            await hand.close()
        yield old, new, path
    finally:
        await asyncio.to_thread(pair.close)


async def _before_cut(conn: asyncpg.Connection, journal: JournalWriter) -> None:
    await _run(
        conn,
        journal,
        [  # an insert
            {
                "op": "insert",
                "table": "public.orders",
                "key": {"id": 900001},
                "values": {
                    "customer": "acme-1",
                    "status": "new",
                    "amount": Decimal("10.50"),
                    "placed_at": "2026-11-23T10:00:00+00:00",
                    "items": '{"sku": "A"}',
                    "paid": False,
                },
                "stmt": "INSERT INTO orders (id, customer, status, amount, placed_at, items, paid)"
                " VALUES (900001, 'acme-1', 'new', 10.50, '2026-11-23 11:00+01', "
                '\'{"sku": "A"}\', false)',
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # an update, hand-edited on the new primary later: conflict
            {
                "op": "update",
                "table": "orders",
                "key": {"id": 1},
                "values": {"note": "gift"},
                "before": {"note": None},
                "stmt": "UPDATE orders SET note = 'gift' WHERE id = 1",
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # a delete
            {
                "op": "delete",
                "table": "orders",
                "key": {"id": 2},
                "before": {"status": "paid"},
                "stmt": "DELETE FROM order_lines WHERE order_id = 2;"
                " DELETE FROM orders WHERE id = 2",
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # an upsert
            {
                "op": "upsert",
                "table": "customers",
                "key": {"code": "new-1"},
                "values": {"name": "New One", "email": None, "created_at": "2026-11-23T10:00:00Z"},
                "stmt": "INSERT INTO customers VALUES ('new-1', 'New One', NULL, "
                "'2026-11-23 10:00+00') ON CONFLICT (code) DO UPDATE SET name = "
                "EXCLUDED.name, email = EXCLUDED.email, created_at = EXCLUDED.created_at",
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # a sql record
            {
                "sql": "UPDATE orders SET note = $1, paid = $2 WHERE id = $3",
                "args": ("sql", True, 3),
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # a multi-write transaction
            {"sql": "UPDATE orders SET status = 'shipped' WHERE id = 4 AND status = 'new'"},
            {
                "sql": "INSERT INTO order_lines (order_id, line_no, sku, qty, price)"
                " VALUES ($1, 9, 'SKU-9', 2, $2)",
                "args": (4, Decimal("1.25")),
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # written twice: the first is superseded
            {
                "op": "update",
                "table": "orders",
                "key": {"id": 5},
                "values": {"amount": "1.00"},
                "stmt": "UPDATE orders SET amount = 1 WHERE id = 5",
            },
        ],
    )
    await _run(
        conn,
        journal,
        [
            {
                "op": "update",
                "table": "orders",
                "key": {"id": 5},
                "values": {"amount": 2},
                "before": {"amount": "1"},
                "stmt": "UPDATE orders SET amount = 2 WHERE id = 5",
            },
        ],
    )
    # an intent whose transaction committed but was never settled (crash): applied
    tx = journal.transaction("crashed-1")
    tx.intent("update", "orders", {"id": 6}, {"note": "in doubt"})
    await conn.execute("UPDATE orders SET note = 'in doubt' WHERE id = 6")
    tx.leave_in_doubt()


async def _after_cut(conn: asyncpg.Connection, journal: JournalWriter) -> None:
    await _run(
        conn,
        journal,
        [  # lost insert
            {
                "op": "insert",
                "table": "orders",
                "key": {"id": 900002},
                "values": {
                    "customer": "acme-1",
                    "status": "paid",
                    "amount": "99.99",
                    "placed_at": "2026-11-23T12:00:00+00:00",
                    "items": {"sku": "B"},
                    "paid": True,
                },
                "stmt": "INSERT INTO orders (id, customer, status, amount, placed_at, items, paid)"
                " VALUES (900002, 'acme-1', 'paid', 99.99, '2026-11-23 12:00+00', "
                '\'{"sku": "B"}\', true)',
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # lost update
            {
                "op": "update",
                "table": "orders",
                "key": {"id": 7},
                "values": {"status": "new"},
                "before": {"status": "cancelled"},
                "stmt": "UPDATE orders SET status = 'new' WHERE id = 7",
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # lost deletes (an order and its three lines)
            *(
                {
                    "op": "delete",
                    "table": "order_lines",
                    "key": {"order_id": 8, "line_no": n},
                    "stmt": f"DELETE FROM order_lines WHERE order_id = 8 AND line_no = {n}",
                }
                for n in (1, 2, 3)
            ),
            {
                "op": "delete",
                "table": "orders",
                "key": {"id": 8},
                "stmt": "DELETE FROM orders WHERE id = 8",
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # lost upsert (and a lost sql insert in one transaction)
            {
                "op": "upsert",
                "table": "customers",
                "key": {"code": "new-2"},
                "values": {
                    "name": "New Two",
                    "email": "two@example.com",
                    "created_at": "2026-11-23T12:00:00+00:00",
                },
                "stmt": "INSERT INTO customers VALUES ('new-2', 'New Two', 'two@example.com', "
                "'2026-11-23 12:00+00') ON CONFLICT (code) DO UPDATE SET name = "
                "EXCLUDED.name, email = EXCLUDED.email, created_at = EXCLUDED.created_at",
            },
            {
                "sql": "INSERT INTO order_lines VALUES ($1, 7, 'SKU-7', 1, 3.50),"
                " ($1, 8, 'SKU-8', 4, 0.99) ON CONFLICT (order_id, line_no) DO NOTHING",
                "args": (10,),
            },
        ],
    )
    await _run(
        conn,
        journal,
        [  # a row inserted then updated after the cut: one lost row
            {
                "op": "insert",
                "table": "orders",
                "key": {"id": 900003},
                "values": {
                    "customer": "acme-1",
                    "status": "new",
                    "amount": 5,
                    "placed_at": "2026-11-23T12:00:00+00:00",
                    "items": "[]",
                    "paid": False,
                },
                "stmt": "INSERT INTO orders (id, customer, status, amount, placed_at, items, paid)"
                " VALUES (900003, 'acme-1', 'new', 5, '2026-11-23 12:00+00', '[]', false)",
            },
            {"sql": "UPDATE orders SET note = 'updated', amount = 6 WHERE id = 900003"},
        ],
    )
    await _run(
        conn,
        journal,
        [  # a third update of order 5: lost
            {
                "op": "update",
                "table": "orders",
                "key": {"id": 5},
                "values": {"amount": "3.00"},
                "before": {"amount": 2},
                "stmt": "UPDATE orders SET amount = 3 WHERE id = 5",
            },
        ],
    )
    with pytest.raises(asyncpg.UniqueViolationError):  # refused: journaled as aborted
        await _run(
            conn,
            journal,
            [
                {
                    "op": "insert",
                    "table": "orders",
                    "key": {"id": 9},
                    "values": {
                        "customer": "x",
                        "status": "new",
                        "amount": 1,
                        "placed_at": "2026-11-23T12:00:00Z",
                        "items": "{}",
                        "paid": False,
                    },
                    "stmt": "INSERT INTO orders (id, customer, status, amount, placed_at,"
                    " items, paid) VALUES (9, 'x', 'new', 1, now(), '{}', false)",
                },
            ],
        )
    # an intent whose statement never ran (the application crashed first)
    journal.transaction("crashed-2").intent("delete", "orders", {"id": 11})


EXPECTED_LOST = [
    ("insert", "orders", 900002),
    ("update", "orders", 7),
    ("delete", "order_lines", {"order_id": 8, "line_no": 1}),
    ("delete", "order_lines", {"order_id": 8, "line_no": 2}),
    ("delete", "order_lines", {"order_id": 8, "line_no": 3}),
    ("delete", "orders", 8),
    ("upsert", "customers", "new-2"),
    ("upsert", "order_lines", {"order_id": 10, "line_no": 7}),
    ("upsert", "order_lines", {"order_id": 10, "line_no": 8}),
    ("update", "orders", 900003),
    ("update", "orders", 5),
]


async def test_failover_names_exactly_the_lost_writes_and_replay_restores_them(failover):
    old, new, journal = failover
    report = await reconcile(journal, new, source_dsn=old)
    assert report.status == "loss"
    assert items(report.lost) == EXPECTED_LOST
    assert items(report.conflicts) == [("update", "orders", 1)]
    assert [(f.write.record.txid, f.applied, f.applied_on_source) for f in report.in_doubt] == [
        ("crashed-1", True, True),
        ("crashed-2", False, False),
    ]
    # durable: 900001, the delete of 2, new-1, orders 3 and 4, order line (4, 9);
    # superseded: the first two updates of order 5, the insert of 900003
    assert report.counts == {
        "durable": 6,
        "lost": 11,
        "superseded": 3,
        "conflict": 1,
        "in_doubt": 2,
        "aborted": 1,
    }
    doc = reconcile_to_dict(report)
    lost5 = next(x for x in doc["lost"] if x["key"] == {"id": 5})
    assert lost5["explain"]["journal"]["values"] == {"amount": "3.00"}
    assert lost5["explain"]["target"] == {"id": 5, "amount": "2.00"}
    assert lost5["explain"]["source"] == {"id": 5, "amount": "3.00"}
    assert [c["op"] for c in lost5["explain"]["chain"]] == ["update", "update", "update"]
    (conflict,) = doc["conflicts"]
    assert conflict["explain"]["target"]["note"] == "fixed by hand"
    assert conflict["explain"]["source"]["note"] == "gift"
    assert "password" not in json.dumps(doc)

    # replay (row images from the old primary), then nothing is lost any more
    script = replay_script(report)
    assert script.count("BEGIN;") == 1 and script.count("COMMIT;") == 1
    assert "conflict: public.orders id=1" in script and "crashed-2" in script
    conn = await asyncpg.connect(new)
    try:
        await conn.execute(script)
        await conn.execute(script)  # twice: the guards make it a no-op
    finally:
        await conn.close()
    again = await reconcile(journal, new, source_dsn=old)
    assert again.lost == [] and items(again.conflicts) == [("update", "orders", 1)]
    result = await diff(
        old, new, DiffOptions(tables=("public.orders", "public.customers", "public.order_lines"))
    )
    differences = [(t.table.name, d) for t in result.tables for d in t.differences]
    assert [(name, d.kind, d.key) for name, d in differences] == [("orders", "changed", (1,))]


async def test_replay_from_the_journal_alone(failover):
    """Without the old primary the values come from the journal; same outcome."""
    old, new, journal = failover
    report = await reconcile(journal, new)
    assert items(report.lost) == EXPECTED_LOST
    assert report.lost[0].source_row is None
    script = replay_script(report)
    assert "values from the journal" in script
    conn = await asyncpg.connect(new)
    try:
        await conn.execute(script)
    finally:
        await conn.close()
    again = await reconcile(journal, new)
    assert again.lost == []
    result = await diff(
        old, new, DiffOptions(tables=("public.orders", "public.customers", "public.order_lines"))
    )
    assert [(t.table.name, d.key) for t in result.tables for d in t.differences] == [
        ("orders", (1,))
    ]


def test_cli_reconcile_exit_codes_and_replay_file(failover, tmp_path):
    old, new, journal = failover
    replay = tmp_path / "replay.sql"
    runner = CliRunner()
    args = ["reconcile", "--journal", str(journal), "--target", new, "--source", old]
    result = runner.invoke(main, [*args, "--format", "json", "--replay-sql", str(replay)])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "replverify.reconcile/1" and doc["status"] == "loss"
    assert set(doc["counts"]) >= {"durable", "lost", "superseded", "conflict", "in_doubt"}
    for item in doc["lost"] + doc["conflicts"] + doc["in_doubt"]:
        assert {"txid", "seq", "op", "table", "key", "ts"} <= set(item)
    assert replay.read_text().startswith("-- replverify replay script")
    for fmt in ("text", "markdown"):
        out = runner.invoke(main, [*args, "--format", fmt])
        assert out.exit_code == 1 and "900002" in out.output
    # --since after every write: nothing considered, nothing lost
    late = runner.invoke(main, [*args[:5], "--since", "2999-01-01T00:00:00Z"])
    assert late.exit_code == 0, late.output
    bad = runner.invoke(main, [*args[:5], "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since" in bad.output


# --------------------------------------------------------------------------- fixtures

BASE_TYPES = {
    "bigint": "int8",
    "integer": "int4",
    "smallint": "int2",
    "text": "text",
    "boolean": "bool",
    "jsonb": "jsonb",
    "json": "json",
    "timestamptz": "timestamptz",
    "timestamp": "timestamp",
    "date": "date",
    "uuid": "uuid",
    "double precision": "float8",
}


def fixture_names() -> list[str]:
    return sorted(p.name[: -len(".jsonl")] for p in FIXTURES.glob("*.jsonl"))


def load_fixture(name: str) -> tuple[dict, dict]:
    target = json.loads((FIXTURES / f"{name}.target.json").read_text())
    path = FIXTURES / f"{name}.expected.json"
    expected = json.loads(path.read_text()) if path.exists() else {}
    return target, expected


def memory_catalog(target: dict) -> dict[TableRef, TableInfo]:
    out = {}
    for i, t in enumerate(target["tables"]):
        schema, name = t["table"].split(".")
        ref = TableRef(schema, name)
        cols = []
        for col, typ in t["columns"].items():
            base = "numeric" if typ.startswith("numeric") else BASE_TYPES[typ]
            cols.append(Column(col, ColumnType(typ, base)))
        out[ref] = TableInfo(ref, i, tuple(cols), tuple(t["primary_key"]), 0)
    return out


def normalized(report: ReconcileReport) -> dict:
    doc = json.loads(json.dumps(reconcile_to_dict(report)))
    for k in ("elapsed_s", "journal", "target", "source"):
        doc.pop(k)
    return doc


async def run_fixture_memory(name: str) -> dict:
    target, _ = load_fixture(name)
    tables = memory_catalog(target)
    rows = {TableRef(*t["table"].split(".")): t["rows"] for t in target["tables"]}
    since = target.get("since")
    from replverify.reconcile.run import parse_since

    report = await reconcile_with(
        FIXTURES / f"{name}.jsonl",
        MemoryTarget(tables, rows),
        since=parse_since(since) if since else None,
        batch_rows=3,  # several batches per table
    )
    return normalized(report)


@pytest.mark.parametrize("name", fixture_names())
async def test_fixture_journals_in_memory(name):
    """Each fixture journal, through the whole reconcile with an in-memory target, gives
    its expected report (``REPLVERIFY_REGEN_FIXTURES=1`` rewrites them: review the diff)."""
    expected_path = FIXTURES / f"{name}.expected.json"
    if os.environ.get("REPLVERIFY_REGEN_FIXTURES") and not name.startswith("error_"):
        doc = await run_fixture_memory(name)
        expected_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    _, expected = load_fixture(name)
    if "error" in expected:
        with pytest.raises(JournalError) as e:
            await run_fixture_memory(name)
        assert e.value.line == expected["error"]["line"]
        assert expected["error"]["message"] in str(e.value)
        return
    assert await run_fixture_memory(name) == expected


async def create_fixture_db(dsn: str, name: str, target: dict) -> str:
    db = f"fx_{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {ident(db).sql('postgres')}")
        await conn.execute(f"CREATE DATABASE {ident(db).sql('postgres')}")
    finally:
        await conn.close()
    url = with_db(dsn, db)
    conn = await asyncpg.connect(url, server_settings={"TimeZone": "UTC"})
    try:
        for t in target["tables"]:
            name = quote_table(TableRef(*t["table"].split(".")))
            cols = [f"{ident(c).sql('postgres')} {typ}" for c, typ in t["columns"].items()]
            pk = ", ".join(ident(c).sql("postgres") for c in t["primary_key"])
            await conn.execute(f"CREATE TABLE {name} ({', '.join(cols)}, PRIMARY KEY ({pk}))")
            for row in t["rows"]:
                await conn.execute(
                    f"INSERT INTO {name} SELECT * FROM jsonb_populate_record(NULL::{name}, $1)",
                    json.dumps(row),
                )
    finally:
        await conn.close()
    return url


@pytest.mark.parametrize("name", [n for n in fixture_names() if "error" not in load_fixture(n)[1]])
async def test_fixture_journals_against_postgres_then_replay(clusters, name):
    """The same journals against real tables give the same reports; replaying the lost
    writes and reconciling again leaves nothing lost."""
    target, expected = load_fixture(name)
    url = await create_fixture_db(clusters.primary_dsn, name, target)
    since = target.get("since")
    report = await reconcile(FIXTURES / f"{name}.jsonl", url, since=since, batch_rows=3)
    assert normalized(report) == expected
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(replay_script(report))
    finally:
        await conn.close()
    again = await reconcile(FIXTURES / f"{name}.jsonl", url, since=since)
    assert again.lost == []
    assert items(again.conflicts) == items(report.conflicts)


# --------------------------------------------------------------------------- trouble


async def test_bad_value_for_a_column_type_names_the_line(clusters, tmp_path):
    url = await create_fixture_db(
        clusters.primary_dsn,
        "badvalue",
        {
            "tables": [
                {
                    "table": "public.t",
                    "columns": {"id": "bigint", "n": "numeric(8,2)"},
                    "primary_key": ["id"],
                    "rows": [{"id": 1, "n": "1.00"}],
                }
            ]
        },
    )
    path = tmp_path / "j.jsonl"
    lines = [
        {
            "v": 1,
            "txid": "a",
            "seq": i,
            "ts": "2026-01-01T00:00:00Z",
            "state": "committed",
            "op": "update",
            "table": "t",
            "key": {"id": i},
            "values": {"n": str(i)},
        }
        for i in range(1, 6)
    ]
    lines[3]["values"] = {"n": "not a number"}
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(JournalError) as e:
        await reconcile(path, url)
    assert e.value.line == 4 and "numeric" in str(e.value)


async def test_unknown_table_and_unreachable_servers_are_trouble(clusters, tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(
        json.dumps(
            {
                "v": 1,
                "txid": "a",
                "seq": 1,
                "ts": "2026-01-01T00:00:00Z",
                "state": "committed",
                "op": "delete",
                "table": "nope",
                "key": {"id": 1},
            }
        )
        + "\n"
    )
    with pytest.raises(JournalError, match="does not exist on the target"):
        await reconcile(path, clusters.primary_dsn)
    runner = CliRunner()
    dsn = "postgresql://app:s3cret@127.0.0.1:1/db"
    result = await asyncio.to_thread(
        runner.invoke, main, ["reconcile", "--journal", str(path), "--target", dsn]
    )
    assert result.exit_code == 2 and "s3cret" not in result.output
    missing = await asyncio.to_thread(
        runner.invoke, main, ["reconcile", "--journal", str(tmp_path / "nope"), "--target", dsn]
    )
    assert missing.exit_code == 2
