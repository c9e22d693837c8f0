"""Benchmark data sets: deterministic SQL generators and planted differences.

Every shape is a table ``t`` filled from ``generate_series(1, rows) i``; each row is a pure
function of its generator index ``i``, so both servers get identical data whatever their
settings. Differences are planted by generator index, spread evenly over the key space:

* ``missing`` - deleted on the target (in the source only),
* ``extra``   - deleted on the source (so the target has a row the source lacks),
* ``changed`` - one non-key column updated on the target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from replverify.testing.sample import BENCH_SQL

TABLE = "t"


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    #: Key columns, in key order.
    key: tuple[str, ...]
    #: Statements creating and filling ``t``; ``{rows}`` is the row count.
    create_sql: str
    #: SQL expressions of the generator index ``i`` giving each key column.
    key_of_i: tuple[str, ...]
    #: SET clause of the planted updates (changes one non-key column).
    update_set: str

    def fill_sql(self, rows: int) -> str:
        return self.create_sql.replace("{rows}", str(int(rows)))

    @property
    def order_by(self) -> str:
        return ", ".join(f'"{k}"' for k in self.key)

    def _where_keys(self) -> str:
        cols = ", ".join(f'"{k}"' for k in self.key)
        exprs = ", ".join(self.key_of_i)
        return f"({cols}) IN (SELECT {exprs} FROM unnest($1::bigint[]) AS g(i))"

    def delete_sql(self) -> str:
        return f"DELETE FROM {TABLE} WHERE {self._where_keys()}"

    def update_sql(self) -> str:
        return f"UPDATE {TABLE} SET {self.update_set} WHERE {self._where_keys()}"


# --------------------------------------------------------------------------- narrow

NARROW = Shape(
    name="narrow",
    description="t(id bigint primary key, a int, b text, c numeric(12,2), d timestamptz, "
    "e jsonb, f boolean) - replverify.testing.sample.BENCH_SQL",
    key=("id",),
    create_sql=BENCH_SQL.replace("{name}", TABLE),
    key_of_i=("i",),
    update_set="a = a + 1",
)

# --------------------------------------------------------------------------- wide

#: (name, type, generator expression of i)
WIDE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "bigint PRIMARY KEY", "i"),
    ("c_int", "integer", "(i::bigint * 7919 % 100000)::int"),
    ("c_bigint", "bigint", "i::bigint * 1000003"),
    ("c_small", "smallint", "(i % 30000)::smallint"),
    ("c_nullable_int", "integer", "CASE WHEN i % 4 = 0 THEN NULL ELSE i % 1000 END"),
    ("c_num", "numeric(14,4)", "round((i % 100000) / 7.0, 4)"),
    ("c_amount", "numeric(12,2)", "((i * 31) % 1000000) / 100.0"),
    ("c_num_free", "numeric", "i / 3.0"),
    ("c_float8", "double precision", "i / 7.0"),
    ("c_float4", "real", "(i / 3.0)::real"),
    ("c_md5", "text", "md5(i::text)"),
    ("c_name", "text", "'name ' || i"),
    ("c_note", "text", "CASE WHEN i % 10 = 0 THEN NULL ELSE repeat('ab', i % 40) END"),
    ("c_code", "text", "upper(substr(md5(i::text), 1, 6))"),
    ("c_status", "text", "(ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + i % 4]"),
    ("c_varchar", "varchar(64)", "'v-' || (i % 1000)"),
    ("c_char", "char(8)", "lpad((i % 100000)::text, 8, '0')"),
    ("c_bool", "boolean", "i % 3 = 0"),
    ("c_bool_null", "boolean", "CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN true ELSE false END"),
    ("c_date", "date", "date '2000-01-01' + (i % 10000)::int"),
    ("c_ts", "timestamp", "timestamp '2020-01-01 00:00:00' + i * interval '1 second'"),
    (
        "c_tstz",
        "timestamptz",
        "timestamptz '2020-01-01 00:00:00+00' + i * interval '1 minute 0.5 seconds'",
    ),
    (
        "c_updated",
        "timestamptz",
        "timestamptz '2024-01-01 00:00:00+00' + (i % 100000) * interval '1 second'",
    ),
    ("c_time", "time", "time '00:00' + (i % 86400) * interval '1 second'"),
    ("c_interval", "interval", "(i % 1000) * interval '1 hour 1 minute'"),
    ("c_uuid", "uuid", "md5(i::text)::uuid"),
    ("c_jsonb", "jsonb", "jsonb_build_object('k', i, 'tag', 't' || (i % 7), 'v', i / 4.0)"),
    ("c_json", "json", "json_build_object('n', i % 100)"),
    ("c_bytea", "bytea", "decode(md5((i * 2)::text), 'hex')"),
    ("c_int_arr", "integer[]", "ARRAY[i % 10, i % 100, i % 1000]"),
    ("c_text_arr", "text[]", "ARRAY['a' || (i % 5), 'b']"),
    ("c_inet", "inet", "('10.0.' || (i % 256) || '.' || ((i / 256) % 256))::inet"),
)


def _generated_table(columns: tuple[tuple[str, str, str], ...], extra: str = "") -> str:
    defs = ",\n    ".join(f"{n} {t}" for n, t, _ in columns) + extra
    exprs = ",\n       ".join(e for _, _, e in columns)
    return (
        f"CREATE TABLE {TABLE} (\n    {defs}\n);\n"
        f"INSERT INTO {TABLE}\nSELECT {exprs}\nFROM generate_series(1, {{rows}}) i;\n"
    )


WIDE = Shape(
    name="wide",
    description=f"t with {len(WIDE_COLUMNS)} columns of mixed types (ints, numerics, floats, "
    "text, varchar, char, bool, date, timestamp(tz), time, interval, uuid, jsonb, json, "
    "bytea, int[], text[], inet), bigint primary key",
    key=("id",),
    create_sql=_generated_table(WIDE_COLUMNS),
    key_of_i=("i",),
    update_set="c_name = c_name || '!'",
)

# --------------------------------------------------------------------------- textkey

_TEXT_KEY = (
    "(ARRAY['acct', 'Acct', 'ACCT', 'user', 'User'])[1 + i % 5] || '-' || "
    "CASE WHEN i % 2 = 0 THEN upper(md5(i::text)) ELSE md5(i::text) END"
)

TEXTKEY = Shape(
    name="textkey",
    description="t(k text primary key, a int, b text, c numeric(12,2), d timestamptz, e jsonb, "
    "f boolean); keys like 'Acct-9BF31C7F...' / 'user-c4ca4238...' in mixed case, "
    "unrelated to insertion order",
    key=("k",),
    create_sql=_generated_table(
        (
            ("k", "text PRIMARY KEY", _TEXT_KEY),
            ("a", "integer", "(i::bigint * 7919 % 100000)::int"),
            ("b", "text", "md5((i + 1)::text)"),
            ("c", "numeric(12,2)", "((i * 31) % 1000000) / 100.0"),
            ("d", "timestamptz", "timestamptz '2020-01-01 00:00:00+00' + i * interval '1 second'"),
            ("e", "jsonb", "jsonb_build_object('k', i, 's', md5(i::text))"),
            ("f", "boolean", "i % 2 = 0"),
        )
    ),
    key_of_i=(_TEXT_KEY,),
    update_set="a = a + 1",
)

# --------------------------------------------------------------------------- composite

COMPOSITE = Shape(
    name="composite",
    description="t(tenant text, n bigint, a int, b text, c numeric(12,2), d timestamptz, "
    "e jsonb, f boolean, primary key (tenant, n)); 50 tenants",
    key=("tenant", "n"),
    create_sql=_generated_table(
        (
            ("tenant", "text", "'tenant-' || lpad((i % 50)::text, 2, '0')"),
            ("n", "bigint", "i / 50"),
            ("a", "integer", "(i::bigint * 7919 % 100000)::int"),
            ("b", "text", "md5(i::text)"),
            ("c", "numeric(12,2)", "((i * 31) % 1000000) / 100.0"),
            ("d", "timestamptz", "timestamptz '2020-01-01 00:00:00+00' + i * interval '1 second'"),
            ("e", "jsonb", "jsonb_build_object('k', i, 's', md5(i::text))"),
            ("f", "boolean", "i % 2 = 0"),
        ),
        extra=",\n    PRIMARY KEY (tenant, n)",
    ),
    key_of_i=("'tenant-' || lpad((i % 50)::text, 2, '0')", "i / 50"),
    update_set="a = a + 1",
)

SHAPES: dict[str, Shape] = {s.name: s for s in (NARROW, WIDE, TEXTKEY, COMPOSITE)}

# --------------------------------------------------------------------------- differences


@dataclass(frozen=True)
class Plan:
    """Generator indexes of the planted differences of one case."""

    label: str
    missing: tuple[int, ...] = ()
    extra: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.changed)


_DIFF_SPEC = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def parse_diffs(spec: str, rows: int) -> tuple[str, int]:
    """``"10"`` -> 10 rows; ``"1%"`` -> 1 % of ``rows`` (rounded). Returns (label, count)."""
    m = _DIFF_SPEC.match(spec)
    if not m:
        raise ValueError(f"bad --diffs item {spec!r}: give a row count (10) or a percentage (1%)")
    number, pct = float(m.group(1)), bool(m.group(2))
    count = round(rows * number / 100) if pct else int(number)
    if not pct and number != int(number):
        raise ValueError(f"bad --diffs item {spec!r}: a row count must be a whole number")
    if count > rows:
        raise ValueError(f"--diffs {spec}: more differences than rows")
    label = f"{m.group(1)}%" if pct else str(count)
    return label, count


def plan_differences(label: str, count: int, rows: int) -> Plan:
    """``count`` generator indexes spread evenly over ``1..rows``; kinds in turn
    missing, changed, extra (so 10 gives 4 missing, 3 changed, 3 extra)."""
    picked = sorted({1 + int((j + 0.5) * rows / count) for j in range(count)}) if count else []
    picked = [min(p, rows) for p in picked]
    kinds: dict[str, list[int]] = {"missing": [], "changed": [], "extra": []}
    order = ("missing", "changed", "extra")
    for j, i in enumerate(picked):
        kinds[order[j % 3]].append(i)
    return Plan(label, tuple(kinds["missing"]), tuple(kinds["extra"]), tuple(kinds["changed"]))


# --------------------------------------------------------------------------- loading


async def load(conn: asyncpg.Connection, shape: Shape, rows: int) -> None:
    """(Re)create ``t`` of ``shape`` with ``rows`` generated rows."""
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    await conn.execute(shape.fill_sql(rows))


async def plant(
    source: asyncpg.Connection, target: asyncpg.Connection, shape: Shape, plan: Plan
) -> None:
    """Apply ``plan``: delete ``missing`` on the target, ``extra`` on the source, update
    ``changed`` on the target. Checks that every statement hit the planned rows."""

    async def run(conn: asyncpg.Connection, sql: str, idx: tuple[int, ...]) -> None:
        if not idx:
            return
        status = await conn.execute(sql, list(idx))
        hit = int(status.split()[-1])
        if hit != len(idx):
            raise RuntimeError(f"planting {sql.split()[0]} hit {hit} rows, expected {len(idx)}")

    await run(target, shape.delete_sql(), plan.missing)
    await run(target, shape.update_sql(), plan.changed)
    await run(source, shape.delete_sql(), plan.extra)
