"""The journal: reading (validation, torn tails, sql records, streaming) and writing
(transactions, fsync policy, concurrent writers, crash repair). No database needed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
import tracemalloc
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from replverify.db.catalog import TableInfo
from replverify.errors import JournalError, UsageError
from replverify.journal import writer as journal_mod
from replverify.journal.format import Marker, RowWrite, Statement, WriteRecord
from replverify.journal.reader import JournalReader
from replverify.journal.resolve import RowResolver, row_writes
from replverify.journal.statements import journal_value, parse_statement, render_sql
from replverify.journal.writer import JournalWriter, definitely_failed
from replverify.reconcile.run import reconcile_with
from replverify.testing.memory import MemoryTarget
from replverify.types import Column, ColumnType, TableRef

ORDERS = TableRef("public", "orders")
LINES = TableRef("public", "order_lines")
TOKENS = TableRef("public", "tokens")
NOKEY = TableRef("public", "events")


def _col(name: str, fmt: str, base: str) -> Column:
    return Column(name, ColumnType(fmt, base))


TABLES = {
    ORDERS: TableInfo(
        ORDERS,
        1,
        (
            _col("id", "bigint", "int8"),
            _col("status", "text", "text"),
            _col("amount", "numeric(12,2)", "numeric"),
            _col("note", "text", "text"),
        ),
        ("id",),
        0,
    ),
    LINES: TableInfo(
        LINES,
        2,
        (
            _col("order_id", "bigint", "int8"),
            _col("line_no", "integer", "int4"),
            _col("sku", "text", "text"),
        ),
        ("order_id", "line_no"),
        0,
    ),
    TOKENS: TableInfo(
        TOKENS, 3, (_col("id", "uuid", "uuid"), _col("v", "text", "text")), ("id",), 0
    ),
    NOKEY: TableInfo(NOKEY, 4, (_col("at", "text", "text"), _col("kind", "text", "text")), (), 0),
}

TS = "2026-11-23T10:00:00+00:00"


def rec(**fields) -> dict:
    base = {"v": 1, "txid": "t1", "seq": 1, "ts": TS, "state": "committed"}
    return {**base, **fields}


def write_lines(path: Path, *objs: dict | str, tail: str = "") -> Path:
    path.write_text(
        "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs) + tail
    )
    return path


GOOD = rec(op="update", table="orders", key={"id": 1}, values={"note": "x"})

# --------------------------------------------------------------------------- reading


def test_reads_every_kind_of_record(tmp_path):
    path = write_lines(
        tmp_path / "j.jsonl",
        rec(
            op="insert",
            table="public.orders",
            key={"id": 1},
            values={"amount": 12.50},
            meta={"app": "shop"},
        ),
        rec(
            txid=7,
            seq=2,
            state="intent",
            op="delete",
            table='"public"."orders"',
            key={"id": 2},
            before={"status": "new"},
        ),
        {"v": 1, "txid": 7, "state": "committed", "ts": "2026-11-23T10:00:01Z"},
        rec(seq=3, sql="UPDATE orders SET note = 'x' WHERE id = 3"),
        {"v": 1, "txid": "t9", "state": "aborted", "ts": TS, "seq": 9},
    )
    reader = JournalReader(path)
    records = list(reader)
    assert [type(r).__name__ for r in records] == [
        "WriteRecord",
        "WriteRecord",
        "Marker",
        "WriteRecord",
        "Marker",
    ]
    first, second, marker, sql, aborted = records
    assert isinstance(first, WriteRecord) and first.values == {"amount": Decimal("12.50")}
    assert first.table == ORDERS and first.ts == dt.datetime(2026, 11, 23, 10, tzinfo=dt.UTC)
    assert isinstance(second, WriteRecord) and second.txid == 7 and second.state == "intent"
    assert isinstance(marker, Marker) and marker.state == "committed" and marker.line == 3
    assert isinstance(sql, WriteRecord) and sql.op == "update" and sql.statement is not None
    assert isinstance(aborted, Marker) and aborted.seq == 9
    assert reader.torn is None and reader.lines == 5


BAD_LINES = [
    ("{not json", "not valid JSON"),
    ('"a string"', "must be a JSON object"),
    ("", "empty line"),
    (json.dumps(rec(v=2, op="delete", table="orders", key={"id": 1})), '"v" must be 1'),
    (json.dumps(rec(txid="", op="delete", table="orders", key={"id": 1})), '"txid"'),
    (json.dumps(rec(ts="yesterday", op="delete", table="orders", key={"id": 1})), "ISO 8601"),
    (
        json.dumps(rec(ts="2026-11-23T10:00:00", op="delete", table="orders", key={"id": 1})),
        "UTC offset",
    ),
    (json.dumps(rec(seq=-1, op="delete", table="orders", key={"id": 1})), '"seq"'),
    (json.dumps(rec(state="done", op="delete", table="orders", key={"id": 1})), '"state"'),
    (json.dumps({"v": 1, "txid": "t", "ts": TS, "state": "intent"}), "marker"),
    (json.dumps(rec(op="merge", table="orders", key={"id": 1})), '"op" must be one of'),
    (json.dumps(rec(op="update", table="orders", key={"id": 1})), 'needs "values"'),
    (json.dumps(rec(op="update", table="orders", key={"id": 1}, values={})), "at least one"),
    (json.dumps(rec(op="delete", table="orders", key={"id": 1}, values={"a": 1})), 'no "values"'),
    (json.dumps(rec(op="delete", table="orders", key={})), '"key"'),
    (json.dumps(rec(op="delete", table="orders", key={"id": None})), '"key"."id"'),
    (json.dumps(rec(op="delete", table="a.b.c", key={"id": 1})), "bad table name"),
    (
        json.dumps(rec(op="delete", table="orders", key={"id": 1}, befor={})),
        "unknown field(s) 'befor'",
    ),
    (json.dumps(rec(op="delete", table="orders", key={"id": 1}, meta=[1])), '"meta"'),
    (json.dumps(rec(sql="DROP TABLE orders")), "not DROP"),
    (
        json.dumps(rec(sql="UPDATE orders SET note = 'x' WHERE id = 1", table="orders")),
        'must not also have "table"',
    ),
    (json.dumps(rec(op="delete", sql="UPDATE orders SET note = 'x' WHERE id = 1")), '"op" says'),
    (
        '{"v": 1, "txid": "t", "seq": 1, "ts": "' + TS + '", "state": "committed", "op": "delete",'
        ' "table": "orders", "key": {"id": NaN}}',
        "NaN",
    ),
    (b"\xff\xfe".decode("latin-1"), "not valid JSON"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_a_bad_line_is_an_error_naming_it(tmp_path, line, message):
    path = write_lines(tmp_path / "j.jsonl", GOOD, line, GOOD)
    with pytest.raises(JournalError) as e:
        list(JournalReader(path))
    assert e.value.line == 2 and e.value.path == str(path)
    assert message in str(e.value)
    assert str(e.value).startswith(f"{path}:2: ")


def test_invalid_utf8_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"v": "\xff"}\n')
    with pytest.raises(JournalError, match="not UTF-8") as e:
        list(JournalReader(path))
    assert e.value.line == 2


def test_a_torn_last_line_is_skipped_and_reported(tmp_path):
    path = write_lines(tmp_path / "j.jsonl", GOOD, GOOD, tail='{"v": 1, "txid": "t2", "se')
    reader = JournalReader(path)
    assert len(list(reader)) == 2
    assert reader.torn is not None and reader.torn.line == 3 and reader.torn.size == 26
    assert "line 3 is torn" in reader.torn.describe()


def test_a_torn_line_in_the_middle_is_an_error(tmp_path):
    path = write_lines(tmp_path / "j.jsonl", GOOD, '{"v": 1, "txid": "t2", "se', GOOD)
    with pytest.raises(JournalError, match="not valid JSON") as e:
        list(JournalReader(path))
    assert e.value.line == 2


def test_a_complete_last_line_without_newline_is_read(tmp_path):
    path = write_lines(tmp_path / "j.jsonl", GOOD, tail=json.dumps(GOOD))
    reader = JournalReader(path)
    assert len(list(reader)) == 2 and reader.torn is None


def test_a_last_line_that_is_json_but_invalid_is_an_error_not_torn(tmp_path):
    path = write_lines(tmp_path / "j.jsonl", GOOD, tail=json.dumps({"v": 1}))
    with pytest.raises(JournalError) as e:
        list(JournalReader(path))
    assert e.value.line == 2


def test_overlong_lines_are_refused_without_reading_them_whole(tmp_path):
    path = write_lines(
        tmp_path / "j.jsonl",
        GOOD,
        rec(op="delete", table="orders", key={"id": 1}, meta={"pad": "x" * 5000}),
    )
    with pytest.raises(JournalError, match="longer than 1000 bytes") as e:
        list(JournalReader(path, max_line_bytes=1000))
    assert e.value.line == 2


def test_bom_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n")
    assert len(list(JournalReader(path))) == 1


def test_a_missing_journal_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read journal"):
        list(JournalReader(tmp_path / "nope.jsonl"))


# --------------------------------------------------------------------------- sql records

GOOD_SQL = [
    (
        "INSERT INTO orders (id, status, amount) VALUES (1, 'new', 12.50), (2, E'it\\'s', -3)",
        Statement(
            "insert",
            ORDERS,
            columns=("id", "status", "amount"),
            rows=((1, "new", Decimal("12.50")), (2, "it's", -3)),
        ),
    ),
    (
        "insert into Public.ORDERS values (1, $$a 'b'$$, '2.5'::numeric, NULL)",
        Statement("insert", ORDERS, rows=((1, "a 'b'", "2.5", None),)),
    ),
    (
        'INSERT INTO "Odd"."T" ("A") VALUES (TRUE) RETURNING "A"',
        Statement("insert", TableRef("Odd", "T"), columns=("A",), rows=((True,),)),
    ),
    (
        "INSERT INTO orders (id, note) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET note = "
        "EXCLUDED.note",
        Statement(
            "upsert", ORDERS, columns=("id", "note"), rows=((1, "x"),), on_conflict=("note",)
        ),
    ),
    (
        "INSERT INTO orders (id) VALUES (1) ON CONFLICT DO NOTHING",
        Statement("upsert", ORDERS, columns=("id",), rows=((1,),)),
    ),
    (
        "UPDATE orders o SET note = 'x', amount = -(1.5) WHERE o.id = 4 AND status = 'new' "
        "AND note IS NULL",
        Statement(
            "update",
            ORDERS,
            assignments=(("note", "x"), ("amount", Decimal("-1.5"))),
            where=(("id", 4), ("status", "new"), ("note", None)),
        ),
    ),
    ("DELETE FROM public.orders WHERE (id = 5)", Statement("delete", ORDERS, where=(("id", 5),))),
    (
        "UPDATE t SET a = ARRAY[1, 2], b = B'101' WHERE 7 = id",
        Statement(
            "update",
            TableRef("public", "t"),
            assignments=(("a", [1, 2]), ("b", "101")),
            where=(("id", 7),),
        ),
    ),
]


@pytest.mark.parametrize(("sql", "expected"), GOOD_SQL)
def test_sql_records_parse_into_statements(sql, expected):
    assert parse_statement(sql) == expected


BAD_SQL = [
    ("CREATE TABLE x (a int)", "not CREATE"),
    ("ALTER TABLE orders ADD COLUMN x int", "must be an INSERT, UPDATE or DELETE"),
    ("SELECT 1", "not SELECT"),
    ("UPDATE orders SET note = 'a' WHERE id = 1; DELETE FROM orders WHERE id = 2", "one statement"),
    ("UPDATE orders SET amount = amount + 1 WHERE id = 1", "only literal values"),
    ("UPDATE orders SET note = now()::text WHERE id = 1", "only literal values"),
    ("INSERT INTO orders (id, placed) VALUES (1, now())", "not a literal value"),
    ("INSERT INTO orders (id) VALUES (DEFAULT)", "not a literal value"),
    ("INSERT INTO orders SELECT * FROM old_orders", "not SELECT"),
    ("WITH x AS (SELECT 1) UPDATE orders SET note = 'a' WHERE id = 1", "WITH"),
    ("UPDATE orders SET note = 'a'", "needs a WHERE"),
    ("UPDATE orders SET note = 'a' WHERE id = 1 OR id = 2", "joined by AND"),
    ("UPDATE orders SET note = 'a' WHERE id > 1", "joined by AND"),
    ("UPDATE orders SET note = 'a' WHERE id = other_id", "compare a column with a literal"),
    ("UPDATE orders SET note = 'a' WHERE id = NULL", "IS NULL"),
    ("UPDATE orders SET note = 'a' WHERE id = 1 AND id = 1", "twice"),
    ("UPDATE orders SET note = 'a' FROM x WHERE orders.id = 1", "UPDATE ... FROM"),
    ("DELETE FROM orders USING x WHERE orders.id = x.id", "USING"),
    ("UPDATE orders SET note = 'a' WHERE other.id = 1", "names another table"),
    (
        "INSERT INTO orders (id, note) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET note = 'y'",
        "EXCLUDED.col",
    ),
    (
        "INSERT INTO orders (id, note) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET note = "
        "EXCLUDED.note WHERE orders.note IS NULL",
        "ON CONFLICT ... WHERE",
    ),
    ("INSERT INTO orders (id, id) VALUES (1, 2)", "twice"),
    ("INSERT INTO orders (id, note) VALUES (1)", "a row of 1 values"),
    ("INSERT INTO", "does not parse"),
]


@pytest.mark.parametrize(("sql", "message"), BAD_SQL)
def test_unsupported_sql_is_a_clear_error(sql, message):
    with pytest.raises(UsageError) as e:
        parse_statement(sql)
    assert message in str(e.value)


# --------------------------------------------------------------------------- resolution


def writes_of(obj: dict, tmp_path: Path) -> list[RowWrite]:
    path = write_lines(tmp_path / "r.jsonl", obj)
    (record,) = list(JournalReader(path))
    assert isinstance(record, WriteRecord)
    return row_writes(record, TABLES, path=str(path))


def test_sql_rows_get_their_keys_from_the_catalog(tmp_path):
    ws = writes_of(rec(sql="INSERT INTO order_lines VALUES (1, 1, 'a'), (1, 2, 'b')"), tmp_path)
    assert [w.key for w in ws] == [
        (("order_id", 1), ("line_no", 1)),
        (("order_id", 1), ("line_no", 2)),
    ]
    assert [w.index for w in ws] == [0, 1] and ws[0].op == "insert" and ws[0].check == ("sku",)
    (w,) = writes_of(
        rec(sql="UPDATE orders SET note = 'x' WHERE status = 'new' AND id = '7'"), tmp_path
    )
    assert w.key == (("id", "7"),) and w.rid == ("public", "orders", 7)
    assert (
        w.before == {"status": "new"} and w.check == ("note",) and w.post_image() == {"note": "x"}
    )
    (w,) = writes_of(
        rec(
            sql="INSERT INTO orders (id, note, status) VALUES (1, 'a', 'b') "
            "ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.note"
        ),
        tmp_path,
    )
    assert w.op == "upsert" and w.on_conflict == ("note",) and w.check == ("note",)


def test_structured_keys_are_normalised_per_type(tmp_path):
    (a,) = writes_of(rec(op="delete", table="orders", key={"id": "42"}), tmp_path)
    (b,) = writes_of(rec(op="delete", table="orders", key={"id": 42}), tmp_path)
    assert a.rid == b.rid and dict(a.key_display) == {"id": 42}
    u = uuid.uuid4()
    (c,) = writes_of(rec(op="delete", table="tokens", key={"id": str(u).upper()}), tmp_path)
    (d,) = writes_of(rec(op="delete", table="tokens", key={"id": str(u)}), tmp_path)
    assert c.rid == d.rid and dict(c.key_display) == {"id": str(u)}
    (e,) = writes_of(
        rec(op="update", table="events", key={"at": "x"}, values={"kind": "k"}), tmp_path
    )
    assert e.key == (("at", "x"),)  # no primary key: the journal's key columns


RESOLUTION_ERRORS = [
    (rec(op="delete", table="nope", key={"id": 1}), "does not exist on the target"),
    (rec(op="delete", table="orders", key={"status": "x"}), "not the primary key"),
    (
        rec(op="update", table="orders", key={"id": 1}, values={"colour": "red"}),
        "no column 'colour'",
    ),
    (rec(op="delete", table="orders", key={"id": 1}, before={"x": 1}), "no column 'x'"),
    (rec(op="delete", table="orders", key={"id": "abc"}), "not a valid bigint"),
    (rec(op="update", table="orders", key={"id": 1}, values={"id": 2}), "changes the key"),
    (rec(sql="UPDATE order_lines SET sku = 'x' WHERE order_id = 1"), "missing 'line_no'"),
    (rec(sql="INSERT INTO orders (status) VALUES ('x')"), "does not give key column"),
    (rec(sql="INSERT INTO orders (id) VALUES (1), (1)"), "twice"),
    (rec(sql="INSERT INTO orders VALUES (1, 'a', 1, 'n', 'extra')"), "more values"),
    (rec(sql="DELETE FROM events WHERE at = 'x'"), "no primary key"),
]


@pytest.mark.parametrize(("obj", "message"), RESOLUTION_ERRORS)
def test_records_that_do_not_fit_the_catalog_are_errors(tmp_path, obj, message):
    with pytest.raises(JournalError) as e:
        writes_of(obj, tmp_path)
    assert e.value.line == 1 and message in str(e.value)


# --------------------------------------------------------------------------- streaming


def _big_journal(path: Path, lines: int, rows: int = 200) -> Path:
    """Transactions over a few rows: the rows written stay few however long the journal."""
    with path.open("w") as f:
        for i in range(lines // 2):
            f.write(
                json.dumps(
                    {
                        "v": 1,
                        "txid": f"t{i}",
                        "seq": i,
                        "ts": TS,
                        "state": "intent",
                        "op": "update",
                        "table": "orders",
                        "key": {"id": i % rows},
                        "values": {"note": f"n{i}"},
                    }
                )
                + "\n"
            )
            f.write(json.dumps({"v": 1, "txid": f"t{i}", "state": "committed", "ts": TS}) + "\n")
    return path


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_streams_in_constant_memory(tmp_path):
    small = _big_journal(tmp_path / "small.jsonl", 2_000)
    big = _big_journal(tmp_path / "big.jsonl", 20_000)
    peaks = [_peak(lambda p=p: sum(1 for _ in JournalReader(p))) for p in (small, big)]
    assert peaks[1] < peaks[0] + 64 * 1024, peaks  # ten times the lines, the same memory


def test_reconcile_memory_grows_with_rows_not_lines(tmp_path):
    """20 rows, each written 50 or 500 times; 5 of them lost their last writes."""
    small = _big_journal(tmp_path / "small.jsonl", 2_000, rows=20)
    big = _big_journal(tmp_path / "big.jsonl", 20_000, rows=20)
    reports = []

    def run(path: Path, n: int) -> None:
        last = {i: f"n{n - 20 + i}" for i in range(20)}  # the last note of each row
        rows = [{"id": i, "note": "stale" if i < 5 else last[i]} for i in range(20)]
        target = MemoryTarget(TABLES, {ORDERS: rows})
        reports.append(asyncio.run(reconcile_with(path, target)))

    peaks = [_peak(lambda p=p, n=n: run(p, n)) for p, n in ((small, 1_000), (big, 10_000))]
    assert peaks[1] < peaks[0] * 1.2 + 128 * 1024, peaks  # ten times the lines
    assert reports[1].entries == 10_000 and reports[1].counts["superseded"] == 9_980
    assert reports[1].counts["lost"] == 5 and reports[1].counts["durable"] == 15
    assert all(f.chain_total == 500 and len(f.chain) == 32 for f in reports[1].lost)
    assert [f.restore.update for f in reports[1].lost if f.restore] == [
        {"note": f"n{10_000 - 20 + i}"} for i in range(5)
    ]


# --------------------------------------------------------------------------- writing


def read(path: Path) -> list:
    return list(JournalReader(path))


def test_a_transaction_writes_intents_then_its_marker(tmp_path):
    path = tmp_path / "w.jsonl"
    with JournalWriter(path, txid_prefix="app") as j:
        with j.transaction() as tx:
            tx.intent(
                "update",
                "orders",
                {"id": 1},
                {"amount": Decimal("12.50")},
                before={"amount": Decimal("10")},
            )
            tx.intent(
                "insert",
                "public.orders",
                {"id": 2},
                {"note": None, "at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
            )
        assert tx.state == "committed"
        j.write("delete", "orders", {"id": 3})
    records = read(path)
    assert [(type(r).__name__, r.txid, r.state) for r in records] == [
        ("WriteRecord", "app-1", "intent"),
        ("WriteRecord", "app-1", "intent"),
        ("Marker", "app-1", "committed"),
        ("WriteRecord", "app-2", "committed"),
    ]
    first = records[0]
    assert isinstance(first, WriteRecord) and first.values == {"amount": "12.50"}
    assert records[1].values == {"note": None, "at": "2026-01-01T00:00:00+00:00"}
    assert [r.seq for r in records] == [0, 1, 2, 3]


def test_exceptions_settle_by_what_the_database_knows(tmp_path):
    path = tmp_path / "w.jsonl"
    with JournalWriter(path) as j:
        with pytest.raises(asyncpg.UniqueViolationError), j.transaction("refused") as tx:
            tx.intent("insert", "orders", {"id": 1}, {"note": "x"})
            raise asyncpg.UniqueViolationError("duplicate key")
        assert tx.state == "aborted"
        with pytest.raises(ConnectionResetError), j.transaction("lost") as tx2:
            tx2.intent("insert", "orders", {"id": 2}, {"note": "x"})
            raise ConnectionResetError()
        assert tx2.state == "in doubt"
        with pytest.raises(asyncpg.AdminShutdownError), j.transaction("shutdown") as tx3:
            tx3.intent("insert", "orders", {"id": 3}, {"note": "x"})
            raise asyncpg.AdminShutdownError("terminating connection")
        assert tx3.state == "in doubt"
        with pytest.raises(ValueError), j.transaction("nothing"):
            raise ValueError("before any intent")
    markers = [(r.txid, r.state) for r in read(path) if isinstance(r, Marker)]
    assert markers == [("refused", "aborted")]
    assert definitely_failed(asyncpg.SerializationError("x"))
    assert not definitely_failed(asyncpg.ConnectionDoesNotExistError("x"))
    assert not definitely_failed(asyncio.CancelledError())
    with pytest.raises(UsageError, match="already aborted"):
        tx.commit()


async def test_async_transactions_from_many_tasks(tmp_path):
    path = tmp_path / "w.jsonl"
    async with JournalWriter(path) as j:

        async def work(i: int) -> None:
            async with j.transaction() as tx:
                tx.intent("update", "orders", {"id": i}, {"note": f"n{i}"})
                await asyncio.sleep(0)
                tx.intent_sql("UPDATE orders SET amount = $1 WHERE id = $2", Decimal("1.5"), i)
                await asyncio.sleep(0)

        await asyncio.gather(*(work(i) for i in range(200)))
    records = read(path)
    assert len(records) == 600
    by_tx: dict[object, list[str]] = {}
    for r in records:
        by_tx.setdefault(r.txid, []).append(r.state)
    assert all(states == ["intent", "intent", "committed"] for states in by_tx.values())
    assert [r.seq for r in records] == list(range(600))


def test_threads_append_whole_lines_and_commits_share_fsyncs(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        synced.append(fd)
        threading.Event().wait(0.002)
        real_fsync(fd)

    monkeypatch.setattr(journal_mod.os, "fsync", slow_fsync)
    path = tmp_path / "w.jsonl"
    j = JournalWriter(path)
    synced.clear()

    def work(t: int) -> None:
        for i in range(100):
            with j.transaction() as tx:
                tx.intent("update", "orders", {"id": t * 1000 + i}, {"note": "x" * (i % 50)})
                tx.intent("delete", "orders", {"id": t * 1000 + i + 500})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    j.close()
    records = read(path)
    assert len(records) == 8 * 100 * 3
    assert sorted(r.seq for r in records) == [r.seq for r in records]  # file order = seq order
    assert len({r.txid for r in records}) == 800
    assert len(synced) < 800  # group commit: concurrent commits shared fsyncs


@pytest.mark.parametrize(("policy", "expected"), [("commit", 1), ("always", 4), ("never", 0)])
def test_fsync_policy(tmp_path, monkeypatch, policy, expected):
    path = tmp_path / "w.jsonl"
    path.touch()
    calls = []
    monkeypatch.setattr(journal_mod.os, "fsync", lambda fd: calls.append(fd))
    j = JournalWriter(path, fsync=policy)
    with j.transaction() as tx:
        tx.intent("update", "orders", {"id": 1}, {"note": "a"})
        tx.intent("update", "orders", {"id": 2}, {"note": "a"})
        tx.intent("update", "orders", {"id": 3}, {"note": "a"})
    assert len(calls) == expected
    tx2 = j.transaction()
    tx2.intent("delete", "orders", {"id": 1})
    before = len(calls)
    tx2.abort()
    assert len(calls) - before == (1 if policy == "always" else 0)  # aborts need no fsync
    monkeypatch.undo()
    j.close()
    with pytest.raises(UsageError, match="fsync must be"):
        JournalWriter(path, fsync="sometimes")  # type: ignore[arg-type]


def test_reopening_cuts_a_torn_tail_and_continues_the_sequence(tmp_path):
    path = tmp_path / "w.jsonl"
    with JournalWriter(path) as j:
        j.write("delete", "orders", {"id": 1})
        j.write("delete", "orders", {"id": 2})
    with path.open("a") as f:
        f.write('{"v": 1, "txid": "crash", "seq": 2, "ts": "2026-11')
    reader = JournalReader(path)
    assert len(list(reader)) == 2 and reader.torn is not None
    with JournalWriter(path) as j:
        assert j.repaired > 0
        j.write("delete", "orders", {"id": 3})
    reader = JournalReader(path)
    records = list(reader)
    assert reader.torn is None and [r.seq for r in records] == [0, 1, 2]


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    with JournalWriter(tmp_path / "w.jsonl") as j:
        tx = j.transaction()
        with pytest.raises(UsageError, match="not a valid journal record"):
            tx.intent("merge", "orders", {"id": 1}, {"a": 1})  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="cannot journal this statement"):
            tx.intent_sql("CREATE TABLE x (a int)")
        with pytest.raises(UsageError, match="only literal values"):
            tx.intent_sql("UPDATE orders SET amount = amount + $1 WHERE id = $2", 1, 2)
        with pytest.raises(UsageError, match=r"\$3 has no argument"):
            tx.intent_sql("UPDATE orders SET note = $3 WHERE id = $1", 1)
    assert read(tmp_path / "w.jsonl") == []


def test_render_sql_inlines_parameters_as_literals():
    sql = render_sql(
        "INSERT INTO t (id, a, b, c, d, e, f) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            -5,
            "it's",
            None,
            Decimal("12.50"),
            dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            [1, 2],
            {"k": True},
        ],
    )
    assert sql == (
        "INSERT INTO t (id, a, b, c, d, e, f) VALUES (-5, 'it''s', NULL, 12.50, "
        "'2026-01-01T00:00:00+00:00', '{1,2}', '{\"k\": true}')"
    )
    stmt = parse_statement(sql)
    assert stmt.rows == (
        (-5, "it's", None, Decimal("12.50"), "2026-01-01T00:00:00+00:00", "{1,2}", '{"k": true}'),
    )


def test_journal_values_of_python_objects():
    u = uuid.uuid4()
    assert journal_value(Decimal("1.10")) == "1.10"
    assert journal_value(float("nan")) == "NaN" and journal_value(1.5) == 1.5
    assert journal_value(u) == str(u)
    assert journal_value(b"\x00\xff") == "\\x00ff"
    assert journal_value(dt.date(2026, 1, 2)) == "2026-01-02"
    assert journal_value({"a": [Decimal("1"), None]}) == {"a": ["1", None]}


def test_the_fast_record_constructor_matches_the_dataclass(tmp_path):
    (w,) = writes_of(
        rec(
            op="update", table="orders", key={"id": 1}, values={"note": "x"}, before={"note": None}
        ),
        tmp_path,
    )
    again = RowWrite(
        w.record,
        w.index,
        w.op,
        w.table,
        w.key,
        w.rid,
        w.key_display,
        w.values,
        w.check,
        w.before,
        w.on_conflict,
    )
    assert again == w and hash(w.rid) == hash(again.rid)
    r = w.record
    fields = [getattr(r, f) for f in WriteRecord.__struct_fields__]
    assert WriteRecord(*fields) == r
    with pytest.raises(AttributeError):
        r.line = 5  # type: ignore[misc]
    assert RowResolver(TABLES).key_identity(ORDERS, {"id": "1"}) == w.rid
