"""The HTML page of each report kind. The pages show what the text and JSON reports
show, through the same helpers of :mod:`replverify.reports.diff`, ``lag``, ``reconcile``
and ``ops``, built from the blocks of :mod:`replverify.reports.html`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from replverify.reports.formatting import Tone, clock, fmt_key, fmt_values
from replverify.reports.lag import (
    lag_notes,
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
    from replverify.ops.failback_attribution import FailbackReport
    from replverify.ops.files import FilesReport
    from replverify.ops.gate import GateReport
    from replverify.ops.health import HealthReport
    from replverify.reconcile.findings import Finding, ReconcileReport

from replverify.reports.chart import (
    lag_chart,
)
from replverify.reports.html import (
    SHOWN,
    Content,
    Html,
    _n,
    _s,
    _yes,
    badge,
    code,
    el,
    facts,
    image,
    instant,
    more,
    notes,
    page,
    section,
    stats,
    table,
)


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
