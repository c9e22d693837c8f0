"""Which rows two chunks' binary COPY streams disagree on, found in the bytes (pure).

A chunk whose COPY bytes differ between the sides usually differs in a row or two.
Stretches of bytes both sides share are the same rows, framed the same way, so only the
row frames there are walked (a 16-bit field count, then a 32-bit length before each
field); where the sides part, the rows' keys are decoded and merged in key order. The
result is the exact keys that differ, read from the streams already hashed: narrowing a
mismatching chunk then fetches just those rows instead of reading the chunk again.

Walking the frames is most of the cost when a chunk differs in many rows (every row of it
is walked, on one side at least). :class:`LearnedSkip` walks rows of the field lengths it
has seen with one regular-expression match, in C; other rows go through a walk that
:func:`row_skipper` generates for the table's field sizes.

Only keys whose binary form is decoded here (integers, text, uuid) take this path; for
others :func:`key_reader` returns ``None`` and the chunk is narrowed by splitting.
"""

from __future__ import annotations

import re
import struct
import sys
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


#: Bytes of each fixed-size type's binary send form, as the field's length says when the
#: value is not NULL. Only a guess: the walk checks every length it reads.
SEND_SIZES: dict[str, int] = {
    **{"int2": 2, "int4": 4, "int8": 8, "oid": 4, "float4": 4, "float8": 8},
    **{"bool": 1, "char": 1, "date": 4, "time": 8, "timetz": 12, "timestamp": 8},
    **{"timestamptz": 8, "interval": 16, "uuid": 16, "macaddr": 6, "macaddr8": 8},
    **{"pg_lsn": 8, "point": 16},
}

#: ``skip(stream, row_start, limit)``: the start of the first row from ``row_start`` on that
#: does not end by ``limit`` (or the trailer's offset).
Skip = Callable[[bytes, int, int], int]

_PAST = 1 << 62  # "ends after any limit": where row_skipper's walk puts the trailer's end


def skip_rows(buf: bytes, pos: int, limit: int) -> int:
    """:data:`Skip` for rows of any layout (a call per row and a step per field)."""
    while (end := row_end(buf, pos)) is not None and end <= limit:
        pos = end
    return pos


def row_skipper(sizes: Sequence[int | None]) -> Skip:
    """A :data:`Skip` specialised to rows whose fields are ``sizes`` bytes (``None``:
    variable), several times faster than :func:`skip_rows` on such rows.

    The walk is generated code: one ``struct`` read per variable-size field reads every
    length up to it, fixed-size fields are stepped over by their size, and a row whose
    lengths are not what the sizes say (a NULL, another layout) is walked field by field
    instead. Every length is read and checked, so ``sizes`` only decides the speed.
    """
    segments: list[tuple[str, list[str], int, str | None]] = []  # format, checks, fixed, var
    fmt, checks, fixed = ">h", [f"l_n == {len(sizes)}"], 2
    names = ["l_n"]
    groups: list[list[str]] = []
    for i, size in enumerate(sizes):
        fmt += "i"
        names.append(f"l{i}")
        fixed += 4
        if size is None:
            checks.append(f"l{i} >= 0")
            segments.append((fmt, checks, fixed, f"l{i}"))
            groups.append(names)
            fmt, checks, fixed, names = ">", [], 0, []
        else:
            checks.append(f"l{i} == {size}")
            fmt += f"{size}x"
            fixed += size
    if names:
        segments.append((fmt, checks, fixed, None))
        groups.append(names)
    env: dict[str, object] = {"slow": _row_end_or_past, "StructError": struct.error}
    body = ["def skip(buf, pos, limit):", "    while True:", "        end = -1", "        try:"]
    body.append("            p = pos")
    indent = "            "
    for j, ((fmt, checks, fixed, var), names) in enumerate(zip(segments, groups, strict=True)):
        env[f"S{j}"] = struct.Struct(fmt).unpack_from
        body.append(f"{indent}{', '.join(names)}, = S{j}(buf, p)")
        body.append(f"{indent}if {' and '.join(checks)}:")
        indent += "    "
        body.append(f"{indent}p += {fixed}" + (f" + {var}" if var else ""))
    body.append(f"{indent}end = p")
    body += [
        # a read past the end: the trailer, or a short last row; slow() tells which
        "        except StructError:",
        "            pass",
        "        if end < 0:",
        "            end = slow(buf, pos)",
        "        if end > limit:",
        "            return pos",
        "        pos = end",
    ]
    exec(compile("\n".join(body), "<row_skipper>", "exec"), env)
    return cast("Skip", env["skip"])


def _row_end_or_past(buf: bytes, pos: int) -> int:
    end = row_end(buf, pos)
    return _PAST if end is None else end


#: Most lengths of one field a :class:`LearnedSkip` puts in its pattern: a table whose
#: fields take more (free text) is walked by the generated walk alone.
MAX_LENGTHS = 24
_POSSESSIVE = b"+" if sys.version_info >= (3, 11) else b""  # no backtracking state


class LearnedSkip:
    """A :data:`Skip` that walks rows of the field lengths it has seen with one regular
    expression match, and learns the lengths of the other rows from ``walk``.

    The pattern is the binary row grammar restricted to the lengths seen: for each field,
    the alternatives "this 4-byte length, then exactly that many bytes" (and NULL's -1),
    nested by the length's leading bytes so that a wrong alternative fails on its first
    byte. Each alternative consumes exactly one field as framed in the stream, so a match
    from a row start ends at a row start: rows it does not match are left to ``walk``.
    A field with more than :data:`MAX_LENGTHS` lengths ends the learning (the pattern
    would be slower than ``walk``), as does a row with another field count.
    """

    def __init__(self, fields: int, walk: Skip) -> None:
        self.fields = fields
        self.walk = walk
        self.lengths: list[set[int]] = [set() for _ in range(fields)]
        self.pattern: re.Pattern[bytes] | None = None
        self.learning = True

    def __call__(self, buf: bytes, pos: int, limit: int) -> int:
        while self.learning:
            if self.pattern is not None:
                match = self.pattern.match(buf, pos, limit)
                assert match is not None  # the pattern matches the empty string
                pos = match.end()
            # the row at ``pos`` has lengths not seen yet, ends past ``limit`` or is the trailer
            end = row_end(buf, pos)
            if end is None or end > limit:
                return pos
            self._learn(buf, pos)
            pos = end
        return self.walk(buf, pos, limit)

    def _learn(self, buf: bytes, pos: int) -> None:
        (count,) = _I16(buf, pos)
        if count != self.fields:
            self.learning = False
            return
        pos += 2
        for seen in self.lengths:
            (size,) = _I32(buf, pos)
            pos += 4 + max(size, 0)
            seen.add(max(size, -1))
            if len(seen) > MAX_LENGTHS:
                self.learning = False
                return
        row = re.escape(struct.pack(">h", self.fields)) + b"".join(map(_field, self.lengths))
        self.pattern = re.compile(b"(?:" + row + b")*" + _POSSESSIVE, re.DOTALL)


def _field(lengths: set[int]) -> bytes:
    """The pattern of one field whose length is one of ``lengths`` (-1: NULL)."""
    by_lead: dict[bytes, list[bytes]] = {}
    for size in sorted(lengths):
        framed = struct.pack(">i", size)
        data = b".{%d}" % size if size > 0 else b""
        by_lead.setdefault(framed[:3], []).append(re.escape(framed[3:]) + data)
    return (
        b"(?:"
        + b"|".join(
            re.escape(lead) + b"(?:" + b"|".join(alts) + b")" for lead, alts in by_lead.items()
        )
        + b")"
    )


_BLOCK = 4096


def _first_difference(x: bytes, y: bytes) -> int:
    """Index of the first byte where equally long, different ``x`` and ``y`` differ."""
    d = int.from_bytes(x, "big") ^ int.from_bytes(y, "big")
    return len(x) - (d.bit_length() + 7) // 8


def common_prefix(a: bytes, b: bytes, at_a: int = 0, at_b: int = 0) -> int:
    """Length of the longest common prefix of ``a[at_a:]`` and ``b[at_b:]``: block-wise
    (bytes comparison is memcmp), then the first differing byte of the block that
    differs from the XOR of the two blocks as integers."""
    n = max(min(len(a) - at_a, len(b) - at_b), 0)
    i = 0
    while i < n:
        step = min(_BLOCK, n - i)
        x, y = a[at_a + i : at_a + i + step], b[at_b + i : at_b + i + step]
        if x != y:
            return i + _first_difference(x, y)
        i += step
    return n


def common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the longest common suffix, at most ``limit``."""
    la, lb = len(a), len(b)
    n = max(0, min(limit, la, lb))
    i = 0
    while i < n:
        step = min(_BLOCK, n - i)
        x, y = a[la - i - step : la - i], b[lb - i - step : lb - i]
        if x != y:
            d = int.from_bytes(x, "big") ^ int.from_bytes(y, "big")
            return i + ((d & -d).bit_length() - 1) // 8
        i += step
    return n


def locate_chunk(
    src: object, tgt: object, key_of: KeyOf, skip: Skip = skip_rows
) -> list[Key] | None:
    """:func:`differing_keys` of the streams two ``copy`` digests carry, or ``None`` when
    either carries none. A stream is used only if it still hashes to its digest."""
    if not (isinstance(src, ChunkDigest) and isinstance(tgt, ChunkDigest)):
        return None
    if not (src.stream and tgt.stream):
        return None
    a, b = b"".join(src.stream), b"".join(tgt.stream)
    if xxhash.xxh3_128_intdigest(a) != src.total or xxhash.xxh3_128_intdigest(b) != tgt.total:
        return None
    return differing_keys(a, b, key_of, skip)


def differing_keys(
    src: bytes, tgt: bytes, key_of: KeyOf, skip: Skip = skip_rows
) -> list[Key] | None:
    """Keys of the rows that differ between two key-ordered COPY streams of unique keys
    (in one side only, or in both with other bytes); ``None`` when the streams cannot be
    read as binary COPY. ``skip`` walks the rows of identical stretches.

    No differing row can be missed, whatever the key order: every row is either inside a
    stretch of bytes both sides hold at aligned row starts (the same row on both sides)
    or returned. The key order only keeps the merge in step, so that rows present on both
    sides are paired rather than returned as well.
    """
    try:
        return _differing_keys(src, tgt, key_of, skip)
    except (struct.error, MalformedCopy, UnicodeDecodeError, ValueError):
        return None


def _differing_keys(src: bytes, tgt: bytes, key_of: KeyOf, skip: Skip) -> list[Key]:
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
        # sides: walk their frames on one side only. (Once the condition above holds it
        # holds further on too: ``a - b`` stays the same along a stretch.)
        end_same = skip(src, a, a + common_prefix(src, tgt, a, b))
        a, b = end_same, b + (end_same - a)
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
