"""An application writing through FailoverPool at full speed, killed with kill -9:
reconcile then finds every acknowledged write durable (none lost), and reports a torn
tail when the journal ends in half a record."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from click.testing import CliRunner

from replverify.cli.main import main
from replverify.journal.reader import JournalReader
from replverify.testing.postgres import cluster_tmp_root

APP = """
import asyncio, sys
from replverify.failover.pool import FailoverPool

async def run(dsn, alternate, journal):
    pool = FailoverPool(dsn, alternate, journal=journal, max_size=16)
    await pool.start()
    async def writer(k):
        i = k
        while True:
            await pool.execute("INSERT INTO kv (id, v) VALUES ($1, $2)", i, f"v{i}")
            sys.stdout.write(f"{i}\\n")  # acknowledged: execute returned
            sys.stdout.flush()
            i += 16
    await asyncio.gather(*(writer(k) for k in range(16)))

asyncio.run(run(*sys.argv[1:]))
"""


async def reconcile(journal, target) -> tuple[int, dict]:
    args = ["reconcile", "--journal", str(journal), "--target", target, "--format", "json"]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    return result.exit_code, json.loads(result.output)


async def test_an_app_killed_mid_writes_loses_no_acknowledged_write(clusters, make_db, tmp_path):
    (dsn,) = await make_db(clusters.primary_dsn, rows=10)
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kv (id bigint PRIMARY KEY, v text NOT NULL)")
    await conn.close()
    # on tmpfs when there is one: the rate is the application's, not this disk's fsync
    journal = Path(tempfile.mkdtemp(dir=cluster_tmp_root())) / "writes.jsonl"
    script = tmp_path / "app.py"
    script.write_text(APP)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), dsn, clusters.other_dsn, str(journal),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    acked: set[int] = set()
    await proc.stdout.readline()  # the first acknowledged write: it is running
    started = time.perf_counter()
    while time.perf_counter() - started < 3.0:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        acked.add(int(line))
    proc.kill()  # SIGKILL: no clean-up of any kind
    rest, _ = await proc.communicate()
    acked.update(int(n) for n in rest.split())
    rate = len(acked) / (time.perf_counter() - started)
    print(f"{len(acked)} acknowledged writes, {rate:.0f} writes/s, then kill -9")
    assert len(acked) > 100

    conn = await asyncpg.connect(dsn)
    stored = {r["id"] for r in await conn.fetch("SELECT id FROM kv")}
    await conn.close()
    assert acked <= stored

    code, doc = await reconcile(journal, dsn)
    assert code == 0, doc
    assert doc["counts"]["lost"] == 0 and doc["lost"] == []
    assert doc["counts"]["durable"] >= len(acked)

    # a crash in the middle of an append leaves half a record: reported, nothing else
    with journal.open("ab") as f:
        f.write(b'{"v":1,"seq":999999999,"txid":"torn-1","ts":"2026-')
    reader = JournalReader(journal)
    lines = sum(1 for _ in reader)
    assert reader.torn is not None and lines
    code, doc = await reconcile(journal, dsn)
    assert code == 0 and doc["counts"]["lost"] == 0
    assert doc["torn_tail"] == {"line": reader.torn.line, "bytes": reader.torn.size}
    shutil.rmtree(journal.parent)
