"""A full disk under the --state file or the journal (a real 1 MiB tmpfs, filled):
a clear error and exit 2, never a traceback; what was written stays readable, and the
run resumes (or the journal continues) once there is room again."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from replverify.api import DiffOptions, diff
from replverify.cli.diff import diff_exit_code
from replverify.cli.main import main
from replverify.errors import OutputError
from replverify.journal.format import Marker
from replverify.journal.reader import JournalReader
from replverify.journal.writer import JournalWriter


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs (root only, as CI runs), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests mount a tmpfs and need root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path, leave: int) -> Path:
    """Fill ``directory``'s file system, then free ``leave`` bytes (whole pages)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def no_space_left(path: Path) -> bool:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"x" * 8192)
    except OSError as e:
        return e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return False


async def test_a_full_disk_under_the_state_file_is_trouble_then_resumes(
    clusters, make_db, small_disk
):
    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=30_000)
    filler = fill(small_disk, leave=4096)
    state = small_disk / "state.jsonl"
    args = ["diff", src, tgt, "-t", "orders", "--chunk-rows", "100", "--state", str(state)]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 2, result.output
    assert f"cannot write state file {state}: No space left on device" in result.output
    assert "Traceback" not in result.output
    assert state.stat().st_size > 0  # some chunks were recorded before the disk filled
    filler.unlink()
    resumed = await diff(
        src, tgt, DiffOptions(tables=("orders",), chunk_rows=100, state=str(state))
    )
    assert resumed.complete and diff_exit_code(resumed) == 0
    assert resumed.tables[0].rows_source == 30_000


def test_a_full_disk_under_the_journal_refuses_the_write_and_keeps_the_journal(small_disk):
    filler = fill(small_disk, leave=8192)
    path = small_disk / "writes.jsonl"
    committed = 0
    with JournalWriter(path) as w, pytest.raises(OutputError, match="No space left on device"):
        for i in range(100_000):
            with w.transaction() as tx:
                tx.intent("insert", "public.kv", {"id": i}, {"v": "x" * 40})
            committed += 1
    assert 10 < committed < 100_000
    assert no_space_left(small_disk / "probe")
    reader = JournalReader(path)
    records = list(reader)
    assert reader.torn is None  # a record that did not fit was cut back, never half-written
    done = {r.txid for r in records if isinstance(r, Marker) and r.state == "committed"}
    assert len(done) == committed
    filler.unlink()
    (small_disk / "probe").unlink(missing_ok=True)
    with JournalWriter(path) as w, w.transaction() as tx:  # continues once there is room
        tx.intent("insert", "public.kv", {"id": -1}, {"v": "after"})
    assert len(list(JournalReader(path))) > len(records)
