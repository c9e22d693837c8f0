"""Peak memory of ``replverify files`` over streamed listings of many objects.

Each case runs in a fresh child process (so peak RSS is that case's own) and merges two
listings of N objects through :func:`replverify.ops.files.compare_objects`:

* ``memory``: two in-memory listings generated as they are read (what an object store's
  paged listing looks like to the merge), every object with a Content-MD5, equal;
* ``memory-1pct``: the same with 1% of the target's objects changed (their MD5);
* ``local``: two local directory trees of N files (1,000 per directory), read by the
  directory walk; sizes and content compared by hashing (the files are empty).

    python benchmarks/files_listing.py --objects 10000,100000,1000000 --local 100000

Results go to ``benchmarks/results/files-listing-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Generated:
    """N objects listed in key order, made as they are read: nothing kept."""

    def __init__(self, n: int, changed_every: int = 0) -> None:
        self.n = n
        self.changed_every = changed_every
        self.display = f"memory:{n}"

    def list(self) -> Iterator[object]:
        from replverify.ops.objstore import ObjectInfo

        for i in range(self.n):
            key = f"attachments/{i // 1000:06d}/{i:09d}.pdf"
            tag = b"x" if self.changed_every and i % self.changed_every == 0 else b""
            yield ObjectInfo(key, 1000 + i % 977, hashlib.md5(key.encode() + tag).digest())

    def read(self, key: str) -> Iterator[bytes]:
        raise AssertionError("not read: both listings carry Content-MD5")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(case: str, n: int) -> dict[str, object]:
    from replverify.ops.files import compare_objects
    from replverify.ops.objstore import LocalStore

    base = rss_mib()
    started = time.perf_counter()
    if case == "local":
        with tempfile.TemporaryDirectory(prefix="rv-files-bench-") as tmp:
            for side in ("a", "b"):
                for i in range(n):
                    d = Path(tmp, side, f"{i // 1000:06d}")
                    if i % 1000 == 0:
                        d.mkdir(parents=True)
                    (d / f"{i:09d}.pdf").touch()
            made = time.perf_counter()
            base = rss_mib()
            report = compare_objects(LocalStore(f"{tmp}/a"), LocalStore(f"{tmp}/b"))
            elapsed = time.perf_counter() - made
    else:
        every = 100 if case == "memory-1pct" else 0
        report = compare_objects(Generated(n), Generated(n, every))
        elapsed = time.perf_counter() - started
    return {
        "case": case,
        "objects": n,
        "compared": report.compared,
        "differences": len(report.differences),
        "elapsed_s": round(elapsed, 2),
        "objects_per_s": round(n / elapsed),
        "baseline_rss_mib": round(base, 1),
        "peak_rss_mib": round(rss_mib(), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="10000,100000,1000000")
    ap.add_argument("--local", default="100000", help="sizes of the local-directory case")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    cases = [("memory", int(n)) for n in args.objects.split(",") if n]
    cases += [("memory-1pct", int(n)) for n in args.objects.split(",")[-1:] if n]
    cases += [("local", int(n)) for n in args.local.split(",") if n]
    results = []
    for case, n in cases:
        out = subprocess.run(
            [sys.executable, __file__, "--child", case, str(n)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        results.append(json.loads(out.stdout))
        print(json.dumps(results[-1]), flush=True)
    doc = {
        "schema": "replverify.bench-files/1",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "results": results,
    }  # fmt: skip
    if args.no_save:
        return
    stem = HERE / "results" / f"files-listing-{dt.date.today().isoformat()}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# replverify files: peak memory over streamed listings",
        "",
        f"{doc['started']}, {os.cpu_count()} cores (shared), load {os.getloadavg()[0]:.1f}.",
        "Each case is a fresh process; peak RSS is the process's own maximum.",
        "",
        "| case | objects | differences | elapsed s | objects/s | RSS before MiB | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['case']} | {r['objects']:,} | {r['differences']:,} | {r['elapsed_s']} | "
        f"{r['objects_per_s']:,} | {r['baseline_rss_mib']} | {r['peak_rss_mib']} |"
        for r in results
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
