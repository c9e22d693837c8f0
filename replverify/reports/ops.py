"""Renderers for the failover toolkit: gate, failback, health and files, each as text,
JSON (``replverify.<name>/1``) and Markdown. The diff inside a gate or failback report
uses :mod:`replverify.reports.diff`'s own ``replverify.diff/1`` form."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replverify.reports.diff import diff_to_dict
from replverify.reports.formatting import (
    PLAIN,
    Marks,
    Tone,
    fmt_key,
    fmt_seconds,
    iso_utc,
    md_cell,
    md_code,
    md_head,
    md_notes,
    md_pair,
    md_text,
    outcome_tone,
)
from replverify.values.lsn import format_lsn
from replverify.values.wording import count

if TYPE_CHECKING:  # the records only: their modules do I/O, rendering must not import it
    from replverify.ops.failback_attribution import FailbackReport, FailbackRow
    from replverify.ops.files import FilesReport, RpoCheck
    from replverify.ops.gate import GateReport
    from replverify.ops.health import HealthReport

__all__ = [
    "FAILBACK_SCHEMA",
    "FILES_SCHEMA",
    "GATE_SCHEMA",
    "GATE_VERDICT",
    "HEALTH_SCHEMA",
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
FAILBACK_SCHEMA = "replverify.failback/1"
HEALTH_SCHEMA = "replverify.health/1"
FILES_SCHEMA = "replverify.files/1"
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
        f"caught up: {'yes' if r.caught_up else 'no'} after {fmt_seconds(r.waited_s)} "
        f"(timeout {r.timeout_s:g} s, {r.lag_bytes if r.lag_bytes is not None else '?'} "
        "bytes behind at the end)",
    ]
    if r.diff is not None:
        d = r.diff
        total = sum(t.differences_total for t in d.tables)
        unverified = sum(not t.verified for t in d.tables)
        out.append(
            f"diff: {d.status}, {count(len(d.tables), 'table')}, {count(total, 'difference')}"
            + (f", {unverified} not verified" if unverified else "")
        )
        for t in d.tables:
            if t.error:
                found = (
                    f" ({count(t.differences_total, 'difference')} found)"
                    if t.differences_total
                    else ""
                )
                out.append(f"  {t.table}: not verified{found}: {t.error}")
            elif not t.consistent:
                out.append(f"  {t.table}: {count(t.differences_total, 'difference')}")
    return out


def gate_tone(r: GateReport) -> Tone:
    return outcome_tone(r.complete, r.status == "safe")


def gate_to_text(r: GateReport, marks: Marks = PLAIN) -> str:
    out = [marks.verdict(GATE_VERDICT[r.status], gate_tone(r)), *_gate_lines(r)]
    out += [f"note: {n}" for n in r.notes]
    return "\n".join(out) + "\n"


def gate_to_markdown(r: GateReport) -> str:
    tone = gate_tone(r)
    status = r.status.replace("_", " ") if r.complete else "incomplete"
    out = md_head("gate", tone, status, GATE_VERDICT[r.status], md_pair(r.source, r.target))
    out += [""] + [f"- {md_text(line.strip())}" for line in _gate_lines(r)[2:]]
    out += md_notes(r.notes)
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
    unverified = f"{count(n, 'table')} could not be verified"
    if r.status == "unverified":
        return f"{unverified}: the old primary may hold changes there that the new one lacks"
    c = r.counts()
    return (
        f"{count(c['old_only'], 'old-only row')}, {c['conflict']:,} conflicting, "
        f"{c['unknown']:,} unknown: recover them before rewinding the old primary"
        + (f"; {unverified}" if n else "")
    )


#: The section title of the tables a failback could not verify.
UNVERIFIED_TITLE = "Not verified (the old primary may hold changes here)"


def failback_tone(r: FailbackReport) -> Tone:
    return outcome_tone(r.complete, r.status == "nothing_to_recover")


def _fb_head(r: FailbackReport, marks: Marks = PLAIN) -> list[str]:
    return [
        marks.verdict(f"failback: {failback_verdict(r)}", failback_tone(r)),
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


def failback_to_text(r: FailbackReport, marks: Marks = PLAIN) -> str:
    out = _fb_head(r, marks)
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
    tone = failback_tone(r)
    status = r.status.replace("_", " ") if r.complete else "incomplete"
    out = md_head("failback", tone, status, failback_verdict(r), md_pair(r.old, r.new))
    timeline = "unknown" if r.timeline is None else r.timeline
    out += ["", f"- timeline of the new primary: {timeline}"]
    out += [f"- {md_text(x)}" for x in _fb_head(r)[3:]]
    if r.unverified:
        out += ["", f"#### {UNVERIFIED_TITLE}", "", "| table | why |", "| --- | --- |"]
        out += [f"| {md_code(str(t), cell=True)} | {md_cell(why)} |" for t, why in r.unverified]
    for origin, title in ORIGIN_TITLES.items():
        rows = r.of(origin)  # type: ignore[arg-type]
        if not rows:
            continue
        out += [
            "",
            f"#### {md_text(title)}: {len(rows):,}",
            "",
            "| table | key | change | columns | why |",
            "| --- | --- | --- | --- | --- |",
        ]
        out += [
            f"| {md_code(str(row.table), cell=True)} | {md_code(fmt_key(row.key), cell=True)} |"
            f" {row.change} | {md_cell(', '.join(row.columns))} | {md_cell(row.reason)} |"
            for row in rows[:SHOWN]
        ]
        if len(rows) > SHOWN:
            out += ["", f"… and {len(rows) - SHOWN:,} more (--format json)"]
    out += md_notes(r.notes)
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


#: The tone of a health check's level, and of the report's status.
LEVEL_TONES: dict[str, Tone] = {"ok": "ok", "warn": "warn", "fail": "bad"}
HEALTH_TONES: dict[str, Tone] = {"ok": "ok", "problem": "bad", "unknown": "warn"}


def health_tone(r: HealthReport) -> Tone:
    return HEALTH_TONES[r.status]


def _finding(f: Any, marks: Marks = PLAIN) -> str:
    where = f"{f.side} " if f.side else ""
    level = marks.item(f.level, LEVEL_TONES[f.level]) + " " * (4 - len(f.level))
    return f"{level}  {where}{f.check}: {f.message}"


def health_to_text(r: HealthReport, marks: Marks = PLAIN) -> str:
    out = [f"health of {r.source} -> {r.target}: {marks.item(r.status, health_tone(r))}"]
    out += [_finding(f, marks) for f in r.findings]
    return "\n".join(out) + "\n"


def health_verdict(r: HealthReport) -> str:
    """How many checks found what: ``3 checks: 1 ok, 1 warn, 1 fail``."""
    levels = [f.level for f in r.findings]
    counts = ", ".join(f"{levels.count(x)} {x}" for x in ("ok", "warn", "fail") if x in levels)
    n = len(levels)
    return f"{r.status}: {n} check{'s' if n != 1 else ''}" + (f": {counts}" if counts else "")


def health_to_markdown(r: HealthReport) -> str:
    tone = health_tone(r)
    out = md_head("health", tone, r.status, health_verdict(r), md_pair(r.source, r.target))
    out += [
        "",
        "| level | side | check | finding |",
        "| --- | --- | --- | --- |",
    ]
    out += [
        f"| {f.level} | {md_cell(f.side)} | {md_cell(f.check)} | {md_cell(f.message)} |"
        for f in r.findings
    ]
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
            {
                "kind": d.kind,
                "path": d.path,
                "reason": d.reason,
                "side": d.side,
                "method": d.method,
            }
            for d in r.differences
        ],
        "counts": r.counts(),
        "rpo": _files_rpo_dict(r.rpo),
        "resumed_after": r.resumed_after,
        "summary": {
            "files_a": r.files_a,
            "files_b": r.files_b,
            "compared": r.compared,
            "by_listing": r.by_listing,
            "hashed": r.hashed,
            "bytes_read": r.bytes_read,
            "symlinks": r.symlinks,
            "elapsed_s": round(r.elapsed_s, 3),
        },
    }


def _files_rpo_dict(c: RpoCheck | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "rpo_seconds": c.rpo_seconds,
        "checked_at": c.checked_at.isoformat(),
        "status": c.status,
        "last_sync": None if c.last_sync is None else c.last_sync.isoformat(),
        "lag_seconds": c.lag_seconds,
        "within_rpo": c.within,
        "note": c.note,
    }


def _files_rpo_line(c: RpoCheck) -> str:
    if c.last_sync is None or c.lag_seconds is None:
        head = f"RPO {c.rpo_seconds:g} s: cannot tell (status {c.status or 'unknown'})"
    else:
        verdict = {True: "within", False: "EXCEEDED", None: "cannot tell"}[c.within]
        head = (
            f"RPO {c.rpo_seconds:g} s: {verdict}; secondary {c.status}, last sync "
            f"{c.last_sync.isoformat()} ({c.lag_seconds:.0f} s ago)"
        )
    return f"{head}; {c.note}" if c.note else head


def _file_line(d: Any) -> str:
    side = f" ({d.side})" if d.side else ""
    reason = f": {d.reason}" if d.reason else ""
    return f"{d.kind:<10} {d.path}{side}{reason} [{d.method}]"


def files_verdict(r: FilesReport) -> str:
    """``identical``, or how many entries differ in which way (and the RPO verdict)."""
    text = (
        "identical"
        if r.status == "identical"
        else ", ".join(f"{v} {k}" for k, v in r.counts().items() if v)
    )
    if r.rpo is not None and r.rpo.within is False:
        text += ", RPO exceeded"
    return text


def files_tone(r: FilesReport) -> Tone:
    """Identical copies within the RPO are ``ok``; an exceeded RPO is a problem even
    when the copies are identical (exit 1, as for a difference)."""
    return outcome_tone(r.complete, r.status == "identical" and r.within_rpo is not False)


def files_to_text(r: FilesReport, marks: Marks = PLAIN) -> str:
    out = [
        f"{r.dir_a} vs {r.dir_b}: {marks.item(files_verdict(r), files_tone(r))}",
        f"{r.files_a} entries in A, {r.files_b} in B; {r.compared} files compared, "
        f"{r.by_listing} settled from the listings (size, Content-MD5), "
        f"{r.hashed} by content ({r.bytes_read:,} bytes read)"
        + (f", {r.symlinks} symlinks (compared by target, not followed)" if r.symlinks else ""),
    ]
    if r.resumed_after is not None:
        out.append(f"resumed: content read before up to {r.resumed_after} taken from --state")
    if r.rpo is not None:
        out.append(_files_rpo_line(r.rpo))
    out += [_file_line(d) for d in r.differences[:1000]]
    if len(r.differences) > 1000:
        out.append(f"... and {len(r.differences) - 1000} more (see --format json)")
    return "\n".join(out) + "\n"


def files_to_markdown(r: FilesReport) -> str:
    tone = files_tone(r)
    status = r.status if r.complete else "incomplete"
    where = f"{md_code(r.dir_a)} vs {md_code(r.dir_b)}"
    out = md_head("files", tone, status, files_verdict(r), where)
    out += [
        "",
        f"{r.compared:,} compared: {r.by_listing:,} from the listings, {r.hashed:,} by content.",
    ]
    if r.rpo is not None:
        out += ["", md_text(_files_rpo_line(r.rpo))]
    if r.differences:
        out += ["", "| kind | path | side | detail | found by |", "| --- | --- | --- | --- | --- |"]
        for d in r.differences[:1000]:
            path = md_code(d.path, cell=True)
            out.append(
                f"| {d.kind} | {path} | {md_cell(d.side)} | {md_cell(d.reason)} | {d.method} |"
            )
        if len(r.differences) > 1000:
            out += ["", f"… and {len(r.differences) - 1000:,} more (--format json)"]
    return "\n".join(out) + "\n"
