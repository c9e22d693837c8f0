"""Failback at the scale of issue 15: ``pgbench -i -s 5``, load that replicates, the
standby cut off for 8 seconds of pgbench writes, promoted; then ``replverify failback``
in a child process (wall time, peak RSS), the replay applied, and a diff after it.

    python benchmarks/failback_pgbench.py [--scale 5] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replverify.api import DiffOptions, diff
from replverify.testing.cluster import pgbench
from replverify.testing.clusters import DEFAULT_LIKE_SETTINGS, LocalClusters
from replverify.testing.servers import (
    cut_replication,
    drop_slot,
    execute,
    promote,
    wait_for_replay,
)


async def run(scale: int, seconds: int, profile: str | None = None) -> dict[str, object]:
    lc = LocalClusters(use_env=False).start_empty()
    try:
        pair = await asyncio.to_thread(lc.fresh_pair, settings=DEFAULT_LIKE_SETTINGS)
        port = pair.primary.port
        await execute(pair.primary_dsn, "CREATE DATABASE bench")
        await asyncio.to_thread(pgbench, port, "-i", "-s", str(scale), "-q", dbname="bench")
        await asyncio.to_thread(pgbench, port, "-c", "4", "-T", "2", dbname="bench")
        await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
        await cut_replication(pair.standby_dsn)
        await asyncio.to_thread(
            pgbench, port, "-n", "-c", "8", "-j", "2", "-T", str(seconds), dbname="bench"
        )
        await promote(pair.standby_dsn)
        await drop_slot(pair.primary_dsn, pair.slot)
        old = pair.primary.dsn("bench")
        new = f"postgresql://postgres@127.0.0.1:{pair.standby.port}/bench"
        t0 = time.perf_counter()
        before = await diff(old, new, DiffOptions(max_diffs=None))
        diff_s = time.perf_counter() - t0
        differing = {str(t.table): t.differences_total for t in before.tables}
        out = Path(tempfile.mkdtemp()) / "failback.sql"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []),
             "-m", "replverify", "failback", old, new,
             "--replay-sql", str(out), "--format", "json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        failback_s = time.perf_counter() - t0
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        doc = json.loads(proc.stdout)
        t0 = time.perf_counter()
        await execute(new, out.read_text())
        apply_s = time.perf_counter() - t0
        after = await diff(old, new)
        return {
            "scale": scale,
            "seconds_cut_off": seconds,
            "differing_rows": differing,
            "differing_total": sum(differing.values()),
            "diff_s": round(diff_s, 2),
            "failback_exit": proc.returncode,
            "failback_s": round(failback_s, 2),
            "failback_peak_rss_mib": round(peak_kib / 1024, 1),
            "counts": doc["counts"],
            "xid_horizon": doc["xid_horizon"],
            "replay_statements": doc["replay_statements"],
            "replay_bytes": out.stat().st_size,
            "apply_s": round(apply_s, 2),
            "diff_after_replay": after.status,
        }
    finally:
        await asyncio.to_thread(lc.close)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--profile", metavar="FILE", help="cProfile the failback child into FILE")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.scale, args.seconds, args.profile)), indent=2))


if __name__ == "__main__":
    main()
