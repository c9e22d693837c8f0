"""Statements journaled by their effect: which writes, how (a RETURNING added through
sqlglot), and whether running one twice is safe. Pure but for the catalog query text
(:data:`TABLE_SQL`), which the callers run."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from replverify.errors import UsageError
from replverify.journal.encode import RowTemplate
from replverify.journal.format import Op
from replverify.journal.statements import parse_statement, render_sql
from replverify.types import TableRef

__all__ = [
    "TABLE_SQL",
    "Effect",
    "TableMeta",
    "WritePlan",
    "bind_effect",
    "plan_write",
    "safe_to_repeat",
]

_WRITES = (exp.Insert, exp.Update, exp.Delete)
#: the table's schema, name, columns and primary key (a constant query; the table's name
#: as the statement wrote it is the parameter, resolved through the search_path)
TABLE_SQL = (
    "SELECT n.nspname::text, c.relname::text,"
    " ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid"
    "  AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),"
    " ARRAY(SELECT a.attname::text FROM pg_index i"
    "  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
    "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
    "  WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.oid = to_regclass($1)"
)


@dataclass(frozen=True)
class WritePlan:
    """How a write is journaled by its effect (one per statement text, cached)."""

    op: Op
    tree: exp.Expr
    #: the table as the statement names it (for the catalog lookup)
    table_text: str
    #: what RETURNING columns are qualified with (the alias, or the table's name)
    qualifier: exp.Identifier
    #: UPDATE: the SET columns
    sets: tuple[str, ...] = ()
    #: the application asked for rows itself
    own_returning: bool = False


@dataclass(frozen=True)
class TableMeta:
    ref: TableRef
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the primary key (empty: none)


@dataclass(frozen=True)
class Effect:
    """A plan bound to its table: the statement with RETURNING added, and how to read
    a returned row into a journal row (key, post-image)."""

    plan: WritePlan
    table: TableMeta
    sql: str
    returned: tuple[str, ...]  # our columns, the last ones of each returned row
    #: at most this many rows (keyed UPDATE/DELETE, INSERT ... VALUES); None: unbounded
    bound: int | None = None

    @functools.cached_property
    def rows(self) -> RowTemplate:
        """How a returned row becomes its journal record."""
        return RowTemplate(
            self.plan.op,
            self.table.ref.qualified,
            self.returned,
            self.table.key,
            values=self.plan.op != "delete",
        )


def _ident_name(node: exp.Identifier) -> str:
    return str(node.this) if node.quoted else str(node.this).lower()


@functools.lru_cache(maxsize=2048)
def plan_write(query: str) -> WritePlan | None:
    """The effect plan of ``query``; None when it does not write (a read, DDL).

    A write the journal cannot describe by its effect (several statements in one string,
    a write inside WITH, MERGE) raises :class:`~replverify.errors.UsageError` before it
    runs, so no write goes unjournaled."""
    try:
        trees = [t for t in sqlglot.parse(query, read="postgres") if t is not None]
    except SqlglotError as e:
        if re.match(r"\s*(insert|update|delete|merge)\b", query, re.I):
            raise UsageError(f"cannot journal this statement: {e}") from None
        return None
    writes = [t for t in trees if t.find(*_WRITES, exp.Merge) is not None]
    if not writes:
        return None
    if len(trees) != 1:
        raise UsageError("cannot journal this statement: send one statement per call")
    tree = trees[0]
    if not isinstance(tree, _WRITES) or tree.args.get("with_") or tree.args.get("with"):
        raise UsageError(
            "cannot journal this statement: only a plain INSERT, UPDATE, DELETE or"
            " INSERT ... ON CONFLICT can be journaled (not MERGE or a write inside WITH)"
        )
    target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier):
        raise UsageError("cannot journal this statement: it must write one named table")
    name = exp.Table(this=target.this.copy(), db=target.args.get("db"))
    alias = target.args.get("alias")
    qualifier = (
        alias.this
        if isinstance(alias, exp.TableAlias) and isinstance(alias.this, exp.Identifier)
        else target.this
    )
    own = tree.args.get("returning") is not None
    if isinstance(tree, exp.Insert):
        op: Op = "upsert" if tree.args.get("conflict") is not None else "insert"
        return WritePlan(op, tree, name.sql("postgres"), qualifier.copy(), own_returning=own)
    if isinstance(tree, exp.Delete):
        return WritePlan("delete", tree, name.sql("postgres"), qualifier.copy(), own_returning=own)
    sets = []
    for a in tree.expressions:
        if not isinstance(a, exp.EQ) or not isinstance(a.this, exp.Column):
            raise UsageError(f"cannot journal this statement: SET {a.sql('postgres')!r}")
        sets.append(_ident_name(a.this.this))
    return WritePlan(
        "update", tree, name.sql("postgres"), qualifier.copy(), tuple(sets), own_returning=own
    )


def bind_effect(plan: WritePlan, table: TableMeta) -> Effect:
    """``plan``'s statement with a RETURNING of the key and the written columns (the
    whole row for INSERT and upsert), each aliased ``_rv_<n>``, after the application's
    own RETURNING items."""
    key = table.key
    if plan.op in ("insert", "upsert"):
        cols = table.columns
    elif plan.op == "delete":
        cols = key or table.columns
    else:
        if not key:
            raise UsageError(
                f"cannot journal an UPDATE of {table.ref}: it has no primary key, so its rows"
                " cannot be found again"
            )
        if any(c in key for c in plan.sets):
            raise UsageError(
                f"cannot journal this UPDATE of {table.ref}: it changes the primary key"
                " (journal it as a DELETE and an INSERT)"
            )
        cols = key + tuple(c for c in plan.sets if c not in key)
    tree = plan.tree.copy()
    returning = tree.args.get("returning")
    items = list(returning.expressions) if returning is not None else []
    for i, c in enumerate(cols):
        column = exp.Column(this=exp.to_identifier(c, quoted=True), table=plan.qualifier.copy())
        items.append(exp.alias_(column, f"_rv_{i}"))
    tree.set("returning", exp.Returning(expressions=items))
    return Effect(plan, table, tree.sql("postgres"), tuple(cols), _row_bound(plan, key))


def _row_bound(plan: WritePlan, key: tuple[str, ...]) -> int | None:
    """How many rows the statement can touch at most, when its text says so: INSERT ...
    VALUES (one per row), UPDATE/DELETE pinning every key column to a parameter or a
    literal (one). None: a range, a subquery, INSERT ... SELECT - stream it."""
    tree = plan.tree
    if isinstance(tree, exp.Insert):
        values = tree.expression
        return len(values.expressions) if isinstance(values, exp.Values) else None
    where = tree.args.get("where")
    if (
        not key
        or not isinstance(where, exp.Where)
        or tree.args.get("from_")
        or tree.args.get("using")
    ):
        return None
    conds = where.this.flatten() if isinstance(where.this, exp.And) else [where.this]
    pinned = set()
    for c in conds:
        if isinstance(c, exp.EQ):
            col, val = (
                (c.this, c.expression) if isinstance(c.this, exp.Column) else (c.expression, c.this)
            )
            if isinstance(col, exp.Column) and isinstance(val, (exp.Parameter, exp.Literal)):
                pinned.add(_ident_name(col.this))
    return 1 if pinned.issuperset(key) else None


def safe_to_repeat(query: str, args: tuple[object, ...], key: tuple[str, ...]) -> bool:
    """Whether running ``query`` twice leaves what running it once does: reads; and
    writes with literal values that pin their rows by the whole primary key (UPDATE,
    DELETE) or say what an existing row becomes (INSERT ... ON CONFLICT)."""
    try:
        if plan_write(query) is None:
            return True
        stmt = parse_statement(render_sql(query, args))
    except UsageError:
        return False
    if stmt.op == "upsert":
        return True
    if stmt.op in ("update", "delete"):
        pinned = {c for c, _ in stmt.where}
        return bool(key) and pinned.issuperset(key)
    return False  # a plain INSERT: a second run adds a row (or fails on the key)
