"""In-memory stand-ins for the database, for tests and benchmarks: a row source for
the diff (:class:`MemorySource`), a reconcile target (:class:`MemoryTarget`) and a
synchronous driver of the comparison machine (:func:`run_in_memory`)."""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal

from replverify.db.catalog import TableInfo
from replverify.diff.hashing import ChunkDigest
from replverify.diff.machine import Request, TableComparison
from replverify.diff.ranges import KeyRange
from replverify.diff.sources import Row
from replverify.errors import UsageError
from replverify.journal.format import JSONValue, RowId, RowWrite
from replverify.journal.resolve import RowResolver
from replverify.reconcile.findings import Detail
from replverify.reconcile.judge import Image, Observation, Probe
from replverify.reconcile.targets import BadValue, _ctype, _encoder, column_value, json_text
from replverify.types import ColumnType, Key, TableRef
from replverify.values.pgtext import jsonable, pg_text


class MemorySource:
    """An in-memory side: ``rows`` maps key → compared column values.

    Keys are ordered with Python's ordering, which must match the server's for the data
    used (ints, byte-ordered text, ...). Digests use the same canonical hashing as
    ``PostgresSource`` in client mode.
    """

    def __init__(self, rows: Mapping[Key, Row], hasher: Callable[[Sequence[object]], int]) -> None:
        self.data = dict(rows)
        self.keys: list[Key] = sorted(self.data)
        self.hasher = hasher
        self.calls = 0

    def _in(self, rng: KeyRange) -> list[Key]:
        return [
            k
            for k in self.keys
            if (rng.lo is None or k > rng.lo) and (rng.hi is None or k <= rng.hi)
        ]

    async def digest(self, rng: KeyRange) -> ChunkDigest:
        self.calls += 1
        d = ChunkDigest(0, 0)
        for k in self._in(rng):
            d = d.add(self.hasher(self.data[k]))
        return d

    async def digests(self, ranges: Sequence[KeyRange]) -> list[ChunkDigest]:
        return [await self.digest(r) for r in ranges]

    async def boundary(self, after: Key | None, every: int) -> Key | None:
        self.calls += 1
        keys = self._in(KeyRange(after, None))
        return keys[every - 1] if len(keys) >= every else None

    async def split(self, rng: KeyRange, every: int, parts: int = 0) -> list[Key]:
        self.calls += 1
        keys = self._in(rng)
        return [keys[i] for i in range(every - 1, len(keys), every)]

    async def row_hashes(self, rng: KeyRange) -> dict[Key, int]:
        self.calls += 1
        return {k: self.hasher(self.data[k]) for k in self._in(rng)}

    async def rows(self, rng: KeyRange, keys: Sequence[Key]) -> dict[Key, Row]:
        self.calls += 1
        return {k: self.data[k] for k in keys if k in self.data}


def run_in_memory(
    machine: TableComparison,
    answer: Callable[[Request], object],
) -> TableComparison:
    """Drive ``machine`` to completion with a synchronous ``answer`` function (tests, tools)."""
    queue: list[Request] = machine.start()
    while queue:
        req = queue.pop()
        queue.extend(machine.feed(req, answer(req)))
    return machine


class MemoryTarget:
    """A :class:`Target` over Python data: for tests and benchmarks.

    ``rows`` maps a table to its rows as JSON values, read the way
    ``jsonb_populate_record`` reads them (a string for a jsonb column is a JSON string,
    unlike in a journal). Values are read as
    the column types in Python for integers, numeric (with scale), floats, text, bool,
    date, timestamp(tz), uuid, json(b) and enums (anything else raises UsageError); row
    identity and comparison then work as with :class:`PostgresTarget`, so a fixture
    journal gives the same report against both.
    """

    def __init__(
        self,
        tables: Mapping[TableRef, TableInfo],
        rows: Mapping[TableRef, Iterable[Mapping[str, JSONValue]]],
        *,
        name: str = "memory",
    ) -> None:
        self.name = name
        self.tables = tables
        self._resolver = RowResolver(tables)
        self.data: dict[RowId, dict[str, object]] = {}
        for ref, table_rows in rows.items():
            info = tables[ref]
            for row in table_rows:
                typed = {c.name: _py_cast(row.get(c.name), c.type) for c in info.columns}
                key = {c: row[c] for c in info.primary_key}
                self.data[self._resolver.key_identity(ref, key)] = typed

    async def observe(self, info: TableInfo, probes: Sequence[Probe]) -> list[Observation]:
        out = []
        for i, pr in enumerate(probes):
            images = []
            for img in pr.images:
                enc: dict[str, bytes] = {}
                for c, v in img.items():
                    ctype = _ctype(info, c)
                    try:
                        enc[c] = _encoder(ctype)(_py_cast(column_value(v, ctype), ctype))
                    except (ValueError, ArithmeticError) as e:
                        raise BadValue(i, f"{c}: {e}") from None
                images.append(enc)
            row = self.data.get(pr.write.rid)
            cols = {c for img in pr.images for c in img}
            encoded = {c: _encoder(_ctype(info, c))(row.get(c)) for c in cols} if row else {}
            out.append(Observation(row is not None, encoded, tuple(images)))
        return out

    async def details(
        self, info: TableInfo, keys: Sequence[RowWrite], images: Sequence[Image | None]
    ) -> list[Detail]:
        out = []
        for w, img in zip(keys, images, strict=True):
            image_text: dict[str, str | None] = {}
            for c, v in (img or {}).items():
                ctype = _ctype(info, c)
                value = _py_cast(column_value(v, ctype), ctype)
                image_text[c] = _text_or_none(value, ctype)
            row = self.data.get(w.rid)
            if row is None:
                out.append(Detail(False, {}, {}, {}, image_text))
                continue
            cols = info.columns
            text = {
                c.name: None if row[c.name] is None else pg_text(row[c.name], c.type) for c in cols
            }
            shown = {c.name: jsonable(row[c.name], c.type) for c in cols}
            encoded = {c.name: _encoder(c.type)(row[c.name]) for c in cols}
            out.append(Detail(True, text, shown, encoded, image_text))
        return out


def _jsonb_text(v: object) -> str:
    """jsonb's output form: keys by length then bytes (last duplicate wins), ", "/": "."""
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: (len(k.encode()), k.encode()))
        items = (f"{json.dumps(k, ensure_ascii=False)}: {_jsonb_text(v[k])}" for k in keys)
        return "{" + ", ".join(items) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_jsonb_text(x) for x in v) + "]"
    return json_text(v)  # type: ignore[arg-type]


def _text_or_none(v: object, ctype: ColumnType) -> str | None:
    return None if v is None else pg_text(v, ctype)


_TRUE = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE = frozenset({"f", "false", "n", "no", "off", "0"})


def _py_cast(v: object, ctype: ColumnType) -> object:
    """Read a JSON value as PostgreSQL would for ``ctype``, decoded as asyncpg would."""
    if v is None:
        return None
    base = ctype.base
    text = ("true" if v else "false") if isinstance(v, bool) else str(v)
    if ctype.kind == "enum" or base in ("text", "varchar", "bpchar", "name"):
        return text
    if base in ("int2", "int4", "int8"):
        if isinstance(v, bool):
            raise ValueError(f"invalid input syntax for type {ctype.name}: {text!r}")
        return int(text.strip())
    if base == "numeric":
        try:
            d = Decimal(text.strip())
        except decimal.InvalidOperation:
            raise ValueError(f"invalid input syntax for type numeric: {text!r}") from None
        if "," in ctype.name and d.is_finite():  # numeric(p,s): rounded to s places
            scale = int(ctype.name.rstrip(")").split(",")[1])
            d = d.quantize(Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_UP)
        return d
    if base in ("float4", "float8"):
        return float(text)
    if base == "bool":
        if isinstance(v, bool):
            return v
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"invalid input syntax for type boolean: {text!r}")
    if base == "timestamptz":
        t = _dt.datetime.fromisoformat(text)
        return t.replace(tzinfo=_dt.timezone.utc) if t.tzinfo is None else t
    if base == "timestamp":
        return _dt.datetime.fromisoformat(text).replace(tzinfo=None)
    if base == "date":
        return _dt.date.fromisoformat(text)
    if base == "uuid":
        return uuid.UUID(text)
    if base in ("json", "jsonb"):  # v is the JSON value itself (see column_value)
        return _jsonb_text(v)
    raise UsageError(f"MemoryTarget cannot read type {ctype.name}")
