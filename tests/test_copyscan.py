"""Locating differing rows inside two binary COPY streams (pure; hypothesis)."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replverify.diff.copyscan import (
    MAX_LENGTHS,
    SIGNATURE,
    LearnedSkip,
    body_start,
    common_prefix,
    common_suffix,
    differing_keys,
    key_reader,
    locate_chunk,
    row_skipper,
    skip_rows,
)
from replverify.diff.hashing import ChunkDigest

Field = bytes | None


def stream(rows: list[list[Field]]) -> bytes:
    """A binary COPY stream of ``rows`` as PostgreSQL writes it."""
    out = [SIGNATURE, struct.pack(">ii", 0, 0)]
    for row in rows:
        out.append(struct.pack(">h", len(row)))
        for f in row:
            out.append(struct.pack(">i", -1) if f is None else struct.pack(">i", len(f)) + f)
    out.append(struct.pack(">h", -1))
    return b"".join(out)


def row(key: int, payload: list[Field]) -> list[Field]:
    return [struct.pack(">q", key), *payload]


KEY_OF = key_reader([0], ["int8"])
assert KEY_OF is not None

payloads = st.lists(st.one_of(st.none(), st.binary(max_size=12)), min_size=0, max_size=3)
tables = st.dictionaries(st.integers(0, 400), payloads, max_size=60)


def as_stream(table: dict[int, list[Field]]) -> bytes:
    return stream([row(k, table[k]) for k in sorted(table)])


@settings(max_examples=500, deadline=None)
@given(tables, st.data())
def test_exactly_the_differing_keys_are_found(base, data):
    other = dict(base)
    keys = sorted(base)
    for k in data.draw(st.lists(st.sampled_from(keys), max_size=6) if keys else st.just([])):
        if data.draw(st.booleans()):
            other.pop(k, None)
        else:
            other[k] = data.draw(payloads)
    for k in data.draw(st.lists(st.integers(0, 400), max_size=4)):
        other.setdefault(k, data.draw(payloads))
    expected = sorted(
        k for k in base.keys() | other.keys() if base.get(k, "gone") != other.get(k, "gone")
    )
    found = differing_keys(as_stream(base), as_stream(other), KEY_OF)
    assert found == [(k,) for k in expected]


def test_one_changed_row_in_the_middle():
    base = {k: [b"v%d" % k, None] for k in range(1000)}
    other = {**base, 500: [b"changed", None]}
    assert differing_keys(as_stream(base), as_stream(other), KEY_OF) == [(500,)]


def test_rows_missing_at_either_end_and_everything_different():
    base = {k: [b"x"] for k in range(10)}
    assert differing_keys(
        as_stream(base), as_stream({k: base[k] for k in range(1, 10)}), KEY_OF
    ) == [(0,)]
    assert differing_keys(as_stream(base), as_stream({**base, 99: [b"y"]}), KEY_OF) == [(99,)]
    assert differing_keys(as_stream(base), as_stream({}), KEY_OF) == [(k,) for k in range(10)]
    other = {k: [b"y"] for k in range(10)}
    assert differing_keys(as_stream(base), as_stream(other), KEY_OF) == [(k,) for k in range(10)]
    assert differing_keys(as_stream(base), as_stream(base), KEY_OF) == []


def test_negative_keys_merge_in_numeric_order():
    base = {k: [b"x"] for k in range(-5, 5)}
    other = {k: v for k, v in base.items() if k != -3}
    assert differing_keys(as_stream(base), as_stream(other), KEY_OF) == [(-3,)]


def test_streams_that_are_not_binary_copy_give_none():
    assert differing_keys(b"abc", b"abd", KEY_OF) is None
    good = as_stream({1: [b"a"], 2: [b"b"]})
    assert differing_keys(good, good[:-9], KEY_OF) is None  # torn


def test_key_types_read_from_binary():
    text_uuid = key_reader([1, 0], ["text", "uuid"])
    assert text_uuid is not None
    u = uuid.uuid4()
    s = stream([[u.bytes, "Zürich".encode()]])
    assert text_uuid(s, 19) == ("Zürich", u)
    assert key_reader([0], ["numeric"]) is None
    assert key_reader([], []) is None


def test_a_stream_that_does_not_hash_to_its_digest_is_not_used():
    import xxhash

    a, b = as_stream({1: [b"a"], 2: [b"b"]}), as_stream({1: [b"a"], 2: [b"c"]})
    da = ChunkDigest(2, xxhash.xxh3_128_intdigest(a), (a[:7], a[7:]))
    db = ChunkDigest(2, xxhash.xxh3_128_intdigest(b), (b,))
    assert locate_chunk(da, db, KEY_OF) == [(2,)]
    assert locate_chunk(ChunkDigest(2, 0, (a,)), db, KEY_OF) is None
    assert locate_chunk(ChunkDigest(2, da.total), db, KEY_OF) is None


@given(st.binary(max_size=300), st.binary(max_size=300), st.integers(0, 400))
def test_common_prefix_and_suffix(a, b, limit):
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    assert common_prefix(a, b) == p
    s = 0
    while s < min(len(a), len(b), limit) and a[-1 - s] == b[-1 - s]:
        s += 1
    assert common_suffix(a, b, limit) == s


@pytest.mark.parametrize("size", [4095, 4096, 4097, 3 * 4096 + 5])
def test_prefix_and_suffix_across_block_edges(size):
    a = bytes(range(256)) * (size // 256 + 1)
    a = a[:size]
    for at in (0, size // 2, size - 1):
        b = bytearray(a)
        b[at] ^= 0xFF
        assert common_prefix(a, bytes(b)) == at
        assert common_suffix(a, bytes(b), size) == size - at - 1


@settings(max_examples=200, deadline=None)
@given(tables, st.data())
def test_no_difference_is_missed_even_if_the_key_order_were_wrong(base, data):
    """Keys decoded in the opposite order (as a collation the merge does not know would
    give) only cost extra keys; every differing one is still found."""
    backwards = key_reader([0], ["int8"])
    assert backwards is not None

    def key_of(buf: bytes, start: int):
        return (-backwards(buf, start)[0],)

    other = {k: v for k, v in base.items() if data.draw(st.booleans())}
    for k in data.draw(st.lists(st.integers(0, 400), max_size=4)):
        other[k] = data.draw(payloads)
    differing = {
        (-k,) for k in base.keys() | other.keys() if base.get(k, "gone") != other.get(k, "gone")
    }
    found = differing_keys(as_stream(base), as_stream(other), key_of)
    assert found is not None and differing <= set(found)


sizes_hints = st.lists(st.one_of(st.none(), st.integers(0, 12)), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_specialised_walk_stops_where_the_plain_walk_does(data):
    """Whatever the size hints say (right, wrong, NULLs in fixed-size fields, rows of
    another width), the generated walk ends at the same row start as the plain one."""
    hints = data.draw(sizes_hints)
    field = st.one_of(
        st.none(),
        st.binary(max_size=12),
        *(st.binary(min_size=h, max_size=h) for h in hints if h is not None),
    )
    width = data.draw(st.sampled_from([len(hints), len(hints), len(hints) + 1]))
    rows = data.draw(st.lists(st.lists(field, min_size=width, max_size=width), max_size=30))
    buf = stream(rows)
    start = body_start(buf)
    skip = row_skipper(hints)
    for limit in {start, len(buf), len(buf) - 2, data.draw(st.integers(start, len(buf)))}:
        assert skip(buf, start, limit) == skip_rows(buf, start, limit)


def test_a_specialised_walk_of_a_torn_stream_fails_like_the_plain_one():
    buf = stream([[b"12345678", b"ab"], [b"12345678", None]])
    skip = row_skipper([8, None])
    torn = buf[:-5]
    with pytest.raises(struct.error):
        skip_rows(torn, 19, len(torn))
    with pytest.raises(struct.error):
        skip(torn, 19, len(torn))


@settings(max_examples=300, deadline=None)
@given(tables, st.data())
def test_the_differing_keys_are_the_same_with_a_specialised_walk(base, data):
    other = {k: v for k, v in base.items() if data.draw(st.booleans())}
    for k in data.draw(st.lists(st.integers(0, 400), max_size=4)):
        other[k] = data.draw(payloads)
    skip = row_skipper([8, *data.draw(st.lists(st.one_of(st.none(), st.integers(0, 3))))])
    a, b = as_stream(base), as_stream(other)
    expected = differing_keys(a, b, KEY_OF)
    assert differing_keys(a, b, KEY_OF, skip) == expected
    assert differing_keys(a, b, KEY_OF, LearnedSkip(2, skip)) == expected


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_learned_walk_stops_where_the_plain_walk_does(data):
    """One learned walk over several streams (it keeps what it learned), rows of varying
    lengths, NULLs and widths: it always ends at the plain walk's row start."""
    width = data.draw(st.integers(1, 4))
    field = st.one_of(st.none(), st.binary(max_size=6))
    walk = LearnedSkip(width, skip_rows)
    for _ in range(3):
        widths = st.sampled_from([width, width, width, width + 1])
        rows = data.draw(
            st.lists(widths.flatmap(lambda w: st.lists(field, min_size=w, max_size=w)), max_size=25)
        )
        buf = stream(rows)
        start = body_start(buf)
        for limit in {len(buf), data.draw(st.integers(start, len(buf)))}:
            assert walk(buf, start, limit) == skip_rows(buf, start, limit)


def test_a_learned_walk_gives_up_on_fields_of_many_lengths():
    walk = LearnedSkip(2, skip_rows)
    few = stream([[struct.pack(">q", i), b"x" * (i % 3)] for i in range(50)])
    assert walk(few, 19, len(few)) == len(few) - 2
    assert walk.learning and walk.pattern is not None
    many = stream([[struct.pack(">q", i), b"x" * i] for i in range(MAX_LENGTHS + 5)])
    assert walk(many, 19, len(many)) == len(many) - 2
    assert not walk.learning
    assert walk(few, 19, len(few)) == len(few) - 2


def test_a_learned_walk_of_a_torn_stream_fails():
    buf = stream([[b"12345678", b"ab"]] * 3)
    walk = LearnedSkip(2, skip_rows)
    assert walk(buf, 19, len(buf)) == len(buf) - 2
    with pytest.raises(struct.error):
        walk(buf[:-5], 19, len(buf) - 5)
