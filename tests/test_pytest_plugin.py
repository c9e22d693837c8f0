"""The pytest plugin, run the way users run it: inner pytest sessions (pytester).

Inner sessions that only need a shared pair adopt the outer session's clusters through
``REPLVERIFY_TEST_PRIMARY_DSN`` / ``REPLVERIFY_TEST_STANDBY_DSN``; one inner session
starts local clusters itself (a shared pair and a pair it fails over).
"""

from __future__ import annotations

import pytest

from replverify.testing.clusters import (
    ENV_OTHER_DSN,
    ENV_PG_BINDIR,
    ENV_PRIMARY_DSN,
    ENV_STANDBY_DSN,
    LocalClusters,
)
from replverify.testing.pytest_plugin import ClusterPair, with_database

pytest_plugins = ["pytester"]

# Inner sessions are configured here, not by the project's pyproject.toml.
INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose sessions see no replverify environment variables."""
    for name in (ENV_PRIMARY_DSN, ENV_STANDBY_DSN, ENV_OTHER_DSN, ENV_PG_BINDIR):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini(INI)
    return pytester


@pytest.fixture
def adopting(
    inner: pytest.Pytester, clusters: LocalClusters, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """A pytester whose sessions adopt this session's primary and standby."""
    monkeypatch.setenv(ENV_PRIMARY_DSN, clusters.primary_dsn)
    monkeypatch.setenv(ENV_STANDBY_DSN, clusters.standby_dsn)
    return inner


def test_with_database_swaps_the_database() -> None:
    assert with_database("postgresql://app:pw@db:5432/postgres?sslmode=require", "shop") == (
        "postgresql://app:pw@db:5432/shop?sslmode=require"
    )
    assert with_database("postgresql://db", "a b") == "postgresql://db/a%20b"
    assert with_database("host=db dbname=postgres port=5433", "it's") == (
        "host=db port=5433 dbname='it\\'s'"
    )
    assert with_database("host=db", "shop") == "host=db dbname='shop'"


def test_pair_repr_hides_passwords() -> None:
    # pytest shows fixture values in failure reports
    pair = ClusterPair("postgresql://app:s3cret@db:5432/shop", "host=db2 password=s3cret")
    assert "s3cret" not in repr(pair)
    assert "postgresql://app@db:5432/shop" in repr(pair)


def test_entry_point_fixtures_and_a_consistent_pair(adopting: pytest.Pytester) -> None:
    # a subprocess: the plugin comes from the pytest11 entry point, as for users
    adopting.makepyfile(
        """
        import pytest
        from replverify.errors import UsageError
        from replverify.testing.pytest_plugin import assert_consistent

        def test_standby_has_it(replverify_clusters):
            pair = replverify_clusters
            primary, standby = pair.database()
            pair.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", dsn=primary)
            pair.execute(
                "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, $1) g", 500,
                dsn=primary,
            )
            pair.wait_for_replay()
            report = assert_consistent(primary, standby, tables="t")
            assert report.status == "consistent"
            assert report.tables[0].rows_source == 500

        def test_shared_pair_refuses_failover(replverify_clusters):
            assert replverify_clusters.local is None  # adopted from the environment
            with pytest.raises(UsageError, match="use the replverify_pair fixture"):
                replverify_clusters.promote()
            with pytest.raises(UsageError, match="replverify_pair"):
                replverify_clusters.cut_replication()
        """
    )
    result = adopting.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


PLANTED = """
    import pytest
    from replverify.testing.pytest_plugin import assert_consistent, assert_consistent_async

    @pytest.fixture(scope="module")
    def dbs(replverify_clusters):
        pair = replverify_clusters
        a, _ = pair.database()
        b, _ = pair.database()
        for dsn in (a, b):
            pair.execute(
                "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(8,2))",
                dsn=dsn,
            )
            pair.execute(
                "INSERT INTO orders SELECT g, 'new', g FROM generate_series(1, 300) g", dsn=dsn
            )
            pair.execute("CREATE TABLE same (id int PRIMARY KEY)", dsn=dsn)
        pair.execute("DELETE FROM orders WHERE id = 42", dsn=b)
        pair.execute("UPDATE orders SET status = 'paid', amount = 0 WHERE id = 7", dsn=b)
        pair.execute("INSERT INTO orders VALUES (1001, 'x', 1)", dsn=b)
        return a, b

    def test_planted(dbs):
        assert_consistent(*dbs)

    def test_truncated(dbs):
        assert_consistent(*dbs, max_shown=1)

    def test_other_table_is_consistent(dbs):
        assert_consistent(*dbs, tables=["public.same"])

    @pytest.mark.asyncio
    async def test_async_variant(dbs):
        await assert_consistent_async(*dbs, tables=("orders",))

    @pytest.mark.asyncio
    async def test_sync_call_inside_a_running_loop(dbs):
        assert_consistent(*dbs, exclude="same")
"""


def test_planted_differences_fail_readably(adopting: pytest.Pytester) -> None:
    adopting.makepyfile(PLANTED)
    result = adopting.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines(
        [
            "*_ test_planted _*",
            "*assert_consistent(*dbs)",
            "E *AssertionError: source and target differ: 3 differences in 1 of 2 tables",
            "E *source  postgresql://postgres@127.0.0.1:*/replverify_*",
            "E *public.orders  [[]key (id)]  3 differences",
            "E *changed  id=7   columns: status, amount",
            "E *missing  id=42",
            "E *extra    id=1001",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_truncated _*",
            "E *changed  id=7   columns: status, amount",
            "E *… and 2 more in public.orders",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*_ test_async_variant _*", "*await assert_consistent_async(*", "E *AssertionError: *"]
    )
    # __tracebackhide__: the failures point at the tests, not into the plugin
    assert "pytest_plugin.py" not in result.stdout.str()


FAILOVER = """
    from replverify.journal.writer import JournalWriter
    from replverify.testing.pytest_plugin import assert_consistent, assert_no_data_loss

    def test_local_shared_pair(replverify_clusters):
        pair = replverify_clusters
        assert pair.local is not None  # started here: no DSNs in the environment
        primary, standby = pair.database("app")
        pair.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10) g", dsn=primary)
        pair.wait_for_replay()
        assert_consistent(primary, standby)

    def test_failover_loses_writes(replverify_pair, tmp_path):
        pair = replverify_pair
        pair.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
        journal = tmp_path / "writes.jsonl"
        with JournalWriter(journal) as j:
            pair.execute("INSERT INTO accounts VALUES (1, 'ann', 10)")
            j.write("insert", "public.accounts", {"id": 1}, {"owner": "ann", "balance": "10"},
                    txid="t-kept")
            pair.wait_for_replay()
            assert_no_data_loss(journal, pair.standby_dsn)  # nothing lost yet

            pair.cut_replication()  # a write while cut reaches the standby once restored
            pair.execute("INSERT INTO accounts VALUES (3, 'cy', 30)")
            j.write("insert", "public.accounts", {"id": 3}, {"owner": "cy", "balance": "30"},
                    txid="t-late")
            pair.restore_replication()
            pair.wait_for_replay()
            report = assert_no_data_loss(journal, pair.standby_dsn)
            assert report.counts["durable"] == 2

            pair.cut_replication()
            pair.execute("INSERT INTO accounts VALUES (2, 'bob', 20)")
            j.write("insert", "public.accounts", {"id": 2}, {"owner": "bob", "balance": "20"},
                    txid="t-lost")
            pair.execute("UPDATE accounts SET balance = 15 WHERE id = 1")
            j.write("update", "public.accounts", {"id": 1}, {"balance": "15.00"},
                    before={"balance": "10"}, txid="t-lost-update")
        pair.promote()
        assert pair.state == "promoted"
        assert_no_data_loss(journal, pair.standby_dsn, source=pair.primary_dsn)
"""


def test_real_failover_names_the_lost_writes(inner: pytest.Pytester) -> None:
    inner.makepyfile(FAILOVER)
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*assert_no_data_loss(journal, pair.standby_dsn, source=pair.primary_dsn)",
            "E *AssertionError: 2 journaled writes lost, 0 conflicting on the target",
            "E *journal  */writes.jsonl",
            "E *source   postgresql://postgres@127.0.0.1:*/postgres (old primary)",
            "E *lost      txid=t-lost seq=2  insert public.accounts id=2  (journal line 3, *",
            "E *the row is absent",
            "E *lost      txid=t-lost-update seq=3  update public.accounts id=1  (journal *",
            "E *4 writes: 2 lost, 0 conflicting, 0 in doubt, 1 durable, 1 superseded, *",
        ]
    )


LOUD = """
    def test_without_fixtures():
        pass

    def test_shared(replverify_clusters):
        pass

    def test_own_pair(replverify_pair):
        pass
"""


def test_without_postgresql_fixtures_fail_never_skip(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PG_BINDIR, "/nonexistent/bin")
    inner.makepyfile(LOUD)
    result = inner.runpytest("-p", "no:cacheprovider", "-rE")
    # lazy: the test that asks for nothing runs; the others error in setup
    result.assert_outcomes(passed=1, errors=2, skipped=0)
    result.stdout.fnmatch_lines(
        [
            "*replverify: cannot use local PostgreSQL clusters: initdb, pg_ctl not found in "
            "/nonexistent/bin (from $REPLVERIFY_PG_BINDIR)",
            "*Install the PostgreSQL server binaries*REPLVERIFY_PG_BINDIR*",
        ]
    )


def test_half_set_environment_is_an_error(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PRIMARY_DSN, "postgresql://db/postgres")
    inner.makepyfile(LOUD)
    result = inner.runpytest("-p", "no:cacheprovider", "-k", "shared")
    result.assert_outcomes(errors=1, deselected=2)
    result.stdout.fnmatch_lines(
        ["*replverify: cannot use the servers from the environment: *STANDBY_DSN is not set"]
    )
