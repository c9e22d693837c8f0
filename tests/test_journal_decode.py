"""Journal lines are decoded by msgspec (fast), with the standard library deciding every
line msgspec refuses: the same values, the same errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from replverify.journal import records


def test_fast_decoder_gives_the_same_values() -> None:
    line = b'{"a": 1.10, "b": 1e400, "c": -0.0, "d": 123456789012345678901234567890, "a2": [2.5]}'
    got = records._loads(line)
    assert got == {
        "a": Decimal("1.10"),
        "b": Decimal("1E+400"),
        "c": Decimal("-0.0"),
        "d": 123456789012345678901234567890,
        "a2": [Decimal("2.5")],
    }
    assert str(got["a"]) == "1.10"  # exact, the scale kept
    assert records._FAST_DECODER.decode(line) == got


def test_refused_lines_fall_back_to_the_standard_library() -> None:
    assert records._loads(b'{"x": "\\ud800"}') == {"x": "\ud800"}  # msgspec refuses it
    with pytest.raises(ValueError, match="NaN is not valid JSON"):
        records._loads(b'{"x": NaN}')
    with pytest.raises(UnicodeDecodeError):
        records._loads(b'{"x": "\xff"}')
