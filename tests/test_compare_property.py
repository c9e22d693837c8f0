"""Property test on real servers: for every type the project encodes, hypothesis draws a
value and another representation of it (or another value); ``diff --compare exact`` must
call them different exactly when the server's binary send forms differ, ``semantic``
exactly when the server's ``=`` says so.

The source and target are databases on two independent clusters (so user-defined types
have other OIDs there), written under different TimeZones; the verdicts are asked of one
server, from the same literals.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import string
from collections.abc import Callable
from decimal import Decimal

import asyncpg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_compare import fresh_pair

from replverify.api import DiffOptions, diff
from replverify.types import Changed

_names = itertools.count()
Pair = tuple[str | None, str | None]
S = st.SearchStrategy


def _pairs(values: S[str], *alternatives: Callable[[str], S[str]]) -> S[Pair]:
    """A value and: itself, another spelling of it (each of ``alternatives``), another
    value, or NULL."""

    @st.composite
    def draw(d: st.DrawFn) -> Pair:
        a = d(values)
        choice = d(st.integers(0, len(alternatives) + 2))
        if choice == 0:
            return a, a
        if choice == 1:
            return a, d(values)
        if choice == 2:
            return (None, a) if d(st.booleans()) else (a, None)
        return a, d(alternatives[choice - 3](a))

    return draw()


def _spell(*fns: Callable[[str], str]) -> list[Callable[[str], S[str]]]:
    return [lambda a, f=f: st.just(f(a)) for f in fns]  # type: ignore[misc]


_ints = st.integers(-30000, 30000).map(str)
_decimals = st.decimals(-(10**6), 10**6, places=3, allow_nan=False, allow_infinity=False)
_numerics = st.one_of(_decimals.map(str), st.sampled_from(["NaN", "0", "0.00", "-0.0"]))
_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "-0", "Infinity", "-Infinity", "NaN", "1e-320", "0.1"]),
)
_floats4 = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(["0", "-0", "Infinity", "NaN", "1e-40", "0.1"]),
)


def _more_digits(a: str) -> str:
    return a if "e" in a or "n" in a.lower() or "." not in a else a + "0"


_words = st.text(alphabet=string.ascii_letters + "äßÉ ", max_size=6)
_instants = st.datetimes(
    min_value=__import__("datetime").datetime(1990, 1, 1),
    max_value=__import__("datetime").datetime(2040, 1, 1),
)
_offsets = st.sampled_from(["+00", "+05:30", "-08", "+14"])
_intervals = st.builds(
    lambda m, d, s: f"{m} mons {d} days {s} seconds",
    st.integers(-14, 14),
    st.integers(-40, 40),
    st.integers(-90000, 90000),
)


def _retime(a: str) -> S[str]:
    """The same instant at another UTC offset."""
    import datetime as dt

    when = dt.datetime.fromisoformat(a)
    return _offsets.map(lambda o: when.astimezone(dt.timezone(_offset(o))).isoformat(sep=" "))


def _offset(o: str) -> __import__("datetime").timedelta:
    import datetime as dt

    sign = -1 if o[0] == "-" else 1
    hours, _, minutes = o[1:].partition(":")
    return sign * dt.timedelta(hours=int(hours), minutes=int(minutes or 0))


def _interval_alts(a: str) -> S[str]:
    m, _, d, _, s, _ = a.split()
    months, days, secs = int(m), int(d), int(s)
    return st.sampled_from(
        [
            f"{months} mons {days} days {secs / 3600} hours",  # same fields, other units
            f"{months} mons {days * 24 + secs // 3600} hours {secs % 3600} seconds",
            f"{months} mons {days * 86400 + secs} seconds",
            f"{months * 30 + days} days {secs} seconds",
        ]
    )


def _jsonb_alts(a: str) -> S[str]:
    return st.sampled_from([a.replace(".0", ""), a.replace(", ", ","), _swap_keys(a)])


def _swap_keys(a: str) -> str:
    m = re.fullmatch(r'\{"x": (.*?), "y": (.*)\}', a)
    return a if m is None else f'{{"y": {m[2]}, "x": {m[1]}}}'


_json_docs = st.builds(
    lambda x, y: f'{{"x": {x}, "y": {y}}}',
    st.sampled_from(["1", "1.0", "1.50", "-0", "[1, 2.0]", '"s"']),
    st.sampled_from(["2", "2.00", "null", "true", '{"z": 1.0}']),
)

#: column name → (type, strategy of literal pairs). Every type the project encodes.
TYPES: dict[str, tuple[str, S[Pair]]] = {
    "i2": ("int2", _pairs(st.integers(-300, 300).map(str), *_spell(lambda a: f" {a} "))),
    "i4": ("int4", _pairs(_ints, *_spell(lambda a: f"+{a}" if a[0] != "-" else a))),
    "i8": ("int8", _pairs(_ints, *_spell(lambda a: a.replace("-", "-0")))),
    "oi": ("oid", _pairs(st.integers(0, 10**6).map(str), *_spell(lambda a: f"0{a}"))),
    "nu": (
        "numeric",
        _pairs(
            _numerics,
            *_spell(
                lambda a: a if a == "NaN" else a + "0" if "." in a else a + ".0",
                lambda a: a if a == "NaN" else f"{a}e0",
            ),
            lambda a: st.just(a if a == "NaN" else str(Decimal(a).normalize())),
        ),
    ),
    "f4": ("float4", _pairs(_floats4, *_spell(lambda a: a.lstrip("-"), lambda a: f"{a} "))),
    "f8": ("float8", _pairs(_floats, *_spell(lambda a: a.lstrip("-"), _more_digits))),
    "tx": ("text", _pairs(_words, *_spell(str.upper))),
    "vc": ("varchar(8)", _pairs(_words, *_spell(lambda a: a + " "))),
    "nm": ("name", _pairs(_words, *_spell(str.lower))),
    "bp": ("char(6)", _pairs(_words, *_spell(lambda a: a + "  ", lambda a: " " + a))),
    "ci": ("citext", _pairs(_words, *_spell(str.swapcase, str.upper))),
    "by": (
        "bytea",
        _pairs(
            st.binary(max_size=5).map(lambda b: "\\x" + b.hex()),
            *_spell(lambda a: a.upper().replace("\\X", "\\x")),
        ),
    ),
    "bo": (
        "bool",
        _pairs(st.sampled_from(["t", "f"]), *_spell(lambda a: "yes" if a == "t" else "no")),
    ),
    "da": (
        "date",
        _pairs(
            st.one_of(
                st.dates().map(lambda d: d.isoformat()),
                # asyncpg reads infinity as date.max: the real 9999-12-31 beside it
                st.sampled_from(["infinity", "9999-12-31", "-infinity", "0001-01-01"]),
            ),
            *_spell(lambda a: a + " AD" if "inf" not in a else a),
        ),
    ),
    "ts": (
        "timestamp",
        _pairs(
            _instants.map(lambda t: t.isoformat(sep=" ")), *_spell(lambda a: a.replace(" ", "T"))
        ),
    ),
    "tz": (
        "timestamptz",
        _pairs(
            st.builds(lambda t, o: t.isoformat(sep=" ") + o, _instants, _offsets),
            _retime,
        ),
    ),
    "tm": (
        "time",
        _pairs(
            _instants.map(lambda t: t.time().isoformat()),
            *_spell(lambda a: a if "." in a else a + ".000"),
        ),
    ),
    "tt": (
        "timetz",
        _pairs(
            st.builds(lambda t, o: t.time().isoformat() + o, _instants, _offsets),
            lambda a: _offsets.map(lambda o: a[:8] + o),  # other zone: a different timetz
        ),
    ),
    "iv": ("interval", _pairs(_intervals, _interval_alts)),
    "uu": ("uuid", _pairs(st.uuids().map(str), *_spell(str.upper, lambda a: "{" + a + "}"))),
    "ie": (
        "inet",
        _pairs(st.ip_addresses(v=4).map(str), *_spell(lambda a: a + "/32", lambda a: a + "/24")),
    ),
    "cr": (
        "cidr",
        _pairs(
            st.sampled_from(["10.0.0.0/8", "10.1.0.0/16"]),
            *_spell({"10.0.0.0/8": "10/8", "10.1.0.0/16": "10.1/16"}.__getitem__),
        ),
    ),
    "js": ("json", _pairs(_json_docs, _jsonb_alts)),
    "jb": ("jsonb", _pairs(_json_docs, _jsonb_alts)),
    "en": ("mood", _pairs(st.sampled_from(["sad", "ok", "happy"]), *_spell(lambda a: a))),
    "na": (
        "numeric[]",
        _pairs(
            st.lists(_decimals.map(str), max_size=3).map(lambda xs: "{" + ",".join(xs) + "}"),
            *_spell(
                lambda a: a.replace(",", "0,").replace("}", "0}") if "." in a else a,
                # the same elements from index 0: a client reading a[1] sees another value
                lambda a: f"[0:{a.count(',')}]={a}" if a != "{}" else a,
            ),
        ),
    ),
    "ea": (
        "mood[]",
        _pairs(
            st.sampled_from(["{sad}", "{ok,happy}", "{}"]), *_spell(lambda a: a.replace(",", ", "))
        ),
    ),
    "co": (
        "pair",
        _pairs(
            st.builds(
                lambda m, n: f"({m},{n})", st.sampled_from(["sad", "ok"]), _decimals.map(str)
            ),
            *_spell(lambda a: a.replace(")", "0)") if "." in a else a),
        ),
    ),
    "wa": (
        "wrap",
        _pairs(
            st.lists(_decimals.map(str), min_size=1, max_size=2).map(
                lambda xs: '("{' + ",".join(xs) + '}")'
            ),
            # the array inside the composite from index 0: (v).a[1] is another value
            *_spell(lambda a: a.replace('("{', f'("[0:{a.count(",")}]={{', 1)),
        ),
    ),
    "ra": (
        "int4range",
        _pairs(
            st.sampled_from(["[1,3)", "(0,5]", "empty", "[2,)"]),
            *_spell(lambda a: {"[1,3)": "[1,2]", "(0,5]": "[1,6)"}.get(a, a)),
        ),
    ),
    "nr": (
        "numrange",
        _pairs(
            st.sampled_from(["[1.10,2)", "(0,5.0]", "empty"]),
            *_spell(lambda a: a.replace("1.10", "1.1").replace("5.0", "5")),
        ),
    ),
    "mr": (
        "int4multirange",
        _pairs(
            st.sampled_from(["{[1,3), [5,7)}", "{}"]),
            *_spell(lambda a: a.replace("[1,3), [5,7)", "[5,7), [1,2]")),
        ),
    ),
    "mo": (
        "money",
        _pairs(
            _decimals.map(lambda d: str(round(d, 2))),
            *_spell(lambda a: "$" + a if a[0] != "-" else a),
        ),
    ),
    "bi": ("bit(3)", _pairs(st.sampled_from(["101", "000"]), *_spell(lambda a: a))),
    "vb": ("varbit", _pairs(st.sampled_from(["1", "10", "0100"]), *_spell(lambda a: a + "0"))),
    "hs": (
        "hstore",
        _pairs(
            st.sampled_from(["a=>1, b=>2", "a=>1.0"]),
            *_spell(lambda a: ", ".join(reversed(a.split(", ")))),
        ),
    ),
}
#: a plain literal of every type, for the explicit example below
PLAIN = {
    **dict.fromkeys(("i2", "i4", "i8", "oi", "nu", "f4", "f8", "vb"), "1"),
    **dict.fromkeys(("tx", "vc", "nm", "bp", "ci"), "a"),
    **{"by": "\\x00", "bo": "t", "da": "2026-01-01", "ts": "2026-01-01 00:00:00"},
    **{"tz": "2026-01-01 00:00:00+00", "tm": "10:00:00", "tt": "10:00:00+00", "iv": "1 day"},
    **{"uu": "00000000-0000-0000-0000-000000000001", "ie": "10.0.0.1", "cr": "10.0.0.0/8"},
    **{"js": '{"x": 1}', "jb": '{"x": 1}', "en": "ok", "na": "{1}", "ea": "{ok}"},
    **{
        "wa": '("{1}")',
        "co": "(ok,1)",
        "ra": "[1,3)",
        "nr": "[1,2)",
        "mr": "{}",
        "mo": "1.00",
        "bi": "101",
    },
    "hs": "a=>1",
}
#: the issue's cases: other representations ``=`` calls equal, and true equals
ISSUE_EXAMPLE = [
    {c: (v, v) for c, v in PLAIN.items()}
    | {"nu": ("1.10", "1.1"), "f8": ("0", "-0"), "f4": ("0", "-0"), "iv": ("1 mon", "30 days")}
    | {"jb": ('{"x": 1.0}', '{"x": 1}'), "ci": ("A", "a"), "na": ("{1.10}", "{1.1}")},
    {c: (v, v) for c, v in PLAIN.items()}
    | {"iv": ("1 day", "24 hours"), "nr": ("[1.10,2)", "[1.1,2)"), "co": ("(ok,1.0)", "(ok,1)")},
    {c: (v, v) for c, v in PLAIN.items()}
    | {"tz": ("2026-01-01 09:00:00+09", "2025-12-31 19:00:00-05"), "bp": ("ab", "ab  ")}
    | {"jb": ('{"x": 1, "y": 2}', '{"y": 2, "x": 1}'), "ra": ("[1,3)", "[1,2]")}
    | {"hs": ("a=>1, b=>2", "b=>2, a=>1"), "ea": ("{sad,happy}", "{sad, happy}")},
    {c: (v, v) for c, v in PLAIN.items()}
    | {"da": ("infinity", "9999-12-31"), "wa": ('("[0:0]={1.10}")', '("{1.10}")')},
]

DDL = (
    "CREATE EXTENSION citext; CREATE EXTENSION hstore;"
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); CREATE TYPE pair AS (m mood, n numeric);"
    "CREATE TYPE wrap AS (a numeric[]);"
    "CREATE TABLE p (id int PRIMARY KEY, "
    + ", ".join(f"{c} {t}" for c, (t, _) in TYPES.items())
    + ")"
)
ROWS = 4


def _typed(i: int, col: str) -> str:
    return f"${i}::text::{TYPES[col][0]}"


async def _fill(dsn: str, rows: list[dict[str, str | None]], timezone: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"SET TimeZone = '{timezone}'; TRUNCATE p")
        cols = list(TYPES)
        values = ", ".join(["$1::int", *(_typed(i + 2, c) for i, c in enumerate(cols))])
        await conn.executemany(
            f"INSERT INTO p (id, {', '.join(cols)}) VALUES ({values})",
            [(n, *(r[c] for c in cols)) for n, r in enumerate(rows)],
        )
    finally:
        await conn.close()


async def _verdicts(
    conn: asyncpg.Connection, sends: dict[str, str], a: Pair, col: str
) -> tuple[bool, bool]:
    """(exact differs, semantic differs) for one pair, asked of the server."""
    x, y = a
    if x is None or y is None:
        return x is not y, x is not y
    t = TYPES[col][0]
    send = sends[col]
    eq = f"$1::text::{t} = $2::text::{t}"
    if t == "json":
        eq = f"$1::text::{t}::text = $2::text::{t}::text"
    row = await conn.fetchrow(
        f"SELECT {send}($1::text::{t}) IS DISTINCT FROM {send}($2::text::{t}), NOT ({eq})", x, y
    )
    assert row is not None
    return bool(row[0]), bool(row[1])


def test_modes_agree_with_the_server(primary_dsn: str, other_dsn: str) -> None:
    src, tgt = asyncio.run(fresh_pair(primary_dsn, other_dsn, DDL, DDL))

    async def send_functions() -> dict[str, str]:
        conn = await asyncpg.connect(src)
        try:
            return {
                c: await conn.fetchval(
                    f"SELECT typsend::text FROM pg_type WHERE oid = '{t}'::regtype"
                )
                for c, (t, _) in TYPES.items()
            }
        finally:
            await conn.close()

    sends = asyncio.run(send_functions())
    row = st.fixed_dictionaries({c: s for c, (_, s) in TYPES.items()})
    #: columns seen different in exact mode only, and in both (the test must see both)
    seen: dict[str, set[str]] = {"exact only": set(), "both": set()}

    @settings(
        max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    @given(st.lists(row, min_size=1, max_size=ROWS), st.sampled_from(["copy", "server", "client"]))
    @example(ISSUE_EXAMPLE, "copy")
    def check(pairs: list[dict[str, Pair]], digest: str) -> None:
        async def run() -> None:
            await _fill(src, [{c: p[c][0] for c in TYPES} for p in pairs], "Asia/Tokyo")
            await _fill(tgt, [{c: p[c][1] for c in TYPES} for p in pairs], "America/New_York")
            conn = await asyncpg.connect(src)
            try:
                expected: dict[str, dict[int, tuple[str, ...]]] = {"exact": {}, "semantic": {}}
                for n, p in enumerate(pairs):
                    verdicts = {c: await _verdicts(conn, sends, p[c], c) for c in TYPES}
                    for mode, i in (("exact", 0), ("semantic", 1)):
                        cols = tuple(c for c in TYPES if verdicts[c][i])
                        if cols:
                            expected[mode][n] = cols
                    for c, (ex, sem) in verdicts.items():
                        if ex:
                            seen["both" if sem else "exact only"].add(TYPES[c][0])
            finally:
                await conn.close()
            for mode in ("exact", "semantic"):
                report = await diff(
                    src,
                    tgt,
                    DiffOptions(tables=("p",), digest=digest, compare=mode, chunk_rows=2),  # type: ignore[arg-type]
                )
                (table,) = report.tables
                got = {d.key[0]: d.columns for d in table.differences if isinstance(d, Changed)}
                assert len(got) == table.differences_total, table.differences
                assert got == expected[mode], (mode, digest, pairs)

        asyncio.run(run())

    check()
    assert {"numeric", "float8", "interval", "jsonb", "citext"} <= seen["exact only"], seen
    assert len(seen["both"]) > 10, seen
