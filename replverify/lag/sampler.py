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

The records are in :mod:`replverify.lag.model`, the pure arithmetic in
:mod:`replverify.lag.estimate` and :mod:`replverify.lag.relation` (no I/O, tested without
a database), the SQL probes in :mod:`replverify.lag.probe`; this module is the sampling
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable

import asyncpg

from replverify.db.catalog import refuse_same_database, server_info
from replverify.db.connect import DB_ERRORS, Endpoint, connect, trouble
from replverify.errors import ReplverifyError, UsageError
from replverify.lag.estimate import (
    HeartbeatWrite,
    LsnHistory,
    SourceReading,
    default_poll_interval,
    lag_from_heartbeat,
    lag_from_lsn,
    validate_settings,
)
from replverify.lag.model import LagReport, LagSample, method_notes
from replverify.lag.probe import (
    HEARTBEAT_DDL,
    HEARTBEAT_TABLE,
    _system_id,
    ensure_heartbeat_table,
    read_source,
    read_target,
    replication_state,
    slot_sample,
    write_heartbeat,
)


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


#: ``on_sample(sample)``: a function or a coroutine function.
OnSample = Callable[[LagSample], object]


async def _stopped(stop: asyncio.Event | None, delay: float) -> bool:
    """Sleep ``delay`` seconds; True at once if ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


async def measure_lag(
    source: str | Endpoint,
    target: str | Endpoint,
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
    validate_settings(samples, interval, rpo, poll)
    src_ep = source if isinstance(source, Endpoint) else Endpoint.parse(source)
    tgt_ep = target if isinstance(target, Endpoint) else Endpoint.parse(target)
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
    notes += method_notes(taken)
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
