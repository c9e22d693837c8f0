"""The write journal's record format: the records, their fields, and how a line's
values are read (:mod:`.reader` reads a file, :mod:`.writer` appends one).

Format (JSON Lines, UTF-8, append-only; a fixed contract, docs/journal.md)::

    {"v": 1, "txid": "t-0001", "seq": 17, "ts": "2026-11-23T10:00:00.123456+00:00",
     "state": "intent", "op": "update", "table": "public.orders", "key": {"id": 42},
     "values": {"status": "paid"}, "before": {"status": "new"}}
    {"v": 1, "txid": "t-0001", "state": "committed", "ts": "2026-11-23T10:00:00.2+00:00"}

A *write record* has ``op`` (``insert``, ``update``, ``delete``, ``upsert``), ``table``,
``key`` and ``values`` (the post-image of the written columns; none for ``delete``),
optionally ``before`` (the before-image: enables conflict detection) - or, instead of
``table``/``key``/``values``, ``sql``: one INSERT, UPDATE, DELETE or INSERT ... ON CONFLICT
statement with literal values. Its ``state`` is ``intent`` (written before the statement
runs) or ``committed`` (settled by itself). A *marker* (no ``op``/``sql``) settles every
open intent of its ``txid`` as ``committed`` or ``aborted``. Any record may carry
``"meta"``: an object for the application's own use, ignored here. Nothing else is
accepted: a misspelt field is an error, not a silently lost before-image.

Values are JSON: strings in PostgreSQL's text form (``"12.50"``, an ISO 8601 timestamp),
numbers, booleans, ``null``; arrays for array columns; for ``json``/``jsonb`` columns a
JSON object/array/number is the value itself and a *string is JSON text*
(``"{\\"a\\": 1}"``), as PostgreSQL reads a text literal - asyncpg's own convention for
json parameters. Numbers are read exactly (as :class:`~decimal.Decimal`, never float).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, TypeAlias

import msgspec

from replverify.db.catalog import parse_table_pattern
from replverify.errors import UsageError
from replverify.types import TableRef

__all__ = [
    "FORMAT_VERSION",
    "MAX_LINE_BYTES",
    "OPS",
    "JSONValue",
    "Marker",
    "Op",
    "Record",
    "RowId",
    "RowWrite",
    "Statement",
    "TornTail",
    "TxId",
    "WriteRecord",
]

FORMAT_VERSION = 1
#: Longest line the reader accepts (a longer one is an error, not a memory spike).
MAX_LINE_BYTES = 16 << 20

Op = Literal["insert", "update", "delete", "upsert"]
TxId: TypeAlias = "str | int"
JSONValue: TypeAlias = (
    "str | int | float | Decimal | bool | list[JSONValue] | dict[str, JSONValue] | None"
)

OPS: tuple[Op, ...] = ("insert", "update", "delete", "upsert")
_WRITE_FIELDS = frozenset(
    {"v", "txid", "seq", "ts", "state", "op", "table", "key", "values", "before", "sql", "meta",
     "of"}
)  # fmt: skip
#: a statement intent (a write journaled by its effect): the statement, not its rows
_STMT_FIELDS = frozenset(
    {"v", "txid", "seq", "ts", "state", "op", "table", "stmt", "params", "meta"}
)
_MARKER_FIELDS = frozenset({"v", "txid", "seq", "ts", "state", "meta"})
_DIALECT = "postgres"


class _Bad(Exception):
    """A record is invalid; the reader adds file and line."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Statement:
    """A parsed ``sql`` record: one row-writing statement with literal values."""

    op: Op  # insert, update, delete; upsert for INSERT ... ON CONFLICT
    table: TableRef
    #: INSERT: the column list (empty: every column, in table order)
    columns: tuple[str, ...] = ()
    #: INSERT: the VALUES rows
    rows: tuple[tuple[JSONValue, ...], ...] = ()
    #: UPDATE: ``SET column = value``
    assignments: tuple[tuple[str, JSONValue], ...] = ()
    #: UPDATE/DELETE: ``column = value`` conditions (None: ``IS NULL``)
    where: tuple[tuple[str, JSONValue], ...] = ()
    #: upsert: columns ``DO UPDATE SET col = EXCLUDED.col`` overwrites (empty: DO NOTHING)
    on_conflict: tuple[str, ...] = ()


class WriteRecord(msgspec.Struct, frozen=True, gc=False):
    """One journal line that writes (before resolution against a catalog).

    A frozen msgspec Struct rather than a dataclass: made in C, several times faster
    than a frozen dataclass's ``__init__``, with the same fields, equality and repr.
    Nothing it holds refers back to it, so it needs no garbage-collector tracking
    (``gc=False``: a reconcile keeps one per judged row)."""

    line: int
    txid: TxId
    seq: int
    ts: _dt.datetime
    ts_text: str
    state: Literal["intent", "committed"]
    op: Op
    table: TableRef
    #: structured records; empty for ``sql`` records (see :attr:`statement`)
    key: Mapping[str, JSONValue]
    values: Mapping[str, JSONValue] | None
    before: Mapping[str, JSONValue] | None
    sql: str | None = None
    statement: Statement | None = None
    #: a statement intent (journaled by effect): the statement as the application sent
    #: it, with ``$n`` parameters; its rows follow in their own records (``of``)
    stmt: str | None = None
    params: tuple[JSONValue, ...] = ()
    #: a row record of an effect: the ``seq`` of its statement intent
    of: int | None = None


class Marker(msgspec.Struct, frozen=True, gc=False):
    """Settles every open intent of ``txid`` (a Struct, as :class:`WriteRecord`)."""

    line: int
    txid: TxId
    state: Literal["committed", "aborted"]
    ts: _dt.datetime
    ts_text: str
    seq: int | None = None


Record = WriteRecord | Marker


@dataclass(frozen=True, slots=True)
class TornTail:
    """The last line was cut short (no newline, not JSON): skipped and reported."""

    line: int
    size: int  # bytes

    def describe(self) -> str:
        return (
            f"line {self.line} is torn ({self.size} bytes without a newline, not valid JSON:"
            " a crash in the middle of an append); it was skipped"
        )


#: A row's identity: schema, table, then the key values normalised per type (a flat
#: tuple of strings and scalars: cheap to hash, millions of them in a dict).
RowId = tuple[object, ...]


class RowWrite(msgspec.Struct, frozen=True, gc=False):
    """What one record did to one row, resolved against the target's catalog.

    A frozen msgspec Struct, as :class:`WriteRecord` (made in C, with a dataclass's
    fields, equality and repr). Nothing it holds refers back to it, so the garbage
    collector need not track it (``gc=False``): reconcile's second pass holds a batch
    of them at a time, and tracked ones would make its collections run often and long."""

    record: WriteRecord
    index: int  # the row's position among the record's rows (multi-row INSERT)
    op: Op
    table: TableRef
    #: key columns (primary key order) and their journal values
    key: tuple[tuple[str, JSONValue], ...]
    #: row identity: table + key values normalised per type (``"42"`` = ``42`` for bigint)
    rid: RowId
    #: key as reported: ints stay ints, other values PostgreSQL text
    key_display: tuple[tuple[str, object], ...]
    #: every value the write supplies, key columns included
    values: Mapping[str, JSONValue]
    #: columns judged against the post-image (not the key)
    check: tuple[str, ...]
    before: Mapping[str, JSONValue] | None
    #: upsert: columns overwritten when the row exists (empty for ON CONFLICT DO NOTHING)
    on_conflict: tuple[str, ...] = ()
    #: the table has no primary key: ``key`` is the row's whole (non-null) image
    whole_row_key: bool = False

    @property
    def line(self) -> int:
        return self.record.line

    def post_image(self) -> dict[str, JSONValue]:
        """The judged columns of the post-image."""
        return {c: self.values[c] for c in self.check}


# --------------------------------------------------------------------------- validation


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


#: msgspec decodes a line several times faster than ``json``, numbers as exactly
#: (``float_hook``): the same values for every valid line.
_FAST_DECODER = msgspec.json.Decoder(float_hook=Decimal)


#: a number whose exponent no Decimal holds (``1e999999999999999999``)
_OUT_OF_RANGE = "a number beyond the range of exact decimals"


def _loads(raw: bytes) -> Any:
    """One line as JSON (numbers exact; NaN/Infinity refused; UnicodeDecodeError if the
    bytes are not UTF-8)."""
    try:
        return _FAST_DECODER.decode(raw)
    except msgspec.DecodeError:
        pass  # the standard library decides: its error messages, lone surrogates as before
    except InvalidOperation:
        raise ValueError(_OUT_OF_RANGE) from None
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except InvalidOperation:
        raise ValueError(_OUT_OF_RANGE) from None


def _parse_ts(value: object) -> _dt.datetime:
    if not isinstance(value, str):
        raise _Bad('"ts" must be an ISO 8601 timestamp string')
    try:
        ts = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(f'"ts" is not an ISO 8601 timestamp: {value!r}') from None
    if ts.tzinfo is None:
        raise _Bad(f'"ts" must carry a UTC offset: {value!r}')
    return ts


def _parse_txid(value: object) -> TxId:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Bad('"txid" must be a non-empty string or an integer')


def _parse_seq(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Bad('"seq" must be a non-negative integer')


def _parse_image(obj: Mapping[str, Any], name: str) -> dict[str, JSONValue] | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Bad(f'"{name}" must be an object mapping column to value')
    for col in value:
        if not col:
            raise _Bad(f'"{name}" has an empty column name')
    return value


def _parse_key(value: object) -> dict[str, JSONValue]:
    if not isinstance(value, dict) or not value:
        raise _Bad('"key" must be a non-empty object mapping key column to value')
    for col, v in value.items():
        if not col:
            raise _Bad('"key" has an empty column name')
        if v is None or isinstance(v, (dict, list)):
            raise _Bad(f'"key"."{col}" must be a string, number or boolean')
    return value


#: one :class:`TableRef` per table name (its hash is taken several times a line); the
#: typed path looks names up here itself before calling :func:`_table`
_TABLES: dict[str, TableRef] = {}


def _table(name: str) -> TableRef:
    """The :class:`TableRef` of a record's ``table``; a bad name is not kept and raises
    every time. At most 4096 names are kept."""
    ref = _TABLES.get(name)
    if ref is not None:
        return ref
    try:
        schema, table = parse_table_pattern(name)
    except UsageError as e:
        raise _Bad(f'"table": {e.message}') from None
    ref = TableRef(schema, table)
    if len(_TABLES) < 4096:
        _TABLES[name] = ref
    return ref


def _names(names: object) -> str:
    return ", ".join(repr(n) for n in sorted(names))  # type: ignore[call-overload]


# --------------------------------------------------------------------------- typed lines
#
# The common valid line, decoded and checked in C: one msgspec Struct per kind of record,
# each with exactly the fields that kind allows (``forbid_unknown_fields``) and types as
# narrow as the checks of ``reader._record_from``. What a Struct accepts, those checks
# accept too, with the same values (the same decoder settings: ``Any`` fields decode as
# :func:`_loads` does); what it refuses goes to those checks, for their message. So the
# types may be narrower than the format (a key with a decimal number goes the slow way),
# never wider. ``tests/test_journal_typed.py`` compares the two paths.

_Name = Annotated[str, msgspec.Meta(min_length=1)]
_Image = dict[_Name, Any]
#: key values: strings, integers, booleans (a number with a fraction or exponent is a
#: Decimal: the checked path reads it)
_Key = Annotated[dict[_Name, str | int | bool], msgspec.Meta(min_length=1)]
_Seq = Annotated[int, msgspec.Meta(ge=0)]


class _MarkerLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A marker: no ``op``, no ``sql``."""

    v: Literal[1]
    txid: _Name | int
    ts: str
    state: Literal["committed", "aborted"]
    seq: _Seq | None = None
    meta: dict[str, Any] | None = None


class _WriteLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A structured write record (``key``), a row record of an effect among them."""

    v: Literal[1]
    txid: _Name | int
    seq: _Seq
    ts: str
    state: Literal["intent", "committed"]
    op: Op
    table: str
    key: _Key
    values: _Image | None = None
    before: _Image | None = None
    of: int | None = None
    meta: dict[str, Any] | None = None


class _SqlLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A write record with ``sql``."""

    v: Literal[1]
    txid: _Name | int
    seq: _Seq
    ts: str
    state: Literal["intent", "committed"]
    sql: str
    op: Op | None = None
    before: _Image | None = None
    of: None = None
    meta: dict[str, Any] | None = None


class _StmtLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A statement intent (``stmt``, ``params``)."""

    v: Literal[1]
    txid: _Name | int
    seq: _Seq
    ts: str
    state: Literal["intent"]
    op: Op
    table: str
    stmt: str
    params: tuple[Any, ...] = ()
    meta: dict[str, Any] | None = None


_MARKER_LINE = msgspec.json.Decoder(_MarkerLine, float_hook=Decimal)
_WRITE_LINE = msgspec.json.Decoder(_WriteLine, float_hook=Decimal)
_SQL_LINE = msgspec.json.Decoder(_SqlLine, float_hook=Decimal)
_STMT_LINE = msgspec.json.Decoder(_StmtLine, float_hook=Decimal)
