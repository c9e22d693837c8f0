"""Laws of replverify.values.canonical: unambiguous, equal exactly when PostgreSQL says equal,
deterministic."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import os
import random
import struct
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asyncpg.types import BitString, Box, Circle, Point, Polygon, Range
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replverify.types import ColumnType
from replverify.values.canonical import Encoder, encode_row, encoder_for, generic_encode
from replverify.values.pgtext import jsonable, pg_text

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UTC = dt.timezone.utc


def base(name: str) -> ColumnType:
    return ColumnType(name, name)


def enc(name: str) -> Encoder:
    return encoder_for(base(name))


INT4 = base("int4")
TEXT = base("text")
NUMERIC = base("numeric")
ARRAY_INT4 = ColumnType("integer[]", "_int4", "array", element=INT4)
ARRAY_NUMERIC = ColumnType("numeric[]", "_numeric", "array", element=NUMERIC)
PAIR = ColumnType("pair", "pair", "composite", fields=(("a", INT4), ("b", TEXT)))
NUM_PAIR = ColumnType("np", "np", "composite", fields=(("a", INT4), ("b", NUMERIC)))
INT4RANGE = ColumnType("int4range", "int4range", "range")
NUMRANGE = ColumnType("numrange", "numrange", "range")
MOOD = ColumnType("mood", "mood", "enum")


# ----------------------------------------------------------------- a decoder of the grammar

_FIXED = {
    b"N": 0,
    b"T": 0,
    b"F": 0,
    b"i": 8,
    b"f": 8,
    b"n": 16,
    b"m": 1,
    b"d": 4,
    b"p": 10,
    b"P": 10,
    b"Q": 16,
    b"t": 6,
    b"z": 14,
    b"v": 16,
    b"u": 16,
    b"4": 5,
    b"6": 17,
}
_LENGTH = {b"I", b"e", b"s", b"b", b"J", b"K", b"x"}


def _u32(buf: bytes, pos: int) -> int:
    value: int = struct.unpack_from(">I", buf, pos)[0]
    return value


def _skip(buf: bytes, pos: int) -> int:
    """Position after the one encoding starting at ``pos`` (the grammar of the tags)."""
    tag = buf[pos : pos + 1]
    pos += 1
    if tag in _FIXED:
        end = pos + _FIXED[tag]
    elif tag in _LENGTH:
        end = pos + 4 + _u32(buf, pos)
    elif tag in (b"A", b"C", b"o", b"S"):
        n = _u32(buf, pos) * (2 if tag == b"o" else 1)
        end = pos + 4
        for _ in range(n):
            end = _skip(buf, end)
    elif tag == b"R":
        flags = buf[pos]
        end = pos + 1
        if not flags & 4:
            end = _skip(buf, _skip(buf, end))
    elif tag == b"B":
        end = pos + 4 + (_u32(buf, pos) + 7) // 8
    elif tag == b"g":
        end = pos + 5
        for _ in range(_u32(buf, pos + 1)):
            end = _skip(buf, end)
    else:
        raise AssertionError(f"unknown tag {tag!r} at {pos - 1}")
    assert end <= len(buf), "encoding runs past the end"
    return end


def split(buf: bytes) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(buf):
        end = _skip(buf, pos)
        pieces.append(buf[pos:end])
        pos = end
    return pieces


# ---------------------------------------------------------------------------- strategies

offsets = st.integers(-15 * 60, 15 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
aware = st.datetimes(
    min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31), timezones=st.just(UTC)
)
small_decimals = st.builds(
    lambda sign, digits, exp: Decimal((sign, tuple(digits), exp)),
    st.integers(0, 1),
    st.lists(st.integers(0, 9), min_size=1, max_size=4),
    st.integers(-4, 3),
)
wide_decimals = st.builds(  # around the int64 limits of the fraction form
    lambda sign, digits, exp: Decimal((sign, tuple(digits), exp)),
    st.integers(0, 1),
    st.lists(st.integers(0, 9), min_size=1, max_size=24),
    st.integers(-25, 25),
)
decimals = st.one_of(
    small_decimals,
    wide_decimals,
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("-0")]),
)
intervals = st.tuples(st.integers(-3, 3), st.integers(-90, 90), st.integers(-3, 3)).map(
    lambda t: (t[0], t[1], t[2] * 86_400_000_000)
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    small_decimals,
    st.text(max_size=4),
)
json_docs = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3)
    ),
    max_leaves=8,
)
nested_int_lists = st.recursive(
    st.none() | st.integers(-3, 3), lambda kids: st.lists(kids, max_size=3), max_leaves=8
)
ranges = st.one_of(
    st.just(Range(empty=True)),
    st.builds(
        lambda lo, hi, li, ui: Range(lo, hi, lower_inc=li, upper_inc=ui),
        st.none() | st.integers(-5, 5),
        st.none() | st.integers(-5, 5),
        st.booleans(),
        st.booleans(),
    ),
)


def _maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


def _render_number(d: Decimal, rnd: random.Random) -> str:
    """Some JSON spelling of the value of ``d`` (scale and exponent vary)."""
    text = format(d, "f")
    choice = rnd.randrange(4)
    if choice == 1:
        text = text + ("" if "." in text else ".") + "0" * rnd.randint(1, 3)
    elif choice == 2:
        text = format(d, "e") if d else "0e0"
    elif choice == 3:
        text = format(d * 10, "f") + "e-1"
    return text.replace("-0.", "0.") if Decimal(text) == 0 else text


def render(doc: object, rnd: random.Random) -> str:
    """A JSON text of ``doc`` with random key order, spacing and number spelling."""
    sp = rnd.choice(["", " ", "\n "])
    if doc is None or isinstance(doc, bool):
        return json.dumps(doc)
    if isinstance(doc, Decimal):
        return _render_number(doc, rnd)
    if isinstance(doc, str):
        return json.dumps(doc, ensure_ascii=rnd.random() < 0.5)
    if isinstance(doc, list):
        return "[" + f",{sp}".join(render(x, rnd) for x in doc) + "]"
    assert isinstance(doc, dict)
    items = list(doc.items())
    rnd.shuffle(items)
    body = f",{sp}".join(f"{json.dumps(k)}:{sp}{render(v, rnd)}" for k, v in items)
    return "{" + sp + body + "}"


def dump(doc: object) -> str:
    return render(doc, random.Random(0))


def semantic(doc: object) -> object:
    """A form of a JSON document that compares like jsonb (1 = 1.0, true != 1)."""
    if isinstance(doc, bool) or doc is None:
        return ("lit", doc)
    if isinstance(doc, Decimal):
        return ("num", doc.normalize() if doc else Decimal(0))
    if isinstance(doc, str):
        return ("str", doc)
    if isinstance(doc, list):
        return ("arr", tuple(semantic(x) for x in doc))
    assert isinstance(doc, dict)
    return ("obj", tuple(sorted((k, semantic(v)) for k, v in doc.items())))


# ------------------------------------------------------------------------ 1 unambiguous


@FAST
@given(st.lists(_maybe(st.text(max_size=4))), st.lists(_maybe(st.text(max_size=4))))
def test_text_rows_never_collide(a: list[str | None], b: list[str | None]) -> None:
    ea = encode_row([enc("text")] * len(a), a)
    eb = encode_row([enc("text")] * len(b), b)
    assert (ea == eb) == (a == b)


def test_concatenation_examples() -> None:
    text = enc("text")
    assert encode_row([text, text], ["ab", "c"]) != encode_row([text, text], ["a", "bc"])
    assert encode_row([text, text], ["", None]) != encode_row([text, text], [None, ""])
    assert encode_row([text], ["ab"]) != encode_row([text, text], ["a", "b"])


def test_encode_row_wants_one_encoder_per_value() -> None:
    with pytest.raises(ValueError):
        encode_row([enc("text")], ["a", "b"])


def test_null_is_distinct() -> None:
    null = enc("text")(None)
    assert null == b"N"
    assert null not in {enc("text")(""), enc("text")("NULL"), enc("int4")(0)}
    assert null != encoder_for(ARRAY_INT4)([])
    assert null != enc("jsonb")("null")
    assert null != enc("bool")(False)
    assert null != enc("numeric")(Decimal(0))
    assert encoder_for(ARRAY_INT4)([None]) != encoder_for(ARRAY_INT4)([])
    assert encoder_for(PAIR)((None, None)) != encoder_for(PAIR)(None)
    for name in ["int8", "numeric", "float8", "bytea", "bool", "date", "timestamptz", "interval"]:
        assert enc(name)(None) == b"N"


typed_values: st.SearchStrategy[tuple[ColumnType, Any]] = st.one_of(
    st.tuples(st.just(base("int8")), _maybe(st.integers(-(2**63), 2**63 - 1))),
    st.tuples(st.just(NUMERIC), _maybe(decimals)),
    st.tuples(st.just(base("float8")), _maybe(st.floats())),
    st.tuples(st.just(TEXT), _maybe(st.text(max_size=5))),
    st.tuples(st.just(base("bpchar")), _maybe(st.text(max_size=5))),
    st.tuples(st.just(MOOD), _maybe(st.sampled_from(["sad", "ok", "happy"]))),
    st.tuples(st.just(base("bytea")), _maybe(st.binary(max_size=5))),
    st.tuples(st.just(base("bool")), _maybe(st.booleans())),
    st.tuples(st.just(base("date")), _maybe(st.dates())),
    st.tuples(st.just(base("timestamp")), _maybe(st.datetimes())),
    st.tuples(st.just(base("timestamptz")), _maybe(aware)),
    st.tuples(st.just(base("time")), _maybe(st.times())),
    st.tuples(st.just(base("timetz")), _maybe(st.times(timezones=offsets))),
    st.tuples(st.just(base("interval")), _maybe(intervals)),
    st.tuples(st.just(base("uuid")), _maybe(st.uuids())),
    st.tuples(st.just(base("inet")), _maybe(st.ip_addresses())),
    st.tuples(st.just(base("jsonb")), _maybe(json_docs.map(dump))),
    st.tuples(st.just(base("json")), _maybe(json_docs.map(dump))),
    st.tuples(st.just(ARRAY_INT4), _maybe(st.lists(nested_int_lists, max_size=3))),
    st.tuples(st.just(PAIR), _maybe(st.tuples(_maybe(st.integers(-5, 5)), _maybe(st.text())))),
    st.tuples(st.just(INT4RANGE), _maybe(ranges)),
    st.tuples(
        st.just(base("some_unknown_type")),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=3),
            st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
            st.lists(st.booleans(), max_size=3),
        ),
    ),
)


@FAST
@given(st.lists(typed_values, max_size=6))
def test_every_encoding_is_self_delimiting(row: list[tuple[ColumnType, Any]]) -> None:
    encoders = [encoder_for(t) for t, _ in row]
    values = [v for _, v in row]
    pieces = [e(v) for e, v in zip(encoders, values, strict=True)]
    assert split(encode_row(encoders, values)) == pieces


def test_self_delimiting_oddities() -> None:
    values: list[object] = [
        BitString("10110"),
        BitString(""),
        Polygon((1, 2), (3, 4)),
        Circle(Point(1.0, 2.0), 3.0),
        Box(Point(1.0, 2.0), Point(0.0, 0.0)),
        2**100,
        -(2**70),
        bytearray(b"xy"),
        dt.timedelta(days=2),
        {"a": [1, None]},
        Range(Decimal("1.5"), None),
        ValueError("boom"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_interface("::1/64"),
        frozenset({"a", "b"}),
    ]
    encoded = [generic_encode(v) for v in values]
    assert split(b"".join(encoded)) == encoded
    assert len(set(encoded)) == len(encoded)


# ---------------------------------------------------------------- 2 PostgreSQL equality


@FAST
@given(
    st.one_of(small_decimals, wide_decimals),
    st.one_of(small_decimals, wide_decimals),
    st.integers(0, 6),
)
def test_numeric_equal_iff_values_equal(a: Decimal, b: Decimal, pad: int) -> None:
    e = enc("numeric")
    sign, digits, exp = a.as_tuple()
    assert isinstance(exp, int)
    padded = Decimal((sign, (*digits, *([0] * pad)), exp - pad))  # same value, more scale
    assert e(a) == e(padded)
    assert (e(a) == e(b)) == (a == b)


@FAST
@given(decimals, decimals)
def test_numeric_equality_with_specials(a: Decimal, b: Decimal) -> None:
    e = enc("numeric")
    same = (a.is_nan() and b.is_nan()) or (not a.is_nan() and not b.is_nan() and a == b)
    assert (e(a) == e(b)) == same


def test_numeric_examples() -> None:
    e = enc("numeric")
    assert e(Decimal("1.0")) == e(Decimal("1.00")) == e(Decimal("1")) == e(Decimal("1E0"))
    assert e(Decimal("-0")) == e(Decimal("0")) == e(Decimal("0.000")) == e(Decimal("-0E+5"))
    assert e(Decimal("1")) != e(Decimal("-1"))
    assert e(Decimal("NaN")) == e(Decimal("NaN"))
    assert len({e(Decimal(x)) for x in ["NaN", "Infinity", "-Infinity", "0", "1E+1000"]}) == 5
    assert e(Decimal("100")) == e(Decimal("1E+2")) == e(100)
    # no rounding to the default 28 digits of precision
    assert e(Decimal("1" + "0" * 200 + "1")) != e(Decimal("1" + "0" * 201))
    assert e(Decimal("0." + "0" * 16382 + "1")) != e(Decimal("0." + "0" * 16382 + "2"))
    assert e(Decimal("0." + "0" * 16382 + "10")) == e(Decimal("1E-16383"))
    # both sides of the int64 fraction limit
    assert e(Decimal("9223372036854775807")) == e(Decimal("9223372036854775807.000"))
    assert e(Decimal("9223372036854775808")) == e(Decimal("9223372036854775808.0"))
    assert e(Decimal("9223372036854775808")) != e(Decimal("9223372036854775807"))
    assert e(Decimal("0.1234567890123456789")) == e(Decimal("0.12345678901234567890"))
    assert e(Decimal("1E+18")) == e(Decimal("1000000000000000000.00"))
    assert e(Decimal("1E+19")) == e(Decimal("10000000000000000000.00"))
    assert e(Decimal("0E+100")) == e(Decimal("0E-100")) == e(Decimal(0))


def test_numeric_does_not_depend_on_the_decimal_context() -> None:
    import decimal

    e = enc("numeric")
    before = e(Decimal("1.5E+40"))
    with decimal.localcontext() as ctx:
        ctx.capitals = 0
        ctx.prec = 3
        assert e(Decimal("1.5E+40")) == before


def _float_from_bits(bits: int) -> float:
    value: float = struct.unpack(">d", struct.pack(">Q", bits))[0]
    return value


@FAST
@given(st.floats(), st.floats())
def test_float_equal_iff_postgres_equal(a: float, b: float) -> None:
    for name in ("float4", "float8"):
        e = enc(name)
        same = (math.isnan(a) and math.isnan(b)) or a == b
        assert (e(a) == e(b)) == same


@FAST
@given(st.integers(1, 2**52 - 1), st.booleans())
def test_all_nans_are_equal(payload: int, negative: bool) -> None:
    nan = _float_from_bits((1 << 63 if negative else 0) | (0x7FF << 52) | payload)
    assert math.isnan(nan)
    assert enc("float8")(nan) == enc("float8")(math.nan)


def test_float_examples() -> None:
    e = enc("float8")
    assert e(-0.0) == e(0.0)
    assert len({e(math.inf), e(-math.inf), e(math.nan), e(1.7976931348623157e308)}) == 4
    assert e(0.1) != e(0.1 + 2**-56)


@FAST
@given(aware, offsets, offsets)
def test_timestamptz_same_instant_any_zone(instant: dt.datetime, z1: Any, z2: Any) -> None:
    e = enc("timestamptz")
    assert e(instant.astimezone(z1)) == e(instant.astimezone(z2)) == e(instant)


@FAST
@given(aware, aware)
def test_timestamptz_equal_iff_same_instant(a: dt.datetime, b: dt.datetime) -> None:
    e = enc("timestamptz")
    assert (e(a) == e(b)) == (a == b)


def test_timestamptz_infinity_and_edges() -> None:
    e = enc("timestamptz")
    pos = dt.datetime.max.replace(tzinfo=UTC)
    neg = dt.datetime.min.replace(tzinfo=UTC)
    assert e(pos) != e(neg)
    assert e(pos) == e(dt.datetime.max.replace(tzinfo=UTC))
    # instants whose UTC form lies outside datetime's range still encode by instant
    plus1 = dt.timezone(dt.timedelta(hours=1))
    plus_half = dt.timezone(dt.timedelta(minutes=30))
    a = dt.datetime(1, 1, 1, 0, 0, tzinfo=plus1)
    b = dt.datetime(1, 1, 1, 0, 30, tzinfo=plus1)
    c = dt.datetime(1, 1, 1, 0, 0, tzinfo=plus_half)
    assert e(b) == e(c)
    assert e(a) != e(b)


@FAST
@given(st.datetimes(), st.datetimes())
def test_timestamp_by_fields(a: dt.datetime, b: dt.datetime) -> None:
    e = enc("timestamp")
    assert e(a) == e(a.replace(fold=1))
    assert (e(a) == e(b)) == (a == b)


def test_timestamp_infinity_distinct() -> None:
    e = enc("timestamp")
    assert e(dt.datetime.max) != e(dt.datetime.min)
    d = enc("date")
    assert d(dt.date.max) != d(dt.date.min)


@FAST
@given(st.times(), offsets, st.times(), offsets)
def test_timetz_is_time_and_offset(t1: dt.time, z1: Any, t2: dt.time, z2: Any) -> None:
    e = enc("timetz")
    a, b = t1.replace(tzinfo=z1), t2.replace(tzinfo=z2)
    assert (e(a) == e(b)) == (t1 == t2 and z1.utcoffset(None) == z2.utcoffset(None))


def test_timetz_examples() -> None:
    e = enc("timetz")
    plus1 = dt.timezone(dt.timedelta(hours=1))
    assert e(dt.time(12, 0, tzinfo=plus1)) != e(dt.time(11, 0, tzinfo=UTC))
    assert e(dt.time(12, 0, tzinfo=plus1)) == e(dt.time(12, 0, tzinfo=plus1))
    assert enc("time")(dt.time(12, 0)) != e(dt.time(12, 0, tzinfo=UTC))


@FAST
@given(intervals, intervals)
def test_interval_compares_like_postgres(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    def flat(i: tuple[int, int, int]) -> int:
        return (i[0] * 30 + i[1]) * 86_400_000_000 + i[2]

    e = enc("interval")
    assert (e(a) == e(b)) == (flat(a) == flat(b))


def test_interval_examples() -> None:
    e = enc("interval")
    assert e((1, 0, 0)) == e((0, 30, 0)) == e((0, 0, 30 * 86_400 * 10**6))
    assert e((0, 1, 0)) != e((0, -1, 0))
    assert e((0, 1, 0)) == e(dt.timedelta(days=1))
    huge = (2**31 - 1, 2**31 - 1, 2**63 - 1)  # beyond int64 once flattened
    assert e(huge) != e((2**31 - 2, 2**31 - 1, 2**63 - 1))


@QUICK
@given(json_docs, st.randoms(use_true_random=False))
def test_jsonb_ignores_key_order_spacing_and_scale(doc: object, rnd: random.Random) -> None:
    e = enc("jsonb")
    assert e(render(doc, rnd)) == e(dump(doc))


@FAST
@given(json_docs, json_docs, st.randoms(use_true_random=False))
def test_jsonb_equal_iff_same_document(a: object, b: object, rnd: random.Random) -> None:
    e = enc("jsonb")
    assert (e(render(a, rnd)) == e(render(b, rnd))) == (semantic(a) == semantic(b))


def test_jsonb_examples() -> None:
    e = enc("jsonb")
    assert e('{"a":1,"b":[1.0,"x"]}') == e('{"b":[1,"x"], "a":1.00}')
    assert e('{"a":1}') != e('{"a":-1}')
    assert e('{"a":1}') != e('{"a":"1"}')
    assert e('{"a":1}') != e('{"a":true}')
    assert e('{"a":null}') != e("{}")
    assert e('{"a":1,"a":2}') == e('{"a":2}')  # jsonb keeps the last duplicate
    assert e('"\\u0041"') == e('"A"')
    assert e('"\\u00001"') != e("1")  # a string holding U+0000 is not a number marker
    assert e('["\\u0000", 0]') != e("[0, 0]")
    assert e('["\\u0000\\u0000", 0]') != e('["\\u0000", "\\u00000"]')
    assert e({"b": [1, "x"], "a": Decimal("1.00")}) == e('{"a":1,"b":[1.0,"x"]}')
    assert e("not json") != e('"not json"')
    assert e("null") != e(None)


def test_json_is_exact_text() -> None:
    e = enc("json")
    assert e('{"a":1}') != e('{"a": 1}')
    assert e('{"a":1}') == e('{"a":1}')


@FAST
@given(st.text(max_size=5), st.integers(0, 4), st.integers(0, 4))
def test_bpchar_trailing_spaces_do_not_matter(s: str, i: int, j: int) -> None:
    e = enc("bpchar")
    assert e(s + " " * i) == e(s + " " * j)
    assert (e(s) == e(s.rstrip(" ") + "x")) is False


def test_bpchar_examples() -> None:
    e = enc("bpchar")
    assert e("ab") == e("ab   ")
    assert e(" ab") != e("ab")
    assert e("ab\t") != e("ab")
    assert enc("text")("ab") != enc("text")("ab ")


def test_text_like_is_exact() -> None:
    for ctype in (TEXT, base("varchar"), base("xml"), MOOD):
        e = encoder_for(ctype)
        assert e("Abc") != e("abc")
        assert e("é") == e("é")
        assert e("é") != e("e\u0301")  # no Unicode normalization: PG compares bytes


@FAST
@given(nested_int_lists, nested_int_lists)
def test_arrays_keep_structure(a: Any, b: Any) -> None:
    e = encoder_for(ARRAY_INT4)
    assert (e(a) == e(b)) == (a == b)


def test_array_examples() -> None:
    e = encoder_for(ARRAY_INT4)
    assert e([[1, 2]]) != e([1, 2])
    assert e([]) != e([[]]) != e(None)
    assert e([None, 1]) != e([1, None]) != e([1])
    n = encoder_for(ARRAY_NUMERIC)
    assert n([Decimal("1.0"), None]) == n([Decimal("1"), None])
    assert n([[Decimal("-0")]]) == n([[Decimal("0.00")]])


def test_composite_fieldwise() -> None:
    e = encoder_for(NUM_PAIR)
    assert e((1, Decimal("1.0"))) == e((1, Decimal("1")))
    assert e((1, Decimal("1.0"))) != e((1, Decimal("-1")))
    assert e((1, None)) != e((None, 1))
    assert e((1, Decimal(2), 3)) == generic_encode((1, Decimal(2), 3))  # wrong arity: generic
    p = encoder_for(PAIR)
    assert p((1, "ab")) != p((1, "a")) != p(None)
    assert encoder_for(ColumnType("c", "c", "composite"))((1,)) == generic_encode((1,))


def test_asyncpg_records_are_composites() -> None:
    protocol = pytest.importorskip("asyncpg.protocol.protocol")
    create = getattr(protocol, "_create_record", None)
    if create is None:
        pytest.skip("no way to build an asyncpg Record here")
    record = create({"a": 0, "b": 1}, (1, "x y"))
    assert encoder_for(PAIR)(record) == encoder_for(PAIR)((1, "x y"))
    assert generic_encode(record) == generic_encode((1, "x y"))
    assert jsonable(record) == '(1,"x y")'
    assert encode_row([encoder_for(PAIR)], [record]) != encode_row([encoder_for(PAIR)], [None])


def test_ranges() -> None:
    e = encoder_for(INT4RANGE)
    assert e(Range(empty=True)) == e(Range(3, 7, empty=True))
    assert e(Range(1, 5)) != e(Range(1, 5, upper_inc=True))
    assert e(Range(1, 5)) != e(Range(empty=True))
    assert e(Range(None, 5)) != e(Range(0, 5))
    assert e(Range(None, None)) != e(Range(empty=True)) != e(None)
    n = encoder_for(NUMRANGE)
    assert n(Range(Decimal("1.0"), Decimal("2"))) == n(Range(Decimal("1"), Decimal("2.000")))
    multi = encoder_for(ColumnType("int4multirange", "int4multirange", "range"))
    assert multi([Range(1, 3), Range(5, 7)]) != multi([Range(1, 3)])
    typed = encoder_for(ColumnType("r", "r", "range", element=NUMERIC))
    assert typed(Range(Decimal("1.0"), None)) == typed(Range(Decimal("1"), None))


@FAST
@given(ranges, ranges)
def test_range_equal_iff_equal(a: Range[int], b: Range[int]) -> None:
    def key(r: Range[int]) -> object:
        return "empty" if r.isempty else (r.lower, r.upper, r.lower_inc, r.upper_inc)

    e = encoder_for(INT4RANGE)
    assert (e(a) == e(b)) == (key(a) == key(b))


@FAST
@given(st.integers(-(2**15), 2**15 - 1))
def test_integer_widths_agree(n: int) -> None:
    assert enc("int2")(n) == enc("int4")(n) == enc("int8")(n) == generic_encode(n)


def test_exact_types() -> None:
    assert enc("bool")(True) != enc("bool")(False)
    assert generic_encode(True) != generic_encode(1)
    assert generic_encode(False) != generic_encode(0)
    u = uuid.UUID(int=5)
    assert enc("uuid")(u) == enc("uuid")(str(u)) != enc("uuid")(uuid.UUID(int=6))
    inet = enc("inet")
    assert inet(ipaddress.ip_address("10.0.0.1")) == inet(ipaddress.ip_interface("10.0.0.1/32"))
    assert inet(ipaddress.ip_interface("10.0.0.1/24")) != inet(ipaddress.ip_address("10.0.0.1"))
    assert inet(ipaddress.ip_address("::1")) != inet(ipaddress.ip_address("0.0.0.1"))
    cidr = enc("cidr")
    assert cidr(ipaddress.ip_network("10.0.0.0/8")) != cidr(ipaddress.ip_network("10.0.0.0/16"))
    assert enc("bytea")(b"") != enc("text")("")
    assert enc("bytea")(b"\x00") != enc("bytea")(b"\x00\x00")
    assert enc("date")(dt.date(2024, 2, 29)) != enc("date")(dt.date(2024, 3, 1))
    assert enc("time")(dt.time(0, 0, 0, 1)) != enc("time")(dt.time(0, 0))
    assert generic_encode(BitString("101")) != generic_encode(BitString("1010"))


_DETERMINISM_SCRIPT = """
import datetime as dt, decimal, sys, uuid
from replverify.values.canonical import encode_row, encoder_for, generic_encode
from replverify.types import ColumnType as C
row = [1, "x", decimal.Decimal("1.50"), dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
       '{"b": 1, "a": [1.0, null]}', True, (1, 0, 5), uuid.UUID(int=7), {"k": {"a", "b", "c", "d"}}]
types = ["int4", "text", "numeric", "timestamptz", "jsonb", "bool", "interval", "uuid", "x"]
sys.stdout.write(encode_row([encoder_for(C(t, t)) for t in types], row).hex())
"""


def test_deterministic_across_processes() -> None:
    root = Path(__file__).resolve().parents[1]
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-c", _DETERMINISM_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1


# ------------------------------------------------------------------------------ jsonable


def test_jsonable_examples() -> None:
    assert jsonable(None) is None
    assert jsonable(42) == 42
    assert jsonable(True) == "t"
    assert jsonable(False) == "f"
    assert jsonable(Decimal("12.50")) == "12.50"
    assert jsonable(Decimal("1E-7")) == "0.0000001"
    assert jsonable(Decimal("NaN")) == "NaN"
    assert jsonable(Decimal("-Infinity")) == "-Infinity"
    plus1 = dt.timezone(dt.timedelta(hours=1))
    ts = dt.datetime(2026, 11, 23, 11, 0, 0, 123456, tzinfo=plus1)
    assert jsonable(ts) == "2026-11-23T10:00:00.123456+00:00"
    assert jsonable(dt.datetime(2026, 11, 23, 10, 0)) == "2026-11-23T10:00:00"
    assert jsonable(dt.date(2026, 11, 23)) == "2026-11-23"
    assert jsonable(dt.time(10, 0, 1)) == "10:00:01"
    assert jsonable(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert jsonable(b"\x01\xab") == "\\x01ab"
    assert jsonable((1, 2, 3_000_000)) == "1 mon 2 days 00:00:03"
    assert jsonable((14, 0, 0)) == "1 year 2 mons"
    assert jsonable((0, 0, 0)) == "00:00:00"
    assert jsonable((0, -1, -3_500_000)) == "-1 days -00:00:03.5"
    assert jsonable((0, -1, 3_600_000_000)) == "-1 days +01:00:00"
    assert jsonable([1, None, [Decimal("1.0")]]) == [1, None, ["1.0"]]
    assert jsonable(1.5) == "1.5"
    assert jsonable(2.0) == "2"
    assert jsonable(math.nan) == "NaN"
    assert jsonable(math.inf) == "Infinity"
    assert jsonable(-math.inf) == "-Infinity"
    assert jsonable("x") == "x"
    assert jsonable(ipaddress.ip_interface("10.0.0.1/24")) == "10.0.0.1/24"
    assert jsonable(Range(1, 5)) == "[1,5)"
    assert jsonable(Range(empty=True)) == "empty"
    assert jsonable(Range(None, dt.date(2026, 1, 1), upper_inc=True)) == "(,2026-01-01]"
    assert jsonable(BitString("10110")) == "10110"
    assert jsonable(Point(1.0, 2.5)) == "(1,2.5)"
    assert jsonable((1, 2, 3), PAIR) == "(1,2,3)"
    assert jsonable((1, "a b"), PAIR) == '(1,"a b")'
    assert jsonable((None, 'q"'), PAIR) == '(,"q""")'
    assert jsonable((1, 2, 3), base("interval")) == "1 mon 2 days 00:00:00.000003"
    assert jsonable(ts.timetz()) == "11:00:00.123456+01:00"
    intervals = ColumnType("interval[]", "_interval", "array", element=base("interval"))
    assert jsonable([[(0, 1, 0)], [None]], intervals) == [["1 day"], [None]]


def test_pg_text_arrays_quote_like_postgres() -> None:
    assert pg_text(["a", "b c", "", None, "NULL", 'x"y']) == '{a,"b c","",NULL,"NULL","x\\"y"}'
    assert pg_text([[1, 2], [3, 4]]) == "{{1,2},{3,4}}"


@QUICK
@given(st.lists(typed_values, max_size=5))
def test_jsonable_is_json_serializable(row: list[tuple[ColumnType, Any]]) -> None:
    json.dumps([jsonable(v, t) for t, v in row])
