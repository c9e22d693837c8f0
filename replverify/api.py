"""The documented Python API: async entry points behind the CLI.

>>> report = await diff("postgresql://app@db1/shop", "postgresql://app@db2/shop",
...                     DiffOptions(tables=("public.orders",)))
>>> report.status
'consistent'

A facade: the diff orchestration lives in :mod:`replverify.diff.run`; the names below
are re-exported here, where the documentation imports them from.
"""

from __future__ import annotations

from replverify.diff.run import (
    DiffOptions,
    DigestChoice,
    choose_digest,
    diff,
)
from replverify.types import DiffReport, TableRef, TableResult

__all__ = [
    "DiffOptions",
    "DiffReport",
    "DigestChoice",
    "TableRef",
    "TableResult",
    "choose_digest",
    "diff",
]
