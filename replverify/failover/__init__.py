"""The application side: a failover-aware, journaling connection pool.

Imports journal, db, errors and types. ``FailoverPool`` and ``alternate_dsn`` are
re-exported here, where the documentation imports them from. By job:

- ``pool``: :class:`FailoverPool`, the application's calls;
- ``switching``: the endpoints, the events, switching and the retry / in-doubt rule;
- ``effects``: which statements write and how they are journaled (RETURNING through
  sqlglot), whether repeating one is safe;
- ``journaled``: running a write with its journal records around it;
- ``transaction``: :class:`~replverify.failover.transaction.PoolTransaction`;
- ``dsn``: :func:`alternate_dsn`; ``sqlalchemy``: the SQLAlchemy integration."""

from replverify.failover.pool import FailoverPool, alternate_dsn

__all__ = ["FailoverPool", "alternate_dsn"]
