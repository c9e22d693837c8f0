"""SQL building and --where validation (pure)."""

from __future__ import annotations

import pytest

from replverify.diff.align import KeyColumn, TablePlan
from replverify.diff.ranges import KeyRange
from replverify.diff.sql import TableSQL, parse_where
from replverify.errors import UsageError
from replverify.types import Column, ColumnType, TableRef

INT8 = ColumnType("bigint", "int8")
TEXT = ColumnType("text", "text", collation="default")


def make_plan(key=("id",), collate_c=False, whole=True):
    cols = (
        Column("id", INT8),
        Column("Name; DROP", TEXT),
        Column("amount", ColumnType("money", "money")),
    )
    return TablePlan(
        TableRef("My Schema", 'we"ird'),
        tuple(KeyColumn(k, collate_c) for k in key),
        "primary key",
        cols,
        (),
        0,
        whole,
    )


@pytest.mark.parametrize(
    "text",
    [
        "status = 'paid'",
        "id > 10 AND (amount < 5 OR note IS NULL)",
        "created_at >= now() - interval '1 day'",
        "lower(name) LIKE 'a%'",
        "flag",
        "NOT flag",
        "id IN (1, 2, 3)",
        "id BETWEEN 1 AND 9",
    ],
)
def test_where_accepts_boolean_conditions(text):
    parse_where(text)


@pytest.mark.parametrize(
    "text",
    [
        "1; DROP TABLE orders",
        "id = 1 -- comment",
        "id = 1 /* c */",
        "SELECT 1",
        "id IN (SELECT id FROM other)",
        "pg_terminate_backend(123) IS NOT NULL",
        "id + 1",
        "nextval('s') > 0",
        "id = $1",
        "",
        "id = ",
        "EXISTS (SELECT 1)",
        "t.id = 1",
        "'abc'",
    ],
)
def test_where_refuses_everything_else(text):
    with pytest.raises(UsageError):
        parse_where(text)


def test_identifiers_are_quoted_and_values_are_parameters():
    sql = TableSQL(make_plan())
    text, params = sql.rows(KeyRange((1,), (100,)))
    assert '"My Schema"."we""ird"' in text
    assert '"Name; DROP"' in text
    assert "$1" in text and "$2" in text and params == [1, 100]
    assert 'CAST("_rv_t"."amount" AS DECIMAL)' in text or "AS NUMERIC" in text.upper()


def test_text_keys_collate_c_when_needed():
    sql = TableSQL(make_plan(key=("Name; DROP",), collate_c=True))
    text, params = sql.split(KeyRange(("a",), None), 10)
    assert 'COLLATE "C"' in text and params == ["a", 10]


def test_composite_range_uses_row_comparison():
    sql = TableSQL(make_plan(key=("id", "Name; DROP")))
    text, params = sql.digest(KeyRange((1, "a"), (2, "b")))
    assert "> ($1, $2)" in text and "<= ($3, $4)" in text and params == [1, "a", 2, "b"]


def test_where_columns_are_qualified_and_parenthesised():
    sql = TableSQL(make_plan(), parse_where("id > 5 OR amount IS NULL"))
    text, _ = sql.digest(None)
    assert '("_rv_t".id > 5 OR "_rv_t".amount IS NULL)' in text


def test_copy_statement_inlines_integers_only():
    sql = TableSQL(make_plan(key=("id", "Name; DROP")))
    text, params = sql.copy_rows(KeyRange((-5, "a'b"), (10, "z")))
    assert "> ((-5), $1)" in text and "<= (10, $2)" in text and params == ["a'b", "z"]
    assert 'ORDER BY "_rv_t"."id", "_rv_t"."Name; DROP"' in text
    # a $n inside a --where literal: nothing is inlined, the server quotes the values
    quoted = TableSQL(make_plan(), parse_where("note <> 'costs $1'"))
    text, params = quoted.copy_rows(KeyRange((1,), (2,)))
    assert params == [1, 2] and "'costs $1'" in text


def test_statements_are_cached_per_shape():
    sql = TableSQL(make_plan())
    first = sql.row_hashes(KeyRange((1,), (100,)))
    second = sql.row_hashes(KeyRange((5,), (7,)))
    assert first[0] is second[0] and second[1] == [5, 7]
    assert sql.row_hashes(KeyRange(None, (7,)))[0] != first[0]
