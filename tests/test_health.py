"""``replverify health`` on real clusters."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner

from replverify.cli.main import main
from replverify.ops.health import health
from replverify.testing.clusters import LocalClusters
from replverify.testing.postgres import free_port
from replverify.testing.servers import cut_replication, restore_replication


async def test_healthy_pair(clusters: LocalClusters) -> None:
    report = await health(clusters.primary_dsn, clusters.standby_dsn, rpo=60)
    levels = {f.check: f.level for f in report.findings}
    assert report.status == "ok", report.findings
    assert levels["wal_receiver"] == "ok" and levels["slot"] == "ok"
    assert levels["timeline"] == "ok" and report.timelines == {"source": 1, "target": 1}


async def test_stopped_wal_receiver_is_reported(clusters: LocalClusters) -> None:
    pair = await asyncio.to_thread(clusters.fresh_pair)
    conninfo = await cut_replication(pair.standby_dsn)
    report = await health(pair.primary_dsn, pair.standby_dsn)
    found = {f.check: (f.level, f.message) for f in report.findings}
    assert report.status == "problem"
    assert found["wal_receiver"][0] == "fail" and "not receiving WAL" in found["wal_receiver"][1]
    assert found["replication"][0] == "fail"
    assert found["slot"][0] == "warn" and "inactive" in found["slot"][1]
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["health", pair.primary_dsn, pair.standby_dsn, "--format", "json"],
    )
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "replverify.health/1" and doc["status"] == "problem"
    await restore_replication(pair.standby_dsn, conninfo)
    text = await asyncio.to_thread(
        CliRunner().invoke, main, ["health", pair.primary_dsn, pair.standby_dsn]
    )
    assert text.exit_code == 0, text.output
    assert text.output.splitlines()[1].startswith("ok")


async def test_unreachable_side_cannot_be_checked(clusters: LocalClusters) -> None:
    dead = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/postgres"
    report = await health(clusters.primary_dsn, dead)
    assert report.status == "unknown" and not report.complete
    assert "s3cret" not in json.dumps([f.message for f in report.findings])
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["health", clusters.primary_dsn, dead]
    )
    assert result.exit_code == 2 and "fail" in result.output


async def test_promoted_target_shows_split_brain_and_timelines(clusters: LocalClusters) -> None:
    from replverify.testing.servers import promote

    pair = await asyncio.to_thread(clusters.fresh_pair)
    await promote(pair.standby_dsn)
    report = await health(pair.primary_dsn, pair.standby_dsn)
    found = {f.check: f.level for f in report.findings}
    assert found["recovery"] == "fail" and found["timeline"] == "fail"
    assert report.timelines == {"source": 1, "target": 2}
