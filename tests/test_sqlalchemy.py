"""The SQLAlchemy integration on a real server: Core and ORM writes journaled by effect."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sqlalchemy import Integer, String, delete, event, insert, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from replverify.errors import UsageError
from replverify.failover.sqlalchemy import journal_engine
from replverify.reconcile.run import reconcile
from replverify.testing.clusters import LocalClusters
from replverify.testing.servers import execute


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "sa_acc"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # serial: RETURNING id
    owner: Mapped[str] = mapped_column(String(20))
    bal: Mapped[int] = mapped_column(Integer, default=0)


def _url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def test_core_and_orm_writes_are_journaled_by_effect(
    clusters: LocalClusters, make_db, tmp_path: Path
) -> None:
    (dsn,) = await make_db(clusters.primary_dsn, rows=10, matrix_rows=1)
    await execute(
        dsn, "CREATE TABLE sa_acc (id serial PRIMARY KEY, owner varchar(20), bal int DEFAULT 0)"
    )
    journal = tmp_path / "writes.jsonl"
    engine = create_async_engine(_url(dsn))
    hooks = journal_engine(engine, journal)
    try:
        async with AsyncSession(engine) as session:  # ORM: INSERT ... RETURNING id
            session.add_all([Account(owner="ann", bal=10), Account(owner="bob", bal=20)])
            await session.commit()
        async with engine.begin() as conn:  # Core: expressions, ranges, upserts
            await conn.execute(update(Account).values(bal=Account.bal + 5))
            await conn.execute(insert(Account).values(id=100, owner="cat", bal=1))
            up = pg_insert(Account).values(id=100, owner="cat", bal=7)
            await conn.execute(
                up.on_conflict_do_update(
                    index_elements=["id"], set_={"bal": Account.bal + up.excluded.bal}
                )
            )
            await conn.execute(delete(Account).where(Account.bal > 24))
        async with engine.connect() as conn:  # rolled back: aborted
            await conn.execute(update(Account).values(bal=0))
            await conn.rollback()
        async with AsyncSession(engine) as session:
            rows = (await session.scalars(Account.__table__.select())).all()
    finally:
        await engine.dispose()
        hooks.journal.close()
    assert sorted(rows) == [1, 100]  # ann (15) and cat (8); bob (25) deleted
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    markers = [r["state"] for r in records if "op" not in r]
    assert markers == ["committed", "committed", "aborted"]
    stmts = [r for r in records if "stmt" in r]
    # the ORM's two INSERTs go as one insertmanyvalues statement (RETURNING id, handed back)
    assert [s["op"] for s in stmts] == ["insert", "update", "insert", "upsert", "delete", "update"]
    assert all("$" in s["stmt"] or s["params"] == [] for s in stmts)
    rows_of = [r for r in records if r.get("of") is not None]
    upsert = [r for r in rows_of if r["op"] == "upsert"]
    assert upsert[0]["values"] == {"owner": "cat", "bal": 8}
    report = await reconcile(journal, dsn)
    assert report.status == "no_loss" and report.counts["lost"] == 0, report.counts
    assert report.counts["durable"] >= 2 and report.counts["aborted"] == 2


async def test_a_write_it_cannot_journal_is_refused_before_it_runs(
    clusters: LocalClusters, make_db, tmp_path: Path
) -> None:
    (dsn,) = await make_db(clusters.primary_dsn, rows=10, matrix_rows=1)
    await execute(dsn, "CREATE TABLE sa_w (id int PRIMARY KEY, v int)")
    engine = create_async_engine(_url(dsn))
    hooks = journal_engine(engine, tmp_path / "j.jsonl")
    try:
        async with engine.begin() as conn:
            with pytest.raises(UsageError, match="WITH"):
                await conn.execute(
                    text("WITH w AS (INSERT INTO sa_w VALUES (1, 1) RETURNING id) SELECT 1")
                )
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM sa_w"))).scalar() == 0
    finally:
        await engine.dispose()
        hooks.journal.close()


async def test_the_documented_example_runs(
    clusters: LocalClusters, make_db, tmp_path: Path
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sqlalchemy_journal", Path(__file__).parent.parent / "examples" / "sqlalchemy_journal.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules["sqlalchemy_journal"] = example  # the ORM resolves annotations through it
    spec.loader.exec_module(example)
    (dsn,) = await make_db(clusters.primary_dsn, rows=10, matrix_rows=1)
    out = await example.run(dsn, tmp_path / "writes.jsonl")
    assert out.startswith("no_loss") and "'durable': 2" in out, out


@pytest.mark.parametrize("policy", ["always", "commit"])
async def test_intents_are_durable_before_their_statements_by_the_policy(
    clusters: LocalClusters, make_db, tmp_path: Path, policy: str
) -> None:
    """fsync="always": each intent is on disk when its statement is sent, and the rows
    are before COMMIT; fsync="commit": intents go without waiting for the disk (no trip
    through the event loop per statement), and the marker is on disk when the block
    ends. Either way the application's results are those of its own statements."""
    (dsn,) = await make_db(clusters.primary_dsn, rows=10, matrix_rows=1)
    await execute(
        dsn,
        "CREATE TABLE sa_dur (id int PRIMARY KEY, bal int)",
        "INSERT INTO sa_dur SELECT g, 0 FROM generate_series(1, 3) g",
    )
    engine = create_async_engine(_url(dsn))
    hooks = journal_engine(engine, tmp_path / "writes.jsonl", fsync=policy)  # type: ignore[arg-type]
    w = hooks.journal
    durable_at_send: list[bool] = []

    def watch(conn, cursor, statement, parameters, context, executemany) -> None:
        if "_rv_" in statement:
            durable_at_send.append(w._synced == w._appended)

    event.listen(engine.sync_engine, "before_cursor_execute", watch)
    try:
        async with engine.begin() as conn:
            for i in (1, 2, 3):
                result = await conn.execute(
                    text("UPDATE sa_dur SET bal = bal + :d WHERE id = :id"), {"d": i, "id": i}
                )
                # the result the application would get unjournaled: our RETURNING unseen
                assert not result.returns_rows and result.rowcount == 1
        assert w._synced == w._appended  # the marker (and all before it) on disk
    finally:
        await engine.dispose()
        w.close()
    assert durable_at_send == [policy == "always"] * 3
    # always: 3 intents, the last rows before COMMIT, the marker; commit: the marker
    assert w.fsyncs == (5 if policy == "always" else 1)
