"""``replverify demo`` runs the whole story on its own clusters and leaves nothing behind."""

from __future__ import annotations

from replverify.demo import run_demo


async def test_demo_runs_the_whole_story():
    lines: list[str] = []
    assert await run_demo(rows=1_000, echo=lines.append) == 0
    text = "\n".join(lines)
    assert "CONSISTENT" in text  # before the failure
    assert "WITHIN RPO" in text  # lag of the healthy pair
    assert "missing  id=1000020" in text  # diff names the lost rows
    assert "LOSS: 9 lost" in text  # reconcile names the lost writes
    # what a rewind of the old primary would discard: the 9 lost writes and the
    # unjournaled (keyless) event row, attributed on default settings by xids
    assert "failback: 10 old-only, 0 conflicting, 0 unknown" in text
    assert "failback: 1 old-only" in text  # after the reconcile replay: the event row
    assert "== 12." in text and "SAFE to switch" in text  # rewound, a standby, gated
    assert "NO LOSS" in text  # after the replay script
