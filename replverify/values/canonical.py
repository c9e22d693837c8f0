"""Canonical, type-aware byte encodings of values as asyncpg decodes them.

An :data:`Encoder` turns one column value into bytes such that two values encode equal
exactly when PostgreSQL considers them equal for the column's type (``1.0 = 1.00`` for
``numeric``, the same instant in two zones for ``timestamptz``, ``'ab' = 'ab  '`` for
``bpchar``, ...), and such that encodings are *prefix-free*: every encoding starts with a
one-byte tag that fixes how long the rest is (fixed width, or a 4-byte big-endian length).
Concatenations of encodings are therefore uniquely decodable, so :func:`encode_row` of two
different rows never collides, and SQL NULL (``N``) is distinct from everything else.

Pick encoders once per column with :func:`encoder_for` and apply them to every row with
:func:`encode_row`. This module is that choice; the encoders live by family:
:mod:`~replverify.values.generic` (one per Python type, and :func:`generic_encode`, which
picks one by the value's type), :mod:`~replverify.values.containers` (arrays, composites,
ranges), :mod:`~replverify.values.jsonb` (canonical jsonb), and
:mod:`~replverify.values.tags` (the tags below and their packers).

How values are *shown* (PostgreSQL's text output, the JSON of reports) is
:mod:`replverify.values.pgtext`. Nothing here does I/O, and nothing depends on the
process (no ``hash()``, no ``id()``, no locale or :mod:`decimal` thread context), so the
bytes are stable across processes and machines.

Tags (the byte that starts every encoding)::

    N  SQL NULL
    T  true                             F  false
    i  int within int64: 8 bytes        I  larger int: len + signed big-endian bytes
    n  finite numeric whose reduced fraction fits int64/int64: numerator, denominator (16)
    e  other finite numeric: len + ASCII of the normalized value (no trailing zeros)
    m  numeric special: 1 byte (N=NaN, + / -=±Infinity)
    f  float8 (float4 too): 8 bytes, -0.0 → 0.0 and one NaN
    s  text: len + UTF-8                b  bytea: len + bytes
    d  date: 4-byte ordinal             p  timestamp: 10 bytes of fields
    P  timestamptz: 10 bytes of UTC fields,  Q  timestamptz beyond datetime's range: 16 bytes µs
    t  time: 6 bytes of fields          z  timetz: 6 bytes of fields + 8 bytes UTC offset µs
    v  interval: 16-byte signed µs (months as 30 days, days as 24 h, as PostgreSQL compares)
    u  uuid: 16 bytes                   4 / 6  inet/cidr: prefix length byte + 4 / 16 bytes
    A  array, multirange: count + encodings     C  composite: count + encodings
    L  what decoding dropped (diff.sources): len + shape text (array bounds...) + encoding
    o  mapping (not from PostgreSQL): count + (key, value) encodings in byte order
    S  set (not from PostgreSQL): count + element encodings in byte order
    R  range: flags byte (1 lower_inc, 2 upper_inc, 4 empty) + lower + upper unless empty
    B  bit string: 4-byte bit length + bytes    g  path/polygon: closed byte + count + points
    J  jsonb: len + canonical JSON text (keys sorted, no spaces, numbers as "\\u0000<value>")
    K  jsonb text that does not parse: len + UTF-8
    x  anything else: len + UTF-8 of "module.qualname\\0str(value)" (deterministic only
       if ``str`` is: true of every type asyncpg decodes to)

Exact encoders (``encoder_for(t, "exact")``) keep what the binary send form keeps and
``=`` forgets: ``E`` numeric text with its scale (``1.10``), ``X`` float8 bits (``-0``),
``w`` interval months, days and µs apart, ``s`` jsonb/bpchar/citext text as read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, cast

from replverify.types import ColumnType
from replverify.values.containers import make_array, make_composite, make_range
from replverify.values.generic import (
    enc_bool,
    enc_bpchar,
    enc_bytes,
    enc_date,
    enc_decimal,
    enc_float,
    enc_inet,
    enc_int,
    enc_interval,
    enc_numeric,
    enc_str,
    enc_text,
    enc_time,
    enc_timestamp,
    enc_timestamptz,
    enc_uuid,
    generic_encode,
)
from replverify.values.jsonb import enc_jsonb
from replverify.values.pgtext import _is_record_like
from replverify.values.tags import TAG_F64, TAG_LEN, Encoder

__all__ = [
    "Compare",
    "Encoder",
    "encode_row",
    "encoder_for",
    "generic_encode",
]

#: ``semantic``: equal when PostgreSQL's ``=`` says so; ``exact``: equal when the binary
#: form PostgreSQL sends is (``1.10`` and ``1.1``, ``-0`` and ``0`` then differ).
Compare = Literal["exact", "semantic"]


_BY_BASE: dict[str, Callable[[Any], bytes]] = {
    "int2": enc_int,
    "int4": enc_int,
    "int8": enc_int,
    "oid": enc_int,
    "numeric": enc_numeric,
    "float4": enc_float,
    "float8": enc_float,
    "text": enc_text,
    "varchar": enc_text,
    "name": enc_text,
    "xml": enc_text,
    "json": enc_text,  # json has no equality in PostgreSQL: exact text
    "jsonb": enc_jsonb,
    "bpchar": enc_bpchar,
    "bytea": enc_bytes,
    "bool": enc_bool,
    "date": enc_date,
    "timestamp": enc_timestamp,
    "timestamptz": enc_timestamptz,
    "time": enc_time,
    "timetz": enc_time,
    "interval": enc_interval,
    "uuid": enc_uuid,
    "inet": enc_inet,
    "cidr": enc_inet,
}

_RANGE_SUBTYPES: dict[str, str] = {
    "int4range": "int4",
    "int8range": "int8",
    "numrange": "numeric",
    "tsrange": "timestamp",
    "tstzrange": "timestamptz",
    "daterange": "date",
    "int4multirange": "int4",
    "int8multirange": "int8",
    "nummultirange": "numeric",
    "tsmultirange": "timestamp",
    "tstzmultirange": "timestamptz",
    "datemultirange": "date",
}


# Exact encoders: what the binary send form keeps that ``=`` forgets.


def enc_numeric_exact(v: Any) -> bytes:
    # numeric_send carries the value and its display scale, which is what ``format(v,
    # "f")`` spells (asyncpg gives the Decimal exponent -dscale); PostgreSQL has no -0.
    if type(v) is int:
        v = Decimal(v)
    if type(v) is Decimal:
        if not v.is_finite():
            return enc_decimal(v)
        text = format(v if v else v.copy_abs(), "f").encode("ascii")
        return TAG_LEN(b"E", len(text)) + text
    return _exact_generic(v)


def enc_float_exact(v: Any) -> bytes:
    if type(v) is float:
        return TAG_F64(b"X", v)  # the IEEE bits: -0.0 is not 0.0
    return _exact_generic(v)


def enc_interval_exact(v: Any) -> bytes:
    if type(v) is tuple and len(v) == 3 and all(type(x) is int for x in v):
        months, days, micros = v
        try:
            return b"w" + struct.pack(">iiq", months, days, micros)
        except struct.error:
            pass
    return _exact_generic(v)


def _exact_generic(v: object) -> bytes:
    """:func:`generic_encode`, with floats and numerics (also inside geometric values,
    records and lists of a type this module does not know) kept exactly."""
    cls = type(v)
    if cls is float:
        return enc_float_exact(v)
    if cls is Decimal:
        return enc_numeric_exact(v)
    if cls is list:
        items = cast("list[Any]", v)
        return TAG_LEN(b"A", len(items)) + b"".join(_exact_generic(x) for x in items)
    if cls is not str and _is_record_like(cls):
        fields = list(cast("Sequence[Any]", v))
        return TAG_LEN(b"C", len(fields)) + b"".join(_exact_generic(x) for x in fields)
    return generic_encode(v)


def enc_citext(v: Any) -> bytes:
    # citext's ``=`` compares lower() of both sides
    if type(v) is str:
        return enc_str(v.lower())
    return generic_encode(v)


_EXACT_BY_BASE: dict[str, Callable[[Any], bytes]] = {
    "numeric": enc_numeric_exact,
    "float4": enc_float_exact,
    "float8": enc_float_exact,
    "interval": enc_interval_exact,
    "jsonb": enc_text,  # jsonb_send: a version byte and jsonb's own (normalised) text
    "bpchar": enc_text,
    "citext": enc_text,
}
_SEMANTIC_ONLY: dict[str, Callable[[Any], bytes]] = {"citext": enc_citext}


def encoder_for(ctype: ColumnType, compare: Compare = "semantic") -> Encoder:
    """The encoder for every value of a column of type ``ctype`` (chosen once per column):
    equal encodings exactly when ``=`` (``semantic``) or the binary send form
    (``exact``) says the values are equal."""
    return _encoder_for(ctype, compare == "exact")


@lru_cache(maxsize=1024)
def _encoder_for(ctype: ColumnType, exact: bool) -> Encoder:
    kind = ctype.kind
    fallback: Encoder = _exact_generic if exact else generic_encode
    if kind == "array":
        element: Encoder = (
            _encoder_for(ctype.element, exact) if ctype.element is not None else fallback
        )
        return make_array(element, generic_encode)
    if kind == "composite":
        if not ctype.fields:
            return fallback
        return make_composite([_encoder_for(ft, exact) for _, ft in ctype.fields], generic_encode)
    if kind == "enum":
        return enc_text
    if kind == "range" or ctype.base in _RANGE_SUBTYPES:
        if ctype.element is not None:
            return make_range(_encoder_for(ctype.element, exact), generic_encode)
        sub = _RANGE_SUBTYPES.get(ctype.base)
        if sub is None:
            return make_range(fallback, generic_encode)
        return make_range(_encoder_for(ColumnType(sub, sub), exact), generic_encode)
    if exact:
        return _EXACT_BY_BASE.get(ctype.base) or _BY_BASE.get(ctype.base, fallback)
    return _SEMANTIC_ONLY.get(ctype.base) or _BY_BASE.get(ctype.base, fallback)


def encode_row(encoders: Sequence[Encoder], values: Sequence[object]) -> bytes:
    """Concatenate the column encodings (unambiguous: every encoding is self-delimiting)."""
    return b"".join([e(v) for e, v in zip(encoders, values, strict=True)])
