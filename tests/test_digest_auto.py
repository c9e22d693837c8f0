"""``--digest auto`` on real servers, the target behind a shaped link
(:class:`replverify.testing.linkproxy.LinkProxy`): it measures the link at start, picks
in-database digests over a slow link and COPY digests on the LAN, and says why; and the
server digest keeps ``--compare exact`` where it can, and is not chosen where it cannot."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from test_compare import fresh_pair
from test_sql import make_plan

from replverify.api import DiffOptions, diff
from replverify.diff.choose import LINK_RTT_MS, SideProbe, _Side, decide, probe
from replverify.diff.ranges import KeyRange
from replverify.diff.sql import TableSQL
from replverify.reports.diff import diff_to_dict
from replverify.testing.linkproxy import LinkProxy

TABLE = (
    "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c numeric(12,2), d timestamptz);"
    "INSERT INTO t SELECT i, i % 1000, md5(i::text) || md5((i * 7)::text), i * 1.25,"
    " timestamptz '2026-01-01 00:00+00' + i * interval '1 second' FROM generate_series(1, 30000) i;"
    "ANALYZE t"
)


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) > 1 else host))


@pytest.fixture(scope="module")
async def pair(primary_dsn: str, other_dsn: str) -> list[str]:
    return await fresh_pair(primary_dsn, other_dsn, TABLE, TABLE)


async def test_auto_picks_server_over_a_slow_link(pair: list[str]) -> None:
    src, tgt = pair
    parts = urlsplit(tgt)
    assert parts.hostname and parts.port
    async with LinkProxy(parts.hostname, parts.port, rtt_ms=40, mbit_s=20) as proxy:
        report = await diff(src, _via(tgt, proxy.port), DiffOptions(chunk_rows=10_000))
    assert report.status == "consistent"
    doc = diff_to_dict(report)
    choice = doc["digest_choice"]
    assert choice["mode"] == "server", choice
    measured = choice["measured"]
    assert measured["target"]["rtt_ms"] >= 35  # the proxy's 40 ms round trip, measured
    assert measured["target"]["mbit_s"] < 40
    assert measured["server_work_s"] < measured["copy_work_s"]
    assert measured["target"]["jobs"] == 2
    # a 40 ms round trip is no LAN: the megabyte of the link test is not spent on it
    assert measured["target"]["link_mbit_s"] == 0
    # a chunk's fixed cost is its statement's round trip: the pool gives the connection
    # back without one (PostgreSQL 14 and later)
    assert measured["target"]["base_s"] == pytest.approx(
        measured["target"]["rtt_ms"] / 1000, abs=2e-4
    )
    assert doc["tables"][0]["digest"].startswith("server:")
    assert any(n.startswith("--digest auto chose server:") for n in doc["notes"])


async def test_auto_measures_a_near_slow_link(pair: list[str]) -> None:
    """Under ``LINK_RTT_MS`` the link alone is measured: a 2 ms, 20 Mbit/s link is no
    LAN, and the timed reads choose the in-database digest."""
    src, tgt = pair
    parts = urlsplit(tgt)
    assert parts.hostname and parts.port
    async with LinkProxy(parts.hostname, parts.port, rtt_ms=2, mbit_s=20) as proxy:
        report = await diff(src, _via(tgt, proxy.port), DiffOptions(chunk_rows=10_000))
    choice = diff_to_dict(report)["digest_choice"]
    assert choice["mode"] == "server", choice
    assert 2 <= choice["measured"]["target"]["rtt_ms"] < LINK_RTT_MS
    assert 0 < choice["measured"]["target"]["link_mbit_s"] < 40  # the cap, measured alone


async def test_probe_gives_back_its_connections(pair: list[str]) -> None:
    """The probe holds a connection per job while it measures, and gives every one back,
    also when a statement fails."""
    pools = [await asyncpg.create_pool(d, min_size=1, max_size=2) for d in pair]
    try:
        missing = TableSQL(make_plan())  # a table neither side has
        with pytest.raises(asyncpg.UndefinedTableError):
            await probe((pools[0], pools[1]), missing, KeyRange(None, (10,)), (150000,) * 2, 2)
        for pool in pools:
            assert pool.get_idle_size() == pool.get_size() == 2
            held = [await pool.acquire(timeout=5) for _ in range(2)]
            assert [await c.fetchval("SELECT count(*) FROM t") for c in held] == [30000] * 2
            for c in held:
                await pool.release(c)
    finally:
        for pool in pools:
            await pool.close()


async def test_auto_picks_copy_on_the_lan(pair: list[str]) -> None:
    src, tgt = pair
    report = await diff(src, tgt, DiffOptions(chunk_rows=10_000))
    doc = diff_to_dict(report)
    assert doc["digest_choice"]["mode"] == "copy", doc["digest_choice"]
    assert doc["digest_choice"]["measured"]["target"]["rtt_ms"] < 20
    assert doc["digest_choice"]["measured"]["target"]["link_mbit_s"] >= 200
    assert doc["tables"][0]["digest"].startswith("copy:")
    assert any(n.startswith("--digest auto chose copy:") for n in doc["notes"])
    # a mode given explicitly is used as given, and nothing is measured
    given = diff_to_dict(await diff(src, tgt, DiffOptions(digest="server")))
    assert given["digest_choice"] is None
    assert given["tables"][0]["digest"].startswith("server:")


def test_proxy_shapes_the_link() -> None:
    """The proxy delays and caps the link: 2 MB through 20 Mbit/s take at least 0.8 s,
    and two connections at once share the cap (2 x 2 MB: at least 1.6 s)."""

    async def main() -> float:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"x" * (2 << 20))
            await w.drain()
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def fetch(proxy: LinkProxy) -> int:
            r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
            got = len(await r.read(-1))
            w.close()
            return got

        async with LinkProxy("127.0.0.1", port, rtt_ms=40, mbit_s=20) as proxy:
            t0 = time.perf_counter()
            assert await fetch(proxy) == 2 << 20
            one = time.perf_counter() - t0
            t0 = time.perf_counter()
            assert await asyncio.gather(fetch(proxy), fetch(proxy)) == [2 << 20] * 2
            two = time.perf_counter() - t0
        server.close()
        return one, two

    one, two = asyncio.run(main())
    assert 0.8 <= one < 10
    assert 1.6 <= two < 20


NAN = "CREATE TABLE n (id int PRIMARY KEY, f float8, fs float8[]);"


async def test_server_digest_tells_nan_bits_apart(primary_dsn: str, other_dsn: str) -> None:
    """'NaN' and 'Infinity' - 'Infinity' print alike but send different bits: exact calls
    them different, so the in-database digest hashes float columns' send forms."""
    src, tgt = await fresh_pair(
        primary_dsn,
        other_dsn,
        NAN + "INSERT INTO n VALUES (1, 'NaN', '{1}')",
        NAN + "INSERT INTO n VALUES (1, 'Infinity'::float8 - 'Infinity'::float8, '{1}')",
    )
    copy = await diff(src, tgt, DiffOptions(digest="copy"))
    assert copy.status == "different"  # the premise: the binary forms differ
    server = await diff(src, tgt, DiffOptions(digest="server"))
    assert server.status == "different"
    semantic = await diff(src, tgt, DiffOptions(digest="server", compare="semantic"))
    assert semantic.status == "consistent"
    # inside an array the text is all the database digest has: auto does not choose it
    auto = diff_to_dict(await diff(src, tgt))
    assert auto["digest_choice"]["mode"] == "copy"
    assert "cannot be exact for public.n.fs" in auto["digest_choice"]["why"]
    explicit = await diff(src, tgt, DiffOptions(digest="server"))
    assert any("--digest server cannot be exact for public.n.fs" in n for n in explicit.notes)


def _probe(copy_s: float, server_s: float, rtt_ms: float = 0.2) -> SideProbe:
    return SideProbe(150000, rtt_ms, 2_000, 2, copy_s, 300_000, server_s)


def test_decide() -> None:
    lan, geo = _probe(0.01, 0.03), _probe(0.2, 0.1, rtt_ms=40)
    assert decide(150000, 150000, [], (lan, lan)).mode == "copy"
    chosen = decide(150000, 150000, [], (lan, geo))
    assert chosen.mode == "server" and "rtt 40.0 ms" in chosen.why
    assert chosen.measured is not None and chosen.measured["copy_work_s"] == 0.16
    # the round trip is taken off: 50 ms of copying against 30 ms of hashing is no tie
    assert decide(150000, 150000, [], (lan, _probe(0.2, 0.18, rtt_ms=150))).mode == "server"
    # a near tie goes to copy
    assert decide(150000, 150000, [], (_probe(0.1, 0.095), lan)).mode == "copy"
    assert decide(100000, 150000, [], (lan, geo)).mode == "copy"  # no hashtextextended
    assert decide(110000, 150000, [], (lan, geo)).mode == "copy"  # float text changed in 12
    assert decide(120000, 150000, [], (lan, geo)).mode == "server"
    assert decide(150000, 150000, ["public.t.x (float8[])"], (lan, geo)).mode == "copy"
    assert decide(150000, 150000, [], None).mode == "copy"
    # a fast link is a LAN: copy, whatever small reads timed against each other show
    lan_link = SideProbe(150000, 0.1, 0, 2, 0.0, 0, 0.0, link_mbit_s=3000)
    fast = decide(150000, 150000, [], (lan_link, lan_link))
    assert fast.mode == "copy" and "3,000 Mbit/s" in fast.why


async def test_round_trip_is_the_best_of_a_few(pair: list[str]) -> None:
    """A client whose loop is busy when an answer arrives reads a longer round trip: the
    side's round trip is the best of a few per connection, so one stall (here 15 ms
    during the first, over a 2 ms link) does not make a near link look far."""
    parts = urlsplit(pair[1])
    assert parts.hostname and parts.port
    async with LinkProxy(parts.hostname, parts.port, rtt_ms=2) as proxy:
        pool = await asyncpg.create_pool(_via(pair[1], proxy.port), min_size=2, max_size=2)
        try:
            asyncio.get_running_loop().call_later(0.0005, time.sleep, 0.015)
            side = await _Side.open(pool, 15, 2, "SELECT 1")
            await side.close()
        finally:
            await pool.close()
    assert 2 <= side.rtt_ms < LINK_RTT_MS
    assert side.link > 0  # a near link: measured alone
