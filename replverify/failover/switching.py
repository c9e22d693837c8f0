"""Two endpoints, one active asyncpg pool, and the switch between them.

A call that fails because the *endpoint* failed (connection refused or lost, the server
shutting down or not accepting connections, a connect timeout) - with
``auto_switch_enabled`` - fires ``endpoint_switch_required``, connects to the other
endpoint, fires ``endpoint_switched`` and runs the call once more there, unless the
failure left a write's outcome unknown and repeating it is not safe
(:func:`~replverify.failover.effects.safe_to_repeat`): then
:class:`~replverify.errors.InDoubtError`. Concurrent calls that fail together cause one
switch: events fire once each, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import asyncpg

from replverify.db.connect import DB_ERRORS, DB_OR_TIMEOUT_ERRORS, Endpoint, redact_text
from replverify.db.errors import is_outage
from replverify.errors import ConnectError, FailoverError, InDoubtError, UsageError
from replverify.failover.effects import safe_to_repeat

__all__ = ["EVENTS", "FailoverEvent", "Side", "Switching", "is_outage"]

T = TypeVar("T")
Side = Literal["primary", "alternate"]
EventName = Literal["endpoint_switch_required", "endpoint_switched"]
EVENTS: tuple[EventName, ...] = ("endpoint_switch_required", "endpoint_switched")
Callback = Callable[["FailoverEvent"], object]


@dataclass(frozen=True)
class FailoverEvent:
    """What a callback receives. DSNs are display forms (no passwords)."""

    name: EventName
    from_endpoint: Side
    to_endpoint: Side
    from_dsn: str
    to_dsn: str
    reason: str
    at: _dt.datetime


@dataclass
class _Progress:
    """How far one attempt got: whether an endpoint failure leaves its outcome unknown."""

    ambiguous: bool = False
    txid: object = None
    key: tuple[str, ...] = ()


class Switching:
    """The endpoints, the active pool and the switch (the base of the failover pool)."""

    def __init__(
        self,
        primary: str,
        alternate: str,
        *,
        auto_switch: bool = True,
        min_size: int = 0,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float | None = None,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self._endpoints: dict[Side, Endpoint] = {
            "primary": Endpoint.parse(primary),
            "alternate": Endpoint.parse(alternate),
        }
        self.auto_switch_enabled = auto_switch
        self._min, self._max = min_size, max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._settings = {"application_name": "replverify-failover", **(server_settings or {})}
        self._callbacks: dict[EventName, list[Callback]] = {n: [] for n in EVENTS}
        self._active: Side = "primary"
        self._pool: asyncpg.Pool | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        #: switches so far (for monitoring)
        self.switches = 0

    def on(self, event: str, callback: Callback) -> None:
        """Call ``callback(event)`` (a function or coroutine function) on ``event``."""
        if event not in EVENTS:
            raise UsageError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        self._callbacks[event].append(callback)

    @property
    def active(self) -> Side:
        """``"primary"`` or ``"alternate"``: the endpoint calls go to."""
        return self._active

    def dsn(self, side: Side) -> str:
        """The display DSN of an endpoint (no password)."""
        return str(self._endpoints[side])

    async def _open(self, side: Side) -> asyncpg.Pool:
        ep = self._endpoints[side]
        kw = dict(ep.kwargs)
        kw["timeout"] = self._connect_timeout
        # A floor of idle connections (min_size > 0) makes asyncpg keep reconnecting to a
        # dead endpoint, logging a traceback each time, until the switch closes its pool;
        # the default 0 avoids that, and one connection is still made here so that an
        # unreachable endpoint is found now, not at the first query.
        pool = None
        try:
            pool = await asyncpg.create_pool(
                min_size=self._min,
                max_size=self._max,
                command_timeout=self._command_timeout,
                server_settings=self._settings,
                **kw,
            )
            assert pool is not None
            async with pool.acquire():
                pass
        except DB_OR_TIMEOUT_ERRORS as e:
            if pool is not None:
                pool.terminate()
            raise ConnectError(ep.scrub(f"cannot connect to the {side} ({ep}): {_why(e)}")) from e
        return pool

    # ---- events and switching

    async def _fire(self, event: FailoverEvent) -> None:
        for cb in list(self._callbacks[event.name]):
            result = cb(event)
            if inspect.isawaitable(result):
                await result

    async def _switch(self, generation: int, cause: BaseException) -> None:
        """Switch to the other endpoint unless another call already did (same lock)."""
        async with self._lock:
            if self._generation != generation:
                return
            old: Side = self._active
            new: Side = "alternate" if old == "primary" else "primary"
            reason = self._endpoints[old].scrub(_why(cause))
            now = _dt.datetime.now(_dt.timezone.utc)
            args = (old, new, self.dsn(old), self.dsn(new), reason)
            await self._fire(FailoverEvent("endpoint_switch_required", *args, now))
            try:
                pool = await self._open(new)
            except ConnectError as e:
                raise FailoverError(
                    f"both endpoints failed: the {old} ({self.dsn(old)}): {reason}; "
                    f"{self._endpoints[new].scrub(e.message)}"
                ) from e
            previous, self._pool = self._pool, pool
            self._active = new
            self._generation += 1
            self.switches += 1
            if previous is not None:
                previous.terminate()
            await self._fire(
                FailoverEvent("endpoint_switched", *args, _dt.datetime.now(_dt.timezone.utc))
            )

    async def _call(
        self,
        run: Callable[[asyncpg.Connection, _Progress], Awaitable[T]],
        query: str,
        args: tuple[object, ...],
    ) -> T:
        """``run(conn, progress)`` on the active endpoint; on an outage switch, and retry
        once when that cannot apply a write twice (see :meth:`execute`)."""

        async def attempt(progress: _Progress) -> T:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                if conn.is_closed():
                    raise asyncpg.ConnectionDoesNotExistError("connection is closed")
                return await run(conn, progress)

        return await self._switching(attempt, query, args)

    async def _switching(
        self,
        attempt: Callable[[_Progress], Awaitable[T]],
        query: str | None = None,
        args: tuple[object, ...] = (),
    ) -> T:
        """``attempt()`` on the active endpoint; on an outage switch and retry once,
        unless the failure left a write's outcome unknown and repeating it is not safe:
        then :class:`~replverify.errors.InDoubtError` (after the switch)."""
        if self._pool is None:
            raise UsageError("the FailoverPool is closed (or was never started)")
        generation, side = self._generation, self._active
        progress = _Progress()
        try:
            return await attempt(progress)
        except Exception as e:
            if not is_outage(e):
                raise
            if not self.auto_switch_enabled:
                ep = self._endpoints[side]
                raise ConnectError(
                    ep.scrub(f"the {side} ({ep}) failed: {_why(e)} (auto-switch is off)")
                ) from e
            first = e
        await self._switch(generation, first)
        if progress.ambiguous and (query is None or not safe_to_repeat(query, args, progress.key)):
            ep = self._endpoints[side]
            txid = progress.txid
            raise InDoubtError(
                ep.scrub(
                    f"the {side} ({ep}) failed after the write reached it ({_why(first)}): it"
                    " may have committed or not, so it was not run again"
                    + (f"; journal txid {txid}" if txid is not None else "")
                ),
                txid=txid,
                hint="reconcile the journal, or check the row, before writing it again",
            ) from first
        try:
            return await attempt(_Progress())
        except Exception as e:
            if not is_outage(e):
                raise
            ep, other = self._endpoints[side], self._endpoints[self._active]
            raise FailoverError(
                f"both endpoints failed: the {side} ({ep}): {ep.scrub(_why(first))}; "
                f"the {self._active} ({other}): {other.scrub(_why(e))}"
            ) from e

    async def _checkout(
        self, progress: _Progress | None = None
    ) -> tuple[asyncpg.Pool, asyncpg.Connection, Side]:
        """A connection of the active endpoint inside a started transaction."""
        assert self._pool is not None
        pool, side = self._pool, self._active
        conn = await pool.acquire()
        try:
            await conn.execute("BEGIN")
        except BaseException:
            with contextlib.suppress(*DB_ERRORS):
                await pool.release(conn)
            raise
        return pool, conn, side


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return redact_text(
        f"{type(exc).__name__}: {text}" if not isinstance(exc, ConnectError) else text
    )
