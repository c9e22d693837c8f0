"""One table decides what a server error means: transient, an outage, surely failed."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from replverify.db import errors as policy
from replverify.db.errors import Fault, classify, definitely_failed, is_outage, transient
from replverify.diff import fence
from replverify.errors import LagTimeout, ReadError, ReplayPaused, ReplverifyError
from replverify.failover import pool
from replverify.journal import writer

X = asyncpg.exceptions

# (exception, transient, outage, definitely failed)
CASES = [
    (X.SerializationError("conflict with recovery"), True, False, True),
    (X.DeadlockDetectedError("deadlock"), True, False, True),
    (X.LockNotAvailableError("lock timeout"), True, False, True),
    (X.AdminShutdownError("terminating"), True, True, False),
    (X.CrashShutdownError("crash"), True, True, False),
    (X.CannotConnectNowError("starting up"), True, True, False),
    (X.TooManyConnectionsError("too many"), True, True, False),
    (X.InvalidCatalogNameError("no database"), True, True, False),
    (X.ConnectionDoesNotExistError("closed mid-operation"), True, True, False),
    (X.ConnectionFailureError("08006"), True, True, False),
    (X.QueryCanceledError("statement timeout"), False, False, False),
    (X.InternalServerError("XX000"), False, False, False),
    (X.DiskFullError("58 class? no: 53100"), False, False, True),
    (X.UndefinedTableError("no such table"), False, False, True),
    (X.UniqueViolationError("duplicate key"), False, False, True),
    (X.InsufficientPrivilegeError("permission denied"), False, False, True),
    (ConnectionResetError("reset by peer"), True, True, False),
    (asyncio.TimeoutError(), True, True, False),
    (X.InternalClientError("lost"), True, True, False),
    (asyncpg.InterfaceError("connection is closed"), True, True, False),
    # The wording of a message is not the policy: only asyncpg's exact text counts.
    (asyncpg.InterfaceError("a connection hint, closed"), False, False, False),
    (asyncio.CancelledError(), False, False, False),
    (ValueError("a bug"), False, False, False),
]  # fmt: skip


@pytest.mark.parametrize(("exc", "is_transient", "outage", "failed"), CASES, ids=repr)
def test_one_table_answers_all_three_questions(exc, is_transient, outage, failed):
    assert transient(exc) is is_transient
    assert is_outage(exc) is outage
    assert definitely_failed(exc) is failed


@pytest.mark.parametrize(("exc", "is_transient", "outage", "failed"), CASES, ids=repr)
def test_the_three_modules_ask_the_one_policy(exc, is_transient, outage, failed):
    assert fence.transient(exc) is is_transient
    assert pool.is_outage(exc) is outage
    assert writer.definitely_failed(exc) is failed


def test_a_code_is_looked_up_before_its_class():
    assert policy.sqlstate_fault("57014") is Fault.UNKNOWN
    assert policy.sqlstate_fault("57P01") is Fault.LOST
    assert policy.sqlstate_fault("08P01") is Fault.LOST
    assert policy.sqlstate_fault("40003") is Fault.UNKNOWN
    assert policy.sqlstate_fault("40002") is Fault.REFUSED
    assert policy.sqlstate_fault("22012") is Fault.REFUSED


def test_every_table_key_is_a_sqlstate_or_a_class():
    for key in policy.SQLSTATE_FAULTS:
        assert len(key) in (2, 5) and key.isalnum() and key.upper() == key


def test_no_module_decides_by_the_word_connection():
    import inspect

    for module in (fence, pool, writer, policy):
        source = inspect.getsource(module)
        assert '"connection" in str(' not in source.replace("'", '"')


def test_read_error_and_lag_timeout_are_in_the_tree():
    assert issubclass(ReadError, ReplverifyError)
    assert issubclass(ReplayPaused, LagTimeout) and issubclass(LagTimeout, ReplverifyError)
    assert fence.ReadError is ReadError and fence.LagTimeout is LagTimeout
    import replverify.errors as tree

    for name in ("ReadError", "LagTimeout", "ReplayPaused"):
        assert name in (tree.__doc__ or "")


def test_classify_says_none_for_what_is_not_a_database_failure():
    assert classify(KeyError("x")) is None
