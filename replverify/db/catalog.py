"""What each side holds: tables, columns, keys and types, read from ``pg_catalog``."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from replverify.db.connect import Endpoint
from replverify.errors import UsageError
from replverify.types import Column, ColumnType, TableRef

_TABLES_SQL = """
SELECT n.nspname, c.relname, c.oid,
       -- reltuples is -1 until the first VACUUM/ANALYZE: then estimate from the heap's
       -- size and a row width taken from the column types (32 bytes for a variable-
       -- width one, as the planner assumes), plus tuple header and line pointer.
       CASE WHEN c.reltuples >= 0 THEN c.reltuples
            ELSE pg_relation_size(c.oid) / (
                SELECT 28 + coalesce(sum(CASE WHEN t.typlen > 0 THEN t.typlen ELSE 32 END), 0)
                FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
       END::bigint AS estimate,
       c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
ORDER BY 1, 2
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod) AS fmt,
       a.attnotnull, coalesce(co.collname, '') AS collname
FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_PKEYS_SQL = """
SELECT i.indrelid, array_agg(a.attname ORDER BY k.ord) AS cols
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indisprimary AND i.indrelid = ANY($1::oid[])
GROUP BY i.indrelid
"""

#: What a table's definition is, as one comparable text per table: its oid, every
#: column slot (dropped ones too, with the xmin of its catalog row, so that an ALTER that
#: is undone again still shows) and its primary key. A change between two readings
#: means the table was altered, dropped or re-created in between.
_DEFINITIONS_SQL = """
SELECT n.nspname, c.relname, concat_ws(';', c.oid::text, (
         SELECT string_agg(concat_ws(':', a.attnum, a.attname, a.atttypid, a.atttypmod,
                                     a.attcollation, a.attnotnull, a.attisdropped, a.xmin),
                           ',' ORDER BY a.attnum)
         FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0),
       (SELECT i.indkey::text FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
       ) AS definition
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND ($1::text IS NULL OR (n.nspname = $1 AND c.relname = $2))
"""

#: ``"char"`` columns come back from asyncpg as bytes: read as text, so kinds compare.
_TYPES_SQL = """
SELECT t.oid, t.typname, t.typtype::text AS typtype, t.typbasetype, t.typelem, t.typrelid,
       t.typcategory::text AS typcategory, format_type(t.oid, NULL) AS fmt, t.typlen
FROM pg_type t WHERE t.oid = ANY($1::oid[])
"""

_TYPE_FIELDS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid FROM pg_attribute a
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""


@dataclass(frozen=True)
class TableInfo:
    """One table as one side sees it."""

    ref: TableRef
    oid: int
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    estimated_rows: int

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True)
class ServerInfo:
    version_num: int
    in_recovery: bool
    datcollate: str
    encoding: str
    system_identifier: int = 0  # equal on a primary and its physical standbys
    #: when the postmaster started, its port and the connected database: with the system
    #: identifier they tell one running server from a copy of it (a standby, a promoted
    #: standby, a restored backup share the identifier)
    started_at: datetime | None = None
    port: int | None = None
    database: str = ""


def same_server(a: ServerInfo, b: ServerInfo) -> bool:
    """Whether two connections reached one running server (not a standby or copy)."""
    return (
        a.system_identifier == b.system_identifier != 0
        and a.started_at is not None
        and a.started_at == b.started_at
        and a.port == b.port
    )


def refuse_same_database(
    a: ServerInfo, b: ServerInfo, first: Endpoint, second: Endpoint, names: str, *, option: str
) -> None:
    """Raise :class:`UsageError` when ``first`` and ``second`` are one database of one
    server: comparing it with itself verifies nothing. ``names`` says which arguments
    (``SOURCE and TARGET``); ``option`` is the flag that allows it, or ``""``."""
    if not same_server(a, b) or a.database != b.database:
        return
    shown = str(first) if str(first) == str(second) else f"{first} and {second}"
    hint = "give the other server's DSN"
    if option:
        hint += f"; {option} compares it with itself anyway"
    raise UsageError(
        f"{names} are the same server: both reach database {a.database!r} of {shown} "
        f"(system identifier {a.system_identifier}, port {a.port}, started "
        f"{a.started_at:%Y-%m-%d %H:%M:%S %Z}); comparing it with itself verifies nothing",
        hint=hint,
    )


def streams_from(source: ServerInfo, target: ServerInfo) -> bool:
    """Whether ``target`` is a physical standby of ``source`` (same system, in recovery)."""
    return (
        target.in_recovery
        and not source.in_recovery
        and source.system_identifier == target.system_identifier != 0
    )


async def server_info(conn: asyncpg.Connection) -> ServerInfo:
    row = await conn.fetchrow(
        "SELECT current_setting('server_version_num')::int AS v, pg_is_in_recovery() AS r,"
        " d.datcollate, pg_encoding_to_char(d.encoding) AS enc,"
        " (SELECT system_identifier FROM pg_control_system()) AS sysid,"
        " pg_postmaster_start_time() AS started, current_setting('port')::int AS port,"
        " d.datname"
        " FROM pg_database d WHERE d.datname = current_database()"
    )
    assert row is not None
    return ServerInfo(
        row["v"],
        row["r"],
        row["datcollate"],
        row["enc"],
        row["sysid"] or 0,
        started_at=row["started"],
        port=row["port"],
        database=row["datname"],
    )


async def _resolve_types(conn: asyncpg.Connection, oids: set[int]) -> dict[int, ColumnType]:
    """Build :class:`ColumnType` for ``oids`` (domains resolved, arrays and composites nested)."""
    raw: dict[int, asyncpg.Record] = {}
    fields: dict[int, list[tuple[str, int]]] = {}
    todo = set(oids)
    while todo:
        rows = await conn.fetch(_TYPES_SQL, list(todo))
        todo = set()
        relids = []
        for r in rows:
            raw[r["oid"]] = r
            for dep in (r["typbasetype"], r["typelem"]):
                if dep and dep not in raw:
                    todo.add(dep)
            if r["typtype"] == "c" and r["typrelid"]:
                relids.append(r["typrelid"])
        if relids:
            for f in await conn.fetch(_TYPE_FIELDS_SQL, relids):
                fields.setdefault(f["attrelid"], []).append((f["attname"], f["atttypid"]))
                if f["atttypid"] not in raw:
                    todo.add(f["atttypid"])
        todo -= set(raw)

    cache: dict[int, ColumnType] = {}

    def build(oid: int, name: str | None = None, depth: int = 0) -> ColumnType:
        if oid in cache and name is None:
            return cache[oid]
        r = raw.get(oid)
        if r is None or depth > 20:
            return ColumnType(name or str(oid), "unknown")
        fmt = name or r["fmt"]
        if r["typtype"] == "d":
            base = build(r["typbasetype"], depth=depth + 1)
            ct = ColumnType(fmt, base.base, base.kind, base.element, base.fields)
        elif r["typcategory"] == "A" and r["typelem"] and r["typlen"] == -1:
            ct = ColumnType(
                fmt, r["typname"], "array", element=build(r["typelem"], depth=depth + 1)
            )
        elif r["typtype"] == "c":
            flds = tuple(
                (fname, build(ftype, depth=depth + 1))
                for fname, ftype in fields.get(r["typrelid"], [])
            )
            ct = ColumnType(fmt, r["typname"], "composite", fields=flds)
        elif r["typtype"] == "e":
            ct = ColumnType(fmt, r["typname"], "enum")
        elif r["typtype"] == "r":
            ct = ColumnType(fmt, r["typname"], "range")
        else:
            ct = ColumnType(fmt, r["typname"])
        if name is None:
            cache[oid] = ct
        return ct

    return {oid: build(oid) for oid in oids}


async def load_tables(conn: asyncpg.Connection) -> dict[TableRef, TableInfo]:
    """Every ordinary user table of the connected database (partitioned tables as one)."""
    tables = await conn.fetch(_TABLES_SQL)
    oids = [t["oid"] for t in tables]
    cols = await conn.fetch(_COLUMNS_SQL, oids)
    pkeys = {r["indrelid"]: tuple(r["cols"]) for r in await conn.fetch(_PKEYS_SQL, oids)}
    types = await _resolve_types(conn, {c["atttypid"] for c in cols})
    by_rel: dict[int, list[Column]] = {}
    for c in cols:
        base = types[c["atttypid"]]
        ctype = ColumnType(
            c["fmt"], base.base, base.kind, base.element, base.fields, c["collname"] or None
        )
        by_rel.setdefault(c["attrelid"], []).append(Column(c["attname"], ctype, c["attnotnull"]))
    out: dict[TableRef, TableInfo] = {}
    for t in tables:
        ref = TableRef(t["nspname"], t["relname"])
        out[ref] = TableInfo(
            ref, t["oid"], tuple(by_rel.get(t["oid"], [])), pkeys.get(t["oid"], ()), t["estimate"]
        )
    return out


async def definitions(
    conn: asyncpg.Connection, only: TableRef | None = None
) -> dict[TableRef, str]:
    """A fingerprint of each table's definition (or of ``only``): equal fingerprints
    mean the table was not altered, dropped or re-created in between."""
    schema, name = (only.schema, only.name) if only else (None, None)
    rows = await conn.fetch(_DEFINITIONS_SQL, schema, name)
    return {TableRef(r["nspname"], r["relname"]): r["definition"] for r in rows}


def parse_table_pattern(pattern: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` (schema ``public``); globs allowed in either part.

    A double-quoted part keeps dots and case: ``"My.Schema"."Orders"``.
    """
    parts: list[str] = []
    buf, quoted, i = "", False, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == '"':
            if quoted and i + 1 < len(pattern) and pattern[i + 1] == '"':
                buf += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(buf)
            buf = ""
        else:
            buf += ch
        i += 1
    parts.append(buf)
    if quoted or len(parts) > 2 or any(p == "" for p in parts):
        raise UsageError(f"bad table name {pattern!r}", hint="use table or schema.table")
    return ("public", parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _table_hint(available: Sequence[TableRef], schema: str, name: str) -> str:
    """``did you mean orders?`` for a near miss (difflib), else how to list tables."""
    fallback = "names are case-sensitive; list tables with \\dt in psql"
    if any(ch in schema + name for ch in "*?["):
        return fallback
    # Names within the schema asked for first (a shared "public." prefix would make every
    # table look close), then schema-qualified names across schemas.
    in_schema = [t.name for t in available if t.schema == schema]
    close = difflib.get_close_matches(name, in_schema, n=3, cutoff=0.75)
    if close:
        shown = close if schema == "public" else [f"{schema}.{c}" for c in close]
    else:
        shown = difflib.get_close_matches(
            f"{schema}.{name}", [t.qualified for t in available], n=3, cutoff=0.75
        )
    if not shown:
        return fallback
    return f"did you mean {' or '.join(shown)}?"


def select_tables(
    available: Sequence[TableRef],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[TableRef]:
    """Apply ``-t`` patterns (default: all) and ``--exclude`` globs.

    A ``-t`` pattern that matches nothing is an error: a typo must not verify nothing.
    """
    chosen: list[TableRef] = []
    if include:
        for pat in include:
            schema, name = parse_table_pattern(pat)
            hits = [
                t
                for t in available
                if fnmatch.fnmatchcase(t.schema, schema) and fnmatch.fnmatchcase(t.name, name)
            ]
            if not hits:
                raise UsageError(
                    f"no table matches {pat!r} on the source",
                    hint=_table_hint(available, schema, name),
                )
            chosen.extend(h for h in hits if h not in chosen)
    else:
        # replverify's own schema (the lag heartbeat table) is not the application's data
        chosen = [t for t in available if t.schema != "replverify"]
    excl = [parse_table_pattern(p) for p in exclude]
    return sorted(
        t
        for t in chosen
        if not any(
            fnmatch.fnmatchcase(t.schema, s) and fnmatch.fnmatchcase(t.name, n) for s, n in excl
        )
    )
