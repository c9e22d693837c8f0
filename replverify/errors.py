"""The exception tree of replverify.

::

    ReplverifyError                 exit 2 unless it says otherwise
    ├── UsageError                  the user asked for something wrong (bad option, bad DSN,
    │   │                           unknown table, a --where that is not one predicate)
    │   ├── JournalError            a bad journal line (carries the line number)
    │   └── ConfigError             a bad configuration file or profile (names the file
    │                               and the key)
    ├── ConnectError                a server could not be reached or refused the login
    │   └── InDoubtError            a write may or may not have committed (its answer was
    │                               lost); names the journal txid, never retried
    ├── ServerError                 the server refused a statement (keeps the SQLSTATE and
    │                               chains the asyncpg exception)
    ├── SchemaError                 the two sides cannot be compared (no common key, ...)
    ├── ClusterError                the local test/demo clusters could not be started
    ├── FailoverError               both endpoints of a FailoverPool failed
    ├── OutputError                 a report, script, state file or journal could not be
    │                               written (names the file and the reason)
    └── MetricsError                the Prometheus endpoint could not be served (package
                                    missing, port in use)

A *difference* is never an exception: it is a result (see :mod:`replverify.types`).
Exit codes live in one place, :data:`EXIT_OK`, :data:`EXIT_DIFFERENT`, :data:`EXIT_TROUBLE`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2


class ReplverifyError(Exception):
    """Root of every error replverify raises on purpose."""

    exit_code: int = EXIT_TROUBLE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class UsageError(ReplverifyError):
    """The user asked for something that cannot be done as asked."""


class JournalError(UsageError):
    """A journal line is malformed; ``line`` is 1-based."""

    def __init__(self, message: str, *, path: str, line: int, hint: str | None = None) -> None:
        super().__init__(f"{path}:{line}: {message}", hint=hint)
        self.path = path
        self.line = line


class ConfigError(UsageError):
    """A configuration file or profile is wrong; the message names the file and the key."""


class ConnectError(ReplverifyError):
    """A server could not be reached, or refused the login."""


class InDoubtError(ConnectError):
    """The endpoint failed after a write reached it: it may have committed or not.

    ``txid`` is the journal transaction (None without a journal); the write is not
    retried, since running it again could apply it twice."""

    def __init__(self, message: str, *, txid: object = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.txid = txid


class ServerError(ReplverifyError):
    """The server refused a statement; ``sqlstate`` is PostgreSQL's error code."""

    def __init__(self, message: str, *, sqlstate: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.sqlstate = sqlstate


class SchemaError(ReplverifyError):
    """The two sides of a comparison cannot be lined up (e.g. no usable key)."""


class ClusterError(ReplverifyError):
    """Local PostgreSQL clusters (tests, demo) could not be set up."""


class FailoverError(ReplverifyError):
    """Both endpoints of a failover pool failed."""


class OutputError(ReplverifyError):
    """A file could not be written (a missing directory, a full disk, no permission).

    Trouble, never "differences found": a report that was not written verified nothing.
    """


class MetricsError(ReplverifyError):
    """The metrics endpoint could not be served (prometheus-client missing, port in use)."""
