"""One local PostgreSQL cluster: a data directory served on a loopback port, made by
``initdb`` or ``pg_basebackup``, configured, started and stopped with ``pg_ctl``,
promoted, rewound with ``pg_rewind``, queried with ``psql``; and ``pgbench`` against one.

:mod:`replverify.testing.clusters` starts the test suite's clusters with these;
:mod:`replverify.testing.postgres` finds the binaries and cleans up what a process left
running; :mod:`replverify.testing.servers` drives replication over a connection.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from replverify.errors import ClusterError
from replverify.testing.postgres import (
    _PG_USER,
    _as_pg_user,
    _give_to_postgres,
    _initdb,
    _pg_env,
    _register,
    _run,
    _tail,
    _unregister,
    find_bindir,
    free_port,
)
from replverify.testing.servers import DEFAULT_SLOT

__all__ = ["Cluster", "pgbench"]


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


_HBA = """\
# written by replverify.testing.clusters: trust everything on loopback
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
"""


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


def pgbench(port: int, *args: str, dbname: str = "postgres", timeout: float = 300) -> str:
    """Run ``pgbench`` (from the server binaries) against the local cluster on ``port``."""
    return _run(
        [find_bindir() / "pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", _PG_USER, *args,
         dbname],
        what=f"pgbench {' '.join(args)}",
        cwd=Path(tempfile.gettempdir()),
        timeout=timeout,
    )  # fmt: skip
