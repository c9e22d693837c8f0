"""The diff report as text, JSON (``replverify.diff/1``) and Markdown."""

from __future__ import annotations

import math
from typing import Any

from replverify.diff.hashing import collision_probability
from replverify.reports.formatting import (
    PLAIN,
    Marks,
    Tone,
    fmt_key,
    fmt_seconds,
    md_cell,
    md_code,
    md_head,
    md_notes,
    md_pair,
    md_text,
    outcome_tone,
)
from replverify.types import Changed, Difference, DiffReport, Key, TableResult
from replverify.values.pgtext import jsonable
from replverify.values.wording import count

DIFF_SCHEMA = "replverify.diff/1"


#: Differences shown per table in text and Markdown (JSON has all that were kept).
SHOWN_PER_TABLE = 20


def _key_names(t: TableResult) -> tuple[str, ...]:
    return t.key if t.key else t.columns


def key_dict(t: TableResult, d: Difference) -> dict[str, Any]:
    return _key_of(t, d.key)


def _key_of(t: TableResult, key: Key) -> dict[str, Any]:
    return {name: jsonable(v) for name, v in zip(_key_names(t), key, strict=False)}


def miss_probability(report: DiffReport) -> float:
    """Upper bound on the chance that some difference hid in a digest collision: every
    chunk found equal could, with probability 2**-bits, have differed. A table compared
    as a multiset matches rows by their hashes: a differing row hides if its hash equals
    that of any row on the other side, so every pair of rows is a chance."""
    return sum(collision_probability(_chances(t), t.digest_bits) for t in report.tables)


def _chances(t: TableResult) -> int:
    if t.key_mode == "none":
        return max(t.rows_source, 1) * max(t.rows_target, 1) if t.chunks else 0
    return t.chunks


def rows_compared(t: TableResult) -> int:
    return max(t.rows_source, t.rows_target)


# -- JSON ---------------------------------------------------------------------------------
def diff_to_dict(report: DiffReport) -> dict[str, Any]:
    tables = []
    for t in report.tables:
        entry: dict[str, Any] = {
            "table": t.table.qualified,
            "key": list(t.key),
            "key_mode": t.key_mode,
            "rows_source": t.rows_source,
            "rows_target": t.rows_target,
            "chunks": t.chunks,
            "chunks_mismatched": t.chunks_mismatched,
            "differences_total": t.differences_total,
            "truncated": t.truncated,
            "differences": [
                {
                    "kind": d.kind,
                    "key": key_dict(t, d),
                    "columns": list(d.columns) if isinstance(d, Changed) else [],
                }
                for d in t.differences
            ],
            "schema_differences": list(t.schema_differences),
            "unstable_total": len(t.unstable),
            "unstable": [_key_of(t, k) for k in t.unstable],
            "digest": t.digest,
            "digest_bits": t.digest_bits,
            "column_forms": t.column_forms,
            "verified": t.verified,
            "error": t.error,
            "elapsed_s": round(t.elapsed_s, 3),
        }
        tables.append(entry)
    return {
        "schema": DIFF_SCHEMA,
        "status": report.status,
        "complete": report.complete,
        "compare": report.compare,
        "source": report.source,
        "target": report.target,
        "tables": tables,
        "summary": {
            "tables": len(report.tables),
            "tables_different": report.tables_differing,
            "tables_unverified": report.tables_unverified,
            "rows_compared": sum(rows_compared(t) for t in report.tables),
            "differences": sum(t.differences_total for t in report.tables),
            "elapsed_s": round(report.elapsed_s, 3),
            "miss_probability": miss_probability(report),
            **({} if report.paused is None else {"paused_s": report.paused}),
        },
        "notes": report.notes,
        "lag": report.lag,
        "digest_choice": report.digest_choice,
    }


def describe_difference(t: TableResult, d: Difference) -> str:
    """One difference on one line: kind, key, and the changed columns."""
    line = f"{d.kind:<8} {fmt_key(key_dict(t, d))}"
    if isinstance(d, Changed):
        line += f"   columns: {', '.join(d.columns)}"
    return line


def key_label(t: TableResult) -> str:
    """How a table's rows were matched: its key (and whether from ``--key``), or none."""
    if t.key_mode == "none":
        return "no key: row multiset"
    return f"key ({', '.join(t.key)})" + (" from --key" if t.key_mode == "--key" else "")


def table_verdict(t: TableResult) -> str:
    """One table's outcome: ``ok``, its differences, or why it was not verified."""
    if t.error:
        return "NOT VERIFIED"
    if t.unstable and not t.differences_total:
        return f"{count(len(t.unstable), 'row')} not verified (written to while compared)"
    if t.consistent:
        return "ok"
    n = t.differences_total
    return f"{n:,} difference{'s' if n != 1 else ''}" if n else "schema differs"


def table_tone(t: TableResult) -> Tone:
    """One table's tone: not verified (``warn``), consistent, or differing."""
    if t.error or (t.unstable and not t.differences_total):
        return "warn"
    return "ok" if t.consistent else "bad"


def diff_tone(report: DiffReport) -> Tone:
    return outcome_tone(report.complete, report.status == "consistent")


def diff_to_text(report: DiffReport, marks: Marks = PLAIN) -> str:
    out = [f"source  {report.source}", f"target  {report.target}", ""]
    for t in report.tables:
        out.append(
            f"{t.table.qualified}  [{key_label(t)}]  {t.rows_source:,} / {t.rows_target:,} rows,"
            f" {t.chunks:,} chunk{'s' if t.chunks != 1 else ''}"
            f" ({t.chunks_mismatched:,} mismatched)  {marks.item(table_verdict(t), table_tone(t))}"
        )
        for note in t.schema_differences:
            out.append(f"    schema   {note}")
        if t.error:
            out.append(f"    error    {t.error}")
        for d in t.differences[:SHOWN_PER_TABLE]:
            out.append(f"    {describe_difference(t, d)}")
        for k in t.unstable[:SHOWN_PER_TABLE]:
            out.append(f"    unstable {fmt_key(_key_of(t, k))}   (written to while compared)")
        hidden = t.differences_total - min(len(t.differences), SHOWN_PER_TABLE)
        if hidden > 0:
            out.append(f"    … and {hidden:,} more (use --format json, --max-diffs)")
    for note in report.notes:
        out.append(f"note: {note}")
    out += [f"{name}: {value}" for name, value in diff_facts(report)]
    out += ["", marks.verdict(diff_verdict(report), diff_tone(report))]
    return "\n".join(out) + "\n"


_COMPARE_FACTS = {
    "exact": "exact (values equal when the binary forms PostgreSQL sends are)",
    "semantic": "semantic (values equal when the type's = says so)",
}


def fmt_chance(p: float) -> str:
    """A small probability, readable: ``3.4e-37 (about 2^-121)``."""
    if p <= 0:
        return "0"
    if p >= 1e-4:
        return f"{p:.2g}"
    return f"{p:.1e} (about 2^{math.log2(p):.0f})"


def miss_fact(report: DiffReport) -> str:
    """The digest widths and the bound on a difference hiding in a digest collision."""
    bits = "/".join(map(str, sorted({t.digest_bits for t in report.tables})))
    if not any(t.chunks for t in report.tables):
        return f"{bits}-bit; no chunk was compared, so no collision bound applies"
    chance = fmt_chance(miss_probability(report))
    return f"{bits}-bit; chance that a difference hid in a collision: at most {chance}"


def diff_facts(report: DiffReport) -> list[tuple[str, str]]:
    """(name, value) lines about the run: digest width and miss chance, lag of a standby."""
    out = [("compare", _COMPARE_FACTS.get(report.compare, report.compare))]
    if report.tables:
        out.append(("digests", miss_fact(report)))
    for when, lag in report.lag.items():
        out.append(
            (
                f"lag at {when}",
                f"{fmt_seconds(float(str(lag['lag_seconds'])))}, {lag['lag_bytes']:,} bytes"
                f" ({lag['method']})",
            )
        )
    return out


def diff_totals(report: DiffReport) -> str:
    """Tables, differing tables, tables not verified (when any), differences and rows:
    the counts of every format's summary."""
    total = sum(t.differences_total for t in report.tables)
    rows = sum(rows_compared(t) for t in report.tables)
    unverified = report.tables_unverified
    return (
        f"{len(report.tables)} table{'s' if len(report.tables) != 1 else ''},"
        f" {report.tables_differing} differing,"
        + (f" {unverified} not verified," if unverified else "")
        + f" {total:,} difference{'s' if total != 1 else ''} in {rows:,} rows"
    )


def diff_verdict(report: DiffReport) -> str:
    """The verdict line that ends the text report."""
    if not report.complete:
        verdict = "INCOMPLETE"
    else:
        verdict = "CONSISTENT" if report.status == "consistent" else "DIFFERENT"
    return f"{verdict}: {diff_totals(report)} ({fmt_seconds(report.elapsed_s)})"


def diff_to_markdown(report: DiffReport) -> str:
    tone = diff_tone(report)
    status = report.status if report.complete else "incomplete"
    out = md_head("diff", tone, status, diff_verdict(report), md_pair(report.source, report.target))
    out += [
        "",
        f"compare: {_COMPARE_FACTS.get(report.compare, report.compare)}",
        "",
        "| table | key | rows (source / target) | chunks mismatched | differences | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for t in report.tables:
        out.append(
            f"| {md_code(t.table.qualified, cell=True)} | {md_cell(key_label(t))} |"
            f" {t.rows_source:,} / {t.rows_target:,} | {t.chunks_mismatched:,} / {t.chunks:,} |"
            f" {t.differences_total:,} | {md_cell(table_verdict(t))} |"
        )
    for t in report.tables:
        if t.consistent:
            continue
        out += ["", f"#### {md_code(t.table.qualified)}: {md_text(table_verdict(t))}", ""]
        out += [f"- schema: {md_text(n)}" for n in t.schema_differences]
        if t.error:
            out.append(f"- error: {md_text(t.error)}")
        shown = t.differences[:SHOWN_PER_TABLE]
        if shown and (t.schema_differences or t.error):
            out.append("")
        if shown:
            out += ["| kind | key | changed columns |", "| --- | --- | --- |"]
        for d in shown:
            columns = ", ".join(d.columns) if isinstance(d, Changed) else ""
            key = md_code(fmt_key(key_dict(t, d)), cell=True)
            out.append(f"| {d.kind} | {key} | {md_cell(columns)} |")
        hidden = t.differences_total - len(shown)
        if hidden > 0:
            out += ["", f"… and {hidden:,} more (--format json, --max-diffs)"]
    out += md_notes(report.notes)
    return "\n".join(out).rstrip() + "\n"
