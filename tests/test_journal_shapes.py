"""``sql`` records parsed once per shape: a statement with other literals reuses the
parse of its shape (``journal/statements.py``). Whatever the statement, the result - the
Statement, or the refusal and its message - is the one parsing the statement itself gives.
No database needed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replverify.journal import statements
from replverify.journal.format import Statement, _Bad


def exact(sql: str) -> Statement | str:
    try:
        return statements._parse_exact.__wrapped__(sql)  # type: ignore[attr-defined]
    except _Bad as e:
        return f"refused: {e}"


def shaped(sql: str) -> Statement | str:
    try:
        return statements._parse_statement(sql)
    except _Bad as e:
        return f"refused: {e}"


def same(sql: str) -> None:
    # repr: Decimal('1.5E+3') and Decimal('1500') are equal but print differently
    assert repr(shaped(sql)) == repr(exact(sql)), sql


STRINGS = st.text(
    st.sampled_from(["a", "Z", "'", "\\", "\n", " ", "ü", "-", "*", "/", "$", '"', "é", "0"]),
    max_size=6,
).map(lambda s: "'" + s.replace("'", "''") + "'")
NUMBERS = st.sampled_from(
    ["0", "7", "00012", "42", "1.5", "1.", ".5", "1e3", "1.5e-3", "2E+2", "9" * 25, "0.0"]
)
LITERALS = st.one_of(
    STRINGS,
    NUMBERS,
    NUMBERS.map(lambda n: "-" + n),
    NUMBERS.map(lambda n: "- " + n),
    STRINGS.map(lambda s: s + "::text"),
    st.sampled_from(["NULL", "TRUE", "false", "E'x\\'y'", "$$d$$", "B'01'", "'a' 'b'"]),
    st.lists(NUMBERS, min_size=1, max_size=3).map(lambda xs: "ARRAY[" + ", ".join(xs) + "]"),
    st.tuples(NUMBERS, st.sampled_from(["+", "-", "*", "||"]), NUMBERS).map(" ".join),
    st.tuples(STRINGS, st.sampled_from(["", " "]), st.sampled_from(["x", "1", "AS b"])).map(
        "".join
    ),
)


@st.composite
def statements_(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["update", "delete", "insert", "upsert", "junk"]))
    lit = LITERALS
    if kind == "update":
        sets = ", ".join(f"c{i} = {draw(lit)}" for i in range(draw(st.integers(1, 3))))
        return f"UPDATE t SET {sets} WHERE id = {draw(lit)} AND k = {draw(lit)}"
    if kind == "delete":
        return f"DELETE FROM s.t WHERE id = {draw(lit)}" + draw(
            st.sampled_from(["", " AND k IS NULL", " AND k = 1 -- c", "; DELETE FROM t"])
        )
    rows = ", ".join(f"({draw(lit)}, {draw(lit)})" for _ in range(draw(st.integers(1, 3))))
    sql = f'INSERT INTO t (id, "Odd""col") VALUES {rows}'
    if kind == "upsert":
        sql += ' ON CONFLICT (id) DO UPDATE SET "Odd""col" = EXCLUDED."Odd""col"'
    if kind == "junk":
        sql += draw(st.sampled_from([" RETURNING 1", " /* x */", " WHERE 1 = 1", "$1"]))
    return sql


@settings(max_examples=600, deadline=None)
@given(statements_())
def test_a_shape_parses_as_the_statement_itself(sql: str) -> None:
    same(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE t SET a = 'it''s', b = -1.5e3, c = ARRAY[1,-2], d = '5'::int WHERE id = 1",
        "UPDATE t SET a = 'x\ny' WHERE id = 00012 AND b IS NULL",
        "UPDATE t SET a = .5 WHERE id = 1.",
        "UPDATE t SET a = -0, b = -0.0 WHERE id = 1",
        "INSERT INTO t (id, a) VALUES (1, 'x'), (2, 'y') ON CONFLICT (id) DO NOTHING",
        "INSERT INTO t VALUES (1, 'a\\b')",  # a backslash: not shaped, parsed itself
        "DELETE FROM t WHERE id = 5 - 3",  # refused, with its own message
        "DELETE FROM t WHERE id = '5' || '3'",
        "UPDATE t SET a = E'x' WHERE id = 1",
        "UPDATE t SET a = 'x' WHERE id = NULL",
        "UPDATE t SET a = 1 WHERE id = 1 AND id = 2",
        "INSERT INTO t (a, a) VALUES (1, 2)",
        "UPDATE t SET a = 'a' 'b' WHERE id = 1",
        "UPDATE t SET a = '\ue0000' WHERE id = 1",  # the marker character itself
        "UPDATE t2 SET c1 = 5, ü2 = 'x' WHERE id = 1",  # digits in names are no numbers
        "UPDATE t SET a = x.5 WHERE id = 1",
    ],
)
def test_statements_that_look_alike(sql: str) -> None:
    same(sql)


def test_one_parse_per_shape() -> None:
    statements._parse_template.cache_clear()
    for i in range(50):
        stmt = statements._parse_statement(
            f"UPDATE shape_t SET status = 's{i}', amount = {i}.25 WHERE id = {i}"
        )
        assert stmt.where == (("id", i),)
    assert statements._parse_template.cache_info().misses == 1
