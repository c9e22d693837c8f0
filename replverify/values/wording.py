"""Counted nouns in messages and reports: one spelling of "1 row" / "2 rows" everywhere."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``1 row``, ``2 rows``, ``1,000 rows``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
