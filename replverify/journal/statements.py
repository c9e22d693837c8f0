"""``sql`` records: one INSERT, UPDATE, DELETE or INSERT ... ON CONFLICT statement with
literal values, parsed with sqlglot into a :class:`~.format.Statement` (anything but one
INSERT/UPDATE/DELETE with literal values is refused); and the other way, a statement
with ``$n`` parameters rendered with literals (:func:`render_sql`) for the writer.
"""

from __future__ import annotations

import decimal
import functools
import json
import re
from collections.abc import Sequence
from decimal import Decimal

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from replverify.errors import UsageError
from replverify.journal.format import _DIALECT, JSONValue, Statement, _Bad
from replverify.types import TableRef
from replverify.values.pgtext import pg_text

__all__ = [
    "journal_value",
    "parse_statement",
    "render_sql",
]


def _name(node: exp.Identifier | str | None) -> str:
    """An identifier as PostgreSQL resolves it: unquoted names fold to lower case."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.lower()
    text = str(node.this)
    return text if node.quoted else text.lower()


def _table_of(node: exp.Expr | None) -> tuple[TableRef, set[str]]:
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise _Bad("the statement must write one named table")
    if node.args.get("catalog"):
        raise _Bad("a table name must not name a database")
    schema = _name(node.args.get("db")) or "public"
    name = _name(node.this)
    aliases = {name, f"{schema}.{name}"}
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias) and isinstance(alias.this, exp.Identifier):
        aliases.add(_name(alias.this))
    return TableRef(schema, name), aliases


def _column_of(node: exp.Expr, aliases: set[str], what: str) -> str:
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
        raise _Bad(f"{what} must be a column, not {node.sql(_DIALECT)!r}")
    qualifier = node.args.get("table")
    if qualifier is not None and _name(qualifier) not in aliases:
        raise _Bad(f"{what} {node.sql(_DIALECT)!r} names another table")
    return _name(node.this)


def _literal(node: exp.Expr) -> JSONValue:
    """A literal value as JSON (numbers exact); anything else is refused."""
    if isinstance(node, exp.Paren):
        return _literal(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Literal):
        text = str(node.this)
        if node.is_string:
            return text
        return _number(text)
    if isinstance(node, exp.Neg):
        inner = _literal(node.this)
        if isinstance(inner, (int, Decimal)) and not isinstance(inner, bool):
            return -inner
        raise _Bad(f"not a literal value: {node.sql(_DIALECT)!r}")
    if isinstance(node, (exp.RawString, exp.ByteString, exp.BitString)):
        return str(node.this)  # $$dollar$$, E'escape' strings, B'0101'
    if isinstance(node, exp.Cast):
        # the column's type decides how the text is read; the cast changes nothing there
        return _literal(node.this)
    if isinstance(node, exp.Array):
        return [_literal(e) for e in node.expressions]
    raise _Bad(
        f"not a literal value: {node.sql(_DIALECT)!r}",
    )


def _number(text: str) -> int | Decimal:
    if text.isdigit():
        return int(text)
    try:
        return Decimal(text)
    except decimal.InvalidOperation:
        raise _Bad(f"not a number: {text!r}") from None


def _conditions(where: exp.Expr | None, aliases: set[str]) -> tuple[tuple[str, JSONValue], ...]:
    if not isinstance(where, exp.Where):
        raise _Bad("an UPDATE or DELETE needs a WHERE naming the row's primary key")
    out: list[tuple[str, JSONValue]] = []
    for cond in where.this.flatten() if isinstance(where.this, exp.And) else [where.this]:
        while isinstance(cond, exp.Paren):
            cond = cond.this
        if isinstance(cond, exp.EQ):
            left, right = cond.this, cond.expression
            if not isinstance(left, exp.Column):
                left, right = right, left
            col = _column_of(left, aliases, "a WHERE condition")
            try:
                value = _literal(right)
            except _Bad:
                raise _Bad(
                    f"WHERE conditions must compare a column with a literal, not "
                    f"{cond.sql(_DIALECT)!r}"
                ) from None
            if value is None:
                raise _Bad(f"{cond.sql(_DIALECT)!r} is never true; write IS NULL")
        elif isinstance(cond, exp.Is) and isinstance(cond.expression, exp.Null):
            col, value = _column_of(cond.this, aliases, "a WHERE condition"), None
        else:
            raise _Bad(
                "WHERE must be column = literal conditions joined by AND, not "
                f"{cond.sql(_DIALECT)!r}"
            )
        if any(c == col for c, _ in out):
            raise _Bad(f"WHERE names column {col!r} twice")
        out.append((col, value))
    return tuple(out)


def parse_statement(sql: str) -> Statement:
    """Parse the ``sql`` of a record; :class:`~replverify.errors.UsageError` says why not."""
    try:
        return _parse_statement(sql)
    except _Bad as e:
        raise UsageError(str(e)) from None


def _parse_statement(sql: str) -> Statement:
    """The statement of a ``sql`` record: from the cached parse of its shape when it has
    one (:func:`_shape_of`), else parsed itself. Refusals always come from parsing the
    statement itself, so their messages name its own text."""
    shape = _shape_of(sql)
    if shape is not None:
        template, literals = shape
        parsed = _parse_template(template)
        if parsed is not None:
            filled = _fill(parsed, literals)
            if filled is not None:
                return filled
    return _parse_exact(sql)


#: A literal where its text cannot change how the statement parses: a plain string (no
#: backslash, no prefix such as E'' or U&'') or an unsigned number, after one of ( , = [
#: (a number also after a unary minus that follows one), and before ) , ] ; ::, the end,
#: or a word. Digits inside a word are part of a name, not a number. Anything else in
#: the statement is kept; a statement with $, comments or a literal elsewhere has no shape.
_TOKEN = re.compile(
    r"""(?P<qid>"(?:[^"]|"")*")
      | (?P<str>'(?:[^'\\]|'')*')
      | (?<![A-Za-z_0-9\x80-\U0010ffff])
        (?P<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
      | (?P<bad>['\\$]|--|/\*)""",
    re.VERBOSE,
)
_BEFORE = frozenset("(,=[")
_AFTER = frozenset("),];:")
_MARK = "\ue000"  # a private-use character: the marker of a templated string literal


def _shape_of(sql: str) -> tuple[str, tuple[tuple[bool, str], ...]] | None:
    """``sql`` with every literal replaced by a marker (strings by ``'<mark>k'``, numbers
    by ``k + 1``), and the literals ``(is_string, text)`` in order; None when ``sql`` has
    a literal whose context this does not vouch for (then it is parsed itself)."""
    out: list[str] = []
    literals: list[tuple[bool, str]] = []
    pos = 0
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind == "bad":
            return None
        if kind == "qid":
            continue
        start, end = m.span()
        i = _skip_back(sql, start)
        if kind == "num" and i >= 0 and sql[i] == "-":
            i = _skip_back(sql, i)
        if i < 0 or sql[i] not in _BEFORE:
            return None
        nxt = sql[end : end + 1]
        if nxt and not nxt.isspace() and nxt not in _AFTER:
            return None  # 1abc, 1.2.3, 'a''b'c, ...
        j = end
        while j < len(sql) and sql[j].isspace():
            j += 1
        if j < len(sql) and sql[j] not in _AFTER and not (sql[j].isalpha() and j > end):
            return None  # an operator, another literal, ...
        out.append(sql[pos:start])
        k = len(literals)
        if kind == "str":
            out.append(f"'{_MARK}{k}'")
            literals.append((True, m.group()[1:-1].replace("''", "'")))
        else:
            out.append(str(k + 1))
            literals.append((False, m.group()))
        pos = end
    if not literals:
        return None
    out.append(sql[pos:])
    return "".join(out), tuple(literals)


def _skip_back(sql: str, i: int) -> int:
    """The index of the last non-space character before ``i`` (-1: none)."""
    i -= 1
    while i >= 0 and sql[i].isspace():
        i -= 1
    return i


@functools.lru_cache(maxsize=4096)
def _parse_template(template: str) -> Statement | None:
    """The parsed statement of a shape, markers in place of its literals (None: refused;
    the statement itself is then parsed, for its own message)."""
    try:
        return _parse_exact.__wrapped__(template)
    except _Bad:
        return None


def _fill(stmt: Statement, literals: tuple[tuple[bool, str], ...]) -> Statement | None:
    """``stmt`` with its markers replaced by ``literals`` as :func:`_literal` reads them;
    None if a marker is not where a literal of its kind was (each must appear once)."""
    used: list[bool] = [False] * len(literals)

    def value(v: JSONValue) -> JSONValue:
        if type(v) is int:
            k = abs(v) - 1
            if not 0 <= k < len(literals) or literals[k][0] or used[k]:
                raise LookupError
            used[k] = True
            n = _number(literals[k][1])
            return -n if v < 0 else n
        if type(v) is str:
            if not v.startswith(_MARK):
                raise LookupError
            k = int(v[1:])
            if not literals[k][0] or used[k]:
                raise LookupError
            used[k] = True
            return literals[k][1]
        if type(v) is list:
            return [value(x) for x in v]
        if v is None or type(v) is bool:
            return v
        raise LookupError  # a Decimal: no literal of the template reads as one

    try:
        filled = Statement(
            stmt.op,
            stmt.table,
            columns=stmt.columns,
            rows=tuple(tuple(value(v) for v in row) for row in stmt.rows),
            assignments=tuple((c, value(v)) for c, v in stmt.assignments),
            where=tuple((c, value(v)) for c, v in stmt.where),
            on_conflict=stmt.on_conflict,
        )
    except (LookupError, ValueError, _Bad):
        return None
    return filled if all(used) else None


@functools.lru_cache(maxsize=1024)
def _parse_exact(sql: str) -> Statement:
    try:
        trees = [t for t in sqlglot.parse(sql, read=_DIALECT) if t is not None]
    except SqlglotError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _Bad(f'"sql" does not parse: {first}') from None
    if len(trees) != 1:
        raise _Bad(f'"sql" must be one statement, not {len(trees)}')
    tree = trees[0]
    if tree.args.get("with_") or tree.args.get("with"):
        raise _Bad('"sql" must not use WITH')
    if isinstance(tree, exp.Insert):
        return _insert(tree)
    if isinstance(tree, exp.Update):
        table, aliases = _table_of(tree.this)
        if tree.args.get("from_") or tree.args.get("from"):
            raise _Bad("UPDATE ... FROM is not supported: write one row per statement")
        sets: list[tuple[str, JSONValue]] = []
        for a in tree.expressions:
            if not isinstance(a, exp.EQ):
                raise _Bad(f"not a SET assignment: {a.sql(_DIALECT)!r}")
            col = _column_of(a.this, aliases, "SET")
            try:
                sets.append((col, _literal(a.expression)))
            except _Bad:
                raise _Bad(
                    f"SET {col} = {a.expression.sql(_DIALECT)}: only literal values can be "
                    "checked later"
                ) from None
        where = _conditions(tree.args.get("where"), aliases)
        return Statement("update", table, assignments=tuple(sets), where=where)
    if isinstance(tree, exp.Delete):
        table, aliases = _table_of(tree.this)
        if tree.args.get("using"):
            raise _Bad("DELETE ... USING is not supported: write one row per statement")
        return Statement("delete", table, where=_conditions(tree.args.get("where"), aliases))
    kind = type(tree).__name__.upper()
    raise _Bad(
        f'"sql" must be an INSERT, UPDATE or DELETE, not {kind}: {" ".join(sql.split())[:60]!r}',
    )


def _insert(tree: exp.Insert) -> Statement:
    target = tree.this
    columns: tuple[str, ...] = ()
    if isinstance(target, exp.Schema):
        columns = tuple(_name(c) for c in target.expressions if isinstance(c, exp.Identifier))
        if len(columns) != len(target.expressions):
            raise _Bad("the INSERT column list must name plain columns")
        target = target.this
    table, aliases = _table_of(target)
    if len(set(columns)) != len(columns):
        raise _Bad("the INSERT column list names a column twice")
    values = tree.expression
    if not isinstance(values, exp.Values):
        raise _Bad("only INSERT ... VALUES with literal values can be checked (not SELECT)")
    rows: list[tuple[JSONValue, ...]] = []
    for row in values.expressions:
        items = row.expressions if isinstance(row, exp.Tuple) else [row]
        try:
            rows.append(tuple(_literal(v) for v in items))
        except _Bad as e:
            raise _Bad(f"INSERT values: {e}") from None
        if columns and len(items) != len(columns):
            raise _Bad(f"INSERT has {len(columns)} columns but a row of {len(items)} values")
    conflict = tree.args.get("conflict")
    if conflict is None:
        return Statement("insert", table, columns=columns, rows=tuple(rows))
    if conflict.args.get("where") or conflict.args.get("conflict_where"):
        raise _Bad("ON CONFLICT ... WHERE is not supported (the outcome depends on the row)")
    action = str(getattr(conflict.args.get("action"), "this", "")).upper()
    if action == "DO NOTHING":
        return Statement("upsert", table, columns=columns, rows=tuple(rows))
    if action != "DO UPDATE":
        raise _Bad(f"unsupported ON CONFLICT action {action or '?'}")
    updated: list[str] = []
    for a in conflict.expressions:
        ok = isinstance(a, exp.EQ) and isinstance(a.expression, exp.Column)
        src = a.expression if ok else None
        if ok and isinstance(src, exp.Column) and _name(src.args.get("table")) == "excluded":
            col = _column_of(a.this, aliases, "SET")
            if _name(src.this) == col:
                updated.append(col)
                continue
        raise _Bad(
            "ON CONFLICT DO UPDATE may only SET col = EXCLUDED.col (the value then does not "
            f"depend on the old row), not {a.sql(_DIALECT)!r}"
        )
    return Statement("upsert", table, columns=columns, rows=tuple(rows), on_conflict=tuple(updated))


def journal_value(v: object) -> JSONValue:
    """A Python value (as an application passes it to asyncpg) in journal form.

    JSON-native values stay (floats only when finite); ``Decimal`` becomes its exact text
    (``"12.50"``); dates and times ISO 8601; ``bytes`` ``"\\x..."``; UUIDs, intervals and
    anything else PostgreSQL's text form. ``dict``/``list`` stay JSON (json columns,
    arrays); a ``str`` stays a string (for json columns: JSON text, as asyncpg takes it).
    """
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else pg_text(v)
    if isinstance(v, Decimal):
        return pg_text(v)
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return [journal_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): journal_value(x) for k, x in v.items()}
    return pg_text(v)


def _sql_literal(v: object) -> exp.Expr:
    if v is None:
        return exp.Null()
    if isinstance(v, bool):
        return exp.Boolean(this=v)
    if isinstance(v, int) or (
        isinstance(v, (float, Decimal)) and v == v and abs(v) != float("inf")
    ):
        text = pg_text(v)
        if text.startswith("-"):
            return exp.Neg(this=exp.Literal.number(text[1:]))
        return exp.Literal.number(text)
    if isinstance(v, dict):
        return exp.Literal.string(json.dumps(journal_value(v), ensure_ascii=False, default=str))
    return exp.Literal.string(v if isinstance(v, str) else pg_text(v))


def render_sql(query: str, args: Sequence[object] = ()) -> str:
    """``query`` with its ``$n`` parameters replaced by literals of ``args`` (sqlglot).

    The result is checked with :func:`parse_statement`: a statement reconcile could not
    check later raises :class:`~replverify.errors.UsageError` now, before it runs.
    """
    try:
        tree = sqlglot.parse_one(query, read=_DIALECT)
    except SqlglotError as e:
        raise UsageError(f"cannot journal this statement: {e}") from None
    used: set[int] = set()

    def substitute(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Parameter):
            try:
                n = int(str(node.this.this if isinstance(node.this, exp.Expr) else node.this))
            except ValueError:
                return node
            if not 1 <= n <= len(args):
                raise UsageError(f"${n} has no argument ({len(args)} given)")
            used.add(n)
            return _sql_literal(args[n - 1])
        return node

    text = tree.transform(substitute).sql(_DIALECT)
    try:
        _parse_statement(text)
    except _Bad as e:
        raise UsageError(f"cannot journal this statement: {e}") from None
    return text
