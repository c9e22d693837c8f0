"""Reconcile's passes read the journal once: pass 1 keeps each judged line's byte offset
and a log of settled writes (spilled to a temporary file), from which passes 2 and 3
read back only the lines they need. No database needed."""

from __future__ import annotations

import asyncio
import json
from array import array
from pathlib import Path

from replverify.journal.format import Marker
from replverify.journal.reader import JournalReader
from replverify.journal.resolve import RowResolver
from replverify.reconcile import run
from replverify.reconcile.ledger import SETTLED_WIDTH, ChainCollector, Ledger
from replverify.reconcile.run import _collect_chains, _LineAt, first_pass, reconcile_with
from replverify.reconcile.spill import Spill
from replverify.testing.memory import MemoryTarget
from tests.test_journal import ORDERS, TABLES

TS = "2026-11-23T10:00:00+00:00"


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps({"v": 1, "ts": TS, **r}) + "\n" for r in records))
    return path


def _upd(txid: str, seq: int, rid: int, note: str, state: str = "intent") -> dict[str, object]:
    return {"txid": txid, "seq": seq, "state": state, "op": "update", "table": "orders",
            "key": {"id": rid}, "values": {"note": note}}  # fmt: skip


def test_spill_gives_back_its_arrays_in_order() -> None:
    spill = Spill()
    assert list(spill.chunks()) == []
    for n in range(5):
        spill(array("q", range(n * 10, n * 10 + 10)))
    assert [list(a) for a in spill.chunks()] == [list(range(n * 10, n * 10 + 10)) for n in range(5)]
    spill.close()


def test_the_log_holds_settled_writes_in_settlement_order(tmp_path: Path) -> None:
    """t1's intent (line 1) settles at its marker (line 4), after t2's self-committed
    write (line 2); t3 aborts; t4 stays open (in doubt) and a later write covers it."""
    path = _write(
        tmp_path / "j.jsonl",
        [
            _upd("t1", 1, 1, "a"),
            _upd("t2", 2, 1, "b", "committed"),
            _upd("t4", 3, 2, "open"),
            {"txid": "t1", "state": "committed"},
            _upd("t3", 4, 1, "x"),
            {"txid": "t3", "state": "aborted"},
            _upd("t5", 5, 2, "c", "committed"),
        ],
    )
    spill = Spill()
    ledger, reader, _ = first_pass(str(path), RowResolver(TABLES), None, spill)
    spill(ledger.settled)
    log = [x for chunk in spill.chunks() for x in chunk]
    lines = [log[k + 1] for k in range(0, len(log), SETTLED_WIDTH)]
    assert lines == [2, 1, 7]
    offsets = [log[k + 3] for k in range(0, len(log), SETTLED_WIDTH)]
    raw = path.read_bytes().splitlines(keepends=True)
    assert offsets == [sum(len(r) for r in raw[: n - 1]) for n in lines]
    assert [line for line, _ in ledger.judged()] == [1, 7]  # row 1: t1 settled last
    (doubt,) = ledger.in_doubt()
    assert doubt.record.txid == "t4" and ledger.covered(doubt)
    assert ledger.counts["aborted"] == 1 and ledger.counts["superseded"] == 1
    assert reader.lines == 7
    spill.close()


def test_pass_3_compares_rows_not_only_their_hashes(tmp_path: Path) -> None:
    """A log entry whose hash matches a row of interest but whose row is another one is
    read and dropped."""
    path = _write(tmp_path / "j.jsonl", [_upd("a", 1, 1, "x", "committed"),
                                         _upd("b", 2, 2, "y", "committed")])  # fmt: skip
    resolver = RowResolver(TABLES)
    ledger = Ledger()
    offset = 0
    for line, raw in JournalReader(path).raw_lines():
        rec = JournalReader(path).parse(line, raw)
        assert not isinstance(rec, Marker)
        for w in resolver(rec):
            ledger.write(w, offset)
        offset += len(raw)
    wanted = (ORDERS.schema, ORDERS.name, 2)
    log = array("q", ledger.settled)
    log[0] = hash(wanted)  # row 1's entry now collides with row 2's hash
    collector = ChainCollector([wanted])
    lines = _LineAt(str(path))
    _collect_chains(collector, [log], lines, JournalReader(path).parse, resolver)
    lines.close()
    assert [s.post for s in collector.chain(wanted)] == [{"note": "y"}]


def test_a_long_journal_spills_and_keeps_its_chains(tmp_path: Path, monkeypatch) -> None:
    """Past the spill threshold pass 3 reads the chains back from the temporary file."""
    monkeypatch.setattr("replverify.reconcile.ledger.SPILL_WRITES", 8)
    made: list[Spill] = []
    real = run.Spill

    def spy() -> Spill:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(run, "Spill", spy)
    records = [_upd(f"t{i}", i, i % 3, f"n{i}", "committed") for i in range(100)]
    path = _write(tmp_path / "j.jsonl", records)
    rows = [{"id": i, "note": "stale"} for i in range(3)]
    report = asyncio.run(reconcile_with(path, MemoryTarget(TABLES, {ORDERS: rows})))
    assert report.counts["lost"] == 3 and report.counts["superseded"] == 97
    assert sorted(f.chain_total for f in report.lost) == [33, 33, 34]
    assert made and made[0]._sizes  # the log went to the file
