"""Journal an existing SQLAlchemy application's writes by configuration, then reconcile.

    pip install 'replverify[sqlalchemy]'
    python examples/sqlalchemy_journal.py postgresql://app@db1:5432/shop   # a scratch db
    python examples/sqlalchemy_journal.py          # starts a throwaway local PostgreSQL

The application below is ordinary SQLAlchemy (async engine, asyncpg dialect, ORM and
Core); the only replverify line is ``journal_engine(engine, journal)``. It creates a table
``example_accounts`` (dropped first), writes to it, and checks the journal against the
same server with ``reconcile`` (after a failover you would point it at the new primary).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from sqlalchemy import Integer, String, update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from replverify.failover.sqlalchemy import journal_engine
from replverify.reconcile.run import reconcile


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "example_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))
    balance: Mapped[int] = mapped_column(Integer, default=0)


async def run(dsn: str, journal: Path) -> str:
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    hooks = journal_engine(engine, journal)  # <- the whole integration
    try:
        async with engine.begin() as conn:  # DDL is not journaled
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session:  # ORM inserts (RETURNING id)
            session.add_all([Account(owner="ann", balance=100), Account(owner="bob")])
            await session.commit()
        async with engine.begin() as conn:  # an expression: journaled by its effect
            await conn.execute(update(Account).values(balance=Account.balance + 5))
    finally:
        await engine.dispose()
        hooks.journal.close()
    report = await reconcile(journal, dsn)
    return f"{report.status}: {report.counts}"


def main() -> None:
    journal = Path(tempfile.mkdtemp()) / "writes.jsonl"
    if len(sys.argv) > 1:
        print(asyncio.run(run(sys.argv[1], journal)))
    else:
        from replverify.testing.clusters import LocalClusters

        with LocalClusters(use_env=False) as clusters:
            print(asyncio.run(run(clusters.primary_dsn, journal)))
    print(f"journal: {journal}")
    print(journal.read_text())


if __name__ == "__main__":
    main()
