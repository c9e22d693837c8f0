"""Encoding by Python type: one encoder per type asyncpg decodes values to (the scalar
encoders the per-column choice of :mod:`replverify.values.canonical` also uses), and
:func:`generic_encode`, which picks one by the value's type, for columns of types the
per-column choice does not know and for what does not fit a column's type. The scalar
encoders and the dispatch call each other, so they live together."""

from __future__ import annotations

import datetime as _dt
import ipaddress
import struct
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from replverify.values.containers import make_range
from replverify.values.pgtext import _mro_names
from replverify.values.tags import (
    CTX,
    DT_STATE,
    EPOCH_UTC,
    F_NAN,
    F_ZERO,
    FALSE,
    I64,
    N_NAN,
    N_NEG_INF,
    N_POS_INF,
    N_ZERO,
    NULL,
    TAG_F64,
    TAG_I32,
    TAG_I64,
    TAG_LEN,
    TAG_RATIO,
    TIME_STATE,
    TRUE,
    U32,
    US,
    US_PER_DAY,
    UTC,
)


def enc_int(v: Any) -> bytes:
    if v is None:
        return NULL
    try:
        return TAG_I64(b"i", v)
    except struct.error:
        return generic_encode(v)


def enc_big_int(v: int) -> bytes:
    try:
        return TAG_I64(b"i", v)
    except struct.error:
        data = v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
        return TAG_LEN(b"I", len(data)) + data


def enc_bool(v: Any) -> bytes:
    if v is True:
        return TRUE
    if v is False:
        return FALSE
    return generic_encode(v)


def enc_float(v: Any) -> bytes:
    if type(v) is float:
        if v != v:
            return F_NAN
        if v == 0.0:
            return F_ZERO
        return TAG_F64(b"f", v)
    return generic_encode(v)


def enc_decimal(v: Decimal) -> bytes:
    # Which form a value takes depends only on the value (the reduced fraction, and the
    # position of the leading digit, ``adjusted``, which does not depend on the scale of a
    # non-zero value), so equal values always get the same form.
    if v.is_finite():
        if not v:
            return N_ZERO
        if -19 < v.adjusted() < 19:  # bounds the cost of as_integer_ratio
            num, den = v.as_integer_ratio()
            try:
                return TAG_RATIO(b"n", num, den)
            except struct.error:
                pass
        text = v.normalize(CTX).to_eng_string(CTX).encode("ascii")
        return TAG_LEN(b"e", len(text)) + text
    if v.is_nan():
        return N_NAN
    return N_NEG_INF if v.is_signed() else N_POS_INF


def enc_numeric(v: Any) -> bytes:
    if type(v) is Decimal:
        return enc_decimal(v)
    if type(v) is int:
        return enc_decimal(Decimal(v))
    return generic_encode(v)


def enc_str(v: str) -> bytes:
    data = v.encode("utf-8", "surrogatepass")
    return TAG_LEN(b"s", len(data)) + data


def enc_text(v: Any) -> bytes:
    if type(v) is str:
        data = v.encode("utf-8", "surrogatepass")
        return TAG_LEN(b"s", len(data)) + data
    return generic_encode(v)


def enc_bpchar(v: Any) -> bytes:
    if type(v) is str:
        data = v.rstrip(" ").encode("utf-8", "surrogatepass")
        return TAG_LEN(b"s", len(data)) + data
    return generic_encode(v)


def enc_bytes(v: Any) -> bytes:
    if type(v) is bytes:
        return TAG_LEN(b"b", len(v)) + v
    return generic_encode(v)


def enc_bytes_like(v: bytearray | memoryview) -> bytes:
    return enc_bytes(bytes(v))


def enc_date(v: Any) -> bytes:
    if type(v) is date:
        return TAG_I32(b"d", v.toordinal())
    return generic_encode(v)


def _utc_micros(v: _dt.datetime) -> int:
    return (v - EPOCH_UTC) // US


def enc_aware(v: _dt.datetime) -> bytes:
    if v.tzinfo is not UTC:
        try:
            v = v.astimezone(UTC)
        except OverflowError:  # the UTC instant lies outside datetime's range
            return b"Q" + _utc_micros(v).to_bytes(16, "big", signed=True)
    state: bytes = DT_STATE(v)[1][0]
    return b"P" + state


def enc_timestamptz(v: Any) -> bytes:
    if type(v) is datetime:
        tz = v.tzinfo
        if tz is UTC or tz is None:  # naive: not expected from asyncpg; read as UTC
            state: bytes = DT_STATE(v)[1][0]
            return b"P" + state
        return enc_aware(v)
    return generic_encode(v)


def enc_timestamp(v: Any) -> bytes:
    if type(v) is datetime and v.tzinfo is None:
        state: bytes = DT_STATE(v)[1][0]
        return b"p" + state
    return generic_encode(v)


def enc_datetime(v: _dt.datetime) -> bytes:
    if v.tzinfo is None:
        state: bytes = DT_STATE(v)[1][0]
        return b"p" + state
    return enc_aware(v)


def enc_time(v: Any) -> bytes:
    if type(v) is time:
        state: bytes = TIME_STATE(v)[1][0]
        offset = v.utcoffset()
        if offset is None:
            return b"t" + state
        return b"z" + state + I64(offset // US)
    return generic_encode(v)


def _interval_bytes(micros: int) -> bytes:
    return b"v" + micros.to_bytes(16, "big", signed=True)


def enc_interval(v: Any) -> bytes:
    if type(v) is tuple and len(v) == 3:
        months, days, micros = v
        try:
            return _interval_bytes((months * 30 + days) * US_PER_DAY + micros)
        except (TypeError, OverflowError):
            return generic_encode(v)
    return generic_encode(v)


def enc_timedelta(v: _dt.timedelta) -> bytes:
    return _interval_bytes((v.days * 86_400 + v.seconds) * 1_000_000 + v.microseconds)


def enc_uuid(v: Any) -> bytes:
    if isinstance(v, uuid.UUID):
        return b"u" + v.bytes
    if type(v) is str:
        try:
            return b"u" + uuid.UUID(v).bytes
        except ValueError:
            pass
    return generic_encode(v)


def enc_ip_address(v: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return b"4" + bytes((32,)) + v.packed if v.version == 4 else b"6" + bytes((128,)) + v.packed


def enc_ip_interface(v: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bytes:
    tag = b"4" if v.version == 4 else b"6"
    return tag + bytes((v.network.prefixlen,)) + v.packed


def enc_ip_network(v: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    tag = b"4" if v.version == 4 else b"6"
    return tag + bytes((v.prefixlen,)) + v.network_address.packed


def enc_inet(v: Any) -> bytes:
    if type(v) is str:
        try:
            return generic_encode(ipaddress.ip_interface(v))
        except ValueError:
            pass
    return generic_encode(v)


def enc_bitstring(v: Any) -> bytes:
    data: bytes = v.bytes
    return TAG_LEN(b"B", len(v)) + data


def enc_path(v: Any) -> bytes:
    points = list(v.points)
    parts = [b"g", b"\x01" if v.is_closed else b"\x00", U32(len(points))]
    parts.extend(generic_encode(p) for p in points)
    return b"".join(parts)


def enc_other(v: object) -> bytes:
    cls = type(v)
    data = f"{cls.__module__}.{cls.__qualname__}\0{v}".encode("utf-8", "surrogatepass")
    return TAG_LEN(b"x", len(data)) + data


def enc_mapping(v: Mapping[Any, Any]) -> bytes:
    pairs = sorted((generic_encode(k), generic_encode(x)) for k, x in v.items())
    parts = [TAG_LEN(b"o", len(pairs))]
    for key, value in pairs:
        parts.append(key)
        parts.append(value)
    return b"".join(parts)


def enc_set(v: set[Any] | frozenset[Any]) -> bytes:
    items = sorted(generic_encode(x) for x in v)  # not iteration order: that follows hash()
    return TAG_LEN(b"S", len(items)) + b"".join(items)


def enc_generic_list(v: list[Any]) -> bytes:
    parts = [TAG_LEN(b"A", len(v))]
    parts.extend(generic_encode(x) for x in v)
    return b"".join(parts)


def enc_generic_record(v: Any) -> bytes:
    items = list(v)
    parts = [TAG_LEN(b"C", len(items))]
    parts.extend(generic_encode(x) for x in items)
    return b"".join(parts)


# ------------------------------------------------------------- generic dispatch


def enc_null(v: Any) -> bytes:
    return NULL


_GENERIC: dict[type, Callable[[Any], bytes]] = {
    type(None): enc_null,
    bool: enc_bool,
    int: enc_big_int,
    float: enc_float,
    Decimal: enc_decimal,
    str: enc_str,
    bytes: enc_bytes,
    bytearray: enc_bytes_like,
    memoryview: enc_bytes_like,
    datetime: enc_datetime,
    date: enc_date,
    time: enc_time,
    timedelta: enc_timedelta,
    uuid.UUID: enc_uuid,
    ipaddress.IPv4Address: enc_ip_address,
    ipaddress.IPv6Address: enc_ip_address,
    ipaddress.IPv4Interface: enc_ip_interface,
    ipaddress.IPv6Interface: enc_ip_interface,
    ipaddress.IPv4Network: enc_ip_network,
    ipaddress.IPv6Network: enc_ip_network,
    list: enc_generic_list,
    tuple: enc_generic_record,
    dict: enc_mapping,
    set: enc_set,
    frozenset: enc_set,
}

#: Order matters: subclasses before their bases (bool before int, datetime before date,
#: interfaces before addresses).
_GENERIC_BASES: tuple[tuple[type, Callable[[Any], bytes]], ...] = (
    (bool, enc_bool),
    (int, lambda v: enc_big_int(int(v))),
    (float, lambda v: enc_float(float(v))),
    (Decimal, enc_decimal),
    (str, lambda v: enc_str(str(v))),
    (bytes, enc_bytes_like),
    (bytearray, enc_bytes_like),
    (memoryview, enc_bytes_like),
    (datetime, lambda v: enc_datetime(_as_datetime(v))),
    (date, lambda v: enc_date(date(v.year, v.month, v.day))),
    (time, lambda v: enc_time(time(v.hour, v.minute, v.second, v.microsecond, v.tzinfo))),
    (timedelta, enc_timedelta),
    (uuid.UUID, lambda v: b"u" + v.bytes),
    (ipaddress.IPv4Interface, enc_ip_interface),
    (ipaddress.IPv6Interface, enc_ip_interface),
    (ipaddress.IPv4Address, enc_ip_address),
    (ipaddress.IPv6Address, enc_ip_address),
    (ipaddress.IPv4Network, enc_ip_network),
    (ipaddress.IPv6Network, enc_ip_network),
    (list, lambda v: enc_generic_list(list(v))),
    (tuple, enc_generic_record),
    (Mapping, enc_mapping),
    (set, enc_set),
    (frozenset, enc_set),
)


def _as_datetime(v: _dt.datetime) -> _dt.datetime:
    return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.tzinfo)


def _resolve(cls: type) -> Callable[[Any], bytes]:
    for base, enc in _GENERIC_BASES:
        if issubclass(cls, base):
            return enc
    names = _mro_names(cls)
    if "Record" in names:
        return enc_generic_record
    if "BitString" in names:
        return enc_bitstring
    if "Path" in names:
        return enc_path
    if all(hasattr(cls, a) for a in ("isempty", "lower", "upper", "lower_inc", "upper_inc")):
        return enc_generic_range
    return enc_other


def generic_encode(v: object) -> bytes:
    """Encode by the Python type of ``v`` (columns of types the per-column choice does not
    know)."""
    cls = type(v)
    enc = _GENERIC.get(cls)
    if enc is None:
        enc = _GENERIC[cls] = _resolve(cls)
    return enc(v)


enc_generic_range = make_range(generic_encode, generic_encode)
