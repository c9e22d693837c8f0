"""Renderers: the same report as text (people), JSON (scripts) and Markdown (PR comments)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .canonical import jsonable
from .types import Changed, Difference, DiffReport, Key, TableResult

DIFF_SCHEMA = "replverify.diff/1"
#: Differences shown per table in text and Markdown (JSON has all that were kept).
SHOWN_PER_TABLE = 20


def _key_names(t: TableResult) -> tuple[str, ...]:
    return t.key if t.key else t.columns


def key_dict(t: TableResult, d: Difference) -> dict[str, Any]:
    return _key_of(t, d.key)


def _key_of(t: TableResult, key: Key) -> dict[str, Any]:
    return {name: jsonable(v) for name, v in zip(_key_names(t), key, strict=False)}


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
            "verified": t.verified,
            "error": t.error,
            "elapsed_s": round(t.elapsed_s, 3),
        }
        tables.append(entry)
    return {
        "schema": DIFF_SCHEMA,
        "status": report.status,
        "complete": report.complete,
        "source": report.source,
        "target": report.target,
        "tables": tables,
        "summary": {
            "tables": len(report.tables),
            "tables_different": sum(not t.consistent for t in report.tables),
            "rows_compared": sum(rows_compared(t) for t in report.tables),
            "differences": sum(t.differences_total for t in report.tables),
            "elapsed_s": round(report.elapsed_s, 3),
        },
        "notes": report.notes,
    }


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# -- text ---------------------------------------------------------------------------------
def _fmt_key(key: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return str(value) if isinstance(value, int) else json.dumps(value, ensure_ascii=False)

    return " ".join(f"{name}={show(value)}" for name, value in key.items())


def _describe(t: TableResult, d: Difference) -> str:
    line = f"{d.kind:<8} {_fmt_key(key_dict(t, d))}"
    if isinstance(d, Changed):
        line += f"   columns: {', '.join(d.columns)}"
    return line


def _key_label(t: TableResult) -> str:
    if t.key_mode == "none":
        return "no key: row multiset"
    return f"key ({', '.join(t.key)})" + (" from --key" if t.key_mode == "--key" else "")


def _verdict(t: TableResult) -> str:
    if t.error:
        return "NOT VERIFIED"
    if t.unstable and not t.differences_total:
        return f"{len(t.unstable):,} rows not verified (written to while compared)"
    if t.consistent:
        return "ok"
    n = t.differences_total
    return f"{n:,} difference{'s' if n != 1 else ''}" if n else "schema differs"


def diff_to_text(report: DiffReport) -> str:
    out = [f"source  {report.source}", f"target  {report.target}", ""]
    for t in report.tables:
        out.append(
            f"{t.table.qualified}  [{_key_label(t)}]  {t.rows_source:,} / {t.rows_target:,} rows,"
            f" {t.chunks:,} chunk{'s' if t.chunks != 1 else ''}"
            f" ({t.chunks_mismatched:,} mismatched)  {_verdict(t)}"
        )
        for note in t.schema_differences:
            out.append(f"    schema   {note}")
        if t.error:
            out.append(f"    error    {t.error}")
        for d in t.differences[:SHOWN_PER_TABLE]:
            out.append(f"    {_describe(t, d)}")
        for k in t.unstable[:SHOWN_PER_TABLE]:
            out.append(f"    unstable {_fmt_key(_key_of(t, k))}   (written to while compared)")
        hidden = t.differences_total - min(len(t.differences), SHOWN_PER_TABLE)
        if hidden > 0:
            out.append(f"    … and {hidden:,} more (use --format json, --max-diffs)")
    for note in report.notes:
        out.append(f"note: {note}")
    total = sum(t.differences_total for t in report.tables)
    rows = sum(rows_compared(t) for t in report.tables)
    differing = sum(not t.consistent for t in report.tables)
    out.append("")
    if not report.complete:
        verdict = "INCOMPLETE"
    else:
        verdict = "CONSISTENT" if report.status == "consistent" else "DIFFERENT"
    out.append(
        f"{verdict}: {len(report.tables)} table{'s' if len(report.tables) != 1 else ''},"
        f" {differing} differing, {total:,} difference{'s' if total != 1 else ''}"
        f" in {rows:,} rows ({report.elapsed_s:.2f} s)"
    )
    return "\n".join(out) + "\n"


# -- Markdown -----------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def diff_to_markdown(report: DiffReport) -> str:
    status = (
        "✅ consistent"
        if report.status == "consistent" and report.complete
        else ("⚠️ incomplete" if not report.complete else "❌ different")
    )
    out = [
        f"### replverify diff: {status}",
        "",
        f"`{report.source}` → `{report.target}`",
        "",
        "| table | key | rows (source / target) | chunks mismatched | differences | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for t in report.tables:
        out.append(
            f"| `{_md_cell(t.table.qualified)}` | {_md_cell(_key_label(t))} |"
            f" {t.rows_source:,} / {t.rows_target:,} | {t.chunks_mismatched:,} / {t.chunks:,} |"
            f" {t.differences_total:,} | {_md_cell(_verdict(t))} |"
        )
    for t in report.tables:
        if t.consistent:
            continue
        out += ["", f"#### `{_md_cell(t.table.qualified)}`", ""]
        out += [f"- schema: {_md_cell(n)}" for n in t.schema_differences]
        if t.error:
            out.append(f"- error: {_md_cell(t.error)}")
        out += [f"- `{_md_cell(_describe(t, d))}`" for d in t.differences[:SHOWN_PER_TABLE]]
        hidden = t.differences_total - min(len(t.differences), SHOWN_PER_TABLE)
        if hidden > 0:
            out.append(f"- … and {hidden:,} more")
    out += [""] + [f"> {n}" for n in report.notes]
    return "\n".join(out).rstrip() + "\n"


Renderer = Callable[[DiffReport], str]
DIFF_RENDERERS: dict[str, Renderer] = {
    "text": diff_to_text,
    "json": lambda r: to_json(diff_to_dict(r)),
    "markdown": diff_to_markdown,
}
