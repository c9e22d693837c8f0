"""The write journal: what an application appends around its writes, and how
``replverify reconcile`` reads it back.

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

Reading
-------
:class:`JournalReader` streams a journal of any size one line at a time (memory: one line,
at most ``max_line_bytes``) and validates every record into :class:`WriteRecord` or
:class:`Marker`. A *torn last line* - no newline at the end of the file and not valid JSON,
which is what a crash in the middle of an append leaves - is skipped and reported in
:attr:`JournalReader.torn`. Any other bad line raises
:class:`~replverify.errors.JournalError` naming the file and line; nothing is skipped
silently. ``sql`` records are parsed with sqlglot into a :class:`Statement` (anything
but one INSERT/UPDATE/DELETE with literal values is refused). :func:`row_writes` turns a
record into one :class:`RowWrite` per written row, with key columns and types from the
target's catalog: an UPDATE/DELETE statement must say ``col = literal`` for every
primary-key column (joined by AND); further ``col = literal`` / ``col IS NULL``
conditions are read as the before-image. Anything else in WHERE is refused, not guessed.

Writing
-------
:class:`JournalWriter` is the application side::

    with JournalWriter("writes.jsonl") as journal:
        async with journal.transaction() as tx:       # marker "committed" on success
            tx.intent("update", "public.orders", {"id": 42},
                      values={"status": "paid"}, before={"status": "new"})
            await conn.execute("UPDATE orders SET status = 'paid' WHERE id = 42")

An intent is appended *before* the statement runs, the marker after the database
answered. Leaving the block with a database refusal (an :class:`asyncpg.PostgresError`
that rolled the transaction back) writes ``aborted``; any other exception - a lost
connection, a timeout, a cancellation, an error of the COMMIT whose outcome is unknown -
writes nothing, so the transaction stays *in doubt*, which is the truth.

*Durability* (``fsync=``):

``"commit"`` (default)
    a commit marker (or a self-committed record) is on disk before
    :meth:`JournalTransaction.commit` returns; intents and aborts are written
    (visible to other processes, safe from a crash of the application) but reach the disk
    with the next commit's fsync, which covers everything appended before it. A power
    loss can therefore drop only intents of transactions that were never acknowledged.
``"always"``
    every record is on disk before the call returns (an intent is durable before the
    statement runs).
``"never"``
    no fsync; the operating system writes when it likes (a crash of the application
    loses nothing, a power loss may).

Concurrent commits share one fsync (group commit): a committer whose record an fsync
in progress already covers does not fsync again. The ``*_async`` methods and
``async with`` run the fsync in a worker thread, so the event loop never blocks on the
disk.

*Concurrency*: a writer may be shared by threads and by asyncio tasks of one process.
Each record is one ``write(2)`` of a whole line to an ``O_APPEND`` file descriptor under
a lock, so lines never interleave. Sequence numbers (``seq``) increase in file order and
continue from the last record when a journal is reopened; default txids are
``<random prefix>-<n>``, unique across writers and restarts.

*Torn tail*: opening a journal whose last line has no newline (a crash mid-append)
truncates that fragment, logging how many bytes were cut, so that later appends never
turn it into a bad line in the middle of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import decimal
import functools
import json
import logging
import os
import secrets
import threading
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, TypeAlias, TypeVar

import msgspec
import orjson
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from replverify.db.catalog import TableInfo, parse_table_pattern
from replverify.errors import JournalError, OutputError, UsageError
from replverify.types import ColumnType, TableRef
from replverify.values.pgtext import pg_text

__all__ = [
    "FORMAT_VERSION",
    "MAX_LINE_BYTES",
    "FsyncPolicy",
    "JSONValue",
    "JournalReader",
    "JournalTransaction",
    "JournalWriter",
    "Marker",
    "Op",
    "Record",
    "RowResolver",
    "RowWrite",
    "Statement",
    "TornTail",
    "WriteRecord",
    "definitely_failed",
    "journal_value",
    "parse_statement",
    "read_journal",
    "render_sql",
    "row_writes",
]

log = logging.getLogger("replverify.journal.records")

FORMAT_VERSION = 1
#: Longest line the reader accepts (a longer one is an error, not a memory spike).
MAX_LINE_BYTES = 16 << 20

Op = Literal["insert", "update", "delete", "upsert"]
TxId: TypeAlias = "str | int"
JSONValue: TypeAlias = (
    "str | int | float | Decimal | bool | list[JSONValue] | dict[str, JSONValue] | None"
)
FsyncPolicy = Literal["commit", "always", "never"]

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


@dataclass(frozen=True)
class WriteRecord:
    """One journal line that writes (before resolution against a catalog)."""

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


@dataclass(frozen=True, slots=True)
class Marker:
    """Settles every open intent of ``txid``."""

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

_R = TypeVar("_R")


def _build(cls: type[_R], fields: Mapping[str, object]) -> _R:
    """A frozen dataclass instance made without its generated ``__init__``, which sets
    every field through ``object.__setattr__`` (2 µs for a record: most of the cost of
    reading a line). Only for the hot records, with every field given; a test checks
    the result equals the normal constructor's."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


@dataclass(frozen=True)
class RowWrite:
    """What one record did to one row, resolved against the target's catalog."""

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


def _loads(raw: bytes) -> Any:
    """One line as JSON (numbers exact; NaN/Infinity refused; UnicodeDecodeError if the
    bytes are not UTF-8)."""
    try:
        return _FAST_DECODER.decode(raw)
    except msgspec.DecodeError:
        pass  # the standard library decides: its error messages, lone surrogates as before
    return _DECODER.decode(raw.decode("utf-8"))


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


@functools.lru_cache(maxsize=4096)
def _table(name: str) -> TableRef:
    try:
        schema, table = parse_table_pattern(name)
    except UsageError as e:
        raise _Bad(f'"table": {e.message}') from None
    return TableRef(schema, table)


def _record_from(obj: object, line: int) -> Record:
    """Validate one decoded line (raises :class:`_Bad`)."""
    if not isinstance(obj, dict):
        raise _Bad("a record must be a JSON object")
    v = obj.get("v")
    if v != FORMAT_VERSION or isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f'"v" must be {FORMAT_VERSION} (this reader knows format version 1)')
    txid = _parse_txid(obj.get("txid"))
    ts_text = obj.get("ts")
    ts = _parse_ts(ts_text)
    assert isinstance(ts_text, str)
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise _Bad('"meta" must be an object')
    state = obj.get("state")
    if "op" not in obj and "sql" not in obj:
        unknown = obj.keys() - _MARKER_FIELDS
        if unknown:
            raise _Bad(f"unknown field(s) {_names(unknown)} in a marker record")
        if state not in ("committed", "aborted"):
            raise _Bad('a marker\'s "state" must be "committed" or "aborted"')
        seq = obj.get("seq")
        return Marker(line, txid, state, ts, ts_text, None if seq is None else _parse_seq(seq))
    if "stmt" in obj:
        return _statement_intent(obj, line, txid, ts, ts_text, state)
    unknown = obj.keys() - _WRITE_FIELDS
    if unknown:
        raise _Bad(f"unknown field(s) {_names(unknown)}")
    if state not in ("intent", "committed"):
        raise _Bad('a write\'s "state" must be "intent" or "committed"')
    seq = _parse_seq(obj.get("seq"))
    before = _parse_image(obj, "before")
    of = obj.get("of")
    if of is not None and ("sql" in obj or not isinstance(of, int) or isinstance(of, bool)):
        raise _Bad('"of" must be the seq of a statement intent, on a record with "key"')
    common = {"line": line, "txid": txid, "seq": seq, "ts": ts, "ts_text": ts_text,
              "state": state, "before": before, "stmt": None, "params": (), "of": of}  # fmt: skip
    op = obj.get("op")
    if op is not None and op not in OPS:
        raise _Bad(f'"op" must be one of {", ".join(OPS)}, not {op!r}')
    sql = obj.get("sql")
    if sql is not None:
        if not isinstance(sql, str):
            raise _Bad('"sql" must be a string')
        for field in ("table", "key", "values"):
            if field in obj:
                raise _Bad(f'a record with "sql" must not also have "{field}"')
        stmt = _parse_statement(sql)
        if op is not None and op != stmt.op:
            raise _Bad(f'"op" says {op} but the statement is an {stmt.op}')
        if before is not None and stmt.op == "insert":
            raise _Bad('"before" makes no sense for an INSERT')
        return _build(
            WriteRecord,
            {**common, "op": stmt.op, "table": stmt.table, "key": {}, "values": None,
             "sql": sql, "statement": stmt},
        )  # fmt: skip
    if op is None:
        raise _Bad('a write record needs "op" (or "sql")')
    if "table" not in obj or not isinstance(obj["table"], str):
        raise _Bad('"table" must be a string: schema.table or table')
    table = _table(obj["table"])
    key = _parse_key(obj.get("key"))
    values = _parse_image(obj, "values")
    if op == "delete":
        if values is not None:
            raise _Bad('a delete has no "values"')
    elif values is None:
        raise _Bad(f'an {op} needs "values" (the post-image of the written columns)')
    elif op == "update" and not values:
        raise _Bad('an update needs at least one column in "values"')
    return _build(
        WriteRecord,
        {**common, "op": op, "table": table, "key": key, "values": values, "sql": None,
         "statement": None},
    )  # fmt: skip


def _statement_intent(
    obj: Mapping[str, Any], line: int, txid: TxId, ts: _dt.datetime, ts_text: str, state: object
) -> WriteRecord:
    """A statement intent: ``stmt`` (with ``$n`` parameters), ``params``, ``op``, ``table``."""
    unknown = obj.keys() - _STMT_FIELDS
    if unknown:
        raise _Bad(f"unknown field(s) {_names(unknown)} in a statement intent")
    if state != "intent":
        raise _Bad('a statement record ("stmt") is an intent: its rows settle with the marker')
    stmt = obj["stmt"]
    if not isinstance(stmt, str) or not stmt.strip():
        raise _Bad('"stmt" must be the statement text')
    op = obj.get("op")
    if op not in OPS:
        raise _Bad(f'"op" must be one of {", ".join(OPS)}, not {op!r}')
    if not isinstance(obj.get("table"), str):
        raise _Bad('"table" must be a string: schema.table or table')
    params = obj.get("params", [])
    if not isinstance(params, list):
        raise _Bad('"params" must be an array of the statement\'s parameter values')
    return _build(
        WriteRecord,
        {"line": line, "txid": txid, "seq": _parse_seq(obj.get("seq")), "ts": ts,
         "ts_text": ts_text, "state": "intent", "op": op, "table": _table(obj["table"]),
         "key": {}, "values": None, "before": None, "sql": None, "statement": None,
         "stmt": stmt, "params": tuple(params), "of": None},
    )  # fmt: skip


def _names(names: object) -> str:
    return ", ".join(repr(n) for n in sorted(names))  # type: ignore[call-overload]


# --------------------------------------------------------------------------- reader


class JournalReader:
    """Stream and validate a journal; iterate for :data:`Record` objects.

    >>> reader = JournalReader("writes.jsonl")
    >>> for record in reader: ...
    >>> reader.torn          # TornTail or None, once iteration has finished
    """

    def __init__(self, path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES):
        self.path = os.fspath(path)
        self.max_line_bytes = max_line_bytes
        #: lines read so far (including a torn one)
        self.lines = 0
        #: the torn last line, once iteration has reached it
        self.torn: TornTail | None = None

    def __iter__(self) -> Iterator[Record]:
        for line, raw in self.raw_lines():
            yield self.parse(line, raw)

    def raw_lines(self) -> Iterator[tuple[int, bytes]]:
        """``(line number, bytes)`` of every complete line, without validating it.

        A torn last line is not yielded (see :attr:`torn`). Callers that skip lines
        they do not need (``reconcile``'s second pass) still get exact line numbers.
        """
        try:
            f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise UsageError(f"cannot read journal {self.path}: {e.strerror}") from None
        with f:
            limit = self.max_line_bytes + 1
            readline = f.readline
            n = 0
            while True:
                raw = readline(limit)
                if not raw:
                    break
                n += 1
                self.lines = n
                if raw[-1:] == b"\n":
                    yield n, raw
                    continue
                if len(raw) >= limit:
                    raise JournalError(
                        f"line longer than {self.max_line_bytes} bytes",
                        path=self.path,
                        line=n,
                    )
                # the last line, without a newline: complete JSON, or torn
                try:
                    _loads(raw)
                except ValueError:
                    self.torn = TornTail(n, len(raw))
                    break
                yield n, raw
                break

    @staticmethod
    def decode(raw: bytes) -> Any:
        """A line as JSON, unvalidated (for lines :meth:`parse` already accepted)."""
        return _loads(raw)

    def parse(self, line: int, raw: bytes) -> Record:
        """Decode and validate one line (raises :class:`JournalError`)."""
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            raise JournalError("empty line", path=self.path, line=line)
        try:
            obj = _loads(raw)
        except UnicodeDecodeError:
            raise JournalError("not UTF-8", path=self.path, line=line) from None
        except json.JSONDecodeError as e:
            raise JournalError(
                f"not valid JSON: {e.msg} (column {e.colno})", path=self.path, line=line
            ) from None
        except ValueError as e:
            raise JournalError(f"not valid JSON: {e}", path=self.path, line=line) from None
        try:
            return _record_from(obj, line)
        except _Bad as e:
            raise JournalError(str(e), path=self.path, line=line) from None


def read_journal(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Every record of the journal at ``path``, validated, streamed."""
    return iter(JournalReader(path))


# --------------------------------------------------------------------------- sql records


def _name(node: exp.Identifier | str | None) -> str:
    """An identifier as PostgreSQL resolves it: unquoted names fold to lower case."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.lower()
    text = str(node.this)
    return text if node.quoted else text.lower()


def _table_of(node: exp.Expr | None) -> tuple[TableRef, set[str]]:
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise _Bad("the statement must write one named table")
    if node.args.get("catalog"):
        raise _Bad("a table name must not name a database")
    schema = _name(node.args.get("db")) or "public"
    name = _name(node.this)
    aliases = {name, f"{schema}.{name}"}
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias) and isinstance(alias.this, exp.Identifier):
        aliases.add(_name(alias.this))
    return TableRef(schema, name), aliases


def _column_of(node: exp.Expr, aliases: set[str], what: str) -> str:
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
        raise _Bad(f"{what} must be a column, not {node.sql(_DIALECT)!r}")
    qualifier = node.args.get("table")
    if qualifier is not None and _name(qualifier) not in aliases:
        raise _Bad(f"{what} {node.sql(_DIALECT)!r} names another table")
    return _name(node.this)


def _literal(node: exp.Expr) -> JSONValue:
    """A literal value as JSON (numbers exact); anything else is refused."""
    if isinstance(node, exp.Paren):
        return _literal(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Literal):
        text = str(node.this)
        if node.is_string:
            return text
        return _number(text)
    if isinstance(node, exp.Neg):
        inner = _literal(node.this)
        if isinstance(inner, (int, Decimal)) and not isinstance(inner, bool):
            return -inner
        raise _Bad(f"not a literal value: {node.sql(_DIALECT)!r}")
    if isinstance(node, (exp.RawString, exp.ByteString, exp.BitString)):
        return str(node.this)  # $$dollar$$, E'escape' strings, B'0101'
    if isinstance(node, exp.Cast):
        # the column's type decides how the text is read; the cast changes nothing there
        return _literal(node.this)
    if isinstance(node, exp.Array):
        return [_literal(e) for e in node.expressions]
    raise _Bad(
        f"not a literal value: {node.sql(_DIALECT)!r}",
    )


def _number(text: str) -> int | Decimal:
    if text.isdigit():
        return int(text)
    try:
        return Decimal(text)
    except decimal.InvalidOperation:
        raise _Bad(f"not a number: {text!r}") from None


def _conditions(where: exp.Expr | None, aliases: set[str]) -> tuple[tuple[str, JSONValue], ...]:
    if not isinstance(where, exp.Where):
        raise _Bad("an UPDATE or DELETE needs a WHERE naming the row's primary key")
    out: list[tuple[str, JSONValue]] = []
    for cond in where.this.flatten() if isinstance(where.this, exp.And) else [where.this]:
        while isinstance(cond, exp.Paren):
            cond = cond.this
        if isinstance(cond, exp.EQ):
            left, right = cond.this, cond.expression
            if not isinstance(left, exp.Column):
                left, right = right, left
            col = _column_of(left, aliases, "a WHERE condition")
            try:
                value = _literal(right)
            except _Bad:
                raise _Bad(
                    f"WHERE conditions must compare a column with a literal, not "
                    f"{cond.sql(_DIALECT)!r}"
                ) from None
            if value is None:
                raise _Bad(f"{cond.sql(_DIALECT)!r} is never true; write IS NULL")
        elif isinstance(cond, exp.Is) and isinstance(cond.expression, exp.Null):
            col, value = _column_of(cond.this, aliases, "a WHERE condition"), None
        else:
            raise _Bad(
                "WHERE must be column = literal conditions joined by AND, not "
                f"{cond.sql(_DIALECT)!r}"
            )
        if any(c == col for c, _ in out):
            raise _Bad(f"WHERE names column {col!r} twice")
        out.append((col, value))
    return tuple(out)


def parse_statement(sql: str) -> Statement:
    """Parse the ``sql`` of a record; :class:`~replverify.errors.UsageError` says why not."""
    try:
        return _parse_statement(sql)
    except _Bad as e:
        raise UsageError(str(e)) from None


@functools.lru_cache(maxsize=1024)
def _parse_statement(sql: str) -> Statement:
    try:
        trees = [t for t in sqlglot.parse(sql, read=_DIALECT) if t is not None]
    except SqlglotError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _Bad(f'"sql" does not parse: {first}') from None
    if len(trees) != 1:
        raise _Bad(f'"sql" must be one statement, not {len(trees)}')
    tree = trees[0]
    if tree.args.get("with_") or tree.args.get("with"):
        raise _Bad('"sql" must not use WITH')
    if isinstance(tree, exp.Insert):
        return _insert(tree)
    if isinstance(tree, exp.Update):
        table, aliases = _table_of(tree.this)
        if tree.args.get("from_") or tree.args.get("from"):
            raise _Bad("UPDATE ... FROM is not supported: write one row per statement")
        sets: list[tuple[str, JSONValue]] = []
        for a in tree.expressions:
            if not isinstance(a, exp.EQ):
                raise _Bad(f"not a SET assignment: {a.sql(_DIALECT)!r}")
            col = _column_of(a.this, aliases, "SET")
            try:
                sets.append((col, _literal(a.expression)))
            except _Bad:
                raise _Bad(
                    f"SET {col} = {a.expression.sql(_DIALECT)}: only literal values can be "
                    "checked later"
                ) from None
        where = _conditions(tree.args.get("where"), aliases)
        return Statement("update", table, assignments=tuple(sets), where=where)
    if isinstance(tree, exp.Delete):
        table, aliases = _table_of(tree.this)
        if tree.args.get("using"):
            raise _Bad("DELETE ... USING is not supported: write one row per statement")
        return Statement("delete", table, where=_conditions(tree.args.get("where"), aliases))
    kind = type(tree).__name__.upper()
    raise _Bad(
        f'"sql" must be an INSERT, UPDATE or DELETE, not {kind}: {" ".join(sql.split())[:60]!r}',
    )


def _insert(tree: exp.Insert) -> Statement:
    target = tree.this
    columns: tuple[str, ...] = ()
    if isinstance(target, exp.Schema):
        columns = tuple(_name(c) for c in target.expressions if isinstance(c, exp.Identifier))
        if len(columns) != len(target.expressions):
            raise _Bad("the INSERT column list must name plain columns")
        target = target.this
    table, aliases = _table_of(target)
    if len(set(columns)) != len(columns):
        raise _Bad("the INSERT column list names a column twice")
    values = tree.expression
    if not isinstance(values, exp.Values):
        raise _Bad("only INSERT ... VALUES with literal values can be checked (not SELECT)")
    rows: list[tuple[JSONValue, ...]] = []
    for row in values.expressions:
        items = row.expressions if isinstance(row, exp.Tuple) else [row]
        try:
            rows.append(tuple(_literal(v) for v in items))
        except _Bad as e:
            raise _Bad(f"INSERT values: {e}") from None
        if columns and len(items) != len(columns):
            raise _Bad(f"INSERT has {len(columns)} columns but a row of {len(items)} values")
    conflict = tree.args.get("conflict")
    if conflict is None:
        return Statement("insert", table, columns=columns, rows=tuple(rows))
    if conflict.args.get("where") or conflict.args.get("conflict_where"):
        raise _Bad("ON CONFLICT ... WHERE is not supported (the outcome depends on the row)")
    action = str(getattr(conflict.args.get("action"), "this", "")).upper()
    if action == "DO NOTHING":
        return Statement("upsert", table, columns=columns, rows=tuple(rows))
    if action != "DO UPDATE":
        raise _Bad(f"unsupported ON CONFLICT action {action or '?'}")
    updated: list[str] = []
    for a in conflict.expressions:
        ok = isinstance(a, exp.EQ) and isinstance(a.expression, exp.Column)
        src = a.expression if ok else None
        if ok and isinstance(src, exp.Column) and _name(src.args.get("table")) == "excluded":
            col = _column_of(a.this, aliases, "SET")
            if _name(src.this) == col:
                updated.append(col)
                continue
        raise _Bad(
            "ON CONFLICT DO UPDATE may only SET col = EXCLUDED.col (the value then does not "
            f"depend on the old row), not {a.sql(_DIALECT)!r}"
        )
    return Statement("upsert", table, columns=columns, rows=tuple(rows), on_conflict=tuple(updated))


# --------------------------------------------------------------------------- resolution


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
            if isinstance(v, int) and not isinstance(v, bool):
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


class RowResolver:
    """Turns records into :class:`RowWrite` objects against one catalog.

    Per-table key normalisers are chosen once per table, not once per line.
    """

    def __init__(self, tables: Mapping[TableRef, TableInfo], *, path: str = "journal") -> None:
        self.tables = tables
        self.path = path
        self._normalizers: dict[TableRef, tuple[tuple[str, ...], tuple[Normalizer, ...]]] = {}
        self._known: dict[TableRef, frozenset[str]] = {}

    def __call__(self, record: WriteRecord) -> list[RowWrite]:
        """The rows ``record`` writes; raises :class:`JournalError` naming its line."""
        try:
            return self._row_writes(record)
        except _Bad as e:
            raise JournalError(str(e), path=self.path, line=record.line) from None

    def row_ids(self, obj: Mapping[str, Any]) -> list[RowId]:
        """The rows a write record writes, from its decoded JSON, without building the
        records: for a second look at a journal already validated (unknown tables and
        keys that do not resolve give no rows)."""
        try:
            sql = obj.get("sql")
            if sql is not None:
                stmt = _parse_statement(sql)
                info = self.tables.get(stmt.table)
                if info is None or not info.primary_key:
                    return []
                if stmt.op in ("insert", "upsert"):
                    cols = stmt.columns or tuple(c.name for c in info.columns)
                    keys = [dict(zip(cols, row, strict=False)) for row in stmt.rows]
                else:
                    keys = [dict(stmt.where)]
                return [self.key_identity(stmt.table, k) for k in keys]
            return [self.key_identity(_table(obj["table"]), obj["key"])]
        except (_Bad, UsageError, KeyError, TypeError):
            return []

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

    def _row_writes(self, record: WriteRecord) -> list[RowWrite]:
        if record.stmt is not None:
            return []  # a statement intent: its rows are records of their own
        info = self.tables.get(record.table)
        if info is None:
            raise _Bad(f"table {record.table} does not exist on the target")
        known = self._columns(info)

        def check_columns(cols: Iterable[str], what: str) -> None:
            if not known.issuperset(cols):
                missing = [c for c in cols if c not in known]
                raise _Bad(f"{what}: {record.table} has no column {_names(missing)}")

        stmt = record.statement
        if stmt is None:
            key = dict(record.key)
            check_columns(key, "key")
            pk = info.primary_key
            if pk and (len(key) != len(pk) or any(c not in key for c in pk)):
                raise _Bad(
                    f"key columns {_names(key)} are not the primary key of {record.table}"
                    f" ({', '.join(info.primary_key)})"
                )
            values = dict(record.values or {})
            check_columns(values, "values")
            if record.before is not None:
                check_columns(record.before, "before")
            return [self._make(record, 0, record.op, info, key, values, record.before)]
        # a parsed statement
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

    def _make(
        self,
        record: WriteRecord,
        index: int,
        op: Op,
        info: TableInfo,
        key: Mapping[str, JSONValue],
        values: dict[str, JSONValue],
        before: Mapping[str, JSONValue] | None,
        on_conflict: tuple[str, ...] = (),
    ) -> RowWrite:
        order, normalizers = self._key_rules(info, tuple(key))
        ref = info.ref
        ident: list[object] = [ref.schema, ref.name]
        display: list[tuple[str, object]] = []
        for col, norm in zip(order, normalizers, strict=True):
            try:
                i, d = norm(key[col])
            except _Bad as e:
                raise _Bad(f"key {col}: {e}") from None
            ident.append(i)
            display.append((col, d))
            if col in values:
                try:
                    same = norm(values[col])[0] == i
                except _Bad:
                    same = False
                if not same:
                    raise _Bad(
                        f"values.{col} = {values[col]!r} changes the key ({key[col]!r}): a key"
                        " change is a delete plus an insert; journal it as two writes"
                    )
        # key columns first, then the written ones (as the statement gave them)
        post: dict[str, JSONValue] = {c: key[c] for c in order}
        written = [c for c in values if c not in post]
        for c in written:
            post[c] = values[c]
        if op == "delete":
            check: tuple[str, ...] = ()
        elif op == "upsert" and record.statement is not None:
            check = tuple([c for c in on_conflict if c not in order])
        else:
            check = tuple(written)
        if op == "upsert" and record.statement is None:
            on_conflict = check
        return _build(
            RowWrite,
            {
                "record": record,
                "index": index,
                "op": op,
                "table": ref,
                "key": tuple([(c, key[c]) for c in order]),
                "rid": tuple(ident),
                "key_display": tuple(display),
                "values": post,
                "check": check,
                "before": dict(before) if before is not None else None,
                "on_conflict": on_conflict,
                "whole_row_key": not info.primary_key,
            },
        )


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


# --------------------------------------------------------------------------- writer


def journal_value(v: object) -> JSONValue:
    """A Python value (as an application passes it to asyncpg) in journal form.

    JSON-native values stay (floats only when finite); ``Decimal`` becomes its exact text
    (``"12.50"``); dates and times ISO 8601; ``bytes`` ``"\\x..."``; UUIDs, intervals and
    anything else PostgreSQL's text form. ``dict``/``list`` stay JSON (json columns,
    arrays); a ``str`` stays a string (for json columns: JSON text, as asyncpg takes it).
    """
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else pg_text(v)
    if isinstance(v, Decimal):
        return pg_text(v)
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return [journal_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): journal_value(x) for k, x in v.items()}
    return pg_text(v)


def _sql_literal(v: object) -> exp.Expr:
    if v is None:
        return exp.Null()
    if isinstance(v, bool):
        return exp.Boolean(this=v)
    if isinstance(v, int) or (
        isinstance(v, (float, Decimal)) and v == v and abs(v) != float("inf")
    ):
        text = pg_text(v)
        if text.startswith("-"):
            return exp.Neg(this=exp.Literal.number(text[1:]))
        return exp.Literal.number(text)
    if isinstance(v, dict):
        return exp.Literal.string(json.dumps(journal_value(v), ensure_ascii=False, default=str))
    return exp.Literal.string(v if isinstance(v, str) else pg_text(v))


def render_sql(query: str, args: Sequence[object] = ()) -> str:
    """``query`` with its ``$n`` parameters replaced by literals of ``args`` (sqlglot).

    The result is checked with :func:`parse_statement`: a statement reconcile could not
    check later raises :class:`~replverify.errors.UsageError` now, before it runs.
    """
    try:
        tree = sqlglot.parse_one(query, read=_DIALECT)
    except SqlglotError as e:
        raise UsageError(f"cannot journal this statement: {e}") from None
    used: set[int] = set()

    def substitute(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Parameter):
            try:
                n = int(str(node.this.this if isinstance(node.this, exp.Expr) else node.this))
            except ValueError:
                return node
            if not 1 <= n <= len(args):
                raise UsageError(f"${n} has no argument ({len(args)} given)")
            used.add(n)
            return _sql_literal(args[n - 1])
        return node

    text = tree.transform(substitute).sql(_DIALECT)
    try:
        _parse_statement(text)
    except _Bad as e:
        raise UsageError(f"cannot journal this statement: {e}") from None
    return text


def definitely_failed(exc: BaseException) -> bool:
    """Whether the database surely rolled back after ``exc`` (then: ``aborted``); lost
    connections, timeouts and cancellations leave the transaction in doubt. The policy
    is :func:`replverify.db.errors.definitely_failed`."""
    # Imported here: reading a journal must not import the database driver.
    from replverify.db.errors import definitely_failed as policy

    return policy(exc)


class JournalWriter:
    """Append journal records for an application; see the module docs for the rules."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "commit",
        txid_prefix: str | None = None,
    ) -> None:
        if fsync not in ("commit", "always", "never"):
            raise UsageError(f"fsync must be 'commit', 'always' or 'never', not {fsync!r}")
        self.path = os.fspath(path)
        self.fsync: FsyncPolicy = fsync
        self.prefix = txid_prefix or secrets.token_hex(4)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._appended = 0  # records appended (tickets for group commit)
        self._synced = 0  # records known to be on disk
        self._txn = 0
        self._shapes: set[Hashable] = set()  # record shapes the reader accepted
        #: the fsync in flight for each event loop (:meth:`_sync_async`)
        self._syncing: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Future[None]
        ] = weakref.WeakKeyDictionary()
        #: bytes of a torn last line cut off when the journal was opened
        self.repaired = 0
        created = not os.path.exists(self.path)
        try:
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as e:
            raise UsageError(f"cannot open journal {self.path}: {e.strerror}") from None
        self._seq = self._recover()
        if created and fsync != "never":
            _fsync_dir(self.path)

    # ---- opening

    def _recover(self) -> int:
        """Cut a torn last line; return the next sequence number."""
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            tail = b""
            pos = size
            while pos > 0 and tail.count(b"\n") < 2:
                step = min(pos, 65536)
                pos -= step
                f.seek(pos)
                tail = f.read(step) + tail
        cut = 0
        if not tail.endswith(b"\n"):
            keep = tail.rfind(b"\n") + 1  # 0 when the file is one torn line
            cut = len(tail) - keep
            assert self._fd is not None
            os.ftruncate(self._fd, size - cut)
            os.fsync(self._fd)
            self.repaired = cut
            log.warning("%s: cut a torn last line of %d bytes (crash mid-append)", self.path, cut)
            tail = tail[:keep]
        lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
        try:
            seq = _loads(lines[-1]).get("seq") if lines[-1] else None
        except (ValueError, AttributeError):
            seq = None
        return seq + 1 if isinstance(seq, int) and not isinstance(seq, bool) else 0

    # ---- appending

    def _append(
        self, fields: dict[str, Any], *, durable: bool, shape: Hashable | None = None
    ) -> int:
        """Append one record (seq and ts filled in under the lock); return its seq."""
        return self._append_many([fields], durable=durable, shapes=(shape,))

    def _append_many(
        self,
        batch: Sequence[dict[str, Any]],
        *,
        durable: bool,
        shape: Hashable | None = None,
        shapes: Sequence[Hashable | None] | None = None,
    ) -> int:
        """Append records as one ``write(2)`` (consecutive seqs); return the first seq.

        Every record is checked with the reader first - except, when the caller names
        the records' ``shape`` (one for all, or ``shapes``, one per record: the fields,
        columns and kinds of values its own code puts in them), those of a shape already
        checked: the reader's verdict depends on the shape, and checking costs a third of
        an append. An ``of`` that is a :class:`_Ref` names a record of the same batch and
        becomes its seq."""
        with self._lock:
            if self._fd is None:
                raise UsageError(f"journal {self.path} is closed")
            first = self._seq
            ts = _dt.datetime.now(_dt.timezone.utc).isoformat()
            lines = []
            for n, fields in enumerate(batch):
                record: dict[str, Any] = {"v": FORMAT_VERSION, "txid": fields["txid"],
                                          "seq": first + n, "ts": ts}  # fmt: skip
                record.update(fields)
                of = record.get("of")
                if isinstance(of, _Ref):
                    record["of"] = first + of.index
                data = _dumps(record)
                kind = shape if shapes is None else shapes[n]
                if kind is None or kind not in self._shapes:
                    try:
                        _record_from(_loads(data), 0)  # never write what the reader refuses
                    except _Bad as e:
                        raise UsageError(f"not a valid journal record: {e}") from None
                lines.append(data)
            data = b"".join(lines)
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError as e:
                if len(view) < len(data):  # no torn line before the next record
                    with contextlib.suppress(OSError):
                        size = os.fstat(self._fd).st_size
                        os.ftruncate(self._fd, size - (len(data) - len(view)))
                # The caller must not run the write it could not journal.
                raise OutputError(f"cannot append to journal {self.path}: {e.strerror}") from None
            for kind in (shape,) if shapes is None else shapes:
                if kind is not None:
                    self._shapes.add(kind)
            self._seq = first + len(batch)
            self._appended += len(batch)
            ticket = self._appended
        if (durable or self.fsync == "always") and self.fsync != "never":
            self._sync_to(ticket)
        return first

    async def _sync_async(self, ticket: int) -> None:
        """:meth:`_sync_to` from asyncio: concurrent committers of one event loop share
        one fsync in a worker thread (a committer arriving while one runs waits for it,
        then for the next), rather than each taking a thread of its own."""
        loop = asyncio.get_running_loop()
        while self._synced < ticket and self._fd is not None:
            running = self._syncing.get(loop)
            if running is None or running.done():
                with self._lock:
                    upto = self._appended
                running = asyncio.ensure_future(asyncio.to_thread(self._sync_to, upto))
                self._syncing[loop] = running
            await asyncio.shield(running)

    def _sync_to(self, ticket: int) -> None:
        """fsync unless an fsync that started after record ``ticket`` already covered it."""
        with self._sync_lock:
            if self._synced >= ticket:
                return
            with self._lock:
                upto, fd = self._appended, self._fd
            if fd is None:
                return
            try:
                os.fsync(fd)
            except OSError as e:
                raise OutputError(f"cannot fsync journal {self.path}: {e.strerror}") from None
            self._synced = upto

    def new_txid(self) -> str:
        with self._lock:
            self._txn += 1
            return f"{self.prefix}-{self._txn}"

    def transaction(self, txid: TxId | None = None, *, defer: bool = False) -> JournalTransaction:
        """A journaled transaction; a context manager (``with`` or ``async with``).

        ``defer``: hold the intents back and append them in one write by
        :meth:`JournalTransaction.flush`, which the caller runs before it sends COMMIT
        (see :class:`JournalTransaction`). Ignored with ``fsync="always"``, whose promise
        is an intent on disk before its statement runs."""
        return JournalTransaction(self, txid if txid is not None else self.new_txid(), defer=defer)

    begin = transaction

    def write(
        self,
        op: Op,
        table: str,
        key: Mapping[str, object],
        values: Mapping[str, object] | None = None,
        before: Mapping[str, object] | None = None,
        *,
        txid: TxId | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Journal a write that has already committed (``state: committed``); its seq."""
        fields = _write_fields(op, table, key, values, before, meta)
        fields["txid"] = txid if txid is not None else self.new_txid()
        fields["state"] = "committed"
        return self._append(fields, durable=True)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            if self.fsync != "never":
                os.fsync(fd)
            os.close(fd)

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> JournalWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)


def _dumps(record: Mapping[str, Any]) -> bytes:
    """One compact JSON line (UTF-8, not ASCII-escaped). orjson is several times faster
    than :mod:`json`; it refuses only integers beyond 64 bits, which :mod:`json` writes."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        return line.encode()


@dataclass(frozen=True)
class _Ref:
    """In a deferred batch, the record at ``index``: its seq once the batch is appended."""

    index: int


def _kinds(fields: Mapping[str, object]) -> Hashable:
    """The shape of a record: what the reader's verdict on it depends on. Its fields;
    for an object field (``key``, ``values``) its column names and the JSON kind of each
    value (the reader looks no deeper: a key must be a scalar, a value any JSON); for a
    string whether it is empty; the literal text of ``op``/``table``/``stmt`` is part of
    the caller's shape."""
    out: list[object] = []
    for name, v in fields.items():
        if isinstance(v, dict):
            out.append((name, tuple(v), tuple(map(type, v.values()))))
        elif isinstance(v, list):
            out.append((name, len(v) > 0))
        else:
            out.append((name, type(v), v == ""))
    return tuple(out)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(str(Path(path).resolve().parent), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_fields(
    op: str,
    table: str,
    key: Mapping[str, object],
    values: Mapping[str, object] | None,
    before: Mapping[str, object] | None,
    meta: Mapping[str, object] | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"op": op, "table": table, "key": journal_value(dict(key))}
    if values is not None:
        fields["values"] = journal_value(dict(values))
    if before is not None:
        fields["before"] = journal_value(dict(before))
    if meta is not None:
        fields["meta"] = journal_value(dict(meta))
    return fields


TxState = Literal["open", "committed", "aborted", "in doubt"]


class JournalTransaction:
    """The intents of one database transaction and their settlement.

    Deferred (``defer=True``), the intents are held in memory and appended in one write
    by :meth:`flush` (or with the marker), instead of one write each as the statements
    run. That is as safe for a caller that flushes before it sends COMMIT: until then
    nothing of the transaction can have committed, and a crash before it (which loses
    the held-back intents) ends the connection, so the server rolls the transaction back.
    """

    def __init__(self, writer: JournalWriter, txid: TxId, *, defer: bool = False) -> None:
        self.writer = writer
        self.txid = txid
        self.state: TxState = "open"
        #: intents journaled or held back
        self.intents = 0
        self.defer = defer and writer.fsync != "always"
        self._pending: list[dict[str, Any]] = []
        self._pending_shapes: list[Hashable | None] = []

    def intent(
        self,
        op: Op,
        table: str,
        key: Mapping[str, object],
        values: Mapping[str, object] | None = None,
        before: Mapping[str, object] | None = None,
        *,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Append an intent (call it *before* running the statement); returns its seq."""
        fields = _write_fields(op, table, key, values, before, meta)
        return self._intent(fields)

    def intent_sql(
        self,
        query: str,
        *args: object,
        before: Mapping[str, object] | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Append an intent for ``query`` with ``$n`` parameters ``args`` rendered as
        literals; refuses (UsageError) a statement reconcile could not check."""
        fields: dict[str, Any] = {"sql": render_sql(query, args)}
        if before is not None:
            fields["before"] = journal_value(dict(before))
        if meta is not None:
            fields["meta"] = journal_value(dict(meta))
        return self._intent(fields)

    def intent_statement(
        self,
        op: Op,
        table: str,
        stmt: str,
        params: Sequence[object] = (),
        *,
        meta: Mapping[str, object] | None = None,
    ) -> int:
        """Append the intent of a write journaled by its effect: the statement and its
        parameters (call it before the statement runs); its rows follow with
        :meth:`effect_rows`. Returns its seq."""
        fields: dict[str, Any] = {"op": op, "table": table, "stmt": stmt}
        fields["params"] = [journal_value(a) for a in params]
        if meta is not None:
            fields["meta"] = journal_value(dict(meta))
        return self._intent(fields, shape=("stmt", op, table, stmt, _kinds(fields)))

    def effect_rows(
        self,
        of: int,
        op: Op,
        table: str,
        rows: Iterable[tuple[Mapping[str, object], Mapping[str, object] | None]],
    ) -> int:
        """Append the post-images ``(key, values)`` of rows statement intent ``of``
        touched (``values`` None for a delete), all in one write; how many. ``of`` is
        what :meth:`intent_statement` returned (deferred: the intent's place among the
        held-back records, which becomes its seq when they are appended)."""
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        batch = []
        shapes = set()
        link: object = _Ref(of) if self.defer else of
        for key, values in rows:
            fields = _write_fields(op, table, key, values, None, None)
            fields["txid"] = self.txid
            fields["state"] = "intent"
            fields["of"] = link
            batch.append(fields)
            if not self.defer:
                shapes.add(_kinds(fields))
        if batch and self.defer:
            for fields in batch:
                self._pending.append(fields)
                self._pending_shapes.append(("rows", op, table, _kinds(fields)))
            self.intents += len(batch)
        elif batch:
            shape = ("rows", op, table, next(iter(shapes))) if len(shapes) == 1 else None
            self.writer._append_many(batch, durable=False, shape=shape)
            self.intents += len(batch)
        return len(batch)

    def _intent(self, fields: dict[str, Any], shape: Hashable | None = None) -> int:
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        fields["txid"] = self.txid
        fields["state"] = "intent"
        if self.defer:
            self._pending.append(fields)
            self._pending_shapes.append(shape)
            self.intents += 1
            return len(self._pending) - 1
        seq = self.writer._append(fields, durable=False, shape=shape)
        self.intents += 1
        return seq

    def flush(self) -> None:
        """Append the held-back intents in one write (deferred; call it before COMMIT is
        sent). When that fails they are dropped (the caller must not commit)."""
        pending, shapes = self._pending, self._pending_shapes
        if not pending:
            return
        self._pending, self._pending_shapes = [], []
        try:
            self.writer._append_many(pending, durable=False, shapes=shapes)
        except BaseException:
            self.intents -= len(pending)
            raise

    def _settle(self, state: Literal["committed", "aborted"], *, sync: bool) -> int:
        if self.state != "open":
            raise UsageError(f"transaction {self.txid} is already {self.state}")
        self.state = state
        fields = {"txid": self.txid, "state": state}
        shape = ("marker", state, type(self.txid))
        durable = sync and state == "committed"
        pending, shapes = self._pending, self._pending_shapes
        if not pending:
            return self.writer._append(fields, durable=durable, shape=shape)
        # held-back intents and their marker: one write
        self._pending, self._pending_shapes = [], []
        first = self.writer._append_many(
            [*pending, fields], durable=durable, shapes=[*shapes, shape]
        )
        return first + len(pending)

    def commit(self) -> None:
        """Mark every intent committed (after the database confirmed the COMMIT)."""
        self._settle("committed", sync=True)

    def abort(self) -> None:
        """Mark every intent aborted (after the database rolled the transaction back)."""
        self._settle("aborted", sync=True)

    def leave_in_doubt(self) -> None:
        """Write no marker: the outcome is unknown (the intents stay in doubt). Intents
        still held back are appended, to be reported in doubt."""
        try:
            self.flush()
        except (OutputError, UsageError) as e:
            log.warning("journal %s: in-doubt intents of %s lost: %s", self.writer.path,
                        self.txid, e)  # fmt: skip
        self.state = "in doubt"

    async def commit_async(self) -> None:
        """:meth:`commit`, with the fsync in a worker thread (group commit)."""
        await self._settle_async("committed")

    async def abort_async(self) -> None:
        await self._settle_async("aborted")

    async def _settle_async(self, state: Literal["committed", "aborted"]) -> None:
        self._settle(state, sync=False)
        w = self.writer
        if w.fsync != "never" and (state == "committed" or w.fsync == "always"):
            with w._lock:
                ticket = w._appended
            await w._sync_async(ticket)

    def _outcome(self, exc: BaseException | None) -> Literal["committed", "aborted"] | None:
        """How leaving the ``with`` block settles the transaction (None: write nothing)."""
        if self.state != "open" or not self.intents:
            return None
        if exc is None:
            return "committed"
        if definitely_failed(exc):
            return "aborted"
        self.leave_in_doubt()
        return None

    def __enter__(self) -> JournalTransaction:
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = self._outcome(exc)
        if outcome is not None:
            self._settle(outcome, sync=True)

    async def __aenter__(self) -> JournalTransaction:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = self._outcome(exc)
        if outcome is not None:
            await self._settle_async(outcome)
