"""Where two chunks' binary COPY streams differ, as a key range (pure, no I/O).

A chunk whose COPY bytes differ between the sides usually differs in a row or two. The
bytes both sides share at the start are the same rows, framed the same way, and so are
the bytes they share at the end from a point where both sides start a row. The rows that
can differ lie between: :func:`locate` finds them by walking only the row frames (a
16-bit field count, then a 32-bit length before each field) and decodes just the keys
that bound them. Narrowing then starts from that key range instead of reading the chunk
again, so ten differences in a million rows cost ten short row-hash queries rather than
ten chunk re-reads.

Only keys whose binary form is decoded here (integers, text, uuid) take this path; for
others :func:`key_reader` returns ``None`` and the chunk is narrowed by splitting.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import xxhash

from .hashing import ChunkDigest
from .types import Key

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


@dataclass(frozen=True)
class Region:
    """The rows of a chunk that can differ: keys after ``after`` (``None``: from the
    chunk's start) up to and including ``upto`` (``None``: to its end); ``rows`` bounds
    how many rows either side has there."""

    after: Key | None
    upto: Key | None
    rows: int


def key_reader(positions: Sequence[int], bases: Sequence[str]) -> KeyOf | None:
    """``key_of`` for key columns at field ``positions`` of types ``bases`` (``typname``),
    or ``None`` when a type's binary form is not decoded here."""
    decoders = [_DECODERS.get(b) for b in bases]
    if not positions or any(d is None for d in decoders):
        return None
    wanted = dict(zip(positions, decoders, strict=True))
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
                values[i] = wanted[i](buf[pos : pos + size])  # type: ignore[misc]
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


def common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix: block-wise (bytes comparison is memcmp),
    then byte-wise inside the first block that differs."""
    n = min(len(a), len(b))
    i = 0
    while i + _BLOCK <= n and a[i : i + _BLOCK] == b[i : i + _BLOCK]:
        i += _BLOCK
    end = min(i + _BLOCK, n)
    while i < end and a[i] == b[i]:
        i += 1
    return min(i, n)


def common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the longest common suffix, at most ``limit``."""
    la, lb = len(a), len(b)
    n = max(0, min(limit, la, lb))
    i = 0
    while i + _BLOCK <= n and a[la - i - _BLOCK : la - i] == b[lb - i - _BLOCK : lb - i]:
        i += _BLOCK
    end = min(i + _BLOCK, n)
    while i < end and a[la - i - 1] == b[lb - i - 1]:
        i += 1
    return min(i, n)


def locate_chunk(src: object, tgt: object, key_of: KeyOf) -> Region | None:
    """:func:`locate` on the streams two ``copy`` digests carry, or ``None`` when either
    carries none. A stream is used only if it still hashes to its digest."""
    if not (isinstance(src, ChunkDigest) and isinstance(tgt, ChunkDigest)):
        return None
    if not (src.stream and tgt.stream):
        return None
    a, b = b"".join(src.stream), b"".join(tgt.stream)
    if xxhash.xxh3_128_intdigest(a) != src.total or xxhash.xxh3_128_intdigest(b) != tgt.total:
        return None
    return locate(a, b, key_of)


def locate(src: bytes, tgt: bytes, key_of: KeyOf) -> Region | None:
    """The key range outside which the two chunks' rows are byte-for-byte the same, or
    ``None`` when the streams are equal or cannot be read as binary COPY."""
    try:
        return _locate(src, tgt, key_of)
    except (struct.error, MalformedCopy, UnicodeDecodeError, ValueError):
        return None


def _locate(src: bytes, tgt: bytes, key_of: KeyOf) -> Region | None:
    start = body_start(src)
    if src == tgt or body_start(tgt) != start or src[:start] != tgt[:start]:
        return None
    same = common_prefix(src, tgt)
    # Rows wholly inside the common prefix are framed alike on both sides: walk them once.
    pos, last = start, None
    while True:
        end = row_end(src, pos)
        if end is None or end > same:
            break
        last, pos = pos, end
    after = None if last is None else key_of(src, last)
    # From ``pos`` (a row start on both sides) walk each side until both stand at a row
    # start with equally many bytes left, all inside the common suffix: from there on the
    # rows are identical.
    tail = common_suffix(src, tgt, min(len(src), len(tgt)) - pos)
    a = b = pos
    rows_a = rows_b = 0
    while True:
        left_a, left_b = len(src) - a, len(tgt) - b
        if left_a == left_b and left_a <= tail:
            break
        if left_a >= left_b:
            end = row_end(src, a)
            if end is None:
                raise MalformedCopy("source trailer reached before the streams met")
            a, rows_a = end, rows_a + 1
        if left_b >= left_a:
            end = row_end(tgt, b)
            if end is None:
                raise MalformedCopy("target trailer reached before the streams met")
            b, rows_b = end, rows_b + 1
    at_trailer = row_end(src, a) is None
    upto = None if at_trailer else key_of(src, a)
    return Region(after, upto, max(rows_a, rows_b) + (0 if at_trailer else 1))
