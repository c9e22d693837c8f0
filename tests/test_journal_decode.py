"""Journal lines are decoded by msgspec (fast), with the standard library deciding every
line msgspec refuses: the same values, the same errors."""

from __future__ import annotations

import dataclasses
import pickle
from decimal import Decimal

import pytest

from replverify.journal import format as journal_format
from replverify.types import TableRef


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


def test_table_names_give_one_table_ref_each() -> None:
    ref = journal_format._table("orders")
    assert ref is journal_format._table("orders")
    assert ref == journal_format._table("public.orders") == TableRef("public", "orders")
    with pytest.raises(journal_format._Bad, match="bad table name"):
        journal_format._table("a.b.c")
    with pytest.raises(journal_format._Bad, match="bad table name"):
        journal_format._table("a.b.c")  # refusals are not cached


def test_table_ref_hash_equality_and_order_are_the_fields() -> None:
    a, b = TableRef("public", "orders"), TableRef("public", "orders")
    assert a == b and hash(a) == hash(b) == hash(("public", "orders"))
    assert TableRef("a", "z") < TableRef("b", "a") and {a: 1}[b] == 1
    copy = pickle.loads(pickle.dumps(a))  # str hashes differ between processes
    assert copy == a and hash(copy) == hash(a)
    assert dataclasses.asdict(a) == {"schema": "public", "name": "orders"}
    assert dataclasses.replace(a, name="x") == TableRef("public", "x")
    assert hash(dataclasses.replace(a, name="x")) == hash(("public", "x"))
