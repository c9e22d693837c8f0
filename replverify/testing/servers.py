"""Async helpers for tests on running servers, each given a DSN or a
:class:`~replverify.testing.cluster.Cluster`: run statements, wait for replay, cut and
restore replication, promote, drop a slot, pause and resume replay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from replverify.errors import ClusterError

if TYPE_CHECKING:  # cluster imports these helpers
    from replverify.testing.cluster import Cluster

DEFAULT_SLOT = "replverify_standby"


Endpoint: TypeAlias = "str | Cluster"
"""An endpoint of the async helpers: a DSN string or a :class:`Cluster`."""


def _dsn(endpoint: Endpoint) -> str:
    return endpoint if isinstance(endpoint, str) else endpoint.dsn()


async def _connect(endpoint: Endpoint) -> asyncpg.Connection:
    return await asyncpg.connect(_dsn(endpoint), timeout=30)


async def execute(endpoint: Endpoint, *statements: str) -> None:
    """Run ``statements`` one after another on one connection (session TimeZone UTC, so
    timestamp literals without an offset mean the same on every cluster)."""
    conn = await asyncpg.connect(_dsn(endpoint), timeout=30, server_settings={"TimeZone": "UTC"})
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def fetchval(endpoint: Endpoint, sql: str, *args: object) -> Any:
    """The first value of ``sql``'s first row, on a connection of its own with the
    server's session defaults (``SHOW`` gives what the server is configured with)."""
    conn = await _connect(endpoint)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _poll(
    check: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_for_replay(primary: Endpoint, standby: Endpoint, timeout: float = 30) -> str:
    """Wait until ``standby`` has replayed the primary's current WAL position.

    The target is ``pg_current_wal_lsn()`` on the primary at call time; returns it.
    """
    conn = await _connect(primary)
    try:
        target: str = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    finally:
        await conn.close()
    conn = await _connect(standby)
    try:

        async def replayed() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    target,
                )
            )

        await _poll(replayed, timeout=timeout, what=f"standby replay to reach {target}")
    finally:
        await conn.close()
    return target


async def cut_replication(standby: Endpoint, timeout: float = 30) -> str:
    """Stop ``standby`` receiving WAL; return the saved ``primary_conninfo``.

    Sets ``primary_conninfo`` to '' (ALTER SYSTEM + reload) and waits until the WAL
    receiver is gone.  Pass the returned string to :func:`restore_replication`.
    """
    conn = await _connect(standby)
    try:
        conninfo: str = await conn.fetchval("SHOW primary_conninfo")
        await conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        await conn.execute("SELECT pg_reload_conf()")

        async def receiver_gone() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_wal_receiver") == 0)

        await _poll(receiver_gone, timeout=timeout, what="the WAL receiver to stop")
    finally:
        await conn.close()
    return conninfo


async def restore_replication(standby: Endpoint, conninfo: str, timeout: float = 30) -> None:
    """Give ``standby`` back its ``primary_conninfo`` and wait until it streams again."""
    conn = await _connect(standby)
    try:
        stmt: str = await conn.fetchval(
            "SELECT format('ALTER SYSTEM SET primary_conninfo = %L', $1::text)", conninfo
        )
        await conn.execute(stmt)
        await conn.execute("SELECT pg_reload_conf()")

        async def streaming() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'"
                )
            )

        await _poll(streaming, timeout=timeout, what="the WAL receiver to stream again")
    finally:
        await conn.close()


async def promote(standby: Endpoint, timeout: int = 60) -> None:
    """Promote ``standby`` with ``pg_promote(true, timeout)`` and wait for it."""
    conn = await _connect(standby)
    try:
        done = await conn.fetchval("SELECT pg_promote(true, $1)", timeout)
    finally:
        await conn.close()
    if not done:
        raise ClusterError(f"promotion did not complete within {timeout}s")


async def drop_slot(primary: Endpoint, slot: str = DEFAULT_SLOT, timeout: float = 30) -> bool:
    """Drop replication slot ``slot`` on ``primary`` if it exists; return whether it did.

    A slot still held by a WAL sender is released by terminating that sender.
    """
    conn = await _connect(primary)
    try:
        deadline = time.monotonic() + timeout
        while True:
            row = await conn.fetchrow(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot
            )
            if row is None:
                return False
            if row["active_pid"] is not None:
                await conn.execute("SELECT pg_terminate_backend($1)", row["active_pid"])
            else:
                try:
                    await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
                    return True
                except asyncpg.ObjectInUseError:
                    pass  # the sender came back between the two statements
                except asyncpg.UndefinedObjectError:
                    return False
            if time.monotonic() > deadline:
                raise ClusterError(f"replication slot {slot} stays active after {timeout}s")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def pause_replay(standby: Endpoint) -> None:
    """``pg_wal_replay_pause()``: the standby keeps receiving but stops applying WAL."""
    conn = await _connect(standby)
    try:
        await conn.execute("SELECT pg_wal_replay_pause()")
    finally:
        await conn.close()


async def resume_replay(standby: Endpoint) -> None:
    """``pg_wal_replay_resume()``."""
    conn = await _connect(standby)
    try:
        await conn.execute("SELECT pg_wal_replay_resume()")
    finally:
        await conn.close()


async def subscribe(
    publisher: Endpoint,
    subscriber: Endpoint,
    name: str,
    *,
    tables: Sequence[str] | None = None,
    timeout: float = 60,
) -> None:
    """Logical replication of ``publisher``'s database to ``subscriber``'s (an upgrade).

    Creates publication ``name`` (of ``tables``, default ``FOR ALL TABLES``) on the
    publisher, which needs ``wal_level=logical`` (:data:`LOGICAL_SETTINGS`), and
    subscription ``name`` (slot ``name``) on the subscriber, whose tables must exist
    already (logical replication copies no DDL); returns once the initial copy is done
    and the subscriber has caught up.
    """
    pub = await _connect(publisher)
    try:
        target = "FOR ALL TABLES"
        if tables:
            quoted = await pub.fetchval(
                "SELECT string_agg(format('%I.%I', t[1], t[2]), ', ') FROM "
                "(SELECT parse_ident(x) AS t FROM unnest($1::text[]) AS x) AS s",
                [t if "." in t else f"public.{t}" for t in tables],
            )
            target = f"FOR TABLE {quoted}"
        ident = await pub.fetchval("SELECT format('%I', $1::text)", name)
        await pub.execute(f"CREATE PUBLICATION {ident} {target}")
    finally:
        await pub.close()
    sub = await _connect(subscriber)
    try:
        stmt = await sub.fetchval(
            "SELECT format('CREATE SUBSCRIPTION %I CONNECTION %L PUBLICATION %I', "
            "$1::text, $2::text, $1::text)",
            name,
            _dsn(publisher),
        )
        await sub.execute(stmt)

        async def synced() -> bool:
            pending = await sub.fetchval(
                "SELECT count(*) FROM pg_subscription_rel AS r "
                "JOIN pg_subscription AS s ON s.oid = r.srsubid "
                "WHERE s.subname = $1 AND r.srsubstate <> 'r'",
                name,
            )
            return bool(pending == 0)

        await _poll(synced, timeout=timeout, what=f"the initial copy of subscription {name}")
    finally:
        await sub.close()
    await wait_for_subscription(publisher, name, timeout=timeout)


async def wait_for_subscription(publisher: Endpoint, slot: str, timeout: float = 30) -> str:
    """Wait until logical slot ``slot`` on ``publisher`` has confirmed (the subscriber
    has applied and flushed) the publisher's current WAL position; return it."""
    conn = await _connect(publisher)
    try:
        target: str = await conn.fetchval("SELECT pg_current_wal_lsn()::text")

        async def confirmed() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false) "
                    "FROM pg_replication_slots WHERE slot_name = $1",
                    slot,
                    target,
                )
            )

        await _poll(confirmed, timeout=timeout, what=f"slot {slot} to confirm {target}")
    finally:
        await conn.close()
    return target


async def unsubscribe(subscriber: Endpoint, name: str) -> None:
    """Drop subscription ``name`` (and its slot on the publisher) if it exists."""
    conn = await _connect(subscriber)
    try:
        stmt = await conn.fetchval(
            "SELECT format('DROP SUBSCRIPTION IF EXISTS %I', $1::text)", name
        )
        await conn.execute(stmt)
    finally:
        await conn.close()
