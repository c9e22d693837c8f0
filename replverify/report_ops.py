"""Renderers for the failover toolkit: gate, failback, health and files, each as text,
JSON (``replverify.<name>/1``) and Markdown. The diff inside a gate or failback report
uses :mod:`replverify.report`'s own ``replverify.diff/1`` form."""

from __future__ import annotations

from typing import Any

from .failback import FAILBACK_SCHEMA, FailbackReport, FailbackRow
from .files import FILES_SCHEMA, FilesReport
from .gate import GateReport
from .health import HEALTH_SCHEMA, HealthReport
from .lsn import format_lsn
from .report import diff_to_dict, fmt_key, iso_utc, md_cell, renderers

__all__ = [
    "FAILBACK_RENDERERS",
    "FILES_RENDERERS",
    "GATE_RENDERERS",
    "GATE_SCHEMA",
    "GATE_VERDICT",
    "HEALTH_RENDERERS",
    "ORIGIN_TITLES",
    "UNVERIFIED_TITLE",
    "failback_to_dict",
    "failback_verdict",
    "files_to_dict",
    "files_verdict",
    "gate_to_dict",
    "health_to_dict",
]

GATE_SCHEMA = "replverify.gate/1"
SHOWN = 50


# == gate ==================================================================================
def gate_to_dict(r: GateReport) -> dict[str, Any]:
    return {
        "schema": GATE_SCHEMA,
        "status": r.status,
        "source": r.source,
        "target": r.target,
        "relation": r.relation,
        "fenced": r.fenced,
        "caught_up": r.caught_up,
        "waited_s": round(r.waited_s, 3),
        "timeout_s": r.timeout_s,
        "source_lsn": None if r.source_lsn is None else format_lsn(r.source_lsn),
        "replay_lsn": None if r.replay_lsn is None else format_lsn(r.replay_lsn),
        "lag_bytes": r.lag_bytes,
        "replay_paused": r.replay_paused,
        "diff": None if r.diff is None else diff_to_dict(r.diff),
        "complete": r.complete,
        "notes": r.notes,
        "elapsed_s": round(r.elapsed_s, 3),
    }


#: The verdict line of each gate status.
GATE_VERDICT = {
    "safe": "SAFE to switch: the target has replayed everything and holds the same data",
    "not_caught_up": "NOT SAFE: the target has not replayed everything the source wrote",
    "different": "NOT SAFE: the target's data differs from the source's",
    "unverified": "NOT SAFE: some tables could not be verified",
}


def _gate_lines(r: GateReport) -> list[str]:
    out = [
        f"source: {r.source}",
        f"target: {r.target}",
        f"relation: {r.relation}",
        f"fenced: {'yes' if r.fenced else 'no'}",
        f"caught up: {'yes' if r.caught_up else 'no'} after {r.waited_s:.2f} s "
        f"(timeout {r.timeout_s:g} s, {r.lag_bytes if r.lag_bytes is not None else '?'} "
        "bytes behind at the end)",
    ]
    if r.diff is not None:
        d = r.diff
        total = sum(t.differences_total for t in d.tables)
        unverified = sum(not t.verified for t in d.tables)
        out.append(
            f"diff: {d.status}, {len(d.tables)} tables, {total} differences"
            + (f", {unverified} not verified" if unverified else "")
        )
        for t in d.tables:
            if t.error:
                found = f" ({t.differences_total} differences found)" if t.differences_total else ""
                out.append(f"  {t.table}: not verified{found}: {t.error}")
            elif not t.consistent:
                out.append(f"  {t.table}: {t.differences_total} differences")
    return out


def gate_to_text(r: GateReport) -> str:
    out = [GATE_VERDICT[r.status], *_gate_lines(r)]
    out += [f"note: {n}" for n in r.notes]
    return "\n".join(out) + "\n"


def gate_to_markdown(r: GateReport) -> str:
    out = [f"## replverify gate: {r.status}", "", f"**{GATE_VERDICT[r.status]}**", ""]
    out += [f"- {md_cell(line)}" for line in _gate_lines(r)]
    out += [""] + [f"> {md_cell(n)}" for n in r.notes]
    return "\n".join(out).rstrip() + "\n"


# == failback ==============================================================================
def _row_dict(row: FailbackRow) -> dict[str, Any]:
    return {
        "table": str(row.table),
        "key": row.key,
        "origin": row.origin,
        "change": row.change,
        "columns": list(row.columns),
        "old_commit": iso_utc(row.old_commit),
        "new_commit": iso_utc(row.new_commit),
        "old": row.old_image,
        "new": row.new_image,
        "reason": row.reason,
    }


def failback_to_dict(r: FailbackReport) -> dict[str, Any]:
    return {
        "schema": FAILBACK_SCHEMA,
        "status": r.status,
        "old": r.old,
        "new": r.new,
        "divergence_at": iso_utc(r.divergence_at),
        "promoted_at": iso_utc(r.promoted_at),
        "promotion_source": r.promotion_source,
        "timeline": r.timeline,
        "method": r.method,
        "xid_horizon": None
        if r.horizon is None
        else {"lo": r.horizon.lo, "hi": r.horizon.hi, "source": r.horizon.source},
        "methods_agreement": dict(r.agreement),
        "replay_statements": r.replayed,
        "can_tell": r.can_tell,
        "counts": r.counts(),
        "rows": [_row_dict(x) for x in r.rows],
        "complete": r.complete,
        "unverified": [{"table": str(t), "reason": why} for t, why in r.unverified],
        "notes": r.notes,
        "elapsed_s": round(r.elapsed_s, 3),
    }


#: Section titles of the failback rows, by origin, in report order.
ORIGIN_TITLES = {
    "old_only": "Only on the old primary (changed there after the divergence; replayable)",
    "conflict": "Changed on both sides (not replayed)",
    "unknown": "Cannot tell who changed it (not replayed)",
    "new_only": "Written on the new primary after its promotion (keep)",
}


def failback_verdict(r: FailbackReport) -> str:
    """Nothing to recover, or how many rows of each origin need recovering."""
    if r.status == "nothing_to_recover":
        return "nothing on the old primary is missing from the new one"
    n = len(r.unverified)
    unverified = f"{n} table{'s' if n != 1 else ''} could not be verified"
    if r.status == "unverified":
        return f"{unverified}: the old primary may hold changes there that the new one lacks"
    c = r.counts()
    return (
        f"{c['old_only']} old-only, {c['conflict']} conflicting, {c['unknown']} unknown "
        "rows: recover them before rewinding the old primary" + (f"; {unverified}" if n else "")
    )


#: The section title of the tables a failback could not verify.
UNVERIFIED_TITLE = "Not verified (the old primary may hold changes here)"


def _fb_head(r: FailbackReport) -> list[str]:
    return [
        f"failback: {failback_verdict(r)}",
        f"old primary: {r.old}",
        f"new primary: {r.new} (timeline {r.timeline})",
        f"divergence: {iso_utc(r.divergence_at) or 'unknown'}"
        + (f"; xid horizon {_horizon_text(r)}" if r.horizon else ""),
        f"promotion: {iso_utc(r.promoted_at) or 'unknown'}"
        + (f" ({r.promotion_source})" if r.promotion_source else ""),
    ]


def _horizon_text(r: FailbackReport) -> str:
    h = r.horizon
    assert h is not None
    return str(h.lo) if h.exact else f"in [{h.lo}, {h.hi}]"


def failback_to_text(r: FailbackReport) -> str:
    out = _fb_head(r)
    if r.unverified:
        out += ["", f"{UNVERIFIED_TITLE}: {len(r.unverified)}"]
        out += [f"  {t}: {why}" for t, why in r.unverified]
    for origin, title in ORIGIN_TITLES.items():
        rows = r.of(origin)  # type: ignore[arg-type]
        if not rows:
            continue
        total = r.counts()[origin]
        out += ["", f"{title}: {total}"]
        for row in rows[:SHOWN]:
            cols = f" [{', '.join(row.columns)}]" if row.columns else ""
            out.append(f"  {row.table} {fmt_key(row.key)}: {row.change}{cols} - {row.reason}")
        if total > min(len(rows), SHOWN):
            out.append(f"  ... and {total - min(len(rows), SHOWN)} more")
    out += [""] + [f"note: {n}" for n in r.notes]
    return "\n".join(out).rstrip() + "\n"


def failback_to_markdown(r: FailbackReport) -> str:
    head = _fb_head(r)
    out = [f"## replverify {head[0]}", ""] + [f"- {md_cell(x)}" for x in head[1:]]
    if r.unverified:
        out += ["", f"### {UNVERIFIED_TITLE}", "", "| table | why |", "| --- | --- |"]
        out += [f"| {t} | {md_cell(why)} |" for t, why in r.unverified]
    for origin, title in ORIGIN_TITLES.items():
        rows = r.of(origin)  # type: ignore[arg-type]
        if not rows:
            continue
        out += [
            "",
            f"### {title}",
            "",
            "| table | key | change | why |",
            "| --- | --- | --- | --- |",
        ]
        out += [
            f"| {row.table} | {md_cell(fmt_key(row.key))} | {row.change} | {md_cell(row.reason)} |"
            for row in rows[:SHOWN]
        ]
    out += [""] + [f"> {md_cell(n)}" for n in r.notes]
    return "\n".join(out).rstrip() + "\n"


# == health ================================================================================
def health_to_dict(r: HealthReport) -> dict[str, Any]:
    return {
        "schema": HEALTH_SCHEMA,
        "status": r.status,
        "source": r.source,
        "target": r.target,
        "rpo_seconds": r.rpo_seconds,
        "complete": r.complete,
        "lag_bytes": r.lag_bytes,
        "lag_seconds": None if r.lag_seconds is None else round(r.lag_seconds, 3),
        "timelines": r.timelines,
        "findings": [
            {"check": f.check, "level": f.level, "side": f.side or None, "message": f.message}
            for f in r.findings
        ],
        "elapsed_s": round(r.elapsed_s, 3),
    }


def _finding(f: Any) -> str:
    where = f"{f.side} " if f.side else ""
    return f"{f.level:<4}  {where}{f.check}: {f.message}"


def health_to_text(r: HealthReport) -> str:
    out = [f"health of {r.source} -> {r.target}: {r.status}"]
    out += [_finding(f) for f in r.findings]
    return "\n".join(out) + "\n"


def health_to_markdown(r: HealthReport) -> str:
    out = [
        f"## replverify health: {r.status}",
        "",
        f"{md_cell(r.source)} → {md_cell(r.target)}",
        "",
        "| level | side | check | finding |",
        "| --- | --- | --- | --- |",
    ]
    out += [f"| {f.level} | {f.side} | {f.check} | {md_cell(f.message)} |" for f in r.findings]
    return "\n".join(out) + "\n"


# == files =================================================================================
def files_to_dict(r: FilesReport) -> dict[str, Any]:
    return {
        "schema": FILES_SCHEMA,
        "status": r.status,
        "complete": r.complete,
        "dir_a": r.dir_a,
        "dir_b": r.dir_b,
        "differences": [
            {"kind": d.kind, "path": d.path, "reason": d.reason, "side": d.side}
            for d in r.differences
        ],
        "counts": r.counts(),
        "summary": {
            "files_a": r.files_a,
            "files_b": r.files_b,
            "compared": r.compared,
            "hashed": r.hashed,
            "bytes_read": r.bytes_read,
            "symlinks": r.symlinks,
            "elapsed_s": round(r.elapsed_s, 3),
        },
    }


def _file_line(d: Any) -> str:
    side = f" ({d.side})" if d.side else ""
    reason = f": {d.reason}" if d.reason else ""
    return f"{d.kind:<10} {d.path}{side}{reason}"


def files_verdict(r: FilesReport) -> str:
    """``identical``, or how many entries differ in which way."""
    if r.status == "identical":
        return "identical"
    return ", ".join(f"{v} {k}" for k, v in r.counts().items() if v)


def files_to_text(r: FilesReport) -> str:
    out = [
        f"{r.dir_a} vs {r.dir_b}: {files_verdict(r)}",
        f"{r.files_a} entries in A, {r.files_b} in B; {r.compared} files compared, "
        f"{r.hashed} hashed ({r.bytes_read:,} bytes read), {r.symlinks} symlinks "
        f"(compared by target, not followed)",
    ]
    out += [_file_line(d) for d in r.differences[:1000]]
    if len(r.differences) > 1000:
        out.append(f"... and {len(r.differences) - 1000} more (see --format json)")
    return "\n".join(out) + "\n"


def files_to_markdown(r: FilesReport) -> str:
    out = [f"## replverify files: {r.status}", "", f"`{r.dir_a}` vs `{r.dir_b}`", ""]
    if r.differences:
        out += ["| kind | path | detail |", "| --- | --- | --- |"]
        out += [
            f"| {d.kind} | `{md_cell(d.path)}` | {md_cell(d.reason)} |"
            for d in r.differences[:1000]
        ]
    return "\n".join(out) + "\n"


GATE_RENDERERS = renderers(gate_to_text, gate_to_dict, gate_to_markdown)
FAILBACK_RENDERERS = renderers(failback_to_text, failback_to_dict, failback_to_markdown)
HEALTH_RENDERERS = renderers(health_to_text, health_to_dict, health_to_markdown)
FILES_RENDERERS = renderers(files_to_text, files_to_dict, files_to_markdown)
