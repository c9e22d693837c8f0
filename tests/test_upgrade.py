"""The upgrade scenario for real: PostgreSQL 18 subscribed to PostgreSQL 15 through
logical replication (CREATE PUBLICATION / CREATE SUBSCRIPTION), the 18 server with
non-default TimeZone and DateStyle. ``diff``, ``lag`` and ``health`` on that pair."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.api import diff
from replverify.cli.main import main
from replverify.lag.probe import HEARTBEAT_DDL
from replverify.lag.sampler import measure_lag
from replverify.ops.health import health
from replverify.reports.lag import lag_to_dict, lag_to_text
from replverify.testing.cluster import Cluster
from replverify.testing.servers import (
    execute,
    fetchval,
    subscribe,
    unsubscribe,
    wait_for_subscription,
)
from replverify.types import Changed, Extra, Missing

#: User-defined types get other OIDs on each server; both sides need them (no DDL is
#: replicated). hstore and citext come with Debian's postgresql-15 and with the wheel.
SCHEMA = """
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE place AS (street text, zip char(5), m mood);
CREATE DOMAIN pos AS int CHECK (VALUE > 0);
CREATE TABLE many (
    id bigint PRIMARY KEY,
    c_int2 smallint, c_int4 int, c_int8 bigint, c_oid oid,
    c_numeric numeric, c_numeric_s numeric(12,2), c_real real, c_float8 float8,
    c_money money, c_bool bool,
    c_text text, c_varchar varchar(20), c_char char(6), c_citext citext, c_bytea bytea,
    c_date date, c_time time, c_timetz timetz, c_timestamp timestamp,
    c_timestamptz timestamptz, c_interval interval,
    c_uuid uuid, c_json json, c_jsonb jsonb, c_hstore hstore,
    c_inet inet, c_cidr cidr, c_macaddr macaddr,
    c_bit bit(8), c_varbit varbit(12), c_point point, c_box box, c_tsvector tsvector,
    c_int4range int4range, c_tstzrange tstzrange, c_int4multirange int4multirange,
    c_int_array int[], c_text_array text[],
    c_mood mood, c_moods mood[], c_place place, c_places place[], c_pos pos
);
CREATE TABLE plain (id int PRIMARY KEY, v text);
"""

LOAD = """
INSERT INTO many
SELECT i,
  (i % 30000)::int2, i * 7 - 5000, i::bigint * 1000003, (i * 13)::oid,
  CASE i % 5 WHEN 0 THEN 1.10 WHEN 1 THEN -0.0 WHEN 2 THEN 'NaN' ELSE i / 7.0 END,
  round(i * 1.37, 2), (i / 3.0)::real, CASE WHEN i % 9 = 0 THEN '-0'::float8 ELSE i / 9.0 END,
  (i * 1.25)::numeric::money, i % 2 = 0,
  'Grüße ' || i, 'vc' || i, 'ch' || (i % 10), CASE WHEN i % 2 = 0 THEN 'MiXeD' ELSE 'x' END,
  decode(md5(i::text), 'hex'),
  date '2000-02-29' + i, time '00:00' + i * interval '61.000001 s', '12:00+05:30'::timetz,
  timestamp '2024-02-29 12:34:56.789' + i * interval '1 hour',
  timestamptz '2024-03-31 01:30:00.5+02' + i * interval '37 minutes',
  CASE i % 3 WHEN 0 THEN interval '1 day' WHEN 1 THEN interval '24 hours'
             ELSE interval '1 mon 2 days 03:04:05.678' END,
  md5(i::text)::uuid, ('{"b": 1, "a": ' || i || '}')::json,
  jsonb_build_object('k', i, 'v', i / 4.0, 'a', jsonb_build_array(1.0, 'ü', NULL)),
  hstore(ARRAY['a', 'b'], ARRAY[i::text, NULL]),
  ('10.' || (i % 256) || '.0.1/' || (16 + i % 17))::inet,
  ('192.168.' || (i % 256) || '.0/24')::cidr,
  ('08:00:2b:01:02:' || lpad(to_hex(i % 256), 2, '0'))::macaddr,
  (i % 256)::bit(8), B'101101'::varbit, point(i / 3.0, -i), box(point(0, 0), point(i, 1)),
  to_tsvector('simple', 'the quick brown fox ' || i),
  int4range(i, i + 10), tstzrange(timestamptz '2026-01-01 00:00+00' + i * interval '1 h', NULL),
  int4multirange(int4range(1, 3), int4range(i + 5, i + 9)),
  ARRAY[i, NULL, -i], ARRAY['a', NULL, 'ü,"x"', 't' || i],
  (ARRAY['sad', 'ok', 'happy']::mood[])[1 + i % 3], ARRAY['happy', 'sad']::mood[],
  ROW('Main St ' || i, lpad((i % 99999)::text, 5, '0'), 'ok')::place,
  ARRAY[ROW('a', '00001', 'sad')::place, NULL], (1 + i % 1000)::pos
FROM generate_series(1, $1::int) AS i
"""
LOAD_PLAIN = "INSERT INTO plain SELECT i, 'v' || i FROM generate_series(1, 50) AS i"


@dataclass
class Upgrade:
    """A database on PostgreSQL 15 replicated to one on PostgreSQL 18 (subscription
    ``name``, slot ``name`` on the publisher)."""

    source: str
    target: str
    name: str
    publisher: Cluster
    subscriber: Cluster


MakeUpgrade = Callable[..., Awaitable[Upgrade]]


@pytest.fixture
async def upgrade(publisher15: Cluster, pg18: Cluster) -> AsyncIterator[MakeUpgrade]:
    """``await upgrade(rows=...)``: a new database with the ``many`` and ``plain`` tables
    on both servers, loaded on 15 and copied to 18 by a new subscription."""
    made: list[Upgrade] = []

    async def make(rows: int = 300, tables: tuple[str, ...] = ()) -> Upgrade:
        name = f"up_{uuid.uuid4().hex[:10]}"
        dsns = []
        for cluster in (publisher15, pg18):
            await execute(cluster.dsn(), f'CREATE DATABASE "{name}"')
            dsn = cluster.dsn(name)
            await execute(dsn, SCHEMA)
            dsns.append(dsn)
        conn = await asyncpg.connect(dsns[0])
        try:
            await conn.execute("SET TimeZone = 'UTC'")
            await conn.execute(LOAD, rows)
            await conn.execute(LOAD_PLAIN)
        finally:
            await conn.close()
        up = Upgrade(dsns[0], dsns[1], name, publisher15, pg18)
        made.append(up)
        await subscribe(up.source, up.target, name, tables=tables or None)
        return up

    yield make
    for up in made:
        await unsubscribe(up.target, up.name)


async def test_the_pair_is_15_to_18_with_other_text_settings(upgrade: MakeUpgrade) -> None:
    up = await upgrade(rows=20)
    assert str(await fetchval(up.source, "SHOW server_version_num")).startswith("15")
    assert str(await fetchval(up.target, "SHOW server_version_num")).startswith("18")
    assert await fetchval(up.target, "SHOW TimeZone") == "America/Sao_Paulo"
    assert await fetchval(up.target, "SHOW DateStyle") == "SQL, DMY"
    assert await fetchval(up.target, "SELECT count(*) FROM many") == 20


async def test_diff_of_identical_replicated_data_is_consistent(upgrade: MakeUpgrade) -> None:
    up = await upgrade(rows=3000)
    report = await diff(up.source, up.target)
    assert report.status == "consistent", [
        (t.table.qualified, t.differences[:3], t.error) for t in report.tables
    ]
    rows = {t.table.qualified: (t.rows_source, t.rows_target) for t in report.tables}
    assert rows == {"public.many": (3000, 3000), "public.plain": (50, 50)}


async def test_diff_names_the_differences_planted_on_the_subscriber(
    upgrade: MakeUpgrade,
) -> None:
    up = await upgrade(rows=3000)
    # A subscriber takes local writes; rows the publisher never touches again stay so.
    await execute(
        up.target,
        "UPDATE many SET c_numeric_s = c_numeric_s + 0.01 WHERE id = 7",
        "UPDATE many SET c_timestamptz = c_timestamptz + interval '1 microsecond' WHERE id = 111",
        "UPDATE many SET c_moods = ARRAY['ok']::mood[] WHERE id = 222",
        "UPDATE many SET c_place = ROW('Elm', '00002', 'happy')::place WHERE id = 333",
        "UPDATE many SET c_jsonb = c_jsonb || '{\"k\": 0}', c_inet = '10.9.9.9' WHERE id = 444",
        "UPDATE many SET c_hstore = c_hstore || hstore('c', '1') WHERE id = 555",
        "DELETE FROM many WHERE id = 1500",
        "INSERT INTO many (id, c_text) VALUES (5000, 'only on 18')",
        "UPDATE plain SET v = 'V1' WHERE id = 1",
    )
    report = await diff(up.source, up.target)
    assert report.status == "different"
    found = {
        t.table.qualified: {(d.kind, d.key, getattr(d, "columns", ())) for d in t.differences}
        for t in report.tables
    }
    assert found == {
        "public.many": {
            ("changed", (7,), ("c_numeric_s",)),
            ("changed", (111,), ("c_timestamptz",)),
            ("changed", (222,), ("c_moods",)),
            ("changed", (333,), ("c_place",)),
            ("changed", (444,), ("c_jsonb", "c_inet")),
            ("changed", (555,), ("c_hstore",)),
            ("missing", (1500,), ()),
            ("extra", (5000,), ()),
        },
        "public.plain": {("changed", (1,), ("v",))},
    }
    assert all(
        isinstance(d, Changed | Missing | Extra) for t in report.tables for d in t.differences
    )


# --------------------------------------------------------------------------- lag


async def test_lag_of_a_caught_up_subscriber_is_about_zero_from_its_slot(
    upgrade: MakeUpgrade,
) -> None:
    up = await upgrade(rows=20)
    await execute(up.source, "INSERT INTO plain VALUES (1000, 'new')")
    await wait_for_subscription(up.source, up.name)
    report = await measure_lag(up.source, up.target, samples=3, interval=0.3, rpo=5)
    assert report.replication.relation == "subscriber"
    assert up.name in report.replication.description
    assert {s.method for s in report.samples} <= {"caught-up", "slot-lsn-history"}
    assert report.max_lag_seconds is not None and report.max_lag_seconds < 3
    assert report.within_rpo is True
    doc = lag_to_dict(report)
    assert doc["samples"][0]["method"] in ("caught-up", "slot-lsn-history")
    assert doc["replication"]["slot"]["name"] == up.name
    assert doc["replication"]["subscription"]["enabled"] is True
    text = lag_to_text(report)
    assert f"subscription {up.name} (enabled, worker pid" in text
    assert "confirmed_flush_lsn" in text  # the note says how it was measured

    args = ["lag", up.source, up.target, "--samples", "2", "--interval", "0.2", "--rpo", "10"]
    result = await asyncio.to_thread(CliRunner().invoke, main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["replication"]["relation"] == "subscriber"


async def test_lag_grows_while_the_subscription_is_disabled(upgrade: MakeUpgrade) -> None:
    up = await upgrade(rows=20)
    await execute(up.target, f'ALTER SUBSCRIPTION "{up.name}" DISABLE')
    stop = asyncio.Event()

    async def writes() -> None:
        n = 2000
        while not stop.is_set():
            n += 1
            await execute(up.source, f"INSERT INTO plain VALUES ({n}, 'w')")
            await asyncio.sleep(0.05)

    writer = asyncio.create_task(writes())
    try:
        await asyncio.sleep(0.5)
        report = await measure_lag(up.source, up.target, samples=4, interval=0.5, rpo=1)
    finally:
        stop.set()
        await writer
    samples = report.samples
    assert all(s.method in ("slot-lsn-history", "slot-history-bound") for s in samples)
    assert samples[-1].lag_bytes > samples[0].lag_bytes > 0
    assert samples[-1].lag_seconds > samples[0].lag_seconds
    assert samples[-1].lag_seconds >= 1.5
    assert report.within_rpo is False
    assert "disabled" in report.replication.description

    await execute(up.target, f'ALTER SUBSCRIPTION "{up.name}" ENABLE')
    await wait_for_subscription(up.source, up.name)
    again = await measure_lag(up.source, up.target, samples=2, interval=0.2)
    assert again.max_lag_seconds is not None and again.max_lag_seconds < 3


async def test_lag_with_heartbeat_still_works_for_a_subscriber(upgrade: MakeUpgrade) -> None:
    up = await upgrade(rows=20)

    await execute(up.target, HEARTBEAT_DDL)
    await execute(up.source, HEARTBEAT_DDL)  # FOR ALL TABLES: published at once
    await execute(up.target, f'ALTER SUBSCRIPTION "{up.name}" REFRESH PUBLICATION')
    report = await measure_lag(up.source, up.target, samples=3, interval=0.5, heartbeat=True)
    assert report.samples[-1].method == "heartbeat"
    assert report.max_lag_seconds is not None and report.max_lag_seconds < 3


# --------------------------------------------------------------------------- health


async def test_health_knows_a_subscriber_from_a_standby(upgrade: MakeUpgrade) -> None:
    up = await upgrade(rows=20)
    await wait_for_subscription(up.source, up.name)
    report = await health(up.source, up.target, rpo=30)
    checks = {f.check: f for f in report.findings}
    assert report.status == "ok", [(f.check, f.level, f.message) for f in report.findings]
    assert "logical" in checks["recovery"].message
    assert "subscription" in checks and "enabled" in checks["subscription"].message
    assert "worker" in checks["subscription"].message
    assert checks["slot"].level == "ok" and up.name in checks["slot"].message
    assert checks["lag"].level == "ok"
    assert "timeline" not in checks  # timelines of two clusters mean nothing together
    assert "wal_receiver" not in checks and "replay" not in checks
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["health", up.source, up.target, "--rpo", "30"]
    )
    assert result.exit_code == 0, result.output


async def test_health_of_a_disabled_subscription_is_a_problem(upgrade: MakeUpgrade) -> None:
    up = await upgrade(rows=20)
    await execute(up.target, f'ALTER SUBSCRIPTION "{up.name}" DISABLE')
    report = await health(up.source, up.target)
    levels = {f.check: f.level for f in report.findings}
    assert report.status == "problem"
    assert levels["subscription"] == "fail"
    assert levels["slot"] == "warn"  # inactive: it holds WAL on the publisher
    result = await asyncio.to_thread(CliRunner().invoke, main, ["health", up.source, up.target])
    assert result.exit_code == 1, result.output
    assert "disabled" in result.output


async def test_gate_refuses_a_subscriber_with_the_reason(upgrade: MakeUpgrade) -> None:
    up = await upgrade(rows=20)
    args = ["gate", up.source, up.target, "--timeout", "5"]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 2, result.output
    assert "logical replication subscriber" in result.output
