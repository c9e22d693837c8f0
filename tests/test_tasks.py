"""Chunk tasks are self-contained: they pickle without secrets and run anywhere."""

from __future__ import annotations

import pickle

from replverify.db import catalog
from replverify.db.connect import Endpoint, connect
from replverify.diff.align import plan_table
from replverify.diff.ranges import KeyRange
from replverify.tasks import ChunkTask
from replverify.types import TableRef


async def _plan(source: Endpoint, target: Endpoint, ref: TableRef):
    sc, tc = await connect(source), await connect(target)
    try:
        s_info, t_info = await catalog.server_info(sc), await catalog.server_info(tc)
        s_tab, t_tab = await catalog.load_tables(sc), await catalog.load_tables(tc)
    finally:
        await sc.close()
        await tc.close()
    return plan_table(s_tab[ref], t_tab[ref], source_server=s_info, target_server=t_info)


async def test_chunk_task_pickles_without_password_and_runs(shop):
    primary, _, other = shop
    secret = "Tr0ub4dor-x"
    src = Endpoint.parse(primary.replace("postgres@", f"postgres:{secret}@"))
    tgt = Endpoint.parse(
        f"host=127.0.0.1 port={other.split(':')[2].split('/')[0]} "
        f"user=postgres password={secret} dbname={other.rsplit('/', 1)[1]}"
    )
    plan = await _plan(src, tgt, TableRef("public", "orders"))
    for mode in ("copy", "server", "client"):
        task = ChunkTask.make(src, tgt, plan, KeyRange((100,), (2_000,)), mode, "paid")
        blob = pickle.dumps(task)
        assert secret.encode() not in blob
        s, t = await pickle.loads(blob).run()
        assert s == t and s.count == t.count > 0
        # the result is small enough to send back: no COPY stream rides along
        assert len(pickle.dumps((s, t))) < 300
