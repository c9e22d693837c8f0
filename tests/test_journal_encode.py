"""The writer encodes records in pieces ahead of the append (replverify.journal.encode):
each line must be byte for byte the record encoded whole, fields in the same order."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replverify.journal.encode import Clock, IntentTemplate, RowTemplate
from replverify.journal.reader import JournalReader
from replverify.journal.statements import journal_value
from replverify.journal.writer import JournalWriter


def whole(txid: object, seq: int, ts: str, fields: dict[str, Any]) -> bytes:
    """A line as the writer made it before it encoded in pieces: one dict, one dump."""
    record = {"v": 1, "txid": txid, "seq": seq, "ts": ts, **fields}
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def check(path: Path, expected: list[tuple[object, dict[str, Any]]]) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == len(expected)
    for line, (txid, fields) in zip(lines, expected, strict=True):
        head = json.loads(line)
        assert line == whole(txid, head["seq"], head["ts"], fields)
    assert len(list(JournalReader(path))) == len(expected)


@pytest.mark.parametrize("txid", ["t-1", 17, "tx-ü", 2**70])
def test_each_record_kind_is_the_record_encoded_whole(tmp_path: Path, txid: object) -> None:
    path = tmp_path / "j.jsonl"
    when = dt.datetime(2026, 12, 3, 8, 0, 1, tzinfo=dt.timezone.utc)
    meta = {"endpoint": "primary", "n": 2**70}
    stmt = "UPDATE t SET v = v + $1, note = $2 WHERE id = $3"
    with JournalWriter(path, fsync="never") as w:
        tx = w.transaction(txid, defer=True)
        tx.intent("update", "public.t", {"id": 1}, values={"v": "é"}, before={"v": Decimal("1.50")})
        of = tx.intent_statement("update", "public.t", stmt, (Decimal("2.5"), "ü", 1), meta=meta)
        tx.effect_rows(of, "update", "public.t", [({"id": 1}, {"v": 3, "note": "ü"})])
        template = IntentTemplate("delete", "public.t", "DELETE FROM t WHERE id = $1")
        of2 = tx.intent_from(template, [2**70])
        tx.effect_rows(of2, "delete", "public.t", [({"id": 2}, None)])
        of3 = tx.intent_from(IntentTemplate("insert", "public.h", "INSERT ..."), ())
        tx.effect_rows(of3, "insert", "public.h", [({"at": when, "id": 5}, {"x": None})])
        tx.commit()
        w.write("insert", "public.t", {"id": 9}, {"v": 1}, txid=txid, meta={"a": [1]})
        tx2 = w.transaction(txid)
        tx2.intent_sql("DELETE FROM t WHERE id = $1", 3)
        tx2.abort()
    intent = {"state": "intent"}
    check(
        path,
        [
            (txid, {"op": "update", "table": "public.t", "key": {"id": 1}, "values": {"v": "é"},
                    "before": {"v": "1.50"}, **intent}),
            (txid, {"op": "update", "table": "public.t", "stmt": stmt,
                    "params": ["2.5", "ü", 1], "meta": meta, **intent}),
            (txid, {"op": "update", "table": "public.t", "key": {"id": 1},
                    "values": {"v": 3, "note": "ü"}, **intent, "of": of}),
            (txid, {"op": "delete", "table": "public.t", "stmt": "DELETE FROM t WHERE id = $1",
                    "params": [2**70], **intent}),
            (txid, {"op": "delete", "table": "public.t", "key": {"id": 2}, **intent, "of": of2}),
            (txid, {"op": "insert", "table": "public.h", "stmt": "INSERT ...", "params": [],
                    **intent}),
            (txid, {"op": "insert", "table": "public.h",
                    "key": {"at": journal_value(when), "id": 5}, "values": {"x": None},
                    **intent, "of": of3}),
            (txid, {"state": "committed"}),
            (txid, {"op": "insert", "table": "public.t", "key": {"id": 9}, "values": {"v": 1},
                    "meta": {"a": [1]}, "state": "committed"}),
            (txid, {"sql": "DELETE FROM t WHERE id = 3", **intent}),
            (txid, {"state": "aborted"}),
        ],
    )  # fmt: skip


def test_the_clock_writes_what_isoformat_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    base = int(dt.datetime(2026, 12, 3, 23, 59, 59, tzinfo=dt.timezone.utc).timestamp())
    for ns in (base * 10**9, base * 10**9 + 5_000, base * 10**9 + 999_999_999,
               (base + 1) * 10**9 + 1_000, (base + 1) * 10**9):  # fmt: skip
        monkeypatch.setattr("time.time_ns", lambda ns=ns: ns)
        when = dt.datetime.fromtimestamp(ns // 1000 / 1e6, dt.timezone.utc)
        when = when.replace(microsecond=(ns // 1000) % 1_000_000)
        assert clock.ts_field() == f',"ts":"{when.isoformat()}"'.encode()


def test_a_refused_record_is_not_written(tmp_path: Path) -> None:
    """Shapes checked once: a template whose records the reader refuses (an op the
    format does not know) is refused each time, and nothing reaches the file."""
    path = tmp_path / "j.jsonl"
    bad = IntentTemplate("merge", "public.t", "MERGE INTO t ...")
    with JournalWriter(path, fsync="never") as w:
        tx = w.transaction()
        for _ in range(2):
            with pytest.raises(Exception, match="not a valid journal record"):
                tx.intent_from(bad, ())
        good = IntentTemplate("update", "public.t", "UPDATE t SET v = 1 WHERE id = $1")
        tx.intent_from(good, (1,))
        tx.intent_from(good, (2,))
    assert [r.params for r in JournalReader(path)] == [(1,), (2,)]


def test_rows_from_a_template_are_the_rows_journaled_as_pairs(tmp_path: Path) -> None:
    """effect_records (the pool's RETURNING rows through a RowTemplate) writes what
    effect_rows writes for the same rows split into key and post-image: keyed and
    keyless tables, deletes, values that are not JSON as they are, the application's
    own RETURNING items in front."""
    when = dt.datetime(2026, 12, 3, 8, 0, 1, 5, tzinfo=dt.timezone.utc)
    cases = [
        (RowTemplate("update", "public.t", ("id", "v"), ("id",), values=True),
         [(1, 2), ("own", 2, None), (3, Decimal("1.5"))]),
        (RowTemplate("insert", "public.t", ("v", "b", "a"), ("a", "b"), values=True),
         [(when, "x", 1), ({"j": [1]}, "y", 2), ([1, 2], "z", 3)]),
        (RowTemplate("delete", "public.t", ("id",), ("id",), values=False), [(4,), (5,)]),
        (RowTemplate("insert", "public.h", ("a", "at", "j", "n"), (), values=True),
         [(1, when, {"k": 1}, None), (2, float("nan"), "[1]", 2**70)]),
        (RowTemplate("delete", "public.h", ("a", "n"), (), values=False), [(1, None)]),
    ]  # fmt: skip
    paths = tmp_path / "records.jsonl", tmp_path / "pairs.jsonl"
    for path in paths:
        with JournalWriter(path, fsync="never") as w:
            tx = w.transaction("t", defer=path is paths[0])
            for template, rows in cases:
                of = tx.intent("delete", "public.x", {"id": 1})
                if path is paths[0]:
                    tx.effect_records(of, template, rows)
                else:
                    op, table = template.shape[1], template.shape[2]  # type: ignore[index]
                    tx.effect_rows(of, op, table, [template.split(r) for r in rows])
            tx.commit()
    a, b = ([{**json.loads(x), "ts": ""} for x in p.read_bytes().splitlines()] for p in paths)
    assert a == b and len(a) == 5 + 11 + 1
    assert [len(x) for x in paths[0].read_bytes().splitlines()] == [
        len(x) for x in paths[1].read_bytes().splitlines()
    ]


def test_a_keyless_row_is_keyed_by_its_non_null_scalars() -> None:
    """Without a primary key a row is identified by its whole image: its non-null values
    that are neither JSON objects nor arrays, as journal values (a timestamp, NaN and
    an integer beyond 64 bits are text or numbers, so part of the key)."""
    when = dt.datetime(2026, 12, 3, 8, 0, 1, 5, tzinfo=dt.timezone.utc)
    t = RowTemplate("insert", "public.h", ("a", "at", "j", "n"), (), values=True)
    rows = [(1, when, {"k": 1}, None), (2, float("nan"), [1], 2**70), (None, "x", "[1]", 3)]
    records = [json.loads(b'{"seq":0' + t.record(r, 9)[0]) for r in rows]
    assert [(r["key"], r["values"]) for r in records] == [
        ({"a": 1, "at": "2026-12-03T08:00:01.000005+00:00"}, {"j": {"k": 1}, "n": None}),
        ({"a": 2, "at": "NaN", "n": 2**70}, {"j": [1]}),
        ({"at": "x", "j": "[1]", "n": 3}, {"a": None}),
    ]
    assert t.split(rows[0]) == ({"a": 1, "at": when}, {"j": {"k": 1}, "n": None})
    assert t.split(rows[2]) == ({"at": "x", "j": "[1]", "n": 3}, {"a": None})


#: text with what a bytes format or JSON must escape: %, quotes, backslashes, non-ASCII
_TRICKY = st.text(alphabet='%db"\\é\n', min_size=1, max_size=4)
_COLUMN = st.one_of(st.text(min_size=1, max_size=6), _TRICKY)
_VALUE = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80), st.text(max_size=8), _TRICKY, st.none()
)


@settings(max_examples=300, deadline=None)
@given(
    columns=st.lists(_COLUMN, min_size=1, max_size=5, unique=True),
    data=st.data(),
    op=st.sampled_from(["update", "insert", "delete"]),
    keyed=st.booleans(),
    own=st.integers(min_value=0, max_value=2),
    table=st.sampled_from(["public.t", 'public."100%"']),
)
def test_a_row_record_of_numbers_and_strings_is_the_record_encoded_whole(
    columns: list[str], data: st.DataObject, op: str, keyed: bool, own: int, table: str
) -> None:
    """RowTemplate.record writes rows of integers, strings and nulls through one bytes
    format compiled per kinds of values (no dicts, no JSON encoder): byte for byte the
    record encoded whole, whatever the column names and values (``%`` among them)."""
    key = tuple(columns[: data.draw(st.integers(1, len(columns)))]) if keyed else ()
    template = RowTemplate(op, table, columns, key, values=op != "delete")
    for _ in range(3):  # the second and third rows of the same kinds use the format
        row = tuple(data.draw(st.lists(_VALUE, min_size=own + len(columns),
                                       max_size=own + len(columns))))  # fmt: skip
        record, _ = template.record(row, 12)
        k, post = template.split(row)
        fields: dict[str, Any] = {"op": op, "table": table, "key": k}
        if post is not None:
            fields["values"] = post
        fields |= {"state": "intent", "of": 12}
        assert b'{"v":1,"txid":"t","seq":0,"ts":"x"' + record == whole("t", 0, "x", fields)
