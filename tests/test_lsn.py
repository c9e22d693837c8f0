"""LSN text form: parse, format and subtract exactly as PostgreSQL's pg_lsn does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replverify.values.lsn import MAX_LSN, LsnError, format_lsn, lsn_diff, parse_lsn, to_lsn


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/3000148", 0x3000148),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("FFFFFFFF/FFFFFFFF", MAX_LSN),
        ("1/0", 1 << 32),
    ],
)
def test_parse_and_format_known_values(text, value):
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


def test_parse_accepts_lower_case_and_leading_zeros_formats_canonically():
    assert parse_lsn("16/b374d848") == parse_lsn("16/B374D848")
    assert format_lsn(parse_lsn("00000000/00030001")) == "0/30001"
    assert format_lsn(parse_lsn("00000016/0B374D84")) == "16/B374D84"


@given(st.integers(min_value=0, max_value=MAX_LSN))
def test_round_trip(value):
    text = format_lsn(value)
    assert parse_lsn(text) == value
    assert text == text.upper() and text.count("/") == 1


@given(st.integers(0, MAX_LSN), st.integers(0, MAX_LSN))
def test_diff_is_subtraction_in_either_form(a, b):
    assert lsn_diff(a, b) == a - b
    assert lsn_diff(format_lsn(a), format_lsn(b)) == a - b
    assert lsn_diff(format_lsn(a), b) == -lsn_diff(b, format_lsn(a))


def test_diff_across_the_32_bit_boundary():
    assert lsn_diff("1/0", "0/FFFFFFFF") == 1
    assert lsn_diff("0/3000000", "0/3000148") == -0x148


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "0/",
        "/0",
        "1/2/3",
        "0x1/2",
        "1/0x2",
        " 0/1",
        "0/1 ",
        "0/1\n",
        "123456789/0",
        "0/123456789",
        "g/0",
        "+1/2",
        "-1/2",
        "1_0/2",
        "1 /2",
        "٣/1",  # a non-ASCII digit that int() would accept
    ],
)
def test_bad_text_is_refused(text):
    with pytest.raises(LsnError, match="not an LSN"):
        parse_lsn(text)


@pytest.mark.parametrize("value", [-1, MAX_LSN + 1, 2**80])
def test_out_of_range_integers_are_refused(value):
    with pytest.raises(LsnError, match="out of range"):
        format_lsn(value)
    with pytest.raises(LsnError):
        to_lsn(value)


@pytest.mark.parametrize("value", [None, 1.5, b"0/1", True])
def test_wrong_types_are_refused(value):
    with pytest.raises(LsnError):
        to_lsn(value)


def test_lsn_error_is_a_value_error():
    assert issubclass(LsnError, ValueError)
    with pytest.raises(ValueError):
        parse_lsn("nope")
