"""Laws of replverify.diff.hashing: sums (not XOR) of xxh3-128 row digests."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from replverify.diff.hashing import (
    DIGEST_BITS,
    ChunkDigest,
    collision_probability,
    fold64,
    of_rows,
    row_digest,
    to_signed64,
    to_unsigned64,
)

FAST = settings(max_examples=150, deadline=None)

rows = st.lists(st.binary(max_size=8), max_size=12)
digests = st.integers(0, 2**128 - 1)


def test_row_digest_is_xxh3_128() -> None:
    assert row_digest(b"abc") == xxhash.xxh3_128_intdigest(b"abc")
    assert 0 <= row_digest(b"") < 2**DIGEST_BITS
    assert row_digest(b"a") != row_digest(b"b")


def test_duplicates_do_not_cancel() -> None:
    row = b"same row"
    twice = ChunkDigest.of_rows([row, row])
    assert twice != ChunkDigest.empty()
    assert twice.total != 0  # XOR would give 0 here
    assert twice.count == 2
    assert ChunkDigest.of_rows([row, row, b"x"]) != ChunkDigest.of_rows([b"x"])


@FAST
@given(rows, st.binary(max_size=8))
def test_duplicate_pair_changes_total(base: list[bytes], row: bytes) -> None:
    # digests are far below 2**127, so two copies never wrap the sum to the same total
    assert ChunkDigest.of_rows([*base, row, row]).total != ChunkDigest.of_rows(base).total


@FAST
@given(rows, st.randoms(use_true_random=False))
def test_order_independent(encoded: list[bytes], rnd: random.Random) -> None:
    shuffled = list(encoded)
    rnd.shuffle(shuffled)
    assert ChunkDigest.of_rows(encoded) == ChunkDigest.of_rows(shuffled)
    assert ChunkDigest.of_rows(iter(shuffled)) == of_rows(encoded)


@FAST
@given(rows)
def test_add_matches_of_rows(encoded: list[bytes]) -> None:
    chunk = ChunkDigest.empty()
    for row in encoded:
        chunk = chunk.add(row_digest(row))
    assert chunk == ChunkDigest.of_rows(encoded)
    assert chunk == ChunkDigest.of_digests(row_digest(r) for r in encoded)
    assert chunk.count == len(encoded)


@FAST
@given(rows, rows)
def test_combine_is_concatenation(a: list[bytes], b: list[bytes]) -> None:
    assert ChunkDigest.of_rows(a) + ChunkDigest.of_rows(b) == ChunkDigest.of_rows(a + b)


@FAST
@given(
    st.tuples(st.integers(0, 10**6), digests),
    st.tuples(st.integers(0, 10**6), digests),
    st.tuples(st.integers(0, 10**6), digests),
)
def test_combine_associative_commutative_with_identity(
    a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]
) -> None:
    x, y, z = ChunkDigest(*a), ChunkDigest(*b), ChunkDigest(*c)
    assert (x + y) + z == x + (y + z)
    assert x + y == y + x
    assert x + ChunkDigest.empty() == x
    assert 0 <= (x + y).total < 2**128


def test_sum_wraps_modulo_2_128() -> None:
    top = ChunkDigest(1, 2**128 - 1)
    assert top.add(1) == ChunkDigest(2, 0)
    assert top + top == ChunkDigest(2, 2**128 - 2)


def test_count_matters() -> None:
    assert ChunkDigest(1, 5) != ChunkDigest(2, 5)
    assert ChunkDigest.of_rows([]) == ChunkDigest.empty() == ChunkDigest(0, 0)
    assert ChunkDigest.of_rows([b""]) != ChunkDigest.empty()


def test_hex() -> None:
    assert ChunkDigest(1, 255).hex == "0" * 30 + "ff"
    assert len(ChunkDigest.of_rows([b"x"]).hex) == 32


def test_add_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        _ = ChunkDigest(0, 0) + 1


def test_collision_probability() -> None:
    assert collision_probability(0) == 0.0
    assert collision_probability(1) == pytest.approx(2.0**-128)
    assert collision_probability(10**6) == pytest.approx(10**6 * 2.0**-128)
    assert collision_probability(3, bits=1) == pytest.approx(1 - 0.5**3)
    with pytest.raises(ValueError):
        collision_probability(-1)


@FAST
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20))
def test_fold64_sums_signed_bigints(values: list[int]) -> None:
    expected = sum(values) % 2**64
    assert fold64(values) == expected
    assert to_unsigned64(sum(values)) == expected  # what the server's numeric sum gives
    assert to_unsigned64(Decimal(sum(values))) == expected
    assert -(2**63) <= to_signed64(sum(values)) < 2**63
    assert to_signed64(sum(values)) % 2**64 == expected


@FAST
@given(st.integers())
def test_to_unsigned64(n: int) -> None:
    u = to_unsigned64(n)
    assert 0 <= u < 2**64
    assert (u - n) % 2**64 == 0


def test_to_unsigned64_examples() -> None:
    assert to_unsigned64(-1) == 2**64 - 1
    assert to_unsigned64(2**64) == 0
    assert to_unsigned64(-(2**63)) == 2**63
    assert to_signed64(2**63) == -(2**63)
    assert to_signed64(-1) == -1
    assert fold64([Decimal(-1), 1, 2**63 - 1, 2**63 - 1]) == 2**64 - 2
    with pytest.raises(ValueError):
        to_unsigned64(Decimal("1.5"))
    with pytest.raises(ValueError):
        to_unsigned64(Decimal("NaN"))
