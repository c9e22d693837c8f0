"""Replication lag, the arithmetic: the source's LSN history, one reading of each
server, and the sample they give by each method (LSN history, replay timestamp,
heartbeat, a logical slot's position); the sampling settings. No I/O: the readings come
from :mod:`replverify.lag.probe`."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime

from replverify.errors import UsageError
from replverify.lag.model import LagSample, Method


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


def validate_settings(samples: int | None, interval: float, rpo: float | None, poll: float) -> None:
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
