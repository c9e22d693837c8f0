"""The reconcile report as text, JSON (``replverify.reconcile/1``) and Markdown."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from replverify.reports.formatting import (
    PLAIN,
    Marks,
    Tone,
    fmt_key,
    fmt_seconds,
    fmt_values,
    md_cell,
    md_code,
    md_head,
    md_notes,
)

if TYPE_CHECKING:  # the records only: their module does I/O, rendering must not import it
    from replverify.reconcile.findings import Detail, Finding, ReconcileReport

# -- reconcile --------------------------------------------------------------------------------
RECONCILE_SCHEMA = "replverify.reconcile/1"


#: Findings shown per list in text and Markdown (JSON has all).
SHOWN_FINDINGS = 50


#: Whether an in-doubt write is on a server, as shown.
APPLIED = {True: "yes", False: "no", None: "cannot tell"}


def _journal_json(value: object) -> Any:
    """Journal values as JSON: exact numbers (Decimal) as their text, booleans in
    PostgreSQL's text form (``"t"``/``"f"``) as the database side is shown, so one value
    has one presentation."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dict):
        return {k: _journal_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_journal_json(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def _row_view(f: Finding, row: Detail | None) -> dict[str, Any] | None:
    """A side's values on the journaled columns (the whole row when only the key was
    journaled); None when the row is absent."""
    if row is None or not row.found:
        return None
    cols = f.columns()
    keys = {c for c, _ in f.write.key}
    if all(c in keys for c in cols):
        return dict(row.shown)
    return {c: row.shown.get(c) for c in cols}


def finding_to_dict(f: Finding, *, with_source: bool) -> dict[str, Any]:
    w = f.write
    rec = w.record
    keys = {c for c, _ in w.key}
    written = {c: v for c, v in w.values.items() if c not in keys}
    values = _journal_json(written) if w.op != "delete" else None
    journal: dict[str, Any] = {"values": values}
    journal["before"] = _journal_json(dict(w.before)) if w.before is not None else None
    if rec.sql is not None:
        journal["sql"] = rec.sql
    explain: dict[str, Any] = {
        "reason": f.reason,
        "journal": journal,
        "target": _row_view(f, f.target_row),
    }
    if with_source:
        explain["source"] = _row_view(f, f.source_row)
        explain["source_table_missing"] = f.source_row is None
    explain["differs"] = list(f.differs)
    if f.chain:
        explain["chain"] = [{"txid": t, "seq": s, "op": o} for t, s, o in f.chain]
        explain["chain_writes"] = f.chain_total
    item: dict[str, Any] = {
        "txid": rec.txid,
        "seq": rec.seq,
        "op": w.op,
        "table": w.table.qualified,
        "key": {c: v for c, v in w.key_display},
        "ts": rec.ts_text,
        "line": rec.line,
    }
    if rec.statement is not None and len(rec.statement.rows) > 1:
        item["row"] = w.index
    item["verdict"] = f.verdict
    if f.verdict == "in_doubt":
        item["applied"] = f.applied
        if with_source:
            item["applied_on_source"] = f.applied_on_source
    item["explain"] = explain
    return item


def reconcile_to_dict(report: ReconcileReport) -> dict[str, Any]:
    src = report.source is not None
    return {
        "schema": RECONCILE_SCHEMA,
        "status": report.status,
        "journal": report.journal,
        "target": report.target,
        "source": report.source,
        "since": report.since.isoformat() if report.since is not None else None,
        "lines": report.lines,
        "entries": report.entries,
        "counts": dict(report.counts),
        "outside_window": report.outside_window,
        "torn_tail": (
            {"line": report.torn.line, "bytes": report.torn.size} if report.torn else None
        ),
        "lost": [finding_to_dict(f, with_source=src) for f in report.lost],
        "conflicts": [finding_to_dict(f, with_source=src) for f in report.conflicts],
        "in_doubt": [finding_to_dict(f, with_source=src) for f in report.in_doubt],
        "notes": report.notes,
        "elapsed_s": round(report.elapsed_s, 3),
    }


def finding_tone(f: Finding) -> Tone:
    """Lost and conflicting writes are problems; an in-doubt one could not be told."""
    return "warn" if f.verdict == "in_doubt" else "bad"


def reconcile_tone(report: ReconcileReport) -> Tone:
    return "bad" if report.status == "loss" else "ok"


def _finding_head(f: Finding, marks: Marks = PLAIN) -> str:
    w = f.write
    key = fmt_key({c: v for c, v in w.key_display})
    label = {"in_doubt": "in doubt"}.get(f.verdict, f.verdict)
    rec = w.record
    label = marks.item(label, finding_tone(f)) + " " * (9 - len(label))
    return f"{label} {rec.txid} #{rec.seq}  {w.op} {w.table.qualified} {key}  {rec.ts_text}"


def _finding_lines(f: Finding, report: ReconcileReport, marks: Marks = PLAIN) -> list[str]:
    d = finding_to_dict(f, with_source=report.source is not None)
    ex = d["explain"]
    pad = " " * 10
    out = [_finding_head(f, marks)]
    if f.verdict == "in_doubt":
        applied = f"applied on the target: {APPLIED[f.applied]}"
        if report.source is not None:
            applied += f", on the old primary: {APPLIED[f.applied_on_source]}"
        out.append(f"{pad}{applied}")
    out.append(f"{pad}{f.reason}")
    journal = ex["journal"]
    if journal.get("sql"):
        out.append(f"{pad}sql          {' '.join(str(journal['sql']).split())}")
    if journal["values"] is not None:
        out.append(f"{pad}journal      {fmt_values(journal['values'])}")
    if journal["before"] is not None:
        out.append(f"{pad}before       {fmt_values(journal['before'])}")
    out.append(f"{pad}target       {fmt_values(ex['target'])}")
    if "source" in ex:
        shown = "(table missing)" if ex["source_table_missing"] else fmt_values(ex["source"])
        out.append(f"{pad}old primary  {shown}")
    if f.chain:
        out.append(f"{pad}row history  {row_history(f)}")
    return out


def row_history(f: Finding) -> str:
    """The writes to a finding's row, oldest first (those not kept counted)."""
    history = ", ".join(f"{o} {t} #{s}" for t, s, o in f.chain)
    more = f.chain_total - len(f.chain)
    return (f"… {more:,} earlier, " if more > 0 else "") + history


def _tally(report: ReconcileReport) -> str:
    c = report.counts
    parts = [
        f"{c['lost']:,} lost",
        f"{c['conflict']:,} conflicting",
        f"{c['in_doubt']:,} in doubt",
        f"{c['durable']:,} durable",
        f"{c['superseded']:,} superseded",
        f"{c['aborted']:,} aborted",
    ]
    return ", ".join(parts) + f" of {report.entries:,} writes"


def reconcile_to_text(report: ReconcileReport, marks: Marks = PLAIN) -> str:
    journal = f"journal  {report.journal}  ({report.lines:,} lines"
    if report.torn is not None:
        journal += f"; line {report.torn.line} torn, skipped"
    out = [journal + ")", f"target   {report.target}"]
    if report.source is not None:
        out.append(f"source   {report.source} (old primary)")
    if report.since is not None:
        out.append(
            f"since    {report.since.isoformat()} ({report.outside_window:,} older writes skipped)"
        )
    for title, items in (
        ("lost", report.lost),
        ("conflicts", report.conflicts),
        ("in doubt", report.in_doubt),
    ):
        if not items:
            continue
        out.append("")
        for f in items[:SHOWN_FINDINGS]:
            out += _finding_lines(f, report, marks)
        if len(items) > SHOWN_FINDINGS:
            out.append(f"… and {len(items) - SHOWN_FINDINGS:,} more {title} (--format json)")
    for note in report.notes:
        out.append(f"note: {note}")
    out += ["", marks.verdict(reconcile_verdict(report), reconcile_tone(report))]
    return "\n".join(out) + "\n"


def reconcile_verdict(report: ReconcileReport) -> str:
    """The verdict line that ends the text report."""
    verdict = "LOSS" if report.status == "loss" else "NO LOSS"
    return f"{verdict}: {_tally(report)} ({fmt_seconds(report.elapsed_s)})"


def reconcile_to_markdown(report: ReconcileReport) -> str:
    tone, status = reconcile_tone(report), "loss" if report.status == "loss" else "no loss"
    c = report.counts
    where = f"journal {md_code(report.journal)} against {md_code(report.target)}"
    if report.source:
        where += f" (old primary {md_code(report.source)})"
    out = md_head("reconcile", tone, status, reconcile_verdict(report), where)
    out += [
        "",
        "| lost | conflict | in doubt | durable | superseded | aborted | writes |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {c['lost']:,} | {c['conflict']:,} | {c['in_doubt']:,} | {c['durable']:,} |"
        f" {c['superseded']:,} | {c['aborted']:,} | {report.entries:,} |",
    ]
    with_source = report.source is not None
    for title, items in (
        ("Lost", report.lost),
        ("Conflicts", report.conflicts),
        ("In doubt", report.in_doubt),
    ):
        if not items:
            continue
        head = "| txid | seq | op | table | key | why | journal | target |"
        rule = "| --- | ---: | --- | --- | --- | --- | --- | --- |"
        if with_source:
            head += " old primary |"
            rule += " --- |"
        out += ["", f"#### {title}", "", head, rule]
        for f in items[:SHOWN_FINDINGS]:
            d = finding_to_dict(f, with_source=with_source)
            ex = d["explain"]
            why = f.reason
            if f.verdict == "in_doubt":
                why = f"applied: {APPLIED[f.applied]}; {why}"
            journal = "delete" if f.write.op == "delete" else fmt_values(ex["journal"]["values"])
            values = [journal, fmt_values(ex["target"])]
            if with_source:
                values.append(fmt_values(ex.get("source")))
            cells = [
                md_code(str(d["txid"]), cell=True),
                str(d["seq"]),
                d["op"],
                md_code(d["table"], cell=True),
                md_code(fmt_key(d["key"]), cell=True),
                md_cell(why),
                *(md_code(v, cell=True) for v in values),
            ]
            out.append("| " + " | ".join(cells) + " |")
        if len(items) > SHOWN_FINDINGS:
            out += ["", f"… and {len(items) - SHOWN_FINDINGS:,} more (--format json)"]
    out += md_notes(report.notes)
    return "\n".join(out).rstrip() + "\n"
