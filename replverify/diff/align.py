"""Line up the two sides' catalogs into what gets compared (pure).

Columns present on one side only, or with different types, are schema differences: they
are reported, and the remaining common columns are still compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from replverify.db.catalog import ServerInfo, TableInfo
from replverify.errors import UsageError
from replverify.types import Column, ColumnType, TableRef

BYTE_ORDER_COLLATIONS = frozenset({"C", "POSIX", "ucs_basic"})
BYTE_ORDER_LOCALES = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8"})
#: Types whose text output depends on a server setting we cannot pin everywhere; they are
#: hashed and compared through a cast that does not.
TEXT_CASTS = {"money": "numeric"}
#: Types whose binary send form was verified byte-identical between PostgreSQL 15 and 18
#: (tests/test_compare_versions.py runs both): between major versions these go into a
#: COPY digest as binary, others as their text (pinned settings), so that a changed
#: binary format cannot pass as a changed value; a chunk that then differs is settled by
#: decoded values.
BINARY_STABLE = frozenset(
    {
        *("int2", "int4", "int8", "oid", "bool", "char", "text", "varchar", "bpchar", "name"),
        *("numeric", "float4", "float8", "money", "bytea", "uuid", "json", "jsonb"),
        *("date", "time", "timetz", "timestamp", "timestamptz", "interval"),
        *("inet", "cidr", "macaddr", "bit", "varbit", "point", "line", "box", "tsvector"),
        *("hstore", "citext"),
        *("int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange"),
        *("int4multirange", "int8multirange", "nummultirange", "tsmultirange"),
        *("tstzmultirange", "datemultirange"),
    }
)
#: How a column goes into a binary COPY digest: ``binary`` (its send form), ``text`` (a
#: cast: arrays and composites, whose binary form embeds type OIDs that differ between
#: independently created servers, and types not verified identical across the major
#: versions compared).
CopyForm = Literal["binary", "text"]

KeyMode = Literal["primary key", "--key", "none"]


@dataclass(frozen=True)
class KeyColumn:
    name: str
    collate_c: bool  # order and compare with COLLATE "C" (both sides then agree)


@dataclass(frozen=True)
class TablePlan:
    """How one table is compared."""

    ref: TableRef
    key: tuple[KeyColumn, ...]
    key_mode: KeyMode
    columns: tuple[Column, ...]  # compared columns, source order (key columns included)
    schema_differences: tuple[str, ...]
    estimated_rows: int
    whole_row_text: bool  # ``t::text`` is exactly the compared columns on both sides
    #: per compared column, how it goes into a COPY digest (see :data:`CopyForm`)
    copy_forms: tuple[CopyForm, ...] = ()

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.key)

    @property
    def multiset(self) -> bool:
        return not self.key


def copy_form(ctype: ColumnType, same_major: bool) -> CopyForm:
    """How a column of type ``ctype`` goes into a COPY digest (pure)."""
    if ctype.kind in ("array", "composite"):
        return "text"
    if same_major:
        return "binary"
    if ctype.kind == "enum":
        return "binary"  # enum_send is the label
    if ctype.kind == "range" and ctype.element is not None:
        return copy_form(ctype.element, same_major)
    return "binary" if ctype.base in BINARY_STABLE else "text"


def _byte_ordered(collation: str | None, server: ServerInfo) -> bool:
    if collation in BYTE_ORDER_COLLATIONS:
        return True
    return collation == "default" and server.datcollate in BYTE_ORDER_LOCALES


def plan_table(
    source: TableInfo,
    target: TableInfo,
    *,
    key: Sequence[str] = (),
    source_server: ServerInfo,
    target_server: ServerInfo,
) -> TablePlan:
    """Decide key, compared columns and schema differences for one table."""
    notes: list[str] = []
    tgt_cols = {c.name: c for c in target.columns}
    src_names = {c.name for c in source.columns}
    common: list[Column] = []
    for c in source.columns:
        t = tgt_cols.get(c.name)
        if t is None:
            notes.append(f"column {c.name} ({c.type.name}) only on source")
        elif t.type.name != c.type.name:
            notes.append(f"column {c.name} is {c.type.name} on source, {t.type.name} on target")
        else:
            common.append(c)
    notes.extend(
        f"column {c.name} ({c.type.name}) only on target"
        for c in target.columns
        if c.name not in src_names
    )
    common_names = {c.name for c in common}

    key_mode: KeyMode
    if key:
        missing = [k for k in key if k not in common_names]
        if missing:
            raise UsageError(
                f"--key column(s) {', '.join(missing)} not comparable in {source.ref}",
                hint="key columns must exist on both sides with the same type",
            )
        key_names, key_mode = tuple(key), "--key"
    elif source.primary_key and all(k in common_names for k in source.primary_key):
        key_names, key_mode = source.primary_key, "primary key"
        if target.primary_key != source.primary_key:
            notes.append(
                f"primary key ({', '.join(source.primary_key)}) on source, "
                f"({', '.join(target.primary_key) or 'none'}) on target"
            )
    else:
        key_names, key_mode = (), "none"
        if source.primary_key:
            notes.append("primary key columns differ between sides; compared as row multisets")

    keys = []
    for name in key_names:
        s, t = source.column(name), target.column(name)
        assert s is not None and t is not None
        collatable = s.type.collation is not None
        same = s.type.collation == t.type.collation
        native = not collatable or (
            same
            and (
                (
                    _byte_ordered(s.type.collation, source_server)
                    and _byte_ordered(t.type.collation, target_server)
                )
                or (
                    s.type.collation != "default"
                    or source_server.datcollate == target_server.datcollate
                )
            )
        )
        keys.append(KeyColumn(name, collate_c=not native))

    same_major = source_server.version_num // 10000 == target_server.version_num // 10000
    whole = (
        [(c.name, c.type.name) for c in source.columns]
        == [(c.name, c.type.name) for c in target.columns]
        and not notes
        and not any(c.type.base in TEXT_CASTS for c in common)
    )
    return TablePlan(
        ref=source.ref,
        key=tuple(keys),
        key_mode=key_mode,
        columns=tuple(common),
        schema_differences=tuple(notes),
        estimated_rows=max(source.estimated_rows, target.estimated_rows),
        whole_row_text=whole,
        copy_forms=tuple(copy_form(c.type, same_major) for c in common),
    )
