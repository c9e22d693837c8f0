"""Resolving records against the target's catalog: :func:`row_writes` turns a
record into one :class:`~.format.RowWrite` per written row, with key columns and types from
the target's catalog: an UPDATE/DELETE statement must say ``col = literal`` for every
primary-key column (joined by AND); further ``col = literal`` / ``col IS NULL``
conditions are read as the before-image. Anything else in WHERE is refused, not guessed.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import uuid
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal

from replverify.db.catalog import TableInfo
from replverify.errors import JournalError, UsageError
from replverify.journal.format import (
    JSONValue,
    Op,
    RowId,
    RowWrite,
    WriteRecord,
    _Bad,
    _names,
)
from replverify.types import ColumnType, TableRef

__all__ = [
    "Normalizer",
    "RowResolver",
    "row_writes",
]


def _normalizer(ctype: ColumnType) -> Callable[[JSONValue], tuple[object, object]]:
    """``value -> (identity, display)`` for a key column: equal identities for values
    PostgreSQL reads as the same key (``42``/``"42"`` for bigint, any case of a uuid,
    instants for timestamptz). Values it cannot read raise :class:`_Bad`."""
    base = ctype.base

    def as_text(v: JSONValue) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    if base in ("int2", "int4", "int8", "oid"):

        def integer(v: JSONValue) -> tuple[object, object]:
            if type(v) is int or (isinstance(v, int) and not isinstance(v, bool)):
                return v, v
            try:
                n = int(str(v).strip()) if not isinstance(v, bool) else None
            except ValueError:
                n = None
            if n is None:
                raise _Bad(f"{v!r} is not a valid {ctype.name}")
            return n, n

        return integer
    if base == "numeric":

        def numeric(v: JSONValue) -> tuple[object, object]:
            try:
                d = Decimal(as_text(v))
            except decimal.InvalidOperation:
                raise _Bad(f"{v!r} is not a valid numeric") from None
            return ("n", d.normalize() if d.is_finite() else d), as_text(v)

        return numeric
    if base == "uuid":

        def uuid_(v: JSONValue) -> tuple[object, object]:
            try:
                u = uuid.UUID(as_text(v))
            except ValueError:
                raise _Bad(f"{v!r} is not a valid uuid") from None
            return u, str(u)

        return uuid_
    if base == "timestamptz":

        def instant(v: JSONValue) -> tuple[object, object]:
            try:
                t = _dt.datetime.fromisoformat(as_text(v))
            except ValueError:
                return as_text(v), as_text(v)  # PostgreSQL reads more than Python: as is
            if t.tzinfo is None:
                return as_text(v), as_text(v)  # read in the server's TimeZone: as is
            t = t.astimezone(_dt.timezone.utc)
            return t, t.isoformat()

        return instant
    if base == "bpchar":
        return lambda v: (as_text(v).rstrip(" "), as_text(v))
    return lambda v: (as_text(v), as_text(v))


Normalizer = Callable[[JSONValue], tuple[object, object]]
#: a structured record shape's table (the journal's TableRef) and its catalog entry, key
#: order, normalisers, written non-key columns, and whether the post-image is
#: ``{**key, **values}``
_Plan = tuple[TableRef, TableInfo, tuple[str, ...], tuple[Normalizer, ...], tuple[str, ...], bool]


#: the values of a delete (shared, never changed)
_NO_VALUES: Mapping[str, JSONValue] = {}


class RowResolver:
    """Turns records into :class:`RowWrite` objects against one catalog.

    Per-table key normalisers are chosen once per table, not once per line.
    """

    def __init__(self, tables: Mapping[TableRef, TableInfo], *, path: str = "journal") -> None:
        self.tables = tables
        self.path = path
        self._normalizers: dict[TableRef, tuple[tuple[str, ...], tuple[Normalizer, ...]]] = {}
        self._known: dict[TableRef, frozenset[str]] = {}
        #: per shape of structured record (table and column names): what resolving it
        #: needs that depends on the names only (checked once)
        self._plans: dict[tuple[object, ...], _Plan] = {}
        #: the catalog's tables by the journal's TableRef objects (one per name): found
        #: by identity, without the dataclass's ``__eq__``
        self._infos: dict[TableRef, TableInfo] = {}

    def __call__(self, record: WriteRecord) -> list[RowWrite]:
        """The rows ``record`` writes; raises :class:`JournalError` naming its line."""
        try:
            return self._row_writes(record)
        except _Bad as e:
            raise JournalError(str(e), path=self.path, line=record.line) from None

    def key_identity(self, table: TableRef, key: Mapping[str, JSONValue]) -> RowId:
        """The row identity of ``key`` (all key columns) in ``table``."""
        info = self.tables[table]
        order, norms = self._key_rules(info, tuple(key))
        if info.primary_key and not all(c in key for c in order):
            raise UsageError(f"{table}: the key must give {', '.join(order)}")
        try:
            ident = [n(key[c])[0] for c, n in zip(order, norms, strict=True)]
            return (table.schema, table.name, *ident)
        except _Bad as e:
            raise UsageError(f"{table}: {e}") from None

    def _key_rules(
        self, info: TableInfo, given: tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[Normalizer, ...]]:
        rules = self._normalizers.get(info.ref)
        if rules is None or not info.primary_key:
            order = info.primary_key or tuple(sorted(given))
            rules = order, tuple(_normalizer(_column_type(info, c)) for c in order)
            if info.primary_key:
                self._normalizers[info.ref] = rules
        return rules

    def _columns(self, info: TableInfo) -> frozenset[str]:
        known = self._known.get(info.ref)
        if known is None:
            known = self._known[info.ref] = frozenset(c.name for c in info.columns)
        return known

    def _info(self, table: TableRef) -> TableInfo:
        info = self._infos.get(table)
        if info is None:
            info = self.tables.get(table)
            if info is None:
                raise _Bad(f"table {table} does not exist on the target")
            if len(self._infos) < 4096:
                self._infos[table] = info
        return info

    def _check_columns(
        self, table: TableRef, info: TableInfo, cols: Iterable[str], what: str
    ) -> None:
        known = self._columns(info)
        if not known.issuperset(cols):
            missing = [c for c in cols if c not in known]
            raise _Bad(f"{what}: {table} has no column {_names(missing)}")

    def _plan(
        self,
        table: TableRef,
        info: TableInfo,
        key: Mapping[str, JSONValue],
        values: Mapping[str, JSONValue],
        before: Mapping[str, JSONValue] | None,
    ) -> _Plan:
        """Check a structured record's column names against ``info``; what resolving
        a record of this shape needs (raises :class:`_Bad`)."""
        self._check_columns(table, info, key, "key")
        pk = info.primary_key
        if pk and (len(key) != len(pk) or any(c not in key for c in pk)):
            raise _Bad(
                f"key columns {_names(key)} are not the primary key of {table}"
                f" ({', '.join(info.primary_key)})"
            )
        self._check_columns(table, info, values, "values")
        if before is not None:
            self._check_columns(table, info, before, "before")
        order, norms = self._key_rules(info, tuple(key))
        written = tuple([c for c in values if c not in order])
        # the post-image is {**key, **values} when that gives the same items in order
        simple = tuple(key) == order and len(written) == len(values)
        return table, info, order, norms, written, simple

    def _row_writes(self, record: WriteRecord) -> list[RowWrite]:
        if record.stmt is not None:
            return []  # a statement intent: its rows are records of their own
        stmt = record.statement
        if stmt is None:
            # the record's own dicts: nothing below changes them (what is kept is copied)
            key = record.key
            values = record.values or _NO_VALUES
            before = record.before
            # keyed by the TableRef's id, not its (Python-level) hash: the plan holds the
            # TableRef, so no other object can have that id while the plan exists
            table = record.table
            shape = (id(table), *key, None, *values, None, *(before or ()), before is None)
            plan = self._plans.get(shape)
            if plan is None or plan[0] is not table:
                plan = self._plan(table, self._info(table), key, values, before)
                if len(self._plans) < 65536:
                    self._plans[shape] = plan
            return [self._structured(record, plan, key, values, before)]
        info = self._info(record.table)
        # a parsed statement
        table = record.table

        def check_columns(cols: Iterable[str], what: str) -> None:
            self._check_columns(table, info, cols, what)

        if not info.primary_key:
            raise _Bad(
                f"{record.table} has no primary key: journal its writes as structured records"
                ' with "key"'
            )
        pk = info.primary_key
        if stmt.op in ("insert", "upsert"):
            columns = stmt.columns or tuple(c.name for c in info.columns)
            check_columns(columns, "INSERT")
            check_columns(stmt.on_conflict, "ON CONFLICT")
            out = []
            seen: set[RowId] = set()
            for i, row in enumerate(stmt.rows):
                if len(row) > len(columns):
                    raise _Bad(
                        f"INSERT row {i + 1} has more values than {record.table} has columns"
                    )
                values = dict(zip(columns, row, strict=False))
                missing = [c for c in pk if c not in values]
                if missing:
                    raise _Bad(
                        f"INSERT does not give key column(s) {_names(missing)}: a key from a"
                        " default cannot be checked later"
                    )
                key = {c: values[c] for c in pk}
                w = self._make(record, i, stmt.op, info, key, values, None, stmt.on_conflict)
                if w.rid in seen:
                    raise _Bad(f"INSERT writes the row {_show_key(w)} twice")
                seen.add(w.rid)
                out.append(w)
            return out
        where = dict(stmt.where)
        check_columns(where, "WHERE")
        missing = [c for c in pk if c not in where]
        if missing:
            raise _Bad(
                f"WHERE must pin the whole primary key of {record.table} ({', '.join(pk)});"
                f" missing {_names(missing)}"
            )
        key = {c: where.pop(c) for c in pk}
        if any(v is None for v in key.values()):
            raise _Bad("a primary-key column cannot be NULL")
        if record.before is not None:
            check_columns(record.before, "before")
        before = {**where, **(record.before or {})} or None
        values = dict(stmt.assignments)
        check_columns(values, "SET")
        return [self._make(record, 0, stmt.op, info, key, values, before)]

    def _structured(
        self,
        record: WriteRecord,
        plan: _Plan,
        key: Mapping[str, JSONValue],
        values: Mapping[str, JSONValue],
        before: Mapping[str, JSONValue] | None,
    ) -> RowWrite:
        """:meth:`_make` for a structured record, with its shape's :data:`_Plan`."""
        _, info, order, normalizers, written, simple = plan
        op = record.op
        ref = info.ref
        if simple and len(order) == 1:  # one key column, not in values: _identify inline
            col = order[0]
            try:
                i, d = normalizers[0](key[col])
            except _Bad as e:
                raise _Bad(f"key {col}: {e}") from None
            rid: RowId = (ref.schema, ref.name, i)
            display: tuple[tuple[str, object], ...] = ((col, d),)
        else:
            rid, display = _identify(ref, order, normalizers, key, values)
        if simple:
            post = {**key, **values}
            pairs = tuple(key.items())
        else:
            post = {c: key[c] for c in order}
            for c in written:
                post[c] = values[c]
            pairs = tuple([(c, key[c]) for c in order])
        check = () if op == "delete" else written
        return RowWrite(
            record,
            0,
            op,
            ref,
            pairs,
            rid,
            display,
            post,
            check,
            dict(before) if before is not None else None,
            check if op == "upsert" else (),
            not info.primary_key,
        )

    def _make(
        self,
        record: WriteRecord,
        index: int,
        op: Op,
        info: TableInfo,
        key: Mapping[str, JSONValue],
        values: Mapping[str, JSONValue],
        before: Mapping[str, JSONValue] | None,
        on_conflict: tuple[str, ...] = (),
    ) -> RowWrite:
        """One row of a parsed statement (``sql`` record)."""
        ref = info.ref
        rules = self._normalizers.get(ref)  # the common case, without building tuple(key)
        order, normalizers = rules if rules is not None else self._key_rules(info, tuple(key))
        rid, display = _identify(ref, order, normalizers, key, values)
        # key columns first, then the written ones (as the statement gave them)
        post: dict[str, JSONValue] = {c: key[c] for c in order}
        written = [c for c in values if c not in post]
        for c in written:
            post[c] = values[c]
        if op == "delete":
            check: tuple[str, ...] = ()
        elif op == "upsert":
            check = tuple([c for c in on_conflict if c not in order])
        else:
            check = tuple(written)
        return RowWrite(
            record,
            index,
            op,
            ref,
            tuple([(c, key[c]) for c in order]),
            rid,
            display,
            post,
            check,
            dict(before) if before is not None else None,
            on_conflict,
            not info.primary_key,
        )


def _identify(
    ref: TableRef,
    order: tuple[str, ...],
    normalizers: tuple[Normalizer, ...],
    key: Mapping[str, JSONValue],
    values: Mapping[str, JSONValue],
) -> tuple[RowId, tuple[tuple[str, object], ...]]:
    """The row identity and the key as reported; a value in ``values`` that changes the
    key is refused (raises :class:`_Bad`)."""
    ident: list[object] = [ref.schema, ref.name]
    display: list[tuple[str, object]] = []
    for col, norm in zip(order, normalizers, strict=True):
        try:
            i, d = norm(key[col])
        except _Bad as e:
            raise _Bad(f"key {col}: {e}") from None
        ident.append(i)
        display.append((col, d))
        if values and col in values:
            try:
                same = norm(values[col])[0] == i
            except _Bad:
                same = False
            if not same:
                raise _Bad(
                    f"values.{col} = {values[col]!r} changes the key ({key[col]!r}): a key"
                    " change is a delete plus an insert; journal it as two writes"
                )
    return tuple(ident), tuple(display)


def row_writes(
    record: WriteRecord, tables: Mapping[TableRef, TableInfo], *, path: str = "journal"
) -> list[RowWrite]:
    """The rows ``record`` writes, with key columns from the catalog (``tables``).

    Raises :class:`~replverify.errors.JournalError` (with the record's line) when the
    table or a column does not exist, the key is not the table's primary key, or a
    statement does not pin the full primary key. Use a :class:`RowResolver` for many.
    """
    return RowResolver(tables, path=path)(record)


def _column_type(info: TableInfo, name: str) -> ColumnType:
    col = info.column(name)
    return col.type if col is not None else ColumnType("text", "text")


def _show_key(w: RowWrite) -> str:
    return " ".join(f"{c}={v}" for c, v in w.key_display)
