"""Journal lines are decoded by msgspec (fast), with the standard library deciding every
line msgspec refuses: the same values, the same errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from replverify.journal import format as journal_format


def test_fast_decoder_gives_the_same_values() -> None:
    line = b'{"a": 1.10, "b": 1e400, "c": -0.0, "d": 123456789012345678901234567890, "a2": [2.5]}'
    got = journal_format._loads(line)
    assert got == {
        "a": Decimal("1.10"),
        "b": Decimal("1E+400"),
        "c": Decimal("-0.0"),
        "d": 123456789012345678901234567890,
        "a2": [Decimal("2.5")],
    }
    assert str(got["a"]) == "1.10"  # exact, the scale kept
    assert journal_format._FAST_DECODER.decode(line) == got


def test_refused_lines_fall_back_to_the_standard_library() -> None:
    assert journal_format._loads(b'{"x": "\\ud800"}') == {"x": "\ud800"}  # msgspec refuses it
    with pytest.raises(ValueError, match="NaN is not valid JSON"):
        journal_format._loads(b'{"x": NaN}')
    with pytest.raises(UnicodeDecodeError):
        journal_format._loads(b'{"x": "\xff"}')
