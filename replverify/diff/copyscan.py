"""Which rows two chunks' binary COPY streams disagree on, found in the bytes (pure).

A chunk whose COPY bytes differ between the sides usually differs in a row or two.
Stretches of bytes both sides share are the same rows, framed the same way, so only the
row frames there are walked (a 16-bit field count, then a 32-bit length before each
field); where the sides part, the rows' keys are decoded and merged in key order. The
result is the exact keys that differ, read from the streams already hashed: narrowing a
mismatching chunk then fetches just those rows instead of reading the chunk again.

Only keys whose binary form is decoded here (integers, text, uuid) take this path; for
others :func:`key_reader` returns ``None`` and the chunk is narrowed by splitting.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import xxhash

from replverify.diff.hashing import ChunkDigest
from replverify.types import Key

#: The fixed start of a binary COPY stream (then 32-bit flags and a header extension).
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from

FieldDecoder = Callable[[bytes], object]
#: ``key_of(stream, row_start)``: the key of the row that starts at ``row_start``.
KeyOf = Callable[[bytes, int], Key]

_DECODERS: dict[str, FieldDecoder] = {
    "int2": lambda b: struct.unpack(">h", b)[0],
    "int4": lambda b: struct.unpack(">i", b)[0],
    "int8": lambda b: struct.unpack(">q", b)[0],
    "text": lambda b: b.decode("utf-8"),
    "varchar": lambda b: b.decode("utf-8"),
    "uuid": lambda b: uuid.UUID(bytes=b),
}


class MalformedCopy(ValueError):
    """The bytes are not a binary COPY stream of whole rows."""


def key_reader(positions: Sequence[int], bases: Sequence[str]) -> KeyOf | None:
    """``key_of`` for key columns at field ``positions`` of types ``bases`` (``typname``),
    or ``None`` when a type's binary form is not decoded here."""
    if not positions or any(b not in _DECODERS for b in bases):
        return None
    wanted = {p: _DECODERS[b] for p, b in zip(positions, bases, strict=True)}
    last = max(positions)

    def key_of(buf: bytes, start: int) -> Key:
        values: dict[int, object] = {}
        pos = start + 2
        for i in range(last + 1):
            (size,) = _I32(buf, pos)
            pos += 4
            if i in wanted:
                if size < 0:
                    raise MalformedCopy("a key field is NULL")
                values[i] = wanted[i](buf[pos : pos + size])
            pos += max(size, 0)
        return tuple(values[p] for p in positions)

    return key_of


def body_start(buf: bytes) -> int:
    """Offset of the first row."""
    if len(buf) < 19 or not buf.startswith(SIGNATURE):
        raise MalformedCopy("no binary COPY signature")
    (extension,) = _I32(buf, 15)
    return 19 + int(extension)


def row_end(buf: bytes, pos: int) -> int | None:
    """End of the row starting at ``pos``; ``None`` at the trailer (field count -1)."""
    (fields,) = _I16(buf, pos)
    if fields < 0:
        return None
    pos += 2
    for _ in range(fields):
        (size,) = _I32(buf, pos)
        pos += 4 + size if size > 0 else 4
    return pos


_BLOCK = 4096


def common_prefix(a: bytes, b: bytes, at_a: int = 0, at_b: int = 0) -> int:
    """Length of the longest common prefix of ``a[at_a:]`` and ``b[at_b:]``: block-wise
    (bytes comparison is memcmp), then by bisection inside the first block that differs."""
    n = min(len(a) - at_a, len(b) - at_b)
    i = 0
    while i + _BLOCK <= n and a[at_a + i : at_a + i + _BLOCK] == b[at_b + i : at_b + i + _BLOCK]:
        i += _BLOCK
    # binary search inside the block: a dozen slice comparisons, not a byte loop
    lo, hi = 0, max(min(_BLOCK, n - i), 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[at_a + i : at_a + i + mid] == b[at_b + i : at_b + i + mid]:
            lo = mid
        else:
            hi = mid - 1
    return max(i + lo, 0)


def common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the longest common suffix, at most ``limit``."""
    la, lb = len(a), len(b)
    n = max(0, min(limit, la, lb))
    i = 0
    while i + _BLOCK <= n and a[la - i - _BLOCK : la - i] == b[lb - i - _BLOCK : lb - i]:
        i += _BLOCK
    lo, hi = 0, min(_BLOCK, n - i)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[la - i - mid : la - i] == b[lb - i - mid : lb - i]:
            lo = mid
        else:
            hi = mid - 1
    return i + lo


def locate_chunk(src: object, tgt: object, key_of: KeyOf) -> list[Key] | None:
    """:func:`differing_keys` of the streams two ``copy`` digests carry, or ``None`` when
    either carries none. A stream is used only if it still hashes to its digest."""
    if not (isinstance(src, ChunkDigest) and isinstance(tgt, ChunkDigest)):
        return None
    if not (src.stream and tgt.stream):
        return None
    a, b = b"".join(src.stream), b"".join(tgt.stream)
    if xxhash.xxh3_128_intdigest(a) != src.total or xxhash.xxh3_128_intdigest(b) != tgt.total:
        return None
    return differing_keys(a, tgt=b, key_of=key_of)


def differing_keys(src: bytes, tgt: bytes, key_of: KeyOf) -> list[Key] | None:
    """Keys of the rows that differ between two key-ordered COPY streams of unique keys
    (in one side only, or in both with other bytes); ``None`` when the streams cannot be
    read as binary COPY.

    No differing row can be missed, whatever the key order: every row is either inside a
    stretch of bytes both sides hold at aligned row starts (the same row on both sides)
    or returned. The key order only keeps the merge in step, so that rows present on both
    sides are paired rather than returned as well.
    """
    try:
        return _differing_keys(src, tgt, key_of)
    except (struct.error, MalformedCopy, UnicodeDecodeError, ValueError):
        return None


def _differing_keys(src: bytes, tgt: bytes, key_of: KeyOf) -> list[Key]:
    start = body_start(src)
    if body_start(tgt) != start or src[:start] != tgt[:start]:
        raise MalformedCopy("the streams' headers differ")
    len_a, len_b = len(src), len(tgt)
    # Once both sides stand at a row start with equally many bytes left, all of them in
    # the common suffix, the rest is the same rows on both sides.
    tail = common_suffix(src, tgt, min(len_a, len_b) - start)
    keys: list[Key] = []
    a = b = start
    while not (len_a - a == len_b - b and len_a - a <= tail):
        # Rows wholly inside an identical stretch are the same rows, framed alike on both
        # sides: walk their frames on one side only.
        same = common_prefix(src, tgt, a, b)
        end = row_end(src, a)
        while end is not None and end - a <= same:
            same -= end - a
            a, b = end, b + (end - a)
            if len_a - a == len_b - b and len_a - a <= tail:
                return keys
            end = row_end(src, a)
        # ``a`` and ``b`` start rows that differ, or one side is at its trailer: merge by
        # key (ints, code points and uuid bytes order as the servers' COPY did).
        end_b = row_end(tgt, b)
        if end is None and end_b is None:
            raise MalformedCopy("both trailers reached before the streams met")
        if end_b is None:
            assert end is not None
            keys.append(key_of(src, a))
            a = end
        elif end is None:
            keys.append(key_of(tgt, b))
            b = end_b
        else:
            ka, kb = key_of(src, a), key_of(tgt, b)
            if ka == kb:
                keys.append(ka)
                a, b = end, end_b
            elif _before(ka, kb):
                keys.append(ka)
                a = end
            else:
                keys.append(kb)
                b = end_b
    return keys


def _before(x: Key, y: Key) -> bool:
    return cast("tuple[Any, ...]", x) < cast("tuple[Any, ...]", y)
