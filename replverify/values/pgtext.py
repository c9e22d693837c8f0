"""How values are shown: PostgreSQL's text output of a value as asyncpg decodes it
(:func:`pg_text`, under replverify's pinned settings) and its form in JSON reports
(:func:`jsonable`). Pure: no I/O; the encodings that decide equality are
:mod:`replverify.values.canonical`."""

from __future__ import annotations

import datetime as _dt
import json
import math
from decimal import Decimal
from typing import Any

from replverify.types import ColumnType

__all__ = ["jsonable", "pg_text"]

_UTC = _dt.timezone.utc
_datetime = _dt.datetime
_date = _dt.date
_time = _dt.time
_timedelta = _dt.timedelta


def _mro_names(cls: type) -> set[str]:
    return {c.__name__ for c in cls.__mro__ if c.__module__.startswith("asyncpg")}


_RECORD_LIKE: dict[type, bool] = {tuple: True, list: False, str: False}


def _is_record_like(cls: type) -> bool:
    """A tuple or an asyncpg Record (a composite value), not a str or a list."""
    known = _RECORD_LIKE.get(cls)
    if known is None:
        known = _RECORD_LIKE[cls] = issubclass(cls, tuple) or "Record" in _mro_names(cls)
    return known


def _float_text(v: float) -> str:
    if v != v:
        return "NaN"
    if v == math.inf:
        return "Infinity"
    if v == -math.inf:
        return "-Infinity"
    text = repr(v)
    return text[:-2] if text.endswith(".0") else text


def _numeric_text(v: Decimal) -> str:
    if v.is_nan():
        return "NaN"
    if v.is_infinite():
        return "-Infinity" if v.is_signed() else "Infinity"
    if not v and v.is_signed():
        v = v.copy_abs()
    return format(v, "f")


def _interval_text(months: int, days: int, micros: int) -> str:
    """PostgreSQL's ``postgres`` IntervalStyle output (``1 year 2 mons 3 days 04:05:06.5``)."""

    def trunc_div(a: int, b: int) -> tuple[int, int]:  # C division: toward zero
        q = abs(a) // b
        q = -q if a < 0 else q
        return q, a - q * b

    years, mons = trunc_div(months, 12)
    hours, rest = trunc_div(micros, 3_600_000_000)
    minutes, rest = trunc_div(rest, 60_000_000)
    seconds, fsec = trunc_div(rest, 1_000_000)

    parts: list[str] = []
    is_zero = True
    is_before = False
    for value, unit in ((years, "year"), (mons, "mon"), (days, "day")):
        if value == 0:
            continue
        plus = "+" if is_before and value > 0 else ""
        parts.append(f"{plus}{value} {unit}{'' if value == 1 else 's'}")
        is_before = value < 0
        is_zero = False
    if is_zero or hours or minutes or seconds or fsec:
        minus = hours < 0 or minutes < 0 or seconds < 0 or fsec < 0
        sign = "-" if minus else ("+" if is_before else "")
        clock = f"{sign}{abs(hours):02d}:{abs(minutes):02d}:{abs(seconds):02d}"
        if fsec:
            clock += f".{abs(fsec):06d}".rstrip("0")
        parts.append(clock)
    return " ".join(parts)


def _needs_quotes(text: str, specials: str) -> bool:
    return text == "" or any(c in specials or c.isspace() for c in text)


def _array_text(v: list[Any]) -> str:
    items: list[str] = []
    for x in v:
        if x is None:
            items.append("NULL")
        elif type(x) is list:
            items.append(_array_text(x))
        else:
            text = pg_text(x)
            if _needs_quotes(text, '{},"\\') or text.upper() == "NULL":
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            items.append(text)
    return "{" + ",".join(items) + "}"


def _record_text(v: Any) -> str:
    items: list[str] = []
    for x in v:
        if x is None:
            items.append("")
            continue
        text = pg_text(x)
        if _needs_quotes(text, '"\\(),'):
            text = '"' + text.replace('"', '""').replace("\\", "\\\\") + '"'
        items.append(text)
    return "(" + ",".join(items) + ")"


def _range_bound_text(x: object) -> str:
    if x is None:
        return ""
    text = pg_text(x)
    if _needs_quotes(text, '"\\()[],'):
        text = '"' + text.replace('"', '""').replace("\\", "\\\\") + '"'
    return text


def _point_text(p: Any) -> str:
    return f"({_float_text(p[0])},{_float_text(p[1])})"


def _geometric_text(v: Any, names: set[str]) -> str | None:
    if "Point" in names:
        return _point_text(v)
    if "Box" in names:
        return f"{_point_text(v[0])},{_point_text(v[1])}"
    if "LineSegment" in names:
        return f"[{_point_text(v[0])},{_point_text(v[1])}]"
    if "Line" in names:
        return "{" + ",".join(_float_text(c) for c in v) + "}"
    if "Circle" in names:
        return f"<{_point_text(v[0])},{_float_text(v[1])}>"
    if "Path" in names:  # Polygon too
        inner = ",".join(_point_text(p) for p in v.points)
        return f"({inner})" if v.is_closed else f"[{inner}]"
    return None


def pg_text(v: object, ctype: ColumnType | None = None) -> str:
    """PostgreSQL's text form of a decoded value (``NULL`` for None)."""
    if v is None:
        return "NULL"
    if ctype is not None:
        if ctype.base == "interval" and type(v) is tuple and len(v) == 3:
            return _interval_text(*v)
        if ctype.kind == "composite" and _is_record_like(type(v)):
            return _record_text(v)
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        return _float_text(v)
    if isinstance(v, Decimal):
        return _numeric_text(v)
    if isinstance(v, _datetime):
        if v.tzinfo is None:
            return v.isoformat()
        try:
            return v.astimezone(_UTC).isoformat()
        except OverflowError:
            return v.isoformat()
    if isinstance(v, (_date, _time)):
        return v.isoformat()
    if isinstance(v, _timedelta):
        return _interval_text(0, v.days, v.seconds * 1_000_000 + v.microseconds)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    if isinstance(v, list):
        return _array_text(v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    names = _mro_names(type(v))
    geometric = _geometric_text(v, names)
    if geometric is not None:
        return geometric
    if "BitString" in names:
        bits = "".join(f"{byte:08b}" for byte in v.bytes)  # type: ignore[attr-defined]
        return bits[: len(v)]  # type: ignore[arg-type]
    if (
        type(v) is tuple
        and len(v) == 3
        and all(type(x) is int for x in v)
        and (ctype is None or ctype.kind != "composite")
    ):
        return _interval_text(*v)  # the interval tuple codec
    if _is_record_like(type(v)):
        return _record_text(v)
    if hasattr(v, "isempty") and hasattr(v, "lower_inc"):
        if v.isempty:
            return "empty"
        lower = getattr(v, "lower", None)
        upper = getattr(v, "upper", None)
        return (
            ("[" if v.lower_inc and lower is not None else "(")
            + _range_bound_text(lower)
            + ","
            + _range_bound_text(upper)
            + ("]" if getattr(v, "upper_inc", False) and upper is not None else ")")
        )
    return str(v)


def jsonable(value: object, ctype: ColumnType | None = None) -> object:
    """The JSON report form of a value: ints stay ints, lists stay lists, None stays None,
    everything else becomes PostgreSQL's text form (``bool`` → ``'t'``/``'f'``, timestamptz
    in UTC ISO 8601, bytea as ``\\x...``, interval tuples as ``1 mon 2 days 00:00:03``).

    ``ctype`` (optional) settles the one ambiguity of the decoded form: a plain 3-int tuple
    is read as an interval unless ``ctype`` says composite.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return int(value)
    if type(value) is list:
        element = ctype.element if ctype is not None and ctype.kind == "array" else None
        return [jsonable(x, ctype if type(x) is list else element) for x in value]
    return pg_text(value, ctype)
