"""The CLI: exit codes 0/1/2, formats, output files, no tracebacks, no passwords."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from replverify.cli.main import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def dsns(shop):
    primary, standby, other = shop
    return primary, standby, other


def with_password(dsn: str, password: str) -> str:
    return dsn.replace("postgres@", f"postgres:{password}@")


def test_consistent_exits_0_in_every_format(dsns, tmp_path):
    primary, standby, _ = dsns
    result = run("diff", primary, standby)
    assert result.exit_code == 0, result.output
    assert "CONSISTENT" in result.output
    out = tmp_path / "r.json"
    assert run("diff", primary, standby, "--format", "json", "-o", str(out)).exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "replverify.diff/1" and doc["status"] == "consistent"
    md = run("diff", primary, standby, "--format", "markdown", "-t", "orders")
    assert md.exit_code == 0 and md.output.startswith("### replverify diff")


@pytest.fixture(scope="module")
async def different(clusters, make_db):
    import asyncpg

    src, tgt = await make_db(clusters.primary_dsn, clusters.other_dsn, rows=500)
    conn = await asyncpg.connect(tgt)
    await conn.execute("DELETE FROM orders WHERE id = 7")
    await conn.close()
    return src, tgt


def test_differences_exit_1(different):
    src, tgt = different
    result = run("diff", src, tgt, "-t", "orders")
    assert result.exit_code == 1
    assert "missing  id=7" in result.output and "DIFFERENT" in result.output
    doc = json.loads(run("diff", src, tgt, "--format", "json").output)
    assert doc["status"] == "different" and doc["summary"]["differences"] == 1
    assert run("diff", src, tgt, "--where", "id <> 7", "-t", "orders").exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["-t", "no_such_table"], "no table matches"),
        (["--where", "1; DROP TABLE orders"], "--where"),
        (["--where", "(SELECT true)"], "--where"),
        (["--key", "a,,b"], "column names"),
        (["--chunk-rows", "0"], "chunk-rows"),
        (["-t", "a.b.c"], "bad table name"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(dsns, args, message):
    primary, standby, _ = dsns
    result = CliRunner().invoke(main, ["diff", primary, standby, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_unreachable_server_exits_2_without_password(dsns):
    primary, _, _ = dsns
    result = CliRunner().invoke(
        main, ["diff", primary, "postgresql://app:hunter2@127.0.0.1:1/shop"]
    )
    assert result.exit_code == 2
    assert "127.0.0.1:1" in result.output and "hunter2" not in result.output
    result = CliRunner().invoke(main, ["diff", primary, "host=127.0.0.1 port=1 password=hunter2"])
    assert result.exit_code == 2 and "hunter2" not in result.output


def test_password_never_printed(dsns):
    primary, standby, _ = dsns
    for fmt in ("text", "json", "markdown"):
        result = run(
            "diff",
            with_password(primary, "pw-Zq9"),
            with_password(standby, "pw-Zq9"),
            "--format",
            fmt,
        )
        assert result.exit_code == 0 and "pw-Zq9" not in result.output


def test_version_and_help():
    assert run("--version").output.startswith("replverify, version")
    help_text = run("diff", "--help").output
    for option in (
        "--table",
        "--exclude",
        "--where",
        "--key",
        "--chunk-rows",
        "--jobs",
        "--max-diffs",
        "--format",
        "--output",
    ):
        assert option in help_text
    # --digest auto measures and may choose server: the help must not call it copy
    flat = " ".join(help_text.split())
    assert "auto = measure each side's round trip" in flat and "auto = copy" not in flat


def test_an_internal_error_exits_2_not_1(monkeypatch, tmp_path):
    """A bug must never read as "differences found" (exit 1)."""
    from replverify.ops import files as files_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(files_module, "compare_trees", broken)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    result = CliRunner().invoke(main, ["files", str(a), str(b)])
    assert result.exit_code == 2
    assert "internal error" in result.output and "boom" in result.output
