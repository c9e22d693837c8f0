"""Obvious operator mistakes and small things (issue 12, items 11 and 12), against real
PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import click
import pytest
from click.testing import CliRunner

from replverify.cli.main import main
from replverify.testing.servers import cut_replication, execute, promote, wait_for_replay


def _db(dsn: str, db: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + db


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


async def _run(*args: str):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(_invoke, *args)


async def test_one_server_twice_is_refused_unless_allowed(shop) -> None:  # type: ignore[no-untyped-def]
    primary, standby, _ = shop
    # the same server under another spelling (localhost for 127.0.0.1) is still one server
    respelled = primary.replace("127.0.0.1", "localhost")
    for cmd in (["diff"], ["failback"], ["health"], ["lag", "--samples", "1"], ["gate"]):
        result = await _run(*cmd, primary, respelled)
        assert result.exit_code == 2, (cmd, result.output)
        assert "are the same server" in result.output, (cmd, result.output)
        assert "system identifier" in result.output and "Traceback" not in result.output
    allowed = await _run("diff", primary, primary, "-t", "orders", "--allow-same-server")
    assert allowed.exit_code == 0 and "CONSISTENT" in allowed.output
    # a primary and its standby share the system identifier but are two servers
    result = await _run("diff", primary, standby, "-t", "orders")
    assert result.exit_code == 0, result.output


async def test_two_databases_of_one_server_are_not_the_same(clusters, make_db) -> None:  # type: ignore[no-untyped-def]
    (a,) = await make_db(clusters.other_dsn, rows=100, matrix_rows=5)
    (b,) = await make_db(clusters.other_dsn, rows=100, matrix_rows=5)
    result = await _run("diff", a, b, "-t", "customers")
    assert result.exit_code in (0, 1) and "same server" not in result.output, result.output


async def test_failback_with_old_and_new_swapped_is_refused(clusters, make_db) -> None:  # type: ignore[no-untyped-def]
    pair = await asyncio.to_thread(clusters.fresh_pair)
    try:
        (old,) = await make_db(pair.primary_dsn, rows=100, matrix_rows=5)
        new = _db(pair.standby_dsn, old.rsplit("/", 1)[1])
        await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
        await cut_replication(pair.standby_dsn)
        await execute(old, "UPDATE orders SET note = 'old only' WHERE id = 3")
        await promote(pair.standby_dsn)
        swapped = await _run("failback", new, old, "-t", "orders")
        assert swapped.exit_code == 2, swapped.output
        out = swapped.output
        assert "look swapped" in out and "OLD is on timeline 2 and NEW on timeline 1" in out
        assert "lists timeline 1 as its ancestor" in out  # superuser reads the history file
        right = await _run("failback", old, new, "-t", "orders", "--format", "json")
        assert right.exit_code == 1, right.output
        assert json.loads(right.output)["counts"]["old_only"] == 1
    finally:
        await asyncio.to_thread(pair.close)


# == item 12: small things ==============================================================


def test_counts_are_pluralized() -> None:
    from replverify.ops.failback_attribution import FailbackReport, FailbackRow
    from replverify.reports.diff import table_verdict
    from replverify.reports.ops import failback_verdict
    from replverify.types import TableRef, TableResult
    from replverify.values.wording import count

    assert (count(1, "row"), count(2, "row"), count(1000, "entry", "entries")) == (
        "1 row",
        "2 rows",
        "1,000 entries",
    )
    ref = TableRef("public", "orders")
    row = FailbackRow(ref, {"id": 1}, "old_only", "insert", (), None, None, {}, None, "why")
    report = FailbackReport("old", "new", None, None, "", 2, rows=[row])
    assert failback_verdict(report).startswith("1 old-only row, 0 conflicting, 0 unknown:")
    one = TableResult(ref, ("id",), "primary key", unstable=[(1,)])
    assert table_verdict(one).startswith("1 row not verified")
    from replverify.cli.console import TERMINAL
    from replverify.reports.formats import DIFF_RENDERERS
    from replverify.types import DiffReport

    # still coloured as "not verified" in the singular
    colored = DIFF_RENDERERS.marked(DiffReport("s", "t", [one]), TERMINAL)
    assert click.style(table_verdict(one), fg="yellow") in colored


def test_one_value_has_one_presentation() -> None:
    from replverify.reports.formatting import fmt_key, fmt_values
    from replverify.reports.reconcile import _journal_json

    # the journal's JSON false and the database's text f are the same boolean
    assert fmt_values({"paid": False}) == fmt_values({"paid": "f"}) == 'paid="f"'
    assert fmt_key({"flag": True}) == fmt_key({"flag": "t"})
    assert _journal_json({"paid": False, "n": 1}) == {"paid": "f", "n": 1}


def test_measured_durations_have_one_format() -> None:
    from replverify.reports.diff import diff_facts, diff_verdict
    from replverify.reports.formatting import fmt_seconds
    from replverify.types import DiffReport

    report = DiffReport("a", "b", [], elapsed_s=18.4567)
    report.lag["start"] = {"lag_bytes": 0, "lag_seconds": 0.0, "method": "caught-up"}
    assert diff_verdict(report).endswith("(18.457 s)")
    assert dict(diff_facts(report))["lag at start"].startswith("0.000 s, 0 bytes")
    assert (fmt_seconds(0), fmt_seconds(0.5), fmt_seconds(1234.5)) == (
        "0.000 s",
        "0.500 s",
        "1,234.500 s",
    )


async def test_a_misspelt_table_gets_did_you_mean(shop) -> None:  # type: ignore[no-untyped-def]
    primary, _, other = shop
    result = await _run("diff", primary, other, "-t", "ordres")
    assert result.exit_code == 2
    assert "no table matches 'ordres'" in result.output and "did you mean orders?" in result.output
    far = await _run("diff", primary, other, "-t", "zzzz")
    assert far.exit_code == 2 and "did you mean" not in far.output and "\\dt" in far.output


async def test_a_missing_password_gets_a_pgpassword_hint(clusters, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = clusters.other
    assert other is not None, "needs the local clusters"
    hba = other.datadir / "pg_hba.conf"
    rule = "host all rv_pw_user 127.0.0.1/32 scram-sha-256\n"
    if rule not in hba.read_text():
        hba.write_text(rule + hba.read_text())  # the first matching line wins
    await execute(
        clusters.other_dsn,
        "DO $$ BEGIN CREATE ROLE rv_pw_user LOGIN PASSWORD 'sekret'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "SELECT pg_reload_conf()",
    )
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no.pgpass"))
    dsn = f"postgresql://rv_pw_user@127.0.0.1:{other.port}/postgres"
    result = await _run("diff", dsn, clusters.other_dsn)
    assert result.exit_code == 2 and "login refused" in result.output
    assert "PGPASSWORD" in result.output and "no.pgpass" in result.output
    wrong = await _run("diff", f"postgresql://rv_pw_user:nope@127.0.0.1:{other.port}/postgres",
                       clusters.other_dsn)  # fmt: skip
    assert wrong.exit_code == 2 and "PGPASSWORD" not in wrong.output  # one was given
    assert "nope" not in wrong.output


async def test_diff_options_take_one_string_as_one_pattern(shop) -> None:  # type: ignore[no-untyped-def]
    from replverify.api import DiffOptions, diff
    from replverify.errors import UsageError

    primary, _, other = shop
    report = await diff(primary, other, DiffOptions(tables="public.orders", key=[]))
    assert [t.table.qualified for t in report.tables] == ["public.orders"]
    for bad in (DiffOptions(tables=5), DiffOptions(exclude=("a", 1))):  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="must be a string or a sequence of strings"):
            bad.validate()
