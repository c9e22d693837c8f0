"""The edge of reconcile: a :class:`Target` answers batches of questions about rows of
one table. :class:`PostgresTarget` asks PostgreSQL, one query per batch (``unnest`` of keys
and images joined to the table; PostgreSQL reads the journal's values as the column types
with ``jsonb_populate_record``), inside the caller's read-only repeatable-read snapshot;
:class:`replverify.testing.memory.MemoryTarget` answers from Python data.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal
from itertools import chain
from typing import NoReturn, Protocol

import asyncpg
import orjson
import sqlglot
from sqlglot import exp

from replverify.db.catalog import TableInfo
from replverify.diff.sql import DIALECT, ident
from replverify.errors import SchemaError
from replverify.journal.format import (
    JSONValue,
    RowWrite,
)
from replverify.reconcile.findings import Detail
from replverify.reconcile.judge import HELD, Image, Observation, Probe
from replverify.types import ColumnType, TableRef
from replverify.values.canonical import Encoder, encoder_for
from replverify.values.pgtext import jsonable

__all__ = [
    "BadValue",
    "PostgresTarget",
    "Target",
    "column_value",
    "json_text",
    "lookup_sql",
]


class BadValue(Exception):
    """A journal value the column's type cannot read (``index``: the probe in the batch)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


class Target(Protocol):
    """One side: answers batches of questions about rows of one table."""

    name: str
    tables: Mapping[TableRef, TableInfo]

    async def observe(self, info: TableInfo, probes: Sequence[Probe]) -> list[Observation]: ...

    async def details(
        self, info: TableInfo, keys: Sequence[RowWrite], images: Sequence[Image | None]
    ) -> list[Detail]: ...


# --------------------------------------------------------------------------- values


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _is_json(ctype: ColumnType) -> bool:
    return ctype.kind == "base" and ctype.base in ("json", "jsonb")


def _undecimal(v: JSONValue) -> JSONValue:
    """Decimals as their exact text (the column's type reads the text)."""
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, list):
        return [_undecimal(x) for x in v]
    if isinstance(v, dict):
        return {k: _undecimal(x) for k, x in v.items()}
    return v


def json_text(v: JSONValue) -> str:
    """JSON text with Decimals as exact numbers."""
    if isinstance(v, Decimal):
        return str(v) if v.is_finite() else json.dumps(str(v))
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{json_text(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(json_text(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def column_value(v: JSONValue, ctype: ColumnType) -> JSONValue:
    """A journal value as ``jsonb_populate_record`` should see it for a ``ctype`` column:
    json columns take a string as JSON text (parsed here: ValueError if it is not);
    other columns read numbers through their exact text."""
    if _is_json(ctype):
        if isinstance(v, str):
            try:
                parsed: JSONValue = json.loads(
                    v, parse_float=Decimal, parse_constant=_reject_constant
                )
            except ValueError as e:
                raise ValueError(f"not JSON text: {e}") from None
            return parsed
        return v
    return _undecimal(v)


def _decimal_text(v: object) -> str:
    """orjson's ``default``: a Decimal as its exact text, as :func:`_undecimal` writes it."""
    if isinstance(v, Decimal):
        return str(v)
    raise TypeError


def _encoder(ctype: ColumnType) -> Encoder:
    if ctype.kind == "base" and ctype.base == "json":
        return encoder_for(ColumnType("jsonb", "jsonb"))  # json compares by value here
    return encoder_for(ctype)


def _ctype(info: TableInfo, name: str) -> ColumnType:
    c = info.column(name)
    return c.type if c is not None else ColumnType("text", "text")


# --------------------------------------------------------------------------- PostgreSQL

#: The lookup skeletons; the table, its row type and columns go in as sqlglot nodes.
_LOOKUP = (
    "SELECT j.n, t.ctid IS NOT NULL AS found"
    " FROM UNNEST(CAST($1 AS INT[]), CAST($2 AS JSONB[])) AS j(n, k)"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.k) AS kk"
    " LEFT JOIN _rv_table AS t ON TRUE"
)
_LOOKUP_IMAGES = (
    "SELECT j.n, t.ctid IS NOT NULL AS found"
    " FROM UNNEST(CAST($1 AS INT[]), CAST($2 AS JSONB[]), CAST($3 AS JSONB[])) AS j(n, k, img)"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.k) AS kk"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.img) AS p"
    " LEFT JOIN _rv_table AS t ON TRUE"
)


#: One query row per probe of at most two images (what pass 2 and the in-doubt writes
#: ask), all of them in one jsonb document ``[[key, image, image, quick], ...]``: one
#: orjson call a batch, not three jsonb array elements a row. ``h.held``: a quick
#: probe's row holds its first image - each of the image's columns byte for byte
#: (``record_image_eq``: the same stored value, so the same canonical encoding); its
#: values are then not sent (``v`` is all NULL).
_LOOKUP_PAIRS = (
    "SELECT j.n, t.ctid IS NOT NULL AS found, h.held"
    " FROM JSONB_ARRAY_ELEMENTS(CAST($1 AS JSONB)) WITH ORDINALITY AS j(e, n)"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.e -> 0) AS kk"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.e -> 1) AS p"
    " CROSS JOIN LATERAL JSONB_POPULATE_RECORD(CAST(NULL AS _rv_type), j.e -> 2) AS b"
    " LEFT JOIN _rv_table AS t ON TRUE"
    " CROSS JOIN LATERAL (SELECT CAST(j.e ->> 3 AS BOOLEAN) AND NOT t.ctid IS NULL AS held) AS h"
    " LEFT JOIN LATERAL (SELECT _rv_values) AS v ON NOT h.held"
)
#: the first image's column ``_rv_col``, where the image has it, is the row's
_HELD_COLUMN = "NOT (j.e -> 1) ? '_rv_name' OR RECORD_IMAGE_EQ(ROW(t._rv_col), ROW(p._rv_col))"


def _qcol(alias: str, name: str) -> exp.Column:
    return exp.Column(this=ident(name), table=exp.to_identifier(alias))


def _filled(skeleton: str, ref: TableRef, key: tuple[str, ...]) -> exp.Select:
    """A lookup skeleton with the table, its row type and the key join filled in."""
    tree = sqlglot.parse_one(skeleton, read=DIALECT)
    tname = exp.Table(this=ident(ref.name), db=ident(ref.schema))
    rowtype = exp.DataType.build(tname.sql(DIALECT), dialect=DIALECT, udt=True)

    def fill(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.DataType) and node.sql(DIALECT) == "_rv_type":
            return rowtype.copy()
        if isinstance(node, exp.Table) and node.name == "_rv_table":
            return exp.Table(
                this=ident(ref.name),
                db=ident(ref.schema),
                alias=exp.TableAlias(this=exp.to_identifier("t")),
            )
        return node

    tree = tree.transform(fill)
    assert isinstance(tree, exp.Select)
    on = exp.and_(*(exp.EQ(this=_qcol("t", k), expression=_qcol("kk", k)) for k in key))
    for join in tree.args.get("joins") or []:
        if isinstance(join.this, exp.Table) and join.this.alias == "t":
            join.set("on", on)
    return tree


def lookup_sql(
    info: TableInfo,
    key: Sequence[str],
    target_cols: Sequence[str],
    image_cols: Sequence[str],
    *,
    as_text: bool,
) -> str:
    """One query for a batch of rows of ``info``.

    Returns ``n, found, t.col...`` (and with ``as_text`` ``t.col::text...``), then the
    images' columns read as the column types (``p.col``, ``::text`` with ``as_text``).
    Parameters: ``$1`` row numbers, ``$2`` keys, ``$3`` images (if ``image_cols``), as
    jsonb objects; ``jsonb_populate_record`` reads them with the columns' input functions.
    """
    return _lookup_sql(info.ref, tuple(key), tuple(target_cols), tuple(image_cols), as_text)


@functools.lru_cache(maxsize=256)
def _lookup_sql(
    ref: TableRef,
    key: tuple[str, ...],
    target_cols: tuple[str, ...],
    image_cols: tuple[str, ...],
    as_text: bool,
) -> str:
    """:func:`lookup_sql`, built once per shape: sqlglot takes milliseconds, and a
    reconcile asks for the same few shapes for every batch."""
    tree = _filled(_LOOKUP_IMAGES if image_cols else _LOOKUP, ref, key)
    projections: list[exp.Expr] = [_qcol("t", c) for c in target_cols]
    if as_text:
        projections += [exp.cast(_qcol("t", c), "text") for c in target_cols]
    images: list[exp.Expr] = [_qcol("p", c) for c in image_cols]
    projections += [exp.cast(e, "text") for e in images] if as_text else images
    return tree.select(*projections).sql(DIALECT)


@functools.lru_cache(maxsize=256)
def pairs_sql(ref: TableRef, key: tuple[str, ...], cols: tuple[str, ...]) -> str:
    """The query of :data:`_LOOKUP_PAIRS` for images of ``cols``: returns ``n, found,
    held``, then ``t.col...``, the first image's ``p.col...`` and the second's
    ``b.col...`` (all NULL where ``held``)."""
    tree = _filled(_LOOKUP_PAIRS, ref, key)
    template = sqlglot.parse_one(_HELD_COLUMN, read=DIALECT)

    def held_column(c: str) -> exp.Expr:
        def fill(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Literal) and node.this == "_rv_name":
                return exp.Literal.string(c)
            if isinstance(node, exp.Column) and node.name == "_rv_col":
                return _qcol(node.table, c)
            return node

        return exp.paren(template.copy().transform(fill), copy=False)

    values = [
        exp.alias_(_qcol(alias, c), f"{alias}{i}") for alias in "tpb" for i, c in enumerate(cols)
    ]
    joins = []
    for join in tree.args["joins"]:
        lateral = join.this
        if isinstance(lateral, exp.Lateral) and lateral.alias == "h":
            held = lateral.this.this.expressions[0]
            held.set("this", exp.and_(held.this, *(held_column(c) for c in cols), copy=False))
        elif isinstance(lateral, exp.Lateral) and lateral.alias == "v":
            if not cols:
                continue  # nothing to read but whether the row is there
            lateral.this.this.set("expressions", values)
        joins.append(join)
    tree.set("joins", joins)
    projections = [exp.column(f"{a}{i}", table="v") for a in "tpb" for i in range(len(cols))]
    return tree.select(*projections).sql(DIALECT)


def _columns(probes: Sequence[Probe]) -> tuple[str, ...]:
    """The columns of the probes' images, in first-seen order (iterated in C: a Python
    loop over the images cost about 2 us a probe)."""
    images = chain.from_iterable([pr.images for pr in probes])
    return tuple(dict.fromkeys(chain.from_iterable(images)))


#: the image of a probe that has none (the pairs document has two a probe)
_NO_IMAGE: Image = {}
#: the largest pairs document sent (jsonb holds at most 256 MiB); a larger batch goes
#: as jsonb arrays
_MAX_DOCUMENT = 64 << 20


class _Retry(Exception):
    """A batch hit a value a column type cannot read: ask row by row to find it."""


class PostgresTarget:
    """A :class:`Target` on one asyncpg connection (keep it inside one read-only
    repeatable-read transaction: the whole report then reads one snapshot)."""

    def __init__(
        self, conn: asyncpg.Connection, name: str, tables: Mapping[TableRef, TableInfo]
    ) -> None:
        self.conn = conn
        self.name = name
        self.tables = tables
        self._encoders: dict[tuple[TableRef, str], Encoder] = {}
        #: each column's type (a payload is built per probe image)
        self._columns: dict[tuple[TableRef, str], ColumnType] = {}
        #: each table's json and jsonb columns (their strings are JSON text)
        self._json: dict[TableRef, frozenset[str]] = {}

    def _json_columns(self, info: TableInfo) -> frozenset[str]:
        cols = self._json.get(info.ref)
        if cols is None:
            cols = self._json[info.ref] = frozenset(
                c.name for c in info.columns if _is_json(c.type)
            )
        return cols

    def _enc(self, info: TableInfo, col: str) -> Encoder:
        e = self._encoders.get((info.ref, col))
        if e is None:
            e = self._encoders[(info.ref, col)] = _encoder(_ctype(info, col))
        return e

    def _payload(self, info: TableInfo, image: Image) -> str:
        if self._json_columns(info).isdisjoint(image):
            # outside json columns column_value only writes Decimals as their text, which
            # orjson's default does in one C call (ints beyond 64 bits, lone surrogates:
            # TypeError, below)
            with contextlib.suppress(TypeError):
                return orjson.dumps(image, default=_decimal_text).decode()
        values: dict[str, JSONValue] = {}
        columns = self._columns
        for col, v in image.items():
            ctype = columns.get((info.ref, col))
            if ctype is None:
                ctype = columns[(info.ref, col)] = _ctype(info, col)
            try:
                values[col] = column_value(v, ctype)
            except ValueError as e:
                raise BadValue(-1, f"{col}: {e}") from None
        try:
            # orjson writes the same JSON values ten times faster; it refuses Decimals (in
            # json columns: they must stay exact numbers), ints beyond 64 bits and lone
            # surrogates, which json_text writes
            return orjson.dumps(values).decode()
        except TypeError:
            return json_text(values)

    async def _fetch(self, sql: str, args: Sequence[object], count: int) -> list[asyncpg.Record]:
        try:
            # a savepoint: a value the column type refuses must not end the snapshot
            async with self.conn.transaction():
                rows: list[asyncpg.Record] = await self.conn.fetch(sql, *args)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as e:
            if count == 1:
                raise BadValue(0, str(e)) from None
            raise _Retry() from e
        return rows

    async def observe(self, info: TableInfo, probes: Sequence[Probe]) -> list[Observation]:
        doc = self._document(info, probes)
        if doc is None:
            return await self._observe_images(info, probes)
        key = tuple(c for c, _ in probes[0].write.key)
        cols = _columns(probes)
        try:
            # never count 1: a refused value is found, and worded, the way it always was
            rows = await self._fetch(pairs_sql(info.ref, key, cols), [doc], 0)
        except _Retry:
            return await self._one_by_one(info, probes)
        got: list[asyncpg.Record | None] = [None] * len(probes)
        for r in rows:
            if got[r[0] - 1] is not None:
                self._not_unique(info, probes, Counter(r[0] - 1 for r in rows))
            got[r[0] - 1] = r
        width = len(cols)
        at = {c: i for i, c in enumerate(cols)}
        encs = [self._enc(info, c) for c in cols]
        out: list[Observation] = []
        for pr, r in zip(probes, got, strict=True):
            assert r is not None
            if r[2]:
                out.append(HELD)
                continue
            found = bool(r[1])
            row = {c: encs[i](r[3 + i]) for i, c in enumerate(cols)} if found else {}
            images = []
            for k, img in enumerate(pr.images):
                base = 3 + width * (k + 1)
                images.append({c: encs[at[c]](r[base + at[c]]) for c in img})
            out.append(Observation(found, row, tuple(images)))
        return out

    def _document(self, info: TableInfo, probes: Sequence[Probe]) -> str | None:
        """The jsonb document of :data:`_LOOKUP_PAIRS` for ``probes``; None where it
        cannot say exactly what :meth:`_observe_images` sends: a probe of more than two
        images, a value in a json or jsonb column (a string there is JSON text), a value
        orjson refuses (ints beyond 64 bits, lone surrogates), a very large batch."""
        jcols = self._json_columns(info)
        items = []
        for pr in probes:
            images = pr.images
            if len(images) > 2:
                return None
            key = dict(pr.write.key)
            first = images[0] if images else _NO_IMAGE
            second = images[1] if len(images) > 1 else _NO_IMAGE
            if jcols and not (
                jcols.isdisjoint(key) and jcols.isdisjoint(first) and jcols.isdisjoint(second)
            ):
                return None
            items.append((key, first, second, pr.quick))
        try:
            # outside json columns a payload only writes Decimals as their text
            doc = orjson.dumps(items, default=_decimal_text)
        except TypeError:
            return None
        return doc.decode() if len(doc) <= _MAX_DOCUMENT else None

    async def _one_by_one(self, info: TableInfo, probes: Sequence[Probe]) -> list[Observation]:
        """A batch one probe at a time (it holds a value a column type refuses: the
        first such probe raises :class:`BadValue` with its index and the server's
        message)."""
        out: list[Observation] = []
        for i, pr in enumerate(probes):
            try:
                out.extend(await self._observe_images(info, [pr]))
            except BadValue as e:
                raise BadValue(i, e.message) from None
        return out

    def _not_unique(
        self, info: TableInfo, probes: Sequence[Probe], counts: Mapping[int, int]
    ) -> NoReturn:
        n = min(n for n, c in counts.items() if c != 1)
        w = probes[n].write
        raise SchemaError(
            f"{info.ref}: key {dict(w.key_display)} matches {counts[n]} rows on"
            f" {self.name}: the journal's key is not unique there"
        )

    async def _observe_images(self, info: TableInfo, probes: Sequence[Probe]) -> list[Observation]:
        """:meth:`observe` with one query row per image (any number of them) and the
        payloads as jsonb arrays."""
        key = [c for c, _ in probes[0].write.key]
        cols = list(_columns(probes))
        flat: list[int] = []  # query row -> probe
        keys: list[str] = []
        imgs: list[str] = []
        for n, pr in enumerate(probes):
            try:
                k = self._payload(info, dict(pr.write.key))
                for img in pr.images or ({},):
                    flat.append(n)
                    keys.append(k)
                    imgs.append(self._payload(info, img))
            except BadValue as e:
                raise BadValue(n, e.message) from None
        sql = lookup_sql(info, key, cols, cols or key, as_text=False)
        try:
            rows = await self._fetch(sql, [list(range(len(flat))), keys, imgs], len(probes))
        except _Retry:
            return await self._one_by_one(info, probes)
        got: list[list[asyncpg.Record]] = [[] for _ in flat]
        for r in rows:
            got[r[0]].append(r)
        for n, g in enumerate(got):
            if len(g) != 1:
                self._not_unique(info, probes, {flat[n]: len(g)})
        width = len(cols)
        at = {c: i for i, c in enumerate(cols)}
        encs = [self._enc(info, c) for c in cols]
        out = []
        n = 0
        for pr in probes:
            first = got[n][0]
            found = bool(first[1])
            row = {c: encs[i](first[2 + i]) for i, c in enumerate(cols)} if found else {}
            images = []
            for img in pr.images:
                r = got[n][0]
                images.append({c: encs[at[c]](r[2 + width + at[c]]) for c in img})
                n += 1
            if not pr.images:
                n += 1
            out.append(Observation(found, row, tuple(images)))
        return out

    async def details(
        self, info: TableInfo, keys: Sequence[RowWrite], images: Sequence[Image | None]
    ) -> list[Detail]:
        key = [c for c, _ in keys[0].key]
        cols = [c.name for c in info.columns]
        image_cols = cols if any(images) else []
        try:
            kp = []
            for i, w in enumerate(keys):
                try:
                    kp.append(self._payload(info, dict(w.key)))
                except BadValue as e:
                    raise BadValue(i, e.message) from None
            ip = []
            for i, img in enumerate(images):
                try:
                    ip.append(self._payload(info, img or {}))
                except BadValue as e:
                    raise BadValue(i, e.message) from None
            sql = lookup_sql(info, key, cols, image_cols, as_text=True)
            args: list[object] = [list(range(len(keys))), kp]
            if image_cols:
                args.append(ip)
            rows = await self._fetch(sql, args, len(keys))
        except _Retry:
            out: list[Detail] = []
            for i in range(len(keys)):
                try:
                    out.extend(await self.details(info, [keys[i]], [images[i]]))
                except BadValue as e:
                    raise BadValue(i, e.message) from None
            return out
        width = len(cols)
        by_n: dict[int, asyncpg.Record] = {}
        for r in rows:
            if r[0] in by_n:
                raise SchemaError(
                    f"{info.ref}: key {dict(keys[r[0]].key_display)} matches several rows on"
                    f" {self.name}: the journal's key is not unique there"
                )
            by_n[r[0]] = r
        out = []
        for n in range(len(keys)):
            r = by_n[n]
            img = images[n] or {}
            image_text = {c: r[2 + 2 * width + cols.index(c)] for c in img} if image_cols else {}
            if not r[1]:
                out.append(Detail(False, {}, {}, {}, image_text))
                continue
            text = {c: r[2 + width + i] for i, c in enumerate(cols)}
            shown = {c.name: jsonable(r[2 + i], c.type) for i, c in enumerate(info.columns)}
            encoded = {c: self._enc(info, c)(r[2 + i]) for i, c in enumerate(cols)}
            out.append(Detail(True, text, shown, encoded, image_text))
        return out
