"""Text reports get colour on a terminal: the verdicts and nothing else, never with
NO_COLOR (no-color.org), never in ``-o`` files or other formats. The colour comes from each
report's tone (ok / bad / warn), which the renderers decide; the plain text is the same
text without the marks (``Renderers.marked`` with :data:`replverify.cli.console.TERMINAL`)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import click
import pytest
from click.testing import CliRunner

from replverify.cli import console
from replverify.cli.console import TERMINAL
from replverify.cli.main import main
from replverify.db.catalog import TableInfo
from replverify.lag.model import LagReport, LagSample, ReplicationState
from replverify.ops.failback_attribution import FailbackReport
from replverify.ops.files import FileDifference, FilesReport
from replverify.ops.gate import GateReport
from replverify.ops.health import Finding, HealthReport
from replverify.reconcile.run import reconcile_with
from replverify.reports.formats import (
    DIFF_RENDERERS,
    FAILBACK_RENDERERS,
    FILES_RENDERERS,
    GATE_RENDERERS,
    HEALTH_RENDERERS,
    LAG_RENDERERS,
    RECONCILE_RENDERERS,
)
from replverify.testing.memory import MemoryTarget
from replverify.types import Column, ColumnType, DiffReport, Missing, TableRef, TableResult

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def word(text: str, color: str) -> str:
    return click.style(text, fg=color)


def line(text: str, color: str) -> str:
    return click.style(text, fg=color, bold=True)


def colorize(renderers, report) -> tuple[str, str]:
    """The plain text report and the same report as a terminal shows it."""
    return renderers["text"](report), renderers.marked(report, TERMINAL)


def check(rendered: tuple[str, str], expected: list[str]) -> list[str]:
    """Only styling may differ between the plain and the coloured text, and every
    ``expected`` styled piece must appear. Returns the coloured lines."""
    text, colored = rendered
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
    text, colored = colorize(DIFF_RENDERERS, DiffReport("s", "t", [ok, bad]))
    lines = check(
        (text, colored), ["(0 mismatched)  " + word("ok", "green"), word("1 difference", "red")]
    )
    assert lines[-2] == line(text.split("\n")[-2], "red")  # DIFFERENT: ...
    assert "    missing  id=1" in lines  # differences themselves stay plain
    assert lines[:2] == ["source  s", "target  t"]
    text, colored = colorize(DIFF_RENDERERS, DiffReport("s", "t", [ok]))
    assert colored.split("\n")[-2] == line(text.split("\n")[-2], "green")
    text, colored = colorize(DIFF_RENDERERS, DiffReport("s", "t", [ok, broken]))
    lines = check((text, colored), [word("NOT VERIFIED", "yellow")])
    assert lines[-2] == line(text.split("\n")[-2], "yellow")  # INCOMPLETE: ...


def lag(rpo: float | None, *seconds: float) -> LagReport:
    samples = tuple(
        LagSample(T0 + timedelta(seconds=i), 100, s, "lsn-history", 0)
        for i, s in enumerate(seconds)
    )
    return LagReport("s", "t", samples, ReplicationState("streaming", "streaming"), rpo)


def test_lag_verdicts():
    text, colored = colorize(LAG_RENDERERS, lag(1.0, 0.5, 2.0))
    assert colored.split("\n")[-2] == line(text.split("\n")[-2], "red")
    assert "RPO EXCEEDED" in text.split("\n")[-2]
    text, colored = colorize(LAG_RENDERERS, lag(1.0, 0.5))
    assert colored.split("\n")[-2] == line(text.split("\n")[-2], "green")
    text, colored = colorize(LAG_RENDERERS, lag(None, 0.5))  # no RPO: no verdict, no colour
    assert colored == text


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
    text, colored = colorize(RECONCILE_RENDERERS, report)
    lines = check(
        (text, colored), [word("lost", "red") + "      t1 #1  ", word("in doubt", "yellow")]
    )
    assert lines[-2] == line(text.split("\n")[-2], "red")  # LOSS: ...
    report.lost.clear()
    text, colored = colorize(RECONCILE_RENDERERS, report)
    assert colored.split("\n")[-2] == line(text.split("\n")[-2], "green")  # NO LOSS


def test_toolkit_verdicts():
    text, colored = colorize(GATE_RENDERERS, GateReport("s", "t", 5.0))
    check((text, colored), [line(text.split("\n")[0], "red")])  # NOT SAFE
    caught_up = GateReport("s", "t", 5.0, caught_up=True, diff=DiffReport("s", "t", []))
    text, colored = colorize(GATE_RENDERERS, caught_up)
    check((text, colored), [line(text.split("\n")[0], "green")])  # SAFE to switch
    text, colored = colorize(FAILBACK_RENDERERS, FailbackReport("o", "n", None, None, "", 2))
    check((text, colored), [line(text.split("\n")[0], "green")])
    findings = [Finding("a", "ok", "fine"), Finding("b", "warn", "hm"), Finding("c", "fail", "no")]
    text, colored = colorize(HEALTH_RENDERERS, HealthReport("s", "t", None, findings))
    check(
        (text, colored),
        [
            "s -> t: " + word("problem", "red"),
            word("ok", "green") + "    a: fine",
            word("warn", "yellow") + "  b: hm",
            word("fail", "red") + "  c: no",
        ],
    )
    text, colored = colorize(
        FILES_RENDERERS, FilesReport("A", "B", [FileDifference("missing", "x")])
    )
    check((text, colored), ["A vs B: " + word("1 missing", "red")])
    check(
        colorize(FILES_RENDERERS, FilesReport("A", "B")), ["A vs B: " + word("identical", "green")]
    )


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
    monkeypatch.setattr(console, "stdout_is_terminal", lambda: True)


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


def test_colour_follows_the_tone_not_the_wording():
    """A verdict no wording pattern knew is still coloured: the tone decides. A failback
    that could not verify a table, and a gate whose diff did not finish, could not tell
    (yellow) - neither verified (green) nor a problem found (red)."""
    unverified = FailbackReport(
        "o", "n", None, None, "", 2, trouble=[(TableRef("public", "a"), "permission denied")]
    )
    text, colored = colorize(FAILBACK_RENDERERS, unverified)
    assert text.startswith("failback: 1 table could not be verified")
    check((text, colored), [line(text.split("\n")[0], "yellow")])
    broken = TableResult(TableRef("public", "c"), ("id",), "primary key", error="timeout")
    gate = GateReport("s", "t", 5.0, caught_up=True, diff=DiffReport("s", "t", [broken]))
    text, colored = colorize(GATE_RENDERERS, gate)
    assert text.startswith("NOT SAFE")
    check((text, colored), [line(text.split("\n")[0], "yellow")])


def test_identical_files_past_the_rpo_are_a_problem():
    """Identical copies whose secondary last synced longer ago than the RPO exit 1: the
    verdict is red (and Markdown's icon the problem one), not the green of identical."""
    from replverify.ops.files import RpoCheck

    late = RpoCheck(60.0, T0, "live", T0 - timedelta(seconds=600))
    report = FilesReport("A", "B", rpo=late)
    text, colored = colorize(FILES_RENDERERS, report)
    check((text, colored), ["A vs B: " + word("identical, RPO exceeded", "red")])
    assert "❌" in FILES_RENDERERS["markdown"](report).splitlines()[0]
