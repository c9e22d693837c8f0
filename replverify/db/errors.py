"""One policy for what a server error means, used by every module that must decide.

Three questions are asked of a failed database call, each by a different caller:

* :func:`transient` - is the failed read worth repeating on a fresh connection?
  (the diff's retries, :mod:`replverify.diff.fence`)
* :func:`is_outage` - did the endpoint fail, rather than the statement? (switching
  endpoints, :mod:`replverify.failover.pool`)
* :func:`definitely_failed` - did the server surely roll the transaction back, so a
  journaled write is ``aborted`` rather than in doubt? (:mod:`replverify.journal.writer`)

The answers come from one table, :data:`SQLSTATE_FAULTS` (by SQLSTATE, code first, then
class), and from the exception classes of :data:`LOST_CONNECTION`, never from the wording
of a message - with one exception, :data:`CLOSED_MESSAGES`, because asyncpg raises a bare
``InterfaceError`` for a call on a connection that is already closed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping

import asyncpg


class Fault(enum.Enum):
    """What a failure says about the statement, the transaction and the endpoint."""

    #: The connection or the server went away: outcome unknown, endpoint down, retry.
    LOST = "lost"
    #: The statement lost a race (serialization, deadlock, lock timeout): rolled back,
    #: endpoint fine, worth repeating.
    CONFLICT = "conflict"
    #: The server failed in a way that leaves the outcome of a COMMIT unknown (system
    #: and internal errors, statement_completion_unknown, a cancelled statement).
    UNKNOWN = "unknown"
    #: The server refused the statement for its own reasons: rolled back, do not retry.
    REFUSED = "refused"


#: SQLSTATE (a five-character code, or a two-character class) -> fault. A code is looked
#: up before its class; anything not here is :attr:`Fault.REFUSED`.
SQLSTATE_FAULTS: Mapping[str, Fault] = {
    "08": Fault.LOST,  # connection exception (08000, 08003, 08006, 08001, ...)
    "57P01": Fault.LOST,  # admin_shutdown
    "57P02": Fault.LOST,  # crash_shutdown
    "57P03": Fault.LOST,  # cannot_connect_now (starting up, shutting down)
    "57P04": Fault.LOST,  # database_dropped
    "53300": Fault.LOST,  # too_many_connections
    "3D000": Fault.LOST,  # invalid_catalog_name: the database is gone from this endpoint
    "40001": Fault.CONFLICT,  # serialization_failure (also recovery conflicts on a standby)
    "40P01": Fault.CONFLICT,  # deadlock_detected
    "55P03": Fault.CONFLICT,  # lock_not_available (lock_timeout)
    "40003": Fault.UNKNOWN,  # statement_completion_unknown
    "57": Fault.UNKNOWN,  # operator intervention: query_canceled (statement_timeout), ...
    "58": Fault.UNKNOWN,  # system error (I/O)
    "XX": Fault.UNKNOWN,  # internal error
}

#: Exceptions without a SQLSTATE that mean the connection was lost. asyncpg raises
#: InternalClientError, not InterfaceError, for a query sent on a connection the server
#: has just terminated.
LOST_CONNECTION: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
    asyncpg.exceptions.InternalClientError,
)

#: asyncpg's exact wording for a call on a connection already closed under it (a bare
#: InterfaceError; the class alone would also cover the caller's own mistakes).
CLOSED_MESSAGES = frozenset({"connection is closed"})


def sqlstate_fault(sqlstate: str) -> Fault:
    """The table's answer for one SQLSTATE."""
    return SQLSTATE_FAULTS.get(sqlstate) or SQLSTATE_FAULTS.get(sqlstate[:2]) or Fault.REFUSED


def classify(exc: BaseException) -> Fault | None:
    """The fault ``exc`` stands for; None for an exception that is not a database failure
    (a bug, or the caller's own error)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate
        if isinstance(exc, asyncpg.exceptions.PostgresConnectionError):
            return Fault.LOST
        return sqlstate_fault(sqlstate) if isinstance(sqlstate, str) else Fault.UNKNOWN
    if isinstance(exc, LOST_CONNECTION):
        return Fault.LOST
    if isinstance(exc, asyncpg.InterfaceError) and str(exc) in CLOSED_MESSAGES:
        return Fault.LOST
    return None


def transient(exc: BaseException) -> bool:
    """Whether a failed read is worth repeating on a fresh connection."""
    return classify(exc) in (Fault.LOST, Fault.CONFLICT)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the endpoint failed (worth switching), not the statement."""
    return classify(exc) is Fault.LOST


def definitely_failed(exc: BaseException) -> bool:
    """Whether the database surely rolled back after ``exc``: an error the server
    reported (a SQLSTATE) that is neither a lost connection nor an unknown outcome."""
    return isinstance(exc, asyncpg.PostgresError) and classify(exc) in (
        Fault.CONFLICT,
        Fault.REFUSED,
    )
