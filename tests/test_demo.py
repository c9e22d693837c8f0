"""``replverify demo`` runs the whole story on its own clusters and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from replverify.testing.clusters import ENV_TMPDIR, cluster_tmp_root, stop_clusters_under
from replverify.testing.demo import run_demo


async def test_demo_runs_the_whole_story():
    lines: list[str] = []
    assert await run_demo(rows=1_000, echo=lines.append) == 0
    text = "\n".join(lines)
    assert "CONSISTENT" in text  # before the failure
    assert "WITHIN RPO" in text  # lag of the healthy pair
    assert "missing  id=1000020" in text  # diff names the lost rows
    assert "LOSS: 9 lost" in text  # reconcile names the lost writes
    # what a rewind of the old primary would discard: the 9 lost writes and the
    # unjournaled (keyless) event row, attributed on default settings by xids
    assert "failback: 10 old-only rows, 0 conflicting, 0 unknown" in text
    assert "failback: 1 old-only" in text  # after the reconcile replay: the event row
    assert "== 12." in text and "SAFE to switch" in text  # rewound, a standby, gated
    assert "NO LOSS" in text  # after the replay script


async def _server_facts(dsn: str) -> tuple[bool, int]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        return await conn.fetchval("SELECT pg_is_in_recovery()"), await conn.fetchval(
            "SELECT count(*) FROM orders"
        )
    finally:
        await conn.close()


async def test_demo_keep_leaves_the_servers_running_and_says_how_to_stop_them():
    # A directory of its own (pytest's tmp_path is not traversable by postgres), so that
    # whatever a failure leaves behind is found and stopped.
    root = Path(tempfile.mkdtemp(prefix="demo-keep-", dir=cluster_tmp_root()))
    root.chmod(0o755)
    env = {**os.environ, ENV_TMPDIR: str(root)}
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "replverify", "demo", "--keep", "--rows", "200"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        (directory,) = re.findall(r"^clusters kept running under (\S+) ", out, re.M)
        old = re.search(r"^   old primary (\S+)$", out, re.M)
        new = re.search(r"^   new primary (\S+)$", out, re.M)
        assert old and new, out
        stop = out.split("to stop them and remove the directory:\n", 1)[1].splitlines()
        stop = [line.strip() for line in stop if line.startswith("   ")]

        # the demo's process has exited: its servers still answer, as they were left
        assert Path(directory, "writes.jsonl").is_file()
        # the old primary was rewound onto the new one and follows it (failback runbook)
        assert await _server_facts(old[1]) == (True, 200 + 5)
        assert await _server_facts(new[1]) == (False, 200 + 5)  # replayed onto it

        assert len(stop) == 3 and stop[-1] == f"rm -rf {directory}", stop
        for command in stop:
            done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (command, done.stderr)
        for dsn in (old[1], new[1]):
            with pytest.raises(OSError):
                await _server_facts(dsn)
        assert not Path(directory).exists()
    finally:
        stop_clusters_under(root)
        shutil.rmtree(root, ignore_errors=True)
