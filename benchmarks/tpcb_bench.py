"""What journaling costs: pgbench's TPC-B transaction through six ways of talking to one server.

    python benchmarks/tpcb_bench.py --clients 8 --seconds 10 --repeat 3 --scale 8

Starts a local primary with a streaming standby (``replverify.testing.clusters``), loads
it with ``pgbench -i -s SCALE`` and runs pgbench's built-in "tpcb-like" transaction
(UPDATE accounts, SELECT its balance, UPDATE tellers, UPDATE branches, INSERT INTO
history with CURRENT_TIMESTAMP) from ``--clients`` concurrent tasks for ``--seconds``
through:

* ``asyncpg``        - a plain asyncpg pool (``conn.transaction()``): the yardstick;
* ``asyncpg+floor[P]`` - the same pool plus the least the journal format asks of this
  transaction: an intent record appended before each of its four writes, the marker
  after COMMIT, made durable by policy ``P`` (the first ``--fsync``) before the
  transaction returns - what any journal of the format costs on this machine at that
  policy, whatever its code;
* ``failover``       - :class:`~replverify.failover.FailoverPool` without a journal;
* ``failover+journal[P]`` - the same with the journal at fsync policy ``P`` (each
  ``--fsync`` given; ``commit`` is the default policy);
* ``sqlalchemy``     - an async SQLAlchemy engine (asyncpg dialect), no journal;
* ``sqlalchemy+journal[P]`` - the same with
  :func:`replverify.failover.sqlalchemy.journal_engine` (the first ``--fsync`` policy).

``--durability`` says what the servers promise. ``on`` (PostgreSQL's defaults:
``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on``, data on a disk, not
tmpfs) is what a real application's database does, so it is the honest yardstick for a
journal that fsyncs; ``off`` is the test clusters' setting (``fsync=off``, data on
/dev/shm when it has room), where the servers' commits cost no I/O and any fsync of the
journal's stands out. ``both`` (the default) runs each on its own pair.

The modes run in turn, ``--repeat`` rounds (each round starting one mode later), so that
a noisy neighbour hits all alike;
the report gives the median round of each (transactions/s, p50 and p99 latency) and the
journal's cost relative to the plain pool measured in the same rounds. Results go to
``benchmarks/results/tpcb-<timestamp>.json`` and ``.md`` unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg

from replverify.failover import FailoverPool
from replverify.journal import FsyncPolicy, JournalWriter
from replverify.testing.clusters import LocalClusters
from replverify.testing.postgres import ENV_TMPDIR, find_bindir

RESULTS = Path(__file__).parent / "results"

UPDATE_ACCOUNT = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
SELECT_ACCOUNT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
UPDATE_TELLER = "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2"
UPDATE_BRANCH = "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2"
INSERT_HISTORY = (
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
    " VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
)

Txn = Callable[[int, int, int, int], Awaitable[None]]


def params(rng: random.Random, scale: int) -> tuple[int, int, int, int]:
    return (
        rng.randint(1, 100_000 * scale),
        rng.randint(1, 10 * scale),
        rng.randint(1, scale),
        rng.randint(-5000, 5000),
    )


async def run_clients(txn: Txn, clients: int, seconds: float, scale: int) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(n: int) -> None:
        rng = random.Random(n)
        while time.perf_counter() < stop:
            aid, tid, bid, delta = params(rng, scale)
            t0 = time.perf_counter()
            await txn(aid, tid, bid, delta)
            latencies.append(time.perf_counter() - t0)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    latencies.sort()
    return {
        "transactions": len(latencies),
        "tps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        # the client's own CPU (all its threads) per transaction: on a shared 2-core
        # machine the steadiest measure of what the client-side layers add
        "cpu_us_per_txn": 1e6 * cpu / max(1, len(latencies)),
    }


@dataclass
class Opened:
    """A mode's clients, open for every round of a run: pools connect and statements are
    prepared once, so rounds can be short and each stands close in time to the other
    modes' rounds it is compared with."""

    txn: Txn
    close: Callable[[], Awaitable[None]]
    journal: JournalWriter | None = None
    path: Path | None = None  # the journal's file
    _bytes: int = 0
    _fsyncs: int = 0

    def journal_stats(self, transactions: int) -> dict[str, float]:
        """The journal's bytes and fsyncs per transaction since the last call."""
        if self.path is None:
            return {}
        size = self.path.stat().st_size
        fsyncs = self.journal.fsyncs if self.journal is not None else 0
        n = max(1, transactions)
        out = {"journal_bytes_per_txn": (size - self._bytes) / n}
        if self.journal is not None:
            out["fsyncs_per_txn"] = (fsyncs - self._fsyncs) / n
        self._bytes, self._fsyncs = size, fsyncs
        return out


def _journal_path(tmp: Path, kind: str) -> Path:
    return tmp / f"{kind}-{time.monotonic_ns()}.jsonl"


async def _asyncpg_pool(dsn: str, a: argparse.Namespace) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=a.clients, max_size=a.clients)
    assert pool is not None
    return pool


async def open_asyncpg(dsn: str, a: argparse.Namespace) -> Opened:
    pool = await _asyncpg_pool(dsn, a)

    async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(UPDATE_ACCOUNT, delta, aid)
            await conn.fetchval(SELECT_ACCOUNT, aid)
            await conn.execute(UPDATE_TELLER, delta, tid)
            await conn.execute(UPDATE_BRANCH, delta, bid)
            await conn.execute(INSERT_HISTORY, tid, bid, aid, delta)

    return Opened(txn, pool.close)


async def open_floor(dsn: str, a: argparse.Namespace, tmp: Path, *, fsync: FsyncPolicy) -> Opened:
    """:func:`open_asyncpg` plus the least the journal format asks of this transaction:
    an intent record appended before each of its four writes, and the commit marker
    after COMMIT, made durable by the policy (group commit) before the transaction
    returns. No statement rendering, no RETURNING, no post-images: what any journal of
    this format costs here, whatever its code."""
    pool = await _asyncpg_pool(dsn, a)
    path = _journal_path(tmp, "floor")
    journal = JournalWriter(path, fsync=fsync)

    async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
        jt = journal.transaction()
        async with pool.acquire() as conn, conn.transaction():
            jt.intent("update", "public.pgbench_accounts", {"aid": aid}, {"abalance": delta})
            await conn.execute(UPDATE_ACCOUNT, delta, aid)
            await conn.fetchval(SELECT_ACCOUNT, aid)
            jt.intent("update", "public.pgbench_tellers", {"tid": tid}, {"tbalance": delta})
            await conn.execute(UPDATE_TELLER, delta, tid)
            jt.intent("update", "public.pgbench_branches", {"bid": bid}, {"bbalance": delta})
            await conn.execute(UPDATE_BRANCH, delta, bid)
            jt.intent("insert", "public.pgbench_history", {"tid": tid}, {"delta": delta})
            await conn.execute(INSERT_HISTORY, tid, bid, aid, delta)
        await jt.commit_async()

    async def close() -> None:
        await pool.close()
        journal.close()
        path.unlink()

    return Opened(txn, close, journal, path)


async def open_failover(
    dsn: str, standby: str, a: argparse.Namespace, tmp: Path, *, fsync: FsyncPolicy | None
) -> Opened:
    path = _journal_path(tmp, "journal") if fsync is not None else None
    pool = await FailoverPool.connect(
        dsn, standby, journal=path, min_size=a.clients, max_size=a.clients,
        fsync=fsync or "commit",
    )  # fmt: skip

    async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
        async with pool.transaction() as tx:
            await tx.execute(UPDATE_ACCOUNT, delta, aid)
            await tx.fetchval(SELECT_ACCOUNT, aid)
            await tx.execute(UPDATE_TELLER, delta, tid)
            await tx.execute(UPDATE_BRANCH, delta, bid)
            await tx.execute(INSERT_HISTORY, tid, bid, aid, delta)

    async def close() -> None:
        await pool.close()
        if path is not None:
            path.unlink()

    return Opened(txn, close, pool.journal, path)


async def open_sqlalchemy(
    dsn: str, a: argparse.Namespace, tmp: Path, *, fsync: FsyncPolicy | None
) -> Opened:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from replverify.failover.sqlalchemy import journal_engine

    engine = create_async_engine(
        dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
        pool_size=a.clients,
        max_overflow=0,
    )
    path = hooks = None
    if fsync is not None:
        path = _journal_path(tmp, "journal")
        hooks = journal_engine(engine, path, fsync=fsync)
    stmts = [
        text("UPDATE pgbench_accounts SET abalance = abalance + :d WHERE aid = :aid"),
        text("SELECT abalance FROM pgbench_accounts WHERE aid = :aid"),
        text("UPDATE pgbench_tellers SET tbalance = tbalance + :d WHERE tid = :tid"),
        text("UPDATE pgbench_branches SET bbalance = bbalance + :d WHERE bid = :bid"),
        text(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
            " VALUES (:tid, :bid, :aid, :d, CURRENT_TIMESTAMP)"
        ),
    ]

    async def txn(aid: int, tid: int, bid: int, delta: int) -> None:
        p = {"aid": aid, "tid": tid, "bid": bid, "d": delta}
        async with engine.begin() as conn:
            await conn.execute(stmts[0], {"d": delta, "aid": aid})
            (await conn.execute(stmts[1], {"aid": aid})).scalar()
            await conn.execute(stmts[2], {"d": delta, "tid": tid})
            await conn.execute(stmts[3], {"d": delta, "bid": bid})
            await conn.execute(stmts[4], p)

    async def close() -> None:
        await engine.dispose()
        if hooks is not None:
            hooks.journal.close()
        if path is not None:
            path.unlink()

    return Opened(txn, close, hooks.journal if hooks is not None else None, path)


RANGE_UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid <= $2"


def _hwm_kib() -> int:
    """Peak resident set size since the last reset (Linux VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _reset_hwm() -> int:
    """Reset the peak to the current RSS (``clear_refs`` 5); the current RSS, KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _hwm_kib()


async def range_update(dsn: str, standby: str, rows: int, tmp: Path) -> dict[str, Any]:
    """One UPDATE touching ``rows`` rows: plain asyncpg (``execute``, no rows back), and
    through the journaling pool (every post-image journaled, streamed 1000 at a time)."""
    out: dict[str, Any] = {"rows": rows}
    conn = await asyncpg.connect(dsn)
    try:
        base = _reset_hwm()
        t0 = time.perf_counter()
        await conn.execute(RANGE_UPDATE, 1, rows)
        out["asyncpg_s"] = time.perf_counter() - t0
        out["asyncpg_peak_kib"] = _hwm_kib() - base
    finally:
        await conn.close()
    path = tmp / "range.jsonl"
    pool = await FailoverPool.connect(dsn, standby, journal=path)
    try:
        base = _reset_hwm()
        t0 = time.perf_counter()
        await pool.execute(RANGE_UPDATE, 1, rows)
        out["journaled_s"] = time.perf_counter() - t0
        out["journaled_peak_kib"] = _hwm_kib() - base
    finally:
        await pool.close()
    out["journal_bytes"] = path.stat().st_size
    out["journal_lines"] = sum(1 for _ in path.open("rb"))
    path.unlink()
    print(
        f"range UPDATE of {rows} rows: asyncpg {out['asyncpg_s']:.2f} s"
        f" (+{out['asyncpg_peak_kib']} KiB peak), journaled {out['journaled_s']:.2f} s"
        f" (+{out['journaled_peak_kib']} KiB peak, {out['journal_lines']} lines)",
        flush=True,
    )
    return out


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def pin_servers(datadirs: list[Path], cpus: set[int]) -> int:
    """Move each server (its postmaster and every process it has started) to ``cpus``;
    the backends it forks later inherit them. The number of processes moved."""
    moved = 0
    for d in datadirs:
        todo = [int((d / "postmaster.pid").read_text().split()[0])]
        while todo:
            pid = todo.pop()
            try:
                os.sched_setaffinity(pid, cpus)
                todo += _children(pid)
            except (OSError, ValueError):  # a process that just ended
                continue
            moved += 1
    return moved


def split_cpus() -> tuple[set[int], set[int]]:
    """(the client's CPUs, the servers'): the first CPU for the client, the rest for the
    servers, like an application host beside a database host."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--cpus split needs at least 2 CPUs")
    return {cpus[0]}, set(cpus[1:])


def fs_type(path: str) -> str:
    """The file system ``path`` is on (the longest mount point of /proc/mounts above
    it): an fsync on tmpfs costs nothing, so the report says which it was."""
    real, best, kind = os.path.realpath(path), "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


BASE_MODES = (
    "asyncpg", "asyncpg+floor", "failover", "failover+journal", "sqlalchemy",
    "sqlalchemy+journal",
)  # fmt: skip

#: PostgreSQL's own defaults where the test clusters turn durability off
DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def mode_names(a: argparse.Namespace) -> list[str]:
    """Each mode to run; a journal mode once per fsync policy (SQLAlchemy's and the floor's:
    the first)."""
    out: list[str] = []
    for m in a.modes:
        if m == "failover+journal":
            out += [f"{m}[{p}]" for p in a.fsync]
        elif m in ("sqlalchemy+journal", "asyncpg+floor"):
            out.append(f"{m}[{a.fsync[0]}]")
        else:
            out.append(m)
    return out


async def open_mode(m: str, dsn: str, standby: str, a: argparse.Namespace, tmp: Path) -> Opened:
    base, _, rest = m.partition("[")
    fsync = cast("FsyncPolicy | None", rest.rstrip("]") or None)
    if base == "asyncpg":
        return await open_asyncpg(dsn, a)
    if base == "asyncpg+floor":
        return await open_floor(dsn, a, tmp, fsync=fsync or "commit")
    if base.startswith("failover"):
        return await open_failover(dsn, standby, a, tmp, fsync=fsync)
    return await open_sqlalchemy(dsn, a, tmp, fsync=fsync)


async def run_round(opened: Opened, a: argparse.Namespace) -> dict[str, Any]:
    out = await run_clients(opened.txn, a.clients, a.seconds, a.scale)
    out.update(opened.journal_stats(out["transactions"]))
    return out


async def run_mode(m: str, dsn: str, standby: str, a: argparse.Namespace, tmp: Path) -> Any:
    """One round of mode ``m`` on clients of its own."""
    opened = await open_mode(m, dsn, standby, a, tmp)
    try:
        return await run_round(opened, a)
    finally:
        await opened.close()


async def bench_one(a: argparse.Namespace, durable: bool) -> dict[str, Any]:
    """All modes, ``--repeat`` rounds, on one new pair (durable: PostgreSQL's defaults,
    data on a disk)."""
    saved = os.environ.get(ENV_TMPDIR)
    if durable:
        # the clusters' directory on a disk: on tmpfs fsync=on would cost nothing
        os.environ[ENV_TMPDIR] = a.durable_dir
    try:
        lc = LocalClusters(use_env=False).start_empty()
    finally:
        if saved is None:
            os.environ.pop(ENV_TMPDIR, None)
        else:
            os.environ[ENV_TMPDIR] = saved
    modes = mode_names(a)
    cpus: set[int] | None = None  # the process's own CPUs, while --cpus split moves it
    try:
        settings = DURABLE_SETTINGS if durable else None
        pair = await asyncio.to_thread(lc.fresh_pair, settings=settings)
        dsn, standby = pair.primary_dsn, pair.standby_dsn
        if a.cpus == "split":
            client_cpus, server_cpus = split_cpus()
            cpus = os.sched_getaffinity(0)
            pin_servers([pair.primary.datadir, pair.standby.datadir], server_cpus)
            os.sched_setaffinity(0, client_cpus)  # threads started later inherit it
        conn = await asyncpg.connect(dsn)
        try:
            server = {k: await conn.fetchval(f"SHOW {k}") for k in ("fsync", "synchronous_commit")}
            server["data_directory"] = await conn.fetchval("SHOW data_directory")
            server["data_fs"] = fs_type(server["data_directory"])
        finally:
            await conn.close()
        subprocess.run(
            [str(find_bindir() / "pgbench"), "-i", "-q", "-s", str(a.scale), dsn],
            check=True,
            capture_output=True,
        )
        tmp = Path(tempfile.mkdtemp(prefix="tpcb-journal-", dir=a.journal_dir))
        rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        opened: dict[str, Opened] = {}
        try:
            for m in modes:
                opened[m] = await open_mode(m, dsn, standby, a, tmp)
            for r in range(a.repeat):
                # each round starts one mode later: no mode always runs first (after the
                # previous round's heaviest) or last
                for m in modes[r % len(modes) :] + modes[: r % len(modes)]:
                    res = await run_round(opened[m], a)
                    rounds[m].append(res)
                    print(
                        f"{'durable' if durable else 'fsync=off'} round {r + 1} {m:<26}"
                        f" {res['tps']:8.1f} tps  p50 {res['p50_ms']:6.2f} ms"
                        f"  p99 {res['p99_ms']:6.2f} ms",
                        flush=True,
                    )
        finally:
            for o in opened.values():
                await o.close()
        ranged = await range_update(dsn, standby, a.range_rows, tmp) if a.range_rows else None
        os.rmdir(tmp)
    finally:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)  # the CPUs the process was given
        lc.close()
    medians = {}
    for m, rs in rounds.items():
        best = sorted(rs, key=lambda x: x["tps"])[len(rs) // 2]
        medians[m] = {**best, "tps_all": [round(x["tps"], 1) for x in rs]}
    if "asyncpg" in rounds:
        # cost per round against the plain pool of the same round, then the median:
        # a neighbour's burst hits both sides of each ratio alike
        for m, rs in rounds.items():
            pairs = zip(rs, rounds["asyncpg"], strict=True)
            costs = sorted(1 - x["tps"] / b["tps"] for x, b in pairs)
            medians[m]["cost_vs_asyncpg"] = statistics.median(costs)
            medians[m]["cost_all"] = [round(c, 3) for c in costs]
    return {"durable": durable, "server": server, "medians": medians, "rounds": rounds,
            "range_update": ranged}  # fmt: skip


async def bench(a: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for durable in {"on": [True], "off": [False], "both": [True, False]}[a.durability]:
        runs.append(await bench_one(a, durable))
    return {
        "benchmark": "tpcb",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "clients": a.clients,
        "seconds": a.seconds,
        "repeat": a.repeat,
        "scale": a.scale,
        "journal_dir": a.journal_dir or tempfile.gettempdir(),
        "journal_fs": fs_type(a.journal_dir or tempfile.gettempdir()),
        "fsync": a.fsync,
        "cpus": a.cpus,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "runs": runs,
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# TPC-B through the journal ({doc['at']})",
        "",
        f"{doc['clients']} clients, {doc['seconds']} s per run, {doc['repeat']} rounds"
        f" (median round shown; cost = median over rounds of 1 - tps / asyncpg tps of the"
        f" same round), pgbench scale {doc['scale']}; primary with a streaming standby;"
        f" journal in {doc['journal_dir']} ({doc.get('journal_fs', 'unknown')}"
        f"{': an fsync there costs nothing' if doc.get('journal_fs') == 'tmpfs' else ''});"
        " the default fsync policy is `commit`.",
        f"Machine: {doc['machine']['cpus']} CPUs, load average at the end"
        f" {', '.join(f'{x:.1f}' for x in doc['machine']['load_avg'])}."
        + (
            " CPUs split: the client on the first, the servers on the others."
            if doc.get("cpus") == "split"
            else " Client and servers share the CPUs."
        ),
    ]
    for run in doc["runs"]:
        s = run["server"]
        title = (
            "Servers with PostgreSQL's default durability"
            if run["durable"]
            else "Servers with fsync off (the test clusters' setting)"
        )
        lines += [
            "",
            f"## {title}",
            "",
            f"`fsync={s['fsync']}`, `synchronous_commit={s['synchronous_commit']}`,"
            f" data in `{s['data_directory']}` ({s.get('data_fs', 'unknown')}).",
            "",
            "| mode | tps | p50 ms | p99 ms | cost vs asyncpg | quartiles | rounds > 20%"
            " | client CPU µs/txn | journal bytes/txn | fsyncs/txn | tps per round |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for m, r in run["medians"].items():
            costs = r.get("cost_all")
            # from the rounds, so a saved result re-renders the same (--markdown)
            cost = statistics.median(costs) if costs else r.get("cost_vs_asyncpg")
            quart = over = ""
            if costs and m != "asyncpg" and len(costs) >= 4:
                q1, _, q3 = statistics.quantiles(costs, n=4)
                quart = f"{100 * q1:.1f} to {100 * q3:.1f}%"
                over = f"{sum(c > 0.2 for c in costs)}/{len(costs)}"
            jb = r.get("journal_bytes_per_txn")
            fs = r.get("fsyncs_per_txn")
            lines.append(
                f"| {m} | {r['tps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
                f" {'' if cost is None else f'{100 * cost:+.1f}%'} | {quart} | {over} |"
                f" {r.get('cpu_us_per_txn', 0):.0f} |"
                f" {'' if jb is None else f'{jb:.0f}'} |"
                f" {'' if fs is None else f'{fs:.2f}'} | {', '.join(map(str, r['tps_all']))} |"
            )
        r = run.get("range_update")
        if r:
            lines += [
                "",
                f"One `UPDATE ... WHERE aid <= {r['rows']}` ({r['rows']:,} rows):"
                f" plain asyncpg {r['asyncpg_s']:.2f} s; through the journaling pool"
                f" {r['journaled_s']:.2f} s, {r['journal_lines']:,} journal lines"
                f" ({r['journal_bytes'] / 2**20:.1f} MiB), peak memory growth"
                f" {r['journaled_peak_kib'] / 1024:.1f} MiB (rows streamed 1000 at a time).",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--modes", nargs="+", default=list(BASE_MODES), choices=BASE_MODES)
    p.add_argument("--journal-dir", default=None, help="where the journals go (default /tmp)")
    p.add_argument("--range-rows", type=int, default=100_000, help="0: skip the range UPDATE")
    p.add_argument(
        "--fsync", nargs="+", default=["commit", "always", "never"],
        choices=["commit", "always", "never"],
    )  # fmt: skip
    p.add_argument("--durability", default="both", choices=["on", "off", "both"])
    p.add_argument(
        "--durable-dir", default=tempfile.gettempdir(),
        help="where the durable servers' data goes (a disk, not tmpfs)",
    )  # fmt: skip
    p.add_argument(
        "--cpus", default="shared", choices=["shared", "split"],
        help="shared: client and servers on every CPU (they take CPU from each other);"
        " split: the client on the first CPU, the servers on the others, as an"
        " application host and a database host",
    )  # fmt: skip
    p.add_argument("--tag", default="", help="appended to the results' file name")
    p.add_argument("--no-save", action="store_true")
    p.add_argument(
        "--markdown", metavar="JSON", type=Path,
        help="only write the report of a saved result again (next to it, as .md)",
    )  # fmt: skip
    a = p.parse_args()
    if a.markdown:
        a.markdown.with_suffix(".md").write_text(markdown(json.loads(a.markdown.read_text())))
        return
    doc = asyncio.run(bench(a))
    text = markdown(doc)
    print(text)
    if not a.no_save:
        RESULTS.mkdir(exist_ok=True)
        tag = f"-{a.tag}" if a.tag else ""
        stem = RESULTS / f"tpcb-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}{tag}"
        stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
        print(f"saved {stem}.json and .md")


if __name__ == "__main__":
    main()
