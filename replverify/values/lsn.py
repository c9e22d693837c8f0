"""PostgreSQL WAL positions (LSNs): parse, format and subtract, with no I/O.

An LSN is a 64-bit byte position in the write-ahead log, printed by PostgreSQL as two
32-bit halves in upper-case hex without padding: ``16/B374D848``. Here an LSN is a plain
``int`` (asyncpg decodes ``pg_lsn`` the same way), so distances are subtraction::

    >>> parse_lsn("16/B374D848") - parse_lsn("16/B374D800")
    72
    >>> format_lsn(parse_lsn("0/3000148"))
    '0/3000148'

Queries should let PostgreSQL turn LSNs into integers
(``pg_wal_lsn_diff(lsn, '0/0')``) so one fixed-shape query gives a whole lag sample; this
module is for the text form users type and read.
"""

from __future__ import annotations

import re

__all__ = ["MAX_LSN", "LsnError", "format_lsn", "lsn_diff", "parse_lsn", "to_lsn"]

#: The largest LSN, ``FFFFFFFF/FFFFFFFF``.
MAX_LSN = (1 << 64) - 1

# As pg_lsn_in: 1 to 8 hex digits, a slash, 1 to 8 hex digits, nothing else.
_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class LsnError(ValueError):
    """Text that is not an LSN, or an integer outside ``0..MAX_LSN``."""


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` → its byte position; :class:`LsnError` for anything else.

    Accepts exactly what PostgreSQL's ``pg_lsn`` input accepts (hex digits in either
    case, no spaces, no ``0x``).
    """
    if not isinstance(text, str):
        raise LsnError(f"an LSN is text like '0/3000148', not {type(text).__name__}")
    m = _LSN_RE.fullmatch(text)
    if m is None:
        raise LsnError(f"not an LSN: {text!r} (expected two hex numbers like '0/3000148')")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(value: int) -> str:
    """A byte position → PostgreSQL's text form (``'0/3000148'``)."""
    _check(value)
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def to_lsn(value: int | str) -> int:
    """An LSN given as text or as an integer → the integer (checked)."""
    if isinstance(value, str):
        return parse_lsn(value)
    _check(value)
    return value


def lsn_diff(a: int | str, b: int | str) -> int:
    """Bytes from ``b`` to ``a`` (``a - b``, negative when ``a`` is behind), as
    ``pg_wal_lsn_diff(a, b)``."""
    return to_lsn(a) - to_lsn(b)


def _check(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LsnError(f"an LSN is an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_LSN:
        raise LsnError(f"LSN out of range: {value} (0 to {MAX_LSN})")
