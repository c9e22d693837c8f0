"""Row and chunk digests (xxh3-128), and 64-bit folding of server-side sums.

A chunk digest is the row count plus the *sum* of the row digests modulo 2**128. A sum is
order-independent (rows may arrive in any order) and, unlike XOR, two equal rows do not
cancel each other out: ``{r, r}`` and ``{}`` have different totals (and different counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from decimal import Decimal

import xxhash

__all__ = [
    "DIGEST_BITS",
    "ChunkDigest",
    "collision_probability",
    "fold64",
    "of_rows",
    "row_digest",
    "to_signed64",
    "to_unsigned64",
]

DIGEST_BITS = 128
_MOD = 1 << DIGEST_BITS
_MASK = _MOD - 1
_MASK64 = (1 << 64) - 1


def row_digest(encoded: bytes) -> int:
    """The xxh3-128 digest of one encoded row, as an unsigned 128-bit int."""
    return xxhash.xxh3_128_intdigest(encoded)


@dataclass(frozen=True)
class ChunkDigest:
    """``count`` rows whose digests sum to ``total`` (mod 2**128).

    A ``copy`` digest is a hash of the chunk's COPY stream instead, and may carry that
    stream (``stream``, in the pieces it arrived in) so that a mismatch can be located
    without reading the chunk again. The stream never takes part in equality.
    """

    count: int
    total: int
    stream: tuple[bytes | bytearray, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def empty(cls) -> ChunkDigest:
        return cls(0, 0)

    def add(self, digest: int) -> ChunkDigest:
        """This chunk with one more row of digest ``digest``."""
        return ChunkDigest(self.count + 1, (self.total + digest) & _MASK)

    def __add__(self, other: object) -> ChunkDigest:
        if not isinstance(other, ChunkDigest):
            return NotImplemented
        return ChunkDigest(self.count + other.count, (self.total + other.total) & _MASK)

    @classmethod
    def of_rows(cls, encoded_rows: Iterable[bytes]) -> ChunkDigest:
        """The digest of the encoded rows (any order)."""
        digest = xxhash.xxh3_128_intdigest
        if isinstance(encoded_rows, Sized):
            return cls(len(encoded_rows), sum(map(digest, encoded_rows)) & _MASK)
        count = 0
        total = 0
        for row in encoded_rows:
            total += digest(row)
            count += 1
        return cls(count, total & _MASK)

    @classmethod
    def of_digests(cls, digests: Iterable[int]) -> ChunkDigest:
        """The digest of rows whose :func:`row_digest` values are ``digests``."""
        count = 0
        total = 0
        for d in digests:
            total += d
            count += 1
        return cls(count, total & _MASK)

    @property
    def hex(self) -> str:
        """``total`` as 32 hex digits (for reports and journals)."""
        return f"{self.total:032x}"


def of_rows(encoded_rows: Iterable[bytes]) -> ChunkDigest:
    """Module-level alias of :meth:`ChunkDigest.of_rows`."""
    return ChunkDigest.of_rows(encoded_rows)


def collision_probability(differences: int, bits: int = DIGEST_BITS) -> float:
    """The chance that at least one of ``differences`` differing chunks digests equal on
    both sides anyway, so the difference goes unseen: about ``differences * 2**-bits``
    (each differing chunk's sums agree with probability 2**-bits)."""
    if differences < 0:
        raise ValueError("differences must be >= 0")
    if differences == 0:
        return 0.0
    # 1 - (1 - 2**-bits) ** differences, computed without cancellation.
    return -math.expm1(differences * math.log1p(-math.ldexp(1.0, -bits)))


def to_unsigned64(n: int | Decimal) -> int:
    """``n`` modulo 2**64: a signed bigint (or a huge/negative sum of them) as an unsigned
    64-bit value. Takes a :class:`~decimal.Decimal` too (a ``numeric`` sum), if integral."""
    if isinstance(n, Decimal):
        if not n.is_finite() or n != n.to_integral_value():
            raise ValueError(f"not an integer: {n}")
        n = int(n)
    return n & _MASK64


def to_signed64(n: int | Decimal) -> int:
    """``n`` modulo 2**64 as a signed 64-bit value (PostgreSQL ``bigint`` range)."""
    u = to_unsigned64(n)
    return u - (1 << 64) if u >= 1 << 63 else u


def fold64(values: Iterable[int | Decimal]) -> int:
    """The sum of ``values`` (e.g. signed ``hashtextextended`` results) modulo 2**64."""
    return to_unsigned64(sum(to_unsigned64(v) for v in values))
