"""Frozen records shared across the stages (catalog → plan → hash → compare → report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: A row key: the values of the key columns, in key-column order, as asyncpg decodes them.
Key = tuple[object, ...]

TypeKind = Literal["base", "array", "composite", "enum", "range"]


@dataclass(frozen=True)
class ColumnType:
    """What the comparison needs to know about a column's type.

    ``name`` is PostgreSQL's ``format_type`` text (``numeric(12,2)``, ``my_domain``);
    ``base`` is the ``typname`` after resolving domains (``numeric``, ``_int4`` for arrays,
    the type's own name for enums and composites). ``element`` is set for arrays,
    ``fields`` for composites.
    """

    name: str
    base: str
    kind: TypeKind = "base"
    element: ColumnType | None = None
    fields: tuple[tuple[str, ColumnType], ...] = ()
    collation: str | None = None


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    not_null: bool = False


@dataclass(frozen=True, order=True)
class TableRef:
    schema: str
    name: str

    def __post_init__(self) -> None:
        # a dict key several times per journal line: hash the fields once (the same
        # value the generated __hash__ gives; equality and ordering stay the fields')
        object.__setattr__(self, "_hash", hash((self.schema, self.name)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __reduce__(self) -> tuple[type[TableRef], tuple[str, str]]:
        # str hashes differ between processes: an unpickled copy hashes itself anew
        return (TableRef, (self.schema, self.name))

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def __str__(self) -> str:
        return self.qualified


@dataclass(frozen=True)
class Missing:
    """In the source, not in the target."""

    key: Key
    kind: Literal["missing"] = field(default="missing", init=False)


@dataclass(frozen=True)
class Extra:
    """In the target, not in the source."""

    key: Key
    kind: Literal["extra"] = field(default="extra", init=False)


@dataclass(frozen=True)
class Changed:
    """On both sides with different values in ``columns``."""

    key: Key
    columns: tuple[str, ...]
    kind: Literal["changed"] = field(default="changed", init=False)


Difference = Missing | Extra | Changed


@dataclass
class TableResult:
    """The outcome of comparing one table (``replverify.diff/1`` ``tables[]``)."""

    table: TableRef
    key: tuple[str, ...]
    key_mode: str  # "primary key", "--key" or "none" (row multiset)
    rows_source: int = 0
    rows_target: int = 0
    chunks: int = 0
    chunks_mismatched: int = 0
    differences_total: int = 0
    differences: list[Difference] = field(default_factory=list)
    truncated: bool = False
    schema_differences: tuple[str, ...] = ()
    digest: str = ""  # how equal chunks were recognised (see pipeline)
    digest_bits: int = 128  # width of the chunk digests: the collision risk per chunk
    #: per compared column, how the digest read it: ``binary``, ``text`` or ``decoded``
    column_forms: dict[str, str] = field(default_factory=dict)
    columns: tuple[str, ...] = ()  # compared columns (row images of multiset differences)
    error: str | None = None  # set when the table could not be (fully) verified
    #: rows still being written to on the source after every confirmation read: neither
    #: verified nor called different (a busy primary compared with its standby)
    unstable: list[Key] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def verified(self) -> bool:
        return self.error is None and not self.unstable

    @property
    def consistent(self) -> bool:
        return self.error is None and self.differences_total == 0 and not self.schema_differences

    @property
    def differing(self) -> bool:
        """Differences were found (rows or schema); a table that could not be verified is
        not differing for that (see :attr:`verified`)."""
        return self.differences_total > 0 or bool(self.schema_differences)


@dataclass
class DiffReport:
    """The outcome of ``replverify diff`` (``replverify.diff/1``)."""

    source: str
    target: str
    tables: list[TableResult]
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: replication lag of a standby target at the start and end of the run:
    #: ``{"start": {"lag_bytes", "lag_seconds", "method"}, "end": {...}}``
    lag: dict[str, dict[str, object]] = field(default_factory=dict)
    #: ``exact`` (binary send forms) or ``semantic`` (the type's ``=``): see ``--compare``
    compare: str = "exact"
    #: with ``--max-load``/``--max-lag``: seconds new reads were paused, per reason
    #: (``load``, ``lag``); None when the run was not throttled
    paused: dict[str, float] | None = None
    #: why the run ended before every table was compared (the Dask scheduler was lost);
    #: the tables then say what was verified
    aborted: str | None = None
    #: ``--digest auto``: the mode it chose, why, and what it measured to choose
    digest_choice: dict[str, object] | None = None

    @property
    def status(self) -> Literal["consistent", "different"]:
        return "consistent" if all(t.consistent for t in self.tables) else "different"

    @property
    def complete(self) -> bool:
        return all(t.verified for t in self.tables)

    @property
    def tables_differing(self) -> int:
        """Tables where differences were found."""
        return sum(t.differing for t in self.tables)

    @property
    def tables_unverified(self) -> int:
        """Tables not (fully) verified: an error stopped them, or rows were still being
        written to. Counted apart from :attr:`tables_differing`; a table can be both."""
        return sum(not t.verified for t in self.tables)
