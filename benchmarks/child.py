"""One measured run, in its own process (so its peak RSS and CPU are its own).

Started by ``run.py``; not meant to be run by hand, though it can be::

    python benchmarks/child.py copy --format binary --order-by id SRC TGT
    python benchmarks/child.py replverify --digest server --jobs 2 SRC TGT
    /tmp/reladiff-venv/bin/python benchmarks/child.py reladiff -- ARGS...

Every mode writes one JSON object to the file named by ``$RV_BENCH_RESULT`` (to stderr
when it is unset): ``work_s`` (seconds of the measured
operation, timed after imports), ``bytes_in`` / ``bytes_out`` (TCP payload received
from / sent to the servers over all connections, from ``TCP_INFO``) and mode-specific
fields. Only the standard library is imported at the top: the ``reladiff``
mode runs in reladiff's own virtualenv, where replverify and asyncpg are not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT_ENV = "RV_BENCH_RESULT"


def tcp_bytes(sock: Any) -> tuple[int, int] | None:
    """(bytes received, bytes sent and acknowledged) of a TCP socket, from ``TCP_INFO``
    (``tcpi_bytes_received`` / ``tcpi_bytes_acked``, Linux 4.1+)."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    except (OSError, AttributeError, ValueError):
        return None
    if len(raw) < 136:
        return None
    acked, received = struct.unpack_from("=QQ", raw, 120)
    return received, acked


class Traffic:
    """Bytes received from / sent to the servers over every connection of the run,
    sampled just before each connection closes (and at the end for any still open)."""

    def __init__(self) -> None:
        self.sampled: dict[int, tuple[int, int]] = {}
        self.open: dict[int, Callable[[], Any]] = {}

    def sample(self, key: int, sock: Any) -> None:
        got = tcp_bytes(sock)
        if got is not None:
            self.sampled[key] = got

    def finish(self) -> dict[str, int] | None:
        for key, get_sock in list(self.open.items()):
            with contextlib.suppress(Exception):
                self.sample(key, get_sock())
        if not self.sampled:
            return None
        return {
            "bytes_in": sum(r for r, _ in self.sampled.values()),
            "bytes_out": sum(s for _, s in self.sampled.values()),
            "connections": len(self.sampled),
        }


def track_asyncpg(traffic: Traffic) -> None:
    """Sample every asyncpg connection's socket when it is closed or terminated."""
    from asyncpg.connection import Connection

    def sock_of(conn: Connection) -> Any:
        transport = getattr(conn, "_transport", None)
        return transport.get_extra_info("socket") if transport is not None else None

    close, terminate = Connection.close, Connection.terminate

    async def closing(self: Connection, *, timeout: float | None = None) -> None:
        traffic.sample(id(self), sock_of(self))
        await close(self, timeout=timeout)

    def terminating(self: Connection) -> None:
        traffic.sample(id(self), sock_of(self))
        terminate(self)

    Connection.close = closing
    Connection.terminate = terminating


class Meter:
    """Wall time and network traffic of the measured operation."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.work_s = 0.0
        self.net: dict[str, int] | None = None

    def __enter__(self) -> Meter:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.work_s = time.perf_counter() - self.t0
        self.net = self.traffic.finish()

    def result(self, **fields: Any) -> dict[str, Any]:
        return {"work_s": self.work_s, **(self.net or {}), **fields}


# --------------------------------------------------------------------------- copy


def run_copy(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    import asyncpg

    # asyncpg wraps it: COPY (<query>) TO STDOUT (FORMAT <format>)
    query = f"SELECT * FROM {args.table} ORDER BY {args.order_by}"

    async def one(dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            total = 0

            async def sink(chunk: bytes) -> None:
                nonlocal total
                total += len(chunk)

            await conn.copy_from_query(query, output=sink, format=args.format)
            return total
        finally:
            await conn.close()

    async def both() -> list[int]:
        return list(await asyncio.gather(one(args.source), one(args.target)))

    traffic = Traffic()
    track_asyncpg(traffic)
    with Meter(traffic) as m:
        sizes = asyncio.run(both())
    return m.result(copy_bytes=sizes)


# --------------------------------------------------------------------------- replverify


def run_replverify(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    import sqlglot

    from replverify.api import DiffOptions, diff
    from replverify.db.connect import Endpoint

    # What replverify loads on first use - libpq's DSN parser (through psycopg, ~0.12 s)
    # and sqlglot's PostgreSQL dialect (~0.04 s) - is loaded before the clock starts, as
    # the COPY yardstick's asyncpg is: ``work_s`` times the comparison, ``proc s`` the
    # whole process with every import.
    for dsn in (args.source, args.target):
        Endpoint.parse(dsn)
    sqlglot.Dialect.get_or_raise("postgres")

    options = DiffOptions(
        tables=(args.table,),
        digest=args.digest,  # validated by diff()
        jobs=args.jobs,
        compare=args.compare,
    )
    traffic = Traffic()
    track_asyncpg(traffic)
    with Meter(traffic) as m:
        report = asyncio.run(diff(args.source, args.target, options))
    tables = report.tables
    kinds: dict[str, int] = {}
    for t in tables:
        for d in t.differences:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
    return m.result(
        **{
            "differences": sum(t.differences_total for t in tables),
            "differences_by_kind_kept": kinds,
            "truncated": any(t.truncated for t in tables),
            "rows_source": sum(t.rows_source for t in tables),
            "rows_target": sum(t.rows_target for t in tables),
            "chunks": sum(t.chunks for t in tables),
            "chunks_mismatched": sum(t.chunks_mismatched for t in tables),
            "digest": [t.digest for t in tables],
            "compare": report.compare,
            "errors": [t.error for t in tables if t.error],
            "notes": report.notes,
            "digest_choice": report.digest_choice,
            "report_elapsed_s": report.elapsed_s,
        }
    )


# --------------------------------------------------------------------------- reladiff


class _ErrorCounter(logging.Handler):
    """reladiff's CLI logs exceptions and returns normally: count ERROR records."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_reladiff(args: argparse.Namespace) -> dict[str, Any]:
    # rich wraps printed lines at the terminal width (80 when not a terminal), which
    # would break the JSON lines apart.
    os.environ["COLUMNS"] = "1000000"
    from reladiff import __version__
    from reladiff.__main__ import main
    from sqeleton.databases.postgresql import PostgreSQL

    traffic = Traffic()
    create = PostgreSQL.create_connection

    def creating(self: Any) -> Any:
        conn = create(self)
        traffic.open[id(conn)] = lambda: socket.socket(fileno=os.dup(conn.fileno()))
        return conn

    PostgreSQL.create_connection = creating
    errors = _ErrorCounter()
    root = logging.getLogger()
    root.addHandler(errors)
    root.addHandler(logging.StreamHandler(sys.stderr))  # reladiff's basicConfig is a no-op now
    root.setLevel(logging.WARNING)
    with Meter(traffic) as m:
        try:
            main.main(args=args.reladiff_args, prog_name="reladiff", standalone_mode=False)
        finally:
            sys.stdout.flush()
    return m.result(errors=errors.messages, version=__version__)


# --------------------------------------------------------------------------- main


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="mode", required=True)
    copy = sub.add_parser("copy")
    copy.add_argument("--format", choices=["binary", "text"], default="binary")
    copy.add_argument("--table", default="t")
    copy.add_argument("--order-by", required=True)
    rv = sub.add_parser("replverify")
    rv.add_argument("--digest", default="auto", help="auto, copy, server, client, ...")
    rv.add_argument("--jobs", type=int, default=2)
    rv.add_argument("--compare", default="exact", help="exact or semantic")
    rv.add_argument("--table", default="public.t")
    for sp in (copy, rv):
        sp.add_argument("source")
        sp.add_argument("target")
    rd = sub.add_parser("reladiff")
    rd.add_argument("reladiff_args", nargs=argparse.REMAINDER)
    ns = p.parse_args(argv)
    if ns.mode == "reladiff" and ns.reladiff_args[:1] == ["--"]:
        ns.reladiff_args = ns.reladiff_args[1:]
    return ns


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    runner = {"copy": run_copy, "replverify": run_replverify, "reladiff": run_reladiff}
    try:
        result = runner[args.mode](args)
        code = 0
    except BaseException as e:  # reported to the parent, which decides
        result = {"errors": [f"{type(e).__name__}: {e}"], "traceback": traceback.format_exc()}
        code = 3
    out = os.environ.get(RESULT_ENV)
    if out:
        Path(out).write_text(json.dumps(result, default=str))
    else:
        print(json.dumps(result, default=str, indent=1), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
