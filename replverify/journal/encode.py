"""How the writer turns records into journal lines, in pieces encoded ahead of time.

A line is ``{"v":1,"txid":T,"seq":N,"ts":"...",<fields>}`` plus a newline. ``seq`` and
``ts`` are only known under the writer's lock, when the line is appended; everything
else is known earlier: the txid for the whole transaction (:func:`txid_head`), a
record's fields when it is journaled (:func:`body`), and for a statement intent all but
its parameters when the statement is first seen (:class:`IntentTemplate`). So the
append itself only splices bytes. The result is byte for byte what encoding the whole
record at once gives (``tests/test_journal_encode.py``).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import orjson

from replverify.journal.format import FORMAT_VERSION
from replverify.journal.statements import journal_value

__all__ = ["PLAIN", "Clock", "IntentTemplate", "RowTemplate", "body", "dumps", "image",
           "image_kinds", "params_json", "txid_head"]  # fmt: skip

_UTC = _dt.timezone.utc
_NL = orjson.OPT_APPEND_NEWLINE
#: types a journal value keeps as it is (see ``statements.journal_value``)
PLAIN = frozenset({int, str, bool, type(None)})
_STR = frozenset({str})
_ARRAYS = frozenset({tuple, list})
#: journal values (see ``statements.journal_value``) that are not part of a whole-image key
_NOT_KEY = frozenset({type(None), list, dict})
#: journal values a row record's compiled format (``RowTemplate._compile``) writes: how
_FORMATTED = {int: b"%d", str: b"%b", type(None): b"null"}
#: a row's key columns, their positions in it, the other columns and theirs
_Layout = tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[int, ...]]
#: a row record as a bytes format, the positions of the values it takes, any a string
_Format = tuple[bytes, tuple[int, ...], bool]


def image(values: Mapping[str, object]) -> dict[str, Any]:
    """``journal_value`` of a key or post-image, without its per-value walk when every
    value is already JSON (ints and strings: the common row)."""
    # type checks in C, no Python loop: this runs for every key and row journaled
    if PLAIN.issuperset(map(type, values.values())) and _STR.issuperset(map(type, values)):
        return dict(values)
    return journal_value(dict(values))  # type: ignore[return-value]


def image_kinds(values: Mapping[str, object] | None) -> Hashable:
    """The shape of one object field: its column names and the type of each value."""
    return None if values is None else (tuple(values), tuple(map(type, values.values())))


def dumps(value: object, *, newline: bool = False) -> bytes:
    """Compact JSON (UTF-8, not ASCII-escaped). orjson is several times faster than
    :mod:`json`; it refuses only integers beyond 64 bits, which :mod:`json` writes."""
    try:
        return orjson.dumps(value, option=_NL if newline else None)
    except TypeError:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode() if newline else text.encode()


def txid_head(txid: object) -> bytes:
    """The start of every line of transaction ``txid``, up to the value of ``seq``."""
    return b'{"v":%d,"txid":%b,"seq":' % (FORMAT_VERSION, dumps(txid))


def body(fields: Mapping[str, Any]) -> bytes:
    """The fields of a record after ``ts``, to the end of the line: ``,"op":...}\\n``."""
    if not fields:
        return b"}\n"
    return b"," + dumps(fields, newline=True)[1:]


def params_json(params: Sequence[object]) -> bytes:
    """A statement's parameters as a JSON array of journal values."""
    if type(params) in _ARRAYS and PLAIN.issuperset(map(type, params)):
        return dumps(params)
    return dumps([a if type(a) in PLAIN else journal_value(a) for a in params])


class IntentTemplate:
    """A statement intent's line but for its parameters: ``op``, ``table``, ``stmt`` and
    ``meta`` encoded once (a caller that runs the same statement again keeps it), and
    the part of the record's shape they make (see ``JournalWriter._append_lines``)."""

    __slots__ = ("head", "shape", "tail")

    def __init__(
        self, op: str, table: str, stmt: str, meta: Mapping[str, object] | None = None
    ) -> None:
        # the field order of the record written whole: op, table, stmt, params, meta, state
        self.head = body({"op": op, "table": table, "stmt": stmt})[:-2] + b',"params":'
        tail: dict[str, Any] = {}
        meta_kinds: Hashable = None
        if meta is not None:
            tail["meta"] = meta_image = image(meta)
            meta_kinds = image_kinds(meta_image)
        tail["state"] = "intent"
        self.tail = body(tail)
        self.shape: Hashable = ("stmt", op, table, stmt, meta_kinds)

    def body(self, params: Sequence[object]) -> bytes:
        return self.head + params_json(params) + self.tail


class RowTemplate:
    """The row records of one statement, made from the rows its RETURNING gives: the
    statement's ``columns`` are the last ``len(columns)`` items of each row (the
    application's own RETURNING items come first). ``key``: the primary key (empty: a
    row is identified by its whole image, its non-null scalar values); ``values``:
    whether a record carries the post-image (not for a delete)."""

    __slots__ = ("_formats", "_keyless", "columns", "head", "key", "key_at", "rest", "rest_at",
                 "shape", "values", "width")  # fmt: skip

    def __init__(
        self, op: str, table: str, columns: Sequence[str], key: Sequence[str], *, values: bool
    ) -> None:
        self.columns = tuple(columns)
        self.key = tuple(key)
        self.values = values
        self.width = len(self.columns)
        at = {c: i for i, c in enumerate(self.columns)}
        # positions in the statement's own columns: the key in primary-key order
        self.key_at = tuple(at[c] for c in self.key)
        self.rest = tuple(c for c in self.columns if c not in self.key)
        self.rest_at = tuple(at[c] for c in self.rest)
        # the field order of the record written whole: op, table, key, values, state, of
        self.head = body({"op": op, "table": table})[:-2] + b","
        self.shape: Hashable = ("rows", op, table, self.columns, self.key, values)
        #: keyless tables: the :meth:`_layout` of a row by the kinds of its journal values
        self._keyless: dict[tuple[type, ...], _Layout] = {}
        #: :meth:`_compile` per kinds of a row's journal values
        self._formats: dict[tuple[type, ...], _Format | None] = {}

    def split(self, row: Sequence[object]) -> tuple[dict[str, object], dict[str, object] | None]:
        """A returned row's key and post-image (None for a delete), its values as
        returned."""
        values = self._own(row)
        kinds = () if self.key else tuple(type(journal_value(v)) for v in values)
        return self._pick(values, self._layout(kinds))

    def _own(self, row: Sequence[object]) -> tuple[object, ...]:
        """The statement's own columns of a returned row (its last ``width`` items)."""
        values = tuple(row)
        return values if len(values) == self.width else values[len(values) - self.width :]

    def _layout(self, kinds: tuple[type, ...]) -> _Layout:
        """The key columns of a row and the others, with their positions: the primary
        key; without one, the row's whole image identifies it, and its key is its
        non-null scalars - which depends only on the types of its journal values
        (``kinds``), so it is worked out once per kinds."""
        if self.key:
            return self.key, self.key_at, self.rest, self.rest_at
        layout = self._keyless.get(kinds)
        if layout is None:
            key = [i for i, k in enumerate(kinds) if k not in _NOT_KEY]
            rest = [i for i in range(self.width) if i not in key]
            cols = self.columns
            layout = self._keyless[kinds] = (
                tuple(cols[i] for i in key), tuple(key), tuple(cols[i] for i in rest), tuple(rest)
            )  # fmt: skip
        return layout

    def _pick(
        self, values: tuple[object, ...], layout: _Layout
    ) -> tuple[dict[str, object], dict[str, object] | None]:
        """``values`` split by a :meth:`_layout`: the key and (unless a delete) the
        post-image, picked in C."""
        key_names, key_at, rest_names, rest_at = layout
        get = values.__getitem__
        key = dict(zip(key_names, map(get, key_at), strict=True))
        if not self.values:
            return key, None
        return key, dict(zip(rest_names, map(get, rest_at), strict=True))

    def record(self, row: Sequence[object], of: int) -> tuple[bytes, Hashable]:
        """The ``body`` of the row record of ``row`` (statement intent ``of``), and the
        part of its shape that varies (the kinds of its values)."""
        values = self._own(row)
        kinds = tuple(map(type, values))
        if not PLAIN.issuperset(kinds):
            values = tuple(map(journal_value, values))
            kinds = tuple(map(type, values))
        try:
            compiled = self._formats[kinds]
        except KeyError:
            compiled = self._formats[kinds] = self._compile(kinds)
        if compiled is not None:
            fmt, at, texts = compiled
            if not texts:  # numbers only (the common key and counter): all in C
                return fmt % (*map(values.__getitem__, at), of), kinds
            args = [dumps(v) if type(v) is str else v for v in map(values.__getitem__, at)]
            args.append(of)
            return fmt % tuple(args), kinds
        key, post = self._pick(values, self._layout(kinds))
        if post is None:
            fields = {"key": key, "state": "intent", "of": of}
        else:
            fields = {"key": key, "values": post, "state": "intent", "of": of}
        return self.head + dumps(fields, newline=True)[1:], kinds

    def _compile(self, kinds: tuple[type, ...]) -> _Format | None:
        """The record of a row whose journal values are of ``kinds`` as one bytes format:
        the bytes ``dumps`` of the whole record gives, with integers and strings (their
        JSON) spliced in by ``%``, the positions of the values it takes, and whether any
        is a string. None for other kinds (floats, booleans, arrays, json: the general
        path encodes them)."""
        if not set(_FORMATTED).issuperset(kinds):
            return None
        key_names, key_at, rest_names, rest_at = self._layout(kinds)
        at: list[int] = []

        def members(names: tuple[str, ...], positions: tuple[int, ...]) -> bytes:
            out = []
            for name, i in zip(names, positions, strict=True):
                out.append(dumps(name).replace(b"%", b"%%") + b":" + _FORMATTED[kinds[i]])
                if kinds[i] is not type(None):
                    at.append(i)
            return b"{" + b",".join(out) + b"}"

        fmt = self.head.replace(b"%", b"%%") + b'"key":' + members(key_names, key_at)
        if self.values:
            fmt += b',"values":' + members(rest_names, rest_at)
        fmt += b',"state":"intent","of":%d}\n'
        return fmt, tuple(at), str in kinds


class Clock:
    """``ts`` values: ``datetime.now(timezone.utc).isoformat()`` as bytes, the date and
    time of day formatted once per second (the whole call is a third of an append's
    Python time)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def ts_field(self) -> bytes:
        """``,"ts":"<now>"``."""
        us = time.time_ns() // 1000  # floor, as datetime.now()
        second, fraction = divmod(us, 1_000_000)
        if second != self._second:
            when = _dt.datetime.fromtimestamp(second, _UTC)
            self._prefix = b',"ts":"' + when.strftime("%Y-%m-%dT%H:%M:%S").encode()
            self._second = second
        if fraction:
            return b'%b.%06d+00:00"' % (self._prefix, fraction)
        return self._prefix + b'+00:00"'  # isoformat() leaves out a zero fraction
