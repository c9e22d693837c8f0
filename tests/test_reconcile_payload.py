"""The JSON a PostgresTarget sends for a journal image (keys, post- and before-images):
written with orjson where it can, it must read as exactly the values the slower
``json_text`` writes, whatever the values. No database needed: no query is sent."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from replverify.db.catalog import TableInfo
from replverify.reconcile.targets import PostgresTarget, column_value, json_text
from replverify.types import Column, ColumnType, TableRef

T = TableRef("public", "t")
INFO = TableInfo(
    T,
    1,
    (
        Column("id", ColumnType("bigint", "int8"), True),
        Column("n", ColumnType("numeric(12,2)", "numeric")),
        Column("s", ColumnType("text", "text")),
        Column("j", ColumnType("jsonb", "jsonb")),
        Column("a", ColumnType("integer[]", "int4", kind="array")),
    ),
    ("id",),
    0,
)


def slow(image: dict[str, Any]) -> str:
    ctype = {c.name: c.type for c in INFO.columns}
    return (
        "{"
        + ",".join(
            f"{json.dumps(c)}:{json_text(column_value(v, ctype[c]))}" for c, v in image.items()
        )
        + "}"
    )


def read(text: str) -> object:
    return json.loads(text, parse_float=Decimal)


@pytest.mark.parametrize(
    "image",
    [
        {"id": 1, "n": Decimal("12.50"), "s": 'ü "q" \\ \n \t \x01 \u2028'},
        {"id": "42", "s": None, "a": [1, None, Decimal("2.0")]},
        {"id": 2**70, "s": "big"},  # beyond 64 bits: orjson refuses, json_text writes it
        {"id": 3, "j": {"x": Decimal("1.10"), "y": [True, None]}},  # exact json numbers
        {"id": 4, "j": '{"a": 1.50}'},  # json text
        {"id": 5, "s": "lone \ud800 surrogate"},
        {"id": 6, "n": True, "s": ""},
        # Decimals outside json columns go as their exact text, nested ones too
        {
            "id": 7,
            "n": Decimal("NaN"),
            "a": [Decimal("-0"), Decimal("1E+3"), {"k": Decimal("2.50")}],
        },
        {"id": 8, "n": Decimal("0.10"), "s": "x", "a": [1.5, None]},
    ],
)
def test_the_payload_reads_as_json_text_writes_it(image: dict[str, Any]) -> None:
    target = PostgresTarget(None, "t", {T: INFO})  # type: ignore[arg-type]
    got = target._payload(INFO, image)
    assert repr(read(got)) == repr(read(slow(image)))  # 1.10 stays 1.10, "2.50" "2.50"
