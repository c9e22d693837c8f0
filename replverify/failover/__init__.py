"""The application side: a failover-aware, journaling connection pool.

Imports journal, db, errors and types. ``FailoverPool`` and ``alternate_dsn`` are
re-exported here, where the documentation imports them from."""

from replverify.failover.pool import FailoverPool, alternate_dsn

__all__ = ["FailoverPool", "alternate_dsn"]
