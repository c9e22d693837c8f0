"""Passwords never appear in output, reports, errors, reprs, state files or replay scripts."""

from __future__ import annotations

from click.testing import CliRunner

from replverify.cli.main import main
from replverify.db.connect import Endpoint
from replverify.journal.writer import JournalWriter

SECRET = "S3cr3t-pw-9q"


def with_password(dsn: str) -> str:
    return dsn.replace("postgres@", f"postgres:{SECRET}@")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


async def _fresh(clusters, make_db):
    return await make_db(clusters.primary_dsn, clusters.other_dsn, rows=200)


def test_no_command_output_or_file_shows_the_password(clusters, make_db, tmp_path):
    import asyncio

    src, tgt = asyncio.run(_fresh(clusters, make_db))
    src_pw, tgt_pw = with_password(src), with_password(tgt)
    journal = tmp_path / "w.jsonl"
    with JournalWriter(journal) as w, w.transaction() as tx:
        values = {"customer": "x", "status": "new", "amount": "1.00", "items": {},
                  "placed_at": "2026-01-01T00:00:00+00:00", "paid": False}  # fmt: skip
        tx.intent("insert", "public.orders", {"id": 999_999}, values)
    files = {"state": tmp_path / "state.jsonl", "replay": tmp_path / "replay.sql",
             "report": tmp_path / "report.json"}  # fmt: skip
    results = [
        run("diff", src_pw, tgt_pw, "--state", str(files["state"])),
        run("diff", src_pw, tgt_pw, "--format", "json", "-o", str(files["report"])),
        run("diff", src_pw, tgt_pw, "--format", "markdown"),
        run("diff", src_pw, "postgresql://postgres:" + SECRET + "@127.0.0.1:1/x"),
        run("diff", src_pw, f"host=127.0.0.1 port=1 user=u password={SECRET}"),
        run(
            "reconcile",
            "--journal",
            str(journal),
            "--target",
            tgt_pw,
            "--source",
            src_pw,
            "--replay-sql",
            str(files["replay"]),
            "--format",
            "json",
        ),
        run("health", src_pw, tgt_pw, "--format", "json"),
        run("lag", src_pw, tgt_pw, "--samples", "1", "--interval", "0.1"),
    ]
    for r in results:
        assert SECRET not in r.output, r.output
        if r.exception and not isinstance(r.exception, SystemExit):
            assert SECRET not in repr(r.exception)
    for path in files.values():
        assert path.exists() and SECRET not in path.read_text(encoding="utf-8"), path
    for dsn in (src_pw, f"host=h password={SECRET}"):
        ep = Endpoint.parse(dsn)
        assert SECRET not in repr(ep) and SECRET not in str(ep)
        assert SECRET not in repr(ep.without_secret().kwargs)
