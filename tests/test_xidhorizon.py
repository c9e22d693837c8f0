"""The xid horizon's pure parts: widening 32-bit xids, history files, WAL bounds."""

from __future__ import annotations

import struct

from replverify.ops.failback_attribution import decide
from replverify.ops.xidhorizon import parse_history, scan_segment, segment_name, widen

BLOCK = 8192


def test_widen_takes_the_nearest_xid_at_or_before_the_next_one() -> None:
    epoch = 5 << 32
    assert widen(726, epoch + 730) == epoch + 726
    # an xid from just before the wrap, seen after it: the previous epoch
    assert widen(0xFFFFFFF0, epoch + 10) == epoch - 16
    assert widen(2, epoch + 10) == 2  # frozen stays frozen: older than anything


def test_history_gives_the_last_switch() -> None:
    text = "1\t0/3000060\tno recovery target specified\n\n2\t1/A0\tbefore x\n"
    assert parse_history(text) == (2, (1 << 32) | 0xA0)
    assert parse_history("") is None
    assert segment_name(2, 0x3000060, 16 << 20) == "000000020000000000000003"


def _record(xid: int, prev: int, rmid: int = 10, info: int = 0, data: bytes = b"") -> bytes:
    body = (bytes([255, len(data)]) + data) if data else b""
    rec = struct.pack("<IIQBB2xI", 24 + len(body), xid, prev, info, rmid, 0) + body
    return rec + b"\0" * (-len(rec) % 8)


def test_scan_bounds_the_horizon_from_both_sides_of_the_switch() -> None:
    seg = 0x3000000
    page = bytearray(struct.pack("<HHIQIQII", 0xD110, 0x0002, 2, seg, 0, 1, 16 << 20, BLOCK))
    page += b"\0" * (40 - len(page))
    recs = [(724, 10), (725, 10), (0, 8)]  # OLD's records, then a running-xacts record
    lsn, prev = seg + 40, 0
    for xid, rmid in recs:
        data = struct.pack("<iiBxxxIII", 0, 0, 0, 726, 700, 725) if rmid == 8 else b""
        rec = _record(xid, prev, rmid, 0x10 if rmid == 8 else 0, data)
        page += rec
        prev, lsn = lsn, lsn + len(rec)
    switch = lsn
    for xid in (727, 726):  # NEW's own writes, the second one assigned first
        rec = _record(xid, prev)
        page += rec
        prev, lsn = lsn, lsn + len(rec)
    page += b"\0" * (BLOCK - len(page))
    scan = scan_segment(bytes(page), seg, switch, BLOCK, 730)
    assert (scan.lo, scan.hi, scan.records) == (726, 726, 5)
    # without the records after the switch, only the lower bound is known
    assert scan_segment(bytes(page), seg, lsn + 8, BLOCK, 730).hi is None


def test_decide_attributes_by_which_side_wrote_after_the_divergence() -> None:
    assert decide("missing", True, None)[:2] == ("old_only", "insert")
    assert decide("missing", False, None)[:2] == ("new_only", "delete")
    assert decide("extra", None, True)[:2] == ("new_only", "insert")
    assert decide("extra", None, False)[:2] == ("old_only", "delete")
    assert decide("changed", True, True)[0] == "conflict"
    assert decide("changed", True, False)[:2] == ("old_only", "update")
    assert decide("changed", False, True)[:2] == ("new_only", "update")
    assert decide("changed", True, None, "in the window") == ("unknown", "update", "in the window")
