"""Shared fixtures: one set of real PostgreSQL clusters per test session.

``clusters`` starts a primary, its streaming hot standby and an independent ``other``
cluster (see :mod:`replverify.testing`), or adopts the servers named by
``REPLVERIFY_TEST_PRIMARY_DSN`` / ``REPLVERIFY_TEST_STANDBY_DSN`` /
``REPLVERIFY_TEST_OTHER_DSN``.  Without PostgreSQL the session fails; it never skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from replverify.errors import ClusterError
from replverify.testing import LocalClusters


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
