"""Replication lag: how far a target is behind its source, in WAL bytes and in seconds.

>>> report = await measure_lag("postgresql://app@db1/shop", "postgresql://app@db2/shop",
...                            samples=5, interval=1.0, rpo=30)
>>> report.max_lag_seconds, report.max_lag_bytes, report.within_rpo
(0.0, 0, True)

**Bytes** are the LSN distance between what the source has written
(``pg_current_wal_lsn()``) and what the target has replayed (``pg_last_wal_replay_lsn()``),
both turned into integers by PostgreSQL (``pg_wal_lsn_diff(lsn, '0/0')``), one fixed-shape
query per side per sample, the source read first. A target that has replayed at least
what the source had written is caught up: 0 bytes, 0 seconds.

**Seconds** are the age of the oldest change the target has not replayed: *now* minus the
moment the source wrote past the target's replay position. The sampler polls the
source's WAL position several times per sample interval (``poll_interval``) and keeps a
history of (time, LSN) points; the moment is interpolated between the two points around
the replay position (method ``lsn-history``, resolution about one poll). When the target
was already behind before the history began, the fallback is the source's clock minus
``pg_last_xact_replay_timestamp()`` (method ``replay-timestamp``, an *upper* bound: it also
counts any idle time before the first change not replayed); when the target has not
replayed any commit since it started, only the lower bound "behind since the history
began" is known (``history-bound``). Neither ``pg_stat_replication.replay_lag`` (NULL on an
idle pair, frozen while replay is stuck) nor ``now() - pg_last_xact_replay_timestamp()``
alone (grows on an idle pair) is used as the lag; they are reported as context only.

**Clocks.** Every time in a sample comes from the *source's* clock
(``clock_timestamp()`` on the source; commit timestamps in the WAL and heartbeat rows are
written by the source too), so neither this machine's nor the target's clock needs to
be in sync with the source.

**Logical subscribers** (e.g. an upgrade: PostgreSQL 18 subscribed to 15): a target that
is not in recovery but has a subscription whose slot is a logical slot of the source's
database is a ``subscriber``. Its bytes are the source's WAL position minus the slot's
``confirmed_flush_lsn`` (what the subscriber has applied and flushed, as it told the
source), read in one query on the source; its seconds come from the same LSN history
(method ``slot-lsn-history``), or, when the slot was behind before the history began, the
lower bound "behind since the history began" (``slot-history-bound``). The slot confirms
past WAL of other databases and unpublished tables only when the source's WAL sender has
read it, so a subscriber shows a few hundred bytes and well under a second of lag for a
moment after such writes. Nothing is written; ``heartbeat=True`` measures through the
heartbeat row instead.

**Heartbeat** (``heartbeat=True``, for targets that are not physical standbys, e.g.
logical replication): the ONE write replverify makes. On the source it creates, if
missing::

    CREATE SCHEMA IF NOT EXISTS replverify;
    CREATE TABLE IF NOT EXISTS replverify.heartbeat (
        id  int PRIMARY KEY,          -- always 1
        at  timestamptz NOT NULL,     -- the source's clock_timestamp() at the write
        lsn pg_lsn                    -- the source's pg_current_wal_lsn() at the write
    );

and upserts row ``id = 1`` on every poll, in an explicit ``BEGIN ... READ WRITE``
transaction on a connection of its own (every other connection replverify opens is
``default_transaction_read_only``). The target must have the same table and receive the
row (a logical replication tool does not copy DDL: create it there and add it to the
publication). A sample reads the row on the target: if it shows the last heartbeat
written, the lag is 0; otherwise it is the source's clock now minus the ``at`` the target
shows (an upper bound, by at most one poll), and the bytes are the source's WAL written
since that heartbeat. Without ``heartbeat=True`` nothing is written anywhere.

Everything below the "pure" line is free of I/O and tested without a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import math
import time
import urllib.parse
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal

import asyncpg

from replverify.db.catalog import refuse_same_database, server_info
from replverify.db.connect import DB_ERRORS, Endpoint, connect, trouble
from replverify.errors import ReplverifyError, UsageError
from replverify.values.lsn import parse_lsn

__all__ = [
    "HEARTBEAT_DDL",
    "HEARTBEAT_TABLE",
    "LAG_SCHEMA",
    "METHODS",
    "HeartbeatWrite",
    "LagReport",
    "LagSample",
    "LagSampler",
    "LsnHistory",
    "Method",
    "ReplicationSlot",
    "ReplicationState",
    "SourceFacts",
    "SourceReading",
    "Subscription",
    "TargetFacts",
    "TargetReading",
    "WalReceiver",
    "WalSender",
    "classify",
    "conninfo_host_port",
    "default_poll_interval",
    "ensure_heartbeat_table",
    "judge",
    "lag_from_heartbeat",
    "lag_from_lsn",
    "lag_from_slot",
    "match_subscription",
    "measure_lag",
    "percentile",
    "read_source",
    "read_target",
    "replication_state",
    "slot_sample",
    "snapshot",
    "source_facts",
    "target_facts",
    "write_heartbeat",
]

LAG_SCHEMA = "replverify.lag/1"

Method = Literal[
    "caught-up",
    "lsn-history",
    "replay-timestamp",
    "history-bound",
    "heartbeat",
    "heartbeat-missing",
    "slot-lsn-history",
    "slot-history-bound",
]

#: What each ``method`` of a sample means (shown in reports).
METHODS: dict[Method, str] = {
    "caught-up": "the target has replayed everything the source had written: 0 s",
    "lsn-history": "now minus when the source wrote past the target's replay position, "
    "interpolated from the source's WAL positions polled between samples",
    "replay-timestamp": "the source's clock minus the target's last replayed commit "
    "(pg_last_xact_replay_timestamp): an upper bound, the target was already behind before "
    "sampling began",
    "history-bound": "a lower bound: the target has been behind since sampling began and "
    "has replayed no commit since it started",
    "heartbeat": "0 when the target shows the last heartbeat written, else the source's "
    "clock minus the heartbeat time the target shows",
    "heartbeat-missing": "a lower bound: the target shows no heartbeat row yet",
    "slot-lsn-history": "a logical subscriber: now minus when the source wrote past its "
    "slot's confirmed_flush_lsn (applied and flushed by the subscriber), interpolated from "
    "the source's WAL positions polled between samples",
    "slot-history-bound": "a lower bound: the subscriber's slot has been behind since "
    "sampling began",
}

Bound = Literal["estimate", "upper", "lower"]
_BOUNDS: dict[Method, Bound] = {
    "caught-up": "estimate",
    "lsn-history": "estimate",
    "replay-timestamp": "upper",
    "history-bound": "lower",
    "heartbeat": "estimate",
    "heartbeat-missing": "lower",
    "slot-lsn-history": "estimate",
    "slot-history-bound": "lower",
}

Relation = Literal[
    "streaming", "standby", "disconnected", "not_standby", "other_cluster", "subscriber"
]

HEARTBEAT_TABLE = "replverify.heartbeat"
HEARTBEAT_DDL = """\
CREATE SCHEMA IF NOT EXISTS replverify;
CREATE TABLE IF NOT EXISTS replverify.heartbeat (
    id  int PRIMARY KEY,
    at  timestamptz NOT NULL,
    lsn pg_lsn
);"""


# ======================================================================= records (pure)


@dataclass(frozen=True)
class LagSample:
    """One measurement. ``at`` is the source's clock; LSNs are byte positions."""

    at: datetime
    lag_bytes: int
    lag_seconds: float
    method: Method
    source_lsn: int
    replay_lsn: int | None = None
    receive_lsn: int | None = None
    replay_paused: bool | None = None
    heartbeat_at: datetime | None = None

    @property
    def bound(self) -> Bound:
        """Whether ``lag_seconds`` is an estimate, an upper or a lower bound."""
        return _BOUNDS[self.method]


@dataclass(frozen=True)
class WalSender:
    """A row of ``pg_stat_replication`` on the source (positions as LSN integers)."""

    pid: int
    application_name: str
    client_addr: str | None
    client_port: int | None
    state: str | None
    sync_state: str | None
    sent_lsn: int | None = None
    write_lsn: int | None = None
    flush_lsn: int | None = None
    replay_lsn: int | None = None
    write_lag: float | None = None
    flush_lag: float | None = None
    replay_lag: float | None = None


@dataclass(frozen=True)
class ReplicationSlot:
    """A row of ``pg_replication_slots`` on the source."""

    name: str
    type: str
    active: bool
    active_pid: int | None
    restart_lsn: int | None
    wal_status: str | None = None
    #: logical slots: what the subscriber has confirmed (applied and flushed)
    confirmed_flush_lsn: int | None = None
    #: logical slots: the database they decode
    database: str | None = None


@dataclass(frozen=True)
class WalReceiver:
    """The row of ``pg_stat_wal_receiver`` on the target (absent when none runs)."""

    status: str | None
    sender_host: str | None
    sender_port: int | None
    slot_name: str | None
    written_lsn: int | None = None
    flushed_lsn: int | None = None
    latest_end_lsn: int | None = None
    last_msg_receipt_time: datetime | None = None


@dataclass(frozen=True)
class Subscription:
    """A logical replication subscription on the target (``pg_subscription`` with its
    apply worker from ``pg_stat_subscription``)."""

    name: str
    enabled: bool
    slot_name: str | None
    #: the apply worker's pid; None when no worker runs (disabled, or failing)
    worker_pid: int | None = None
    received_lsn: int | None = None
    #: host and port of ``subconninfo`` (readable by superusers only, else None)
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class SourceFacts:
    """What the source says about itself and its replicas."""

    in_recovery: bool
    system_id: str | None
    port: int | None = None
    #: Names the source may go by in a standby's ``primary_conninfo``.
    addresses: frozenset[str] = frozenset()
    senders: tuple[WalSender, ...] = ()
    slots: tuple[ReplicationSlot, ...] = ()
    #: the database connected to (a logical slot decodes one database)
    database: str | None = None


@dataclass(frozen=True)
class TargetFacts:
    """What the target says about itself."""

    in_recovery: bool
    system_id: str | None
    cluster_name: str = ""
    receiver: WalReceiver | None = None
    replay_paused: bool | None = None
    subscriptions: tuple[Subscription, ...] = ()


@dataclass(frozen=True)
class ReplicationState:
    """How the target relates to the source, and the replication views that say so."""

    relation: Relation
    description: str
    source_system_id: str | None = None
    target_system_id: str | None = None
    source_in_recovery: bool = False
    target_in_recovery: bool = False
    sender: WalSender | None = None
    slot: ReplicationSlot | None = None
    receiver: WalReceiver | None = None
    replay_paused: bool | None = None
    #: the target's subscription to the source (relation ``subscriber``)
    subscription: Subscription | None = None

    @property
    def physical(self) -> bool:
        """The target replays the source's WAL stream, so LSN distances mean something."""
        return self.relation in ("streaming", "standby", "disconnected")

    @property
    def logical(self) -> bool:
        """The target subscribes to the source: its slot's position measures the lag."""
        return self.relation == "subscriber" and self.slot is not None


@dataclass(frozen=True)
class LagReport:
    """Samples over time, their summary, and the RPO verdict."""

    source: str
    target: str
    samples: tuple[LagSample, ...]
    replication: ReplicationState
    rpo_seconds: float | None = None
    interval_s: float = 1.0
    poll_interval_s: float = 0.2
    heartbeat: bool = False
    #: Sampling ended early (``stop`` was set, e.g. Ctrl-C in ``--watch``).
    interrupted: bool = False
    notes: tuple[str, ...] = ()

    @property
    def max_lag_seconds(self) -> float | None:
        return max((s.lag_seconds for s in self.samples), default=None)

    @property
    def max_lag_bytes(self) -> int | None:
        return max((s.lag_bytes for s in self.samples), default=None)

    @property
    def p50_lag_seconds(self) -> float | None:
        return percentile([s.lag_seconds for s in self.samples], 50)

    @property
    def p95_lag_seconds(self) -> float | None:
        return percentile([s.lag_seconds for s in self.samples], 95)

    @property
    def within_rpo(self) -> bool | None:
        return judge(self.samples, self.rpo_seconds)

    @property
    def status(self) -> Literal["within", "exceeded", "unknown", "measured"]:
        """``within``/``exceeded`` the RPO; ``measured`` without one; ``unknown`` when
        nothing was sampled or the RPO could not be judged."""
        if not self.samples:
            return "unknown"
        if self.rpo_seconds is None:
            return "measured"
        within = self.within_rpo
        if within is None:
            return "unknown"
        return "within" if within else "exceeded"


# ======================================================================= pure logic


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks
    (as numpy's default); None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, not {q}")
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def judge(samples: Sequence[LagSample], rpo: float | None) -> bool | None:
    """Were all samples within ``rpo`` seconds? None when there is no RPO or no sample, or
    when the answer rests on a lower bound.

    Any sample above the RPO exceeds it, also an upper bound (``replay-timestamp``): the
    judge errs towards the alarm. A lower bound (``history-bound``, ``heartbeat-missing``)
    within the RPO proves nothing, so then the verdict is None, never "within".
    """
    if rpo is None or not samples:
        return None
    if any(s.lag_seconds > rpo for s in samples):
        return False
    if any(s.bound == "lower" for s in samples):
        return None
    return True


class LsnHistory:
    """When the source was at which WAL position: (time, LSN) points, oldest first.

    Times are seconds (the source's clock as a POSIX timestamp). A run of polls at the
    same position keeps only its first and last point; past ``max_points`` the older half
    is thinned to every other point, which only widens the brackets interpolation uses.
    """

    def __init__(self, max_points: int = 4096) -> None:
        if max_points < 4:
            raise ValueError("an LSN history needs room for at least 4 points")
        self.max_points = max_points
        self._points: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._points)

    @property
    def points(self) -> tuple[tuple[float, int], ...]:
        return tuple(self._points)

    @property
    def oldest(self) -> tuple[float, int] | None:
        return self._points[0] if self._points else None

    def add(self, at: float, lsn: int) -> None:
        """Record that the source was at ``lsn`` at time ``at``.

        A point older than the newest is ignored (the clock stepped back); a position
        behind the newest (another timeline or server) starts the history over.
        """
        pts = self._points
        if pts:
            last_at, last_lsn = pts[-1]
            if at < last_at:
                return
            if lsn < last_lsn:
                pts.clear()
            elif lsn == last_lsn and len(pts) >= 2 and pts[-2][1] == lsn:
                pts[-1] = (at, lsn)
                return
        pts.append((at, lsn))
        if len(pts) > self.max_points:
            half = len(pts) // 2
            self._points = pts[:half:2] + pts[half:]

    def passed(self, lsn: int) -> float | None:
        """The estimated time the source wrote past ``lsn``; None when the history does
        not bracket it (it was passed before the oldest point, or not yet).

        Between the last point at or before ``lsn`` and the next one the source is
        assumed to have written at a steady rate.
        """
        pts = self._points
        if not pts or lsn < pts[0][1] or lsn >= pts[-1][1]:
            return None
        i = bisect_right(pts, lsn, key=lambda p: p[1]) - 1
        (t0, l0), (t1, l1) = pts[i], pts[i + 1]
        return t0 + (t1 - t0) * (lsn - l0) / (l1 - l0)


@dataclass(frozen=True)
class SourceReading:
    """The source's WAL position and clock at one moment."""

    at: datetime
    lsn: int


@dataclass(frozen=True)
class TargetReading:
    """What the target reported for one sample."""

    at: datetime
    in_recovery: bool
    replay_lsn: int | None
    receive_lsn: int | None = None
    replay_timestamp: datetime | None = None
    replay_paused: bool | None = None
    heartbeat_at: datetime | None = None
    heartbeat_lsn: int | None = None


@dataclass(frozen=True)
class HeartbeatWrite:
    """A heartbeat written on the source: its ``at`` (source clock) and WAL position."""

    at: datetime
    lsn: int


def lag_from_lsn(source: SourceReading, target: TargetReading, history: LsnHistory) -> LagSample:
    """A sample of a physical standby from the source's reading (already in ``history``)
    and the target's, read just after it. See the module docstring for the methods."""
    replay = target.replay_lsn
    if replay is None:
        raise ValueError("the target reports no replay position: it is not in recovery")
    now = source.at.timestamp()
    behind = source.lsn - replay
    method: Method
    if behind <= 0:
        seconds, method = 0.0, "caught-up"
    elif (passed := history.passed(replay)) is not None:
        seconds, method = now - passed, "lsn-history"
    else:
        oldest = history.oldest
        floor = now - oldest[0] if oldest is not None and replay < oldest[1] else 0.0
        if target.replay_timestamp is not None:
            seconds = max(now - target.replay_timestamp.timestamp(), floor)
            method = "replay-timestamp"
        else:
            seconds, method = floor, "history-bound"
    return LagSample(
        at=source.at,
        lag_bytes=max(behind, 0),
        lag_seconds=max(seconds, 0.0),
        method=method,
        source_lsn=source.lsn,
        replay_lsn=replay,
        receive_lsn=target.receive_lsn,
        replay_paused=target.replay_paused,
    )


def lag_from_heartbeat(
    source: SourceReading,
    target: TargetReading,
    last_written: HeartbeatWrite | None,
    first_written: HeartbeatWrite | None = None,
) -> LagSample:
    """A heartbeat sample: 0 when the target shows ``last_written`` (or a later one),
    else the source's clock minus the heartbeat the target shows; bytes are the source's
    WAL written since that heartbeat. No row on the target: a lower bound, counted from
    ``first_written``."""
    visible = target.heartbeat_at
    method: Method = "heartbeat"
    if visible is None:
        method = "heartbeat-missing"
        seconds = (source.at - first_written.at).total_seconds() if first_written else 0.0
        nbytes = source.lsn - first_written.lsn if first_written else 0
    elif last_written is None or visible >= last_written.at:
        seconds, nbytes = 0.0, 0
    else:
        seconds = (source.at - visible).total_seconds()
        nbytes = source.lsn - target.heartbeat_lsn if target.heartbeat_lsn is not None else 0
    return LagSample(
        at=source.at,
        lag_bytes=max(nbytes, 0),
        lag_seconds=max(seconds, 0.0),
        method=method,
        source_lsn=source.lsn,
        replay_lsn=target.replay_lsn,
        receive_lsn=target.receive_lsn,
        replay_paused=target.replay_paused,
        heartbeat_at=visible,
    )


def lag_from_slot(source: SourceReading, confirmed: int | None, history: LsnHistory) -> LagSample:
    """A sample of a logical subscriber from the source's reading (already in ``history``)
    and its slot's ``confirmed_flush_lsn``, read in the same query (None: the slot has
    confirmed nothing yet, so it is behind everything in the history)."""
    now = source.at.timestamp()
    position = confirmed if confirmed is not None else 0
    behind = source.lsn - position
    method: Method
    if behind <= 0:
        seconds, method = 0.0, "caught-up"
    elif (passed := history.passed(position)) is not None:
        seconds, method = now - passed, "slot-lsn-history"
    else:
        oldest = history.oldest
        seconds = now - oldest[0] if oldest is not None and position < oldest[1] else 0.0
        method = "slot-history-bound"
    return LagSample(
        at=source.at,
        lag_bytes=max(behind, 0),
        lag_seconds=max(seconds, 0.0),
        method=method,
        source_lsn=source.lsn,
        replay_lsn=confirmed,
    )


def match_subscription(
    source: SourceFacts, target: TargetFacts
) -> tuple[Subscription | None, ReplicationSlot | None]:
    """The target's subscription to the source and the source's logical slot for it: the
    slot of the subscription's name, decoding the source's database, and (when the
    target lets us read ``subconninfo``) a connection to the source's port."""
    for sub in sorted(target.subscriptions, key=lambda x: not x.enabled):
        slot = next(
            (
                s
                for s in source.slots
                if s.type == "logical" and sub.slot_name and s.name == sub.slot_name
            ),
            None,
        )
        if slot is None:
            continue
        if source.database and slot.database and slot.database != source.database:
            continue
        if sub.port is not None and source.port is not None and sub.port != source.port:
            continue
        return sub, slot
    return None, None


def _subscriber_description(sub: Subscription, slot: ReplicationSlot) -> str:
    if not sub.enabled:
        state = (
            "is disabled (ALTER SUBSCRIPTION ... DISABLE): the target falls behind as the "
            "source writes"
        )
    elif sub.worker_pid is None:
        state = "is enabled but no apply worker runs (see the target's log): it falls behind"
    else:
        state = f"is enabled, its apply worker (pid {sub.worker_pid}) running"
    return (
        f"the target is a logical replication subscriber of the source: subscription "
        f"{sub.name!r} {state}; logical slot {slot.name!r} on the source is "
        f"{'active' if slot.active else 'inactive'}"
    )


def _match_sender(
    source: SourceFacts, target: TargetFacts
) -> tuple[WalSender | None, ReplicationSlot | None, bool]:
    """The source's WAL sender feeding the target, its slot, and whether the target's
    receiver names the source's address."""
    rcv = target.receiver
    if rcv is None:
        return None, None, False
    slot = next((s for s in source.slots if rcv.slot_name and s.name == rcv.slot_name), None)
    if slot is not None and slot.active_pid is not None:
        sender = next((w for w in source.senders if w.pid == slot.active_pid), None)
        if sender is not None:
            return sender, slot, True
    host = rcv.sender_host or ""
    names_source = (
        rcv.sender_port is not None
        and rcv.sender_port == source.port
        and (host.startswith("/") or host in source.addresses or not source.addresses)
    )
    if not names_source:
        return None, None, False
    name = target.cluster_name
    by_name = [w for w in source.senders if name and w.application_name == name]
    candidates = by_name or (list(source.senders) if len(source.senders) == 1 else [])
    return (candidates[0] if len(candidates) == 1 else None), slot, True


def classify(source: SourceFacts, target: TargetFacts) -> ReplicationState:
    """How the target relates to the source: a streaming standby of it, a standby of the
    same cluster fed from elsewhere or cut off, or not a physical standby at all."""

    def state(
        relation: Relation,
        description: str,
        sender: WalSender | None = None,
        slot: ReplicationSlot | None = None,
    ) -> ReplicationState:
        return ReplicationState(
            relation,
            description,
            source_system_id=source.system_id,
            target_system_id=target.system_id,
            source_in_recovery=source.in_recovery,
            target_in_recovery=target.in_recovery,
            sender=sender,
            slot=slot,
            receiver=target.receiver,
            replay_paused=target.replay_paused,
        )

    if not target.in_recovery:
        sub, logical_slot = match_subscription(source, target)
        if sub is not None and logical_slot is not None:
            sender = next((w for w in source.senders if w.pid == logical_slot.active_pid), None)
            return dataclasses.replace(
                state("subscriber", _subscriber_description(sub, logical_slot), sender),
                slot=logical_slot,
                subscription=sub,
            )
        return state(
            "not_standby",
            "the target is not a physical standby: it is not in recovery (a primary, "
            "or a promoted standby)",
        )
    if source.system_id and target.system_id and source.system_id != target.system_id:
        return state(
            "other_cluster",
            f"the target is a standby of another cluster: system identifier "
            f"{target.system_id}, the source's is {source.system_id}",
        )
    unsure = "" if source.system_id and target.system_id else " (system identifiers unknown)"
    rcv = target.receiver
    if rcv is None or rcv.status not in ("streaming", None):
        what = f"WAL receiver {rcv.status}" if rcv else "no WAL receiver"
        return state(
            "disconnected",
            f"the target is a standby of the source's cluster{unsure} but is not receiving "
            f"WAL ({what}): it falls behind as the source writes",
        )
    sender, slot, names_source = _match_sender(source, target)
    if sender is None and not names_source:
        upstream = f"{rcv.sender_host}:{rcv.sender_port}" if rcv.sender_host else "elsewhere"
        return state(
            "standby",
            f"the target is a standby of the source's cluster{unsure}, streaming from "
            f"{upstream}, which is not recognisably the source (a cascading standby, or the "
            "source under another address); lag is still measured against the source's WAL",
            slot=slot,
        )
    via = f" via slot {slot.name}" if slot else " (no replication slot)"
    seen = (
        f"; the source's WAL sender {sender.application_name!r} is {sender.state}, "
        f"{sender.sync_state}"
        if sender
        else "; no matching row in the source's pg_stat_replication"
    )
    return state(
        "streaming",
        f"the target is a streaming standby of the source{unsure}{via}{seen}",
        sender=sender,
        slot=slot,
    )


# ======================================================================= I/O: queries

#: One poll of the source: its clock and WAL position (a standby's: its replay position).
SOURCE_SQL = """\
SELECT clock_timestamp() AS at,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                            ELSE pg_current_wal_lsn() END, '0/0') AS lsn"""

_TARGET_COLUMNS = """\
SELECT clock_timestamp() AS at,
       pg_is_in_recovery() AS in_recovery,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0') AS replay_lsn,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0') AS receive_lsn,
       pg_last_xact_replay_timestamp() AS replay_timestamp,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused"""

#: One sample of the target.
TARGET_SQL = _TARGET_COLUMNS
#: One sample of the target, with the heartbeat row it shows.
TARGET_HEARTBEAT_SQL = f"""{_TARGET_COLUMNS},
       hb.at AS heartbeat_at,
       pg_wal_lsn_diff(hb.lsn, '0/0') AS heartbeat_lsn
FROM (VALUES (1)) AS one (id)
LEFT JOIN replverify.heartbeat AS hb ON hb.id = one.id"""

HEARTBEAT_WRITE_SQL = """\
INSERT INTO replverify.heartbeat AS hb (id, at, lsn)
VALUES (1, clock_timestamp(), pg_current_wal_lsn())
ON CONFLICT (id) DO UPDATE SET at = excluded.at, lsn = excluded.lsn
RETURNING hb.at, pg_wal_lsn_diff(hb.lsn, '0/0') AS lsn"""

_SYSTEM_ID_SQL = "SELECT system_identifier::text FROM pg_control_system()"
_SOURCE_META_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       current_database() AS database,
       current_setting('port')::int AS port,
       host(inet_server_addr()) AS addr"""
_SENDERS_SQL = """\
SELECT pid, application_name, host(client_addr) AS client_addr, client_port,
       state, sync_state,
       pg_wal_lsn_diff(sent_lsn, '0/0') AS sent_lsn,
       pg_wal_lsn_diff(write_lsn, '0/0') AS write_lsn,
       pg_wal_lsn_diff(flush_lsn, '0/0') AS flush_lsn,
       pg_wal_lsn_diff(replay_lsn, '0/0') AS replay_lsn,
       extract(epoch FROM write_lag)::float8 AS write_lag,
       extract(epoch FROM flush_lag)::float8 AS flush_lag,
       extract(epoch FROM replay_lag)::float8 AS replay_lag
FROM pg_stat_replication
ORDER BY pid"""
_SLOTS_SQL = """\
SELECT slot_name, slot_type, active, active_pid,
       pg_wal_lsn_diff(restart_lsn, '0/0') AS restart_lsn,
       to_jsonb(s) ->> 'wal_status' AS wal_status,
       pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') AS confirmed_flush_lsn,
       database
FROM pg_replication_slots AS s
ORDER BY slot_name"""
#: One sample of a logical subscriber, read on the source: clock, WAL position and what
#: the subscription's slot has confirmed, in one snapshot.
SOURCE_SLOT_SQL = """\
SELECT clock_timestamp() AS at,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS lsn,
       (SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')
        FROM pg_replication_slots WHERE slot_name = $1) AS confirmed,
       EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1) AS slot_exists"""
# The leader apply worker only: table sync workers have a relid, parallel apply workers
# (16+) a leader_pid. subconninfo is readable by superusers only: tried separately.
_SUBSCRIPTIONS_SQL = """\
SELECT s.subname, s.subenabled, s.subslotname,
       w.pid AS worker_pid, pg_wal_lsn_diff(w.received_lsn, '0/0') AS received_lsn
FROM pg_subscription AS s
LEFT JOIN pg_stat_subscription AS w ON w.subid = s.oid AND w.relid IS NULL
  AND w.pid IS NOT NULL AND to_jsonb(w) ->> 'leader_pid' IS NULL
WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.subname"""
_CONNINFO_SQL = "SELECT subname, subconninfo FROM pg_subscription"
# to_jsonb: the LSN columns were renamed in PostgreSQL 13, sender_* appeared in 11.
_RECEIVER_SQL = """\
SELECT w.status, w.slot_name, w.last_msg_receipt_time,
       j ->> 'sender_host' AS sender_host,
       (j ->> 'sender_port')::int AS sender_port,
       j ->> 'written_lsn' AS written_lsn,
       coalesce(j ->> 'flushed_lsn', j ->> 'received_lsn') AS flushed_lsn,
       w.latest_end_lsn::text AS latest_end_lsn
FROM pg_stat_wal_receiver AS w, LATERAL to_jsonb(w) AS j"""
_TARGET_META_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('cluster_name') AS cluster_name,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused"""


def _int(value: Decimal | int | None) -> int | None:
    return None if value is None else int(value)


def _lsn_text(value: str | None) -> int | None:
    return None if value is None else parse_lsn(value)


async def read_source(conn: asyncpg.Connection) -> SourceReading:
    row = await conn.fetchrow(SOURCE_SQL)
    return SourceReading(at=row["at"], lsn=int(row["lsn"]))


async def read_target(conn: asyncpg.Connection, *, heartbeat: bool = False) -> TargetReading:
    row = await conn.fetchrow(TARGET_HEARTBEAT_SQL if heartbeat else TARGET_SQL)
    return TargetReading(
        at=row["at"],
        in_recovery=row["in_recovery"],
        replay_lsn=_int(row["replay_lsn"]),
        receive_lsn=_int(row["receive_lsn"]),
        replay_timestamp=row["replay_timestamp"],
        replay_paused=row["replay_paused"],
        heartbeat_at=row["heartbeat_at"] if heartbeat else None,
        heartbeat_lsn=_int(row["heartbeat_lsn"]) if heartbeat else None,
    )


async def _system_id(conn: asyncpg.Connection) -> str | None:
    try:
        value: str | None = await conn.fetchval(_SYSTEM_ID_SQL)
    except asyncpg.InsufficientPrivilegeError:
        return None
    return value


async def source_facts(conn: asyncpg.Connection, endpoint: Endpoint | None = None) -> SourceFacts:
    meta = await conn.fetchrow(_SOURCE_META_SQL)
    senders = tuple(
        WalSender(
            pid=r["pid"],
            application_name=r["application_name"] or "",
            client_addr=r["client_addr"],
            client_port=r["client_port"],
            state=r["state"],
            sync_state=r["sync_state"],
            sent_lsn=_int(r["sent_lsn"]),
            write_lsn=_int(r["write_lsn"]),
            flush_lsn=_int(r["flush_lsn"]),
            replay_lsn=_int(r["replay_lsn"]),
            write_lag=r["write_lag"],
            flush_lag=r["flush_lag"],
            replay_lag=r["replay_lag"],
        )
        for r in await conn.fetch(_SENDERS_SQL)
    )
    slots = tuple(
        ReplicationSlot(
            name=r["slot_name"],
            type=r["slot_type"],
            active=r["active"],
            active_pid=r["active_pid"],
            restart_lsn=_int(r["restart_lsn"]),
            wal_status=r["wal_status"],
            confirmed_flush_lsn=_int(r["confirmed_flush_lsn"]),
            database=r["database"],
        )
        for r in await conn.fetch(_SLOTS_SQL)
    )
    addresses = {a for a in (meta["addr"],) if a}
    if endpoint is not None:
        addresses.add(endpoint.address.rsplit(":", 1)[0].strip("[]"))
    if addresses & {"127.0.0.1", "::1", "localhost"}:
        addresses |= {"127.0.0.1", "::1", "localhost"}
    return SourceFacts(
        in_recovery=meta["in_recovery"],
        system_id=await _system_id(conn),
        port=meta["port"],
        addresses=frozenset(addresses),
        senders=senders,
        slots=slots,
        database=meta["database"],
    )


async def target_facts(conn: asyncpg.Connection) -> TargetFacts:
    meta = await conn.fetchrow(_TARGET_META_SQL)
    row = await conn.fetchrow(_RECEIVER_SQL)
    receiver = None
    if row is not None:
        receiver = WalReceiver(
            status=row["status"],
            sender_host=row["sender_host"],
            sender_port=row["sender_port"],
            slot_name=row["slot_name"],
            written_lsn=_lsn_text(row["written_lsn"]),
            flushed_lsn=_lsn_text(row["flushed_lsn"]),
            latest_end_lsn=_lsn_text(row["latest_end_lsn"]),
            last_msg_receipt_time=row["last_msg_receipt_time"],
        )
    return TargetFacts(
        in_recovery=meta["in_recovery"],
        system_id=await _system_id(conn),
        cluster_name=meta["cluster_name"] or "",
        receiver=receiver,
        replay_paused=meta["replay_paused"],
        subscriptions=() if meta["in_recovery"] else await _subscriptions(conn),
    )


async def _subscriptions(conn: asyncpg.Connection) -> tuple[Subscription, ...]:
    rows = await conn.fetch(_SUBSCRIPTIONS_SQL)
    if not rows:
        return ()
    where: dict[str, tuple[str | None, int | None]] = {}
    try:
        for r in await conn.fetch(_CONNINFO_SQL):
            where[r["subname"]] = conninfo_host_port(r["subconninfo"])
    except asyncpg.InsufficientPrivilegeError:
        pass  # not a superuser: subscriptions are matched by slot and database alone
    return tuple(
        Subscription(
            name=r["subname"],
            enabled=r["subenabled"],
            slot_name=r["subslotname"],
            worker_pid=r["worker_pid"],
            received_lsn=_int(r["received_lsn"]),
            host=where.get(r["subname"], (None, None))[0],
            port=where.get(r["subname"], (None, None))[1],
        )
        for r in rows
    )


def conninfo_host_port(conninfo: str | None) -> tuple[str | None, int | None]:
    """Host and port of a libpq conninfo (URL or key=value) as the subscriber reads it:
    no port means 5432; (None, None) when it names several or cannot be parsed."""
    if not conninfo:
        return None, None
    try:
        kw = dict(Endpoint.parse(conninfo).kwargs)
        if "dsn" in kw:
            url = urllib.parse.urlsplit(kw["dsn"])
            host: object = url.hostname
            port: object = url.port
        else:
            host, port = kw.get("host"), kw.get("port")
    except (ReplverifyError, ValueError):
        return None, None
    if isinstance(host, str) and "," in host:
        return None, None
    return (str(host) if host else None), int(str(port)) if port else 5432


async def replication_state(
    source: asyncpg.Connection, target: asyncpg.Connection, endpoint: Endpoint | None = None
) -> ReplicationState:
    """Read both sides' replication views and :func:`classify` the pair."""
    return classify(await source_facts(source, endpoint), await target_facts(target))


# ======================================================================= I/O: heartbeat


async def _read_write(
    conn: asyncpg.Connection, sql: str, *, fetch: bool = False
) -> asyncpg.Record | None:
    """Run ``sql`` in an explicit read-write transaction: replverify's connections are
    ``default_transaction_read_only``, and this is the one place that writes."""
    await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
    try:
        row: asyncpg.Record | None = None
        if fetch:
            row = await conn.fetchrow(sql)
        else:
            await conn.execute(sql)
        await conn.execute("COMMIT")
        return row
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(*DB_ERRORS):
                await conn.execute("ROLLBACK")
        raise


def _heartbeat_refused(e: asyncpg.PostgresError) -> UsageError:
    hint = (
        "the source must be a writable primary and the user may create the schema "
        f"replverify and write {HEARTBEAT_TABLE} (or create it beforehand:\n{HEARTBEAT_DDL})"
    )
    return UsageError(f"--heartbeat cannot write {HEARTBEAT_TABLE} on the source: {e}", hint=hint)


async def ensure_heartbeat_table(conn: asyncpg.Connection) -> None:
    """Create ``replverify.heartbeat`` on the source if missing (see :data:`HEARTBEAT_DDL`).

    ``conn`` may be read-only by default: the DDL runs in ``BEGIN ... READ WRITE``.
    """
    if await conn.fetchval("SELECT to_regclass('replverify.heartbeat') IS NOT NULL"):
        return
    try:
        await _read_write(conn, HEARTBEAT_DDL)
    except asyncpg.UniqueViolationError:
        pass  # created concurrently by another run
    except (asyncpg.ReadOnlySQLTransactionError, asyncpg.InsufficientPrivilegeError) as e:
        raise _heartbeat_refused(e) from e


async def write_heartbeat(conn: asyncpg.Connection) -> HeartbeatWrite:
    """Upsert heartbeat row 1 with the source's clock and WAL position; the one write.

    Runs in an explicit ``BEGIN ... READ WRITE`` transaction, so ``conn`` may be one of
    replverify's read-only-by-default connections (use one that does nothing else).
    """
    try:
        row = await _read_write(conn, HEARTBEAT_WRITE_SQL, fetch=True)
    except (asyncpg.ReadOnlySQLTransactionError, asyncpg.InsufficientPrivilegeError) as e:
        raise _heartbeat_refused(e) from e
    assert row is not None
    return HeartbeatWrite(at=row["at"], lsn=int(row["lsn"]))


# ======================================================================= I/O: sampling


class LagSampler:
    """Lag samples over open connections, keeping the source's LSN history in between.

    Call :meth:`poll` often between samples (it records the source's WAL position and,
    with a ``heartbeat`` writer connection, writes the heartbeat) and :meth:`sample` when
    a sample is due. Without a heartbeat writer the target must be a physical standby,
    or a logical subscriber whose slot on the source is ``slot``.
    """

    def __init__(
        self,
        source: asyncpg.Connection,
        target: asyncpg.Connection,
        *,
        heartbeat: asyncpg.Connection | None = None,
        history: LsnHistory | None = None,
        slot: str | None = None,
    ) -> None:
        self.source = source
        self.slot = slot
        self.target = target
        self.writer = heartbeat
        self.history = history if history is not None else LsnHistory()
        self.first_heartbeat: HeartbeatWrite | None = None
        self.last_heartbeat: HeartbeatWrite | None = None
        self._heartbeat_table = True

    async def poll(self) -> SourceReading:
        if self.writer is not None:
            beat = await write_heartbeat(self.writer)
            self.first_heartbeat = self.first_heartbeat or beat
            self.last_heartbeat = beat
        reading = await read_source(self.source)
        self.history.add(reading.at.timestamp(), reading.lsn)
        return reading

    async def sample(self) -> LagSample:
        if self.writer is None and self.slot is not None:
            return await slot_sample(self.source, self.slot, self.history)
        reading = await read_source(self.source)
        self.history.add(reading.at.timestamp(), reading.lsn)
        if self.writer is None:
            target = await read_target(self.target)
            if not target.in_recovery or target.replay_lsn is None:
                raise UsageError(
                    "the target is not (or no longer) a physical standby: it is not in "
                    "recovery (promoted?)",
                    hint="use --heartbeat to measure lag through a heartbeat row",
                )
            return lag_from_lsn(reading, target, self.history)
        try:
            target = await read_target(self.target, heartbeat=self._heartbeat_table)
        except asyncpg.UndefinedTableError:
            # A physical standby that has not replayed the CREATE TABLE yet.
            self._heartbeat_table = False
            target = await read_target(self.target)
        else:
            self._heartbeat_table = True
        return lag_from_heartbeat(reading, target, self.last_heartbeat, self.first_heartbeat)


async def snapshot(
    source: asyncpg.Connection, target: asyncpg.Connection, *, history: LsnHistory | None = None
) -> LagSample | None:
    """One lag sample of a physical standby, from two open connections (e.g. at the start
    and end of a diff); None when the target is not a standby of the source's cluster.

    Without a ``history`` a target that is behind gets ``replay-timestamp`` (an upper
    bound) or ``history-bound`` (0 s, a lower bound) seconds; bytes are exact.
    """
    reading = await read_source(source)
    tgt = await read_target(target)
    if not tgt.in_recovery or tgt.replay_lsn is None:
        return None
    src_id, tgt_id = await _system_id(source), await _system_id(target)
    if src_id and tgt_id and src_id != tgt_id:
        return None
    history = history if history is not None else LsnHistory()
    history.add(reading.at.timestamp(), reading.lsn)
    return lag_from_lsn(reading, tgt, history)


async def slot_sample(
    source: asyncpg.Connection, slot: str, history: LsnHistory | None = None
) -> LagSample:
    """One lag sample of a logical subscriber: the source's position against what its
    slot ``slot`` has confirmed, read together on the source."""
    row = await source.fetchrow(SOURCE_SLOT_SQL, slot)
    if not row["slot_exists"]:
        raise UsageError(
            f"the subscriber's replication slot {slot!r} no longer exists on the source",
            hint="the subscription was dropped or re-created; run lag again",
        )
    reading = SourceReading(at=row["at"], lsn=int(row["lsn"]))
    history = history if history is not None else LsnHistory()
    history.add(reading.at.timestamp(), reading.lsn)
    return lag_from_slot(reading, _int(row["confirmed"]), history)


#: ``on_sample(sample)``: a function or a coroutine function.
OnSample = Callable[[LagSample], object]


def _validate(samples: int | None, interval: float, rpo: float | None, poll: float) -> None:
    problems = []
    if samples is not None and samples < 1:
        problems.append("--samples must be at least 1")
    if not interval > 0:
        problems.append("--interval must be more than 0 seconds")
    if rpo is not None and not rpo >= 0:
        problems.append("--rpo must not be negative")
    if not poll > 0:
        problems.append("poll_interval must be more than 0 seconds")
    if problems:
        raise UsageError("; ".join(problems))


def default_poll_interval(interval: float) -> float:
    """Five polls per sample interval, between 0.05 and 0.25 s."""
    return max(0.05, min(0.25, interval / 5))


async def _stopped(stop: asyncio.Event | None, delay: float) -> bool:
    """Sleep ``delay`` seconds; True at once if ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


async def measure_lag(
    source: str,
    target: str,
    *,
    samples: int | None = 5,
    interval: float = 1.0,
    rpo: float | None = None,
    heartbeat: bool = False,
    on_sample: OnSample | None = None,
    stop: asyncio.Event | None = None,
    poll_interval: float | None = None,
) -> LagReport:
    """Sample the lag of ``target`` behind ``source`` ``samples`` times, ``interval``
    seconds apart (``samples=None``: until ``stop`` is set), and judge it against ``rpo``.

    ``on_sample(sample)`` (sync or async) is called after each sample. With
    ``heartbeat=True`` a heartbeat row is written on the source (see the module
    docstring); without it the target must be a physical standby of the source, else
    :class:`~replverify.errors.UsageError`. Unreachable servers raise
    :class:`~replverify.errors.ConnectError`; high lag is a result, never an exception.
    """
    poll = poll_interval if poll_interval is not None else default_poll_interval(interval)
    _validate(samples, interval, rpo, poll)
    src_ep, tgt_ep = Endpoint.parse(source), Endpoint.parse(target)
    opened = await asyncio.gather(
        connect(src_ep),
        connect(tgt_ep),
        *([connect(src_ep)] if heartbeat else []),
        return_exceptions=True,
    )
    try:
        for c in opened:
            if isinstance(c, BaseException):
                raise c
        conns = [c for c in opened if isinstance(c, asyncpg.Connection)]
        return await _measure(
            src_ep, tgt_ep, conns, samples, interval, rpo, heartbeat, on_sample, stop, poll
        )
    except ReplverifyError:
        raise
    except DB_ERRORS as e:
        raise trouble(e, src_ep, tgt_ep) from e
    finally:
        await asyncio.gather(
            *(c.close() for c in opened if isinstance(c, asyncpg.Connection)),
            return_exceptions=True,
        )


async def _measure(
    src_ep: Endpoint,
    tgt_ep: Endpoint,
    conns: list[asyncpg.Connection],
    samples: int | None,
    interval: float,
    rpo: float | None,
    heartbeat: bool,
    on_sample: OnSample | None,
    stop: asyncio.Event | None,
    poll: float,
) -> LagReport:
    src, tgt = conns[0], conns[1]
    refuse_same_database(
        await server_info(src), await server_info(tgt), src_ep, tgt_ep, "SOURCE and TARGET",
        option="",
    )  # fmt: skip
    state = await replication_state(src, tgt, src_ep)
    notes: list[str] = []
    if heartbeat:
        await ensure_heartbeat_table(conns[2])
        if not state.physical and not await tgt.fetchval(
            "SELECT to_regclass('replverify.heartbeat') IS NOT NULL"
        ):
            raise UsageError(
                f"--heartbeat: the target has no {HEARTBEAT_TABLE} table",
                hint="create it on the target and replicate it from the source (logical "
                f"replication does not copy DDL):\n{HEARTBEAT_DDL}",
            )
        notes.append(
            f"heartbeat: row 1 of {HEARTBEAT_TABLE} on the source is updated every "
            f"{poll:g} s (the one write replverify makes); lag is read from what the target "
            "shows of it"
        )
    elif state.logical:
        assert state.slot is not None
        notes.append(
            f"a logical subscriber: lag is the source's WAL position against what slot "
            f"{state.slot.name!r} has confirmed (confirmed_flush_lsn, read on the source); "
            "nothing is written"
        )
    elif not state.physical:
        raise UsageError(
            f"cannot measure lag: {state.description}; WAL positions of different servers "
            "cannot be compared",
            hint="for a target fed by logical replication or another tool, use --heartbeat "
            f"(writes one row in {HEARTBEAT_TABLE} on the source)",
        )
    if (state.relation != "streaming" and state.physical) or (
        state.subscription is not None
        and (not state.subscription.enabled or state.subscription.worker_pid is None)
    ):
        notes.append(state.description)
    if state.source_in_recovery:
        notes.append("the source is itself a standby: its position is its replay position")

    slot = state.slot.name if state.logical and state.slot is not None else None
    sampler = LagSampler(src, tgt, heartbeat=conns[2] if heartbeat else None, slot=slot)
    taken: list[LagSample] = []
    interrupted = False
    await sampler.poll()  # seeds the history (and writes the first heartbeat)
    due = time.monotonic() + poll
    while samples is None or len(taken) < samples:
        while (left := due - time.monotonic()) > 0:
            if await _stopped(stop, min(left, poll)):
                break
            if due - time.monotonic() > poll / 2:
                await sampler.poll()
        if stop is not None and stop.is_set():
            interrupted = True
            break
        sample = await sampler.sample()
        taken.append(sample)
        if on_sample is not None:
            result = on_sample(sample)
            if inspect.isawaitable(result):
                await result
        due = max(due + interval, time.monotonic())

    # Refresh the positions for the report; a failure here must not lose the samples.
    with contextlib.suppress(*DB_ERRORS):
        state = await replication_state(src, tgt, src_ep)
    notes += _method_notes(taken)
    return LagReport(
        source=str(src_ep),
        target=str(tgt_ep),
        samples=tuple(taken),
        replication=state,
        rpo_seconds=rpo,
        interval_s=interval,
        poll_interval_s=poll,
        heartbeat=heartbeat,
        interrupted=interrupted,
        notes=tuple(notes),
    )


_LOWER: frozenset[Method] = frozenset(m for m, b in _BOUNDS.items() if b == "lower")


def _method_notes(samples: Sequence[LagSample]) -> list[str]:
    notes = []
    used = {s.method for s in samples}
    if "replay-timestamp" in used:
        notes.append(
            "some samples are upper bounds (replay-timestamp): the target was already behind "
            "when sampling began, so the source's clock minus its last replayed commit is "
            "used, which also counts idle time before the first change not replayed"
        )
    if used & _LOWER:
        notes.append(
            "some samples are lower bounds (the target's true lag is at least this): "
            + "; ".join(f"{m}: {METHODS[m]}" for m in sorted(used & _LOWER))
        )
    if (note := paused_note(samples)) is not None:
        notes.append(note)
    return notes


def paused_runs(samples: Sequence[LagSample]) -> list[tuple[int, int]]:
    """The runs of consecutive samples taken while replay was paused, as 0-based
    ``(first, last)`` index pairs, in order."""
    runs: list[tuple[int, int]] = []
    for i, s in enumerate(samples):
        if not s.replay_paused:
            continue
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def paused_note(samples: Sequence[LagSample]) -> str | None:
    """When replay was paused during sampling, and for which samples (numbered from 1),
    and whether it still was at the last sample: a pause that ended while sampling must
    not read as a pause now."""
    runs = paused_runs(samples)
    if not runs:
        return None

    def at(i: int) -> str:
        return samples[i].at.astimezone(timezone.utc).strftime("%H:%M:%S.%f")[:-3]

    def span(first: int, last: int) -> str:
        if first == last:
            return f"sample {first + 1} ({at(first)})"
        return f"samples {first + 1}-{last + 1} ({at(first)} to {at(last)})"

    where = ", ".join(span(a, b) for a, b in runs)
    end = (
        "still paused at the last sample (resume with SELECT pg_wal_replay_resume() on the standby)"
        if runs[-1][1] == len(samples) - 1
        else f"replaying again from sample {runs[-1][1] + 2}"
    )
    return (
        f"WAL replay was paused on the target (pg_wal_replay_pause()) at {where} of "
        f"{len(samples)}, source clock UTC; {end}"
    )
