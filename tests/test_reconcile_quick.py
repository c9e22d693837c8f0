"""Pass 2's lookup (one query row per probe, its images in one jsonb document, a quick
``HELD`` answer where the row holds the post-image byte for byte) against the image-per-
row lookup it replaced (``PostgresTarget._observe_images``), on a real server: the same
observations, the same verdicts, the same errors, the same reports."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from replverify.db import catalog
from replverify.errors import ReplverifyError
from replverify.journal.format import RowWrite, WriteRecord
from replverify.journal.reader import JournalReader
from replverify.journal.resolve import RowResolver
from replverify.reconcile.judge import HELD, Probe, judge, probe_for
from replverify.reconcile.run import reconcile
from replverify.reconcile.targets import PostgresTarget
from replverify.reports.reconcile import reconcile_to_dict
from replverify.types import TableRef

SCHEMA = """
CREATE DOMAIN positive AS numeric CHECK (VALUE > 0);
CREATE TABLE q (id bigint PRIMARY KEY, n numeric, m numeric(12,2), s text, c char(5),
                f float8, ts timestamptz, a int[], d positive, v varchar(3), b bool);
CREATE TABLE j (id int PRIMARY KEY, doc jsonb, js json, s text);
INSERT INTO q SELECT i, 12.50, 3.10, 's' || i, 'ab', 0.0, '2026-01-01 10:00+00', '{1,2}', 5,
                     'abc', true FROM generate_series(1, 40) i;
UPDATE q SET f = '-0', s = NULL WHERE id = 7;
UPDATE q SET n = 12.5 WHERE id = 8;
INSERT INTO j SELECT i, '{"a": 1}', '{"a":1}', 'x' FROM generate_series(1, 5) i;
"""


def rec(seq: int, table: str, key: int, values: dict[str, Any] | None, **kw: Any) -> dict:
    out = {"v": 1, "txid": f"t{seq}", "seq": seq, "ts": "2026-01-01T00:00:00+00:00",
           "state": "committed", "op": kw.pop("op", "update"), "table": table,
           "key": {"id": key}, **kw}  # fmt: skip
    if values is not None:
        out["values"] = values
    return out


#: one write a row (each is its row's judged write), of every kind of agreement: held
#: byte for byte, equal only canonically (12.5 = 12.50, -0 = 0), different, absent, ...
RECORDS = [
    rec(1, "q", 1, {"s": "s1", "m": "3.10"}),  # held
    rec(2, "q", 2, {"s": "s2", "m": "3.1"}),  # the column's typmod makes it 3.10: held
    rec(3, "q", 3, {"n": "12.5"}),  # 12.5 = 12.50 canonically, not byte for byte
    rec(4, "q", 4, {"s": "other"}, before={"s": "s4"}),  # lost: holds the before-image
    rec(5, "q", 5, {"s": "other"}, before={"s": "nope"}),  # conflict
    rec(6, "q", 6, {"c": "ab   ", "ts": "2026-01-01T12:00:00+02:00"}),  # held
    rec(7, "q", 7, {"f": 0, "s": None}),  # -0 = 0 canonically; NULL = NULL
    rec(8, "q", 8, {"n": "12.50"}),  # 12.50 = 12.5
    rec(9, "q", 9, {"a": [1, 2], "d": 5, "b": True}),  # held
    rec(10, "q", 10, {"a": [2, 1]}),
    rec(11, "q", 11, None, op="delete"),  # the row is still there
    rec(12, "q", 12, None, op="delete", before={"s": "s12"}),
    rec(13, "q", 1000, None, op="delete"),  # gone: durable
    rec(14, "q", 1001, {"s": "new"}, op="insert"),  # absent
    rec(15, "q", 1002, {"s": "new"}, op="upsert"),
    rec(16, "q", 1003, {"s": "x"}),  # an update of an absent row
    rec(17, "q", 13, {"s": "s13"}, op="insert"),  # held
    rec(18, "q", 14, {"v": "abc", "d": "5.0"}),  # 5.0 vs 5
    rec(19, "q", 15, {"ts": "2026-01-01T10:00:00.000001+00:00"}),
    rec(20, "q", 16, {"s": "s16"}, op="upsert", before={"s": "s16"}),
    rec(21, "q", 17, {"m": 3.1}),  # a JSON number
    rec(22, "q", 18, {"s": "s18", "n": None}),
]


async def probes_of(url: str, path: Path, records: list[dict]) -> tuple[PostgresTarget, Any]:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    conn = await asyncpg.connect(url)
    tables = await catalog.load_tables(conn)
    resolver = RowResolver(tables, path=str(path))
    writes: list[RowWrite] = []
    for r in JournalReader(path):
        assert isinstance(r, WriteRecord)
        writes.extend(resolver(r))
    return PostgresTarget(conn, "t", tables), writes


_made = itertools.count()


@pytest.fixture
async def url(clusters):
    name = f"quick{next(_made)}"
    conn = await asyncpg.connect(clusters.primary_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name}")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    db = clusters.primary_dsn.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(db)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    return db


@pytest.mark.parametrize("size", [1, 3, 500])
async def test_observations_and_verdicts_match_the_image_per_row_lookup(url, tmp_path, size):
    target, writes = await probes_of(url, tmp_path / "j.jsonl", RECORDS)
    info = target.tables[TableRef("public", "q")]
    held = canonical_only = 0
    try:
        async with target.conn.transaction(isolation="repeatable_read", readonly=True):
            for verdict_only in (True, False):
                probes = [probe_for(w, verdict_only=verdict_only) for w in writes]
                # shuffled: a batch mixes images of different columns
                random.Random(size).shuffle(probes)
                for start in range(0, len(probes), size):
                    batch = probes[start : start + size]
                    got = await target.observe(info, batch)
                    want = await target._observe_images(info, batch)
                    for p, g, w in zip(batch, got, want, strict=True):
                        assert judge(p.write, g) == judge(p.write, w), p.write.record
                        if g is HELD:
                            held += 1
                            assert p.quick and w.holds(w.images[0]), p.write.record
                        else:
                            assert g == w, p.write.record
                            canonical_only += p.quick and w.holds(w.images[0])
    finally:
        await target.conn.close()
    # rows 1, 2, 6, 9, 13, 16 and 17 hold their post-images byte for byte; 3, 7, 8 and 14
    # only canonically (12.5 = 12.50, -0 = 0, 5.0 = 5): those are answered in full
    assert (held, canonical_only) == (7, 4)


async def test_json_columns_and_long_chains_go_the_image_per_row_way(url, tmp_path):
    records = [rec(1, "j", 1, {"doc": {"a": 1}, "js": '{"a": 1}'}), rec(2, "j", 2, {"s": "x"})]
    target, writes = await probes_of(url, tmp_path / "j.jsonl", records)
    info = target.tables[TableRef("public", "j")]
    try:
        probes = [probe_for(w, verdict_only=True) for w in writes]
        assert target._document(info, probes) is None  # a value in a json column
        assert target._document(info, probes[1:]) is not None
        chain = Probe(writes[1], (writes[1].post_image(),) * 3, quick=True)
        assert target._document(info, [chain]) is None
        got = await target.observe(info, probes)
        assert [judge(p.write, o)[0] for p, o in zip(probes, got, strict=True)] == [
            "durable",
            "durable",
        ]
        assert got[1] is not HELD  # the batch went the image-per-row way
    finally:
        await target.conn.close()


BAD = [
    {"m": "not a number"},
    {"m": "123456789012345.00"},  # numeric(12,2) overflows
    {"n": "1e400000"},
    {"s": "nul \u0000 inside"},
    {"s": "lone \ud800 surrogate"},
    {"v": "abcd"},  # too long for varchar(3)
    {"d": -1},  # the domain's check
    {"a": "not an array"},
    {"b": {"an": "object"}},
]


def _no_document(monkeypatch) -> None:
    monkeypatch.setattr(PostgresTarget, "_document", lambda self, info, probes: None)


async def _outcome(url: str, path: Path, batch_rows: int) -> object:
    try:
        report = await reconcile(path, url, batch_rows=batch_rows)
    except ReplverifyError as e:
        return (type(e).__name__, str(e), getattr(e, "line", None))
    out = reconcile_to_dict(report)
    for k in ("elapsed_s", "timings"):
        out.pop(k, None)
    return out


async def _both_lookups(url: str, path: Path, monkeypatch, sizes: tuple[int, ...]) -> list:
    """The outcomes at each batch size, asserted equal with the document lookup and without
    it (the image-per-row one); returns them."""
    got = [await _outcome(url, path, size) for size in sizes]
    _no_document(monkeypatch)
    want = [await _outcome(url, path, size) for size in sizes]
    assert got == want
    return got


@pytest.mark.parametrize("bad", BAD, ids=[next(iter(b)) + str(i) for i, b in enumerate(BAD)])
async def test_a_refused_value_is_reported_as_before(url, tmp_path, monkeypatch, bad):
    records = [rec(i, "q", i, {"s": f"s{i}"}) for i in range(1, 8)]
    records[4] = rec(5, "q", 5, bad)
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    outcomes = await _both_lookups(url, path, monkeypatch, (1, 3, 500))
    assert all(isinstance(o, tuple) and o[2] == 5 for o in outcomes), outcomes


def random_journal(path: Path, seed: int) -> None:
    """Writes of every op, with and without before-images, to rows of ``q`` that are
    present, changed, absent; transactions committed, aborted, left open."""
    rnd = random.Random(seed)
    lines = []
    seq = 0
    for tx in range(400):
        txid = f"x{tx}"
        intents = rnd.random() < 0.6
        for _ in range(rnd.randint(1, 3)):
            seq += 1
            rid = rnd.randint(1, 60)
            op = rnd.choice(["update", "update", "upsert", "insert", "delete"])
            values = None
            if op != "delete":
                values = rnd.choice(
                    [{"s": f"s{rid}"}, {"s": f"s{rid}", "m": "3.10"}, {"n": "12.5"},
                     {"m": str(rnd.randint(1, 9))}, {"c": "ab"}, {"f": 0}]
                )  # fmt: skip
            r = rec(seq, "q", rid, values, op=op)
            r["txid"] = txid
            if intents:
                r["state"] = "intent"
            if rnd.random() < 0.4 and op != "insert":
                r["before"] = rnd.choice([{"s": f"s{rid}"}, {"s": "zz"}, {"m": "3.10"}])
            lines.append(r)
        if intents and rnd.random() < 0.95:
            state = "aborted" if rnd.random() < 0.1 else "committed"
            lines.append({"v": 1, "txid": txid, "state": state, "ts": "2026-01-01T00:00:01Z"})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_reports_match_the_image_per_row_lookup(url, tmp_path, monkeypatch, seed):
    path = tmp_path / "j.jsonl"
    random_journal(path, seed)
    got = await _both_lookups(url, path, monkeypatch, (1, 7, 500))
    assert isinstance(got[0], dict) and got[0]["counts"]["lost"] > 0


@pytest.mark.parametrize("op", ["delete", "insert"])
async def test_a_key_matching_several_rows_is_trouble_as_before(url, tmp_path, monkeypatch, op):
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE nk (a int NOT NULL, b text NOT NULL); INSERT INTO nk VALUES (1, 'x'),"
            " (1, 'x'), (2, 'y')"
        )
    finally:
        await conn.close()
    key = {"a": 1, "b": "x"}
    records = [
        {**rec(1, "nk", 0, None, op="delete"), "key": {"a": 2, "b": "y"}},
        {**rec(2, "nk", 0, key if op == "insert" else None, op=op), "key": key},
    ]
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    got = await _both_lookups(url, path, monkeypatch, (1, 500))
    assert got[0][0] == "SchemaError" and "matches 2 rows" in got[0][1], got  # type: ignore[index]


async def test_odd_names_and_types_give_the_same_report(url, tmp_path, monkeypatch):
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            '''CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TYPE pair AS (x int, y text);
            CREATE SCHEMA "Odd ""s""";
            CREATE TABLE "Odd ""s"""."we""ird" ("i d" bigint PRIMARY KEY, "a'b" text, x xml,
              p point, iv interval, u uuid, by bytea, ip inet, cp pair, e mood, r int4range,
              mo money, tv tsvector, ar numeric[], big text);
            INSERT INTO "Odd ""s"""."we""ird" VALUES
              (1, 'q''s', '<a/>', '(1,2)', '1 day', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               '\\x00ff', '10.0.0.1', '(1,a)', 'ok', '[1,5)', '1.50', 'a b', '{1.5,2}',
               repeat('x', 100000)),
              (2, 'z', '<b/>', '(0,0)', '2 hours', NULL, NULL, NULL, NULL, 'sad', NULL, NULL,
               NULL, NULL, NULL)'''
        )
    finally:
        await conn.close()
    images = [
        (1, {"x": "<a/>", "p": "(1,2)", "cp": "(1,a)", "big": "x" * 100000}),
        (2, {"a'b": "zz"}),
        (1, {"a'b": "q's", "x": "<a/>", "p": "(1,2)", "iv": "24:00:00", "by": "\\x00ff",
             "u": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "ip": "10.0.0.1/32", "cp": "(1,a)",
             "e": "ok", "r": "[1,4]", "mo": "1.5", "tv": "b a", "ar": ["1.50", 2],
             "big": "x" * 100000}),
        (2, {"a'b": "z", "e": "sad"}),
        (2, {"a'b": "other", "e": "ok", "iv": "1 day"}),
    ]  # fmt: skip
    records = [
        {**rec(n, "x", 0, v), "table": '"Odd ""s"""."we""ird"', "key": {"i d": k}}
        for n, (k, v) in enumerate(images, 1)
    ]
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    got = await _both_lookups(url, path, monkeypatch, (1, 500))
    assert isinstance(got[0], dict) and got[0]["counts"]["superseded"] == 3
