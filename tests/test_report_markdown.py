"""Markdown reports (PR comments): one style for every command, and text from the report
(keys, names, values, notes) survives CommonMark rendering intact, also inside tables.

The Markdown is rendered with markdown-it-py (CommonMark plus GFM tables, as GitHub
renders comments) and the resulting tokens are checked: the text of each cell, the
shape of each table, and that no raw HTML or link got through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token
from test_report_html import (
    diff_report,
    failback_report,
    files_report,
    gate_report,
    health_report,
    lag_report,
    reconcile_report,
)

from replverify.ops.failback_attribution import FailbackReport, FailbackRow
from replverify.reports.formats import (
    DIFF_RENDERERS,
    FAILBACK_RENDERERS,
    FILES_RENDERERS,
    GATE_RENDERERS,
    HEALTH_RENDERERS,
    LAG_RENDERERS,
    RECONCILE_RENDERERS,
)
from replverify.reports.formatting import fmt_key, md_code, md_text
from replverify.types import Changed, DiffReport, Extra, Missing, TableRef, TableResult

MD = MarkdownIt("commonmark").enable("table")
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)

#: Text that breaks naive Markdown: backticks (runs, leading, trailing), pipes, line
#: breaks, spaces at the ends, raw HTML, emphasis, links, entities, a lone backslash.
AWKWARD = [
    "a`b",
    "``x``",
    "`lead",
    "trail`",
    "`",
    "pi|pe",
    "|",
    "a\\|b",
    "new\nline",
    "  spaced  ",
    " ",
    "<script>alert(1)</script>",
    "**bold** _em_",
    "[link](https://example.com)",
    "&amp; &lt;",
    "back\\slash",
    "# not a heading",
    "- not a list",
    "1. not a list",
]


def one_line(text: str) -> str:
    return " ".join(text.splitlines())


def inline_text(token: Token) -> str:
    """What a reader sees of an inline token: its text and code spans."""
    out = []
    for child in token.children or []:
        assert child.type not in ("html_inline", "link_open", "image"), child
        if child.type in ("text", "code_inline"):
            out.append(child.content)
        elif child.type == "softbreak":
            out.append("\n")
    return "".join(out)


@dataclass
class MdTable:
    head: list[str]
    rows: list[list[str]]


def render(markdown: str) -> tuple[list[Token], list[MdTable]]:
    """Tokens of the rendered Markdown (no raw HTML anywhere) and its tables."""
    tokens = MD.parse(markdown)
    assert not [t for t in tokens if t.type == "html_block"]
    tables: list[MdTable] = []
    row: list[str] | None = None
    in_head = False
    for t in tokens:
        if t.type == "table_open":
            tables.append(MdTable([], []))
        elif t.type == "thead_open":
            in_head = True
        elif t.type == "thead_close":
            in_head = False
        elif t.type == "tr_open":
            row = []
        elif t.type == "tr_close":
            assert row is not None
            if in_head:
                tables[-1].head = row
            else:
                tables[-1].rows.append(row)
            row = None
        elif t.type == "inline":
            text = inline_text(t)
            if row is not None:
                row.append(text)
    for table in tables:
        for r in table.rows:
            assert len(r) == len(table.head), (table.head, r)
    return tokens, tables


def paragraphs(tokens: list[Token]) -> list[str]:
    return [inline_text(t) for t in tokens if t.type == "inline"]


# ================================================================ the helpers
@pytest.mark.parametrize("text", AWKWARD)
def test_a_code_span_keeps_any_text_in_a_paragraph_and_in_a_table_cell(text):
    tokens, _ = render(f"x {md_code(text)} y")
    (code,) = [c for c in tokens[1].children or [] if c.type == "code_inline"]
    assert code.content == one_line(text)
    _, (table,) = render(f"| a | b |\n| --- | --- |\n| {md_code(text, cell=True)} | z |\n")
    assert table.rows == [[one_line(text), "z"]]


@pytest.mark.parametrize("text", AWKWARD)
def test_escaped_text_shows_as_written_in_a_paragraph_a_quote_and_a_cell(text):
    shown = one_line(text).strip()  # a paragraph or cell drops spaces at its ends
    if shown:
        tokens, _ = render(md_text(text))
        assert paragraphs(tokens) == [shown]
        tokens, _ = render(f"> {md_text(text)}")
        assert [t.type for t in tokens][:2] == ["blockquote_open", "paragraph_open"]
        assert paragraphs(tokens) == [shown]
    _, (table,) = render(f"| a | b |\n| --- | --- |\n| {md_text(text)} | z |\n")
    assert table.rows == [[shown, "z"]]


# ================================================================ whole reports
KEYS = ("k", "n")


def awkward_diff() -> DiffReport:
    table = TableRef("public", "we`ird|name")
    diffs: list[Any] = []
    for i, value in enumerate(AWKWARD):
        kind = (Changed, Missing, Extra)[i % 3]
        if kind is Changed:
            diffs.append(Changed((value, i), ("col|x", "b`c")))
        else:
            diffs.append(kind((value, i)))
    result = TableResult(
        table, KEYS, "primary key", rows_source=100, rows_target=100, chunks=2,
        chunks_mismatched=1, differences_total=len(diffs), differences=diffs,
    )  # fmt: skip
    notes = ["# note | with <b>html</b> and `ticks`"]
    return DiffReport("postgresql://a@h1/db", "postgresql://a@h2/db", [result], notes=notes)


def test_diff_markdown_keeps_awkward_keys_and_table_shape():
    report = awkward_diff()
    markdown = DIFF_RENDERERS["markdown"](report)
    tokens, tables = render(markdown)
    summary, diffs = tables
    assert summary.rows[0][0] == "public.we`ird|name"
    assert diffs.head == ["kind", "key", "changed columns"]
    expected = []
    for d in report.tables[0].differences:
        key = fmt_key(dict(zip(KEYS, d.key, strict=True)))
        expected.append([d.kind, key, "col|x, b`c" if isinstance(d, Changed) else ""])
    assert diffs.rows == expected
    texts = paragraphs(tokens)
    assert "# note | with <b>html</b> and `ticks`" in texts
    assert "public.we`ird|name: 19 differences" in texts  # the table's heading


def test_diff_markdown_has_a_totals_line():
    markdown = DIFF_RENDERERS["markdown"](diff_report())
    lines = markdown.splitlines()
    assert (
        lines[2] == "**DIFFERENT: 4 tables, 3 differing, 5 differences in 32,016 rows (0.560 s)**"
    )
    tokens, _ = render(markdown)
    # the whole paragraph is one strong span (no markup of the verdict leaks out)
    parts = [(t.type, t.content) for t in tokens[4].children or [] if t.type != "text" or t.content]
    assert tokens[3].type == "paragraph_open"
    assert parts == [("strong_open", ""), ("text", lines[2][2:-2]), ("strong_close", "")]


def test_failback_markdown_lists_changed_columns_and_keeps_awkward_keys():
    rows = [
        FailbackRow(
            TableRef("public", "t|1"),
            {"k": value, "n": i},
            "old_only",
            "update",
            ("col|x", "b`c"),
            T0,
            None,
            {},
            {},
            f"reason {value}",
        )
        for i, value in enumerate(AWKWARD)
    ]
    report = FailbackReport("postgresql://a@h1/db", "postgresql://a@h2/db", T0, T0, "", 2, rows)
    _, (table,) = render(FAILBACK_RENDERERS["markdown"](report))
    assert table.head == ["table", "key", "change", "columns", "why"]
    assert table.rows == [
        ["public.t|1", fmt_key(r.key), "update", "col|x, b`c", one_line(r.reason).strip()]
        for r in rows
    ]
    _, (table,) = render(FAILBACK_RENDERERS["markdown"](failback_report()))
    assert table.rows == [
        ["public.orders", "id=7", "update", "status", "changed after the divergence"]
    ]


HEADING = re.compile(r"### replverify (\w+): (✅|❌|⚠️|ℹ️) \S")


async def test_every_markdown_report_opens_the_same_way(tmp_path: Path):
    pages = {
        "diff": DIFF_RENDERERS["markdown"](diff_report()),
        "lag": LAG_RENDERERS["markdown"](lag_report(3)),
        "reconcile": RECONCILE_RENDERERS["markdown"](await reconcile_report(tmp_path)),
        "gate": GATE_RENDERERS["markdown"](gate_report()),
        "failback": FAILBACK_RENDERERS["markdown"](failback_report()),
        "health": HEALTH_RENDERERS["markdown"](health_report()),
        "files": FILES_RENDERERS["markdown"](files_report()),
    }
    for kind, markdown in pages.items():
        lines = markdown.splitlines()
        match = HEADING.match(lines[0])
        assert match and match[1] == kind, lines[0]
        # then the verdict in bold, then where it ran
        assert lines[1] == "" and lines[2].startswith("**") and lines[2].endswith("**"), lines
        assert lines[3] == "" and lines[4], lines
        tokens, _ = render(markdown)  # no raw HTML, every table row complete
        assert tokens[0].type == "heading_open" and tokens[0].tag == "h3"
    # the planted script is shown as text wherever it is, never as markup
    _, tables = render(pages["reconcile"])
    lost = tables[1]
    assert lost.rows[0][6] == 'status="<script>alert(\\"x\\")</script>"'
    _, (table,) = render(pages["files"])
    assert table.rows[0][1] == 'a/<script>alert("x")</script>'
    _, (table,) = render(pages["health"])
    assert table.rows[2][3] == 'lag 7 s is over the RPO <script>alert("x")</script>'
