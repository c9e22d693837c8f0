"""``replverify gate``: may a planned failover happen now without losing anything?

1. Confirm that the target is a physical standby of the source's cluster (else:
   :class:`~replverify.errors.UsageError`, exit 2).
2. With ``fence=True`` only: stop the source taking writes -
   ``ALTER SYSTEM SET default_transaction_read_only = on`` and ``pg_reload_conf()`` - and
   wait until no other session still holds a transaction id (writes in flight finish or
   fail). **This is the one write gate makes, and only with --fence.** It stays in effect
   (that is the point: switch next); undo it with :data:`UNFENCE_SQL`.
3. Wait (polling) until the target has replayed everything the source has written: the
   source's current WAL position is read, then the target's replay position; caught up
   when the latter is at least the former.
4. Run :func:`replverify.api.diff` on the pair (its reads are LSN-fenced on a standby).

``status``: ``safe`` (caught up and identical: a switch now loses nothing),
``not_caught_up`` (the wait timed out), ``different``, ``unverified`` (no difference
found, but some table could not be verified: it could not be read, say); the CLI maps
these to 0 / 1 / 1 / 2, and any incomplete diff to 2.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from replverify import api
from replverify.db import catalog
from replverify.db.connect import DB_ERRORS, Endpoint, connect, trouble
from replverify.errors import UsageError
from replverify.lag.sampler import ReplicationState, replication_state
from replverify.types import DiffReport

__all__ = ["FENCE_SQL", "UNFENCE_SQL", "GateReport", "gate"]

FENCE_SQL = ("ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()")
UNFENCE_SQL = "ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf();"

_POSITIONS_SOURCE = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
_POSITIONS_TARGET = """\
SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS replay,
       pg_is_wal_replay_paused() AS paused"""
_WRITERS_SQL = """\
SELECT count(*) FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"""

GateStatus = Literal["safe", "not_caught_up", "different", "unverified"]
#: ``progress(lag_bytes, waited_s)`` while waiting for replay
Progress = Callable[[int, float], None]


@dataclass
class GateReport:
    source: str
    target: str
    timeout_s: float
    relation: str = ""
    fenced: bool = False
    caught_up: bool = False
    waited_s: float = 0.0
    source_lsn: int | None = None
    replay_lsn: int | None = None
    replay_paused: bool | None = None
    diff: DiffReport | None = None
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def lag_bytes(self) -> int | None:
        if self.source_lsn is None or self.replay_lsn is None:
            return None
        return max(self.source_lsn - self.replay_lsn, 0)

    @property
    def status(self) -> GateStatus:
        if not self.caught_up:
            return "not_caught_up"
        if self.diff is None or any(
            t.differences_total or t.schema_differences for t in self.diff.tables
        ):
            return "different"
        if not self.diff.complete:
            return "unverified"
        return "safe" if self.diff.status == "consistent" else "different"

    @property
    def complete(self) -> bool:
        return self.diff is None or self.diff.complete


async def gate(
    source: str,
    target: str,
    *,
    timeout: float = 60.0,
    fence: bool = False,
    options: api.DiffOptions | None = None,
    progress: Progress | None = None,
    poll_interval: float = 0.1,
) -> GateReport:
    """Wait until ``target`` has replayed all of ``source``, then verify with a diff."""
    if not timeout > 0:
        raise UsageError("--timeout must be more than 0 seconds")
    started = time.perf_counter()
    src_ep, tgt_ep = Endpoint.parse(source), Endpoint.parse(target)
    report = GateReport(str(src_ep), str(tgt_ep), timeout)
    src, tgt = await connect(src_ep), None
    try:
        tgt = await connect(tgt_ep)
        catalog.refuse_same_database(
            await catalog.server_info(src), await catalog.server_info(tgt), src_ep, tgt_ep,
            "SOURCE and TARGET", option="",
        )  # fmt: skip
        state = await replication_state(src, tgt, src_ep)
        _require_standby(state)
        report.relation = state.description
        if state.relation == "disconnected":
            report.notes.append(
                "the target is not receiving WAL: it can only catch up if it already has it all"
            )
        if fence:
            await _fence(src_ep, timeout, report)
        await _wait(src, tgt, report, timeout, progress, poll_interval)
    except DB_ERRORS as e:
        raise trouble(e, src_ep, tgt_ep) from e
    finally:
        await asyncio.gather(
            *(c.close() for c in (src, tgt) if c is not None), return_exceptions=True
        )
    if report.caught_up:
        report.diff = await api.diff(source, target, options)
    else:
        why = (
            " (WAL replay is paused on the target: waiting cannot help; resume it on the "
            "standby with SELECT pg_wal_replay_resume())"
            if report.replay_paused
            else ""
        )
        report.notes.append(
            f"the target did not replay everything within {timeout:g} s{why}: "
            f"{report.lag_bytes or 0:,} bytes behind; no diff was run"
        )
    report.elapsed_s = time.perf_counter() - started
    return report


def _require_standby(state: ReplicationState) -> None:
    if state.relation in ("not_standby", "other_cluster", "subscriber"):
        raise UsageError(
            f"cannot gate a failover to this target: {state.description}",
            hint="gate checks a planned switch from a primary to its physical standby",
        )
    if state.source_in_recovery:
        raise UsageError("the source is in recovery: gate needs the current primary as SOURCE")


async def _fence(src_ep: Endpoint, timeout: float, report: GateReport) -> None:
    """The one write: make the source refuse new write transactions, then wait for the
    transactions that already hold an xid."""
    conn = await asyncpg.connect(
        **dict(src_ep.kwargs), server_settings={"application_name": "replverify-gate"}
    )
    try:
        for sql in FENCE_SQL:
            await conn.execute(sql)
        report.fenced = True
        report.notes.append(
            "the source was fenced (ALTER SYSTEM SET default_transaction_read_only = on; "
            f"pg_reload_conf()); to undo: {UNFENCE_SQL}"
        )
        deadline = time.monotonic() + timeout
        while await conn.fetchval(_WRITERS_SQL):
            if time.monotonic() > deadline:
                report.notes.append("write transactions were still open on the source")
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def _wait(
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    report: GateReport,
    timeout: float,
    progress: Progress | None,
    poll_interval: float,
) -> None:
    started = time.monotonic()
    while True:
        report.source_lsn = int(await src.fetchval(_POSITIONS_SOURCE))
        row = await tgt.fetchrow(_POSITIONS_TARGET)
        assert row is not None
        report.replay_lsn = None if row["replay"] is None else int(row["replay"])
        report.replay_paused = row["paused"]
        report.waited_s = time.monotonic() - started
        lag = report.lag_bytes
        if lag == 0:
            report.caught_up = True
            return
        if progress is not None:
            progress(lag or 0, report.waited_s)
        if report.waited_s >= timeout:
            return
        await asyncio.sleep(min(poll_interval, max(timeout - report.waited_s, 0.0)))
