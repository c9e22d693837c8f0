"""Transient read failures are retried with backoff; permanent ones are not."""

from __future__ import annotations

import asyncpg
import pytest

from replverify.diff.fence import ReadError, read, retrying, transient


def flaky(errors: list[BaseException], result: object = "ok"):
    calls = []

    async def call():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return call, calls


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.SerializationError("canceling statement due to conflict with recovery"),
    asyncpg.exceptions.LockNotAvailableError("could not obtain lock"),
    asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    ConnectionResetError("reset by peer"),
])  # fmt: skip
async def test_transient_errors_are_retried(exc):
    assert transient(exc)
    call, calls = flaky([exc, exc])
    assert await retrying(call, first_delay=0.001) == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.UndefinedTableError("relation does not exist"),
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.exceptions.InsufficientPrivilegeError("permission denied"),
])  # fmt: skip
async def test_permanent_errors_fail_at_once_and_name_the_side(exc):
    assert not transient(exc)
    call, calls = flaky([exc])
    with pytest.raises(ReadError, match="reading the target failed") as info:
        await read("target", call)
    assert len(calls) == 1 and info.value.side == "target"


async def test_retries_give_up_after_the_last_attempt():
    errors = [asyncpg.exceptions.SerializationError("conflict") for _ in range(10)]
    call, calls = flaky(errors)
    with pytest.raises(asyncpg.exceptions.SerializationError):
        await retrying(call, attempts=3, first_delay=0.001)
    assert len(calls) == 3


def test_a_query_on_a_connection_the_server_just_terminated_is_a_lost_connection():
    """asyncpg raises InternalClientError (not InterfaceError) when a query is sent on a
    connection whose termination it has not processed yet; seen in ``lag --watch`` after
    pg_terminate_backend. It must be caught as a connection failure, never a crash."""
    from replverify.db.connect import DB_ERRORS, trouble
    from replverify.errors import ConnectError

    exc = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert isinstance(exc, DB_ERRORS)
    assert isinstance(trouble(exc), ConnectError)


async def test_a_real_recovery_conflict_on_a_standby_is_retried(clusters) -> None:
    """A standby that must remove row versions a running query still needs cancels it
    (40001, "conflict with recovery"); the read is run again on a fresh snapshot."""
    import asyncio

    from replverify.testing.servers import execute, wait_for_replay

    pair = await asyncio.to_thread(clusters.fresh_pair)
    await execute(
        pair.standby_dsn,
        "ALTER SYSTEM SET max_standby_streaming_delay = 0",  # cancel at once
        "ALTER SYSTEM SET hot_standby_feedback = off",  # the primary may remove rows
        "SELECT pg_reload_conf()",
    )
    await execute(
        pair.primary_dsn,
        "CREATE TABLE c (id int PRIMARY KEY, v text)",
        "INSERT INTO c SELECT g, 'x' FROM generate_series(1, 1000) g",
    )
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    pool = await asyncpg.create_pool(pair.standby_dsn, min_size=1, max_size=2)
    attempts: list[BaseException | None] = []
    reading = asyncio.Event()

    async def read() -> int:
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            n = int(await conn.fetchval("SELECT count(*) FROM c"))
            if not attempts:
                reading.set()
                try:
                    await conn.fetchval("SELECT pg_sleep(20)")  # cancelled by the conflict
                except asyncpg.PostgresError as e:
                    attempts.append(e)
                    raise
            attempts.append(None)
            return n

    try:
        task = asyncio.ensure_future(retrying(read))
        await reading.wait()
        await execute(pair.primary_dsn, "DELETE FROM c WHERE id <= 500", "VACUUM c")
        assert await asyncio.wait_for(task, 30) == 500
    finally:
        await pool.close()
    conflict, retried = attempts
    assert isinstance(conflict, asyncpg.PostgresError) and conflict.sqlstate == "40001"
    assert "conflict with recovery" in str(conflict) and transient(conflict)
    assert retried is None
