"""Obvious operator mistakes and small things (issue 12, items 11 and 12), against real
PostgreSQL."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner

from replverify.cli import main
from replverify.testing import cut_replication, execute, promote, wait_for_replay


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
