"""HTML reports: self-contained pages, every value escaped, rendered by headless Chromium.

The Chromium tests need ``chromium`` (Debian's package, ``/usr/bin/chromium``; ``scripts/test``
installs it): without it they fail with a message, they never skip. Each page is loaded
once with ``--dump-dom`` (the DOM is checked: table rows, chart points) and
``--screenshot`` (the PNG is decoded here and a few pixels are checked).
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from replverify.cli.main import main
from replverify.db.catalog import TableInfo
from replverify.lag.model import LagReport, LagSample, ReplicationState
from replverify.ops.failback_attribution import FailbackReport, FailbackRow
from replverify.ops.files import FileDifference, FilesReport
from replverify.ops.gate import GateReport
from replverify.ops.health import Finding as HealthFinding
from replverify.ops.health import HealthReport
from replverify.reconcile.findings import ReconcileReport
from replverify.reconcile.run import reconcile_with
from replverify.reports.chart import ticks
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
from replverify.types import (
    Changed,
    Column,
    ColumnType,
    DiffReport,
    Extra,
    Missing,
    TableRef,
    TableResult,
)

#: Planted in table names, keys, values, paths and notes: it must show as text, never run.
EVIL = '<script>alert("x")</script>'
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
SOURCE = "postgresql://app@db1:5432/shop"
TARGET = "postgresql://app@db2:5432/shop"
# rgb of the banner colours in replverify/reports/report.css
RED, GREEN, BLUE = (0xB4, 0x23, 0x18), (0x1A, 0x7F, 0x37), (0x17, 0x5C, 0xD3)


# ================================================================ reports to render
def diff_report() -> DiffReport:
    ok = TableResult(TableRef("public", "customers"), ("id",), "primary key", 2000, 2000, 2)
    orders = TableResult(
        TableRef("public", "orders"),
        ("id",),
        "primary key",
        rows_source=20005,
        rows_target=20000,
        chunks=11,
        chunks_mismatched=2,
        differences_total=3,
        differences=[Changed((3,), ("status", "amount")), Missing((1000020,)), Extra((7,))],
    )
    evil = TableResult(
        TableRef("public", EVIL),
        ("code",),
        "primary key",
        rows_source=10,
        rows_target=10,
        chunks=1,
        chunks_mismatched=1,
        differences_total=1,
        differences=[Changed((EVIL,), ("email",))],
    )
    events = TableResult(
        TableRef("public", "events"),
        (),
        "none",
        rows_source=10001,
        rows_target=10000,
        chunks=1,
        chunks_mismatched=1,
        differences_total=1,
        differences=[Missing(("checkout", 42))],
        columns=("kind", "n"),
    )
    return DiffReport(
        SOURCE, TARGET, [ok, orders, evil, events], elapsed_s=0.56, notes=[f"note {EVIL}"]
    )


def lag_report(n: int, rpo: float | None = 2.0) -> LagReport:
    """``n`` samples a second apart whose lag rises and falls over 0-3 s; the second is
    an upper bound (replay-timestamp)."""
    samples = []
    for i in range(n):
        lag = 0.5 if n == 1 else 3.0 * math.sin(math.pi * i / (n - 1)) ** 2
        method = "replay-timestamp" if i == 1 else "lsn-history"
        samples.append(
            LagSample(T0 + timedelta(seconds=i), int(lag * 1e6), lag, method, 0x3000000 + i)
        )
    replication = ReplicationState("streaming", "streaming from the source, slot standby")
    return LagReport(SOURCE, TARGET, tuple(samples), replication, rpo, notes=(f"note {EVIL}",))


ORDERS = TableRef("public", "orders")
JOURNAL = [
    # lost: the insert is absent (its value is the injection)
    {"txid": "t1", "seq": 1, "op": "insert", "key": {"id": 3}, "values": {"status": EVIL}},
    # lost: the target still holds the before-image
    {"txid": "t2", "seq": 2, "op": "update", "key": {"id": 1}, "values": {"status": "paid"},
     "before": {"status": "new"}},
    # conflict: the target holds neither image
    {"txid": "t3", "seq": 3, "op": "update", "key": {"id": 2}, "values": {"status": "paid"},
     "before": {"status": "new"}},
    # in doubt: never settled, not applied
    {"txid": "t4", "seq": 4, "op": "insert", "key": {"id": 20}, "values": {"status": "new"},
     "state": "intent"},
    # durable
    {"txid": "t5", "seq": 5, "op": "insert", "key": {"id": 5}, "values": {"status": "new"}},
]  # fmt: skip


async def reconcile_report(tmp_path: Path) -> ReconcileReport:
    """The journal above judged against an in-memory target: 2 lost, 1 conflict, 1 in
    doubt, 1 durable."""
    path = tmp_path / "writes.jsonl"
    with path.open("w") as f:
        for i, w in enumerate(JOURNAL):
            record = {"v": 1, "ts": (T0 + timedelta(seconds=i)).isoformat(), "table": "orders"}
            record.update({"state": "committed", **w})
            f.write(json.dumps(record) + "\n")
    columns = (
        Column("id", ColumnType("bigint", "int8")),
        Column("status", ColumnType("text", "text")),
    )
    tables = {ORDERS: TableInfo(ORDERS, 1, columns, ("id",), 0)}
    rows = [
        {"id": 1, "status": "new"},
        {"id": 2, "status": "cancelled"},
        {"id": 5, "status": "new"},
    ]
    return await reconcile_with(path, MemoryTarget(tables, {ORDERS: rows}))


def gate_report() -> GateReport:
    return GateReport(
        SOURCE, TARGET, 60.0, "streaming", caught_up=True, waited_s=0.4, source_lsn=0x3000148,
        replay_lsn=0x3000148, diff=diff_report(), notes=[f"note {EVIL}"],
    )  # fmt: skip


def failback_report() -> FailbackReport:
    row = FailbackRow(
        ORDERS, {"id": 7}, "old_only", "update", ("status",), T0, None,
        {"id": "7", "status": EVIL}, {"id": "7", "status": "new"}, "changed after the divergence",
    )  # fmt: skip
    return FailbackReport(SOURCE, TARGET, T0, T0, "history file", 2, rows=[row])


def health_report() -> HealthReport:
    findings = [
        HealthFinding("reachability", "ok", "reachable", "source"),
        HealthFinding("replay", "warn", "replay is paused", "target"),
        HealthFinding("lag", "fail", f"lag 7 s is over the RPO {EVIL}"),
    ]
    return HealthReport(SOURCE, TARGET, 5.0, findings, lag_bytes=4096, lag_seconds=7.0)


def files_report() -> FilesReport:
    diffs = [FileDifference("missing", f"a/{EVIL}"), FileDifference("changed", "b.txt", "size")]
    return FilesReport("/srv/a", "/srv/b", diffs, files_a=3, files_b=2, compared=2, hashed=1)


# ================================================================ pages as text
def assert_escaped(page: str) -> None:
    """The planted script shows as text (some reports quote it as JSON first)."""
    assert EVIL not in page and "&lt;script&gt;alert(" in page


def assert_self_contained(page: str) -> None:
    """Nothing a browser would fetch, nothing that runs."""
    lower = page.lower()
    for bad in ("http://", "https://", "src=", "href=", "url(", "@import", "<script", "<link"):
        assert bad not in lower, f"{bad!r} in the page"
    assert "content-security-policy" in lower and "default-src 'none'" in html.unescape(lower)


@pytest.mark.parametrize(
    ("renderers", "make"),
    [
        (DIFF_RENDERERS, diff_report),
        (LAG_RENDERERS, lambda: lag_report(10)),
        (LAG_RENDERERS, lambda: lag_report(0)),
        (GATE_RENDERERS, gate_report),
        (FAILBACK_RENDERERS, failback_report),
        (HEALTH_RENDERERS, health_report),
        (FILES_RENDERERS, files_report),
    ],
    ids=["diff", "lag", "lag-no-samples", "gate", "failback", "health", "files"],
)
def test_every_report_renders_a_self_contained_escaped_page(renderers, make):
    page = renderers["html"](make())
    assert page.startswith('<!doctype html>\n<html lang="en">')
    assert_self_contained(page)
    assert_escaped(page)


async def test_reconcile_page_is_self_contained_and_escaped(tmp_path):
    page = RECONCILE_RENDERERS["html"](await reconcile_report(tmp_path))
    assert_self_contained(page)
    assert_escaped(page)


def test_ticks_are_round_and_reach_the_top():
    assert ticks(0.75, 4) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert ticks(999, 6) == [0, 200, 400, 600, 800, 1000]
    assert ticks(7.3e6, 4) == [0, 2e6, 4e6, 6e6, 8e6]
    assert ticks(3, 4) == [0, 1, 2, 3]
    assert ticks(0, 4) == [0.0]


def test_every_command_with_a_format_offers_html(tmp_path):
    for name, command in main.commands.items():
        for p in command.params:
            if p.name == "fmt":
                assert "html" in p.type.choices, name  # type: ignore[attr-defined]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x.txt").write_text("x")
    out = tmp_path / "files.html"
    result = CliRunner().invoke(main, ["files", str(a), str(b), "--format", "html", "-o", str(out)])
    assert result.exit_code == 1 and result.output == ""
    page = out.read_text()
    assert_self_contained(page)
    assert "x.txt" in page and "1 missing" in page


# ================================================================ Chromium
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",  # needed as root; the page is ours and loads nothing
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH, HEIGHT = 1200, 900


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_parts) + "".join(c.text for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if n.tag == tag and (cls is None or cls in n.attrs.get("class", "").split())
        ]

    def by_id(self, id_: str) -> Node:
        (found,) = [n for n in self.iter() if n.attrs.get("id") == id_]
        return found


VOID = {"meta", "link", "br", "hr", "img", "input", "line", "polyline", "wbr"}


class DomParser(HTMLParser):
    """The DOM that Chromium serialised, as a tree of :class:`Node` (text order kept only
    within a node, enough for these checks)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text_parts.append(data)


@dataclass
class Png:
    width: int
    height: int
    rows: list[bytes]  # RGB, 3 bytes a pixel
    size: int  # bytes of the file

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        r, g, b = self.rows[y][3 * x : 3 * x + 3]
        return r, g, b

    def count(self, rgb: tuple[int, int, int], top: int = 0, slack: int = 24) -> int:
        """Pixels at or below row ``top`` within ``slack`` of ``rgb`` on every channel."""
        r0, g0, b0 = rgb
        return sum(
            abs(r - r0) <= slack and abs(g - g0) <= slack and abs(b - b0) <= slack
            for row in self.rows[top:]
            for r, g, b in zip(row[0::3], row[1::3], row[2::3], strict=True)
        )


def read_png(path: Path) -> Png:
    """Decode an 8-bit RGB or RGBA PNG with the standard library (zlib + the five
    scanline filters), as RGB."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color_type in (2, 6) and interlace == 0, "unexpected PNG kind"
    bpp = 3 if color_type == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        rows.append(bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
    return Png(width, height, rows, len(data))


def chromium(
    page: str, tmp_path: Path, name: str, width: int = WIDTH, height: int = HEIGHT
) -> tuple[Node, Png]:
    """Load ``page`` in headless Chromium: its DOM and a screenshot (1200x900 unless
    told)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "headless Chromium is needed for the HTML report tests and was not found: "
            "install it (apt-get install chromium) so that /usr/bin/chromium exists",
            pytrace=False,
        )
    path = tmp_path / f"{name}.html"
    path.write_text(page, encoding="utf-8")
    shot = tmp_path / f"{name}.png"
    done = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / f'{name}-profile'}",
            "--dump-dom",
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists(), f"no screenshot: {done.stderr[-2000:]}"
    parser = DomParser()
    parser.feed(done.stdout)
    return parser.root, read_png(shot)


def assert_rendered(dom: Node, png: Png, tone: tuple[int, int, int], verdict: str) -> None:
    """A page with the right banner, no script, and a screenshot that is not blank."""
    assert not dom.find_all("script"), "a script element made it into the DOM"
    (banner,) = dom.find_all("header", "banner")
    assert verdict in banner.find_all("h1")[0].text
    assert (png.width, png.height) == (WIDTH, HEIGHT)
    assert png.size > 10_000, "the screenshot is almost empty"
    corner = png.pixel(10, 10)
    assert all(abs(a - b) <= 8 for a, b in zip(corner, tone, strict=True)), corner
    assert png.pixel(WIDTH // 2, HEIGHT - 5) != corner  # the page below the banner shows


def rows_of(table: Node) -> list[list[str]]:
    return [[td.text.strip() for td in tr.find_all("td")] for tr in table.find_all("tr")[1:]]


def test_diff_page_in_chromium(tmp_path):
    dom, png = chromium(DIFF_RENDERERS["html"](diff_report()), tmp_path, "diff")
    assert_rendered(dom, png, RED, "DIFFERENT: 4 tables, 3 differing, 5 differences")
    summary = rows_of(dom.find_all("table")[0])
    assert [r[0] for r in summary] == ["public.customers", "public.orders", f"public.{EVIL}",
                                       "public.events"]  # fmt: skip
    assert summary[1][2:] == ["20,005", "20,000", "2 / 11", "3", "3 differences"]
    assert summary[0][-1] == "ok"
    sections = {s.find_all("h2")[0].text: s for s in dom.find_all("section")}
    orders = rows_of(sections["public.orders: 3 differences"].find_all("table")[0])
    assert orders == [
        ["changed", "id=3", "status, amount"],
        ["missing", "id=1000020", ""],
        ["extra", "id=7", ""],
    ]
    evil = rows_of(sections[f"public.{EVIL}: 1 difference"].find_all("table")[0])
    assert evil == [["changed", f"code={json.dumps(EVIL)}", "email"]]
    events = rows_of(sections["public.events: 1 difference"].find_all("table")[0])
    assert events == [["missing", 'kind="checkout" n=42', ""]]
    run = sections["Run"].text
    assert SOURCE in run and TARGET in run
    assert f"note {EVIL}" in sections["Notes"].text


@pytest.mark.parametrize("n", [1, 1000])
def test_lag_chart_in_chromium(tmp_path, n):
    report = lag_report(n)
    over = sum(s.lag_seconds > 2.0 for s in report.samples)
    assert (n == 1) == (over == 0)
    dom, png = chromium(LAG_RENDERERS["html"](report), tmp_path, f"lag{n}")
    verdict = "WITHIN RPO" if n == 1 else "RPO EXCEEDED"
    assert_rendered(dom, png, GREEN if n == 1 else RED, verdict)
    seconds, wal = dom.by_id("lag-seconds"), dom.by_id("lag-bytes")
    for svg in (seconds, wal):
        points = svg.find_all("circle", "pt")
        assert len(points) == n == int(svg.attrs["data-points"])
        assert len(svg.find_all("circle", "over")) == over
        for p in points:  # inside the drawing, even for one sample
            assert 0 < float(p.attrs["cx"]) < 960 and 0 < float(p.attrs["cy"]) < 230
    assert len(seconds.find_all("line", "rpo")) == 1 and not wal.find_all("line", "rpo")
    labels = [t.text for t in seconds.find_all("text")]
    assert "lag (seconds)" in labels and "RPO 2 s" in labels
    assert any(t.startswith("time since 2026-11-23 10:00:00.000 UTC") for t in labels)
    assert "WAL not replayed (bytes)" in [t.text for t in wal.find_all("text")]
    if n == 1000:
        assert "3 MB" in [t.text for t in wal.find_all("text")]
        # 999 s: minutes; the axis spans the plot (76 to 936) from the first to the last
        xs = [float(c.attrs["cx"]) for c in seconds.find_all("circle", "pt")]
        assert (min(xs), max(xs)) == (76.0, 936.0)
        assert [t for t in labels if t in ("0", "5", "10", "15", "20")][-3:] == ["5", "10", "15"]
        assert len(seconds.find_all("circle", "bound")) == 1
        assert len(dom.find_all("details")[0].find_all("tr")) == n + 1
    # the chart is on the first screen: points in the series blue, over-RPO points red
    assert png.count(BLUE, top=120) > (1000 if n == 1000 else 30)
    assert png.count(RED, top=120) > (200 if n == 1000 else 20)


async def test_reconcile_page_in_chromium(tmp_path):
    report = await reconcile_report(tmp_path)
    dom, png = chromium(RECONCILE_RENDERERS["html"](report), tmp_path, "reconcile")
    assert_rendered(dom, png, RED, "LOSS: 2 lost, 1 conflicting, 1 in doubt, 1 durable")
    sections = {s.find_all("h2")[0].text: s for s in dom.find_all("section")}
    lost = rows_of(sections["Lost (2)"].find_all("table")[0])
    # txid, seq, op, table, key, ts (+ journal line)
    assert [r[1:7] for r in lost] == [
        ["t1", "1", "insert", "public.orders", "id=3", "2026-11-23T10:00:00+00:00journal line 1"],
        ["t2", "2", "update", "public.orders", "id=1", "2026-11-23T10:00:01+00:00journal line 2"],
    ]
    assert f"status={json.dumps(EVIL)}" in lost[0][7]  # the journal's values, as text
    assert "target(no row)" in lost[0][7]
    (conflict,) = rows_of(sections["Conflict (1)"].find_all("table")[0])
    assert conflict[1:6] == ["t3", "3", "update", "public.orders", "id=2"]
    assert 'status="cancelled"' in conflict[7]
    (doubt,) = rows_of(sections["In doubt (1)"].find_all("table")[0])
    assert doubt[1:6] == ["t4", "4", "insert", "public.orders", "id=20"]
    assert "appliedno" in doubt[7]


def test_real_diff_as_html_in_chromium(shop, tmp_path):
    """The whole pipeline against the test clusters, through the CLI, into Chromium."""
    primary, standby, _ = shop
    out = tmp_path / "diff.html"
    result = CliRunner().invoke(
        main, ["diff", primary, standby, "-t", "orders", "--format", "html", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert_self_contained(page)
    dom, png = chromium(page, tmp_path, "real-diff")
    assert_rendered(dom, png, GREEN, "CONSISTENT: 1 table, 0 differing, 0 differences")
    (row,) = rows_of(dom.find_all("table")[0])
    assert row[0] == "public.orders" and row[-1] == "ok"


# ================================================================ layout (issue 12, item 9)
def _css_rule(selector: str) -> str:
    from replverify.reports.html import CSS

    start = CSS.index(selector + " {")
    return CSS[start : CSS.index("}", start)]


def test_cells_never_break_inside_words_and_tables_scroll_instead():
    # overflow-wrap: anywhere shrinks a cell's minimum width to one letter, so the table
    # layout squeezed short columns until "update" broke; break-word keeps every word whole
    assert "overflow-wrap: break-word" in _css_rule("th, td")
    assert "anywhere" not in _css_rule("th, td")
    assert "nowrap" in _css_rule("td.word")
    assert "overflow-x: auto" in _css_rule(".scroll")
    for page in (
        DIFF_RENDERERS["html"](diff_report()),
        LAG_RENDERERS["html"](lag_report(5)),
        FAILBACK_RENDERERS["html"](failback_report()),
        HEALTH_RENDERERS["html"](health_report()),
        FILES_RENDERERS["html"](files_report()),
    ):
        parser = DomParser()
        parser.feed(page)
        scrolls = parser.root.find_all("div", "scroll")
        tables = parser.root.find_all("table")
        assert tables and len(scrolls) == len(tables)
        assert all(len(s.find_all("table")) == 1 for s in scrolls)


def test_every_page_says_when_and_by_which_version_it_was_made():
    from replverify import __version__

    before = datetime.now(timezone.utc).replace(microsecond=0)
    page = FILES_RENDERERS["html"](files_report())
    after = datetime.now(timezone.utc)
    parser = DomParser()
    parser.feed(page)
    (line,) = parser.root.find_all("p", "generated")
    (stamp,) = line.find_all("time")
    made = datetime.fromisoformat(stamp.attrs["datetime"])
    assert made.utcoffset() == timedelta(0) and before <= made <= after
    assert stamp.text == f"{made:%Y-%m-%d %H:%M:%S} UTC"
    assert line.text_parts == ["generated ", f" by replverify {__version__}"]
    for renderers, make in [
        (DIFF_RENDERERS, diff_report),
        (LAG_RENDERERS, lambda: lag_report(3)),
        (GATE_RENDERERS, gate_report),
        (FAILBACK_RENDERERS, failback_report),
        (HEALTH_RENDERERS, health_report),
    ]:
        assert 'class="generated">generated <time datetime="' in renderers["html"](make())


def test_lag_page_shows_replication_as_wrapping_facts_not_a_preformatted_block():
    report = lag_report(3)
    page = LAG_RENDERERS["html"](report)
    assert "<pre" not in page  # a <pre> scrolled sideways and cut its first line
    parser = DomParser()
    parser.feed(page)
    (section,) = [s for s in parser.root.find_all("section") if s.find_all("h2")[0].text ==
                  "Replication"]  # fmt: skip
    facts = {
        dt.text: dd.text
        for dt, dd in zip(section.find_all("dt"), section.find_all("dd"), strict=True)
    }
    assert facts["replication"] == report.replication.description
    assert facts["source"] == SOURCE


def _row(key: int, table: TableRef, reason: str, origin: str = "old_only") -> FailbackRow:
    return FailbackRow(
        table, {"id": key}, origin, "update", ("v",), None, None,  # type: ignore[arg-type]
        {"id": str(key), "v": "a"}, {"id": str(key), "v": "b"}, reason,
    )  # fmt: skip


LINES = TableRef("public", "order_lines")
LONG_REASON = " ".join(["changed on the old primary after the divergence"] * 5)


def failback_layout_report() -> FailbackReport:
    """Row 7 is short in every cell; row 8, in the same table, has a long reason that
    presses on the other columns; row 9 of another table is short and alone."""
    rows = [
        _row(7, LINES, "changed"),
        _row(8, LINES, LONG_REASON),
        _row(9, ORDERS, "changed"),
        _row(10, ORDERS, "written there", "new_only"),
    ]
    return FailbackReport(SOURCE, TARGET, T0, T0, "history file", 2, rows=rows)


def red_runs(png: Png, x: int) -> list[tuple[int, int]]:
    """(top, height) of each vertical run of the bad-tone red in column ``x``."""
    runs: list[tuple[int, int]] = []
    start = None
    for y in range(png.height + 1):
        red = y < png.height and all(
            abs(a - b) <= 24 for a, b in zip(png.pixel(x, y), RED, strict=True)
        )
        if red and start is None:
            start = y
        elif not red and start is not None:
            runs.append((start, y - start))
            start = None
    return runs


@pytest.mark.parametrize("width", [1280, 800])
def test_failback_page_in_chromium_keeps_short_columns_whole(tmp_path, width):
    page = FAILBACK_RENDERERS["html"](failback_layout_report())
    dom, png = chromium(page, tmp_path, f"failback{width}", width=width, height=1600)
    assert not dom.find_all("script")
    # summary cards, as on the diff page
    cards = {
        c.find_all("span", "label")[0].text: c.find_all("span", "num")[0].text
        for c in dom.find_all("div", "stats")[0].children
    }
    assert {k: cards[k] for k in ("old only", "conflicting", "unknown", "new only")} == {
        "old only": "3", "conflicting": "0", "unknown": "0", "new only": "1"
    }  # fmt: skip
    # one table per table name; the changed column is marked on both sides
    assert [(h.find_all("code")[0].text, "".join(h.text_parts)) for h in dom.find_all("h3")] == [
        ("public.order_lines", ": 2 rows"), ("public.orders", ": 1 row"),
        ("public.orders", ": 1 row"),
    ]  # fmt: skip
    first = rows_of(dom.find_all("table")[0])
    assert [r[:3] for r in first] == [["id=7", "update", "v"], ["id=8", "update", "v"]]
    marks = [m.text for m in dom.find_all("table")[0].find_all("mark")]
    assert marks == ['v="a"', 'v="b"'] * 2
    # the tone stripe left of each old-only row gives its height: row 7 shares its columns
    # with row 8's long reason, yet stays one line high like row 9 alone in its table
    pad = 32 if width > 900 else 16
    (banner, *_) = red_runs(png, 5)
    runs = [r for r in red_runs(png, pad + 1) if r[0] > sum(banner)]
    assert len(runs) == 3, runs
    (_, h7), (_, h8), (_, h9) = runs
    assert abs(h7 - h9) <= 2, (h7, h9)
    assert h7 <= 36, h7  # one line of 13 px text at line-height 1.45 plus 10 px padding
    assert h8 > 2 * h9  # the long reason wraps, in its own column only


def steady_lag(bounds: bool) -> LagReport:
    """1000 samples all over the RPO; with ``bounds``, every hundredth is an upper bound."""
    samples = []
    for i in range(1000):
        lag = 3.0 + 0.3 * math.sin(i / 40)
        method = "replay-timestamp" if bounds and i % 100 == 50 else "lsn-history"
        samples.append(LagSample(T0 + timedelta(seconds=i), int(lag * 1e6), lag, method, i))
    replication = ReplicationState("streaming", "streaming from the source")
    return LagReport(SOURCE, TARGET, tuple(samples), replication, 2.0)


def test_lag_chart_draws_bound_markers_over_the_red_dots(tmp_path):
    page = LAG_RENDERERS["html"](steady_lag(True))
    dom, png = chromium(page, tmp_path, "bounds")
    for name in ("lag-seconds", "lag-bytes"):
        circles = dom.by_id(name).find_all("circle")
        kinds = ["bound" in c.attrs["class"] for c in circles]
        assert kinds == [False] * 990 + [True] * 10  # drawn last, on top
        assert all(float(c.attrs["r"]) >= 4 for c in circles if "bound" in c.attrs["class"])
    _, plain = chromium(LAG_RENDERERS["html"](steady_lag(False)), tmp_path, "no-bounds")
    # where the plain chart is red, the bound markers' hollow centres must show white
    white_over_red = sum(
        all(v >= 240 for v in png.pixel(x, y))
        and all(abs(a - b) <= 24 for a, b in zip(plain.pixel(x, y), RED, strict=True))
        for y in range(120, HEIGHT)
        for x in range(0, WIDTH, 1)
    )
    assert white_over_red > 300, white_over_red
