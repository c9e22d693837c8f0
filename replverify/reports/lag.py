"""The lag report as text, JSON (``replverify.lag/1``) and Markdown."""

from __future__ import annotations

from typing import Any

from replverify.lag.model import LAG_SCHEMA, METHODS, LagReport, LagSample, ReplicationState
from replverify.reports.formatting import (
    PLAIN,
    Marks,
    Tone,
    clock,
    iso_utc,
    md_head,
    md_notes,
    md_pair,
    md_text,
)
from replverify.values.lsn import format_lsn

# == lag ==================================================================================
#: Samples listed in text and Markdown (JSON has all of them).
LAG_SAMPLES_SHOWN = 20


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


def lag_tone(report: LagReport) -> Tone:
    return _LAG_MD[report.status][0]


def lag_to_text(report: LagReport, marks: Marks = PLAIN, *, samples: bool = True) -> str:
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
    out.append(marks.verdict(lag_verdict(report), lag_tone(report)))
    return "\n".join(out) + "\n"


#: Tone and heading status of each lag status.
_LAG_MD: dict[str, tuple[Tone, str]] = {
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
