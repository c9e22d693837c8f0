"""Failback's replay script: the guarded statements that bring the old primary's own
changes to the new one, and the file they are written to as rows are attributed.

The script restores the ``old_only`` changes on NEW in one transaction, each statement
guarded (INSERT ... ON CONFLICT DO NOTHING; UPDATE/DELETE ... WHERE the row still equals
what was observed on NEW; keyless rows by their count of copies), so it never overwrites
newer data and running it twice is harmless. Conflicts and unknown rows are never
replayed. Builds SQL text only: no I/O beyond the file it is given.
"""

from __future__ import annotations

import datetime as _dt
import io
import re
from collections.abc import Callable, Sequence
from typing import IO

from sqlglot import exp

from replverify.db.connect import PINNED_SETTINGS
from replverify.diff.sql import ALIAS, DIALECT, ident, set_local
from replverify.diff.sql import table as aliased_table
from replverify.ops.failback_attribution import FailbackReport, FailbackRow
from replverify.reconcile.replay import delete_statement, guard, insert_statement, update_statement
from replverify.types import Column, TableRef

__all__ = [
    "ReplayFile",
    "keyless_delete",
    "keyless_inserts",
    "keyless_replay",
    "replay_script",
    "replay_statement",
]


class ReplayFile:
    """The replay script, written statement by statement as rows are attributed."""

    def __init__(self, out: IO[str], old: str, new: str, now: _dt.datetime | None = None):
        self.out = _Guarded(out)
        at = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
        self.skipped: dict[str, int] = {"conflict": 0, "unknown": 0}
        self.statements = 0
        for line in (
            _comment(f"replverify failback replay script, {at}"),
            _comment(f"old primary: {old}; new primary: {new}"),
            _comment(
                "run on the NEW primary; every statement is guarded: a row that changed "
                "since it was observed is left alone"
            ),
            "BEGIN;",
        ):
            out.write(line + "\n")
        for name in (
            "TimeZone",
            "DateStyle",
            "IntervalStyle",
            "extra_float_digits",
            "bytea_output",
        ):
            out.write(set_local(name, PINNED_SETTINGS[name]) + "\n")
        out.write("SET CONSTRAINTS ALL DEFERRED;\n")

    def add(self, row: FailbackRow, stmt: str | None) -> None:
        if row.origin in self.skipped:
            self.skipped[row.origin] += 1
            self.out.write(
                _comment(f"NOT replayed ({row.origin}): {row.table} {row.key}: {row.reason}") + "\n"
            )
        elif stmt is not None:
            self.statements += 1
            self.out.write(_comment(f"{row.table} {row.key}: {row.change} - {row.reason}") + "\n")
            self.out.write(stmt + ";\n")

    def statement(self, stmt: str) -> None:
        self.statements += 1
        self.out.write(_comment("the keyless rows above: insert the copies NEW lacks") + "\n")
        self.out.write(stmt + ";\n")

    def close(self) -> None:
        self.out.write(
            _comment(
                f"{self.statements} statements; not replayed: {self.skipped['conflict']} "
                f"conflicting and {self.skipped['unknown']} unknown rows"
            )
            + "\n"
        )
        self.out.write("COMMIT;\n")
        try:
            self.out.raw.flush()
        except OSError as e:
            self.out.error = self.out.error or e

    @property
    def error(self) -> OSError | None:
        """Why the script could not be written (None: it was)."""
        return self.out.error


class _Guarded:
    """A text file whose first write error is kept (``error``) and ends the writing, so
    that the attribution and its report go on (the caller says the script failed)."""

    def __init__(self, out: IO[str]) -> None:
        self.raw = out
        self.error: OSError | None = None

    def write(self, text: str) -> None:
        if self.error is None:
            try:
                self.raw.write(text)
            except OSError as e:
                self.error = e


def _plain(ref: TableRef) -> exp.Table:
    return exp.Table(this=ident(ref.name), db=ident(ref.schema))


def _row_text(columns: Sequence[exp.Expr]) -> exp.Expr:
    return exp.cast(exp.Anonymous(this="ROW", expressions=list(columns)), "text")


def keyless_inserts(
    ref: TableRef, columns: Sequence[Column], images: Sequence[tuple[dict[str, str | None], int]]
) -> str:
    """One INSERT that makes NEW hold, of each keyless row image, as many copies as
    OLD holds (``images``: image as text, OLD's copies). Guarded by the copies NEW holds
    (one scan, hash-joined on the row's text), so running it again inserts nothing."""
    width = len(columns)
    template = _SHAPES.get(("k", ref, tuple(columns)))
    if template is None:
        template = _keyless_template(ref, columns)
        _SHAPES[("k", ref, tuple(columns))] = template
    one = "(" + ", ".join(f"'\x01{i}\x01'" for i in range(width + 1)) + ")"
    rows = ", ".join(
        "(" + ", ".join([*(_quote(img[c.name]) for c in columns), _quote(str(n))]) + ")"
        for img, n in images
    )
    return template.replace(one, rows, 1)


def _quote(v: str | None) -> str:
    """A text literal as sqlglot writes one (standard_conforming_strings)."""
    return "NULL" if v is None else "'" + v.replace("'", "''") + "'"


def _keyless_template(ref: TableRef, columns: Sequence[Column]) -> str:
    """keyless_inserts' statement with one row of marker values (see :func:`_shaped`):
    the rows' values are text (or NULL) literals, cast to the columns' types in it."""
    names = [f"_rv_c{i}" for i in range(len(columns))]
    w, have = ident("_rv_w"), ident("_rv_have")
    marks = [exp.Literal.string(f"\x01{i}\x01") for i in range(len(columns) + 1)]
    values = exp.Values(
        expressions=[exp.Tuple(expressions=marks)],
        alias=exp.TableAlias(this=w, columns=[ident(x) for x in (*names, "_rv_n")]),
    )
    typed = [
        exp.cast(
            exp.column(ident(n), table=w.copy()),
            exp.DataType.build(c.type.name, dialect=DIALECT, udt=True),
        )
        for n, c in zip(names, columns, strict=True)
    ]
    row_t = _row_text([exp.column(ident(c.name), table=ident(ALIAS)) for c in columns])
    held = (
        exp.select(exp.alias_(row_t, "_rv_r"), exp.alias_(exp.Count(this=exp.Star()), "_rv_k"))
        .from_(aliased_table(ref))
        .group_by(exp.Literal.number(1))
        .subquery(have.copy())
    )
    on = exp.EQ(
        this=exp.column("_rv_r", table=have.copy()), expression=_row_text([t.copy() for t in typed])
    )
    missing = exp.Sub(
        this=exp.cast(exp.column(ident("_rv_n"), table=w.copy()), "int"),
        expression=exp.func(
            "COALESCE", exp.column("_rv_k", table=have.copy()), exp.Literal.number(0)
        ),
    )
    copies = exp.Lateral(
        this=exp.func("generate_series", exp.Literal.number(1), missing),
        alias=exp.TableAlias(this=ident("_rv_g")),
    )
    select = (
        exp.select(*typed)
        .from_(values)
        .join(held, on=on, join_type="left")
        .join(copies, on=exp.true())
    )
    text = exp.Insert(
        this=exp.Schema(this=_plain(ref), expressions=[ident(c.name) for c in columns]),
        expression=select,
    ).sql(DIALECT)
    one = "(" + ", ".join(f"'\x01{i}\x01'" for i in range(len(columns) + 1)) + ")"
    if one not in text:
        raise AssertionError(f"keyless insert template without its marker row: {text}")
    return text


def keyless_replay(
    row: FailbackRow, copies: int, inserts: list[tuple[dict[str, str | None], int]]
) -> str | None:
    """How a keyless row's old-only change is replayed (``copies``: OLD's copies of its
    image): deleted copies by the DELETE returned; inserted ones by an entry in
    ``inserts``, for the one :func:`keyless_inserts` of the batch (returns None)."""
    if row.origin != "old_only":
        return None
    image = row.old_image if row.old_image is not None else row.new_image
    assert image is not None
    if row.change == "delete":
        return keyless_delete(row.table, image, copies)
    inserts.append((image, copies))
    return None


def keyless_delete(ref: TableRef, image: dict[str, str | None], copies: int) -> str:
    """DELETE the copies of a keyless row ``image`` NEW holds beyond ``copies`` (as many
    as OLD holds): guarded by the count, so running it again deletes nothing."""
    match = guard((), image)
    held = exp.Subquery(
        this=exp.select(exp.Count(this=exp.Star())).from_(_plain(ref)).where(match.copy())
    )
    surplus = exp.Sub(this=held, expression=exp.Literal.number(copies))
    ctid = exp.column("ctid")
    doomed = (
        exp.select(ctid.copy())
        .from_(_plain(ref))
        .where(match.copy())
        .limit(exp.func("GREATEST", exp.Literal.number(0), surplus))
    )
    return exp.Delete(
        this=_plain(ref), where=exp.Where(this=exp.In(this=ctid, query=exp.Subquery(this=doomed)))
    ).sql(DIALECT)


_MARK = re.compile("'\x01(\\d+)\x01'")
#: statement texts by shape (table, kind, columns, which values are NULL), built once by
#: sqlglot with marker literals that each row's values then replace, quoted as sqlglot
#: quotes a string literal: building every statement anew cost ~2 ms a row
_SHAPES: dict[tuple[object, ...], str] = {}


def _shaped(
    shape: tuple[object, ...], build: Callable[[list[str | None]], str], values: list[str | None]
) -> str:
    text = _SHAPES.get(shape)
    if text is None:
        marks = [None if v is None else f"\x01{i}\x01" for i, v in enumerate(values)]
        text = build(marks)
        if len(_SHAPES) > 4096:
            _SHAPES.clear()
        _SHAPES[shape] = text

    def fill(m: re.Match[str]) -> str:
        v = values[int(m.group(1))]
        assert v is not None
        return "'" + v.replace("'", "''") + "'"

    return _MARK.sub(fill, text)


def replay_statement(row: FailbackRow) -> str | None:
    """The guarded statement that brings ``row``'s old-only change to NEW (or None)."""
    if row.origin != "old_only":
        return None
    key = list(row.key)
    old, new = row.old_image, row.new_image
    if row.change == "insert" and old is not None:
        cols = list(old)
        vals = [old[c] for c in cols]
        return _shaped(
            ("i", row.table, tuple(cols), tuple(v is None for v in vals)),
            lambda m: insert_statement(row.table, dict(zip(cols, m, strict=True))),
            vals,
        )
    if row.change == "update" and old is not None and new is not None:
        changed = row.columns or tuple(c for c in old if c not in row.key)
        seen, sets = list(new), list(changed)
        vals = [new[c] for c in seen] + [old[c] for c in sets]
        return _shaped(
            ("u", row.table, tuple(key), tuple(seen), tuple(sets), tuple(v is None for v in vals)),
            lambda m: update_statement(
                row.table,
                key,
                dict(zip(seen, m[: len(seen)], strict=True)),
                dict(zip(sets, m[len(seen) :], strict=True)),
            ),
            vals,
        )
    if row.change == "delete" and new is not None:
        seen = list(new)
        vals = [new[c] for c in seen]
        return _shaped(
            ("d", row.table, tuple(key), tuple(seen), tuple(v is None for v in vals)),
            lambda m: delete_statement(row.table, key, dict(zip(seen, m, strict=True))),
            vals,
        )
    return None


def _comment(text: str) -> str:
    return "-- " + text.replace("\n", " ")


def replay_script(report: FailbackReport, *, now: _dt.datetime | None = None) -> str:
    """The replay script of the rows ``report`` lists (all of them unless ``max_diffs``
    cut the listing: for every row, pass a :class:`ReplayFile` to :func:`failback`).
    Keyless rows are replayed by the CLI's streamed script only."""
    buf = io.StringIO()
    out = ReplayFile(buf, report.old, report.new, now)
    for r in report.rows:
        out.add(r, None if r.keyless else replay_statement(r))
    out.close()
    return buf.getvalue()
