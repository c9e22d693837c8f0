"""User mistakes end with exit 2 and one clear message, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from replverify.cli.main import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("table", ['orders"; DROP TABLE orders; --', "orders' OR '1'='1",
                                   "pg_catalog.pg_class", "nope*"])  # fmt: skip
def test_table_names_with_injection_attempts_match_nothing(shop, table):
    primary, standby, _ = shop
    result = run("diff", primary, standby, "-t", table)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no table matches" in result.output or "bad table name" in result.output


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"\xff\xfe{", "no complete record")])
def test_empty_or_undecodable_journal(shop, tmp_path, content, message):
    primary, _, _ = shop
    path = tmp_path / "j.jsonl"
    path.write_bytes(content)
    result = run("reconcile", "--journal", str(path), "--target", primary)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


async def test_verification_sessions_cannot_write(shop):
    import asyncpg

    from replverify.db.connect import Endpoint, connect

    primary, _, _ = shop
    conn = await connect(Endpoint.parse(primary))
    try:
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        assert await conn.fetchval("SHOW transaction_isolation") == "repeatable read"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TABLE must_not_exist (i int)")
    finally:
        await conn.close()
