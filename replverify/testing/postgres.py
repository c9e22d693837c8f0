"""PostgreSQL binaries and processes for the test clusters: finding the server binaries,
running them as the ``postgres`` user, ``initdb``, free loopback ports, and the net that
stops every cluster still running when the interpreter exits (atexit, SIGTERM)."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from replverify.errors import ClusterError

if TYPE_CHECKING:  # clusters imports these helpers
    from replverify.testing.clusters import Cluster

ENV_PG_BINDIR = "REPLVERIFY_PG_BINDIR"


ENV_TMPDIR = "REPLVERIFY_TMPDIR"


_INSTALL_HINT = "install PostgreSQL 15 server binaries (Debian: apt-get install postgresql-15)"


_PG_USER = "postgres"


def find_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ...)."""
    env = os.environ.get(ENV_PG_BINDIR)
    if env:
        bindir, source = Path(env), f"${ENV_PG_BINDIR}"
    else:
        try:
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ClusterError(
                f"cannot locate PostgreSQL server binaries: pg_config --bindir failed ({exc})",
                hint=f"{_INSTALL_HINT}, or set {ENV_PG_BINDIR}",
            ) from exc
        bindir, source = Path(out.stdout.strip()), "pg_config --bindir"
    missing = [b for b in ("initdb", "pg_ctl") if not (bindir / b).is_file()]
    if missing:
        raise ClusterError(
            f"{', '.join(missing)} not found in {bindir} (from {source})",
            hint=f"{_INSTALL_HINT}, or set {ENV_PG_BINDIR}",
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


def _pg_env() -> dict[str, str]:
    """The environment for PostgreSQL binaries: no stray ``PG*`` variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _as_pg_user(cmd: Sequence[str | Path]) -> list[str]:
    """``cmd`` as the user the clusters run as: ``postgres`` through runuser when root."""
    argv = [str(c) for c in cmd]
    return ["runuser", "-u", _PG_USER, "--", *argv] if _as_root() else argv


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
        ["runuser", "-u", _PG_USER, "--", "test", "-x", str(path)],
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
