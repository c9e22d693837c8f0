"""Probes of ``--compare exact|semantic`` on real servers: values a client reads
differently although a decoder (asyncpg) or a digest might not tell them apart.

Each case is a table of its own (``id int PRIMARY KEY, v <type>``) whose row 0 holds the
source literal on one side and the target literal on the other, beside ``FILL`` equal
rows, so that tiny tables and the real chunk mismatch → narrowing path (``chunk_rows``
far below the table size) are both exercised. The verdicts are asked of the server from
the same literals: ``exact`` must call a pair different when its text or binary send
form differs (what a client reads), ``semantic`` when ``IS DISTINCT FROM`` (the type's
``=``) says so, or, for types without ``=``, as ``exact``.
"""

from __future__ import annotations

import pytest
from test_compare import fresh_pair

from replverify.api import DiffOptions, diff
from replverify.types import Changed, DiffReport, Extra, Missing

#: types the cases need, on both sides
TYPES_DDL = """
CREATE TYPE ca AS (a int[], t text);
CREATE TYPE cf AS (f float8, j jsonb, n numeric[]);
CREATE TYPE cc AS (c ca);
CREATE DOMAIN di AS int[];
CREATE TYPE cd AS (d di);
CREATE TYPE cf2 AS (t timestamp);
"""

#: name → (column type, source literal, target literal); None is SQL NULL
CASES: dict[str, tuple[str, str | None, str | None]] = {
    # arrays nested in composites (a client reading (v).a[1] sees another value)
    "comp_arr_bounds": ("ca", '("[0:1]={1,2}",x)', '("{1,2}",x)'),
    "comp_arr_same": ("ca", '("[0:1]={1,2}",x)', '("[0:1]={1,2}",x)'),
    "comp_arr_2d_bounds": ("ca", '("[1:2][0:0]={{1},{2}}",x)', '("{{1},{2}}",x)'),
    "arr_comp_arr_bounds": ("ca[]", '{"(\\"[0:1]={1,2}\\",x)"}', '{"(\\"{1,2}\\",x)"}'),
    "arr_comp_outer_bounds": ("ca[]", '[0:0]={"(\\"{1,2}\\",x)"}', '{"(\\"{1,2}\\",x)"}'),
    "comp_comp_arr_bounds": ("cc", '("(\\"[0:1]={1,2}\\",x)")', '("(\\"{1,2}\\",x)")'),
    "comp_domain_arr_bounds": ("cd", '("[0:1]={1,2}")', '("{1,2}")'),
    "domain_arr_bounds": ("di", "[0:1]={1,2}", "{1,2}"),
    "comp_numeric_arr_scale": ("cf", '(1,{},"{1.10}")', '(1,{},"{1.1}")'),
    "comp_float_neg_zero": ("cf", "(0,{},{})", "(-0,{},{})"),
    "comp_jsonb_scale": ("cf", '(1,"{""a"": 1.0}",{})', '(1,"{""a"": 1}",{})'),
    "comp_null_vs_nulls": ("ca", "(,)", None),
    # arrays
    "float_arr_neg_zero": ("float8[]", "{0,1}", "{-0,1}"),
    "float_arr_nan": ("float8[]", "{NaN}", "{NaN}"),
    "float4_arr_neg_zero": ("float4[]", "{0}", "{-0}"),
    "numeric_arr_scale": ("numeric[]", "{1.10,2}", "{1.1,2}"),
    "interval_arr_units": ("interval[]", '{"1 day"}', '{"24 hours"}'),
    "interval_arr_month": ("interval[]", '{"1 mon"}', '{"30 days"}'),
    "null_vs_empty_arr": ("int[]", None, "{}"),
    "empty_vs_null_elem": ("int[]", "{}", "{NULL}"),
    "null_elem_vs_null": ("int[]", "{NULL}", None),
    "arr_2d_vs_1d": ("int[]", "{{1,2}}", "{1,2}"),
    "range_arr_scale": ("numrange[]", '{"[1.10,2)"}', '{"[1.1,2)"}'),
    "range_arr_canonical": ("int4range[]", '{"[1,3)"}', '{"[1,2]"}'),
    "range_arr_bounds": ("int4range[]", '[0:0]={"[1,3)"}', '{"[1,3)"}'),
    "json_arr_space": ("json[]", '{"{\\"a\\":1}"}', '{"{\\"a\\": 1}"}'),
    "bpchar_arr_pad": ("char(3)[]", "{a}", '{"a  "}'),
    "varchar_arr_space": ("varchar[]", "{a}", '{"a "}'),
    # ranges and multiranges
    "multirange_scale": ("nummultirange", "{[1.10,2)}", "{[1.1,2)}"),
    "multirange_merge": ("int4multirange", "{[1,3),[3,5)}", "{[1,5)}"),
    "daterange_inf_vs_max": ("daterange", "[2020-01-01,infinity)", "[2020-01-01,9999-12-31)"),
    # text search, xml, money
    "tsvector_weight": ("tsvector", "a:1A", "a:1"),
    "tsvector_pos": ("tsvector", "a:1", "a"),
    "tsquery_order": ("tsquery", "a & b", "b & a"),
    "xml_selfclose": ("xml", "<a/>", "<a></a>"),
    "xml_space": ("xml", "<a>x</a>", "<a> x</a>"),
    "money_same": ("money", "1.10", "1.1"),
    "money_cents": ("money", "1.10", "1.11"),
    # bits, "char", name, vectors, mac addresses
    "varbit_length": ("varbit", "0", "00"),
    "varbit_trailing": ("varbit", "10", "100"),
    "bit_value": ("bit(3)", "101", "100"),
    "char_byte": ('"char"', "a", "b"),
    "name_case": ("name", "Ab", "ab"),
    "int2vector_order": ("int2vector", "1 2", "2 1"),
    "oidvector_len": ("oidvector", "1 2", "1 2 3"),
    "macaddr8_expand": ("macaddr8", "08:00:2b:01:02:03", "08:00:2b:ff:fe:01:02:03"),
    "macaddr_case": ("macaddr", "08:00:2B:01:02:03", "08:00:2b:01:02:03"),
    # geometry
    "point_neg_zero": ("point", "(0,0)", "(-0,0)"),
    "box_corners": ("box", "(1,1),(0,0)", "(0,0),(1,1)"),
    "line_scaled": ("line", "{1,2,3}", "{2,4,6}"),
    "path_open_closed": ("path", "[(0,0),(1,1)]", "((0,0),(1,1))"),
    "circle_neg_zero": ("circle", "<(0,0),1>", "<(-0,0),1>"),
    # time
    "interval_units": ("interval", "1 day", "24 hours"),
    "interval_same_units": ("interval", "90 min", "1 hour 30 min"),
    "timetz_offset": ("timetz", "10:00:00+00", "11:00:00+01"),
    "timestamp_inf_vs_max": ("timestamp", "infinity", "9999-12-31 23:59:59.999999"),
    "timestamp_neginf_vs_min": ("timestamp", "-infinity", "0001-01-01 00:00:00"),
    "timestamptz_inf_vs_max": ("timestamptz", "infinity", "9999-12-31 23:59:59.999999+00"),
    "date_inf_vs_max": ("date", "infinity", "9999-12-31"),
    "date_neginf_vs_min": ("date", "-infinity", "0001-01-01"),
    "date_arr_inf_vs_max": ("date[]", "{infinity}", "{9999-12-31}"),
    "comp_ts_inf_vs_max": ("cf2", "(infinity)", '("9999-12-31 23:59:59.999999")'),
    "arr_comp_ts_inf_vs_max": ("cf2[]", '{"(infinity)"}', '{"(\\"9999-12-31 23:59:59.999999\\")"}'),
    "tsmultirange_inf": ("tsmultirange", "{[2020-01-01,infinity)}", "{[2020-01-01,9999-12-31)}"),
    # values asyncpg cannot decode at all (read as NULL beside their text)
    "date_bc": ("date", "0044-03-15 BC", "0044-03-15"),
    "date_bc_same": ("date", "0044-03-15 BC", "0044-03-15 BC"),
    "date_bc_vs_null": ("date", "0044-03-15 BC", None),
    "timestamp_bc": ("timestamp", "2000-01-01 BC", "2000-01-01"),
    "timestamptz_bc": ("timestamptz", "2000-01-01 00:00+00 BC", "2000-01-01 00:00+00"),
    "time_24h": ("time", "24:00:00", "00:00:00"),
    "time_24h_same": ("time", "24:00:00", "24:00:00"),
    "timetz_24h": ("timetz", "24:00:00+00", "00:00:00+00"),
    # json, text
    "json_space": ("json", '{"a":1}', '{"a": 1}'),
    "jsonb_space": ("jsonb", '{"a":1}', '{"a": 1}'),
    "jsonb_big_scale": ("jsonb", "[1e2]", "[100]"),
    "text_nfc_nfd": ("text", "\u00e9", "e\u0301"),
    "varchar_trailing": ("varchar(5)", "a", "a "),
    "bpchar_trailing": ("char(5)", "a", "a "),
    "bpchar_unbounded": ("bpchar", "a", "a "),
    "text_empty_vs_null": ("text", "", None),
    "numeric_neg_zero": ("numeric", "0.0", "-0.0"),
    "numeric_inf": ("numeric", "Infinity", "infinity"),
    "float_nan_sign": ("float8", "NaN", "NaN"),
    "float4_neg_zero": ("float4", "0", "-0"),
}
#: equal rows around row 0 (the narrowing path when far above ``chunk_rows``)
FILL = 3000


def _ddl(keyless: bool, names: list[str]) -> str:
    key = "" if keyless else "id int PRIMARY KEY, "
    return TYPES_DDL + "".join(f"CREATE TABLE {n} ({key}v {CASES[n][0]});" for n in names)


def _lit(v: str | None, t: str) -> str:
    if v is None:
        return f"NULL::{t}"
    return "'" + v.replace("'", "''") + f"'::{t}"


def _rows(keyless: bool, fill: int, side: int, names: list[str]) -> str:
    out = []
    for n in names:
        t, *values = CASES[n]
        v = _lit(values[side], t)
        if keyless:
            out.append(f"INSERT INTO {n} VALUES ({v});")
        else:
            out.append(f"INSERT INTO {n} VALUES (0, {v});")
            if fill:
                same = _lit(values[0], t)
                out.append(f"INSERT INTO {n} SELECT i, {same} FROM generate_series(1, {fill}) i;")
    return "".join(out)


async def truths(dsn: str) -> dict[str, tuple[bool, bool]]:
    """(exact differs, semantic differs) per case, asked of the server."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    out = {}
    try:
        for n, (t, a, b) in CASES.items():
            x, y = _lit(a, t), _lit(b, t)
            send = await conn.fetchval(
                f"SELECT typsend::text FROM pg_type WHERE oid = '{t}'::regtype"
            )
            exact = await conn.fetchval(
                f"SELECT ({x})::text IS DISTINCT FROM ({y})::text"
                f" OR {send}({x}) IS DISTINCT FROM {send}({y})"
            )
            semantic = exact
            # point has no =, only ~= ("same as")
            for sql in (f"({x}) IS DISTINCT FROM ({y})", f"NOT (({x}) ~= ({y}))"):
                try:
                    async with conn.transaction():
                        semantic = await conn.fetchval(f"SELECT {sql}")
                    break
                except asyncpg.UndefinedFunctionError:
                    pass
            out[n] = (bool(exact), bool(semantic))
    finally:
        await conn.close()
    return out


def reported(report: DiffReport) -> dict[str, bool]:
    out = {}
    for t in report.tables:
        assert t.error is None, (t.table.name, t.error)
        kinds = {type(d) for d in t.differences}
        assert kinds <= {Changed} or kinds == {Missing, Extra}, (t.table.name, t.differences)
        out[t.table.name] = t.differences_total > 0
    return out


@pytest.fixture(scope="module")
async def probe_pairs(primary_dsn: str, other_dsn: str) -> dict[str, list[str]]:
    names = list(CASES)
    out = {}
    for label, keyless, fill in (
        ("tiny", False, 0),
        ("narrowed", False, FILL),
        ("keyless", True, 0),
    ):
        out[label] = await fresh_pair(
            primary_dsn,
            other_dsn,
            _ddl(keyless, names) + _rows(keyless, fill, 0, names),
            _ddl(keyless, names) + _rows(keyless, fill, 1, names),
        )
    return out


@pytest.fixture(scope="module")
async def truth(probe_pairs: dict[str, list[str]]) -> dict[str, tuple[bool, bool]]:
    return await truths(probe_pairs["tiny"][0])


#: semantic verdicts that differ from the type's ``=`` on purpose: line's ``=`` calls
#: proportional coefficients equal and path's ``=`` compares point counts only; both are
#: compared by value (a difference reported where ``=`` sees none is the safe side)
KNOWN_SEMANTIC = {"line_scaled": "false difference", "path_open_closed": "false difference"}


@pytest.mark.parametrize("compare", ["exact", "semantic"])
@pytest.mark.parametrize("digest", ["auto", "copy", "server", "client"])
@pytest.mark.parametrize("shape", ["tiny", "narrowed", "keyless"])
async def test_probe(
    probe_pairs: dict[str, list[str]],
    truth: dict[str, tuple[bool, bool]],
    shape: str,
    digest: str,
    compare: str,
) -> None:
    src, tgt = probe_pairs[shape]
    chunk_rows = 500 if shape == "narrowed" else 10_000
    report = await diff(
        src, tgt, DiffOptions(digest=digest, compare=compare, chunk_rows=chunk_rows)
    )  # type: ignore[arg-type]
    got = reported(report)
    i = 0 if compare == "exact" else 1
    wrong = {
        n: ("missed" if truth[n][i] else "false difference") for n in CASES if got[n] != truth[n][i]
    }
    assert wrong == ({} if compare == "exact" else KNOWN_SEMANTIC), wrong


def test_cli_reads_what_asyncpg_cannot_decode(primary_dsn: str, other_dsn: str) -> None:
    """BC dates and 24:00 used to fail to decode (an internal error, exit 2) once their
    chunk mismatched; now they are differences like any other."""
    import asyncio
    import json
    import subprocess
    import sys

    ddl = "CREATE TABLE b (id int PRIMARY KEY, d date, t time, ts timestamp);"
    rows = "INSERT INTO b VALUES (1, {}), (2, '2020-01-01', '10:00', '2000-01-01');"
    src, tgt = asyncio.run(
        fresh_pair(
            primary_dsn,
            other_dsn,
            ddl + rows.format("'0044-03-15 BC', '24:00', '2000-01-01 BC'"),
            ddl + rows.format("'0044-03-15', '00:00', '2000-01-01'"),
        )
    )
    for digest in ("copy", "server", "client"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "replverify",
                "diff",
                src,
                tgt,
                "--digest",
                digest,
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr, (digest, out.stderr)
        (table,) = json.loads(out.stdout)["tables"]
        assert table["differences"] == [
            {"kind": "changed", "key": {"id": 1}, "columns": ["d", "t", "ts"]}
        ], digest


@pytest.mark.parametrize("compare", ["exact", "semantic"])
async def test_failback_counts_the_probes(
    probe_pairs: dict[str, list[str]], truth: dict[str, tuple[bool, bool]], compare: str
) -> None:
    from replverify.ops.failback import failback

    src, tgt = probe_pairs["tiny"]
    report = await failback(src, tgt, options=DiffOptions(compare=compare))  # type: ignore[arg-type]
    assert report.diff is not None
    i = 0 if compare == "exact" else 1
    expected = {n for n in CASES if truth[n][i]}
    if compare == "semantic":
        expected |= set(KNOWN_SEMANTIC)
    assert {n for n, d in reported(report.diff).items() if d} == expected
    assert sum(report.counts().values()) == len(expected)


async def test_gate_reads_the_probes_from_a_fenced_standby(
    primary_dsn: str, standby_dsn: str
) -> None:
    """The shapes are read on a streaming standby too (fenced reads): the replica of
    every probe value is identical in both modes."""
    import asyncpg

    from replverify.ops.gate import gate

    names = list(CASES)
    conn = await asyncpg.connect(primary_dsn)
    try:
        await conn.execute("DROP DATABASE IF EXISTS probe_gate")
        await conn.execute("CREATE DATABASE probe_gate")
    finally:
        await conn.close()
    primary = primary_dsn.rsplit("/", 1)[0] + "/probe_gate"
    conn = await asyncpg.connect(primary)
    try:
        await conn.execute(_ddl(False, names) + _rows(False, 50, 1, names))
    finally:
        await conn.close()
    standby = standby_dsn.rsplit("/", 1)[0] + "/probe_gate"
    for compare in ("exact", "semantic"):
        report = await gate(primary, standby, options=DiffOptions(compare=compare))  # type: ignore[arg-type]
        assert report.diff is not None and report.diff.status == "consistent", compare
        assert all(t.error is None for t in report.diff.tables)


async def test_keyless_images_show_what_asyncpg_cannot_decode(
    primary_dsn: str, other_dsn: str
) -> None:
    ddl = "CREATE TABLE k (v int[], d date, t time);"
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        ddl + "INSERT INTO k VALUES ('[0:1]={1,2}', 'infinity', '24:00')",
        ddl + "INSERT INTO k VALUES ('{1,2}', '9999-12-31', '00:00')",
    )
    from replverify.reports.diff import diff_to_dict

    report = await diff(src, tgt, DiffOptions())
    missing, extra = diff_to_dict(report)["tables"][0]["differences"]
    assert (missing["kind"], missing["key"]["d"], missing["key"]["t"]) == (
        "missing",
        "infinity",
        "24:00:00",
    )
    assert (extra["kind"], extra["key"]["d"], extra["key"]["t"]) == (
        "extra",
        "9999-12-31",
        "00:00:00",
    )


async def test_enum_labels_renamed(primary_dsn: str, other_dsn: str) -> None:
    """A renamed label reads as another value; labels declared in another order do not."""
    table = "CREATE TABLE e (id int PRIMARY KEY, m mood, ms mood[]);"
    rows = "INSERT INTO e VALUES (1, 'ok', '{ok}'), (2, 'sad', '{sad,ok}');"
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        "CREATE TYPE mood AS ENUM ('sad', 'ok');" + table + rows,
        "CREATE TYPE mood AS ENUM ('ok', 'sad');"
        + table
        + rows
        + "ALTER TYPE mood RENAME VALUE 'ok' TO 'fine';",
    )
    for compare in ("exact", "semantic"):
        for digest in ("copy", "server", "client"):
            options = DiffOptions(digest=digest, compare=compare)  # type: ignore[arg-type]
            got = {
                d.key: d.columns
                for t in (await diff(src, tgt, options)).tables
                for d in t.differences
                if isinstance(d, Changed)
            }
            assert got == {(1,): ("m", "ms"), (2,): ("ms",)}, (compare, digest)
