"""``replverify health``: signs of a problem with a primary and its standby, one finding
per line (ok / warn / fail).

Checks: each side reachable; which side is in recovery (exactly the target should be);
how the target relates to the source (:func:`replverify.lag.relation.classify`); the
target's WAL receiver; the source's replication slot for it; replay paused; lag (bytes
and seconds) against an RPO; and timelines (a primary's from its current WAL file name, a
standby's from ``pg_stat_wal_receiver.received_tli`` or ``pg_control_checkpoint()``).

A target that subscribes to the source through logical replication (an upgrade, a
blue/green switch) is checked as such: both sides take writes, and what matters is the
subscription (enabled, its apply worker running), the source's logical slot for it
(active), and the lag from that slot; WAL receiver, replay and timelines belong to
physical standbys and are not checked.

Read-only: it uses replverify's read-only sessions. Exit codes (CLI): 0 every finding
ok, 1 a warning or failure, 2 something could not be checked (a side unreachable).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from replverify.db import catalog
from replverify.db.connect import DB_ERRORS, Endpoint, connect
from replverify.errors import ReplverifyError
from replverify.lag.estimate import LsnHistory
from replverify.lag.model import LagSample, ReplicationState
from replverify.lag.probe import slot_sample, source_facts, target_facts
from replverify.lag.relation import classify
from replverify.lag.sampler import snapshot

__all__ = ["Finding", "HealthReport", "health"]
Level = Literal["ok", "warn", "fail"]

_TIMELINE_SQL = """\
SELECT CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END AS tli"""


@dataclass(frozen=True)
class Finding:
    # reachability, recovery, replication, wal_receiver, subscription, slot, replay, lag,
    # timeline
    check: str
    level: Level
    message: str
    side: str = ""  # "source", "target" or "" (the pair)


@dataclass
class HealthReport:
    source: str
    target: str
    rpo_seconds: float | None
    findings: list[Finding] = field(default_factory=list)
    #: False when something could not be checked (exit 2)
    complete: bool = True
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    timelines: dict[str, int | None] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def status(self) -> Literal["ok", "problem", "unknown"]:
        if not self.complete:
            return "unknown"
        return "ok" if all(f.level == "ok" for f in self.findings) else "problem"

    def add(self, check: str, level: Level, message: str, side: str = "") -> None:
        self.findings.append(Finding(check, level, message, side))


async def _timeline(conn: asyncpg.Connection) -> int | None:
    value = await conn.fetchval(_TIMELINE_SQL)
    return None if value is None else int(value)


async def health(source: str, target: str, *, rpo: float | None = None) -> HealthReport:
    """Check ``source`` (the primary) and ``target`` (its standby); problems are findings.

    Raises :class:`~replverify.errors.UsageError` only for a malformed DSN or RPO.
    """
    from replverify.errors import UsageError

    if rpo is not None and rpo < 0:
        raise UsageError("--rpo must not be negative")
    started = time.perf_counter()
    src_ep, tgt_ep = Endpoint.parse(source), Endpoint.parse(target)
    report = HealthReport(str(src_ep), str(tgt_ep), rpo)
    opened = await asyncio.gather(connect(src_ep), connect(tgt_ep), return_exceptions=True)
    conns = [c for c in opened if isinstance(c, asyncpg.Connection)]
    try:
        for side, c in zip(("source", "target"), opened, strict=True):
            if isinstance(c, ReplverifyError):
                report.add("reachability", "fail", str(c), side)
                report.complete = False
            elif isinstance(c, BaseException):
                raise c
            else:
                report.add("reachability", "ok", "reachable", side)
        if report.complete:
            src, tgt = opened
            assert isinstance(src, asyncpg.Connection) and isinstance(tgt, asyncpg.Connection)
            try:
                # A server checked against itself is a mistake, not a finding: exit 2.
                catalog.refuse_same_database(
                    await catalog.server_info(src), await catalog.server_info(tgt), src_ep,
                    tgt_ep, "SOURCE and TARGET", option="",
                )  # fmt: skip
                await _check_pair(report, src, tgt, src_ep)
            except DB_ERRORS as e:
                report.add("query", "fail", src_ep.scrub(tgt_ep.scrub(f"check failed: {e}")))
                report.complete = False
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    report.elapsed_s = time.perf_counter() - started
    return report


async def _check_pair(
    report: HealthReport, src: asyncpg.Connection, tgt: asyncpg.Connection, src_ep: Endpoint
) -> None:
    facts = await source_facts(src, src_ep)
    state = classify(facts, await target_facts(tgt))
    _recovery(report, state)
    _relation(report, state)
    if state.relation == "subscriber":
        _subscription(report, state)
        _slot(report, state)
        await _lag(report, src, tgt, state)
        return
    _receiver(report, state)
    if state.slot is None and state.receiver is None and state.target_in_recovery:
        # no receiver to name its slot: the target's configured primary_slot_name does
        name = await tgt.fetchval("SELECT current_setting('primary_slot_name', true)")
        found = next((x for x in facts.slots if name and x.name == name), None)
        state = dataclasses.replace(state, slot=found)
    _slot(report, state)
    if state.replay_paused:
        report.add("replay", "warn", "WAL replay is paused on the target", "target")
    elif state.target_in_recovery:
        report.add("replay", "ok", "WAL replay is running", "target")
    await _lag(report, src, tgt, state)
    s_tli, t_tli = await _timeline(src), await _timeline(tgt)
    report.timelines = {"source": s_tli, "target": t_tli}
    if s_tli is None or t_tli is None:
        report.add("timeline", "warn", f"timeline unknown (source {s_tli}, target {t_tli})")
    elif s_tli == t_tli:
        report.add("timeline", "ok", f"both on timeline {s_tli}")
    else:
        report.add(
            "timeline",
            "fail",
            f"timelines differ: source {s_tli}, target {t_tli} (a promotion happened on one "
            "side; the other follows an older or another history)",
        )


def _recovery(report: HealthReport, state: ReplicationState) -> None:
    s, t = state.source_in_recovery, state.target_in_recovery
    if state.relation == "subscriber" and not s:
        report.add(
            "recovery",
            "ok",
            "the source is a primary; the target is a logical replication subscriber (not "
            "in recovery: it takes writes of its own too)",
        )
    elif not s and t:
        report.add("recovery", "ok", "the source is a primary, the target is in recovery")
    elif not s and not t:
        report.add(
            "recovery",
            "fail",
            "both sides are primaries (not in recovery): both may accept writes (split brain, "
            "or the target was promoted)",
        )
    elif s and t:
        report.add("recovery", "warn", "both sides are in recovery: neither accepts writes")
    else:
        report.add(
            "recovery",
            "fail",
            "the source is in recovery and the target is a primary: the roles are swapped",
        )


def _relation(report: HealthReport, state: ReplicationState) -> None:
    level: Level = {
        "streaming": "ok",
        "standby": "warn",
        "disconnected": "fail",
    }.get(state.relation, "fail")  # type: ignore[assignment]
    sub = state.subscription
    if state.relation == "subscriber" and sub is not None:
        level = "ok" if sub.enabled and sub.worker_pid is not None else "fail"
    report.add("replication", level, state.description)


def _subscription(report: HealthReport, state: ReplicationState) -> None:
    sub = state.subscription
    assert sub is not None
    if not sub.enabled:
        report.add(
            "subscription",
            "fail",
            f"subscription {sub.name!r} is disabled: nothing is applied "
            f"(ALTER SUBSCRIPTION {sub.name} ENABLE)",
            "target",
        )
    elif sub.worker_pid is None:
        report.add(
            "subscription",
            "fail",
            f"subscription {sub.name!r} is enabled but no apply worker runs: it is failing "
            "(a conflict, the source unreachable, a missing table; see the target's log)",
            "target",
        )
    else:
        report.add(
            "subscription",
            "ok",
            f"subscription {sub.name!r} is enabled, its apply worker (pid {sub.worker_pid}) "
            "is running",
            "target",
        )


def _receiver(report: HealthReport, state: ReplicationState) -> None:
    if not state.target_in_recovery:
        return
    rcv = state.receiver
    if rcv is None:
        report.add(
            "wal_receiver",
            "fail",
            "no WAL receiver is running on the target (primary_conninfo empty or the "
            "upstream unreachable): it is not receiving WAL",
            "target",
        )
    elif rcv.status != "streaming":
        report.add("wal_receiver", "fail", f"the WAL receiver is {rcv.status}", "target")
    else:
        upstream = f"{rcv.sender_host}:{rcv.sender_port}" if rcv.sender_host else "upstream"
        report.add("wal_receiver", "ok", f"the WAL receiver is streaming from {upstream}", "target")


def _slot(report: HealthReport, state: ReplicationState) -> None:
    slot = state.slot
    rcv = state.receiver
    if slot is None:
        if rcv is not None and rcv.slot_name:
            report.add(
                "slot",
                "fail",
                f"the target uses slot {rcv.slot_name!r}, which the source does not have",
                "source",
            )
        elif state.target_in_recovery:
            report.add(
                "slot",
                "warn",
                "no replication slot identified for the target: the source may remove WAL "
                "the target still needs",
                "source",
            )
        return
    if slot.wal_status == "lost":
        report.add("slot", "fail", f"slot {slot.name!r}: required WAL was removed", "source")
    elif slot.wal_status == "unreserved":
        report.add("slot", "warn", f"slot {slot.name!r}: WAL about to be removed", "source")
    elif not slot.active:
        report.add(
            "slot",
            "warn",
            f"slot {slot.name!r} is inactive: it retains WAL on the source while the "
            "standby is not connected",
            "source",
        )
    else:
        report.add("slot", "ok", f"slot {slot.name!r} is active ({slot.wal_status})", "source")


async def _lag(
    report: HealthReport, src: asyncpg.Connection, tgt: asyncpg.Connection, state: ReplicationState
) -> None:
    sample: LagSample | None
    if state.logical and state.slot is not None:
        sample = await slot_sample(src, state.slot.name)
    elif not state.target_in_recovery or state.relation == "other_cluster":
        report.add(
            "lag",
            "fail",
            "lag cannot be measured: the target is neither a standby nor a subscriber of "
            "the source",
        )
        return
    else:
        sample = await snapshot(src, tgt, history=LsnHistory())
    if sample is None:
        report.add("lag", "fail", "lag cannot be measured")
        return
    report.lag_bytes, report.lag_seconds = sample.lag_bytes, sample.lag_seconds
    text = f"{sample.lag_bytes:,} bytes, {sample.lag_seconds:.3f} s ({sample.method})"
    if report.rpo_seconds is None:
        report.add("lag", "ok", f"lag {text}; no RPO given")
    elif sample.lag_seconds <= report.rpo_seconds:
        report.add("lag", "ok", f"lag {text}, within the RPO of {report.rpo_seconds:g} s")
    else:
        report.add("lag", "fail", f"lag {text} exceeds the RPO of {report.rpo_seconds:g} s")
