"""Writes journaled by their effect, without a database: the records, the statement plans
(RETURNING added through sqlglot), the retry rule, and how reconcile judges the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replverify.db.catalog import TableInfo
from replverify.errors import JournalError, UsageError
from replverify.failover.effects import TableMeta, bind_effect, plan_write, safe_to_repeat
from replverify.journal.reader import JournalReader
from replverify.journal.resolve import row_writes
from replverify.journal.writer import JournalWriter
from replverify.reconcile.run import reconcile_with
from replverify.testing.memory import MemoryTarget
from replverify.types import Column, ColumnType, TableRef

ACC = TableRef("public", "acc")
META = TableMeta(ACC, ("id", "owner", "bal"), ("id",))
INT, TEXT = ColumnType("int4", "int4"), ColumnType("text", "text")
TABLES = {
    ACC: TableInfo(
        ACC, 1, (Column("id", INT, True), Column("owner", TEXT), Column("bal", INT)), ("id",), 0
    )
}


# --------------------------------------------------------------------------- records


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_statement_intent_then_post_images_then_marker(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with JournalWriter(path) as w:
        tx = w.transaction("t-1")
        of = tx.intent_statement(
            "update", "public.acc", "UPDATE acc SET bal = bal + $1 WHERE bal > $2", [5, 0]
        )
        assert tx.effect_rows(of, "update", "public.acc", [({"id": i}, {"bal": i}) for i in (1, 2)])
        tx.commit()
    recs = _lines(path)
    assert recs[0]["stmt"].startswith("UPDATE") and recs[0]["params"] == [5, 0]
    assert [r.get("of") for r in recs[1:3]] == [of, of] and recs[3]["state"] == "committed"
    assert recs[1]["ts"] == recs[2]["ts"]  # one batch, one write(2)
    read = list(JournalReader(path))
    assert read[0].stmt is not None and row_writes(read[0], TABLES) == []  # no rows of its own
    assert [w.rid for r in read[1:3] for w in row_writes(r, TABLES)] == [
        ("public", "acc", 1),
        ("public", "acc", 2),
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"state": "committed", "op": "update", "table": "t", "stmt": "UPDATE t SET a = 1"},
         "is an intent"),
        ({"state": "intent", "op": "update", "table": "t", "stmt": "x", "key": {"id": 1}},
         "unknown field"),
        ({"state": "intent", "op": "frob", "table": "t", "stmt": "x"}, '"op"'),
        ({"state": "intent", "op": "update", "table": "t", "stmt": "x", "params": {}},
         '"params"'),
        ({"state": "intent", "sql": "DELETE FROM t WHERE id = 1", "of": 3}, '"of"'),
    ],
)  # fmt: skip
def test_bad_effect_records_name_their_line(
    tmp_path: Path, record: dict[str, object], message: str
) -> None:
    base = {"v": 1, "txid": "t", "seq": 0, "ts": "2026-11-23T10:00:00+00:00"}
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({**base, **record}) + "\n")
    with pytest.raises(JournalError, match=message) as info:
        list(JournalReader(path))
    assert info.value.line == 1


# --------------------------------------------------------------------------- plans


def test_a_returned_row_splits_into_key_and_post_image() -> None:
    """The columns are found by position from the end of the row, after the
    application's own RETURNING items; the key in primary-key order."""
    two = TableMeta(ACC, ("owner", "bal", "id"), ("id", "owner"))  # key not in column order
    upsert = bind_effect(plan_write("INSERT INTO acc (id, bal) VALUES ($1, $2) RETURNING bal"), two)  # type: ignore[arg-type]
    assert upsert.rows.split((7, "ann", 7, 42)) == ({"id": 42, "owner": "ann"}, {"bal": 7})
    upd = bind_effect(plan_write("UPDATE acc SET bal = $1 WHERE id = $2 AND owner = $3"), two)  # type: ignore[arg-type]
    assert upd.returned == ("id", "owner", "bal")
    assert upd.rows.split((42, "ann", 9)) == ({"id": 42, "owner": "ann"}, {"bal": 9})
    gone = bind_effect(plan_write("DELETE FROM acc WHERE id = $1 RETURNING bal, owner"), two)  # type: ignore[arg-type]
    assert gone.rows.split((1, "x", 42, "ann")) == ({"id": 42, "owner": "ann"}, None)
    keyless = bind_effect(
        plan_write("INSERT INTO acc VALUES ($1, $2, $3)"),
        TableMeta(ACC, ("id", "owner", "bal"), ()),
    )  # type: ignore[arg-type]
    assert keyless.rows.split((1, "ann", None)) == ({"id": 1, "owner": "ann"}, {"bal": None})


def test_returning_is_added_through_sqlglot() -> None:
    plan = plan_write("UPDATE acc SET bal = bal + $1 WHERE id = $2")
    assert plan is not None and plan.op == "update" and plan.sets == ("bal",)
    effect = bind_effect(plan, META)
    assert effect.sql.endswith('RETURNING acc."id" AS _rv_0, acc."bal" AS _rv_1')
    assert effect.bound == 1
    upsert = bind_effect(
        plan_write(
            "INSERT INTO acc AS a (id, bal) VALUES ($1, $2) ON CONFLICT (id)"
            " DO UPDATE SET bal = a.bal + excluded.bal RETURNING a.bal"
        ),  # type: ignore[arg-type]
        META,
    )
    assert upsert.plan.op == "upsert" and upsert.bound == 1
    assert 'RETURNING a.bal, a."id" AS _rv_0, a."owner" AS _rv_1, a."bal" AS _rv_2' in upsert.sql
    ranged = bind_effect(plan_write("DELETE FROM acc WHERE id IN (SELECT 1)"), META)  # type: ignore[arg-type]
    assert ranged.bound is None and ranged.returned == ("id",)  # streamed


def test_reads_and_ddl_are_not_journaled_and_what_cannot_be_is_refused() -> None:
    assert plan_write("SELECT * FROM acc") is None
    assert plan_write("CREATE TABLE x (a int)") is None
    for sql in (
        "WITH w AS (DELETE FROM acc RETURNING id) SELECT count(*) FROM w",
        "UPDATE acc SET bal = 0; DELETE FROM acc",
    ):
        with pytest.raises(UsageError):
            plan_write(sql)
    with pytest.raises(UsageError, match="primary key"):
        bind_effect(plan_write("UPDATE acc SET id = id + 1"), META)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="no primary key"):
        bind_effect(
            plan_write("UPDATE h SET a = 1"),  # type: ignore[arg-type]
            TableMeta(TableRef("public", "h"), ("a",), ()),
        )


@pytest.mark.parametrize(
    ("sql", "args", "safe"),
    [
        ("SELECT bal FROM acc WHERE id = $1", (1,), True),
        ("UPDATE acc SET bal = $1 WHERE id = $2", (5, 1), True),
        ("DELETE FROM acc WHERE id = $1", (1,), True),
        ("INSERT INTO acc (id, bal) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET bal = "
         "EXCLUDED.bal", (1, 2), True),
        ("UPDATE acc SET bal = bal + $1 WHERE id = $2", (5, 1), False),
        ("UPDATE acc SET bal = $1 WHERE owner = $2", (5, "x"), False),  # not keyed
        ("INSERT INTO acc (id, bal) VALUES ($1, $2)", (1, 2), False),
        ("INSERT INTO h (mtime) VALUES (CURRENT_TIMESTAMP)", (), False),
    ],
)  # fmt: skip
def test_safe_to_repeat(sql: str, args: tuple[object, ...], safe: bool) -> None:
    assert safe_to_repeat(sql, args, ("id",)) is safe


# --------------------------------------------------------------------------- reconcile


async def test_reconcile_judges_post_images_and_names_in_doubt_statements(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.jsonl"
    stmt = "UPDATE acc SET bal = bal + $1 WHERE bal > $2"
    with JournalWriter(path) as w:
        t1 = w.transaction("t-1")  # committed, on the target: durable
        of = t1.intent_statement("update", "public.acc", stmt, [5, 0])
        rows = [({"id": 1}, {"bal": 15}), ({"id": 2}, {"bal": 25})]
        t1.effect_rows(of, "update", "public.acc", rows)
        t1.commit()
        t2 = w.transaction("t-2")  # committed, the target lacks it: lost
        of = t2.intent_statement("insert", "public.acc", "INSERT INTO acc VALUES ($1, $2, $3)",
                                 [3, "cy", 1])  # fmt: skip
        t2.effect_rows(of, "insert", "public.acc", [({"id": 3}, {"owner": "cy", "bal": 1})])
        t2.commit()
        t3 = w.transaction("t-3")  # the COMMIT answer was lost: rows known, in doubt
        of = t3.intent_statement("update", "public.acc", stmt, [1, 20])
        t3.effect_rows(of, "update", "public.acc", [({"id": 2}, {"bal": 26})])
        t4 = w.transaction("t-4")  # the endpoint failed mid-statement, outcome unknown
        t4.intent_statement("delete", "public.acc", "DELETE FROM acc WHERE bal > $1", [0])
        t5 = w.transaction("t-5")  # aborted
        t5.intent_statement("delete", "public.acc", "DELETE FROM acc", [])
        t5.abort()
    target = MemoryTarget(
        TABLES, {ACC: [{"id": 1, "owner": "a", "bal": 15}, {"id": 2, "owner": "b", "bal": 25}]}
    )
    report = await reconcile_with(path, target)
    assert [f.write.record.txid for f in report.lost] == ["t-2"]
    assert report.counts["durable"] == 2 and not report.conflicts
    doubt = {f.write.record.txid: f for f in report.in_doubt}
    assert set(doubt) == {"t-3", "t-4"}
    assert doubt["t-3"].applied is False and stmt in doubt["t-3"].reason
    assert doubt["t-4"].write.key == () and doubt["t-4"].applied is None
    assert "DELETE FROM acc WHERE bal > $1 with (0)" in doubt["t-4"].reason


def test_a_record_of_a_new_shape_is_still_checked_by_the_reader(tmp_path: Path) -> None:
    with JournalWriter(tmp_path / "j.jsonl") as w:
        tx = w.transaction()
        of = tx.intent_statement("update", "public.acc", "UPDATE acc SET bal = 1", [])
        tx.effect_rows(of, "update", "public.acc", [({"id": 1}, {"bal": 1})])
        tx.effect_rows(of, "update", "public.acc", [({"id": 2}, {"bal": 2})])  # known shape
        with pytest.raises(UsageError, match="key"):  # an array as a key: a new shape
            tx.effect_rows(of, "update", "public.acc", [({"id": [1, 2]}, {"bal": 2})])
    assert len(list(JournalReader(tmp_path / "j.jsonl"))) == 3


def test_a_keyless_row_is_replayed_only_where_absent() -> None:
    from replverify.reconcile.replay import insert_absent_statement

    sql = insert_absent_statement(TableRef("public", "h"), {"tid": "3", "filler": None})
    head = """INSERT INTO "public"."h" ("tid", "filler") SELECT '3', NULL WHERE NOT EXISTS"""
    guard = """(SELECT 1 FROM "public"."h" WHERE CAST("tid" AS TEXT) IS NOT DISTINCT FROM '3'"""
    assert sql == head + guard + ' AND "filler" IS NULL)'
