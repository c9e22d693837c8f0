"""Reading a journal.

:class:`JournalReader` streams a journal of any size (memory: the lines of one 64 KiB
chunk, and one line of at most ``max_line_bytes``) and validates every record into
:class:`WriteRecord` or :class:`Marker`. A *torn last line* - no newline at the end of
the file and not valid JSON, which is what a crash in the middle of an append leaves - is
skipped and reported in :attr:`JournalReader.torn`. Any other bad line raises
:class:`~replverify.errors.JournalError` naming the file and line; nothing is skipped
silently. ``sql`` records are parsed with :mod:`.statements`.

Two paths, one verdict: :func:`_typed_record` decodes the ordinary valid line into
msgspec Structs whose types are the format's checks (in C); every line it does not prove
valid goes to :func:`_record_from`, the reference, which decides it and words the error.
``tests/test_journal_typed.py`` holds them to the same records and errors.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO, NoReturn

import msgspec

from replverify.errors import JournalError, UsageError
from replverify.journal.format import (
    _MARKER_FIELDS,
    _MARKER_LINE,
    _SQL_LINE,
    _STMT_FIELDS,
    _STMT_LINE,
    _TABLES,
    _WRITE_FIELDS,
    _WRITE_LINE,
    FORMAT_VERSION,
    MAX_LINE_BYTES,
    OPS,
    Marker,
    Record,
    TornTail,
    TxId,
    WriteRecord,
    _Bad,
    _loads,
    _names,
    _parse_image,
    _parse_key,
    _parse_seq,
    _parse_ts,
    _parse_txid,
    _table,
)
from replverify.journal.statements import _parse_statement

__all__ = [
    "JournalReader",
    "read_journal",
]

#: bytes read at a time (lines are split from them)
_CHUNK_BYTES = 1 << 16


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
        if not _MARKER_FIELDS.issuperset(obj):
            unknown = obj.keys() - _MARKER_FIELDS
            raise _Bad(f"unknown field(s) {_names(unknown)} in a marker record")
        if state not in ("committed", "aborted"):
            raise _Bad('a marker\'s "state" must be "committed" or "aborted"')
        seq = obj.get("seq")
        return Marker(line, txid, state, ts, ts_text, None if seq is None else _parse_seq(seq))
    if "stmt" in obj:
        return _statement_intent(obj, line, txid, ts, ts_text, state)
    if not _WRITE_FIELDS.issuperset(obj):
        unknown = obj.keys() - _WRITE_FIELDS
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
        return WriteRecord(
            **common, op=stmt.op, table=stmt.table, key={}, values=None, sql=sql,
            statement=stmt,
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
    return WriteRecord(
        **common, op=op, table=table, key=key, values=values, sql=None, statement=None
    )


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
    return WriteRecord(
        line, txid, _parse_seq(obj.get("seq")), ts, ts_text, "intent", op, _table(obj["table"]),
        {}, None, None, None, None, stmt, tuple(params), None
    )  # fmt: skip


_fromisoformat = _dt.datetime.fromisoformat


def _typed_record(raw: bytes, line: int) -> Record | None:
    """The record of a line that the typed decoders (``format.py``, "typed lines") and
    the few checks they cannot make prove valid; None for any other line, which
    :func:`_record_from` then decides and words the error for.

    The bytes only pick the decoder to try (a wrong pick is refused and goes the checked
    way): ``"key"`` is a structured write, ``"stmt"`` a statement intent, ``"sql"`` an
    ``sql`` record, anything else a marker.
    """
    find = raw.find  # not ``in``: bytes.__contains__ tries the needle as an int first
    try:
        if find(b'"key"') >= 0:
            w = _WRITE_LINE.decode(raw)
            ts = _fromisoformat(w.ts)
            op, values, table = w.op, w.values, w.table
            if ts.tzinfo is None or (values is None) != (op == "delete"):
                return None
            if op == "update" and not values:
                return None
            return WriteRecord(
                line, w.txid, w.seq, ts, w.ts, w.state, op, _TABLES.get(table) or _table(table),
                w.key, values, w.before, None, None, None, (), w.of
            )  # fmt: skip
        if find(b'"stmt"') >= 0:
            i = _STMT_LINE.decode(raw)
            ts = _fromisoformat(i.ts)
            if ts.tzinfo is None or not i.stmt.strip():
                return None
            return WriteRecord(
                line, i.txid, i.seq, ts, i.ts, "intent", i.op, _table(i.table), {}, None,
                None, None, None, i.stmt, i.params, None
            )  # fmt: skip
        if find(b'"sql"') >= 0:
            q = _SQL_LINE.decode(raw)
            ts = _fromisoformat(q.ts)
            if ts.tzinfo is None:
                return None
            stmt = _parse_statement(q.sql)
            if (q.op is not None and q.op != stmt.op) or (
                q.before is not None and stmt.op == "insert"
            ):
                return None
            return WriteRecord(
                line, q.txid, q.seq, ts, q.ts, q.state, stmt.op, stmt.table, {}, None,
                q.before, q.sql, stmt, None, (), None
            )  # fmt: skip
        m = _MARKER_LINE.decode(raw)
        ts = _fromisoformat(m.ts)
        if ts.tzinfo is None:
            return None
        return Marker(line, m.txid, m.state, ts, m.ts, m.seq)
    except (msgspec.DecodeError, ValueError, ArithmeticError, RecursionError, _Bad):
        # ArithmeticError: a number no Decimal holds (float_hook); RecursionError: nested
        # too deeply for this stack, which the checked path reports
        return None


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
        typed, checked = _typed_record, self._checked
        for n, lines, ended in self._blocks():
            for raw in lines:
                self.lines = n
                rec = typed(raw, n)
                if rec is None:
                    rec = checked(n, raw + b"\n" if ended else raw)
                yield rec
                n += 1

    def raw_lines(self) -> Iterator[tuple[int, bytes]]:
        """``(line number, bytes)`` of every complete line, without validating it.

        A torn last line is not yielded (see :attr:`torn`). Callers that skip lines
        they do not need (``reconcile``'s second pass) still get exact line numbers.
        """
        for n, lines, ended in self._blocks():
            for raw in lines:
                self.lines = n
                yield n, raw + b"\n" if ended else raw
                n += 1

    def _blocks(self) -> Iterator[tuple[int, list[bytes], bool]]:
        """The file in blocks of lines: ``(number of the first, the lines without their
        newline, whether they had one)``. Read in chunks and split (a line at a time
        costs more than decoding it); a line longer than :attr:`max_line_bytes` is an
        error once that many bytes of it are read, not after reading it whole."""
        try:
            f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise UsageError(f"cannot read journal {self.path}: {e.strerror}") from None
        with f:
            limit = self.max_line_bytes
            # no line inside a chunk is longer than the limit: only the first one
            # (continuing the previous chunk's tail) needs its length checked
            size = min(_CHUNK_BYTES, limit + 1)
            read = f.read
            n = 1  # the number of the next line
            tail: list[bytes] = []  # the start of a line, not yet ended
            tail_len = 0
            while True:
                data = read(size)
                if not data:
                    break
                lines = data.split(b"\n")
                del data  # memory: the lines of one chunk, not two copies of them
                rest = lines.pop()
                if lines:
                    if tail:
                        lines[0] = b"".join([*tail, lines[0]])
                        tail, tail_len = [], 0
                    if len(lines[0]) > limit:
                        self._too_long(n)
                    yield n, lines, True
                    n += len(lines)
                if rest:
                    tail.append(rest)
                    tail_len += len(rest)
                    if tail_len > limit:
                        self._too_long(n)
            if not tail:
                return
            # the last line, without a newline: complete JSON, or torn
            last = b"".join(tail)
            self.lines = n
            try:
                _loads(last)
            except ValueError:
                self.torn = TornTail(n, len(last))
                return
            except RecursionError:
                pass  # not known to be torn: parsed (and refused) as a line
            yield n, [last], False

    def _too_long(self, line: int) -> NoReturn:
        self.lines = line
        raise JournalError(
            f"line longer than {self.max_line_bytes} bytes", path=self.path, line=line
        )

    def parse(self, line: int, raw: bytes) -> Record:
        """Decode and validate one line (raises :class:`JournalError`)."""
        return _typed_record(raw, line) or self._checked(line, raw)

    def _checked(self, line: int, raw: bytes) -> Record:
        """:meth:`parse` by the checks of :func:`_record_from`: the reference, and the
        path of every line the typed decoders do not prove valid."""
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
        except RecursionError:  # was an internal error escaping the reader
            raise JournalError(
                "not valid JSON: nested too deeply", path=self.path, line=line
            ) from None
        try:
            return _record_from(obj, line)
        except _Bad as e:
            raise JournalError(str(e), path=self.path, line=line) from None


def read_journal(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Every record of the journal at ``path``, validated, streamed."""
    return iter(JournalReader(path))
