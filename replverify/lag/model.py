"""Replication lag, the pure part: the records (samples, replication state, reports), the
meaning of each lag method, and the arithmetic from readings to lag. No I/O: tested
without a database (:mod:`replverify.lag.sampler` explains the method)."""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from replverify.errors import UsageError

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
