"""Replication lag, the records: samples and what each lag method means, what the two
servers say about their replication, the report with its summary and RPO verdict, and
the notes a report carries. No I/O: tested without a database. The arithmetic from
readings to samples is in :mod:`replverify.lag.estimate`, how a target relates to a
source in :mod:`replverify.lag.relation` (:mod:`replverify.lag.sampler` explains the
method)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

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


_LOWER: frozenset[Method] = frozenset(m for m, b in _BOUNDS.items() if b == "lower")


def method_notes(samples: Sequence[LagSample]) -> list[str]:
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
