"""``--compare exact|semantic`` on real servers: what each mode calls equal, on every path
(digest modes, narrowing, keyless tables), and what the report says."""

from __future__ import annotations

import itertools
import json
import uuid

import asyncpg
import pytest

from replverify.api import DiffOptions, diff
from replverify.reports.diff import diff_to_dict, miss_probability
from replverify.types import Changed, DiffReport, Extra, Missing

_names = itertools.count()

V_TABLE = "CREATE TABLE v (id int PRIMARY KEY, n numeric, f float8, iv interval, j jsonb)"
SOURCE_ROWS = """INSERT INTO v VALUES
  (1, 1.10, 0, '1 day', '{"a": 1.0}'), (2, 2, 1.5, '1 mon', '{"b": 1}'), (3, 3, 3, '3 h', '[]')"""
#: the issue's target: the same values PostgreSQL's = calls equal, other representations
TARGET_ROWS = """INSERT INTO v VALUES
  (1, 1.1, '-0', '24 hours', '{"a": 1}'), (2, 2, 1.5, '30 days', '{"b": 1}'),
  (3, 3, 3, '3 h', '[]')"""


async def fresh_pair(source_dsn: str, target_dsn: str, source_sql: str, target_sql: str):
    """A new database on each server, filled by the given SQL; returns their DSNs."""
    name = f"cmp{next(_names)}"
    out = []
    for dsn, sql in ((source_dsn, source_sql), (target_dsn, target_sql)):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        db = dsn.rsplit("/", 1)[0] + "/" + name
        conn = await asyncpg.connect(db)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
        out.append(db)
    return out


def changed(report: DiffReport) -> dict[object, tuple[str, ...]]:
    return {
        d.key: d.columns for t in report.tables for d in t.differences if isinstance(d, Changed)
    }


@pytest.fixture(scope="module")
async def v_pair(primary_dsn: str, other_dsn: str) -> list[str]:
    return await fresh_pair(
        primary_dsn, other_dsn, f"{V_TABLE}; {SOURCE_ROWS}", f"{V_TABLE}; {TARGET_ROWS}"
    )


@pytest.mark.parametrize("digest", ["copy", "server", "client"])
async def test_exact_sees_what_equals_hides(v_pair: list[str], digest: str) -> None:
    src, tgt = v_pair
    report = await diff(src, tgt, DiffOptions(digest=digest))  # type: ignore[arg-type]
    assert report.status == "different"
    assert changed(report) == {(1,): ("n", "f", "iv", "j"), (2,): ("iv",)}
    doc = diff_to_dict(report)
    assert doc["compare"] == "exact"


@pytest.mark.parametrize("digest", ["copy", "server", "client"])
async def test_semantic_is_the_types_equality(v_pair: list[str], digest: str) -> None:
    src, tgt = v_pair
    report = await diff(src, tgt, DiffOptions(digest=digest, compare="semantic"))  # type: ignore[arg-type]
    assert report.status == "consistent", changed(report)
    assert diff_to_dict(report)["compare"] == "semantic"


async def test_located_chunk_is_settled_by_the_mode(primary_dsn: str, other_dsn: str) -> None:
    """A big chunk whose COPY bytes differ is narrowed from the bytes (copyscan); the
    located rows are then judged by the comparison mode."""
    base = "CREATE TABLE w (id int PRIMARY KEY, n numeric); "
    fill = "INSERT INTO w SELECT i, i FROM generate_series(1, 5000) i; "
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        base + fill + "UPDATE w SET n = 7.50 WHERE id = 4321",
        base + fill + "UPDATE w SET n = 7.5 WHERE id = 4321",
    )
    exact = await diff(src, tgt, DiffOptions(chunk_rows=10_000))
    assert changed(exact) == {(4321,): ("n",)}
    semantic = await diff(src, tgt, DiffOptions(chunk_rows=10_000, compare="semantic"))
    assert semantic.status == "consistent"


async def test_representations_that_are_the_same_value(primary_dsn: str, other_dsn: str) -> None:
    """One instant under two TimeZones, char(n) padding, one text under two collations,
    jsonb key order: the same binary form, so equal in exact mode too."""
    ddl = (
        "CREATE TABLE e (id int PRIMARY KEY, ts timestamptz, c char(5), t text COLLATE {c},"
        " j jsonb);"
    )
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        ddl.format(c='"C"')
        + "SET TimeZone = 'Asia/Tokyo';"
        + """INSERT INTO e VALUES (1, '2026-01-01 09:00:00', 'ab', 'Straße', '{"a": 1, "b": 2}')""",
        ddl.format(c='"POSIX"')
        + "SET TimeZone = 'America/New_York';"
        + "INSERT INTO e VALUES"
        + """ (1, '2025-12-31 19:00:00', 'ab   ', 'Straße', '{"b": 2, "a": 1}')""",
    )
    for digest in ("copy", "server", "client"):
        report = await diff(src, tgt, DiffOptions(digest=digest))  # type: ignore[arg-type]
        assert report.status == "consistent", (digest, changed(report))


async def test_citext_case(primary_dsn: str, other_dsn: str) -> None:
    ddl = "CREATE EXTENSION IF NOT EXISTS citext; CREATE TABLE c (id int PRIMARY KEY, s citext);"
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        ddl + "INSERT INTO c VALUES (1, 'Alice'), (2, 'b')",
        ddl + "INSERT INTO c VALUES (1, 'alice'), (2, 'b')",
    )
    assert changed(await diff(src, tgt)) == {(1,): ("s",)}
    assert (await diff(src, tgt, DiffOptions(compare="semantic"))).status == "consistent"


async def test_keyless_tables_by_mode_with_128_bit_hashes(primary_dsn: str, other_dsn: str) -> None:
    ddl = "CREATE TABLE k (n numeric, iv interval);"
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        ddl + "INSERT INTO k VALUES (1.10, '1 day'), (2, '1 h'), (2, '1 h'), (3, '1 h')",
        ddl + "INSERT INTO k VALUES (1.1, '1 day'), (2, '1 h'), (2, '1 h'), (3, '60 min')",
    )
    exact = await diff(src, tgt)
    (table,) = exact.tables
    assert table.key_mode == "none"
    kinds = sorted((type(d).__name__, str(d.key[0])) for d in table.differences)
    assert kinds == [("Extra", "1.1"), ("Missing", "1.10")]
    assert all(isinstance(d, (Missing, Extra)) for d in table.differences)
    # the row hashes of a multiset are 128-bit, and the bound counts every pair of rows
    assert table.digest_bits == 128 and table.digest.startswith("multiset: md5")
    assert miss_probability(exact) == pytest.approx(16 * 2.0**-128)
    doc = json.loads(json.dumps(diff_to_dict(exact)))
    assert doc["tables"][0]["digest_bits"] == 128
    semantic = await diff(src, tgt, DiffOptions(compare="semantic"))
    assert semantic.status == "consistent", semantic.tables[0].differences
    assert semantic.tables[0].rows_source == 4


#: arrays a client decodes to the same list: only their lower bounds differ
BOUNDS_DDL = "CREATE TABLE a (id int PRIMARY KEY, v int[], m text[]);"
BOUNDS_SOURCE = """INSERT INTO a VALUES (1, '{1,2}', '{{a,b},{c,d}}'), (2, '[0:1]={5,6}', NULL),
  (3, '[0:1]={7,8}', '[0:1][1:2]={{a,b},{c,d}}'), (4, '{}', '{x}')"""
BOUNDS_TARGET = """INSERT INTO a VALUES
  (1, '[0:1]={1,2}', '{{a,b},{c,d}}'), (2, '[0:1]={5,6}', NULL),
  (3, '[0:1]={7,8}', '[1:2][0:1]={{a,b},{c,d}}'), (4, '{}', '[2:2]={x}')"""


@pytest.mark.parametrize("compare", ["exact", "semantic"])
@pytest.mark.parametrize("digest", ["copy", "server", "client"])
async def test_array_lower_bounds_are_a_difference(
    primary_dsn: str, other_dsn: str, digest: str, compare: str
) -> None:
    # '[0:1]={1,2}' and '{1,2}' decode to the same list, but a client reading arr[1] gets
    # 2 from one and 1 from the other, and PostgreSQL's = calls them different too
    src, tgt = await fresh_pair(
        primary_dsn, other_dsn, BOUNDS_DDL + BOUNDS_SOURCE, BOUNDS_DDL + BOUNDS_TARGET
    )
    report = await diff(src, tgt, DiffOptions(digest=digest, compare=compare))  # type: ignore[arg-type]
    assert changed(report) == {(1,): ("v",), (3,): ("m",), (4,): ("m",)}
    same = await diff(src, src, DiffOptions(digest=digest, compare=compare, allow_same_server=True))  # type: ignore[arg-type]
    assert same.status == "consistent"


@pytest.mark.parametrize("compare", ["exact", "semantic"])
async def test_keyless_array_lower_bounds(primary_dsn: str, other_dsn: str, compare: str) -> None:
    ddl = "CREATE TABLE k (v int[]);"
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        ddl + "INSERT INTO k VALUES ('{1,2}'), ('[0:0]={3}')",
        ddl + "INSERT INTO k VALUES ('[0:1]={1,2}'), ('[0:0]={3}')",
    )
    report = await diff(src, tgt, DiffOptions(compare=compare))  # type: ignore[arg-type]
    kinds = sorted(type(d).__name__ for d in report.tables[0].differences)
    assert kinds == ["Extra", "Missing"]


async def test_keyless_row_hashes_are_128_bit_on_the_server(
    primary_dsn: str, other_dsn: str
) -> None:
    ddl = "CREATE TABLE m (t text); INSERT INTO m SELECT 'r' || i FROM generate_series(1, 50) i;"
    src, tgt = await fresh_pair(primary_dsn, other_dsn, ddl, ddl + "DELETE FROM m WHERE t = 'r7'")
    report = await diff(src, tgt)
    (table,) = report.tables
    assert [(type(d).__name__, d.key) for d in table.differences] == [("Missing", ("r7",))]
    conn = await asyncpg.connect(src)
    try:
        (info,) = await conn.fetch("SELECT oid FROM pg_class WHERE relname = 'm'")
        from replverify.db import catalog
        from replverify.diff.align import plan_table
        from replverify.diff.sql import TableSQL

        server = await catalog.server_info(conn)
        tables = await catalog.load_tables(conn)
        (ref,) = [r for r in tables if r.name == "m"]
        plan = plan_table(tables[ref], tables[ref], source_server=server, target_server=server)
        text, params = TableSQL(plan).hash_counts()
        rows = await conn.fetch(text, *params)
    finally:
        await conn.close()
    assert info and len(rows) == 50
    assert all(isinstance(r[0], uuid.UUID) for r in rows)  # 128 bits, not a bigint


async def test_failback_attributes_by_the_mode(v_pair: list[str]) -> None:
    from replverify.ops.failback import failback

    src, tgt = v_pair
    exact = await failback(src, tgt)
    assert exact.diff is not None and exact.diff.compare == "exact"
    assert sum(exact.counts().values()) == 2
    semantic = await failback(src, tgt, options=DiffOptions(compare="semantic"))
    assert semantic.diff is not None and semantic.diff.compare == "semantic"
    assert sum(semantic.counts().values()) == 0


@pytest.mark.parametrize("compare", ["exact", "semantic"])
async def test_gate_and_fenced_standby_reads_in_both_modes(
    shop: tuple[str, str, str], compare: str
) -> None:
    from replverify.ops.gate import gate

    primary, standby, _ = shop
    options = DiffOptions(tables=("orders", "types_matrix", "events"), compare=compare)  # type: ignore[arg-type]
    report = await gate(primary, standby, options=options)
    assert report.diff is not None and report.diff.compare == compare
    assert report.diff.status == "consistent"
    assert any("streaming standby" in n for n in report.diff.notes)  # fenced reads


def test_cli_compare_option_exit_codes_and_every_format(v_pair: list[str]) -> None:
    import subprocess
    import sys

    src, tgt = v_pair

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "replverify", "diff", src, tgt, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    exact = run("--format", "json")
    assert exact.returncode == 1, exact.stderr
    assert json.loads(exact.stdout)["compare"] == "exact"
    semantic = run("--compare", "semantic", "--format", "json")
    assert semantic.returncode == 0, semantic.stderr
    assert json.loads(semantic.stdout)["compare"] == "semantic"
    for fmt in ("text", "markdown", "html"):
        out = run("--compare", "semantic", "--format", fmt)
        assert out.returncode == 0 and "semantic (values equal when" in out.stdout, fmt
    bad = run("--compare", "fuzzy")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_auto_digest_between_major_versions_is_copy_with_per_column_forms() -> None:
    from replverify.api import choose_digest
    from replverify.db.catalog import ServerInfo
    from replverify.diff.align import copy_form
    from replverify.types import ColumnType

    v15, v18 = ServerInfo(150010, False, "C", "UTF8"), ServerInfo(180001, False, "C", "UTF8")
    mode, why = choose_digest("auto", v15, v18)
    assert mode == "copy" and why is not None and "15 vs 18" in why
    assert choose_digest("auto", v15, v15) == ("copy", None)
    assert choose_digest("client", v15, v18) == ("client", None)
    numeric, lsn = ColumnType("numeric", "numeric"), ColumnType("pg_lsn", "pg_lsn")
    mood = ColumnType("mood", "mood", "enum")
    assert [copy_form(t, False) for t in (numeric, lsn, mood)] == ["binary", "text", "binary"]
    assert [copy_form(t, True) for t in (numeric, lsn, mood)] == ["binary"] * 3
    moods = ColumnType("mood[]", "_mood", "array", element=mood)
    assert copy_form(moods, True) == "text"  # embedded OIDs differ between servers
