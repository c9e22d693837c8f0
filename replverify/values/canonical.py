"""Canonical, type-aware byte encodings of values as asyncpg decodes them.

An :data:`Encoder` turns one column value into bytes such that two values encode equal
exactly when PostgreSQL considers them equal for the column's type (``1.0 = 1.00`` for
``numeric``, the same instant in two zones for ``timestamptz``, ``'ab' = 'ab  '`` for
``bpchar``, ...), and such that encodings are *prefix-free*: every encoding starts with a
one-byte tag that fixes how long the rest is (fixed width, or a 4-byte big-endian length).
Concatenations of encodings are therefore uniquely decodable, so :func:`encode_row` of two
different rows never collides, and SQL NULL (``N``) is distinct from everything else.

Pick encoders once per column with :func:`encoder_for` and apply them to every row with
:func:`encode_row`. How values are *shown* (PostgreSQL's text output, the JSON of
reports) is :mod:`replverify.values.pgtext`. Nothing here does I/O, and nothing depends
on the process (no ``hash()``, no ``id()``, no locale or :mod:`decimal` thread context), so
the bytes are stable across processes and machines.

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

import datetime as _dt
import decimal
import ipaddress
import json
import math
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, cast

from replverify.types import ColumnType
from replverify.values.pgtext import _is_record_like, _mro_names, pg_text

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

Encoder = Callable[[object], bytes]
"""Encodes one column value (``None`` for SQL NULL) to its canonical bytes."""

# --------------------------------------------------------------------------- constants

NULL = b"N"
TRUE = b"T"
FALSE = b"F"

_TAG_LEN = struct.Struct(">cI").pack  # tag + 4-byte length or count
_TAG_I64 = struct.Struct(">cq").pack
_TAG_I32 = struct.Struct(">ci").pack
_TAG_F64 = struct.Struct(">cd").pack
_TAG_RATIO = struct.Struct(">cqq").pack
_TAG_BYTE = struct.Struct(">cB").pack
_I64 = struct.Struct(">q").pack
_U32 = struct.Struct(">I").pack

_F_NAN = _TAG_F64(b"f", math.nan)
_F_ZERO = _TAG_F64(b"f", 0.0)
_N_NAN = b"mN"
_N_POS_INF = b"m+"
_N_NEG_INF = b"m-"
_N_ZERO = _TAG_RATIO(b"n", 0, 1)
_R_EMPTY = _TAG_BYTE(b"R", 4)

#: A decimal context wide enough for any PostgreSQL numeric (131072 digits before the point,
#: 16383 after), so that ``normalize`` never rounds; also fixes ``capitals`` for ``E``.
_CTX = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, capitals=1, clamp=0
)

_UTC = _dt.timezone.utc
_EPOCH_UTC = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_US = _dt.timedelta(microseconds=1)
_US_PER_DAY = 86_400_000_000

_datetime = _dt.datetime
_date = _dt.date
_time = _dt.time
_timedelta = _dt.timedelta

# ``__reduce__`` gives ``(cls, (state, [tzinfo]))`` where state is the value's field bytes
# (datetime: year, month, day, hour, minute, second, microsecond in 10 bytes; time: 6 bytes;
# protocol 2 leaves out ``fold``), the pickle format, stable across Python versions. It is
# the cheapest exact dump of the fields.
_DT_STATE: Callable[[Any], Any] = _datetime.__reduce__
_TIME_STATE: Callable[[Any], Any] = _time.__reduce__

# ------------------------------------------------------------------ scalar encoders


def _enc_int(v: Any) -> bytes:
    if v is None:
        return NULL
    try:
        return _TAG_I64(b"i", v)
    except struct.error:
        return generic_encode(v)


def _enc_big_int(v: int) -> bytes:
    try:
        return _TAG_I64(b"i", v)
    except struct.error:
        data = v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
        return _TAG_LEN(b"I", len(data)) + data


def _enc_bool(v: Any) -> bytes:
    if v is True:
        return TRUE
    if v is False:
        return FALSE
    return generic_encode(v)


def _enc_float(v: Any) -> bytes:
    if type(v) is float:
        if v != v:
            return _F_NAN
        if v == 0.0:
            return _F_ZERO
        return _TAG_F64(b"f", v)
    return generic_encode(v)


def _enc_decimal(v: Decimal) -> bytes:
    # Which form a value takes depends only on the value (the reduced fraction, and the
    # position of the leading digit, ``adjusted``, which does not depend on the scale of a
    # non-zero value), so equal values always get the same form.
    if v.is_finite():
        if not v:
            return _N_ZERO
        if -19 < v.adjusted() < 19:  # bounds the cost of as_integer_ratio
            num, den = v.as_integer_ratio()
            try:
                return _TAG_RATIO(b"n", num, den)
            except struct.error:
                pass
        text = v.normalize(_CTX).to_eng_string(_CTX).encode("ascii")
        return _TAG_LEN(b"e", len(text)) + text
    if v.is_nan():
        return _N_NAN
    return _N_NEG_INF if v.is_signed() else _N_POS_INF


def _enc_numeric(v: Any) -> bytes:
    if type(v) is Decimal:
        return _enc_decimal(v)
    if type(v) is int:
        return _enc_decimal(Decimal(v))
    return generic_encode(v)


def _enc_str(v: str) -> bytes:
    data = v.encode("utf-8", "surrogatepass")
    return _TAG_LEN(b"s", len(data)) + data


def _enc_text(v: Any) -> bytes:
    if type(v) is str:
        data = v.encode("utf-8", "surrogatepass")
        return _TAG_LEN(b"s", len(data)) + data
    return generic_encode(v)


def _enc_bpchar(v: Any) -> bytes:
    if type(v) is str:
        data = v.rstrip(" ").encode("utf-8", "surrogatepass")
        return _TAG_LEN(b"s", len(data)) + data
    return generic_encode(v)


def _enc_bytes(v: Any) -> bytes:
    if type(v) is bytes:
        return _TAG_LEN(b"b", len(v)) + v
    return generic_encode(v)


def _enc_bytes_like(v: bytearray | memoryview) -> bytes:
    return _enc_bytes(bytes(v))


def _enc_date(v: Any) -> bytes:
    if type(v) is _date:
        return _TAG_I32(b"d", v.toordinal())
    return generic_encode(v)


def _utc_micros(v: _dt.datetime) -> int:
    return (v - _EPOCH_UTC) // _US


def _enc_aware(v: _dt.datetime) -> bytes:
    if v.tzinfo is not _UTC:
        try:
            v = v.astimezone(_UTC)
        except OverflowError:  # the UTC instant lies outside datetime's range
            return b"Q" + _utc_micros(v).to_bytes(16, "big", signed=True)
    state: bytes = _DT_STATE(v)[1][0]
    return b"P" + state


def _enc_timestamptz(v: Any) -> bytes:
    if type(v) is _datetime:
        tz = v.tzinfo
        if tz is _UTC or tz is None:  # naive: not expected from asyncpg; read as UTC
            state: bytes = _DT_STATE(v)[1][0]
            return b"P" + state
        return _enc_aware(v)
    return generic_encode(v)


def _enc_timestamp(v: Any) -> bytes:
    if type(v) is _datetime and v.tzinfo is None:
        state: bytes = _DT_STATE(v)[1][0]
        return b"p" + state
    return generic_encode(v)


def _enc_datetime(v: _dt.datetime) -> bytes:
    if v.tzinfo is None:
        state: bytes = _DT_STATE(v)[1][0]
        return b"p" + state
    return _enc_aware(v)


def _enc_time(v: Any) -> bytes:
    if type(v) is _time:
        state: bytes = _TIME_STATE(v)[1][0]
        offset = v.utcoffset()
        if offset is None:
            return b"t" + state
        return b"z" + state + _I64(offset // _US)
    return generic_encode(v)


def _interval_bytes(micros: int) -> bytes:
    return b"v" + micros.to_bytes(16, "big", signed=True)


def _enc_interval(v: Any) -> bytes:
    if type(v) is tuple and len(v) == 3:
        months, days, micros = v
        try:
            return _interval_bytes((months * 30 + days) * _US_PER_DAY + micros)
        except (TypeError, OverflowError):
            return generic_encode(v)
    return generic_encode(v)


def _enc_timedelta(v: _dt.timedelta) -> bytes:
    return _interval_bytes((v.days * 86_400 + v.seconds) * 1_000_000 + v.microseconds)


def _enc_uuid(v: Any) -> bytes:
    if isinstance(v, uuid.UUID):
        return b"u" + v.bytes
    if type(v) is str:
        try:
            return b"u" + uuid.UUID(v).bytes
        except ValueError:
            pass
    return generic_encode(v)


def _enc_ip_address(v: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return b"4" + bytes((32,)) + v.packed if v.version == 4 else b"6" + bytes((128,)) + v.packed


def _enc_ip_interface(v: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bytes:
    tag = b"4" if v.version == 4 else b"6"
    return tag + bytes((v.network.prefixlen,)) + v.packed


def _enc_ip_network(v: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    tag = b"4" if v.version == 4 else b"6"
    return tag + bytes((v.prefixlen,)) + v.network_address.packed


def _enc_inet(v: Any) -> bytes:
    if type(v) is str:
        try:
            return generic_encode(ipaddress.ip_interface(v))
        except ValueError:
            pass
    return generic_encode(v)


def _enc_bitstring(v: Any) -> bytes:
    data: bytes = v.bytes
    return _TAG_LEN(b"B", len(v)) + data


def _enc_path(v: Any) -> bytes:
    points = list(v.points)
    parts = [b"g", b"\x01" if v.is_closed else b"\x00", _U32(len(points))]
    parts.extend(generic_encode(p) for p in points)
    return b"".join(parts)


def _enc_other(v: object) -> bytes:
    cls = type(v)
    data = f"{cls.__module__}.{cls.__qualname__}\0{v}".encode("utf-8", "surrogatepass")
    return _TAG_LEN(b"x", len(data)) + data


# ------------------------------------------------------------------------- json(b)


def _decimal_canon(v: Decimal) -> str:
    """Text of a Decimal's *value*: equal exactly when the numerics are equal."""
    if v.is_finite():
        return v.normalize(_CTX).to_eng_string(_CTX) if v else "0"
    if v.is_nan():
        return "NaN"
    return "-Infinity" if v.is_signed() else "Infinity"


@lru_cache(maxsize=4096)
def _json_number(text: str) -> str:
    # A number becomes a marker string "\0<canonical numeric text>". PostgreSQL jsonb
    # cannot hold U+0000 in a string, so no real string collides; texts that spell
    # \u0000 take the slow path (_json_prepare), which keeps real strings apart.
    return "\0" + _decimal_canon(Decimal(text))


class _JsonNumber(str):
    """A number marker in the slow path (tells it apart from a real string)."""

    __slots__ = ()


def _json_number_slow(text: str) -> _JsonNumber:
    return _JsonNumber(_json_number(text))


_JSON_DECODER = json.JSONDecoder(
    parse_float=_json_number, parse_int=_json_number, parse_constant=_json_number
)
_JSON_DECODER_SLOW = json.JSONDecoder(
    parse_float=_json_number_slow,
    parse_int=_json_number_slow,
    parse_constant=_json_number_slow,
)
_json_decode = _JSON_DECODER.decode
_json_canon_text = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
).encode


def _json_prepare(o: Any) -> Any:
    """Slow path: real strings get every U+0000 doubled, numbers become single-U+0000
    markers, so the canonical text stays injective. Also takes already-decoded documents
    (dict/list/int/float/Decimal) and gives them the encoding their JSON text would get."""
    t = type(o)
    if t is _JsonNumber:
        return str(o)
    if t is str:
        return o.replace("\0", "\0\0")
    if t is dict:
        return {_json_prepare(k): _json_prepare(x) for k, x in o.items()}
    if t is list:
        return [_json_prepare(x) for x in o]
    if o is None or o is True or o is False:
        return o
    if t is int:
        return _json_number(str(o))
    if t is float:
        return _json_number(repr(o))
    if t is Decimal:
        return "\0" + _decimal_canon(o)
    return pg_text(o).replace("\0", "\0\0")


def _json_bytes(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return _TAG_LEN(b"J", len(data)) + data


def _enc_jsonb(v: Any) -> bytes:
    """jsonb: parsed and re-serialized canonically (keys sorted, numbers by value)."""
    if type(v) is str:
        try:
            if "\\u0000" in v:
                return _json_bytes(_json_canon_text(_json_prepare(_JSON_DECODER_SLOW.decode(v))))
            return _json_bytes(_json_canon_text(_json_decode(v)))
        except ValueError:  # not JSON: never from PostgreSQL
            data = v.encode("utf-8", "surrogatepass")
            return _TAG_LEN(b"K", len(data)) + data
    if v is None:
        return NULL
    return _json_bytes(_json_canon_text(_json_prepare(v)))  # a codec already decoded it


def _enc_mapping(v: Mapping[Any, Any]) -> bytes:
    pairs = sorted((generic_encode(k), generic_encode(x)) for k, x in v.items())
    parts = [_TAG_LEN(b"o", len(pairs))]
    for key, value in pairs:
        parts.append(key)
        parts.append(value)
    return b"".join(parts)


def _enc_set(v: set[Any] | frozenset[Any]) -> bytes:
    items = sorted(generic_encode(x) for x in v)  # not iteration order: that follows hash()
    return _TAG_LEN(b"S", len(items)) + b"".join(items)


# ------------------------------------------------------------ containers (closures)


def _make_array(element: Encoder) -> Encoder:
    def enc(v: Any) -> bytes:
        if type(v) is list:
            parts = [_TAG_LEN(b"A", len(v))]
            for x in v:
                parts.append(enc(x) if type(x) is list else element(x))
            return b"".join(parts)
        if v is None:
            return NULL
        if type(v) is tuple:
            return enc(list(v))
        return generic_encode(v)

    return enc


def _make_composite(fields: Sequence[Encoder]) -> Encoder:
    encoders = tuple(fields)
    n = len(encoders)
    header = _TAG_LEN(b"C", n)

    def enc(v: Any) -> bytes:
        if v is None:
            return NULL
        if _is_record_like(type(v)) and len(v) == n:
            return header + b"".join([f(x) for f, x in zip(encoders, v, strict=True)])
        return generic_encode(v)

    return enc


def _make_range(element: Encoder) -> Encoder:
    def enc(v: Any) -> bytes:
        try:
            empty = v.isempty
        except AttributeError:
            if type(v) is list:  # a multirange: a list of ranges
                parts = [_TAG_LEN(b"A", len(v))]
                parts.extend(enc(x) for x in v)
                return b"".join(parts)
            return generic_encode(v)
        if empty:
            return _R_EMPTY
        lower = v.lower
        upper = v.upper
        flags = (1 if v.lower_inc and lower is not None else 0) | (
            2 if v.upper_inc and upper is not None else 0
        )
        return _TAG_BYTE(b"R", flags) + element(lower) + element(upper)

    return enc


def _enc_generic_list(v: list[Any]) -> bytes:
    parts = [_TAG_LEN(b"A", len(v))]
    parts.extend(generic_encode(x) for x in v)
    return b"".join(parts)


def _enc_generic_record(v: Any) -> bytes:
    items = list(v)
    parts = [_TAG_LEN(b"C", len(items))]
    parts.extend(generic_encode(x) for x in items)
    return b"".join(parts)


_enc_generic_range = _make_range(lambda v: generic_encode(v))


# ------------------------------------------------------------- generic dispatch


def _enc_null(v: Any) -> bytes:
    return NULL


_GENERIC: dict[type, Callable[[Any], bytes]] = {
    type(None): _enc_null,
    bool: _enc_bool,
    int: _enc_big_int,
    float: _enc_float,
    Decimal: _enc_decimal,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytes_like,
    memoryview: _enc_bytes_like,
    _datetime: _enc_datetime,
    _date: _enc_date,
    _time: _enc_time,
    _timedelta: _enc_timedelta,
    uuid.UUID: _enc_uuid,
    ipaddress.IPv4Address: _enc_ip_address,
    ipaddress.IPv6Address: _enc_ip_address,
    ipaddress.IPv4Interface: _enc_ip_interface,
    ipaddress.IPv6Interface: _enc_ip_interface,
    ipaddress.IPv4Network: _enc_ip_network,
    ipaddress.IPv6Network: _enc_ip_network,
    list: _enc_generic_list,
    tuple: _enc_generic_record,
    dict: _enc_mapping,
    set: _enc_set,
    frozenset: _enc_set,
}

#: Order matters: subclasses before their bases (bool before int, datetime before date,
#: interfaces before addresses).
_GENERIC_BASES: tuple[tuple[type, Callable[[Any], bytes]], ...] = (
    (bool, _enc_bool),
    (int, lambda v: _enc_big_int(int(v))),
    (float, lambda v: _enc_float(float(v))),
    (Decimal, _enc_decimal),
    (str, lambda v: _enc_str(str(v))),
    (bytes, _enc_bytes_like),
    (bytearray, _enc_bytes_like),
    (memoryview, _enc_bytes_like),
    (_datetime, lambda v: _enc_datetime(_as_datetime(v))),
    (_date, lambda v: _enc_date(_date(v.year, v.month, v.day))),
    (_time, lambda v: _enc_time(_time(v.hour, v.minute, v.second, v.microsecond, v.tzinfo))),
    (_timedelta, _enc_timedelta),
    (uuid.UUID, lambda v: b"u" + v.bytes),
    (ipaddress.IPv4Interface, _enc_ip_interface),
    (ipaddress.IPv6Interface, _enc_ip_interface),
    (ipaddress.IPv4Address, _enc_ip_address),
    (ipaddress.IPv6Address, _enc_ip_address),
    (ipaddress.IPv4Network, _enc_ip_network),
    (ipaddress.IPv6Network, _enc_ip_network),
    (list, lambda v: _enc_generic_list(list(v))),
    (tuple, _enc_generic_record),
    (Mapping, _enc_mapping),
    (set, _enc_set),
    (frozenset, _enc_set),
)


def _as_datetime(v: _dt.datetime) -> _dt.datetime:
    return _datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.tzinfo)


def _resolve(cls: type) -> Callable[[Any], bytes]:
    for base, enc in _GENERIC_BASES:
        if issubclass(cls, base):
            return enc
    names = _mro_names(cls)
    if "Record" in names:
        return _enc_generic_record
    if "BitString" in names:
        return _enc_bitstring
    if "Path" in names:
        return _enc_path
    if all(hasattr(cls, a) for a in ("isempty", "lower", "upper", "lower_inc", "upper_inc")):
        return _enc_generic_range
    return _enc_other


def generic_encode(v: object) -> bytes:
    """Encode by the Python type of ``v`` (columns of types this module does not know)."""
    cls = type(v)
    enc = _GENERIC.get(cls)
    if enc is None:
        enc = _GENERIC[cls] = _resolve(cls)
    return enc(v)


# ------------------------------------------------------------------ per-column choice

_BY_BASE: dict[str, Callable[[Any], bytes]] = {
    "int2": _enc_int,
    "int4": _enc_int,
    "int8": _enc_int,
    "oid": _enc_int,
    "numeric": _enc_numeric,
    "float4": _enc_float,
    "float8": _enc_float,
    "text": _enc_text,
    "varchar": _enc_text,
    "name": _enc_text,
    "xml": _enc_text,
    "json": _enc_text,  # json has no equality in PostgreSQL: exact text
    "jsonb": _enc_jsonb,
    "bpchar": _enc_bpchar,
    "bytea": _enc_bytes,
    "bool": _enc_bool,
    "date": _enc_date,
    "timestamp": _enc_timestamp,
    "timestamptz": _enc_timestamptz,
    "time": _enc_time,
    "timetz": _enc_time,
    "interval": _enc_interval,
    "uuid": _enc_uuid,
    "inet": _enc_inet,
    "cidr": _enc_inet,
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


def _enc_numeric_exact(v: Any) -> bytes:
    # numeric_send carries the value and its display scale, which is what ``format(v,
    # "f")`` spells (asyncpg gives the Decimal exponent -dscale); PostgreSQL has no -0.
    if type(v) is int:
        v = Decimal(v)
    if type(v) is Decimal:
        if not v.is_finite():
            return _enc_decimal(v)
        text = format(v if v else v.copy_abs(), "f").encode("ascii")
        return _TAG_LEN(b"E", len(text)) + text
    return _exact_generic(v)


def _enc_float_exact(v: Any) -> bytes:
    if type(v) is float:
        return _TAG_F64(b"X", v)  # the IEEE bits: -0.0 is not 0.0
    return _exact_generic(v)


def _enc_interval_exact(v: Any) -> bytes:
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
        return _enc_float_exact(v)
    if cls is Decimal:
        return _enc_numeric_exact(v)
    if cls is list:
        items = cast("list[Any]", v)
        return _TAG_LEN(b"A", len(items)) + b"".join(_exact_generic(x) for x in items)
    if cls is not str and _is_record_like(cls):
        fields = list(cast("Sequence[Any]", v))
        return _TAG_LEN(b"C", len(fields)) + b"".join(_exact_generic(x) for x in fields)
    return generic_encode(v)


def _enc_citext(v: Any) -> bytes:
    # citext's ``=`` compares lower() of both sides
    if type(v) is str:
        return _enc_str(v.lower())
    return generic_encode(v)


_EXACT_BY_BASE: dict[str, Callable[[Any], bytes]] = {
    "numeric": _enc_numeric_exact,
    "float4": _enc_float_exact,
    "float8": _enc_float_exact,
    "interval": _enc_interval_exact,
    "jsonb": _enc_text,  # jsonb_send: a version byte and jsonb's own (normalised) text
    "bpchar": _enc_text,
    "citext": _enc_text,
}
_SEMANTIC_ONLY: dict[str, Callable[[Any], bytes]] = {"citext": _enc_citext}


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
        return _make_array(element)
    if kind == "composite":
        if not ctype.fields:
            return fallback
        return _make_composite([_encoder_for(ft, exact) for _, ft in ctype.fields])
    if kind == "enum":
        return _enc_text
    if kind == "range" or ctype.base in _RANGE_SUBTYPES:
        if ctype.element is not None:
            return _make_range(_encoder_for(ctype.element, exact))
        sub = _RANGE_SUBTYPES.get(ctype.base)
        if sub is None:
            return _make_range(fallback)
        return _make_range(_encoder_for(ColumnType(sub, sub), exact))
    if exact:
        return _EXACT_BY_BASE.get(ctype.base) or _BY_BASE.get(ctype.base, fallback)
    return _SEMANTIC_ONLY.get(ctype.base) or _BY_BASE.get(ctype.base, fallback)


def encode_row(encoders: Sequence[Encoder], values: Sequence[object]) -> bytes:
    """Concatenate the column encodings (unambiguous: every encoding is self-delimiting)."""
    return b"".join([e(v) for e, v in zip(encoders, values, strict=True)])
