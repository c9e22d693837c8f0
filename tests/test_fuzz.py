"""Fuzzing: whatever a journal file or a --where holds, the answer is a verdict or a
clear error (a ReplverifyError), never a traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replverify.diff.sql import parse_where
from replverify.errors import ReplverifyError, UsageError
from replverify.journal.reader import JournalReader
from replverify.journal.writer import JournalWriter

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

# ----------------------------------------------------------------------- --where

_WORDS = (
    "id amount status placed_at paid note customer items x 1 0 -1 2.5 1e309 'a' 'it''s' "
    "'2026-01-01' NULL TRUE FALSE = <> != < <= > >= + - * / % || ( ) ( ) , AND OR NOT IS "
    "IN BETWEEN LIKE ILIKE SIMILAR TO ANY ALL EXISTS SELECT FROM ; :: int text date "
    "lower( upper( length( now() random() pg_sleep( coalesce( abs( CASE WHEN THEN ELSE "
    "END $1 ? ' \" -- /* */ [ ] { } ~ ^ @ # \\ E'\\x' U&'d' $$ $x$"
)
_TOKENS = st.sampled_from(_WORDS.split(" "))
WHERE_TEXT = st.one_of(
    st.lists(_TOKENS, min_size=1, max_size=14).map(" ".join),
    st.text(max_size=60),
)


def _where_outcome(text: str) -> None:
    try:
        tree = parse_where(text)
    except UsageError as e:
        assert str(e).strip() and "Traceback" not in str(e)
        return
    tree.sql(dialect="postgres")  # what is accepted can be rendered


@FUZZ
@given(WHERE_TEXT)
def test_any_where_is_accepted_or_a_clear_usage_error(text):
    _where_outcome(text)


def test_known_wheres_still_pass_and_fail():
    assert parse_where("amount > 10 AND status = 'new'") is not None
    for bad in ("1; DROP TABLE orders", "id IN (SELECT 1)", "pg_sleep(10) IS NULL", "'x"):
        try:
            parse_where(bad)
        except UsageError:
            continue
        raise AssertionError(f"accepted {bad!r}")


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_TOKENS, min_size=1, max_size=8).map(" ".join))
def test_any_where_on_a_real_diff_is_a_verdict_or_a_clear_error(shop, text):
    import asyncio

    from replverify.api import DiffOptions, diff

    src, _, other = shop
    try:
        report = asyncio.run(diff(src, other, DiffOptions(tables=("orders",), where=text)))
    except ReplverifyError as e:
        assert str(e).strip()
        return
    assert report.tables  # a verdict per table (verified, or not with its reason)


# ----------------------------------------------------------------------- journal


def _valid_journal() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j.jsonl"
        with JournalWriter(path) as w:
            for i in range(3):
                with w.transaction() as tx:
                    tx.intent("insert", "public.orders", {"id": i}, {"status": "new"})
            with w.transaction() as tx:
                tx.intent_sql("UPDATE orders SET status = $1 WHERE id = $2", "paid", 1)
        return path.read_bytes()


VALID = _valid_journal()
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        k: _JSONISH | st.sampled_from(["intent", "committed", "aborted", "insert", "sql"])
        for k in ("v", "seq", "txid", "ts", "state", "op", "table", "key", "values", "sql")
    },
)


@st.composite
def journals(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "mutated", "records"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    if kind == "records":
        lines = draw(st.lists(_FIELDS, max_size=5))
        body = b"".join(json.dumps(x, allow_nan=True).encode() + b"\n" for x in lines)
        return VALID + body if draw(st.booleans()) else body
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["cut", "flip", "insert"]))
        if action == "cut":
            del data[at:]
        elif action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = draw(st.binary(max_size=20))
    return bytes(data)


@FUZZ
@given(journals())
def test_any_journal_is_read_or_a_clear_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j.jsonl"
        path.write_bytes(data)
        reader = JournalReader(path)
        try:
            records = list(reader)
        except ReplverifyError as e:
            assert str(e).strip()
            return
        assert reader.lines >= len(records)
