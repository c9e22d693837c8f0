"""Key-range chunk planning (pure).

A chunk is a half-open key range ``(lo, hi]``; ``None`` means unbounded. Boundaries are
computed once, from one side, in the server's key order, and then applied to both sides,
so a row missing on one side never shifts the chunks of the other (``LIMIT n`` keysets
would drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from replverify.types import Key


@dataclass(frozen=True)
class KeyRange:
    """Rows with ``lo < key <= hi`` (a ``None`` bound is open)."""

    lo: Key | None = None
    hi: Key | None = None

    @property
    def is_whole(self) -> bool:
        return self.lo is None and self.hi is None

    def split(self, boundaries: Sequence[Key]) -> list[KeyRange]:
        """Cut this range at ``boundaries`` (ascending, inside the range)."""
        return ranges_between(boundaries, self.lo, self.hi)

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else _fmt(self.lo)
        hi = "+inf" if self.hi is None else _fmt(self.hi)
        return f"({lo}, {hi}]"


def _fmt(key: Key) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)


def ranges_between(
    boundaries: Sequence[Key], lo: Key | None = None, hi: Key | None = None
) -> list[KeyRange]:
    """Consecutive ranges ``(lo, b1], (b1, b2], …, (bn, hi]`` covering ``(lo, hi]`` exactly.

    Boundaries equal to their neighbour or to ``lo``/``hi`` are dropped, so the result has
    no empty-by-construction range and never repeats the input range unchanged when a
    real cut exists.
    """
    cuts: list[Key] = []
    for b in boundaries:
        if (cuts and b == cuts[-1]) or b in (lo, hi):
            continue
        cuts.append(b)
    out: list[KeyRange] = []
    prev = lo
    for b in cuts:
        out.append(KeyRange(prev, b))
        prev = b
    out.append(KeyRange(prev, hi))
    return out


def split_step(rows: int, parts: int) -> int:
    """Rows per part so that ``rows`` splits into about ``parts`` parts (at least 1)."""
    if rows <= 0 or parts <= 1:
        return max(rows, 1)
    return max(1, -(-rows // parts))
