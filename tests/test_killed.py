"""Every command's connections cut mid-run (a TCP proxy between it and one server):
the verdict is trouble, and stderr holds replverify's own lines, never a library's log
record or a traceback. --verbose shows those details."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import urllib.parse

from replverify.cli import logs
from replverify.journal.writer import JournalWriter
from replverify.testing.proxy import CutProxy
from replverify.testing.servers import wait_for_replay

#: What only a library's log record or an uncaught exception writes.
LEAKS = ("Traceback", "asyncpg", "Failed to restore", "internal error", "Task exception")


def via(proxy: CutProxy, dsn: str) -> str:
    """``dsn`` with its host and port replaced by the proxy's."""
    url = urllib.parse.urlsplit(dsn)
    return url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()


def port_of(dsn: str) -> int:
    port = urllib.parse.urlsplit(dsn).port
    assert port is not None
    return port


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("REPLVERIFY_VERBOSE", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "replverify", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=240)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cut_mid_run(make_args, server_dsn: str, *, ok: tuple[int, ...]) -> str:
    """Run the command once through a clean proxy (counting the bytes it reads), then
    again with every connection cut halfway through them; return stderr of the cut run."""
    async with CutProxy(port_of(server_dsn)) as clean:
        code, out, err = await run_cli(*make_args(via(clean, server_dsn)))
    assert code in ok, out + err
    assert clean.down_bytes > 0
    async with CutProxy(port_of(server_dsn), cut_after=clean.down_bytes // 2) as proxy:
        code, out, err = await run_cli(*make_args(via(proxy, server_dsn)))
    assert proxy.cuts > 0, "the connections were never cut"
    assert code in (1, 2), out + err  # never "verified" after losing a side
    for leak in LEAKS:
        assert leak not in err, err
        assert leak not in out, out
    assert (out + err).strip()  # a verdict or an error line, never silence
    return out + err


async def test_diff_cut_mid_copy(clusters, make_db):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=30_000)
    text = await cut_mid_run(
        lambda t: ["diff", src, t, "-t", "orders", "--chunk-rows", "1000"], tgt, ok=(0,)
    )
    assert "target" in text


async def test_lag_cut_mid_run(clusters):
    await cut_mid_run(
        lambda t: ["lag", clusters.primary_dsn, t, "--samples", "6", "--interval", "0.1"],
        clusters.standby_dsn,
        ok=(0,),
    )


async def test_health_cut_mid_run(clusters):
    await cut_mid_run(
        lambda t: ["health", clusters.primary_dsn, t], clusters.standby_dsn, ok=(0, 1)
    )


async def test_gate_cut_mid_run(clusters, make_db):
    pair = await asyncio.to_thread(clusters.fresh_pair)
    try:
        (src,) = await make_db(pair.primary_dsn, rows=3000)
        tgt = pair.standby.dsn(src.rsplit("/", 1)[1])
        await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
        await cut_mid_run(lambda t: ["gate", src, t, "--timeout", "20"], tgt, ok=(0,))
    finally:
        await asyncio.to_thread(pair.close)


async def test_reconcile_cut_mid_run(clusters, make_db, tmp_path):
    (tgt,) = await make_db(clusters.other_dsn, rows=3000)
    journal = tmp_path / "w.jsonl"
    with JournalWriter(journal) as w:
        for i in range(1, 2001):
            with w.transaction() as tx:
                tx.intent("update", "public.orders", {"id": i}, {"paid": True})
    await cut_mid_run(
        lambda t: ["reconcile", "--journal", str(journal), "--target", t], tgt, ok=(0, 1)
    )


async def test_failback_cut_mid_run(clusters, make_db):
    old, new = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=3000)
    await cut_mid_run(lambda n: ["failback", old, n], new, ok=(0, 1, 2))


def test_library_records_are_silent_and_verbose_shows_them(capsys):
    try:
        raise ConnectionResetError("the server went away")
    except ConnectionResetError:
        logs.configure(verbose=False)
        logging.getLogger("asyncpg.pool").warning("Failed to restore", exc_info=True)
        logging.getLogger("replverify.diff").warning("ours")
        logging.getLogger("replverify.diff").debug("our detail")
        assert capsys.readouterr().err == "replverify: warning: ours\n"
        logs.configure(verbose=True)
        logging.getLogger("asyncpg.pool").warning("Failed to restore", exc_info=True)
        logging.getLogger("replverify.diff").debug("our detail")
        err = capsys.readouterr().err
        assert "replverify: warning: asyncpg.pool: Failed to restore" in err
        assert "Traceback" in err and "the server went away" in err
        assert "replverify: debug: our detail" in err
    logs.configure(verbose=False)


def test_verbose_is_an_option_of_every_command():
    from click.testing import CliRunner

    from replverify.cli.main import main

    result = CliRunner().invoke(main, ["--verbose", "diff", "--help"])
    assert result.exit_code == 0
    assert "--verbose" in CliRunner().invoke(main, ["--help"]).output
