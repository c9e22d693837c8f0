"""Files that cannot be written are trouble (exit 2) with the reason, never exit 1.

Every command's ``-o`` and every option naming a file to write (``--replay-sql``,
``--state``), for a directory that does not exist (refused before any server is
contacted) and for ``/dev/full`` (opens, then the write fails: the run's end). A replay
script that cannot be written does not take the report with it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from replverify.cli.main import main
from replverify.errors import OutputError
from replverify.journal.writer import JournalWriter
from replverify.testing.servers import cut_replication, execute, promote, wait_for_replay

#: A server nothing listens on: a command that got past its option checks fails on it.
NOBODY = "postgresql://postgres@127.0.0.1:1/postgres"
MISSING_DIR = "/nonexistent/dir"
NO_SPACE = "No space left on device"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def journal(tmp_path_factory) -> Path:
    """One committed insert that the shop never got: reconcile finds it lost (exit 1)."""
    path = tmp_path_factory.mktemp("journal") / "writes.jsonl"
    with JournalWriter(path) as writer:
        writer.write("insert", "public.orders", {"id": 999_999}, {"note": "lost"})
    return path


def _commands(tmp: Path, journal: Path) -> dict[str, list[str]]:
    """Each command, reaching NOBODY unless its options stop it first."""
    (tmp / "a").mkdir(exist_ok=True)
    return {
        "diff": ["diff", NOBODY, NOBODY],
        "lag": ["lag", NOBODY, NOBODY, "--samples", "1"],
        "reconcile": ["reconcile", "--journal", str(journal), "--target", NOBODY],
        "gate": ["gate", NOBODY, NOBODY],
        "failback": ["failback", NOBODY, NOBODY],
        "health": ["health", NOBODY, NOBODY],
        "files": ["files", str(tmp / "a"), str(tmp / "a")],
    }


FILE_OPTIONS = [
    (name, "-o") for name in ("diff", "lag", "reconcile", "gate", "failback", "health", "files")
] + [("reconcile", "--replay-sql"), ("failback", "--replay-sql"), ("diff", "--state")]


@pytest.mark.parametrize("command, option", FILE_OPTIONS)
def test_a_missing_directory_is_refused_before_any_work(command, option, tmp_path, journal):
    args = _commands(tmp_path, journal)[command]
    result = run(*args, option, f"{MISSING_DIR}/x.txt")
    assert result.exit_code == 2, result.output
    assert f"directory {MISSING_DIR} does not exist" in result.output
    assert "127.0.0.1:1" not in result.output  # refused before connecting


@pytest.mark.parametrize("command, option", FILE_OPTIONS)
def test_a_directory_or_a_file_under_a_file_is_refused(command, option, tmp_path, journal):
    args = _commands(tmp_path, journal)[command]
    (tmp_path / "plain").write_text("")
    for path, reason in ((tmp_path, "is a directory"), (tmp_path / "plain" / "x", "is not a")):
        result = run(*args, option, str(path))
        assert result.exit_code == 2, result.output
        assert reason in result.output


def test_an_unreadable_journal_is_trouble(tmp_path):
    result = run("reconcile", "--journal", f"{MISSING_DIR}/w.jsonl", "--target", NOBODY)
    assert result.exit_code == 2, result.output
    assert "w.jsonl" in result.output


# ---- /dev/full: the work is done, writing its result fails


@pytest.fixture(scope="module")
def dsns(shop):
    primary, standby, _ = shop
    return primary, standby


@pytest.mark.parametrize(
    "command",
    [
        ["diff", "{p}", "{s}", "-t", "orders"],
        ["lag", "{p}", "{s}", "--samples", "1", "--interval", "0.1"],
        ["health", "{p}", "{s}"],
        ["gate", "{p}", "{s}", "--timeout", "30"],
        ["reconcile", "--journal", "{j}", "--target", "{p}"],
    ],
    ids=lambda c: c[0],
)
def test_a_report_that_cannot_be_written_exits_2(command, dsns, journal):
    primary, standby = dsns
    args = [a.format(p=primary, s=standby, j=journal) for a in command]
    for fmt in ("text", "json"):
        result = run(*args, "--format", fmt, "-o", "/dev/full")
        assert result.exit_code == 2, result.output
        assert f"cannot write the report to /dev/full: {NO_SPACE}" in result.output


def test_files_report_that_cannot_be_written_exits_2(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    (tmp_path / "b").mkdir()
    result = run("files", str(tmp_path / "a"), str(tmp_path / "b"), "-o", "/dev/full")
    assert result.exit_code == 2, result.output
    assert f"cannot write the report to /dev/full: {NO_SPACE}" in result.output


def test_a_replay_script_that_cannot_be_written_keeps_the_report(dsns, journal, tmp_path):
    primary, _ = dsns
    args = ["reconcile", "--journal", str(journal), "--target", primary]
    assert run(*args).exit_code == 1  # the write is lost: a verdict
    result = run(*args, "--replay-sql", "/dev/full")
    assert result.exit_code == 2, result.output
    assert "LOSS: " in result.output and "id=999999" in result.output
    assert f"cannot write the replay script to /dev/full: {NO_SPACE}" in result.output
    out = tmp_path / "report.json"
    result = run(*args, "--replay-sql", "/dev/full", "--format", "json", "-o", str(out))
    assert result.exit_code == 2 and '"status": "loss"' in out.read_text()


async def test_a_failback_script_that_cannot_be_written_keeps_the_report(
    clusters, make_db, tmp_path
):
    pair = await asyncio.to_thread(clusters.fresh_pair)
    try:
        (old,) = await make_db(pair.primary_dsn, rows=100, matrix_rows=10)
        new = pair.standby_dsn.rsplit("/", 1)[0] + "/" + old.rsplit("/", 1)[1]
        await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
        await cut_replication(pair.standby_dsn)
        await execute(old, "UPDATE orders SET note = 'old only' WHERE id = 5")
        await promote(pair.standby_dsn)
        args = ["failback", old, new, "-t", "orders", "--replay-sql", "/dev/full"]
        result = await asyncio.to_thread(run, *args)
        assert result.exit_code == 2, result.output
        assert "old-only" in result.output  # the report
        assert f"cannot write the replay script to /dev/full: {NO_SPACE}" in result.output
        script = tmp_path / "replay.sql"
        args[-1] = str(script)
        assert (await asyncio.to_thread(run, *args)).exit_code == 1
        assert "UPDATE" in script.read_text()
    finally:
        await asyncio.to_thread(pair.close)


def test_a_state_file_that_cannot_be_written_exits_2(dsns):
    primary, standby = dsns
    result = run("diff", primary, standby, "-t", "orders", "--state", "/dev/full")
    assert result.exit_code == 2, result.output
    assert f"cannot write state file /dev/full: {NO_SPACE}" in result.output


def test_a_full_standard_output_exits_2_with_the_reason(dsns):
    primary, standby = dsns
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "replverify", "health", primary, standby],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"cannot write the report to standard output: {NO_SPACE}" in proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_a_journal_that_cannot_be_written_raises_before_the_write_runs():
    writer = JournalWriter("/dev/full", fsync="never")
    try:
        with pytest.raises(OutputError, match=f"cannot append to journal /dev/full: {NO_SPACE}"):
            writer.write("insert", "public.t", {"id": 1}, {"v": "x"})
    finally:
        writer.close()


def test_an_existing_report_is_untouched_until_the_run_writes_it(tmp_path, journal):
    report = tmp_path / "old.txt"
    report.write_text("last run\n")
    result = run("reconcile", "--journal", str(journal), "--target", NOBODY, "-o", str(report))
    assert result.exit_code == 2  # the server is unreachable
    assert report.read_text() == "last run\n"


def test_a_journal_append_cut_short_leaves_no_torn_line(tmp_path):
    """A file size limit lets the second record be written in part only: it is taken back,
    so the journal reads cleanly and the writer can go on once there is room."""
    path = tmp_path / "writes.jsonl"
    code = f"""
import os, resource, signal
from replverify.errors import OutputError
from replverify.journal.writer import JournalWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
writer = JournalWriter({str(path)!r}, fsync="never")
writer.write("insert", "public.t", {{"id": 1}}, {{"v": "x"}})
size = os.path.getsize({str(path)!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, size + 20))
try:
    writer.write("insert", "public.t", {{"id": 2}}, {{"v": "y" * 100}})
except OutputError as e:
    print("refused:", e)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "refused: cannot append to journal" in proc.stdout
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 1 and lines[0].endswith("\n") and '"id":1' in lines[0]
    with JournalWriter(path, fsync="never") as writer:
        assert writer.repaired == 0  # nothing torn to cut
        writer.write("insert", "public.t", {"id": 2}, {"v": "y"})
    assert len(path.read_text().splitlines()) == 2
