"""SQL built with sqlglot: identifiers quoted by the generator, values as ``$n`` parameters.

:class:`TableSQL` holds the statements for one table plan; each method returns the SQL text
and the parameter list that goes with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from replverify.diff.align import TEXT_CASTS, TablePlan
from replverify.diff.ranges import KeyRange
from replverify.errors import UsageError
from replverify.types import ColumnType, Key, TableRef

DIALECT = "postgres"
ALIAS = "_rv_t"
#: Seed of ``hashtextextended`` for in-database row hashes (any constant; both sides agree).
HASH_SEED = 0x5EED
#: Float columns go into in-database row text as their binary send form.
SEND_FLOATS = {"float4": "float4send", "float8": "float8send"}

Statement = tuple[str, list[object]]


def ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def column(name: str) -> exp.Column:
    return exp.Column(this=ident(name), table=ident(ALIAS))


def table(ref: TableRef) -> exp.Table:
    return exp.Table(
        this=ident(ref.name), db=ident(ref.schema), alias=exp.TableAlias(this=ident(ALIAS))
    )


def quote_table(ref: TableRef) -> str:
    """``"schema"."table"`` for messages and scripts."""
    return exp.Table(this=ident(ref.name), db=ident(ref.schema)).sql(DIALECT)


class Params:
    """Collects parameter values and hands out ``$n`` placeholders."""

    def __init__(self) -> None:
        self.values: list[object] = []

    def add(self, value: object) -> exp.Expr:
        self.values.append(value)
        return exp.Parameter(this=exp.Literal.number(len(self.values)))


# -- --where ------------------------------------------------------------------------------
_PREDICATE_ROOTS = (exp.Predicate, exp.Connector, exp.Not, exp.Boolean, exp.Column, exp.Paren)
_FORBIDDEN = (
    exp.Query,
    exp.Subquery,
    exp.Command,
    exp.DDL,
    exp.DML,
    exp.Anonymous,
    exp.Placeholder,
    exp.Parameter,
    exp.Into,
)
#: Built-in functions a --where may call: pure and read-only.
_ALLOWED_FUNCS = (
    exp.Lower,
    exp.Upper,
    exp.Coalesce,
    exp.Abs,
    exp.Length,
    exp.Substring,
    exp.Trim,
    exp.DateTrunc,
    exp.TimestampTrunc,
    exp.CurrentTimestamp,
    exp.CurrentDate,
    exp.Cast,
    exp.TryCast,
    exp.Round,
    exp.Floor,
    exp.Ceil,
    exp.Extract,
    exp.Nullif,
    exp.Greatest,
    exp.Least,
    exp.Concat,
    exp.Mod,
)


def parse_where(text: str) -> exp.Expr:
    """Parse ``--where``: exactly one boolean expression, no statements, comments,
    subqueries or unknown function calls."""
    if "--" in text or "/*" in text:
        raise UsageError("--where must not contain comments")
    try:
        trees = sqlglot.parse(text, read=DIALECT)
    except (SqlglotError, IndexError, ValueError, RecursionError) as e:
        # TokenError (an unterminated quote) is not a ParseError, and sqlglot's
        # tokenizer raises IndexError on some inputs (found by tests/test_fuzz.py)
        raise UsageError(f"--where is not valid SQL: {_first_line(e)}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise UsageError("--where must be a single expression, not several statements")
    tree = trees[0]
    if not isinstance(tree, _PREDICATE_ROOTS) or isinstance(tree, exp.Query):
        raise UsageError(
            f"--where must be a boolean condition, not {type(tree).__name__.lower()}",
            hint="for example --where \"created_at >= '2026-01-01'\"",
        )
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN):
            raise UsageError(
                f"--where may not contain {node.sql(DIALECT)!r}",
                hint="subqueries, parameters and unknown functions are refused",
            )
        if isinstance(node, exp.Func) and not isinstance(
            node, (*_ALLOWED_FUNCS, exp.Predicate, exp.Connector)
        ):
            raise UsageError(f"--where may not call {node.sql(DIALECT)!r}")
        if isinstance(node, exp.Column) and node.table:
            raise UsageError("--where columns must not be qualified with a table name")
    return tree


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _qualify(where: exp.Expr) -> exp.Expr:
    def fix(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and not node.table:
            return exp.Column(this=node.this, table=ident(ALIAS))
        return node

    return where.copy().transform(fix)


#: Types some of whose values asyncpg cannot decode as they are: infinities read as the
#: largest or smallest finite value (``'infinity'::date`` as ``date.max``, as does the
#: real ``9999-12-31``), and BC dates and ``24:00`` fail to decode. Base → SQL condition
#: (on ``{e}``) of the values it decodes faithfully.
_DECODABLE = {
    "date": "{e} BETWEEN '0001-01-01' AND '9999-12-31'",
    "timestamp": "{e} BETWEEN '0001-01-01' AND '9999-12-31 23:59:59.999999'",
    "timestamptz": "{e} BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'",
    "time": "{e} < '24:00'",
    "timetz": "CAST({e} AS time) < '24:00'",
}
_CLAMPED_RANGES = {"daterange": "date", "tsrange": "timestamp", "tstzrange": "timestamptz"}
_CLAMPED_MULTIRANGES = {
    "datemultirange": "date",
    "tsmultirange": "timestamp",
    "tstzmultirange": "timestamptz",
}


def lossy(t: ColumnType) -> bool:
    """Whether a decoded value of type ``t`` can drop what a client reads: an array's
    lower bounds (``'[0:1]={1,2}'`` reads as ``[1, 2]``), also inside composites and
    arrays of them, and the dates and times of :data:`_DECODABLE`, also inside ranges
    (pure)."""
    if t.kind == "array":
        return True
    if t.kind == "composite":
        return any(lossy(ft) for _, ft in t.fields)
    return t.base in _DECODABLE or t.base in _CLAMPED_RANGES or t.base in _CLAMPED_MULTIRANGES


def _shape_text(e: str, t: ColumnType, depth: int) -> str:
    """SQL text of :func:`shape` for the expression text ``e``."""
    if t.kind == "array":
        dims = f"array_dims({e})"
        if t.element is None or not lossy(t.element):
            return dims
        u = f"_rv_u{depth}"
        inner = _shape_text(u, t.element, depth + 1)
        elements = f"array_to_string(ARRAY(SELECT {inner} FROM unnest({e}) AS {u}), ',', '')"
        return f"concat({dims}, '(', {elements}, ')')"
    if t.kind == "composite":
        parts = [
            f"coalesce({_shape_text(f'({e}).{ident(name).sql(DIALECT)}', ft, depth)}, '')"
            for name, ft in t.fields
            if lossy(ft)
        ]
        return f"concat_ws(';', {', '.join(parts)})"
    if t.base in _CLAMPED_MULTIRANGES:
        r = f"_rv_r{depth}"
        ranges = _range_shape(r, _CLAMPED_MULTIRANGES[t.base])
        return f"array_to_string(ARRAY(SELECT {ranges} FROM unnest({e}) AS {r}), ';', '')"
    if t.base in _CLAMPED_RANGES:
        return _range_shape(e, _CLAMPED_RANGES[t.base])
    return _undecodable(e, t.base)


def _range_shape(e: str, sub: str) -> str:
    return f"concat({_undecodable(f'lower({e})', sub)}, ',', {_undecodable(f'upper({e})', sub)})"


def _undecodable(e: str, base: str) -> str:
    """SQL text: the text of ``e`` (of type ``base``, a key of :data:`_DECODABLE`) when
    asyncpg cannot decode it as it is, else NULL."""
    return f"CASE WHEN {_DECODABLE[base].format(e=e)} THEN NULL ELSE CAST({e} AS TEXT) END"


def shape(col: exp.Expr, t: ColumnType) -> exp.Expr:
    """What decoding drops of a :func:`lossy` column, as text: ``array_dims`` of every
    array in the value (element by element, in order) and the text of every date or time
    asyncpg cannot decode as it is (``infinity``, BC, ``24:00``); NULL or only ``[1:n]``
    dims and separators when nothing is lost."""
    return sqlglot.parse_one(_shape_text(col.sql(DIALECT), t, 0), read=DIALECT)


# -- statements -----------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\$(\d+)")


def _inline_ints(text: str, values: Sequence[object]) -> Statement:
    """Put the integer parameters of ``text`` into it as literals (COPY takes none).

    Only done when every ``$n`` of the text is one of its placeholders, exactly once (a
    ``$1`` inside a --where string literal would make that ambiguous: then nothing is
    inlined and asyncpg quotes the values through the server instead).
    """
    found = [int(m) for m in _PLACEHOLDER.findall(text)]
    if sorted(found) != list(range(1, len(values) + 1)):
        return text, list(values)
    kept: list[object] = []
    numbers: dict[int, str] = {}
    for i, v in enumerate(values, start=1):
        if type(v) is int:
            numbers[i] = str(v) if v >= 0 else f"({v})"
        else:
            kept.append(v)
            numbers[i] = f"${len(kept)}"
    return _PLACEHOLDER.sub(lambda m: numbers[int(m.group(1))], text), kept


@dataclass
class TableSQL:
    """The statements that read one table, for one plan and optional ``--where``.

    A statement's text depends only on its *shape* (which bounds are open, whether keys
    are given, which integers are inlined), so it is built once per shape and cached; a
    chunk only computes its parameter values.
    """

    plan: TablePlan
    where: exp.Expr | None = None
    _cache: dict[tuple[object, ...], str] = field(default_factory=dict, repr=False)

    def _cached(
        self,
        name: str,
        rng: KeyRange | None,
        extras: Sequence[object],
        build: Callable[[Params], exp.Expr],
        *,
        inline_ints: bool = False,
    ) -> Statement:
        bounds = [] if rng is None else [*(rng.lo or ()), *(rng.hi or ())]
        values = [*bounds, *extras]
        shape = (
            name,
            rng is None or rng.lo is None,
            rng is None or rng.hi is None,
            len(extras),
        )
        text = self._cache.get(shape)
        if text is None:
            params = Params()
            text = build(params).sql(DIALECT)
            if params.values != values:  # the builder must add values in this order
                raise AssertionError(f"{name}: parameters out of order")
            self._cache[shape] = text
        if inline_ints and any(type(v) is int for v in values):
            return _inline_ints(text, values)
        return text, values

    # the pieces
    def _key_expr(self, i: int) -> exp.Expr:
        k = self.plan.key[i]
        col: exp.Expr = column(k.name)
        if k.collate_c:
            col = exp.Collate(this=col, expression=ident("C"))
        return col

    def _key_tuple(self) -> exp.Expr:
        cols = [self._key_expr(i) for i in range(len(self.plan.key))]
        return cols[0] if len(cols) == 1 else exp.Tuple(expressions=cols)

    def _bound(self, key: Key, params: Params) -> exp.Expr:
        ps = [params.add(v) for v in key]
        return ps[0] if len(ps) == 1 else exp.Tuple(expressions=ps)

    def _conditions(self, rng: KeyRange | None, params: Params) -> list[exp.Expr]:
        conds: list[exp.Expr] = []
        if rng is not None and rng.lo is not None:
            conds.append(exp.GT(this=self._key_tuple(), expression=self._bound(rng.lo, params)))
        if rng is not None and rng.hi is not None:
            conds.append(exp.LTE(this=self._key_tuple(), expression=self._bound(rng.hi, params)))
        if self.where is not None:
            conds.append(exp.Paren(this=_qualify(self.where)))
        return conds

    def _select(
        self, projections: Sequence[exp.Expr], rng: KeyRange | None, params: Params
    ) -> exp.Select:
        q = exp.select(*projections).from_(table(self.plan.ref))
        conds = self._conditions(rng, params)
        if conds:
            q = q.where(exp.and_(*conds))
        return q

    def value_expr(self, name: str, base: str) -> exp.Expr:
        """The column as it is read for comparison (a few types through a stable cast)."""
        col: exp.Expr = column(name)
        if base in TEXT_CASTS:
            col = exp.cast(col, TEXT_CASTS[base])
        return col

    @functools.cached_property
    def bounded(self) -> tuple[int, ...]:
        """Positions (in ``plan.columns``) of the columns whose decoded value can lose what
        a client reads (see :func:`lossy`): ``rows`` and ``rows_with_hashes`` read each
        one's :func:`shape` too, after the columns. Computed once: every decoded row
        asks for it."""
        return tuple(i for i, c in enumerate(self.plan.columns) if lossy(c.type))

    def _decoded(self) -> list[exp.Expr]:
        columns = self.plan.columns
        return [
            *(self._decodable(c.name, c.type.base) for c in columns),
            *(shape(column(columns[i].name), columns[i].type) for i in self.bounded),
        ]

    def _decodable(self, name: str, base: str) -> exp.Expr:
        """The column for decoding: a date or time asyncpg cannot decode as it is reads as
        NULL (its :func:`shape` carries its text instead)."""
        value = self.value_expr(name, base)
        if base not in _DECODABLE:
            return value
        ok = _DECODABLE[base].format(e=value.sql(DIALECT))
        return sqlglot.parse_one(f"CASE WHEN {ok} THEN {value.sql(DIALECT)} END", read=DIALECT)

    def row_text(self) -> exp.Expr:
        """The row's canonical text: the whole-row value when both sides have the same
        columns, else a ROW() of the compared columns (in source order)."""
        floats = any(c.type.base in SEND_FLOATS for c in self.plan.columns)
        if self.plan.whole_row_text and not floats:
            return exp.cast(exp.Column(this=ident(ALIAS)), "text")
        values: list[exp.Expr] = []
        for c in self.plan.columns:
            if c.type.base in SEND_FLOATS:
                # text prints every NaN as NaN; the send form keeps the bits that
                # ``--compare exact`` tells apart (and semantic equality settles later)
                values.append(exp.func(SEND_FLOATS[c.type.base], column(c.name)))
            else:
                values.append(self.value_expr(c.name, c.type.base))
        return exp.cast(exp.Anonymous(this="ROW", expressions=values), "text")

    def row_hash(self) -> exp.Expr:
        return exp.func("hashtextextended", self.row_text(), exp.Literal.number(HASH_SEED))

    def row_hash128(self) -> exp.Expr:
        """A 128-bit hash of the row text (md5 as a uuid: groups and orders natively), for
        tables compared as multisets, where a per-row hash is all that tells rows apart."""
        return exp.cast(exp.func("md5", self.row_text()), "uuid")

    def _order(self) -> list[exp.Ordered]:
        return [exp.Ordered(this=self._key_expr(i)) for i in range(len(self.plan.key))]

    # the statements
    def next_boundary(self, after: Key | None, every: int) -> Statement:
        """The key ``every`` rows after ``after`` in key order (an index walk)."""
        rng = KeyRange(after, None)

        def build(params: Params) -> exp.Expr:
            keys = [column(k.name) for k in self.plan.key]
            q = self._select(keys, rng, params)
            return q.order_by(*self._order()).offset(params.add(every - 1)).limit(1)

        return self._cached("next_boundary", rng, [every - 1], build)

    def copy_rows(self, rng: KeyRange) -> Statement:
        """The compared columns of ``rng`` in key order, for a binary COPY digest.

        Columns go as the plan's ``copy_forms`` say: arrays and composites as text (their
        binary form embeds type OIDs, which differ between independent clusters for
        user-defined types), and between major versions, types whose binary form is not
        known to be the same on both.
        """
        forms = self.plan.copy_forms or ("binary",) * len(self.plan.columns)

        def build(params: Params) -> exp.Expr:
            projections = []
            for c, form in zip(self.plan.columns, forms, strict=True):
                value = self.value_expr(c.name, c.type.base)
                if form == "text" or c.type.kind in ("array", "composite"):
                    value = exp.cast(value, "text")
                projections.append(value)
            return self._select(projections, rng, params).order_by(*self._order())

        return self._cached("copy_rows", rng, [], build, inline_ints=True)

    def split(self, rng: KeyRange, every: int) -> Statement:
        """Keys at every ``every``-th row of ``rng`` in key order."""

        def build(params: Params) -> exp.Expr:
            order = exp.Order(expressions=self._order())
            rn = exp.alias_(exp.Window(this=exp.RowNumber(), order=order), "_rv_n", quoted=True)
            keys = [exp.alias_(column(k.name), k.name, quoted=True) for k in self.plan.key]
            inner = self._select([*keys, rn], rng, params)
            step = params.add(every)
            return (
                exp.select(*[exp.column(k.name, quoted=True) for k in self.plan.key])
                .from_(inner.subquery("_rv_s"))
                .where(
                    exp.EQ(
                        this=exp.Mod(this=exp.column("_rv_n", quoted=True), expression=step),
                        expression=exp.Literal.number(0),
                    )
                )
                .order_by(exp.column("_rv_n", quoted=True))
            )

        return self._cached("split", rng, [every], build)

    def digest(self, rng: KeyRange | None) -> Statement:
        """Row count and sum of in-database row hashes over ``rng``."""

        def build(params: Params) -> exp.Expr:
            total = exp.Coalesce(
                this=exp.Sum(this=self.row_hash()), expressions=[exp.Literal.number(0)]
            )
            return self._select([exp.Count(this=exp.Star()), total], rng, params)

        return self._cached("digest", rng, [], build)

    def part_digests(self, rng: KeyRange, cuts: Sequence[Key]) -> Statement:
        """``part, count, sum of row hashes`` per part of ``rng`` cut at ``cuts``.

        Part ``i`` holds the keys in ``(cuts[i-1], cuts[i]]`` (as :meth:`KeyRange.split`
        cuts); empty parts return no row.
        """

        def build(params: Params) -> exp.Expr:
            q = self._select([], rng, params)
            case = exp.Case(
                ifs=[
                    exp.If(
                        this=exp.LTE(this=self._key_tuple(), expression=self._bound(cut, params)),
                        true=exp.Literal.number(i),
                    )
                    for i, cut in enumerate(cuts)
                ],
                default=exp.Literal.number(len(cuts)),
            )
            total = exp.Coalesce(
                this=exp.Sum(this=self.row_hash()), expressions=[exp.Literal.number(0)]
            )
            part = exp.column("_rv_p", quoted=True)
            return q.select(
                exp.alias_(case, "_rv_p", quoted=True), exp.Count(this=exp.Star()), total
            ).group_by(part)

        return self._cached("part_digests", rng, [v for cut in cuts for v in cut], build)

    def row_hashes(self, rng: KeyRange | None) -> Statement:
        """``key..., hash`` per row of ``rng``."""

        def build(params: Params) -> exp.Expr:
            keys = [column(k.name) for k in self.plan.key]
            return self._select([*keys, self.row_hash()], rng, params)

        return self._cached("row_hashes", rng, [], build)

    def rows(self, rng: KeyRange | None, keys: Sequence[Key] = ()) -> Statement:
        """``key..., compared columns..., array dims...`` for rows of ``rng`` (only ``keys``
        when given; see :attr:`bounded`).

        Composite keys are matched per column (``a = ANY($1) AND b = ANY($2)``), which can
        return a few rows beyond ``keys``; the caller keeps the exact ones.
        """
        per_column = (
            [sorted({key[i] for key in keys}, key=repr) for i in range(len(self.plan.key))]
            if keys
            else []
        )

        def build(params: Params) -> exp.Expr:
            projections: list[exp.Expr] = [column(k.name) for k in self.plan.key]
            projections += self._decoded()
            q = self._select(projections, rng, params)
            for k, values in zip(self.plan.key, per_column, strict=False):
                q = q.where(
                    exp.EQ(
                        this=column(k.name),
                        expression=exp.Any(this=exp.Paren(this=params.add(values))),
                    )
                )
            return q

        return self._cached("rows", rng, per_column, build)

    def check(self) -> Statement:
        """Reads nothing; fails if the table, its columns or ``--where`` are wrong."""
        params = Params()
        q = self._select([exp.Literal.number(1)], None, params).limit(0)
        return q.sql(DIALECT), params.values

    # multiset (keyless) tables
    def hash_counts(self) -> Statement:
        """``hash, count`` per distinct 128-bit row hash, ordered by hash."""
        params = Params()
        h = exp.alias_(self.row_hash128(), "_rv_h", quoted=True)
        q = self._select(
            [h, exp.alias_(exp.Count(this=exp.Star()), "_rv_c", quoted=True)], None, params
        )
        q = q.group_by(exp.column("_rv_h", quoted=True)).order_by(exp.column("_rv_h", quoted=True))
        return q.sql(DIALECT), params.values

    def rows_with_hashes(self, hashes: Sequence[object]) -> Statement:
        """``hash, compared columns..., array dims...`` of the rows whose 128-bit hash is in
        ``hashes`` (see :attr:`bounded`)."""
        params = Params()
        projections = [
            self.row_hash128(),
            *self._decoded(),
        ]
        q = self._select(projections, None, params)
        q = q.where(
            exp.EQ(
                this=self.row_hash128(),
                expression=exp.Any(this=exp.Paren(this=params.add(list(hashes)))),
            )
        )
        return q.sql(DIALECT), params.values


def set_local(name: str, value: str) -> str:
    """``SET LOCAL name = 'value';`` for a script: unlike ``SELECT set_config(...)``, psql
    prints no result table for it."""
    item = exp.SetItem(
        this=exp.EQ(this=exp.to_identifier(name), expression=exp.Literal.string(value)),
        kind="LOCAL",
    )
    return exp.Set(expressions=[item]).sql(DIALECT) + ";"
