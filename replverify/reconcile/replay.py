"""Replay scripts: SQL that restores the writes a reconcile found lost, safely.

>>> report = await reconcile("writes.jsonl", new_primary, source_dsn=old_primary)
>>> Path("replay.sql").write_text(replay_script(report))

The script is one transaction. Every statement is guarded so that it cannot overwrite
data newer than what reconcile saw:

* a row that is absent is restored with ``INSERT ... ON CONFLICT DO NOTHING``;
* a row that is present is changed with ``UPDATE``/``DELETE ... WHERE`` the row still
  equals what reconcile observed - every column, compared as text under the session
  settings reconcile read it with, which the script pins (``SET LOCAL``)
  first. A guard that no longer holds makes its statement change nothing, so running
  the script twice is harmless.

Values come from the journal (the row's settled writes folded into one image, read as
the column types by the target) or, when the report has a source (the old primary),
from the old primary's row image. Conflicts and in-doubt writes are never replayed:
the header lists them, and every lost write the script cannot restore, with the reason.
Statements follow the journal order of the rows' first lost writes (parents before
children), and deferrable constraints are deferred to the COMMIT.

Pure: builds text from a :class:`~replverify.reconcile.findings.ReconcileReport`; SQL is built
with sqlglot (identifiers quoted, values as string literals the columns' types read).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlglot import exp

from replverify.diff.sql import DIALECT, ident, set_local
from replverify.reconcile.findings import Detail, Finding, ReconcileReport
from replverify.types import TableRef

__all__ = ["Step", "plan_replay", "replay_script"]

#: Settings that change how values print or parse; pinned for the transaction.
_PINNED = ("TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits", "bytea_output")


@dataclass(frozen=True)
class Step:
    """What the script does about one lost write (``action`` ``skip``: nothing, see
    ``reason``)."""

    finding: Finding
    action: Literal["insert", "update", "delete", "skip"]
    reason: str
    sql: str = ""
    origin: Literal["journal", "old primary"] = "journal"


def _table(ref: TableRef) -> exp.Table:
    return exp.Table(this=ident(ref.name), db=ident(ref.schema))


def _literal(text: str | None) -> exp.Expr:
    return exp.Null() if text is None else exp.Literal.string(text)


def guard(key: Sequence[str], observed: Mapping[str, str | None]) -> exp.Expr:
    """The key, and every column equal (as text) to the ``observed`` row image."""
    conds: list[exp.Expr] = [
        exp.EQ(this=exp.column(c, quoted=True), expression=_literal(observed.get(c))) for c in key
    ]
    for c, text in observed.items():
        if c in key:
            continue
        col = exp.column(c, quoted=True)
        if text is None:
            conds.append(exp.Is(this=col, expression=exp.Null()))
        else:
            conds.append(
                exp.NullSafeEQ(this=exp.cast(col, "text"), expression=exp.Literal.string(text))
            )
    return exp.and_(*conds)


def insert_statement(ref: TableRef, values: Mapping[str, str | None]) -> str:
    """``INSERT … ON CONFLICT DO NOTHING`` of a row image (text values)."""
    cols = list(values)
    return exp.Insert(
        this=exp.Schema(this=_table(ref), expressions=[ident(c) for c in cols]),
        expression=exp.Values(
            expressions=[exp.Tuple(expressions=[_literal(values[c]) for c in cols])]
        ),
        conflict=exp.OnConflict(action=exp.var("DO NOTHING")),
    ).sql(DIALECT)


def insert_absent_statement(ref: TableRef, values: Mapping[str, str | None]) -> str:
    """``INSERT … SELECT … WHERE NOT EXISTS`` a row equal to the image: for a table with
    no key, where ``ON CONFLICT DO NOTHING`` would insert the row again on a rerun."""
    cols = list(values)
    exists = exp.Exists(
        this=exp.select(exp.Literal.number(1)).from_(_table(ref)).where(guard((), values))
    )
    return exp.Insert(
        this=exp.Schema(this=_table(ref), expressions=[ident(c) for c in cols]),
        expression=exp.select(*(_literal(values[c]) for c in cols)).where(exp.not_(exists)),
    ).sql(DIALECT)


def _insert(f: Finding, values: Mapping[str, str | None]) -> str:
    if f.write.whole_row_key:
        return insert_absent_statement(f.write.table, values)
    return insert_statement(f.write.table, values)


def update_statement(
    ref: TableRef,
    key: Sequence[str],
    observed: Mapping[str, str | None],
    values: Mapping[str, str | None],
) -> str:
    """``UPDATE … SET values WHERE`` the row still equals ``observed``."""
    sets = [
        exp.EQ(this=exp.column(c, quoted=True), expression=_literal(v)) for c, v in values.items()
    ]
    return exp.Update(
        this=_table(ref), expressions=sets, where=exp.Where(this=guard(key, observed))
    ).sql(DIALECT)


def delete_statement(ref: TableRef, key: Sequence[str], observed: Mapping[str, str | None]) -> str:
    """``DELETE … WHERE`` the row still equals ``observed``."""
    return exp.Delete(this=_table(ref), where=exp.Where(this=guard(key, observed))).sql(DIALECT)


def _key_columns(f: Finding) -> list[str]:
    return [c for c, _ in f.write.key]


def _from_journal(f: Finding, row: Detail) -> Step:
    r = f.restore
    if r is None:
        return Step(f, "skip", "no restoring image was computed")
    keys = {c for c, _ in f.write.key}
    if r.delete:
        if not row.found:
            return Step(f, "skip", "the row is already gone")
        return Step(
            f,
            "delete",
            "the journal deleted the row",
            delete_statement(f.write.table, _key_columns(f), row.text),
        )
    if not row.found:
        if r.insert is None:
            return Step(f, "skip", "the row is absent and the journal never inserted it")
        values = {c: r.text.get(c) for c in r.insert}
        return Step(f, "insert", "the row is absent", _insert(f, values))
    update = {c: r.text.get(c) for c in r.update if c not in keys}
    if not update:
        return Step(f, "skip", "nothing to set")
    return Step(
        f,
        "update",
        "the row holds older values",
        update_statement(f.write.table, _key_columns(f), row.text, update),
    )


def _from_source(f: Finding, row: Detail, src: Detail) -> Step:
    r = f.restore
    keys = {c for c, _ in f.write.key}
    origin: Literal["old primary"] = "old primary"
    if not src.found:
        if r is not None and r.delete:
            if not row.found:
                return Step(f, "skip", "the row is gone on both", origin=origin)
            return Step(
                f,
                "delete",
                "the old primary no longer holds the row",
                delete_statement(f.write.table, _key_columns(f), row.text),
                origin,
            )
        return Step(f, "skip", "the old primary no longer holds the row", origin=origin)
    if r is not None and r.delete:
        return Step(
            f,
            "skip",
            "the journal deleted the row but the old primary still holds it",
            origin=origin,
        )
    if not row.found:
        return Step(
            f,
            "insert",
            "the row is absent",
            _insert(f, dict(src.text)),
            origin,
        )
    changed = {
        c: src.text[c]
        for c in src.text
        if c not in keys and c in row.encoded and src.encoded.get(c) != row.encoded[c]
    }
    if not changed:
        return Step(f, "skip", "the target already equals the old primary", origin=origin)
    return Step(
        f,
        "update",
        "the row holds older values",
        update_statement(f.write.table, _key_columns(f), row.text, changed),
        origin,
    )


def plan_replay(report: ReconcileReport) -> list[Step]:
    """One :class:`Step` per lost write, in the order the script runs them."""
    steps = []
    for f in report.lost:
        row = f.target_row
        if row is None:
            steps.append(Step(f, "skip", "the target's row was not read"))
        elif report.source is not None and f.source_row is not None:
            steps.append(_from_source(f, row, f.source_row))
        else:
            steps.append(_from_journal(f, row))
    return sorted(steps, key=lambda s: _first_line(s.finding))


def _first_line(f: Finding) -> int:
    return f.restore.first_line if f.restore is not None else f.line


def _comment(text: str) -> str:
    return " ".join(text.split())


def _who(f: Finding) -> str:
    key = " ".join(f"{c}={v}" for c, v in f.write.key_display)
    rec = f.write.record
    return _comment(f"{f.write.table} {key} ({rec.txid} #{rec.seq} {f.write.op})")


def _settings(report: ReconcileReport) -> list[str]:
    out = []
    pinned = dict(report.settings)
    pinned["standard_conforming_strings"] = "on"
    for name in (*_PINNED, "standard_conforming_strings"):
        if name in pinned:
            out.append(set_local(name, pinned[name]))
    return out


def replay_script(report: ReconcileReport, *, now: _dt.datetime | None = None) -> str:
    """The replay script for ``report`` (see the module docs)."""
    steps = plan_replay(report)
    runs = [s for s in steps if s.action != "skip"]
    now = now or _dt.datetime.now(_dt.timezone.utc)
    origin = f"the old primary ({_comment(report.source)})" if report.source else "the journal"
    head = [
        "-- replverify replay script",
        f"-- journal {_comment(report.journal)}; target {_comment(report.target)};"
        f" generated {now.isoformat(timespec='seconds')}",
        "--",
        f"-- Restores {len(runs)} of {len(report.lost)} lost write(s) in ONE transaction,"
        f" with values from {origin}.",
        "-- Guarded so nothing newer is overwritten: an absent row is restored with",
        "-- INSERT ... ON CONFLICT DO NOTHING; a present row is changed only WHERE it still",
        "-- equals, column by column, what reconcile observed. Running it again changes",
        "-- nothing; a statement that finds no row means the row changed since: reconcile",
        "-- again. Conflicts and in-doubt writes are never replayed.",
    ]
    skipped = _skipped(report, steps)
    head.append("--")
    if skipped:
        head.append("-- Not replayed, and why:")
        head += [f"--   {line}" for line in skipped]
    else:
        head.append("-- Not replayed: nothing.")
    body = ["", "BEGIN;", *_settings(report), "SET CONSTRAINTS ALL DEFERRED;"]
    for s in runs:
        body.append("")
        body.append(f"-- lost {_who(s.finding)}: {_comment(s.finding.reason)}; {s.action}")
        body.append(s.sql + ";")
    body += ["", "COMMIT;"]
    return "\n".join(head + body) + "\n"


def _skipped(report: ReconcileReport, steps: Sequence[Step]) -> list[str]:
    out = [f"lost: {_who(s.finding)}: {_comment(s.reason)}" for s in steps if s.action == "skip"]
    for f in report.conflicts:
        out.append(
            f"conflict: {_who(f)}: {_comment(f.reason)}; someone else wrote the row - resolve"
            " by hand"
        )
    for f in report.in_doubt:
        applied = {True: "shows it", False: "does not show it", None: "cannot tell"}
        line = f"in doubt: {_who(f)}: never settled (the application was not told it committed);"
        line += f" the target {applied[f.applied]}"
        if report.source is not None:
            line += f", the old primary {applied[f.applied_on_source]}"
        out.append(_comment(line))
    return out
