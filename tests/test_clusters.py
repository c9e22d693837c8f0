"""The local clusters of :mod:`replverify.testing.clusters` really replicate and fail over."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from replverify.errors import ClusterError
from replverify.testing.clusters import (
    ENV_OTHER_DSN,
    ENV_PG_BINDIR,
    ENV_PRIMARY_DSN,
    ENV_STANDBY_DSN,
    LocalClusters,
)
from replverify.testing.postgres import find_bindir
from replverify.testing.servers import (
    cut_replication,
    drop_slot,
    fetchval,
    pause_replay,
    promote,
    restore_replication,
    resume_replay,
    wait_for_replay,
)


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def processes_matching(pattern: str) -> str:
    """``pgrep -af pattern`` output (empty when nothing matches)."""
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, check=False)
    return out.stdout.strip()


async def test_rows_written_on_primary_reach_standby(primary_dsn: str, standby_dsn: str) -> None:
    t = table_name()
    async with connect(primary_dsn) as conn:
        await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
        await conn.executemany(
            f"INSERT INTO {t} VALUES ($1, $2)", [(i, f"row {i}") for i in range(100)]
        )
    await wait_for_replay(primary_dsn, standby_dsn)
    async with connect(standby_dsn) as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {t}") == 100
        assert await conn.fetchval(f"SELECT v FROM {t} WHERE id = 42") == "row 42"


async def test_standby_is_in_recovery_and_primary_is_not(
    primary_dsn: str, standby_dsn: str
) -> None:
    assert await fetchval(standby_dsn, "SELECT pg_is_in_recovery()") is True
    assert await fetchval(primary_dsn, "SELECT pg_is_in_recovery()") is False
    # Streaming through the physical slot, not from an archive.
    assert await fetchval(standby_dsn, "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    assert await fetchval(
        primary_dsn,
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'replverify_standby'",
    )


async def test_other_has_different_server_settings(other_dsn: str, primary_dsn: str) -> None:
    async with connect(other_dsn) as conn:
        assert await conn.fetchval("SHOW TimeZone") == "America/New_York"
        assert await conn.fetchval("SHOW DateStyle") == "SQL, DMY"
        assert await conn.fetchval("SHOW IntervalStyle") == "postgres_verbose"
        assert await conn.fetchval("SHOW extra_float_digits") == "0"
        assert await conn.fetchval("SHOW bytea_output") == "escape"
        assert await conn.fetchval("SELECT '1 day'::interval::text") == "@ 1 day"
        # Independent of the primary: not a standby, its own system identifier.
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        other_id = await conn.fetchval("SELECT system_identifier FROM pg_control_system()")
    primary_id = await fetchval(primary_dsn, "SELECT system_identifier FROM pg_control_system()")
    assert other_id != primary_id
    assert await fetchval(primary_dsn, "SHOW IntervalStyle") == "postgres"


async def test_paused_replay_holds_rows_back_until_resumed(
    primary_dsn: str, standby_dsn: str
) -> None:
    t = table_name()
    async with connect(primary_dsn) as conn:
        await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
    await wait_for_replay(primary_dsn, standby_dsn)
    await pause_replay(standby_dsn)
    try:
        async with connect(primary_dsn) as conn:
            await conn.execute(f"INSERT INTO {t} VALUES (1)")
        with pytest.raises(ClusterError, match="timed out"):
            await wait_for_replay(primary_dsn, standby_dsn, timeout=0.5)
        assert await fetchval(standby_dsn, f"SELECT count(*) FROM {t}") == 0
    finally:
        await resume_replay(standby_dsn)
    await wait_for_replay(primary_dsn, standby_dsn)
    assert await fetchval(standby_dsn, f"SELECT count(*) FROM {t}") == 1


async def test_cut_and_restored_replication_catches_up(primary_dsn: str, standby_dsn: str) -> None:
    t = table_name()
    async with connect(primary_dsn) as conn:
        await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
    await wait_for_replay(primary_dsn, standby_dsn)
    conninfo = await cut_replication(standby_dsn)
    try:
        assert "host=127.0.0.1" in conninfo
        assert await fetchval(standby_dsn, "SHOW primary_conninfo") == ""
        async with connect(primary_dsn) as conn:
            await conn.execute(f"INSERT INTO {t} VALUES (1)")
        with pytest.raises(ClusterError, match="timed out"):
            await wait_for_replay(primary_dsn, standby_dsn, timeout=0.5)
    finally:
        await restore_replication(standby_dsn, conninfo)
    assert await fetchval(standby_dsn, "SHOW primary_conninfo") == conninfo
    await wait_for_replay(primary_dsn, standby_dsn)
    assert await fetchval(standby_dsn, f"SELECT count(*) FROM {t}") == 1


async def test_failover_after_cut_really_loses_the_write(clusters: LocalClusters) -> None:
    pair = await asyncio.to_thread(clusters.fresh_pair)
    try:
        p, s = pair.primary_dsn, pair.standby_dsn
        async with connect(p) as conn:
            await conn.execute("CREATE TABLE acct (id int PRIMARY KEY, v text)")
            await conn.execute("INSERT INTO acct VALUES (1, 'kept')")
        await wait_for_replay(p, s)
        await cut_replication(s)
        async with connect(p) as conn:
            await conn.execute("INSERT INTO acct VALUES (2, 'lost')")
        await promote(s)

        assert await fetchval(s, "SELECT pg_is_in_recovery()") is False
        async with connect(s) as conn:
            assert await conn.fetch("SELECT id, v FROM acct ORDER BY id") == [(1, "kept")]
            timeline = await conn.fetchval(
                "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
            )
            assert timeline == "00000002"
            await conn.execute("INSERT INTO acct VALUES (3, 'new primary')")  # writable now
        assert await fetchval(p, "SELECT v FROM acct WHERE id = 2") == "lost"

        # The old primary's slot for the promoted node would hold WAL forever.
        assert await drop_slot(p, pair.slot) is True
        assert await fetchval(p, "SELECT count(*) FROM pg_replication_slots") == 0
        assert await drop_slot(p, pair.slot) is False
    finally:
        await asyncio.to_thread(pair.close)
    assert not pair.primary.running
    assert not pair.standby.running
    assert processes_matching(str(pair.primary.datadir)) == ""
    assert processes_matching(pair.standby.cluster_name) == ""
    assert not pair.primary.datadir.exists()


def test_close_leaves_no_postgres_process_or_directory() -> None:
    with LocalClusters(use_env=False) as lc:
        assert lc.base_dir is not None
        base = lc.base_dir
        assert set(lc.timings) >= {"initdb", "total"}
        pair = lc.fresh_pair()
        assert lc.primary is not None
        assert lc.primary.running and pair.standby.running
        assert processes_matching(base.name) != ""
    assert processes_matching(base.name) == ""  # postmasters (-D <dir>) and their children
    assert not base.exists()
    assert not pair.standby.running
    lc.close()  # idempotent


def test_missing_binaries_fail_with_an_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_PG_BINDIR, str(tmp_path))
    with pytest.raises(ClusterError) as info:
        find_bindir()
    assert "initdb" in str(info.value)
    assert "apt-get install postgresql-15" in str(info.value)


def test_env_dsns_are_adopted_and_forbid_fresh_pairs(
    monkeypatch: pytest.MonkeyPatch, clusters: LocalClusters
) -> None:
    monkeypatch.setenv(ENV_PRIMARY_DSN, clusters.primary_dsn)
    monkeypatch.setenv(ENV_STANDBY_DSN, clusters.standby_dsn)
    monkeypatch.setenv(ENV_OTHER_DSN, clusters.other_dsn)
    with LocalClusters() as lc:
        assert lc.from_environment
        assert lc.base_dir is None
        assert (lc.primary_dsn, lc.standby_dsn, lc.other_dsn) == (
            clusters.primary_dsn,
            clusters.standby_dsn,
            clusters.other_dsn,
        )
        with pytest.raises(ClusterError, match="local"):
            lc.fresh_pair()
    assert LocalClusters.from_env().other_dsn == clusters.other_dsn

    monkeypatch.delenv(ENV_OTHER_DSN)
    with pytest.raises(ClusterError, match=ENV_OTHER_DSN):
        LocalClusters().start()


def test_process_exiting_without_close_leaves_nothing_behind(tmp_path: Path) -> None:
    script = (
        "from replverify.testing.clusters import LocalClusters\n"
        "lc = LocalClusters(use_env=False).start()\n"
        "print(lc.base_dir, flush=True)\n"
        "raise SystemExit(3)  # no close(): the atexit hook must clean up\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    base = Path(proc.stdout.strip())
    assert base.name.startswith("replverify-")
    assert processes_matching(base.name) == ""
    assert not base.exists()


def test_sigterm_stops_the_clusters_before_the_process_dies(tmp_path: Path) -> None:
    """A CI timeout or ``kill`` sends SIGTERM, which skips atexit: the clusters must still
    go, and the process must still die of the signal."""
    script = (
        "import time\n"
        "from replverify.testing.clusters import LocalClusters\n"
        "lc = LocalClusters(use_env=False).start_empty()\n"
        "lc.fresh_pair()\n"
        "print(lc.base_dir, flush=True)\n"
        "time.sleep(120)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as proc:
        try:
            assert proc.stdout is not None
            base = Path(proc.stdout.readline().strip())
            assert base.name.startswith("replverify-")
            assert processes_matching(base.name) != ""
            proc.terminate()
            proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM
    assert processes_matching(base.name) == ""
    assert not base.exists()
