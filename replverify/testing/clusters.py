"""Real local PostgreSQL clusters for the test suite and for ``replverify demo``.

:class:`LocalClusters` starts, in a fresh temporary directory, three clusters on loopback
ports:

* ``primary`` - a read/write cluster (``wal_level=replica``),
* ``standby`` - a streaming hot standby of ``primary`` (``pg_basebackup -R`` with the
  physical replication slot ``replverify_standby``),
* ``other`` - an independent cluster whose server defaults differ on purpose
  (``TimeZone``, ``DateStyle``, ``IntervalStyle``, ``extra_float_digits``,
  ``bytea_output``), so tests can prove that the client pins its session settings.

:meth:`LocalClusters.fresh_pair` makes a new primary + standby pair on demand for
destructive tests (cut replication, promote, lose writes).  Everything is stopped
(``pg_ctl stop -m immediate``) and removed by :meth:`LocalClusters.close`, and by an
:mod:`atexit` hook if the process ends without closing; :meth:`LocalClusters.keep` leaves
them running instead and says how to stop them.

Server binaries come from ``$REPLVERIFY_PG_BINDIR`` or ``pg_config --bindir``.
PostgreSQL refuses to run as root: when the effective uid is 0 its binaries run as the
``postgres`` user (``runuser -u postgres --``) and the data directories belong to it.

Existing servers instead of local ones: when all three of

* ``REPLVERIFY_TEST_PRIMARY_DSN`` (a primary),
* ``REPLVERIFY_TEST_STANDBY_DSN`` (a streaming hot standby of that primary),
* ``REPLVERIFY_TEST_OTHER_DSN`` (an independent server, ideally with non-default
  TimeZone/DateStyle/IntervalStyle/extra_float_digits/bytea_output)

are set, :meth:`LocalClusters.start` uses them and starts nothing; :meth:`fresh_pair` then
raises :class:`~replverify.errors.ClusterError` (destructive tests need local binaries).
Setting only some of them is an error.

The temporary directory goes under ``$REPLVERIFY_TMPDIR`` if set, else ``/dev/shm`` when
it has room (much faster than a disk), else the default temporary directory.

The async helpers (:func:`wait_for_replay`, :func:`cut_replication`, ...) accept a DSN
string or a :class:`Cluster` wherever they take an endpoint.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from replverify.errors import ClusterError
from replverify.testing.cluster import Cluster, pgbench
from replverify.testing.postgres import (
    _INSTALL_HINT,
    EMBEDDED,
    ENV_PG_BINDIR,
    ENV_PG_CACHE,
    ENV_TMPDIR,
    Binaries,
    _check_traversable,
    _register,
    _unregister,
    cluster_tmp_root,
    embedded_binaries,
    find_binaries,
    find_bindir,
    free_port,
    server_version,
    stop_clusters_under,
)
from replverify.testing.servers import (
    DEFAULT_SLOT,
    Endpoint,
    cut_replication,
    drop_slot,
    execute,
    fetchval,
    pause_replay,
    promote,
    restore_replication,
    resume_replay,
    subscribe,
    unsubscribe,
    wait_for_replay,
    wait_for_subscription,
)

__all__ = [
    "DEFAULT_LIKE_SETTINGS",
    "DEFAULT_SLOT",
    "EMBEDDED",
    "ENV_OTHER_DSN",
    "ENV_PG_BINDIR",
    "ENV_PG_CACHE",
    "ENV_PRIMARY_DSN",
    "ENV_STANDBY_DSN",
    "ENV_TMPDIR",
    "LOGICAL_SETTINGS",
    "OTHER_SETTINGS",
    "UPGRADE_SETTINGS",
    "Binaries",
    "Cluster",
    "Endpoint",
    "LocalClusters",
    "Pair",
    "cluster_tmp_root",
    "cut_replication",
    "drop_slot",
    "embedded_binaries",
    "execute",
    "fetchval",
    "find_binaries",
    "find_bindir",
    "free_port",
    "pause_replay",
    "pgbench",
    "promote",
    "restore_replication",
    "resume_replay",
    "server_version",
    "stop_clusters_under",
    "subscribe",
    "unsubscribe",
    "wait_for_replay",
    "wait_for_subscription",
]


ENV_PRIMARY_DSN = "REPLVERIFY_TEST_PRIMARY_DSN"


ENV_STANDBY_DSN = "REPLVERIFY_TEST_STANDBY_DSN"


ENV_OTHER_DSN = "REPLVERIFY_TEST_OTHER_DSN"


#: Server defaults of the ``other`` cluster; all of them change text output.
OTHER_SETTINGS: dict[str, str] = {
    "TimeZone": "'America/New_York'",
    "DateStyle": "'SQL, DMY'",
    "IntervalStyle": "'postgres_verbose'",
    "extra_float_digits": "0",
    "bytea_output": "'escape'",
}


_T = TypeVar("_T")


@dataclass(eq=False)
class Pair:
    """A primary and its streaming standby (physical slot ``slot`` on the primary)."""

    primary: Cluster
    standby: Cluster
    slot: str = DEFAULT_SLOT

    @property
    def primary_dsn(self) -> str:
        return self.primary.dsn()

    @property
    def standby_dsn(self) -> str:
        return self.standby.dsn()

    def close(self) -> None:
        """Stop both clusters (immediate) and delete their directories and logs."""
        for c in (self.standby, self.primary):
            c.stop("immediate")
            shutil.rmtree(c.datadir, ignore_errors=True)
            with contextlib.suppress(OSError):
                c.logfile.unlink()


def _parallel(*calls: Callable[[], _T]) -> list[_T]:
    """Run ``calls`` in threads; re-raise the first failure after all have finished."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(c) for c in calls]
    for f in futures:
        exc = f.exception()
        if exc is not None:
            raise exc
    return [f.result() for f in futures]


class LocalClusters:
    """``primary``, ``standby`` (streaming, slot ``replverify_standby``) and ``other``.

    ``with LocalClusters() as lc: ...`` or ``lc = LocalClusters().start(); ...;
    lc.close()``.  See the module docstring for the environment variables that make it
    use existing servers instead.
    """

    def __init__(self, *, bindir: Path | None = None, use_env: bool = True) -> None:
        self._bindir = bindir
        self._use_env = use_env
        self._lock = threading.Lock()
        self._pair_count = 0
        self._clusters: list[Cluster] = []
        self.base_dir: Path | None = None
        self.primary: Cluster | None = None
        self.standby: Cluster | None = None
        self.other: Cluster | None = None
        self.primary_dsn = ""
        self.standby_dsn = ""
        self.other_dsn = ""
        self.started = False
        self.from_environment = False
        #: Seconds spent per startup phase (``total`` included).
        self.timings: dict[str, float] = {}

    # ---- construction

    @staticmethod
    def env_dsns() -> tuple[str, str, str] | None:
        """The three ``REPLVERIFY_TEST_*_DSN`` values, or None when none is set."""
        names = (ENV_PRIMARY_DSN, ENV_STANDBY_DSN, ENV_OTHER_DSN)
        values = [os.environ.get(n, "") for n in names]
        if not any(values):
            return None
        if not all(values):
            missing = ", ".join(n for n, v in zip(names, values, strict=True) if not v)
            raise ClusterError(
                f"only some of the test DSN variables are set; missing: {missing}",
                hint="set all three, or none to start local clusters",
            )
        return values[0], values[1], values[2]

    @classmethod
    def from_env(cls) -> LocalClusters:
        """Use the servers named by ``REPLVERIFY_TEST_{PRIMARY,STANDBY,OTHER}_DSN``."""
        dsns = cls.env_dsns()
        if dsns is None:
            raise ClusterError(
                f"{ENV_PRIMARY_DSN}, {ENV_STANDBY_DSN} and {ENV_OTHER_DSN} are not set"
            )
        lc = cls(use_env=True)
        lc.primary_dsn, lc.standby_dsn, lc.other_dsn = dsns
        lc.started = lc.from_environment = True
        return lc

    def start(self) -> LocalClusters:
        """Start the three clusters (or adopt the env DSNs); returns ``self``."""
        if self.started:
            return self
        if self._use_env and self.env_dsns() is not None:
            env = self.from_env()
            self.primary_dsn, self.standby_dsn, self.other_dsn = (
                env.primary_dsn,
                env.standby_dsn,
                env.other_dsn,
            )
            self.started = self.from_environment = True
            return self
        t0 = time.monotonic()
        bindir = self._bindir = self._bindir or find_bindir()
        base = Path(tempfile.mkdtemp(prefix="replverify-", dir=cluster_tmp_root()))
        self.base_dir = base
        _register(directory=base)
        try:
            base.chmod(0o755)
            _check_traversable(base)

            def init(name: str, settings: dict[str, str] | None) -> Cluster:
                return Cluster.init(base, name, settings=settings, bindir=bindir)

            primary, other = _parallel(
                lambda: init("primary", None), lambda: init("other", OTHER_SETTINGS)
            )
            self.primary, self.other = primary, other
            self.timings["initdb"] = time.monotonic() - t0
            t1 = time.monotonic()
            self._track(primary).start()
            self.timings["start_primary"] = time.monotonic() - t1
            t2 = time.monotonic()

            def make_standby() -> Cluster:
                return self._track(Cluster.standby_of(primary, base, "standby"))

            def start_other() -> Cluster:
                self._track(other).start()
                return other

            standby, _ = _parallel(make_standby, start_other)
            self.standby = standby
            self.timings["standby_and_other"] = time.monotonic() - t2
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise
        self.primary_dsn = primary.dsn()
        self.standby_dsn = standby.dsn()
        self.other_dsn = other.dsn()
        self.started = True
        self.timings["total"] = time.monotonic() - t0
        return self

    def start_empty(self) -> LocalClusters:
        """Only make the temporary directory; clusters come from :meth:`fresh_pair`.

        For the demo and tools that need a pair but not the shared three.
        """
        if self.started:
            return self
        self._bindir = self._bindir or find_bindir()
        base = Path(tempfile.mkdtemp(prefix="replverify-", dir=cluster_tmp_root()))
        self.base_dir = base
        _register(directory=base)
        base.chmod(0o755)
        _check_traversable(base)
        self.started = True
        return self

    def _track(self, cluster: Cluster) -> Cluster:
        with self._lock:
            self._clusters.append(cluster)
        return cluster

    def cluster(
        self,
        name: str,
        *,
        bindir: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> Cluster:
        """A NEW started cluster ``name`` from the binaries in ``bindir`` (default: ours),
        e.g. another major version; stopped and removed with us.

        Blocking (about a second); from async code use :func:`asyncio.to_thread`.
        """
        base = self._local_base("cluster()")
        with self._lock:
            self._pair_count += 1
            n = self._pair_count
        cluster = Cluster.init(
            base, f"c{n}-{name}", settings=settings, bindir=bindir or self._bindir
        )
        self._track(cluster).start()
        return cluster

    def _local_base(self, what: str) -> Path:
        if self.from_environment or not self.started or self.base_dir is None:
            raise ClusterError(
                f"{what} needs local clusters: destructive (failover) tests need local "
                "PostgreSQL binaries, not the servers given in "
                f"{ENV_PRIMARY_DSN}/{ENV_STANDBY_DSN}/{ENV_OTHER_DSN}",
                hint=f"unset those variables and {_INSTALL_HINT}",
            )
        return self.base_dir

    def fresh_pair(self, slot: str = DEFAULT_SLOT, settings: dict[str, str] | None = None) -> Pair:
        """A NEW primary + streaming standby, for destructive tests; closed with us.
        ``settings`` (verbatim configuration values) apply to both, e.g.
        :data:`DEFAULT_LIKE_SETTINGS`.

        Blocking (about a second); from async code use ``await
        asyncio.to_thread(lc.fresh_pair)``.
        """
        base = self._local_base("fresh_pair()")
        with self._lock:
            self._pair_count += 1
            n = self._pair_count
        bindir = self._bindir
        primary = self._track(
            Cluster.init(base, f"pair{n}-primary", bindir=bindir, settings=settings)
        )
        primary.start()
        standby = self._track(Cluster.standby_of(primary, base, f"pair{n}-standby", slot))
        return Pair(primary=primary, standby=standby, slot=slot)

    # ---- teardown

    def keep(self) -> list[str]:
        """Leave the clusters running and their directory in place when this process ends
        (no atexit or SIGTERM cleanup; :meth:`close` then does nothing); return the shell
        commands that stop the running ones and remove the directory, in order."""
        with self._lock:
            clusters, self._clusters = self._clusters[::-1], []
        base, self.base_dir = self.base_dir, None
        commands = [
            shlex.join(c.pg_ctl_command("-D", str(c.datadir), "-m", "fast", "-w", "stop"))
            for c in clusters
            if c.running
        ]
        for c in clusters:
            _unregister(cluster=c)
        if base is not None:
            _unregister(directory=base)
            commands.append(shlex.join(["rm", "-rf", str(base)]))
        self.started = False
        return commands

    def close(self) -> None:
        """Stop every cluster (``pg_ctl stop -m immediate``) and remove the directory."""
        with self._lock:
            clusters, self._clusters = self._clusters[::-1], []
        errors: list[BaseException] = []
        if clusters:
            with ThreadPoolExecutor(max_workers=min(len(clusters), 8)) as pool:
                futures = [pool.submit(c.stop, "immediate") for c in clusters]
            errors = [e for f in futures if (e := f.exception()) is not None]
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            _unregister(directory=self.base_dir)
        self.started = False
        if errors:
            raise errors[0]

    def __enter__(self) -> LocalClusters:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: Server defaults of the PostgreSQL 18 cluster of the cross-version (upgrade) tests: a
#: subscriber in another country, so text output differs from the source's.
UPGRADE_SETTINGS: dict[str, str] = {
    "TimeZone": "'America/Sao_Paulo'",
    "DateStyle": "'SQL, DMY'",
}


#: A publisher for logical replication.
LOGICAL_SETTINGS: dict[str, str] = {"wal_level": "logical"}


#: The settings a user has by default where the test clusters differ from them
#: (commit timestamps off, full page writes on: pg_rewind needs them on its source).
DEFAULT_LIKE_SETTINGS: dict[str, str] = {
    "track_commit_timestamp": "off",
    "full_page_writes": "on",
}
