"""jsonb's canonical encoding: parsed and re-serialized with keys sorted, no spaces and
numbers by value, so two documents encode equal exactly when jsonb's ``=`` says so."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache
from typing import Any

from replverify.values.pgtext import pg_text
from replverify.values.tags import CTX, NULL, TAG_LEN


def _decimal_canon(v: Decimal) -> str:
    """Text of a Decimal's *value*: equal exactly when the numerics are equal."""
    if v.is_finite():
        return v.normalize(CTX).to_eng_string(CTX) if v else "0"
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
    return TAG_LEN(b"J", len(data)) + data


def enc_jsonb(v: Any) -> bytes:
    """jsonb: parsed and re-serialized canonically (keys sorted, numbers by value)."""
    if type(v) is str:
        try:
            if "\\u0000" in v:
                return _json_bytes(_json_canon_text(_json_prepare(_JSON_DECODER_SLOW.decode(v))))
            return _json_bytes(_json_canon_text(_json_decode(v)))
        except ValueError:  # not JSON: never from PostgreSQL
            data = v.encode("utf-8", "surrogatepass")
            return TAG_LEN(b"K", len(data)) + data
    if v is None:
        return NULL
    return _json_bytes(_json_canon_text(_json_prepare(v)))  # a codec already decoded it
