"""One table that cannot be read (no SELECT, locked, dropped or altered while read) is
that table's trouble alone: every other table is verified and reported, and the run
exits 2, in every format and in ``gate`` and ``failback`` too."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.api import DiffOptions, diff
from replverify.cli.diff import diff_exit_code
from replverify.cli.main import main
from replverify.ops import failback as failback_module
from replverify.ops.failback import failback
from replverify.ops.gate import gate
from replverify.reports.diff import diff_to_dict, diff_to_markdown, diff_to_text
from replverify.reports.formats import DIFF_RENDERERS, FAILBACK_RENDERERS, GATE_RENDERERS
from replverify.reports.ops import failback_to_dict, gate_to_dict
from replverify.testing.servers import execute, wait_for_replay
from replverify.types import Missing


def table(report, name):
    (t,) = [t for t in report.tables if t.table.qualified == name]
    return t


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("postgres@", f"{role}@", 1)


async def cli(*args: str):
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), catch_exceptions=False)


async def reader(dsn: str, *, without: str = "") -> str:
    """A login role (trust auth) with SELECT on every table of ``dsn``'s database but
    ``without``; its DSN."""
    role = "reader_" + dsn.rsplit("/", 1)[1]
    statements = [
        f"DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN END $$",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
    ]
    if without:
        statements.append(f"REVOKE SELECT ON {without} FROM {role}")
    await execute(dsn, *statements)
    return as_role(dsn, role)


def assert_others_verified(report, bad: str) -> None:
    for t in report.tables:
        if t.table.qualified != bad:
            assert t.verified and t.error is None, (t.table, t.error)
            assert t.rows_source > 0 or t.table.name == "events"


@pytest.fixture(scope="module")
async def secret(clusters, make_db):
    """(source, target) as roles that may read every table but ``customers`` on the
    source; the target lacks one order."""
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=400)
    await execute(tgt, "DELETE FROM orders WHERE id = 7")
    return await reader(src, without="customers"), await reader(tgt)


async def test_a_table_without_select_is_trouble_for_that_table_alone(secret):
    src, tgt = secret
    report = await diff(src, tgt, DiffOptions(chunk_rows=100))
    assert [t.table.name for t in report.tables] == [
        "customers",
        "events",
        "order_lines",
        "orders",
        "types_matrix",
    ]
    customers = table(report, "public.customers")
    assert customers.error is not None
    assert "cannot read public.customers on the source" in customers.error
    assert "permission denied" in customers.error
    assert not customers.verified and customers.chunks == 0
    assert_others_verified(report, "public.customers")
    orders = table(report, "public.orders")
    assert orders.differences == [Missing((7,))] and orders.rows_source == 400
    assert not report.complete and diff_exit_code(report) == 2

    doc = diff_to_dict(report)
    assert doc["schema"] == "replverify.diff/1" and doc["complete"] is False
    entry = next(t for t in doc["tables"] if t["table"] == "public.customers")
    assert entry["verified"] is False and "permission denied" in entry["error"]
    assert sum(t["verified"] for t in doc["tables"]) == 4

    text = diff_to_text(report)
    line = next(x for x in text.splitlines() if x.startswith("public.customers"))
    assert "NOT VERIFIED" in line
    assert "error    cannot read public.customers on the source: permission denied" in text
    assert "missing  id=7" in text and text.rstrip().splitlines()[-1].startswith("INCOMPLETE")


async def test_the_cli_reports_every_other_table_and_exits_2(secret):
    src, tgt = secret
    result = await cli("diff", src, tgt)
    assert result.exit_code == 2, result.output
    assert "permission denied" in result.output and "missing  id=7" in result.output
    assert "Traceback" not in result.output
    result = await cli("diff", src, tgt, "--format", "json")
    assert result.exit_code == 2, result.output
    doc = json.loads(result.output)
    assert doc["status"] == "different" and doc["complete"] is False
    by_name = {t["table"]: t for t in doc["tables"]}
    assert "permission denied" in by_name["public.customers"]["error"]
    assert by_name["public.orders"]["differences"] == [
        {"kind": "missing", "key": {"id": 7}, "columns": []}
    ]
    assert by_name["public.order_lines"]["verified"] is True


async def test_markdown_and_html_name_the_table_and_the_reason(secret):
    src, tgt = secret
    report = await diff(src, tgt, DiffOptions(tables=("customers", "order_lines")))
    md = diff_to_markdown(report)
    assert "⚠️ incomplete" in md
    row = next(x for x in md.splitlines() if x.startswith("| `public.customers`"))
    assert "NOT VERIFIED" in row
    assert "- error: cannot read public.customers on the source: permission denied" in md
    page = DIFF_RENDERERS["html"](report)
    assert "public.customers: NOT VERIFIED" in page
    assert "error: cannot read public.customers on the source: permission denied" in page


async def test_a_where_that_does_not_fit_stays_a_usage_error(secret):
    src, tgt = secret
    result = await cli("diff", src, tgt, "-t", "orders", "--where", "no_such_column = 1")
    assert result.exit_code == 2 and "no_such_column" in result.output
    assert "public.orders" in result.output and "NOT VERIFIED" not in result.output


async def test_a_locked_table_times_out_alone(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=300)
    holder = await asyncpg.connect(tgt)
    try:
        await holder.execute("BEGIN; LOCK TABLE order_lines IN ACCESS EXCLUSIVE MODE")
        locked = tgt + "?options=-c%20lock_timeout%3D200ms"  # libpq form
        report = await diff(src, locked, DiffOptions(chunk_rows=100))
        lines = table(report, "public.order_lines")
        assert lines.error and "on the target" in lines.error and "lock timeout" in lines.error
        assert_others_verified(report, "public.order_lines")
        assert diff_exit_code(report) == 2
        result = await cli("diff", src, locked, "--format", "json")
        assert result.exit_code == 2, result.output
        doc = json.loads(result.output)
        by_name = {t["table"]: t for t in doc["tables"]}
        assert "lock timeout" in by_name["public.order_lines"]["error"]
        assert by_name["public.orders"]["verified"] and by_name["public.orders"]["rows_source"]
        result = await cli("diff", src, locked)
        assert result.exit_code == 2 and "lock timeout" in result.output
        assert "public.orders  [key (id)]" in result.output
    finally:
        await holder.close()


def _on_first_progress(name: str, *sql_by_dsn: tuple[str, str]):
    """A progress callback that runs the statements once, while ``name`` is compared."""
    tasks: list[asyncio.Future[None]] = []

    def progress(ref, done, estimate):
        if ref.name == name and not tasks:
            tasks.append(asyncio.ensure_future(_in_order(sql_by_dsn)))

    return progress, tasks


async def _in_order(sql_by_dsn: tuple[tuple[str, str], ...]) -> None:
    for dsn, sql in sql_by_dsn:
        await execute(dsn, sql)


async def test_a_table_dropped_mid_run_is_trouble_for_it_alone(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=30_000)
    progress, dropped = _on_first_progress("orders", (tgt, "DROP TABLE orders"))
    options = DiffOptions(chunk_rows=300, jobs=1)
    report = await diff(src, tgt, options, progress=progress)
    await asyncio.gather(*dropped)
    assert dropped, "orders was never compared"
    orders = table(report, "public.orders")
    assert orders.error and "public.orders was dropped on the target during the run" in (
        orders.error
    )
    assert orders.rows_source < 30_000
    assert_others_verified(report, "public.orders")
    assert diff_exit_code(report) == 2
    doc = diff_to_dict(report)
    entry = next(t for t in doc["tables"] if t["table"] == "public.orders")
    assert entry["verified"] is False and "dropped on the target" in entry["error"]
    assert "dropped on the target during the run" in diff_to_text(report)
    # run again from the CLI: now the table is simply missing on the target
    result = await cli("diff", src, tgt, "-t", "orders", "--format", "json")
    assert json.loads(result.output)["tables"][0]["schema_differences"] == [
        "table missing on the target"
    ]


async def test_a_table_altered_mid_run_is_compared_again_never_mixed(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=30_000)
    progress, altered = _on_first_progress(
        "orders",
        (src, "ALTER TABLE orders ADD COLUMN extra int DEFAULT 7"),
        (tgt, "ALTER TABLE orders ADD COLUMN extra int DEFAULT 7"),
    )
    report = await diff(src, tgt, DiffOptions(chunk_rows=300, jobs=1), progress=progress)
    await asyncio.gather(*altered)
    assert altered, "orders was never compared"
    orders = table(report, "public.orders")
    # the comparison that is reported saw the new definition on both sides throughout
    assert "extra" in orders.columns and orders.verified, orders.error
    assert orders.rows_source == orders.rows_target == 30_000 and orders.consistent
    assert any("public.orders: its definition changed" in n for n in report.notes), report.notes
    assert report.complete and report.status == "consistent"
    assert "compared again from the start" in diff_to_text(report)
    doc = diff_to_dict(report)
    assert any("definition changed on the source and the target" in n for n in doc["notes"])


async def test_a_table_altered_on_one_side_mid_run_shows_the_new_schema(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=30_000)
    progress, altered = _on_first_progress(
        "orders", (src, "ALTER TABLE orders ADD COLUMN extra int DEFAULT 7")
    )
    report = await diff(src, tgt, DiffOptions(chunk_rows=300, jobs=1), progress=progress)
    await asyncio.gather(*altered)
    orders = table(report, "public.orders")
    assert orders.schema_differences == ("column extra (integer) only on source",)
    assert orders.verified and not orders.differences and diff_exit_code(report) == 1
    assert any("definition changed on the source" in n for n in report.notes)


async def test_a_table_that_keeps_changing_is_not_verified(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=30_000)
    await execute(tgt, "UPDATE orders SET note = 'differs' WHERE id = 5")
    last = [0]
    alters: list[asyncio.Future[None]] = []

    def progress(ref, done, estimate):
        if ref.name != "orders":
            return
        if not alters or done < last[0]:
            # a new comparison of orders has begun: alter it again while it runs
            sql = f"ALTER TABLE orders ADD COLUMN c{len(alters)} int"
            alters.append(asyncio.ensure_future(execute(src, sql)))
        last[0] = done

    report = await diff(src, tgt, DiffOptions(chunk_rows=300, jobs=1), progress=progress)
    await asyncio.gather(*alters)
    assert len(alters) == 3
    orders = table(report, "public.orders")
    assert orders.error == (
        "public.orders: its definition changed on the source during each of 3 comparisons;"
        " not verified"
    )
    assert not orders.differences and not orders.verified  # nothing from a mixed run
    assert_others_verified(report, "public.orders")
    assert diff_exit_code(report) == 2
    assert sum("its definition changed" in n for n in report.notes) == 2


async def test_gate_never_passes_with_an_unreadable_table(clusters, make_db):
    (primary,) = await make_db(clusters.primary_dsn, rows=200, matrix_rows=10)
    src = await reader(primary, without="customers")
    await execute(primary, f"GRANT pg_monitor TO {src.split('//')[1].split('@')[0]}")
    await wait_for_replay(clusters.primary_dsn, clusters.standby_dsn)
    tgt = clusters.standby_dsn.rsplit("/", 1)[0] + "/" + src.rsplit("/", 1)[1]
    tgt = as_role(tgt, src.split("//")[1].split("@")[0])
    report = await gate(src, tgt, timeout=20)
    assert report.caught_up and report.diff is not None
    assert report.status == "unverified" and not report.complete
    assert_others_verified(report.diff, "public.customers")
    doc = gate_to_dict(report)
    assert doc["status"] == "unverified" and doc["complete"] is False
    entry = next(t for t in doc["diff"]["tables"] if t["table"] == "public.customers")
    assert "permission denied" in entry["error"]
    for fmt in ("text", "markdown", "html"):
        out = GATE_RENDERERS[fmt](report)
        assert "public.customers" in out and "permission denied" in out, fmt
        assert "NOT SAFE" in out and "could not be verified" in out, fmt
    result = await cli("gate", src, tgt, "--timeout", "20")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("NOT SAFE") and "permission denied" in result.output


async def test_failback_reports_an_unreadable_table_and_exits_2(secret):
    old, new = secret
    report = await failback(old, new, options=DiffOptions(tables=("customers", "order_lines")))
    assert not report.complete and report.status == "unverified" and not report.rows
    assert [(str(ref), "permission denied" in why) for ref, why in report.unverified] == [
        ("public.customers", True)
    ]
    doc = failback_to_dict(report)
    assert doc["schema"] == "replverify.failback/1" and doc["complete"] is False
    assert doc["status"] == "unverified"
    (entry,) = doc["unverified"]
    assert entry["table"] == "public.customers" and "permission denied" in entry["reason"]
    for fmt in ("text", "markdown", "html"):
        out = FAILBACK_RENDERERS[fmt](report)
        assert "public.customers" in out and "permission denied" in out, fmt
        assert "1 table could not be verified" in out, fmt
        assert "nothing on the old primary is missing" not in out, fmt
    # every other table is still attributed; the exit code says trouble
    result = await cli("failback", old, new, "--format", "json")
    assert result.exit_code == 2, result.output
    doc = json.loads(result.output)
    assert doc["status"] == "old_only_changes" and doc["complete"] is False
    assert [(r["table"], r["key"]) for r in doc["rows"]] == [("public.orders", {"id": 7})]
    assert [x["table"] for x in doc["unverified"]] == ["public.customers"]
    result = await cli("failback", old, new)
    assert result.exit_code == 2 and "1 table could not be verified" in result.output


async def test_failback_attribution_trouble_is_that_tables_alone(clusters, make_db, monkeypatch):
    old, new = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=100, matrix_rows=10)
    await execute(
        new,
        "DELETE FROM orders WHERE id = 3",
        "DELETE FROM order_lines WHERE line_no = 1 AND order_id = 4",
    )
    old_reader = await reader(old)
    real_diff = failback_module.api.diff

    async def diff_then_revoke(*args, **kwargs):
        report = await real_diff(*args, **kwargs)
        # SELECT taken away between the diff and the attribution of its rows
        await execute(
            old, f"REVOKE SELECT ON orders FROM {old_reader.split('//')[1].split('@')[0]}"
        )
        return report

    monkeypatch.setattr(failback_module.api, "diff", diff_then_revoke)
    report = await failback(old_reader, new)
    assert not report.complete and report.status == "old_only_changes"
    assert [str(r.table) for r in report.rows] == ["public.order_lines"]
    ((ref, why),) = report.unverified
    assert str(ref) == "public.orders" and "permission denied" in why
    assert "public.orders: its differing rows cannot be read" in FAILBACK_RENDERERS["text"](report)


async def test_a_value_the_client_cannot_decode_is_trouble_for_that_table_alone(clusters, make_db):
    # asyncpg has no Python value for a BC date inside an array: narrowing such a chunk
    # used to end the whole run with an internal error and a traceback
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=100)
    for dsn, day in ((src, "0044-03-15 BC"), (tgt, "0045-03-15 BC")):
        await execute(
            dsn,
            "CREATE TABLE ides (id int PRIMARY KEY, d date[])",
            f"INSERT INTO ides VALUES (1, '{{{day}}}'), (2, '{{2020-01-01}}')",
            "CREATE TABLE ides_key (d date PRIMARY KEY, n int)",
            f"INSERT INTO ides_key VALUES ('0044-03-15 BC', {day[3]}), ('2020-01-01', 2)",
        )
    report = await diff(src, tgt)
    for name in ("public.ides", "public.ides_key"):
        t = table(report, name)
        assert t.error and "could not be decoded by the client library" in t.error
        assert "psql shows its rows" in t.error
    others = [t for t in report.tables if t.table.name not in ("ides", "ides_key")]
    assert others and all(t.verified and t.error is None for t in others)
    assert diff_exit_code(report) == 2
    result = await cli("diff", src, tgt, "--format", "json")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
