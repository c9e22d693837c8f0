"""Replication lag, the SQL: what one sample reads from the source and the target, the
facts about how they replicate, and the heartbeat write (the one write replverify makes)."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import asyncpg

from replverify.db.connect import DB_ERRORS, Endpoint
from replverify.errors import ReplverifyError, UsageError
from replverify.lag.estimate import (
    HeartbeatWrite,
    LsnHistory,
    SourceReading,
    TargetReading,
    lag_from_slot,
)
from replverify.lag.model import (
    LagSample,
    ReplicationSlot,
    ReplicationState,
    SourceFacts,
    Subscription,
    TargetFacts,
    WalReceiver,
    WalSender,
)
from replverify.lag.relation import classify
from replverify.values.lsn import parse_lsn

HEARTBEAT_TABLE = "replverify.heartbeat"


HEARTBEAT_DDL = """\
CREATE SCHEMA IF NOT EXISTS replverify;
CREATE TABLE IF NOT EXISTS replverify.heartbeat (
    id  int PRIMARY KEY,
    at  timestamptz NOT NULL,
    lsn pg_lsn
);"""


#: One poll of the source: its clock and WAL position (a standby's: its replay position).
SOURCE_SQL = """\
SELECT clock_timestamp() AS at,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                            ELSE pg_current_wal_lsn() END, '0/0') AS lsn"""


_TARGET_COLUMNS = """\
SELECT clock_timestamp() AS at,
       pg_is_in_recovery() AS in_recovery,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0') AS replay_lsn,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0') AS receive_lsn,
       pg_last_xact_replay_timestamp() AS replay_timestamp,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused"""


#: One sample of the target.
TARGET_SQL = _TARGET_COLUMNS


#: One sample of the target, with the heartbeat row it shows.
TARGET_HEARTBEAT_SQL = f"""{_TARGET_COLUMNS},
       hb.at AS heartbeat_at,
       pg_wal_lsn_diff(hb.lsn, '0/0') AS heartbeat_lsn
FROM (VALUES (1)) AS one (id)
LEFT JOIN replverify.heartbeat AS hb ON hb.id = one.id"""


HEARTBEAT_WRITE_SQL = """\
INSERT INTO replverify.heartbeat AS hb (id, at, lsn)
VALUES (1, clock_timestamp(), pg_current_wal_lsn())
ON CONFLICT (id) DO UPDATE SET at = excluded.at, lsn = excluded.lsn
RETURNING hb.at, pg_wal_lsn_diff(hb.lsn, '0/0') AS lsn"""


_SYSTEM_ID_SQL = "SELECT system_identifier::text FROM pg_control_system()"


_SOURCE_META_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       current_database() AS database,
       current_setting('port')::int AS port,
       host(inet_server_addr()) AS addr"""


_SENDERS_SQL = """\
SELECT pid, application_name, host(client_addr) AS client_addr, client_port,
       state, sync_state,
       pg_wal_lsn_diff(sent_lsn, '0/0') AS sent_lsn,
       pg_wal_lsn_diff(write_lsn, '0/0') AS write_lsn,
       pg_wal_lsn_diff(flush_lsn, '0/0') AS flush_lsn,
       pg_wal_lsn_diff(replay_lsn, '0/0') AS replay_lsn,
       extract(epoch FROM write_lag)::float8 AS write_lag,
       extract(epoch FROM flush_lag)::float8 AS flush_lag,
       extract(epoch FROM replay_lag)::float8 AS replay_lag
FROM pg_stat_replication
ORDER BY pid"""


_SLOTS_SQL = """\
SELECT slot_name, slot_type, active, active_pid,
       pg_wal_lsn_diff(restart_lsn, '0/0') AS restart_lsn,
       to_jsonb(s) ->> 'wal_status' AS wal_status,
       pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') AS confirmed_flush_lsn,
       database
FROM pg_replication_slots AS s
ORDER BY slot_name"""


# to_jsonb: the LSN columns were renamed in PostgreSQL 13, sender_* appeared in 11.
_RECEIVER_SQL = """\
SELECT w.status, w.slot_name, w.last_msg_receipt_time,
       j ->> 'sender_host' AS sender_host,
       (j ->> 'sender_port')::int AS sender_port,
       j ->> 'written_lsn' AS written_lsn,
       coalesce(j ->> 'flushed_lsn', j ->> 'received_lsn') AS flushed_lsn,
       w.latest_end_lsn::text AS latest_end_lsn
FROM pg_stat_wal_receiver AS w, LATERAL to_jsonb(w) AS j"""


_TARGET_META_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('cluster_name') AS cluster_name,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused"""


def _int(value: Decimal | int | None) -> int | None:
    return None if value is None else int(value)


def _lsn_text(value: str | None) -> int | None:
    return None if value is None else parse_lsn(value)


async def read_source(conn: asyncpg.Connection) -> SourceReading:
    row = await conn.fetchrow(SOURCE_SQL)
    return SourceReading(at=row["at"], lsn=int(row["lsn"]))


async def read_target(conn: asyncpg.Connection, *, heartbeat: bool = False) -> TargetReading:
    row = await conn.fetchrow(TARGET_HEARTBEAT_SQL if heartbeat else TARGET_SQL)
    return TargetReading(
        at=row["at"],
        in_recovery=row["in_recovery"],
        replay_lsn=_int(row["replay_lsn"]),
        receive_lsn=_int(row["receive_lsn"]),
        replay_timestamp=row["replay_timestamp"],
        replay_paused=row["replay_paused"],
        heartbeat_at=row["heartbeat_at"] if heartbeat else None,
        heartbeat_lsn=_int(row["heartbeat_lsn"]) if heartbeat else None,
    )


async def _system_id(conn: asyncpg.Connection) -> str | None:
    try:
        value: str | None = await conn.fetchval(_SYSTEM_ID_SQL)
    except asyncpg.InsufficientPrivilegeError:
        return None
    return value


async def source_facts(conn: asyncpg.Connection, endpoint: Endpoint | None = None) -> SourceFacts:
    meta = await conn.fetchrow(_SOURCE_META_SQL)
    senders = tuple(
        WalSender(
            pid=r["pid"],
            application_name=r["application_name"] or "",
            client_addr=r["client_addr"],
            client_port=r["client_port"],
            state=r["state"],
            sync_state=r["sync_state"],
            sent_lsn=_int(r["sent_lsn"]),
            write_lsn=_int(r["write_lsn"]),
            flush_lsn=_int(r["flush_lsn"]),
            replay_lsn=_int(r["replay_lsn"]),
            write_lag=r["write_lag"],
            flush_lag=r["flush_lag"],
            replay_lag=r["replay_lag"],
        )
        for r in await conn.fetch(_SENDERS_SQL)
    )
    slots = tuple(
        ReplicationSlot(
            name=r["slot_name"],
            type=r["slot_type"],
            active=r["active"],
            active_pid=r["active_pid"],
            restart_lsn=_int(r["restart_lsn"]),
            wal_status=r["wal_status"],
            confirmed_flush_lsn=_int(r["confirmed_flush_lsn"]),
            database=r["database"],
        )
        for r in await conn.fetch(_SLOTS_SQL)
    )
    addresses = {a for a in (meta["addr"],) if a}
    if endpoint is not None:
        addresses.add(endpoint.address.rsplit(":", 1)[0].strip("[]"))
    if addresses & {"127.0.0.1", "::1", "localhost"}:
        addresses |= {"127.0.0.1", "::1", "localhost"}
    return SourceFacts(
        in_recovery=meta["in_recovery"],
        system_id=await _system_id(conn),
        port=meta["port"],
        addresses=frozenset(addresses),
        senders=senders,
        slots=slots,
        database=meta["database"],
    )


async def target_facts(conn: asyncpg.Connection) -> TargetFacts:
    meta = await conn.fetchrow(_TARGET_META_SQL)
    row = await conn.fetchrow(_RECEIVER_SQL)
    receiver = None
    if row is not None:
        receiver = WalReceiver(
            status=row["status"],
            sender_host=row["sender_host"],
            sender_port=row["sender_port"],
            slot_name=row["slot_name"],
            written_lsn=_lsn_text(row["written_lsn"]),
            flushed_lsn=_lsn_text(row["flushed_lsn"]),
            latest_end_lsn=_lsn_text(row["latest_end_lsn"]),
            last_msg_receipt_time=row["last_msg_receipt_time"],
        )
    return TargetFacts(
        in_recovery=meta["in_recovery"],
        system_id=await _system_id(conn),
        cluster_name=meta["cluster_name"] or "",
        receiver=receiver,
        replay_paused=meta["replay_paused"],
        subscriptions=() if meta["in_recovery"] else await _subscriptions(conn),
    )


async def replication_state(
    source: asyncpg.Connection, target: asyncpg.Connection, endpoint: Endpoint | None = None
) -> ReplicationState:
    """Read both sides' replication views and :func:`classify` the pair."""
    return classify(await source_facts(source, endpoint), await target_facts(target))


async def _read_write(
    conn: asyncpg.Connection, sql: str, *, fetch: bool = False
) -> asyncpg.Record | None:
    """Run ``sql`` in an explicit read-write transaction: replverify's connections are
    ``default_transaction_read_only``, and this is the one place that writes."""
    await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
    try:
        row: asyncpg.Record | None = None
        if fetch:
            row = await conn.fetchrow(sql)
        else:
            await conn.execute(sql)
        await conn.execute("COMMIT")
        return row
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(*DB_ERRORS):
                await conn.execute("ROLLBACK")
        raise


def _heartbeat_refused(e: asyncpg.PostgresError) -> UsageError:
    hint = (
        "the source must be a writable primary and the user may create the schema "
        f"replverify and write {HEARTBEAT_TABLE} (or create it beforehand:\n{HEARTBEAT_DDL})"
    )
    return UsageError(f"--heartbeat cannot write {HEARTBEAT_TABLE} on the source: {e}", hint=hint)


async def ensure_heartbeat_table(conn: asyncpg.Connection) -> None:
    """Create ``replverify.heartbeat`` on the source if missing (see :data:`HEARTBEAT_DDL`).

    ``conn`` may be read-only by default: the DDL runs in ``BEGIN ... READ WRITE``.
    """
    if await conn.fetchval("SELECT to_regclass('replverify.heartbeat') IS NOT NULL"):
        return
    try:
        await _read_write(conn, HEARTBEAT_DDL)
    except asyncpg.UniqueViolationError:
        pass  # created concurrently by another run
    except (asyncpg.ReadOnlySQLTransactionError, asyncpg.InsufficientPrivilegeError) as e:
        raise _heartbeat_refused(e) from e


async def write_heartbeat(conn: asyncpg.Connection) -> HeartbeatWrite:
    """Upsert heartbeat row 1 with the source's clock and WAL position; the one write.

    Runs in an explicit ``BEGIN ... READ WRITE`` transaction, so ``conn`` may be one of
    replverify's read-only-by-default connections (use one that does nothing else).
    """
    try:
        row = await _read_write(conn, HEARTBEAT_WRITE_SQL, fetch=True)
    except (asyncpg.ReadOnlySQLTransactionError, asyncpg.InsufficientPrivilegeError) as e:
        raise _heartbeat_refused(e) from e
    assert row is not None
    return HeartbeatWrite(at=row["at"], lsn=int(row["lsn"]))


SOURCE_SLOT_SQL = """\
SELECT clock_timestamp() AS at,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS lsn,
       (SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')
        FROM pg_replication_slots WHERE slot_name = $1) AS confirmed,
       EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1) AS slot_exists"""


_SUBSCRIPTIONS_SQL = """\
SELECT s.subname, s.subenabled, s.subslotname,
       w.pid AS worker_pid, pg_wal_lsn_diff(w.received_lsn, '0/0') AS received_lsn
FROM pg_subscription AS s
LEFT JOIN pg_stat_subscription AS w ON w.subid = s.oid AND w.relid IS NULL
  AND w.pid IS NOT NULL AND to_jsonb(w) ->> 'leader_pid' IS NULL
WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.subname"""


_CONNINFO_SQL = "SELECT subname, subconninfo FROM pg_subscription"


def conninfo_host_port(conninfo: str | None) -> tuple[str | None, int | None]:
    """Host and port of a libpq conninfo (URL or key=value) as the subscriber reads it:
    no port means 5432; (None, None) when it names several or cannot be parsed."""
    if not conninfo:
        return None, None
    try:
        hosts = Endpoint.parse(conninfo).hosts
    except ReplverifyError:
        return None, None
    if len(hosts) != 1:
        return None, None
    host, port = hosts[0]
    return host, port or 5432


async def _subscriptions(conn: asyncpg.Connection) -> tuple[Subscription, ...]:
    rows = await conn.fetch(_SUBSCRIPTIONS_SQL)
    if not rows:
        return ()
    where: dict[str, tuple[str | None, int | None]] = {}
    try:
        for r in await conn.fetch(_CONNINFO_SQL):
            where[r["subname"]] = conninfo_host_port(r["subconninfo"])
    except asyncpg.InsufficientPrivilegeError:
        pass  # not a superuser: subscriptions are matched by slot and database alone
    return tuple(
        Subscription(
            name=r["subname"],
            enabled=r["subenabled"],
            slot_name=r["subslotname"],
            worker_pid=r["worker_pid"],
            received_lsn=_int(r["received_lsn"]),
            host=where.get(r["subname"], (None, None))[0],
            port=where.get(r["subname"], (None, None))[1],
        )
        for r in rows
    )


async def slot_sample(
    source: asyncpg.Connection, slot: str, history: LsnHistory | None = None
) -> LagSample:
    """One lag sample of a logical subscriber: the source's position against what its
    slot ``slot`` has confirmed, read together on the source."""
    row = await source.fetchrow(SOURCE_SLOT_SQL, slot)
    if not row["slot_exists"]:
        raise UsageError(
            f"the subscriber's replication slot {slot!r} no longer exists on the source",
            hint="the subscription was dropped or re-created; run lag again",
        )
    reading = SourceReading(at=row["at"], lsn=int(row["lsn"]))
    history = history if history is not None else LsnHistory()
    history.add(reading.at.timestamp(), reading.lsn)
    return lag_from_slot(reading, _int(row["confirmed"]), history)
