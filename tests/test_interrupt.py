"""Ctrl-C leaves no server-side work running; a wrong password is a clear exit 2."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import asyncpg


async def _replverify_backends(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT state FROM pg_stat_activity WHERE application_name = 'replverify'"
        )
    finally:
        await conn.close()
    return [r["state"] for r in rows]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


async def test_ctrl_c_leaves_no_server_side_work(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=60_000)
    cmd = [sys.executable, "-m", "replverify", "diff", src, tgt, "--digest", "client",
           "--chunk-rows", "500", "--jobs", "2", "-t", "orders"]  # fmt: skip
    # SIGINT at its default and unblocked in the child: a shell without job control starts
    # background commands (CI's, say) with SIGINT ignored, and the child would inherit that
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 20
    while not await _replverify_backends(src) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # well inside the run
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)
    out, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    for dsn in (src, tgt):
        for _ in range(40):  # the server notices closed sockets at once; allow a moment
            if not await _replverify_backends(dsn):
                break
            await asyncio.sleep(0.05)
        assert await _replverify_backends(dsn) == []


async def test_wrong_password_is_a_clear_error(clusters):
    from click.testing import CliRunner

    from replverify.cli.main import main

    pair = await asyncio.to_thread(clusters.fresh_pair)
    hba = pair.primary.datadir / "pg_hba.conf"
    hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    conn = await asyncpg.connect(pair.primary_dsn)
    await conn.execute("CREATE ROLE pwuser LOGIN PASSWORD 'right-one'")
    await conn.execute("SELECT pg_reload_conf()")
    await conn.close()
    port = pair.primary.port
    bad = f"postgresql://pwuser:wrong-one@127.0.0.1:{port}/postgres"
    good = f"postgresql://pwuser:right-one@127.0.0.1:{port}/postgres"
    result = await asyncio.to_thread(CliRunner().invoke, main, ["diff", good, bad])
    assert result.exit_code == 2
    assert "login refused" in result.output and f"127.0.0.1:{port}" in result.output
    assert "wrong-one" not in result.output and "Traceback" not in result.output
