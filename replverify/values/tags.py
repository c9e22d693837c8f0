"""The tags and packers every canonical encoding shares, and the :data:`Encoder` type.

Each encoding starts with a one-byte tag that fixes how long the rest is; the table of
tags is in :mod:`replverify.values.canonical`."""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import struct
from collections.abc import Callable
from typing import Any

Encoder = Callable[[object], bytes]
"""Encodes one column value (``None`` for SQL NULL) to its canonical bytes."""

NULL = b"N"
TRUE = b"T"
FALSE = b"F"

TAG_LEN = struct.Struct(">cI").pack  # tag + 4-byte length or count
TAG_I64 = struct.Struct(">cq").pack
TAG_I32 = struct.Struct(">ci").pack
TAG_F64 = struct.Struct(">cd").pack
TAG_RATIO = struct.Struct(">cqq").pack
TAG_BYTE = struct.Struct(">cB").pack
I64 = struct.Struct(">q").pack
U32 = struct.Struct(">I").pack

F_NAN = TAG_F64(b"f", math.nan)
F_ZERO = TAG_F64(b"f", 0.0)
N_NAN = b"mN"
N_POS_INF = b"m+"
N_NEG_INF = b"m-"
N_ZERO = TAG_RATIO(b"n", 0, 1)
R_EMPTY = TAG_BYTE(b"R", 4)

#: A decimal context wide enough for any PostgreSQL numeric (131072 digits before the point,
#: 16383 after), so that ``normalize`` never rounds; also fixes ``capitals`` for ``E``.
CTX = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, capitals=1, clamp=0
)

UTC = _dt.timezone.utc
EPOCH_UTC = _dt.datetime(1970, 1, 1, tzinfo=UTC)
US = _dt.timedelta(microseconds=1)
US_PER_DAY = 86_400_000_000

# ``__reduce__`` gives ``(cls, (state, [tzinfo]))`` where state is the value's field bytes
# (datetime: year, month, day, hour, minute, second, microsecond in 10 bytes; time: 6 bytes;
# protocol 2 leaves out ``fold``), the pickle format, stable across Python versions. It is
# the cheapest exact dump of the fields.
DT_STATE: Callable[[Any], Any] = _dt.datetime.__reduce__
TIME_STATE: Callable[[Any], Any] = _dt.time.__reduce__
