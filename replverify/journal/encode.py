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

__all__ = ["PLAIN", "Clock", "IntentTemplate", "body", "dumps", "image", "image_kinds",
           "params_json", "txid_head"]  # fmt: skip

_UTC = _dt.timezone.utc
_NL = orjson.OPT_APPEND_NEWLINE
#: types a journal value keeps as it is (see ``statements.journal_value``)
PLAIN = frozenset({int, str, bool, type(None)})


def image(values: Mapping[str, object]) -> dict[str, Any]:
    """``journal_value`` of a key or post-image, without its per-value walk when every
    value is already JSON (ints and strings: the common row)."""
    # a loop, not all() over a generator: this runs for every key and row journaled
    for k, v in values.items():
        if type(v) not in PLAIN or type(k) is not str:
            return journal_value(dict(values))  # type: ignore[return-value]
    return dict(values)


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
    if type(params) in (tuple, list):
        for a in params:  # a loop, not all(): once per statement
            if type(a) not in PLAIN:
                break
        else:
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
