"""Encoders of containers, built once per column from their elements' encoders: arrays,
composites, ranges and multiranges. A value of another shape goes to ``fallback`` (the
encoding by Python type)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from replverify.values.pgtext import _is_record_like
from replverify.values.tags import NULL, R_EMPTY, TAG_BYTE, TAG_LEN, Encoder


def make_array(element: Encoder, fallback: Encoder) -> Encoder:
    def enc(v: Any) -> bytes:
        if type(v) is list:
            parts = [TAG_LEN(b"A", len(v))]
            for x in v:
                parts.append(enc(x) if type(x) is list else element(x))
            return b"".join(parts)
        if v is None:
            return NULL
        if type(v) is tuple:
            return enc(list(v))
        return fallback(v)

    return enc


def make_composite(fields: Sequence[Encoder], fallback: Encoder) -> Encoder:
    encoders = tuple(fields)
    n = len(encoders)
    header = TAG_LEN(b"C", n)

    def enc(v: Any) -> bytes:
        if v is None:
            return NULL
        if _is_record_like(type(v)) and len(v) == n:
            return header + b"".join([f(x) for f, x in zip(encoders, v, strict=True)])
        return fallback(v)

    return enc


def make_range(element: Encoder, fallback: Encoder) -> Encoder:
    def enc(v: Any) -> bytes:
        try:
            empty = v.isempty
        except AttributeError:
            if type(v) is list:  # a multirange: a list of ranges
                parts = [TAG_LEN(b"A", len(v))]
                parts.extend(enc(x) for x in v)
                return b"".join(parts)
            return fallback(v)
        if empty:
            return R_EMPTY
        lower = v.lower
        upper = v.upper
        flags = (1 if v.lower_inc and lower is not None else 0) | (
            2 if v.upper_inc and upper is not None else 0
        )
        return TAG_BYTE(b"R", flags) + element(lower) + element(upper)

    return enc
