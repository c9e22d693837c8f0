"""HTML: every report as one self-contained page, for CI artifacts, mail and browsers.

A page carries its CSS (the package resource ``report.css``) inline and draws the lag
chart as inline SVG; it has no scripts and loads nothing (its Content-Security-Policy
tells the browser so too). The pages show what the text and JSON reports show, through
the same helpers of
:mod:`replverify.reports.diff`, ``lag``, ``reconcile`` and ``ops``.

Escaping has one rule: :func:`el` escapes every ``str`` it is given (table names, keys,
values, DSNs, notes) with :func:`html.escape`; only :class:`Html`, made by :func:`el`
itself, goes in as markup.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any

from replverify import __version__
from replverify.lag.model import LagReport
from replverify.reports.diff import (
    diff_facts,
    diff_to_dict,
    diff_tone,
    diff_verdict,
    key_label,
    table_tone,
    table_verdict,
)
from replverify.reports.formatting import Tone, clock, fmt_key, fmt_values, value_pairs
from replverify.reports.lag import (
    lag_notes,
    lag_sample_line,
    lag_to_dict,
    lag_tone,
    lag_verdict,
    replication_lines,
)
from replverify.reports.ops import (
    GATE_VERDICT,
    LEVEL_TONES,
    ORIGIN_TITLES,
    UNVERIFIED_TITLE,
    failback_to_dict,
    failback_tone,
    failback_verdict,
    files_to_dict,
    files_tone,
    files_verdict,
    gate_to_dict,
    gate_tone,
    health_to_dict,
    health_tone,
)
from replverify.reports.reconcile import (
    APPLIED,
    reconcile_to_dict,
    reconcile_tone,
    reconcile_verdict,
    row_history,
)
from replverify.types import DiffReport

if TYPE_CHECKING:  # the records only: their modules do I/O, rendering must not import it
    from replverify.ops.failback import FailbackReport
    from replverify.ops.files import FilesReport
    from replverify.ops.gate import GateReport
    from replverify.ops.health import HealthReport
    from replverify.reconcile.run import Finding, ReconcileReport

__all__ = [
    "Html",
    "diff_to_html",
    "el",
    "failback_to_html",
    "files_to_html",
    "gate_to_html",
    "health_to_html",
    "lag_to_html",
    "reconcile_to_html",
]

#: Rows listed per table of findings or differences (JSON has all that were kept).
SHOWN = 1000


# == building blocks ========================================================================
class Html(str):
    """Markup made by :func:`el`: inserted as is, where any other ``str`` is escaped."""

    __slots__ = ()


Content = Html | str | int | float | None | Sequence[Any]


def _join(content: Iterable[Content]) -> str:
    out: list[str] = []
    for c in content:
        if c is None:
            continue
        if isinstance(c, Html):
            out.append(c)
        elif isinstance(c, str | int | float):
            out.append(html.escape(str(c)))
        else:
            out.append(_join(c))
    return "".join(out)


def _attrs(attrs: dict[str, object]) -> str:
    out = []
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        # class_ -> class, aria_label -> aria-label; viewBox keeps its case
        name = name.rstrip("_").replace("_", "-")
        out.append(f" {name}" if value is True else f' {name}="{html.escape(str(value))}"')
    return "".join(out)


def el(tag: str, *content: Content, **attrs: object) -> Html:
    """``<tag attrs>content</tag>``, every ``str`` in ``content`` and ``attrs`` escaped;
    None (content or attribute) is left out."""
    return Html(f"<{tag}{_attrs(attrs)}>{_join(content)}</{tag}>")


def void(tag: str, **attrs: object) -> Html:
    """An element without content (``meta``, ``line``, ...)."""
    # self-closed: inside <svg> a bare <line> would swallow what follows it
    return Html(f"<{tag}{_attrs(attrs)}/>")


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "—"}[value]


def badge(label: str, tone: Tone | None) -> Html:
    return el("span", label, class_=f"badge {tone}" if tone else "badge")


def stats(items: Iterable[tuple[str, str, Tone | None]]) -> Html:
    """The key numbers of a report, large: (label, value, tone)."""
    return el(
        "div",
        [
            el(
                "div",
                el("span", value, class_="num"),
                el("span", label, class_="label"),
                class_=tone,
            )
            for label, value, tone in items
        ],
        class_="stats",
    )


def facts(items: Iterable[tuple[str, Content]]) -> Html:
    rows = [el("div", el("dt", k), el("dd", "—" if v is None else v)) for k, v in items]
    return el("dl", rows, class_="facts")


def table(
    head: Sequence[str],
    rows: Iterable[Sequence[Content]],
    *,
    num: Sequence[int] = (),
    word: Sequence[int] = (),
    wrap: Sequence[int] = (),
    val: Sequence[int] = (),
    tones: Sequence[Tone | None] | None = None,
) -> Html:
    """A table in a container that scrolls sideways when the table cannot fit.

    Columns at the indexes ``num`` are right-aligned numbers, ``word`` short identifiers
    (an op, a table name, an LSN) that never break, ``wrap`` keys and ``val`` row images
    that wrap between their ``col=value`` pairs and break inside one only when it is wider
    than the column's minimum (12 and 20 characters); ``tones`` marks rows. Other columns
    wrap between words only.
    """
    kinds = {i: "wrap val" for i in val} | {i: "wrap" for i in wrap}
    kinds |= {i: "word" for i in word} | {i: "num" for i in num}
    cls = [kinds.get(i) for i in range(len(head))]
    body = [
        el(
            "tr",
            [el("td", c, class_=cls[i]) for i, c in enumerate(row)],
            class_=tones[r] if tones else None,
        )
        for r, row in enumerate(rows)
    ]
    return el(
        "div",
        el(
            "table",
            el("thead", el("tr", [el("th", h, class_=cls[i]) for i, h in enumerate(head)])),
            el("tbody", body),
        ),
        class_="scroll",
    )


def section(title: str, *content: Content) -> Html:
    return el("section", el("h2", title), *content)


def notes(items: Iterable[str]) -> Html | None:
    shown = [el("p", n, class_="note") for n in items]
    return section("Notes", shown) if shown else None


def more(shown: int, total: int, what: str) -> Html | None:
    """A line saying how many of ``total`` are not listed."""
    if total <= shown:
        return None
    return el("p", f"… and {total - shown:,} more {what} (--format json)", class_="muted")


def code(value: str) -> Html:
    return el("code", value)


def instant(iso: str | None) -> Html | None:
    """An ISO 8601 instant that may break after its date (before the time), nowhere else."""
    if iso is None:
        return None
    date, t, rest = iso.partition("T")
    return Html(html.escape(date + t) + "<wbr>" + html.escape(rest)) if t else Html(iso)


def image(values: dict[str, Any] | None, changed: Sequence[str] = ()) -> Html:
    """A row's values as ``col=value`` pairs, the ``changed`` columns marked."""
    if not values:
        return code(fmt_values(values))
    pairs = value_pairs(values)
    parts: list[Content] = []
    for name, pair in pairs.items():
        if parts:
            parts.append(" ")
        parts.append(el("mark", pair) if name in changed else pair)
    return el("code", parts)


#: The page's style sheet, a package resource (``report.css``), inlined in every page.
CSS = resources.files("replverify.reports").joinpath("report.css").read_text(encoding="utf-8")

#: Nothing may load: no scripts, fonts, images or frames, only the inline styles.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def page(kind: str, tone: Tone, verdict: str, *body: Content) -> str:
    """A whole document: a coloured banner with the verdict and when (UTC) and by which
    replverify the page was made, then ``body``."""
    made = _now().replace(microsecond=0)
    head = el(
        "head",
        void("meta", charset="utf-8"),
        void("meta", http_equiv="Content-Security-Policy", content=CSP),
        void("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("title", f"replverify {kind}: {verdict}"),
        el("style", Html(CSS)),
    )
    body_el = el(
        "body",
        el(
            "header",
            el("p", f"replverify {kind}", class_="kind"),
            el("h1", verdict),
            el(
                "p",
                "generated ",
                el("time", made.strftime("%Y-%m-%d %H:%M:%S UTC"), datetime=made.isoformat()),
                f" by replverify {__version__}",
                class_="generated",
            ),
            class_=f"banner {tone}",
        ),
        el("main", *body),
        el("footer", f"replverify {__version__}"),
    )
    return "<!doctype html>\n" + el("html", head, body_el, lang="en") + "\n"


# == diff =================================================================================
def _diff_tables(report: DiffReport, doc: dict[str, Any]) -> list[Html]:
    """The per-table summary and, for each table that is not consistent, its differences."""
    tones = [table_tone(t) for t in report.tables]
    rows = [
        [
            code(t.table.qualified),
            key_label(t),
            _n(t.rows_source),
            _n(t.rows_target),
            f"{t.chunks_mismatched:,} / {t.chunks:,}",
            _n(t.differences_total),
            badge(table_verdict(t), tone),
        ]
        for t, tone in zip(report.tables, tones, strict=True)
    ]
    head = ["table", "key", "rows source", "rows target", "chunks mismatched", "differences", ""]
    out = [section("Tables", table(head, rows, num=(2, 3, 4, 5), word=(0, 6), tones=tones))]
    for t, d in zip(report.tables, doc["tables"], strict=True):
        if t.consistent and not t.unstable:
            continue
        parts: list[Content] = [
            el("p", f"schema: {n}", class_="error") for n in t.schema_differences
        ]
        if t.error:
            parts.append(el("p", f"error: {t.error}", class_="error"))
        shown = d["differences"][:SHOWN]
        if shown:
            parts.append(
                table(
                    ["kind", "key", "changed columns"],
                    [
                        [badge(x["kind"], "bad"), code(fmt_key(x["key"])), ", ".join(x["columns"])]
                        for x in shown
                    ],
                    word=(0,),
                    wrap=(1,),
                )
            )
        parts.append(more(len(shown), len(d["differences"]), "differences"))
        if (unkept := t.differences_total - len(d["differences"])) > 0:
            counted = f"{unkept:,} more differences were counted, not kept (--max-diffs)"
            parts.append(el("p", counted, class_="muted"))
        if d["unstable"]:
            parts.append(
                el("p", "Rows written to while compared (neither verified nor called different):")
            )
            parts.append(
                table(["key"], [[code(fmt_key(k))] for k in d["unstable"][:SHOWN]], wrap=(0,))
            )
            parts.append(more(min(len(d["unstable"]), SHOWN), d["unstable_total"], "rows"))
        out.append(section(f"{t.table.qualified}: {table_verdict(t)}", *parts))
    return out


def diff_to_html(report: DiffReport) -> str:
    doc = diff_to_dict(report)
    summary = doc["summary"]
    tables_bad: Tone | None = "bad" if summary["tables_different"] else None
    diffs_bad: Tone | None = "bad" if summary["differences"] else None
    run: list[tuple[str, Content]] = [("source", report.source), ("target", report.target)]
    run += diff_facts(report)
    body: list[Content] = [
        stats(
            [
                ("tables", _n(summary["tables"]), None),
                ("tables differing", _n(summary["tables_different"]), tables_bad),
                (
                    "tables not verified",
                    _n(summary["tables_unverified"]),
                    "warn" if summary["tables_unverified"] else None,
                ),
                ("differences", _n(summary["differences"]), diffs_bad),
                ("rows compared", _n(summary["rows_compared"]), None),
                ("seconds", f"{report.elapsed_s:.3f}", None),
            ]
        ),
        section("Run", facts(run)),
        *_diff_tables(report, doc),
        notes(report.notes),
    ]
    return page(
        "diff",
        diff_tone(report),
        diff_verdict(report),
        *body,
    )


# == lag ==================================================================================
# chart geometry (SVG user units): room on the left and below for tick labels and titles
_W, _H = 960, 230
_LEFT, _RIGHT, _TOP, _BOTTOM = 76, 24, 14, 44


def _nice(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``raw`` (> 0)."""
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))


def ticks(top: float, steps: int) -> list[float]:
    """Round values from 0 to at least ``top`` in about ``steps`` steps; ``[0.0]`` for 0."""
    if top <= 0:
        return [0.0]
    step = _nice(top / steps)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _si_bytes(value: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


@dataclass(frozen=True)
class _TimeAxis:
    """The shared x axis: values from 0 to ``hi`` (0: a single instant), round ticks."""

    hi: float
    ticks: Sequence[float]
    title: str


def _panel(
    name: str,
    x: _TimeAxis,
    xs: Sequence[float],
    ys: Sequence[float],
    y_title: str,
    y_label: Callable[[float], str],
    point_class: Sequence[str],
    point_title: Sequence[str],
    rpo: float | None = None,
) -> Html:
    """One SVG line chart with a point per sample: ``ys`` over ``xs``, from 0 up."""
    y_ticks = ticks(max([*ys, rpo or 0.0]) * 1.05, 4)
    if len(y_ticks) == 1:  # all zero: keep a visible scale
        y_ticks = [0.0, 1.0]
    # a single instant sits in the middle
    x_lo, x_hi = (0.0, x.hi) if x.hi > 0 else (-1.0, 1.0)
    width, height = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    bottom = _TOP + height

    def px(t: float) -> float:
        return _LEFT + (t - x_lo) / (x_hi - x_lo) * width

    def py(v: float) -> float:
        return bottom - v / y_ticks[-1] * height

    parts: list[Html] = []
    for v in y_ticks:
        y = f"{py(v):.1f}"
        parts.append(void("line", x1=_LEFT, x2=_W - _RIGHT, y1=y, y2=y, class_="grid"))
        parts.append(el("text", y_label(v), x=_LEFT - 8, y=f"{py(v) + 4:.1f}", text_anchor="end"))
    for v in x.ticks:
        at = f"{px(v):.1f}"
        parts.append(void("line", x1=at, x2=at, y1=bottom, y2=bottom + 5, class_="axis"))
        parts.append(el("text", f"{v:g}", x=at, y=bottom + 19, text_anchor="middle"))
    parts.append(void("line", x1=_LEFT, x2=_W - _RIGHT, y1=bottom, y2=bottom, class_="axis"))
    parts.append(void("line", x1=_LEFT, x2=_LEFT, y1=_TOP, y2=bottom, class_="axis"))
    parts.append(el("text", x.title, x=_LEFT + width / 2, y=_H - 6, text_anchor="middle"))
    mid = _TOP + height / 2
    parts.append(
        el(
            "text",
            y_title,
            x=14,
            y=f"{mid:.1f}",
            text_anchor="middle",
            transform=f"rotate(-90 14 {mid:.1f})",
        )
    )
    if rpo is not None:
        y = f"{py(rpo):.1f}"
        parts.append(void("line", x1=_LEFT, x2=_W - _RIGHT, y1=y, y2=y, class_="rpo"))
        parts.append(
            el(
                "text",
                f"RPO {rpo:g} s",
                x=_W - _RIGHT - 4,
                y=f"{py(rpo) - 5:.1f}",
                text_anchor="end",
                class_="rpo",
            )
        )
    points = [(px(t), py(v)) for t, v in zip(xs, ys, strict=True)]
    if len(points) > 1:
        line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in points)
        parts.append(void("polyline", points=line, class_="series"))
    # big enough to see alone, small enough that a thousand do not merge into a band
    r = 3.5 if len(points) <= 60 else 2.5 if len(points) <= 300 else 1.6

    def layer(i: int) -> int:
        # bounds last and never smaller than a readable ring: drawn first, the samples
        # around them covered their hollow markers
        return 2 if "bound" in point_class[i] else 1 if "over" in point_class[i] else 0

    for i in sorted(range(len(points)), key=layer):
        (cx, cy), cls = points[i], point_class[i]
        size = r + 1 if "over" in cls else r
        if "bound" in cls:
            size = max(size + 1, 4.0)
        parts.append(
            el(
                "circle",
                el("title", point_title[i]),
                cx=f"{cx:.1f}",
                cy=f"{cy:.1f}",
                r=f"{size:g}",
                class_=cls,
            )
        )
    return el(
        "svg",
        parts,
        viewBox=f"0 0 {_W} {_H}",
        class_="chart",
        id=name,
        role="img",
        aria_label=f"{y_title} over time, {len(points)} samples",
        data_points=len(points),
    )


def lag_chart(report: LagReport) -> Html:
    """Lag seconds (with the RPO as a dashed line) and bytes over the sample time; samples
    over the RPO are red, lower or upper bounds hollow."""
    samples = report.samples
    start = min(s.at for s in samples)  # not the first: the source's clock may step back
    offsets = [(s.at - start).total_seconds() for s in samples]
    span = max(offsets)
    unit, size = ("s", 1) if span <= 180 else ("min", 60) if span <= 3 * 3600 else ("h", 3600)
    xs = [o / size for o in offsets]
    hi = max(xs)
    # the axis ends with the last sample, not at the next round value
    x_ticks = [t for t in ticks(hi, 6) if t <= hi * (1 + 1e-9)]
    x = _TimeAxis(hi, x_ticks, f"time since {clock(start)} UTC, source clock ({unit})")
    rpo = report.rpo_seconds
    classes = []
    for s in samples:
        cls = "pt"
        if s.bound != "estimate":
            cls += " bound"
        if rpo is not None and s.lag_seconds > rpo:
            cls += " over"
        classes.append(cls)
    titles = [lag_sample_line(s) for s in samples]
    legend = [el("span", el("span", "", class_="key"), "sample")]
    if any("bound" in c for c in classes):
        legend.append(el("span", el("span", "", class_="key bound"), "a bound, not an estimate"))
    if any("bound" in c and "over" in c for c in classes):
        legend.append(el("span", el("span", "", class_="key bound over"), "a bound over the RPO"))
    if any("over" in c for c in classes):
        legend.append(el("span", el("span", "", class_="key over"), "over the RPO"))
    if rpo is not None:
        legend.append(el("span", el("span", "", class_="key rpo"), f"RPO {rpo:g} s"))
    return el(
        "figure",
        _panel(
            "lag-seconds",
            x,
            xs,
            [s.lag_seconds for s in samples],
            "lag (seconds)",
            lambda v: f"{v:g}",
            classes,
            titles,
            rpo,
        ),
        _panel(
            "lag-bytes",
            x,
            xs,
            [float(s.lag_bytes) for s in samples],
            "WAL not replayed (bytes)",
            _si_bytes,
            classes,
            titles,
        ),
        el("figcaption", legend),
    )


def lag_to_html(report: LagReport) -> str:
    doc = lag_to_dict(report)
    rpo = report.rpo_seconds
    over: Tone | None = "bad" if report.status == "exceeded" else None
    body: list[Content] = [
        stats(
            [
                ("max lag (s)", _s(report.max_lag_seconds), over),
                ("max lag (bytes)", _n(report.max_lag_bytes), None),
                ("p50 (s)", _s(report.p50_lag_seconds), None),
                ("p95 (s)", _s(report.p95_lag_seconds), None),
                ("RPO (s)", "none" if rpo is None else f"{rpo:g}", None),
                ("samples", _n(len(report.samples)), None),
            ]
        )
    ]
    if report.samples:
        body.append(section("Lag over time", lag_chart(report)))
    # the text report's "name  value" lines as facts, which wrap (a <pre> scrolled sideways)
    replication = [
        (name, value.strip())
        for name, _, value in (
            line.strip().partition(" ") for line in replication_lines(report.replication)
        )
    ]
    body.append(
        section(
            "Replication",
            facts([("source", report.source), ("target", report.target), *replication]),
        )
    )
    if doc["methods"]:
        body.append(section("How the seconds were measured", facts(doc["methods"].items())))
    body.append(notes(lag_notes(report)))
    if report.samples:
        rows = []
        tones: list[Tone | None] = []
        for s, d in zip(report.samples, doc["samples"], strict=True):
            rows.append(
                [
                    clock(s.at),
                    f"{s.lag_seconds:.3f}",
                    d["bound"],
                    _n(s.lag_bytes),
                    s.method,
                    _yes(s.replay_paused),
                    d["source_lsn"],
                    d["replay_lsn"],
                ]
            )
            tones.append("bad" if rpo is not None and s.lag_seconds > rpo else None)
        head = [
            "at (UTC)",
            "lag (s)",
            "",
            "lag (bytes)",
            "method",
            "replay paused",
            "source LSN",
            "replay LSN",
        ]
        body.append(
            el(
                "details",
                el("summary", f"Samples ({len(rows):,})"),
                table(head, rows, num=(1, 3), word=(2, 4, 6, 7), tones=tones),
                open=len(rows) <= 30,
            )
        )
    return page("lag", lag_tone(report), lag_verdict(report), *body)


# == reconcile ============================================================================
def _explain(f: Finding, d: dict[str, Any], report: ReconcileReport) -> Html:
    """Why a finding is what it is: the reason and what each side holds."""
    ex = d["explain"]
    lines: list[tuple[str, Content]] = []
    if f.verdict == "in_doubt":
        applied = APPLIED[f.applied]
        if report.source is not None:
            applied += f"; on the old primary: {APPLIED[f.applied_on_source]}"
        lines.append(("applied", applied))
    journal = ex["journal"]
    if journal.get("sql"):
        lines.append(("sql", code(" ".join(str(journal["sql"]).split()))))
    lines.append(
        ("journal", code("delete" if f.write.op == "delete" else fmt_values(journal["values"])))
    )
    if journal["before"] is not None:
        lines.append(("before", code(fmt_values(journal["before"]))))
    lines.append(("target", code(fmt_values(ex["target"]))))
    if "source" in ex:
        shown = "(table missing)" if ex["source_table_missing"] else fmt_values(ex["source"])
        lines.append(("old primary", code(shown)))
    if f.chain:
        lines.append(("row history", row_history(f)))
    return Html(el("p", f.reason) + facts(lines))


def _findings(
    title: str,
    items: list[Finding],
    docs: list[dict[str, Any]],
    report: ReconcileReport,
    tone: Tone,
) -> Html | None:
    """A table of findings; ``docs`` are their :func:`finding_to_dict` forms."""
    if not items:
        return None
    rows = []
    for f, d in zip(items[:SHOWN], docs[:SHOWN], strict=True):
        where = el("span", f"journal line {d['line']}", class_="sub")
        rows.append(
            [
                badge(title.lower(), tone),
                code(str(d["txid"])),
                str(d["seq"]),
                d["op"],
                code(d["table"]),
                code(fmt_key(d["key"])),
                [instant(d["ts"]), where],
                _explain(f, d, report),
            ]
        )
    head = ["", "txid", "seq", "op", "table", "key", "ts", "explanation"]
    return section(
        f"{title} ({len(items):,})",
        table(head, rows, num=(2,), word=(0, 1, 3, 4), wrap=(5,), tones=[tone] * len(rows)),
        more(len(rows), len(items), title.lower()),
    )


def reconcile_to_html(report: ReconcileReport) -> str:
    doc = reconcile_to_dict(report)
    c = doc["counts"]

    def count(label: str, n: int, tone: Tone) -> tuple[str, str, Tone | None]:
        return label, _n(n), tone if n else None

    journal = f"{report.journal} ({report.lines:,} lines"
    if report.torn is not None:
        journal += f"; line {report.torn.line} torn, skipped"
    run: list[tuple[str, Content]] = [("journal", journal + ")"), ("target", report.target)]
    if report.source is not None:
        run.append(("old primary", report.source))
    if report.since is not None:
        run.append(("since", f"{doc['since']} ({report.outside_window:,} older writes skipped)"))
    body: list[Content] = [
        stats(
            [
                count("lost", c["lost"], "bad"),
                count("conflicting", c["conflict"], "bad"),
                count("in doubt", c["in_doubt"], "warn"),
                count("durable", c["durable"], "ok"),
                ("superseded", _n(c["superseded"]), None),
                ("aborted", _n(c["aborted"]), None),
                ("writes", _n(report.entries), None),
            ]
        ),
        section("Run", facts(run)),
        _findings("Lost", report.lost, doc["lost"], report, "bad"),
        _findings("Conflict", report.conflicts, doc["conflicts"], report, "bad"),
        _findings("In doubt", report.in_doubt, doc["in_doubt"], report, "warn"),
        notes(report.notes),
    ]
    tone = reconcile_tone(report)
    return page("reconcile", tone, reconcile_verdict(report), *body)


# == failover toolkit =====================================================================
def gate_to_html(r: GateReport) -> str:
    doc = gate_to_dict(r)
    run: list[tuple[str, Content]] = [
        ("source", r.source),
        ("target", r.target),
        ("relation", r.relation),
        ("fenced", _yes(r.fenced)),
        ("caught up", f"{_yes(r.caught_up)} after {r.waited_s:.3f} s (timeout {r.timeout_s:g} s)"),
        ("source LSN", doc["source_lsn"]),
        ("replay LSN", doc["replay_lsn"]),
        ("bytes behind at the end", _n(r.lag_bytes)),
        ("replay paused", _yes(r.replay_paused)),
    ]
    body: list[Content] = [section("Catch-up", facts(run))]
    if r.diff is not None:
        body += _diff_tables(r.diff, doc["diff"])
    body.append(notes(r.notes))
    tone = gate_tone(r)
    return page("gate", tone, GATE_VERDICT[r.status], *body)


def failback_to_html(r: FailbackReport) -> str:
    doc = failback_to_dict(r)
    c = doc["counts"]
    promotion = doc["promoted_at"] or "unknown"
    if r.promotion_source:
        promotion += f" ({r.promotion_source})"
    run: list[tuple[str, Content]] = [
        ("old primary", r.old),
        ("new primary", r.new),
        ("timeline", r.timeline),
        ("divergence", doc["divergence_at"] or "unknown"),
        ("promotion", promotion),
    ]

    def count(label: str, n: int, tone: Tone | None) -> tuple[str, str, Tone | None]:
        return label, _n(n), tone if n else None

    cards = [
        count("old only", c["old_only"], "bad"),
        count("conflicting", c["conflict"], "bad"),
        count("unknown", c["unknown"], "warn"),
        ("new only", _n(c["new_only"]), None),
    ]
    if r.diff is not None:
        summary = doc_diff = diff_to_dict(r.diff)
        cards.append(("tables", _n(summary["summary"]["tables"]), None))
        cards.append(("rows compared", _n(summary["summary"]["rows_compared"]), None))
    cards.append(("seconds", f"{r.elapsed_s:.2f}", None))
    body: list[Content] = [stats(cards), section("Run", facts(run))]
    if r.diff is not None:
        # the per-table summary only: the differing rows are listed by origin below
        body.append(_diff_tables(r.diff, doc_diff)[0])
    if doc["unverified"]:
        cells = [[code(x["table"]), x["reason"]] for x in doc["unverified"]]
        body.append(
            section(
                f"{UNVERIFIED_TITLE}: {len(cells):,}",
                table(["table", "why"], cells, tones=["warn"] * len(cells)),
            )
        )
    head = ["key", "change", "columns", "old primary", "new primary", "why"]
    for origin, title in ORIGIN_TITLES.items():
        rows = [x for x in doc["rows"] if x["origin"] == origin]
        if not rows:
            continue
        tone: Tone | None = None if origin == "new_only" else "bad"
        parts: list[Content] = []
        # one table per table name, as on the diff page: a name column took the width
        # the row images need
        for name in dict.fromkeys(x["table"] for x in rows):
            of_table = [x for x in rows if x["table"] == name]
            cells = [
                [
                    code(fmt_key(x["key"])),
                    x["change"],
                    ", ".join(x["columns"]),
                    [
                        image(x["old"], x["columns"]),
                        el("span", instant(x["old_commit"]), class_="sub"),
                    ],
                    [
                        image(x["new"], x["columns"]),
                        el("span", instant(x["new_commit"]), class_="sub"),
                    ],
                    x["reason"],
                ]
                for x in of_table[:SHOWN]
            ]
            parts += [
                el("h3", code(name), f": {len(of_table):,} row{'s' if len(of_table) != 1 else ''}"),
                table(head, cells, word=(1,), wrap=(0,), val=(3, 4), tones=[tone] * len(cells)),
                more(len(cells), len(of_table), "rows"),
            ]
        body.append(section(f"{title}: {len(rows):,}", *parts))
    body.append(notes(r.notes))
    tone_page = failback_tone(r)
    return page("failback", tone_page, failback_verdict(r), *body)


def health_to_html(r: HealthReport) -> str:
    doc = health_to_dict(r)
    run: list[tuple[str, Content]] = [
        ("source", r.source),
        ("target", r.target),
        ("RPO (s)", "none" if r.rpo_seconds is None else f"{r.rpo_seconds:g}"),
        ("lag", f"{_s(r.lag_seconds)} s, {_n(r.lag_bytes)} bytes"),
        ("timelines", ", ".join(f"{k} {v}" for k, v in r.timelines.items()) or None),
    ]
    rows = [
        [badge(f["level"], LEVEL_TONES[f["level"]]), f["side"], f["check"], f["message"]]
        for f in doc["findings"]
    ]
    tones = [LEVEL_TONES[f["level"]] if f["level"] != "ok" else None for f in doc["findings"]]
    body: list[Content] = [
        section(
            "Checks",
            table(["level", "side", "check", "finding"], rows, word=(0, 1, 2), tones=tones),
        ),
        section("Pair", facts(run)),
    ]
    return page("health", health_tone(r), f"{r.status}: {r.source} → {r.target}", *body)


def files_to_html(r: FilesReport) -> str:
    doc = files_to_dict(r)
    s = doc["summary"]
    run: list[tuple[str, Content]] = [
        ("A", r.dir_a),
        ("B", r.dir_b),
        ("entries", f"{s['files_a']:,} in A, {s['files_b']:,} in B"),
        ("compared", f"{s['compared']:,} files, {s['hashed']:,} hashed"),
        ("bytes read", _n(s["bytes_read"])),
        ("symlinks", f"{s['symlinks']:,} (compared by target, not followed)"),
    ]
    body: list[Content] = [section("Trees", facts(run))]
    if doc["differences"]:
        shown = doc["differences"][:SHOWN]
        rows = [
            [
                badge(d["kind"], "warn" if d["kind"] == "unreadable" else "bad"),
                code(d["path"]),
                d["side"] or None,
                d["reason"] or None,
            ]
            for d in shown
        ]
        body.append(
            section(
                f"Differences ({len(doc['differences']):,})",
                table(["kind", "path", "side", "detail"], rows, word=(0, 2), wrap=(1,)),
                more(len(shown), len(doc["differences"]), "differences"),
            )
        )
    tone = files_tone(r)
    return page("files", tone, files_verdict(r), *body)
