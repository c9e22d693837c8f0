"""Renderers: the same report as text (people), JSON (scripts) and Markdown (PR comments)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, TypeVar

from replverify.diff.hashing import collision_probability
from replverify.lag.sampler import LAG_SCHEMA, METHODS, LagReport, LagSample, ReplicationState
from replverify.reconcile.run import Detail, Finding, ReconcileReport
from replverify.types import Changed, Difference, DiffReport, Key, TableResult
from replverify.values.canonical import jsonable
from replverify.values.lsn import format_lsn

DIFF_SCHEMA = "replverify.diff/1"
#: Differences shown per table in text and Markdown (JSON has all that were kept).
SHOWN_PER_TABLE = 20


def fmt_seconds(seconds: float) -> str:
    """A measured duration, one format in every report: to the millisecond, ``0.000 s``,
    ``18.460 s``. (Limits the user gave, such as an RPO, are echoed as given.)"""
    return f"{seconds:,.3f} s"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``1 row``, ``2 rows``, ``1,000 rows``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


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
        },
        "notes": report.notes,
        "lag": report.lag,
        "digest_choice": report.digest_choice,
    }


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


R = TypeVar("R")


def renderers(
    text: Callable[[R], str], as_dict: Callable[[R], dict[str, Any]], markdown: Callable[[R], str]
) -> dict[str, Callable[[R], str]]:
    """The ``--format`` choices of one report kind: text, JSON of ``as_dict``, Markdown,
    and a self-contained HTML page."""
    return {
        "text": text,
        "json": lambda r: to_json(as_dict(r)),
        "markdown": markdown,
        "html": html_page,
    }


def html_page(report: object) -> str:
    """Any report as one self-contained HTML page (:mod:`replverify.reports.html`)."""
    # Imported here: report_html builds on this module's helpers.
    from replverify.reports.html import to_html

    return to_html(report)


# -- text ---------------------------------------------------------------------------------
def fmt_key(key: dict[str, Any]) -> str:
    """``col=value`` pairs of a JSON key for text reports (strings quoted, ints bare)."""

    def show(value: Any) -> str:
        if isinstance(value, bool):  # as PostgreSQL prints it, like the database's rows
            value = "t" if value else "f"
        return str(value) if isinstance(value, int) else json.dumps(value, ensure_ascii=False)

    return " ".join(f"{name}={show(value)}" for name, value in key.items())


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


def diff_to_text(report: DiffReport) -> str:
    out = [f"source  {report.source}", f"target  {report.target}", ""]
    for t in report.tables:
        out.append(
            f"{t.table.qualified}  [{key_label(t)}]  {t.rows_source:,} / {t.rows_target:,} rows,"
            f" {t.chunks:,} chunk{'s' if t.chunks != 1 else ''}"
            f" ({t.chunks_mismatched:,} mismatched)  {table_verdict(t)}"
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
    out += ["", diff_verdict(report)]
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


# -- Markdown -----------------------------------------------------------------------------
# Every Markdown report has one shape: a heading "### replverify KIND: ICON status", the
# verdict (the totals) in bold, where it ran, the tables, notes as quotes. Names, keys,
# values and paths go in code spans; other text from the report is escaped.

#: The heading's icon for a report's tone.
MD_ICONS = {"ok": "✅", "bad": "❌", "warn": "⚠️", "info": "ℹ️"}

# backslash-escaped wherever they stand: all that can start inline markup or an entity
_MD_ACTIVE = re.compile(r"([\\`*_\[\]<>|&~#])")
# what would start a list, a heading underline or a numbered item at the start of a line
_MD_LINE_START = re.compile(r"^([-+=]|\d+[.)])")


def _one_line(text: str) -> str:
    # a line break would end a table row or a list item
    return " ".join(text.splitlines())


def md_text(text: str) -> str:
    """Plain text that CommonMark shows as is, on one line, also in a table cell."""
    text = _MD_ACTIVE.sub(r"\\\1", _one_line(text))
    # the mark itself is escaped (1\. not \1.: a backslash before a digit is no escape)
    return _MD_LINE_START.sub(lambda m: m[0][:-1] + "\\" + m[0][-1], text)


def md_cell(text: str) -> str:
    """Text made safe for one Markdown table cell (:func:`md_text`)."""
    return md_text(text)


def md_code(text: str, *, cell: bool = False) -> str:
    """``text`` as one CommonMark code span, whatever it holds: the fence is one backtick
    longer than the longest run inside, padded with a space when the text starts or ends
    with a backtick or a space (CommonMark strips one such pair). Line breaks become the
    spaces a code span shows anyway. ``cell``: inside a table row, where a pipe must be
    escaped even in a code span (GFM)."""
    text = _one_line(text)
    if not text:
        return ""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.strip(" ") and (text[0] in "` " or text[-1] in "` ") else ""
    span = f"{fence}{pad}{text}{pad}{fence}"
    return span.replace("|", "\\|") if cell else span


def md_head(kind: str, tone: str, status: str, verdict: str, where: str) -> list[str]:
    """The opening lines of every Markdown report: heading, verdict in bold, where."""
    return [
        f"### replverify {kind}: {MD_ICONS[tone]} {md_text(status)}",
        "",
        f"**{md_text(verdict)}**",
        "",
        where,
    ]


def md_pair(source: str, target: str) -> str:
    return f"{md_code(source)} → {md_code(target)}"


def md_notes(notes: list[str]) -> list[str]:
    return [""] + [f"> {md_text(n)}" for n in notes] if notes else []


def diff_to_markdown(report: DiffReport) -> str:
    if not report.complete:
        tone, status = "warn", "incomplete"
    else:
        tone = "ok" if report.status == "consistent" else "bad"
        status = report.status
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


DIFF_RENDERERS = renderers(diff_to_text, diff_to_dict, diff_to_markdown)


# == lag ==================================================================================
#: Samples listed in text and Markdown (JSON has all of them).
LAG_SAMPLES_SHOWN = 20


def iso_utc(at: datetime | None) -> str | None:
    """ISO 8601 in UTC, the reports' form of an instant."""
    return None if at is None else at.astimezone(timezone.utc).isoformat()


def _lsn(value: int | None) -> str | None:
    return None if value is None else format_lsn(value)


def _secs(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def lag_sample_to_dict(s: LagSample) -> dict[str, Any]:
    return {
        "at": iso_utc(s.at),
        "lag_bytes": s.lag_bytes,
        "lag_seconds": _secs(s.lag_seconds),
        "method": s.method,
        "bound": s.bound,
        "source_lsn": _lsn(s.source_lsn),
        "replay_lsn": _lsn(s.replay_lsn),
        "receive_lsn": _lsn(s.receive_lsn),
        "replay_paused": s.replay_paused,
        "heartbeat_at": iso_utc(s.heartbeat_at),
    }


def replication_to_dict(r: ReplicationState) -> dict[str, Any]:
    w, slot, rcv, sub = r.sender, r.slot, r.receiver, r.subscription
    return {
        "relation": r.relation,
        "description": r.description,
        "source_system_id": r.source_system_id,
        "target_system_id": r.target_system_id,
        "source_in_recovery": r.source_in_recovery,
        "target_in_recovery": r.target_in_recovery,
        "replay_paused": r.replay_paused,
        "sender": None
        if w is None
        else {
            "application_name": w.application_name,
            "client_addr": w.client_addr,
            "client_port": w.client_port,
            "state": w.state,
            "sync_state": w.sync_state,
            "sent_lsn": _lsn(w.sent_lsn),
            "write_lsn": _lsn(w.write_lsn),
            "flush_lsn": _lsn(w.flush_lsn),
            "replay_lsn": _lsn(w.replay_lsn),
            "write_lag_seconds": _secs(w.write_lag),
            "flush_lag_seconds": _secs(w.flush_lag),
            "replay_lag_seconds": _secs(w.replay_lag),
        },
        "slot": None
        if slot is None
        else {
            "name": slot.name,
            "type": slot.type,
            "active": slot.active,
            "restart_lsn": _lsn(slot.restart_lsn),
            "wal_status": slot.wal_status,
            "confirmed_flush_lsn": _lsn(slot.confirmed_flush_lsn),
            "database": slot.database,
        },
        "subscription": None
        if sub is None
        else {
            "name": sub.name,
            "enabled": sub.enabled,
            "slot_name": sub.slot_name,
            "worker_pid": sub.worker_pid,
            "received_lsn": _lsn(sub.received_lsn),
        },
        "receiver": None
        if rcv is None
        else {
            "status": rcv.status,
            "sender_host": rcv.sender_host,
            "sender_port": rcv.sender_port,
            "slot_name": rcv.slot_name,
            "written_lsn": _lsn(rcv.written_lsn),
            "flushed_lsn": _lsn(rcv.flushed_lsn),
            "latest_end_lsn": _lsn(rcv.latest_end_lsn),
            "last_msg_receipt_time": iso_utc(rcv.last_msg_receipt_time),
        },
    }


def lag_to_dict(report: LagReport) -> dict[str, Any]:
    used = sorted({s.method for s in report.samples})
    return {
        "schema": LAG_SCHEMA,
        "status": report.status,
        "source": report.source,
        "target": report.target,
        "samples": [lag_sample_to_dict(s) for s in report.samples],
        "max_lag_seconds": _secs(report.max_lag_seconds),
        "max_lag_bytes": report.max_lag_bytes,
        "p50_lag_seconds": _secs(report.p50_lag_seconds),
        "p95_lag_seconds": _secs(report.p95_lag_seconds),
        "rpo_seconds": report.rpo_seconds,
        "within_rpo": report.within_rpo,
        "interval_s": report.interval_s,
        "poll_interval_s": report.poll_interval_s,
        "heartbeat": report.heartbeat,
        "interrupted": report.interrupted,
        "methods": {m: METHODS[m] for m in used},
        "replication": replication_to_dict(report.replication),
        "notes": list(report.notes),
    }


def clock(at: datetime) -> str:
    """An instant as UTC date and time to the millisecond."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def lag_sample_line(s: LagSample) -> str:
    """One sample on one line (``--watch``)."""
    flags = "  [replay paused]" if s.replay_paused else ""
    return f"{clock(s.at)}  {s.lag_seconds:>10.3f} s  {s.lag_bytes:>14,} bytes  {s.method}{flags}"


def lag_verdict(report: LagReport) -> str:
    """The verdict: status, max and percentile lag (seconds and bytes) against the RPO."""
    if report.status == "unknown":
        if not report.samples:
            return "UNKNOWN: no sample was taken"
        return (
            f"UNKNOWN: max lag {report.max_lag_seconds:.3f} s is within the RPO of "
            f"{report.rpo_seconds:g} s only as a lower bound"
        )
    word = {"within": "WITHIN RPO", "exceeded": "RPO EXCEEDED", "measured": "LAG"}[report.status]
    rpo = f" (RPO {report.rpo_seconds:g} s)" if report.rpo_seconds is not None else ""
    n = len(report.samples)
    return (
        f"{word}: max lag {report.max_lag_seconds:.3f} s, {report.max_lag_bytes:,} bytes{rpo};"
        f" p50 {report.p50_lag_seconds:.3f} s, p95 {report.p95_lag_seconds:.3f} s"
        f" over {n} sample{'s' if n != 1 else ''}"
    )


def replication_lines(r: ReplicationState) -> list[str]:
    """How the target replicates from the source: sender, receiver, slot, paused replay."""
    out = [f"replication  {r.description}"]
    if (w := r.sender) is not None:
        lag = f"  (replay_lag {w.replay_lag:.3f} s)" if w.replay_lag is not None else ""
        out.append(
            f"  sender     {w.application_name} {w.state}/{w.sync_state}: sent {_lsn(w.sent_lsn)}"
            f"  write {_lsn(w.write_lsn)}  flush {_lsn(w.flush_lsn)}"
            f"  replay {_lsn(w.replay_lsn)}{lag}"
        )
    if (rcv := r.receiver) is not None:
        out.append(
            f"  receiver   {rcv.status} from {rcv.sender_host}:{rcv.sender_port}"
            f"{f', slot {rcv.slot_name}' if rcv.slot_name else ''},"
            f" flushed {_lsn(rcv.flushed_lsn)}"
        )
    if (sub := r.subscription) is not None:
        worker = f"worker pid {sub.worker_pid}" if sub.worker_pid is not None else "no worker"
        out.append(
            f"  subscription {sub.name} ({'enabled' if sub.enabled else 'DISABLED'}, {worker},"
            f" received {_lsn(sub.received_lsn)})"
        )
    if (slot := r.slot) is not None:
        confirmed = (
            f", confirmed {_lsn(slot.confirmed_flush_lsn)}"
            if slot.confirmed_flush_lsn is not None
            else ""
        )
        out.append(
            f"  slot       {slot.name} ({slot.type}, {'active' if slot.active else 'inactive'},"
            f" restart {_lsn(slot.restart_lsn)}{confirmed}, wal_status {slot.wal_status})"
        )
    if r.replay_paused:
        out.append("  replay     paused")
    return out


def lag_notes(report: LagReport) -> list[str]:
    """The report's notes, and one for an interrupted run."""
    interrupted = (
        ["interrupted: the summary covers the samples taken"] if report.interrupted else []
    )
    return [*report.notes, *interrupted]


def lag_samples_header() -> str:
    """The column heads above :func:`lag_sample_line` lines."""
    return f"{'at (source clock, UTC)':<23}  {'lag':>12}  {'WAL not replayed':>20}  method"


def lag_to_text(report: LagReport, *, samples: bool = True) -> str:
    """The text report; ``samples=False`` leaves the sample lines out (``--watch`` has
    printed each already, under the same header)."""
    out = [f"source  {report.source}", f"target  {report.target}"]
    out += replication_lines(report.replication)
    out.append("")
    shown = report.samples[-LAG_SAMPLES_SHOWN:] if samples else ()
    if shown:
        out.append(lag_samples_header())
        if len(report.samples) > len(shown):
            out.append(f"… {len(report.samples) - len(shown):,} earlier samples (--format json)")
        out += [lag_sample_line(s) for s in shown]
        out.append("")
    out += [f"note: {n}" for n in lag_notes(report)]
    out.append(lag_verdict(report))
    return "\n".join(out) + "\n"


#: Tone and heading status of each lag status.
_LAG_MD = {
    "within": ("ok", "within RPO"),
    "exceeded": ("bad", "RPO exceeded"),
    "measured": ("info", "measured"),
    "unknown": ("warn", "unknown"),
}


def lag_to_markdown(report: LagReport) -> str:
    tone, status = _LAG_MD[report.status]
    out = md_head("lag", tone, status, lag_verdict(report), md_pair(report.source, report.target))
    out += ["", f"- replication: {md_text(report.replication.description)}", ""]
    shown = report.samples[-LAG_SAMPLES_SHOWN:]
    if shown:
        if len(report.samples) > len(shown):
            out += [f"… {len(report.samples) - len(shown):,} earlier samples (--format json)", ""]
        out += ["| at (UTC) | lag s | lag bytes | method |", "| --- | ---: | ---: | --- |"]
        out += [
            f"| {clock(s.at)} | {s.lag_seconds:.3f} | {s.lag_bytes:,} | {s.method} |" for s in shown
        ]
    out += md_notes(lag_notes(report))
    return "\n".join(out).rstrip() + "\n"


LAG_RENDERERS = renderers(lag_to_text, lag_to_dict, lag_to_markdown)


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


def fmt_values(values: dict[str, Any] | None) -> str:
    """A row's values as ``col=value`` pairs, or what stands for an absent or empty row."""
    if values is None:
        return "(no row)"
    if not values:
        return "(row present)"
    return " ".join(value_pairs(values).values())


def value_pairs(values: dict[str, Any]) -> dict[str, str]:
    """Each column's ``col=value`` pair as :func:`fmt_values` shows it (strings quoted,
    ints bare), by column: for renderers that mark some columns."""

    def show(v: Any) -> str:
        if isinstance(v, bool):  # as PostgreSQL prints it, like the database's rows
            v = "t" if v else "f"
        if isinstance(v, int):
            return str(v)
        return json.dumps(v, ensure_ascii=False, default=str)

    return {name: f"{name}={show(v)}" for name, v in values.items()}


def _finding_head(f: Finding) -> str:
    w = f.write
    key = fmt_key({c: v for c, v in w.key_display})
    label = {"in_doubt": "in doubt"}.get(f.verdict, f.verdict)
    rec = w.record
    return f"{label:<9} {rec.txid} #{rec.seq}  {w.op} {w.table.qualified} {key}  {rec.ts_text}"


def _finding_lines(f: Finding, report: ReconcileReport) -> list[str]:
    d = finding_to_dict(f, with_source=report.source is not None)
    ex = d["explain"]
    pad = " " * 10
    out = [_finding_head(f)]
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


def reconcile_to_text(report: ReconcileReport) -> str:
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
            out += _finding_lines(f, report)
        if len(items) > SHOWN_FINDINGS:
            out.append(f"… and {len(items) - SHOWN_FINDINGS:,} more {title} (--format json)")
    for note in report.notes:
        out.append(f"note: {note}")
    out += ["", reconcile_verdict(report)]
    return "\n".join(out) + "\n"


def reconcile_verdict(report: ReconcileReport) -> str:
    """The verdict line that ends the text report."""
    verdict = "LOSS" if report.status == "loss" else "NO LOSS"
    return f"{verdict}: {_tally(report)} ({fmt_seconds(report.elapsed_s)})"


def reconcile_to_markdown(report: ReconcileReport) -> str:
    tone, status = ("bad", "loss") if report.status == "loss" else ("ok", "no loss")
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


RECONCILE_RENDERERS = renderers(reconcile_to_text, reconcile_to_dict, reconcile_to_markdown)
