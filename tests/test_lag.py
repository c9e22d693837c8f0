"""``replverify lag``: the pure judging / interpolation logic, then real clusters.

Pairs whose replay is paused are fresh (``clusters.fresh_pair()``), so the session's
primary/standby stay usable; everything paused is resumed and everything opened closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest
from click.testing import CliRunner

from replverify.cli.lag import lag_exit_code
from replverify.cli.main import main
from replverify.db.connect import Endpoint, connect
from replverify.errors import UsageError
from replverify.lag.estimate import (
    HeartbeatWrite,
    LsnHistory,
    SourceReading,
    TargetReading,
    lag_from_heartbeat,
    lag_from_lsn,
    lag_from_slot,
)
from replverify.lag.model import (
    METHODS,
    LagReport,
    LagSample,
    ReplicationSlot,
    ReplicationState,
    SourceFacts,
    Subscription,
    TargetFacts,
    WalReceiver,
    WalSender,
    judge,
    percentile,
)
from replverify.lag.probe import HEARTBEAT_DDL, conninfo_host_port
from replverify.lag.relation import classify
from replverify.lag.sampler import measure_lag, snapshot
from replverify.reports.formats import LAG_RENDERERS
from replverify.reports.lag import lag_to_dict
from replverify.testing.servers import (
    cut_replication,
    fetchval,
    pause_replay,
    promote,
    restore_replication,
    resume_replay,
    wait_for_replay,
)

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(seconds: float) -> float:
    return at(seconds).timestamp()


def sample(seconds: float, method="lsn-history", nbytes: int = 100) -> LagSample:
    return LagSample(at=T0, lag_bytes=nbytes, lag_seconds=seconds, method=method, source_lsn=1000)


# ============================================================== pure: percentiles, judge


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(i) for i in range(1, 21)], 95) == pytest.approx(19.05)
    assert percentile([1.0, 2.0], 0) == 1.0 and percentile([1.0, 2.0], 100) == 2.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_judge_against_the_rpo():
    within = [sample(0.0, "caught-up"), sample(0.8)]
    assert judge(within, None) is None
    assert judge([], 1.0) is None
    assert judge(within, 1.0) is True
    assert judge(within, 0.8) is True  # "exceeds" means strictly more
    assert judge([*within, sample(1.2)], 1.0) is False
    # An upper bound above the RPO counts (the judge errs towards the alarm) ...
    assert judge([sample(3.0, "replay-timestamp")], 1.0) is False
    # ... a lower bound within it proves nothing, one above it proves the breach.
    assert judge([sample(0.5, "history-bound")], 1.0) is None
    assert judge([sample(0.5, "heartbeat-missing")], 1.0) is None
    assert judge([sample(1.5, "history-bound")], 1.0) is False


def test_every_method_is_described_and_bounded():
    for method in METHODS:
        assert sample(0.0, method).bound in ("estimate", "upper", "lower")


def report_of(samples, rpo=None, **kw) -> LagReport:
    state = ReplicationState("streaming", "the target is a streaming standby of the source")
    src, tgt = "postgresql://a@h1/db", "postgresql://a@h2/db"
    return LagReport(src, tgt, tuple(samples), state, rpo, **kw)


def test_report_summary_and_exit_codes():
    r = report_of([sample(0.0, "caught-up", 0), sample(0.4, nbytes=800), sample(2.0, nbytes=50)], 1)
    assert (r.max_lag_seconds, r.max_lag_bytes) == (2.0, 800)
    assert r.p50_lag_seconds == 0.4 and r.p95_lag_seconds == pytest.approx(1.84)
    assert (r.within_rpo, r.status, lag_exit_code(r)) == (False, "exceeded", 1)
    r = report_of(r.samples[:2], 1)
    assert (r.within_rpo, r.status, lag_exit_code(r)) == (True, "within", 0)
    r = report_of(r.samples, None)
    assert (r.within_rpo, r.status, lag_exit_code(r)) == (None, "measured", 0)
    r = report_of([sample(0.2, "history-bound")], 1)
    assert (r.within_rpo, r.status, lag_exit_code(r)) == (None, "unknown", 2)
    r = report_of([], 1, interrupted=True)
    assert (r.max_lag_seconds, r.status, lag_exit_code(r)) == (None, "unknown", 2)


# ============================================================== pure: LSN history


def test_history_interpolates_when_the_source_passed_a_position():
    h = LsnHistory()
    for t, lsn in [(0.0, 1000), (1.0, 2000), (2.0, 2000), (3.0, 5000)]:
        h.add(t, lsn)
    assert h.passed(1500) == pytest.approx(0.5)
    assert h.passed(1000) == pytest.approx(0.0)
    # Idle at 2000 until t=2: what came after 2000 was written after t=2, not after t=1.
    assert h.passed(2000) == pytest.approx(2.0)
    assert h.passed(3500) == pytest.approx(2.5)
    assert h.passed(999) is None  # passed before the history began
    assert h.passed(5000) is None  # not passed yet
    assert h.passed(9999) is None


def test_history_keeps_only_the_ends_of_an_idle_run():
    h = LsnHistory()
    for t in range(100):
        h.add(float(t), 1000)
    h.add(100.0, 1200)
    assert h.points == ((0.0, 1000), (99.0, 1000), (100.0, 1200))
    assert h.passed(1000) == pytest.approx(99.0)


def test_history_ignores_clock_steps_back_and_restarts_when_wal_goes_back():
    h = LsnHistory()
    h.add(10.0, 1000)
    h.add(9.0, 5000)  # clock stepped back: ignored
    assert h.points == ((10.0, 1000),)
    h.add(11.0, 2000)
    h.add(12.0, 500)  # another server / timeline: start over
    assert h.points == ((12.0, 500),)


def test_history_thins_old_points_but_brackets_stay_true():
    h = LsnHistory(max_points=64)
    for i in range(1000):
        h.add(float(i), i * 100)  # the source is at i*100 at time i, steady
    assert len(h) <= 64
    assert h.oldest == (0.0, 0)
    assert h.points[-1] == (999.0, 99900)
    for lsn in (50, 12345, 50_000, 99_850):
        assert h.passed(lsn) == pytest.approx(lsn / 100)  # steady rate: exact anyway


def test_history_needs_room():
    with pytest.raises(ValueError):
        LsnHistory(max_points=2)


# ============================================================== pure: lag of one sample


def target(replay_lsn, *, replay_ts=None, **kw) -> TargetReading:
    return TargetReading(
        at=at(10), in_recovery=True, replay_lsn=replay_lsn, replay_timestamp=replay_ts, **kw
    )


def history(*points: tuple[float, int]) -> LsnHistory:
    h = LsnHistory()
    for t, lsn in points:
        h.add(ts(t), lsn)
    return h


def test_caught_up_is_zero_however_old_the_last_commit():
    h = history((0, 5000), (10, 5000))
    s = lag_from_lsn(SourceReading(at(10), 5000), target(5000, replay_ts=at(-3600)), h)
    assert (s.lag_seconds, s.lag_bytes, s.method) == (0.0, 0, "caught-up")
    # The target replayed past what the source had when it was read: still zero.
    s = lag_from_lsn(SourceReading(at(10), 5000), target(5100), h)
    assert (s.lag_seconds, s.lag_bytes, s.method) == (0.0, 0, "caught-up")


def test_behind_within_the_history_is_interpolated():
    h = history((0, 1000), (2, 1000), (4, 3000), (10, 9000))
    s = lag_from_lsn(SourceReading(at(10), 9000), target(2000, replay_ts=at(-3600)), h)
    assert s.method == "lsn-history"
    assert s.lag_bytes == 7000
    assert s.lag_seconds == pytest.approx(10 - 3)  # passed 2000 half-way between t=2 and t=4
    assert (s.replay_lsn, s.source_lsn, s.at) == (2000, 9000, at(10))


def test_behind_before_the_history_falls_back_to_the_replay_timestamp():
    h = history((5, 4000), (10, 9000))
    s = lag_from_lsn(SourceReading(at(10), 9000), target(1000, replay_ts=at(-20)), h)
    assert (s.method, s.bound, s.lag_bytes) == ("replay-timestamp", "upper", 8000)
    assert s.lag_seconds == pytest.approx(30)
    # Never below what the history proves: behind since at least t=5.
    s = lag_from_lsn(SourceReading(at(10), 9000), target(1000, replay_ts=at(7)), h)
    assert s.lag_seconds == pytest.approx(5)


def test_behind_with_no_replayed_commit_is_a_lower_bound():
    h = history((5, 4000), (10, 9000))
    s = lag_from_lsn(SourceReading(at(10), 9000), target(1000), h)
    assert (s.method, s.bound, s.lag_seconds) == ("history-bound", "lower", pytest.approx(5))
    s = lag_from_lsn(SourceReading(at(10), 9000), target(1000), LsnHistory())
    assert (s.method, s.lag_seconds) == ("history-bound", 0.0)


def test_a_target_without_replay_position_is_refused():
    with pytest.raises(ValueError, match="not in recovery"):
        lag_from_lsn(SourceReading(at(10), 9000), target(None), LsnHistory())


def test_heartbeat_lag():
    first, last = HeartbeatWrite(at(0), 1000), HeartbeatWrite(at(9), 9000)
    src = SourceReading(at(10), 9500)
    s = lag_from_heartbeat(src, target(None, heartbeat_at=at(9), heartbeat_lsn=9000), last, first)
    assert (s.lag_seconds, s.lag_bytes, s.method) == (0.0, 0, "heartbeat")
    s = lag_from_heartbeat(src, target(None, heartbeat_at=at(4), heartbeat_lsn=4000), last, first)
    assert (s.lag_seconds, s.lag_bytes, s.method) == (6.0, 5500, "heartbeat")
    assert s.heartbeat_at == at(4)
    s = lag_from_heartbeat(src, target(None), last, first)
    assert (s.lag_seconds, s.lag_bytes, s.method, s.bound) == (
        10.0,
        8500,
        "heartbeat-missing",
        "lower",
    )


# ============================================================== pure: who is the target?

SENDER = WalSender(5, "db2", "10.0.0.2", 40000, "streaming", "async", 900, 900, 900, 800)
SLOT = ReplicationSlot("db2_slot", "physical", True, 5, 700, "reserved")
SRC = SourceFacts(
    in_recovery=False,
    system_id="7711",
    port=5432,
    addresses=frozenset({"10.0.0.1"}),
    senders=(SENDER,),
    slots=(SLOT,),
)


def tgt(receiver=None, *, in_recovery=True, system_id="7711", name="db2") -> TargetFacts:
    return TargetFacts(in_recovery=in_recovery, system_id=system_id, cluster_name=name,
                       receiver=receiver)  # fmt: skip


def rcv(host="10.0.0.1", port=5432, slot=None, status="streaming") -> WalReceiver:
    return WalReceiver(status=status, sender_host=host, sender_port=port, slot_name=slot)


def test_classify_streaming_standby_by_slot_or_by_address():
    s = classify(SRC, tgt(rcv(host="elsewhere", slot="db2_slot")))
    assert (s.relation, s.sender, s.slot, s.physical) == ("streaming", SENDER, SLOT, True)
    assert "via slot db2_slot" in s.description
    s = classify(SRC, tgt(rcv()))
    assert (s.relation, s.sender) == ("streaming", SENDER)
    assert "no replication slot" in s.description


def test_classify_says_clearly_when_the_target_is_not_a_standby_of_the_source():
    s = classify(SRC, tgt(in_recovery=False))
    assert (s.relation, s.physical) == ("not_standby", False)
    assert "not in recovery" in s.description
    s = classify(SRC, tgt(rcv(), system_id="9999"))
    assert (s.relation, s.physical) == ("other_cluster", False)
    assert "9999" in s.description and "7711" in s.description
    s = classify(SRC, tgt(None))
    assert (s.relation, s.physical) == ("disconnected", True)
    assert "no WAL receiver" in s.description
    s = classify(SRC, tgt(rcv(status="waiting")))
    assert s.relation == "disconnected" and "waiting" in s.description
    s = classify(SRC, tgt(rcv(port=6543)))  # cascading standby
    assert (s.relation, s.physical) == ("standby", True)
    assert "10.0.0.1:6543" in s.description
    s = classify(SourceFacts(False, None, 5432), tgt(rcv(), system_id=None))
    assert s.relation == "streaming" and "system identifiers unknown" in s.description


# ============================================================== pure: the JSON contract


def test_json_matches_the_contract():
    samples = [
        LagSample(at(0), 0, 0.0, "caught-up", 0x3000148, 0x3000148, 0x3000148, False),
        LagSample(at(1), 4096, 0.75, "lsn-history", 0x3001148, 0x3000148, 0x3001148, True),
    ]
    doc = json.loads(LAG_RENDERERS["json"](report_of(samples, 0.5)))
    assert doc["schema"] == "replverify.lag/1"
    assert doc["source"] == "postgresql://a@h1/db" and doc["target"] == "postgresql://a@h2/db"
    assert doc["samples"][1] == {
        "at": "2026-11-23T10:00:01+00:00",
        "lag_bytes": 4096,
        "lag_seconds": 0.75,
        "method": "lsn-history",
        "bound": "estimate",
        "source_lsn": "0/3001148",
        "replay_lsn": "0/3000148",
        "receive_lsn": "0/3001148",
        "replay_paused": True,
        "heartbeat_at": None,
    }
    assert (doc["max_lag_seconds"], doc["max_lag_bytes"]) == (0.75, 4096)
    assert (doc["rpo_seconds"], doc["within_rpo"], doc["status"]) == (0.5, False, "exceeded")
    assert set(doc["methods"]) == {"caught-up", "lsn-history"}
    assert doc["replication"]["relation"] == "streaming"
    doc = lag_to_dict(report_of(samples[:1]))
    assert (doc["rpo_seconds"], doc["within_rpo"]) == (None, None)
    text = LAG_RENDERERS["text"](report_of(samples, 0.5))
    assert "RPO EXCEEDED: max lag 0.750 s, 4,096 bytes (RPO 0.5 s)" in text
    assert "[replay paused]" in text
    assert LAG_RENDERERS["markdown"](report_of(samples, 1)).startswith("### replverify lag: ✅")


# ============================================================== real clusters


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def pair(clusters):
    """A disposable primary + standby: these tests pause its replay."""
    p = clusters.fresh_pair()
    try:
        yield p
    finally:
        p.close()


async def _write_loop(dsn: str, stop: threading.Event | asyncio.Event) -> int:
    """Commit a row every ~10 ms until ``stop``; returns how many."""
    conn = await asyncpg.connect(dsn)
    n = 0
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS lag_writes (id bigserial, at timestamptz)")
        while not stop.is_set():
            await conn.execute("INSERT INTO lag_writes (at) VALUES (clock_timestamp())")
            n += 1
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return n


async def test_idle_caught_up_pair_is_zero_long_after_the_last_commit(clusters):
    primary, standby = clusters.primary_dsn, clusters.standby_dsn
    await fetchval(primary, "SELECT txid_current()")  # a commit, then silence
    await wait_for_replay(primary, standby)
    await asyncio.sleep(1.2)
    naive = await fetchval(
        standby, "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
    )
    assert naive > 1.0  # the trap: "time since the last replayed commit" keeps growing
    report = await measure_lag(primary, standby, samples=3, interval=0.2, rpo=0.1)
    assert [s.lag_seconds for s in report.samples] == [0.0, 0.0, 0.0]
    assert all(s.method == "caught-up" and s.lag_bytes <= 300 for s in report.samples)
    assert (report.within_rpo, report.status) == (True, "within")
    assert report.replication.relation == "streaming"
    assert report.replication.slot is not None and report.replication.slot.name == (
        "replverify_standby"
    )
    assert report.replication.sender is not None and report.replication.receiver is not None
    # Nothing was written without --heartbeat.
    assert await fetchval(primary, "SELECT to_regclass('replverify.heartbeat')") is None


async def test_paused_replay_grows_then_resumed_idle_is_within(pair):
    stop = asyncio.Event()
    writer = asyncio.create_task(_write_loop(pair.primary_dsn, stop))
    paused: list[float] = []

    async def pause_after_first(s: LagSample) -> None:
        if not paused:
            before = time.time()
            await pause_replay(pair.standby_dsn)
            paused.extend([before, time.time()])

    try:
        await asyncio.sleep(0.2)
        report = await measure_lag(
            pair.primary_dsn, pair.standby_dsn, samples=6, interval=0.3, rpo=1.0,
            on_sample=pause_after_first,
        )  # fmt: skip
    finally:
        stop.set()
        await writer
    try:
        after = report.samples[1:]
        assert all(s.method == "lsn-history" and s.replay_paused for s in after)
        secs = [s.lag_seconds for s in after]
        nbytes = [s.lag_bytes for s in after]
        assert secs == sorted(secs) and secs[-1] - secs[0] > 1.0
        assert nbytes == sorted(nbytes) and nbytes[0] > 0 and nbytes[-1] > nbytes[0]
        # Honest: the lag is the time since replay stopped, to within a poll or so.
        for s in after:
            since = s.at.timestamp()
            assert since - paused[1] - 0.25 <= s.lag_seconds <= since - paused[0] + 0.25
        assert (report.within_rpo, report.status, lag_exit_code(report)) == (False, "exceeded", 1)
        assert report.max_lag_seconds == secs[-1] and report.max_lag_bytes == nbytes[-1]
        assert report.replication.replay_paused is True
        assert any("paused" in n for n in report.notes)
    finally:
        await resume_replay(pair.standby_dsn)
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)
    report = await measure_lag(pair.primary_dsn, pair.standby_dsn, samples=3, interval=0.2, rpo=1)
    assert [s.lag_seconds for s in report.samples] == [0.0, 0.0, 0.0]
    assert (report.within_rpo, lag_exit_code(report)) == (True, 0)


def test_cli_paused_replay_exceeds_rpo_exit_1_and_resumed_exit_0(pair, tmp_path):
    stop = threading.Event()
    writer = threading.Thread(target=lambda: asyncio.run(_write_loop(pair.primary_dsn, stop)))
    writer.start()
    try:
        time.sleep(0.2)
        asyncio.run(pause_replay(pair.standby_dsn))
        time.sleep(0.3)
        out = tmp_path / "lag.json"
        result = run(
            "lag", pair.primary_dsn, pair.standby_dsn, "--samples", "4", "--interval", "0.3",
            "--rpo", "1", "--format", "json", "-o", str(out),
        )  # fmt: skip
    finally:
        stop.set()
        writer.join()
        asyncio.run(resume_replay(pair.standby_dsn))
    assert result.exit_code == 1, result.output
    doc = json.loads(out.read_text())
    assert (doc["schema"], doc["within_rpo"], doc["rpo_seconds"]) == ("replverify.lag/1", False, 1)
    secs = [s["lag_seconds"] for s in doc["samples"]]
    nbytes = [s["lag_bytes"] for s in doc["samples"]]
    assert secs == sorted(secs) and secs[-1] > 1.0 and secs[-1] - secs[0] > 0.8
    assert nbytes == sorted(nbytes) and nbytes[-1] > nbytes[0] > 0
    # Paused before sampling began: the fallback upper bound, and it says so.
    assert {s["method"] for s in doc["samples"]} == {"replay-timestamp"}
    assert any("upper bound" in n for n in doc["notes"])
    assert doc["replication"]["replay_paused"] is True

    asyncio.run(wait_for_replay(pair.primary_dsn, pair.standby_dsn))
    result = run("lag", pair.primary_dsn, pair.standby_dsn, "--samples", "2", "--interval",
                 "0.2", "--rpo", "1", "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["within_rpo"] is True and doc["max_lag_seconds"] == 0.0


def test_cli_json_contract_and_formats(clusters):
    primary, standby = clusters.primary_dsn, clusters.standby_dsn
    result = run("lag", primary, standby, "--samples", "2", "--interval", "0.2", "--format",
                 "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    for key in ("schema", "source", "target", "samples", "max_lag_seconds", "max_lag_bytes",
                "rpo_seconds", "within_rpo"):  # fmt: skip
        assert key in doc
    assert doc["schema"] == "replverify.lag/1"
    assert (doc["rpo_seconds"], doc["within_rpo"], doc["status"]) == (None, None, "measured")
    assert len(doc["samples"]) == 2
    for s in doc["samples"]:
        assert datetime.fromisoformat(s["at"]).utcoffset() == timedelta(0)
        assert isinstance(s["lag_bytes"], int) and isinstance(s["lag_seconds"], float)
        assert s["method"] in METHODS
    assert doc["replication"]["relation"] == "streaming"
    assert doc["source"] == str(Endpoint.parse(primary))

    text = run("lag", primary, standby, "--samples", "1", "--interval", "0.2", "--rpo", "5")
    assert text.exit_code == 0 and "WITHIN RPO" in text.output
    assert "streaming standby of the source" in text.output
    md = run("lag", primary, standby, "--samples", "1", "--format", "markdown")
    assert md.exit_code == 0 and md.output.startswith("### replverify lag")


def test_cli_watch_prints_one_line_per_sample_then_the_summary(clusters):
    result = run("lag", clusters.primary_dsn, clusters.standby_dsn, "--watch", "--samples", "3",
                 "--interval", "0.2")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # a header once, the samples streamed under it, then the summary without reprinting them
    assert lines[0].startswith("at (source clock, UTC)") and lines[0].endswith("method")
    assert sum(line.startswith("at (source clock") for line in lines) == 1
    assert sum(line.endswith("caught-up") for line in lines) == 3
    assert all(line.endswith("caught-up") for line in lines[1:4])
    assert lines[-1].startswith("LAG: max lag 0.000 s")


def test_cli_watch_until_ctrl_c_keeps_the_summary(clusters):
    timer = threading.Timer(0.8, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        result = run("lag", clusters.primary_dsn, clusters.standby_dsn, "--watch", "--interval",
                     "0.2", "--rpo", "5", "--format", "json")  # fmt: skip
    finally:
        timer.cancel()
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["interrupted"] is True and doc["within_rpo"] is True
    assert 2 <= len(doc["samples"]) <= 6
    assert result.stderr.count("caught-up") == len(doc["samples"])  # lines on stderr for json


async def test_stop_event_ends_sampling(clusters):
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    seen: list[LagSample] = []
    report = await measure_lag(
        clusters.primary_dsn, clusters.standby_dsn, samples=None, interval=0.1, stop=stop,
        on_sample=seen.append,
    )  # fmt: skip
    assert report.interrupted and 2 <= len(report.samples) <= 7
    assert list(report.samples) == seen


def test_target_not_a_standby_without_heartbeat_is_trouble(clusters, pair):
    result = run("lag", clusters.primary_dsn, clusters.other_dsn, "--samples", "1")
    assert result.exit_code == 2
    assert "not a physical standby" in result.stderr and "--heartbeat" in result.stderr
    assert "Traceback" not in result.output
    # A standby, but of another cluster (different system identifier).
    result = run("lag", clusters.primary_dsn, pair.standby_dsn, "--samples", "1")
    assert result.exit_code == 2
    assert "standby of another cluster" in result.stderr


def test_unreachable_and_bad_arguments_are_trouble(clusters):
    result = run("lag", "postgresql://postgres@127.0.0.1:1/postgres", clusters.standby_dsn,
                 "--samples", "1")  # fmt: skip
    assert result.exit_code == 2 and "cannot connect" in result.stderr
    assert run("lag", clusters.primary_dsn, clusters.standby_dsn, "--interval", "0").exit_code == 2
    assert run("lag", clusters.primary_dsn, clusters.standby_dsn, "--rpo", "-1").exit_code == 2


async def test_api_validates_arguments(clusters):
    with pytest.raises(UsageError, match="--samples"):
        await measure_lag(clusters.primary_dsn, clusters.standby_dsn, samples=0)


async def test_snapshot_for_diff(clusters):
    src, tgt, other = [
        await connect(Endpoint.parse(d))
        for d in (clusters.primary_dsn, clusters.standby_dsn, clusters.other_dsn)
    ]
    try:
        await wait_for_replay(clusters.primary_dsn, clusters.standby_dsn)
        s = await snapshot(src, tgt)
        assert s is not None and s.method == "caught-up" and s.lag_seconds == 0.0
        assert await snapshot(src, other) is None
    finally:
        for c in (src, tgt, other):
            await c.close()


# ------------------------------------------------------------- heartbeat


async def _database(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + name


async def _copy_heartbeat(src: str, dst: str, stop: asyncio.Event) -> None:
    """What a logical replication tool would do: copy the heartbeat row over, often."""
    s, d = await asyncpg.connect(src), await asyncpg.connect(dst)
    try:
        while not stop.is_set():
            if await s.fetchval("SELECT to_regclass('replverify.heartbeat') IS NOT NULL"):
                row = await s.fetchrow("SELECT id, at, lsn FROM replverify.heartbeat")
                if row is not None:
                    await d.execute(
                        "INSERT INTO replverify.heartbeat VALUES ($1, $2, $3) ON CONFLICT (id)"
                        " DO UPDATE SET at = excluded.at, lsn = excluded.lsn",
                        *row,
                    )
            await asyncio.sleep(0.01)
    finally:
        await s.close()
        await d.close()


async def test_heartbeat_between_independent_clusters(clusters):
    src = await _database(clusters.primary_dsn, "lag_heartbeat")
    dst = await _database(clusters.other_dsn, "lag_heartbeat")
    # The target needs the table first (logical replication does not copy DDL).
    with pytest.raises(UsageError, match=r"target has no replverify\.heartbeat") as err:
        await measure_lag(src, dst, samples=1, heartbeat=True)
    assert "CREATE TABLE" in str(err.value)
    conn = await asyncpg.connect(dst)
    await conn.execute(HEARTBEAT_DDL)
    await conn.close()

    stop = asyncio.Event()
    copier = asyncio.create_task(_copy_heartbeat(src, dst, stop))
    try:
        await asyncio.sleep(0.1)
        synced = await measure_lag(src, dst, samples=4, interval=0.25, rpo=1.0, heartbeat=True)
    finally:
        stop.set()
        await copier
    assert {s.method for s in synced.samples} == {"heartbeat"}
    assert synced.max_lag_seconds is not None and synced.max_lag_seconds < 0.4
    assert synced.within_rpo is True and synced.replication.relation == "not_standby"
    assert any("one write" in n for n in synced.notes)

    # Copy stopped, heartbeats continue: the lag grows with time, and so do the bytes.
    stalled = await measure_lag(src, dst, samples=4, interval=0.3, rpo=0.5, heartbeat=True)
    secs = [s.lag_seconds for s in stalled.samples]
    nbytes = [s.lag_bytes for s in stalled.samples]
    assert secs == sorted(secs) and secs[-1] - secs[0] > 0.8
    assert nbytes == sorted(nbytes) and nbytes[-1] > nbytes[0] > 0
    assert len({s.heartbeat_at for s in stalled.samples}) == 1  # the last one copied
    assert stalled.within_rpo is False

    result = await asyncio.to_thread(
        run, "lag", src, dst, "--heartbeat", "--samples", "2", "--interval", "0.2", "--rpo",
        "0.5", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert json.loads(result.output)["samples"][0]["method"] == "heartbeat"


async def test_heartbeat_through_a_physical_standby(pair):
    report = await measure_lag(
        pair.primary_dsn, pair.standby_dsn, samples=3, interval=0.25, heartbeat=True
    )
    assert {s.method for s in report.samples} <= {"heartbeat", "heartbeat-missing"}
    assert report.samples[-1].method == "heartbeat"
    assert report.samples[-1].lag_seconds < 0.3
    assert await fetchval(pair.standby_dsn, "SELECT count(*) FROM replverify.heartbeat") == 1


async def test_cut_off_standby_is_reported_and_falls_behind(pair):
    conninfo = await cut_replication(pair.standby_dsn)
    stop = asyncio.Event()
    writer = asyncio.create_task(_write_loop(pair.primary_dsn, stop))
    try:
        report = await measure_lag(pair.primary_dsn, pair.standby_dsn, samples=3, interval=0.25)
    finally:
        stop.set()
        await writer
        await restore_replication(pair.standby_dsn, conninfo)
    assert report.replication.relation == "disconnected"
    assert "not receiving WAL (no WAL receiver)" in report.replication.description
    assert report.replication.description in report.notes
    nbytes = [s.lag_bytes for s in report.samples]
    assert nbytes == sorted(nbytes) and nbytes[-1] > nbytes[0] > 0
    assert all(s.receive_lsn == s.replay_lsn for s in report.samples)  # nothing arrives
    await wait_for_replay(pair.primary_dsn, pair.standby_dsn)


async def test_target_promoted_while_sampling_is_trouble(pair):
    """Last test on ``pair``: it promotes the standby."""

    async def promote_after_first(s: LagSample) -> None:
        await promote(pair.standby_dsn)

    with pytest.raises(UsageError, match="no longer"):
        await measure_lag(
            pair.primary_dsn, pair.standby_dsn, samples=3, interval=0.2,
            on_sample=promote_after_first,
        )  # fmt: skip


# ============================================================== pure: logical subscribers

LOGICAL = ReplicationSlot(
    "up", "logical", True, 77, 500, "reserved", confirmed_flush_lsn=900, database="shop"
)
PUB = SourceFacts(False, "15", 5432, slots=(SLOT, LOGICAL), database="shop")


def subscriber(*subs: Subscription) -> TargetFacts:
    return TargetFacts(in_recovery=False, system_id="18", subscriptions=subs)


def test_classify_a_logical_subscriber_by_its_slot_database_and_port():
    sub = Subscription("up", True, "up", worker_pid=42, port=5432)
    s = classify(PUB, subscriber(sub))
    assert (s.relation, s.logical, s.physical) == ("subscriber", True, False)
    assert (s.subscription, s.slot) == (sub, LOGICAL)
    assert "subscription 'up' is enabled" in s.description and "pid 42" in s.description
    off = Subscription("up", False, "up")
    assert "disabled" in classify(PUB, subscriber(off)).description
    # another database, another port, a physical slot of that name: not the source's
    other_db = SourceFacts(False, "15", 5432, slots=(LOGICAL,), database="crm")
    assert classify(other_db, subscriber(sub)).relation == "not_standby"
    assert classify(PUB, subscriber(Subscription("up", True, "up", port=6000))).relation == (
        "not_standby"
    )
    assert classify(PUB, subscriber(Subscription("x", True, "db2_slot"))).relation == (
        "not_standby"
    )
    assert classify(PUB, subscriber()).relation == "not_standby"


def test_lag_from_slot_is_the_distance_to_the_confirmed_position():
    history = LsnHistory()
    for t, lsn in ((0, 1000), (2, 1000), (4, 3000)):
        history.add(at(t).timestamp(), lsn)
    now = SourceReading(at(4), 3000)
    s = lag_from_slot(now, 3000, history)
    assert (s.lag_bytes, s.lag_seconds, s.method) == (0, 0.0, "caught-up")
    s = lag_from_slot(now, 2000, history)  # written past 2000 at t=3
    assert (s.lag_bytes, s.lag_seconds, s.method, s.bound) == (
        1000,
        1.0,
        "slot-lsn-history",
        "estimate",
    )
    s = lag_from_slot(now, 400, history)  # behind since before the history began
    assert (s.lag_bytes, s.lag_seconds, s.method, s.bound) == (
        2600,
        4.0,
        "slot-history-bound",
        "lower",
    )
    assert lag_from_slot(now, None, history).method == "slot-history-bound"


def test_host_port_of_a_subscription_conninfo():
    assert conninfo_host_port("host=db1 port=5433 dbname=shop") == ("db1", 5433)
    assert conninfo_host_port("host=db1 dbname=shop") == ("db1", 5432)
    assert conninfo_host_port("postgresql://u@10.0.0.1:6000/shop") == ("10.0.0.1", 6000)
    assert conninfo_host_port("postgresql://u@h1:1,h2:2/shop") == (None, None)
    assert conninfo_host_port("") == (None, None)


async def test_lag_takes_parsed_endpoints(primary_dsn, standby_dsn, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A caller that parsed the DSNs (the CLI, for its metrics labels too) passes the
    endpoints: sampling does not parse the strings again."""
    src, tgt = Endpoint.parse(primary_dsn), Endpoint.parse(standby_dsn)
    parsed: list[str] = []
    real = Endpoint.parse.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Endpoint], dsn: str) -> Endpoint:
        parsed.append(dsn)
        return real(cls, dsn)  # type: ignore[no-any-return]

    monkeypatch.setattr(Endpoint, "parse", classmethod(counting))
    report = await measure_lag(src, tgt, samples=1, interval=0.1)
    assert len(report.samples) == 1 and parsed == []
