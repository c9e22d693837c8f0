"""``diff`` against real PostgreSQL: type matrix, planted differences, options, standby."""

from __future__ import annotations

import pytest

from replverify.api import DiffOptions, diff
from replverify.errors import ConnectError, UsageError
from replverify.reports.diff import diff_to_dict
from replverify.testing.servers import execute
from replverify.types import Changed, Extra, Missing

MODES = ["copy", "server", "client"]


def table(report, name):
    (t,) = [t for t in report.tables if t.table.qualified == name]
    return t


@pytest.mark.parametrize("mode", MODES)
async def test_equal_data_is_consistent_across_different_server_settings(shop, mode):
    primary, _, other = shop  # other has TimeZone/DateStyle/IntervalStyle/... of its own
    report = await diff(primary, other, DiffOptions(digest=mode, chunk_rows=500))
    assert report.status == "consistent", diff_to_dict(report)
    matrix = table(report, "public.types_matrix")
    assert matrix.rows_source == matrix.rows_target == 120
    assert table(report, "public.orders").chunks >= 10


async def test_hot_standby_is_consistent(shop):
    primary, standby, _ = shop
    report = await diff(primary, standby, DiffOptions(chunk_rows=1000))
    assert report.status == "consistent" and report.complete
    assert set(report.lag) == {"start", "end"}  # lag figures of a standby target
    assert report.lag["end"]["lag_bytes"] >= 0


@pytest.fixture
async def planted(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn)
    await execute(
        tgt,
        "DELETE FROM orders WHERE id IN (1, 1500)",
        "UPDATE orders SET amount = amount + 0.01, note = 'changed' WHERE id = 777",
        "INSERT INTO orders SELECT id + 100000, customer, status, amount, placed_at, items, "
        "paid, note FROM orders WHERE id = 5",
        # text keys: mixed case and non-ASCII, ordered bytewise on both sides
        "UPDATE customers SET email = 'new@example.com' WHERE code = 'Zürich-4'",
        "DELETE FROM customers WHERE code = 'ACME-2'",
        "INSERT INTO customers VALUES ('Ωmega-999', 'x', NULL, '2026-01-01 00:00:00+00')",
        # composite key
        "DELETE FROM order_lines WHERE order_id = 100 AND line_no = 2",
        "UPDATE order_lines SET qty = qty + 1 WHERE order_id = 2999 AND line_no = 1",
        # keyless: one of two duplicate rows disappears
        "DELETE FROM events WHERE ctid = (SELECT min(ctid) FROM events WHERE kind = 'click')",
    )
    return src, tgt


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_rows", [7, 1000, 100_000])
async def test_planted_differences_are_reported_exactly(planted, mode, chunk_rows):
    src, tgt = planted
    report = await diff(src, tgt, DiffOptions(digest=mode, chunk_rows=chunk_rows))
    assert report.status == "different"
    assert set(table(report, "public.orders").differences) == {
        Missing((1,)),
        Missing((1500,)),
        Changed((777,), ("amount", "note")),
        Extra((100005,)),
    }
    assert set(table(report, "public.customers").differences) == {
        Changed(("Zürich-4",), ("email",)),
        Missing(("ACME-2",)),
        Extra(("Ωmega-999",)),
    }
    assert set(table(report, "public.order_lines").differences) == {
        Missing((100, 2)),
        Changed((2999, 1), ("qty",)),
    }
    events = table(report, "public.events")
    assert events.key_mode == "none" and events.differences_total == 1
    (gone,) = events.differences
    assert isinstance(gone, Missing) and gone.key[1] == "click"
    assert table(report, "public.types_matrix").differences == []


# column -> (row id whose value is not NULL there, the change)
COLUMN_CHANGES = {
    "c_numeric": (10, "c_numeric = -c_numeric"),  # the sign flip type hashes miss
    "c_numeric_s": (14, "c_numeric_s = c_numeric_s + 0.01"),
    "c_float8": (16, "c_float8 = c_float8 * 3"),
    "c_text": (19, "c_text = c_text || 'x'"),
    "c_char": (17, "c_char = 'zz'"),
    "c_bytea": (18, "c_bytea = '\\x01'::bytea"),
    "c_timestamptz": (20, "c_timestamptz = c_timestamptz + interval '1 microsecond'"),
    "c_timetz": (9, "c_timetz = '12:00:00+01'"),
    "c_interval": (11, "c_interval = interval '1 mon 2 days 03:04:05.679'"),
    "c_jsonb": (7, 'c_jsonb = \'{"n": 1.5, "z": null, "a": [true, "ü"]}\''),
    "c_json": (22, "c_json = '{\"a\": 1}'"),
    "c_int_array": (23, "c_int_array = ARRAY[1, NULL, 4]"),
    "c_enum": (24, "c_enum = 'cancelled'"),
    "c_composite": (26, "c_composite = ROW('Other', 'Basel', '1')::address"),
    "c_uuid": (25, "c_uuid = '00000000-0000-0000-0000-000000000001'"),
    "c_money": (28, "c_money = c_money + 1::money"),
    "c_point": (29, "c_point = point(0, 0)"),
}


@pytest.mark.parametrize("mode", MODES)
async def test_each_type_change_is_found_with_its_column(clusters, make_db, mode):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=200)
    ids = {}
    for col, (row_id, change) in COLUMN_CHANGES.items():
        ids[row_id] = col
        await execute(tgt, f"UPDATE types_matrix SET {change} WHERE id = {row_id}")
    report = await diff(src, tgt, DiffOptions(digest=mode, tables=("types_matrix",)))
    found = {d.key[0]: d.columns for d in table(report, "public.types_matrix").differences}
    assert found == {row_id: (col,) for row_id, col in ids.items()}


async def test_equal_values_in_other_forms_are_not_differences(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=50)
    await execute(
        tgt,
        "UPDATE types_matrix SET c_numeric = 1.50 WHERE c_numeric = 1.5",  # 1.5 == 1.50
        "UPDATE types_matrix SET c_float8 = '0' WHERE c_float8 = '-0'",  # -0 == 0
        "UPDATE types_matrix SET c_interval = interval '24 hours' WHERE id = 3",
    )
    await execute(src, "UPDATE types_matrix SET c_interval = interval '1 day' WHERE id = 3")
    options = DiffOptions(tables=("types_matrix",), compare="semantic")
    report = await diff(src, tgt, options)
    assert report.status == "consistent", diff_to_dict(report)
    # the default, exact, sees the other forms: they are what clients read
    exact = await diff(src, tgt, DiffOptions(tables=("types_matrix",)))
    assert exact.status == "different"
    columns = {c for d in exact.tables[0].differences for c in d.columns}
    assert {"c_float8", "c_interval"} <= columns <= {"c_numeric", "c_float8", "c_interval"}


async def test_where_tables_and_exclude(planted):
    src, tgt = planted
    report = await diff(src, tgt, DiffOptions(tables=("orde?s",), where="id < 1000"))
    assert [t.table.qualified for t in report.tables] == ["public.orders"]
    assert set(table(report, "public.orders").differences) == {
        Missing((1,)),
        Changed((777,), ("amount", "note")),
    }
    report = await diff(src, tgt, DiffOptions(exclude=("public.order*", "events")))
    assert [t.table.name for t in report.tables] == ["customers", "types_matrix"]


async def test_where_errors_are_usage_errors(planted):
    src, tgt = planted
    with pytest.raises(UsageError, match="no_such_column"):
        await diff(src, tgt, DiffOptions(tables=("orders",), where="no_such_column = 1"))
    with pytest.raises(UsageError):
        await diff(src, tgt, DiffOptions(where="1; DROP TABLE orders"))
    with pytest.raises(UsageError, match="nope"):
        await diff(src, tgt, DiffOptions(tables=("nope",)))


async def test_key_option_and_schema_differences(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=100)
    for dsn in (src, tgt):
        await execute(dsn, "CREATE TABLE nokey AS SELECT id AS ref, customer, amount FROM orders")
    await execute(
        tgt,
        "ALTER TABLE orders ADD COLUMN extra int",
        "ALTER TABLE customers DROP COLUMN email",
        "UPDATE nokey SET ref = 1000 WHERE ref = 50",
        "DELETE FROM nokey WHERE ref = 51",
    )
    report = await diff(src, tgt, DiffOptions(key=("ref",)))
    orders = table(report, "public.orders")
    assert orders.schema_differences == ("column extra (integer) only on target",)
    assert not orders.differences and not orders.consistent
    assert "email" in table(report, "public.customers").schema_differences[0]
    nokey = table(report, "public.nokey")
    assert nokey.key_mode == "--key" and nokey.key == ("ref",)
    assert set(nokey.differences) == {Missing((50,)), Missing((51,)), Extra((1000,))}
    assert table(report, "public.events").key_mode == "none"
    # a --key that is not unique is trouble, not a silent collapse of rows
    await execute(tgt, "UPDATE events SET kind = 'x' WHERE at = (SELECT max(at) FROM events)")
    report = await diff(src, tgt, DiffOptions(tables=("events",), key=("at", "kind")))
    assert not report.complete and "not unique" in (report.tables[0].error or "")


async def test_unreachable_server_is_a_connect_error(shop):
    primary, _, _ = shop
    with pytest.raises(ConnectError, match=r"127\.0\.0\.1:1") as info:
        await diff(primary, "postgresql://u:sekret@127.0.0.1:1/x")
    assert "sekret" not in str(info.value)


async def test_json_contract(planted):
    src, tgt = planted
    doc = diff_to_dict(await diff(src, tgt, DiffOptions(tables=("orders", "customers"))))
    assert doc["schema"] == "replverify.diff/1" and doc["status"] == "different"
    orders = next(t for t in doc["tables"] if t["table"] == "public.orders")
    assert orders["key"] == ["id"] and orders["differences_total"] == 4
    assert {"kind": "missing", "key": {"id": 1}, "columns": []} in orders["differences"]
    assert {"kind": "changed", "key": {"id": 777}, "columns": ["amount", "note"]} in orders[
        "differences"
    ]
    assert set(doc["summary"]) >= {"tables", "rows_compared", "differences", "elapsed_s"}
    assert doc["summary"]["differences"] == 7
    assert orders["digest_bits"] == 128 and 0 < doc["summary"]["miss_probability"] < 1e-30
