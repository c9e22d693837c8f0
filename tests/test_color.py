"""Text reports get colour on a terminal: the verdicts and nothing else, never with
NO_COLOR (no-color.org), never in ``-o`` files or other formats. The renderers stay plain;
:func:`replverify.cli.main.colorize` styles their output."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import click
import pytest
from click.testing import CliRunner

from replverify.cli import main as cli
from replverify.cli.main import colorize, main
from replverify.db.catalog import TableInfo
from replverify.lag.model import LagReport, LagSample, ReplicationState
from replverify.ops.failback import FailbackReport
from replverify.ops.files import FileDifference, FilesReport
from replverify.ops.gate import GateReport
from replverify.ops.health import Finding, HealthReport
from replverify.reconcile.run import MemoryTarget, reconcile_with
from replverify.reports.formats import (
    DIFF_RENDERERS,
    FAILBACK_RENDERERS,
    FILES_RENDERERS,
    GATE_RENDERERS,
    HEALTH_RENDERERS,
    LAG_RENDERERS,
    RECONCILE_RENDERERS,
)
from replverify.types import Column, ColumnType, DiffReport, Missing, TableRef, TableResult

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def word(text: str, color: str) -> str:
    return click.style(text, fg=color)


def line(text: str, color: str) -> str:
    return click.style(text, fg=color, bold=True)


def check(text: str, expected: list[str]) -> list[str]:
    """Colour ``text``; only styling may change, and every ``expected`` styled piece
    must appear. Returns the coloured lines."""
    colored = colorize(text)
    assert click.unstyle(colored) == text
    for piece in expected:
        assert piece in colored, f"{piece!r} not in {colored!r}"
    return colored.split("\n")


def test_diff_verdicts():
    ok = TableResult(TableRef("public", "a"), ("id",), "primary key", 5, 5, 1)
    bad = TableResult(
        TableRef("public", "b"), ("id",), "primary key", 5, 4, 1, 1, 1, [Missing((1,))]
    )
    broken = TableResult(TableRef("public", "c"), ("id",), "primary key", error="timeout")
    text = DIFF_RENDERERS["text"](DiffReport("s", "t", [ok, bad]))
    lines = check(text, ["(0 mismatched)  " + word("ok", "green"), word("1 difference", "red")])
    assert lines[-2] == line(text.split("\n")[-2], "red")  # DIFFERENT: ...
    assert "    missing  id=1" in lines  # differences themselves stay plain
    assert lines[:2] == ["source  s", "target  t"]
    text = DIFF_RENDERERS["text"](DiffReport("s", "t", [ok]))
    assert colorize(text).split("\n")[-2] == line(text.split("\n")[-2], "green")
    text = DIFF_RENDERERS["text"](DiffReport("s", "t", [ok, broken]))
    lines = check(text, [word("NOT VERIFIED", "yellow")])
    assert lines[-2] == line(text.split("\n")[-2], "yellow")  # INCOMPLETE: ...


def lag(rpo: float | None, *seconds: float) -> LagReport:
    samples = tuple(
        LagSample(T0 + timedelta(seconds=i), 100, s, "lsn-history", 0)
        for i, s in enumerate(seconds)
    )
    return LagReport("s", "t", samples, ReplicationState("streaming", "streaming"), rpo)


def test_lag_verdicts():
    text = LAG_RENDERERS["text"](lag(1.0, 0.5, 2.0))
    assert colorize(text).split("\n")[-2] == line(text.split("\n")[-2], "red")
    assert "RPO EXCEEDED" in text.split("\n")[-2]
    text = LAG_RENDERERS["text"](lag(1.0, 0.5))
    assert colorize(text).split("\n")[-2] == line(text.split("\n")[-2], "green")
    text = LAG_RENDERERS["text"](lag(None, 0.5))  # no RPO: no verdict, no colour
    assert colorize(text) == text


async def test_reconcile_verdicts(tmp_path):
    journal = tmp_path / "j.jsonl"
    writes = [  # lost (absent), in doubt (intent only)
        {"txid": "t1", "seq": 1, "state": "committed", "key": {"id": 3}},
        {"txid": "t2", "seq": 2, "state": "intent", "key": {"id": 4}},
    ]
    journal.write_text(
        "".join(
            json.dumps(
                {
                    "v": 1,
                    "ts": T0.isoformat(),
                    "op": "insert",
                    "table": "t",
                    "values": {"v": "x"},
                    **w,
                }
            )
            + "\n"
            for w in writes
        )
    )
    ref = TableRef("public", "t")
    columns = (Column("id", ColumnType("bigint", "int8")), Column("v", ColumnType("text", "text")))
    info = TableInfo(ref, 1, columns, ("id",), 0)
    report = await reconcile_with(journal, MemoryTarget({ref: info}, {ref: []}))
    text = RECONCILE_RENDERERS["text"](report)
    lines = check(text, [word("lost", "red") + "      t1 #1  ", word("in doubt", "yellow")])
    assert lines[-2] == line(text.split("\n")[-2], "red")  # LOSS: ...
    report.lost.clear()
    text = RECONCILE_RENDERERS["text"](report)
    assert colorize(text).split("\n")[-2] == line(text.split("\n")[-2], "green")  # NO LOSS


def test_toolkit_verdicts():
    text = GATE_RENDERERS["text"](GateReport("s", "t", 5.0))
    check(text, [line(text.split("\n")[0], "red")])  # NOT SAFE
    caught_up = GateReport("s", "t", 5.0, caught_up=True, diff=DiffReport("s", "t", []))
    text = GATE_RENDERERS["text"](caught_up)
    check(text, [line(text.split("\n")[0], "green")])  # SAFE to switch
    text = FAILBACK_RENDERERS["text"](FailbackReport("o", "n", None, None, "", 2))
    check(text, [line(text.split("\n")[0], "green")])
    findings = [Finding("a", "ok", "fine"), Finding("b", "warn", "hm"), Finding("c", "fail", "no")]
    text = HEALTH_RENDERERS["text"](HealthReport("s", "t", None, findings))
    check(
        text,
        [
            "s -> t: " + word("problem", "red"),
            word("ok", "green") + "    a: fine",
            word("warn", "yellow") + "  b: hm",
            word("fail", "red") + "  c: no",
        ],
    )
    text = FILES_RENDERERS["text"](FilesReport("A", "B", [FileDifference("missing", "x")]))
    check(text, ["A vs B: " + word("1 missing", "red")])
    check(FILES_RENDERERS["text"](FilesReport("A", "B")), ["A vs B: " + word("identical", "green")])


# ---------------------------------------------------------------- when colour is used
@pytest.fixture
def trees(tmp_path):
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "f.txt").write_text("same")
    return str(tmp_path / "a"), str(tmp_path / "b")


@pytest.fixture
def terminal(monkeypatch):
    """Standard output counts as a terminal; NO_COLOR starts unset."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(cli, "stdout_is_terminal", lambda: True)


GREEN = "\x1b[32m"


def test_no_colour_when_not_a_terminal(trees, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    result = CliRunner().invoke(main, ["files", *trees])
    assert result.exit_code == 0 and "identical" in result.output
    assert "\x1b" not in result.output


def test_colour_on_a_terminal_unless_no_color(trees, terminal, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["files", *trees])
    assert result.exit_code == 0 and GREEN + "identical" in result.output
    assert "\x1b" not in runner.invoke(main, ["files", *trees], env={"NO_COLOR": "1"}).output
    # an empty NO_COLOR does not count (no-color.org)
    assert GREEN in runner.invoke(main, ["files", *trees], env={"NO_COLOR": ""}).output
    for fmt in ("json", "markdown", "html"):
        assert "\x1b" not in runner.invoke(main, ["files", *trees, "--format", fmt]).output
    out = tmp_path / "report.txt"
    result = runner.invoke(main, ["files", *trees, "-o", str(out)])
    assert result.output == "" and "identical" in out.read_text()
    assert "\x1b" not in out.read_text()
