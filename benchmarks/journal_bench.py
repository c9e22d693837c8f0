"""Benchmark reading and reconciling a large write journal (no database needed).

    python benchmarks/journal_bench.py --lines 1000000 --rows 100000

Generates a journal of ``--lines`` lines (transactions of one to three writes settled by
a commit marker, self-committed writes, aborted transactions, a few in-doubt intents)
over ``--rows`` distinct rows, and a target that holds the last value of every row
except a few lost ones. ``--kind`` says how the writes are journaled: ``literal``
(structured records with ``key``/``values``/``before``, plus a ``--sql-share`` of ``sql``
records), ``sql`` (every write an ``sql`` record with literal values), ``effects``
(every write a statement intent with ``$n`` parameters plus the record of the row it
touched, as the failover pool journals a statement by its effect). Then, each in its own
process so peak RSS is its own:

* ``read``      - :class:`~replverify.journal.reader.JournalReader`: decode and validate
  every line;
* ``reconcile`` - the whole :func:`~replverify.reconcile.run.reconcile_with` (three passes,
  batched lookups) against a :class:`~replverify.testing.memory.MemoryTarget`;
* ``ledger``    - pass 1 of reconcile alone (validate, resolve, settle; the per-row
  state), without a target, so its peak memory is its own.

Peak memory is VmHWM reset after the setup of each phase (Linux), minus the RSS then.

Prints entries/s and peak memory per phase, and writes JSON and a Markdown table to
``benchmarks/results/`` unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from replverify.db.catalog import TableInfo
from replverify.journal.format import Marker
from replverify.journal.reader import JournalReader
from replverify.journal.resolve import RowResolver
from replverify.reconcile.ledger import Ledger
from replverify.reconcile.run import reconcile, reconcile_with

try:
    from replverify.reconcile.run import first_pass
    from replverify.reconcile.spill import Spill
except ImportError:  # a --baseline checkout from before pass 1 was a function of its own
    first_pass = None  # type: ignore[assignment]
from replverify.testing.memory import MemoryTarget
from replverify.types import Column, ColumnType, TableRef

REF = TableRef("public", "orders")
INFO = TableInfo(
    REF,
    1,
    (
        Column("id", ColumnType("bigint", "int8"), True),
        Column("status", ColumnType("text", "text")),
        Column("amount", ColumnType("numeric(12,2)", "numeric")),
        Column("note", ColumnType("text", "text")),
    ),
    ("id",),
    0,
)
STATUSES = ("new", "paid", "shipped", "cancelled")
#: the statements of an effects journal (journaled with their parameters)
STATEMENTS = {
    "update": "UPDATE orders SET status = $1, amount = $2 WHERE id = $3",
    "insert": "INSERT INTO orders (id, status, amount) VALUES ($3, $1, $2)",
}


def generate(
    path: Path, lines: int, rows: int, sql_share: float, lost: int, seed: int, kind: str = "literal"
) -> dict:
    """Write the journal; return the target's rows (the last value of every row)."""
    if kind == "sql":
        sql_share = 1.0
    journaled = kind
    rnd = random.Random(seed)
    state: dict[int, dict[str, Any]] = {}
    n = seq = tx = 0
    with path.open("w") as f:

        def emit(obj: dict[str, Any]) -> None:
            nonlocal n
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")
            n += 1

        while n < lines - 4:
            tx += 1
            txid = f"t-{tx}"
            minute, second = (n // 60_000) % 60, (n // 1000) % 60
            ts = f"2026-11-23T10:{minute:02d}:{second:02d}.{n % 1000:03d}+00:00"
            kind = rnd.random()
            writes = 1 if kind < 0.5 else rnd.randint(1, 3)
            self_committed = kind < 0.25 and journaled != "effects"  # a statement settles
            aborted = kind > 0.97
            for _ in range(writes):
                seq += 1
                rid = rnd.randrange(1, rows + 1)
                status = STATUSES[rnd.randrange(4)]
                amount = f"{rnd.randrange(100000) / 100:.2f}"
                rec: dict[str, Any] = {
                    "v": 1,
                    "txid": txid,
                    "seq": seq,
                    "ts": ts,
                    "state": "committed" if self_committed else "intent",
                }
                if journaled == "effects":
                    exists = rid in state
                    stmt = STATEMENTS["update" if exists else "insert"]
                    emit({**rec, "op": "update" if exists else "insert", "table": "public.orders",
                          "stmt": stmt, "params": [status, amount, rid]})  # fmt: skip
                    seq += 1
                    rec = {**rec, "seq": seq, "op": "update" if exists else "insert",
                           "table": "public.orders", "key": {"id": rid}, "of": seq - 1,
                           "values": {"status": status, "amount": amount}}  # fmt: skip
                    if not exists:
                        rec["values"]["note"] = None
                elif rnd.random() < sql_share:
                    rec["sql"] = (
                        f"UPDATE orders SET status = '{status}', amount = {amount} WHERE id = {rid}"
                        if rid in state
                        else f"INSERT INTO orders (id, status, amount) VALUES ({rid}, '{status}',"
                        f" {amount}) ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,"
                        " amount = EXCLUDED.amount"
                    )
                else:
                    rec.update(
                        op="update" if rid in state else "upsert",
                        table="public.orders",
                        key={"id": rid},
                        values={"status": status, "amount": amount},
                    )
                    if rid in state:
                        rec["before"] = {"status": state[rid]["status"]}
                emit(rec)
                if not aborted:
                    state[rid] = {"id": rid, "status": status, "amount": amount, "note": None}
            if not self_committed:
                settled = "aborted" if aborted else "committed"
                emit({"v": 1, "txid": txid, "state": settled, "ts": ts})
        for i in range(3):  # in doubt
            seq += 1
            emit(
                {"v": 1, "txid": f"crash-{i}", "seq": seq, "ts": "2026-11-23T11:00:00+00:00",
                 "state": "intent", "op": "update", "table": "orders", "key": {"id": i + 1},
                 "values": {"note": "in doubt"}}
            )  # fmt: skip
    target = dict(state)
    for rid in rnd.sample(sorted(target), min(lost, len(target))):  # the failover lost these
        target[rid] = {**target[rid], "amount": "-1.00"}
    return {"lines": n, "rows": list(target.values())}


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM (peak) of this process, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start VmHWM afresh (Linux: ``5`` to ``/proc/self/clear_refs``), so the peak is the
    phase's own and not that of loading the target."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def child(phase: str, journal: str, target: str) -> dict[str, Any]:
    memory = None
    if phase == "reconcile":
        rows = json.loads(Path(target).read_text())
        memory = MemoryTarget({REF: INFO}, {REF: rows})
        del rows
    gc.collect()
    _reset_peak()
    out: dict[str, Any] = {"phase": phase, "rss_before_mib": _status_mib("VmRSS")}
    started, cpu = time.perf_counter(), time.process_time()
    if phase == "read":
        reader = JournalReader(journal)
        records = sum(1 for _ in reader)
        out.update(lines=reader.lines, records=records)
    elif phase == "ledger" and first_pass is not None:  # pass 1 alone, as reconcile runs it
        resolver = RowResolver({REF: INFO}, path=journal)
        spill = Spill()
        ledger, reader, _ = first_pass(journal, resolver, None, spill)
        spill.close()
        out.update(lines=reader.lines, rows=len(ledger.rows), open=len(ledger.open))
    elif phase == "ledger":  # the same, for a baseline checkout
        reader = JournalReader(journal)
        resolver = RowResolver({REF: INFO}, path=journal)
        ledger = Ledger()
        for rec in reader:
            if isinstance(rec, Marker):
                ledger.marker(rec)
            elif rec.stmt is not None:  # as reconcile does: a statement intent
                ledger.statement(rec)
            else:
                for w in resolver(rec):
                    ledger.write(w)
        out.update(lines=reader.lines, rows=len(ledger.rows), open=len(ledger.open))
    elif phase == "postgres":  # the whole reconcile against a real server
        report = asyncio.run(reconcile(journal, os.environ[DSN_ENV]))
        out.update(
            lines=report.lines,
            entries=report.entries,
            counts=report.counts,
            lost=len(report.lost),
            timings=dict(report.timings),
        )
    elif phase == "reconcile":
        assert memory is not None
        report = asyncio.run(reconcile_with(journal, memory))
        out.update(
            lines=report.lines,
            entries=report.entries,
            counts=report.counts,
            lost=len(report.lost),
            timings=dict(report.timings),
        )
    out["elapsed_s"] = time.perf_counter() - started
    out["cpu_s"] = time.process_time() - cpu  # the process's own CPU: less noisy under load
    out["peak_rss_mib"] = _status_mib("VmHWM")
    return out


DSN_ENV = "RV_JOURNAL_BENCH_DSN"


@contextlib.contextmanager
def postgres_target(rows: list[dict[str, Any]]) -> Iterator[str]:
    """A local cluster whose ``public.orders`` holds ``rows``; yields its DSN."""
    sys.path.insert(0, str(Path(__file__).parent))
    from run import local_servers  # the benchmark's clusters: fsync off, in /dev/shm

    async def load(dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TABLE orders (id bigint PRIMARY KEY, status text,"
                " amount numeric(12,2), note text)"
            )
            await conn.copy_records_to_table(
                "orders",
                records=[(r["id"], r["status"], Decimal(r["amount"]), r["note"]) for r in rows],
            )
            await conn.execute("VACUUM ANALYZE orders")
        finally:
            await conn.close()

    with local_servers("256MB", plain_target=True) as servers:
        asyncio.run(load(servers.source_dsn))
        yield servers.source_dsn


def run_phase(
    phase: str, journal: Path, target: Path, baseline: str | None = None
) -> dict[str, Any]:
    """One phase in a child process; ``baseline``: with that checkout of replverify first
    on the path instead of this one."""
    env = dict(os.environ)
    if baseline is not None:
        env["PYTHONPATH"] = baseline
    cmd = [sys.executable, __file__, "--child", phase, str(journal), str(target)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ranked = sorted(runs, key=lambda r: r["elapsed_s"])
    out = dict(ranked[len(ranked) // 2])
    out["runs_s"] = [round(r["elapsed_s"], 2) for r in runs]
    out["cpu_runs_s"] = [round(r.get("cpu_s", 0.0), 2) for r in runs]
    out["cpu_median_s"] = sorted(out["cpu_runs_s"])[len(runs) // 2]
    return out


NOTES = {
    "postgres": "(3 passes against a local PostgreSQL 15 server, batched lookups)",
    "read": "(decode + validate every line)",
    "ledger": "(pass 1 alone)",
    "reconcile": "(3 passes; over the in-memory target's own memory)",
}


def markdown(doc: dict[str, Any]) -> str:
    """One run as a Markdown table (with the baseline's rows and the speed-up, if any)."""
    a = doc["args"]
    base = doc.get("baseline") or {}
    out = [
        f"# Journal benchmark: {a['kind']} journal, {a['lines']:,} lines, {a['rows']:,} rows"
        + (f" ({a['label']})" if a["label"] else ""),
        "",
        f"`python benchmarks/journal_bench.py --kind {a['kind']} --lines {a['lines']}"
        f" --rows {a['rows']} --phases {a['phases']}{' --postgres' if a['postgres'] else ''}"
        f"{' --baseline ' + str(a['baseline']) if a['baseline'] else ''} --repeat {a['repeat']}`;"
        f" {doc['journal_bytes'] / 2**20:,.0f} MiB; Python {doc['machine']['python']},"
        f" {doc['machine']['cpus']} CPUs shared with other jobs (absolute times vary from run"
        " to run: compare within one run). Times are the median of the runs listed.",
        "",
        "| phase | code | seconds (runs) | lines/s | entries/s | peak RSS growth (MiB) |"
        " seconds per pass | speed-up | CPU s (runs) | CPU us/line | CPU speed-up |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for phase, r in doc["results"].items():
        for name, x in (("baseline", base.get(phase)), ("this", r)):
            if x is None:
                continue
            entries = f"{x['entries'] / x['elapsed_s']:,.0f}" if "entries" in x else ""
            passes = ", ".join(f"{k} {v}" for k, v in x.get("timings", {}).items())
            runs = ", ".join(f"{t:g}" for t in x.get("runs_s", []))
            up = cpu_up = ""
            cpu = x.get("cpu_median_s", 0.0)
            if name == "this" and phase in base:
                up = f"{base[phase]['elapsed_s'] / x['elapsed_s']:.2f}x"
                if cpu:
                    cpu_up = f"{base[phase].get('cpu_median_s', 0.0) / cpu:.2f}x"
            cpu_runs = ", ".join(f"{t:g}" for t in x.get("cpu_runs_s", []))
            out.append(
                f"| {phase} {NOTES[phase]} | {name} | {x['elapsed_s']:.1f} ({runs})"
                f" | {x['lines'] / x['elapsed_s']:,.0f} | {entries}"
                f" | {x['peak_rss_mib'] - x['rss_before_mib']:,.0f} | {passes} | {up}"
                f" | {cpu:.2f} ({cpu_runs}) | {cpu / x['lines'] * 1e6:.2f} | {cpu_up} |"
            )
    for phase in ("reconcile", "postgres"):
        for name, res in (("baseline", base), ("this", doc["results"])):
            if phase in res:
                out += ["", f"{phase} counts ({name}): `{res[phase]['counts']}`"]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=100_000, help="distinct rows written")
    ap.add_argument("--sql-share", type=float, default=0.01, help="share of sql records")
    ap.add_argument("--lost", type=int, default=100, help="rows the target lost")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--kind", choices=("literal", "sql", "effects"), default="literal")
    ap.add_argument("--phases", default="read,ledger,reconcile", help="comma-separated")
    ap.add_argument(
        "--baseline",
        help="a checkout of replverify (git worktree add DIR COMMIT) to run each phase with"
        " too, alternating with this one",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per phase (median reported)")
    ap.add_argument("--label", default="", help="a word for the result files' names")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument(
        "--postgres",
        action="store_true",
        help="also reconcile against a local PostgreSQL server holding the target rows",
    )
    ap.add_argument("--child", nargs=3, metavar=("PHASE", "JOURNAL", "TARGET"), help="internal")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        journal, target = Path(tmp) / "writes.jsonl", Path(tmp) / "target.json"
        t0 = time.perf_counter()
        gen = generate(
            journal, args.lines, args.rows, args.sql_share, args.lost, args.seed, args.kind
        )
        target.write_text(json.dumps(gen["rows"]))
        size = journal.stat().st_size
        print(
            f"journal: {gen['lines']:,} lines, {size / 2**20:,.0f} MiB, {len(gen['rows']):,} rows"
            f" (generated in {time.perf_counter() - t0:.1f} s)"
        )
        phases = [p for p in args.phases.split(",") if p]
        runs: dict[str, list[dict[str, Any]]] = {}
        base_runs: dict[str, list[dict[str, Any]]] = {}
        with contextlib.ExitStack() as stack:
            if args.postgres:
                os.environ[DSN_ENV] = stack.enter_context(postgres_target(gen["rows"]))
                phases.append("postgres")
            for _ in range(args.repeat):
                for p in phases:
                    if args.baseline:
                        base_runs.setdefault(p, []).append(
                            run_phase(p, journal, target, args.baseline)
                        )
                    runs.setdefault(p, []).append(run_phase(p, journal, target))
        results = {p: _median(r) for p, r in runs.items()}
        baseline = {p: _median(r) for p, r in base_runs.items()}
    for name, res in (("baseline", baseline), ("this", results)):
        for phase, r in res.items():
            rate = r["lines"] / r["elapsed_s"]
            entries = (
                f"  {r['entries'] / r['elapsed_s']:>8,.0f} entries/s" if "entries" in r else ""
            )
            grown = r["peak_rss_mib"] - r["rss_before_mib"]
            print(
                f"{name:<8} {phase:<10} {r['elapsed_s']:6.1f} s {rate:>9,.0f} lines/s{entries}"
                f"  CPU {r['cpu_median_s']:.2f} s ({r['cpu_median_s'] / r['lines'] * 1e6:.2f}"
                f" us/line)  peak RSS +{grown:,.0f} MiB {NOTES[phase]}"
            )
            if "counts" in r:
                passes = ", ".join(f"{k} {v}" for k, v in r["timings"].items())
                print(f"         counts {r['counts']}; seconds per pass: {passes}")
    for phase in results:
        if phase in baseline and "counts" in results[phase]:
            assert results[phase]["counts"] == baseline[phase]["counts"], phase
    if not args.no_save:
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        stamp = (
            time.strftime("%Y%m%d-%H%M%S") + f"-{args.kind}" + (f"-{args.label}" * bool(args.label))
        )
        doc = {
            "args": vars(args) | {"child": None},
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "journal_bytes": size,
            "results": results,
            "baseline": baseline,
        }
        (out / f"journal-{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out / f"journal-{stamp}.md").write_text(markdown(doc))


if __name__ == "__main__":
    main()
