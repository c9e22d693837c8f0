"""Throttling a verification on production: ``--max-load``, ``--max-lag``, ``--chunk-time``.

More parallel reads must not hurt the primary. Like pt-table-checksum's options of the
same names, for PostgreSQL:

- ``--max-load N``: no new read starts while the source has more than ``N`` active client
  backends (``pg_stat_activity``, replverify's own sessions not counted: a run must not
  pause on its own reads);
- ``--max-lag S``: no new read starts while the standby's replay lag exceeds ``S`` seconds
  (an upper bound when the standby is behind, so the run errs towards pausing);
- ``--chunk-time S``: the chunk size adapts so that a chunk takes about ``S`` seconds.

Reads already running finish; only new ones wait. The time spent waiting is counted per
reason and ends up in the report.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg

from replverify.db.connect import DB_ERRORS
from replverify.errors import ReplverifyError
from replverify.lag.sampler import snapshot as lag_snapshot

#: Active client backends on the source other than replverify's own (and this one).
LOAD_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    " AND application_name <> 'replverify'"
)
_LAG_FAILURES: tuple[type[BaseException], ...] = (*DB_ERRORS, ReplverifyError)
#: Chunk sizes ``--chunk-time`` may choose from.
MIN_CHUNK_ROWS = 100
MAX_CHUNK_ROWS = 1_000_000


def adapt_chunk_rows(current: int, rows: int, seconds: float, target: float) -> int:
    """The next chunk size after a chunk of ``rows`` rows took ``seconds``, aiming at
    ``target`` seconds a chunk. Changes at most by a factor of 2 per step, so that one
    chunk slowed by something else (a checkpoint, a lock) does not swing the size."""
    if rows <= 0:
        return current
    ideal = rows * target / seconds if seconds > 0 else current * 2
    step = min(max(ideal, current / 2), current * 2)
    return int(min(max(step, MIN_CHUNK_ROWS), MAX_CHUNK_ROWS))


def paused_note(paused: dict[str, float], max_load: int | None, max_lag: float | None) -> str:
    """What the report says about the time the run spent paused."""
    parts = []
    if "load" in paused:
        parts.append(
            f"{paused['load']:.1f} s while the source had more than {max_load} active "
            "backends (--max-load)"
        )
    if "lag" in paused:
        parts.append(
            f"{paused['lag']:.1f} s while the standby's replay lag exceeded {max_lag:g} s "
            "(--max-lag)"
        )
    if not parts:
        return "throttling (--max-load/--max-lag) never paused the run"
    return f"the run paused new reads for {sum(paused.values()):.1f} s: " + "; ".join(parts)


@dataclass
class Throttle:
    """Waits before a new read while the source is busy or the standby lags."""

    source: asyncpg.Pool
    target: asyncpg.Pool
    max_load: int | None = None
    max_lag: float | None = None
    #: seconds between two looks at the servers (and between looks while paused)
    interval: float = 0.5
    #: seconds paused, per reason (``load``, ``lag``)
    paused: dict[str, float] = field(default_factory=dict)
    _checked: float = field(default=-1e9, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def active(self) -> bool:
        return self.max_load is not None or self.max_lag is not None

    async def wait(self) -> None:
        """Return when a new read may start (at once when the last look was recent)."""
        if not self.active:
            return
        async with self._lock:  # one look at a time, however many reads wait
            while True:
                now = time.monotonic()
                if now - self._checked < self.interval:
                    return
                reason = await self._over()
                if reason is None:
                    self._checked = time.monotonic()
                    return
                await asyncio.sleep(self.interval)
                self.paused[reason] = self.paused.get(reason, 0.0) + time.monotonic() - now

    async def _over(self) -> str | None:
        """``load`` or ``lag`` when that limit is exceeded now, else None."""
        if self.max_load is not None:
            async with self.source.acquire() as conn:
                if int(await conn.fetchval(LOAD_SQL)) > self.max_load:
                    return "load"
        if self.max_lag is not None:
            try:
                async with self.source.acquire() as sc, self.target.acquire() as tc:
                    # no history: a standby that is behind gets an upper bound
                    sample = await lag_snapshot(sc, tc)
            except _LAG_FAILURES:
                return "lag"  # cannot tell: do not add load to a struggling pair
            if sample is not None and sample.lag_seconds > self.max_lag:
                return "lag"
        return None
