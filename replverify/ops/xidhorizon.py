"""The xid horizon of a promotion: which transaction ids the promoted server assigned.

After a promotion both servers go on assigning xids from the same counter, so an xid
alone does not say which side wrote a row version. The horizon H, the first xid the
promoted server (NEW) assigned, does: on the old primary (OLD) a row version with
xmin >= H was written after the divergence; on NEW it is NEW's own write; below H,
NEW's ``pg_xact_status(xmin)`` says whether OLD's transaction reached NEW.

H is NEW's next xid at the end of its recovery. It is read from NEW's WAL around the
switch point that ``pg_wal/<tli>.history`` names (the segment holds OLD's records up to
the switch, then NEW's own), as two bounds ``lo <= H <= hi``:

* ``lo``: every xid NEW replayed is below H (max xid + 1 of the records before the
  switch, and the next xid that checkpoint and running-xacts records there carry);
* ``hi``: every xid NEW assigned is H or more (the xids of records after the switch,
  the next xid of the checkpoint NEW requested at promotion and of running-xacts
  records, and NEW's current next xid).

Usually ``lo == hi``; xids in ``[lo, hi)`` cannot be told apart and rows carrying them
are reported unknown. Pure: parses bytes, no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Horizon", "WalScan", "parse_history", "scan_segment", "segment_name", "widen"]

XID_SPAN = 1 << 32
#: xids 0-2 are invalid, bootstrap and frozen: older than any divergence
FIRST_NORMAL_XID = 3
_XLP_FIRST_IS_CONTRECORD = 0x0001
_XLP_LONG_HEADER = 0x0002
_SHORT_PHD, _LONG_PHD = 24, 40  # MAXALIGN'd page header sizes (PostgreSQL 9.6-18)
_RECORD_HEADER = 24
_RM_XLOG, _RM_STANDBY = 0, 8
_CHECKPOINT_INFOS = (0x00, 0x10)  # XLOG_CHECKPOINT_SHUTDOWN, XLOG_CHECKPOINT_ONLINE
_RUNNING_XACTS = 0x10
_DATA_SHORT, _DATA_LONG, _ORIGIN, _TOPLEVEL_XID = 255, 254, 253, 252


def widen(xid: int, next_full: int) -> int:
    """The 64-bit (epoch-qualified) xid of a 32-bit ``xid`` seen on a server whose next
    full xid is ``next_full``: the nearest one at or before it (an unfrozen xid is at most
    2^31 old). Special xids (0-2) stay as they are."""
    if xid < FIRST_NORMAL_XID:
        return xid
    return next_full - (next_full - xid) % XID_SPAN


@dataclass(frozen=True)
class Horizon:
    lo: int
    hi: int
    source: str

    @property
    def exact(self) -> bool:
        return self.lo == self.hi


def parse_history(text: str) -> tuple[int, int] | None:
    """``(parent timeline, switch LSN)`` of the last switch in a timeline history file."""
    last = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.lstrip().startswith("#"):
            hi, _, lo = fields[1].partition("/")
            last = int(fields[0]), (int(hi, 16) << 32) | int(lo, 16)
    return last


def segment_name(tli: int, lsn: int, seg_size: int) -> str:
    segno = lsn // seg_size
    per_id = XID_SPAN // seg_size
    return f"{tli:08X}{segno // per_id:08X}{segno % per_id:08X}"


@dataclass
class WalScan:
    lo: int | None = None
    hi: int | None = None
    records: int = 0

    def before(self, full: int) -> None:
        self.lo = full if self.lo is None else max(self.lo, full)

    def after(self, full: int) -> None:
        self.hi = full if self.hi is None else min(self.hi, full)


def _main_data(rec: bytes) -> bytes | None:
    """The main data of a record without block references (checkpoint, running xacts)."""
    pos = _RECORD_HEADER
    while pos < len(rec):
        block_id = rec[pos]
        if block_id == _DATA_SHORT:
            n = rec[pos + 1]
            return rec[pos + 2 : pos + 2 + n]
        if block_id == _DATA_LONG:
            (n,) = struct.unpack_from("<I", rec, pos + 1)
            return rec[pos + 5 : pos + 5 + n]
        if block_id == _ORIGIN:
            pos += 3
        elif block_id == _TOPLEVEL_XID:
            pos += 5
        else:
            return None  # block references: not a record we read
    return None


def _stream(data: bytes, seg_lsn: int, block: int) -> tuple[bytearray, list[tuple[int, int]]]:
    """The record bytes of a segment without page headers, and where each page's part
    starts (stream offset, LSN). Stops at the first page that is not this segment's
    (a recycled file's stale tail)."""
    out, pages = bytearray(), []
    for off in range(0, len(data) - block + 1, block):
        magic, info, _tli, addr, rem = struct.unpack_from("<HHIQI", data, off)
        if addr != seg_lsn + off or magic == 0:
            break
        hdr = _LONG_PHD if info & _XLP_LONG_HEADER else _SHORT_PHD
        pages.append((len(out), seg_lsn + off + hdr))
        if off == 0 and info & _XLP_FIRST_IS_CONTRECORD:
            pages.append((-rem, 0))  # marker: the first record starts after ``rem`` bytes
        out += data[off + hdr : off + block]
    return out, pages


def scan_segment(data: bytes, seg_lsn: int, switch: int, block: int, next_full: int) -> WalScan:
    """Bounds of H from the WAL segment ``data`` starting at ``seg_lsn`` (see module)."""
    stream, pages = _stream(data, seg_lsn, block)
    scan = WalScan()
    skip = next((-s for s, lsn in pages if lsn == 0), 0)
    pages = [p for p in pages if p[1] != 0]
    pos = (skip + 7) & ~7
    page_i = 0
    prev_lsn: int | None = None
    while pos + _RECORD_HEADER <= len(stream):
        while page_i + 1 < len(pages) and pages[page_i + 1][0] <= pos:
            page_i += 1
        lsn = pages[page_i][1] + (pos - pages[page_i][0])
        tot_len, xid, prev, info, rmid = struct.unpack_from("<IIQBB", stream, pos)
        if tot_len < _RECORD_HEADER or pos + tot_len > len(stream):
            break
        if prev_lsn is not None and prev != prev_lsn:
            break  # stale bytes after the end of WAL
        rec = bytes(stream[pos : pos + tot_len])
        scan.records += 1
        note = scan.before if lsn < switch else scan.after
        if xid >= FIRST_NORMAL_XID:
            full = widen(xid, next_full)
            note(full + 1 if lsn < switch else full)
        if rmid == _RM_XLOG and info & 0xF0 in _CHECKPOINT_INFOS:
            main = _main_data(rec)
            if main is not None and len(main) >= 32:
                (nxt,) = struct.unpack_from("<Q", main, 24)
                note(nxt)
        elif rmid == _RM_STANDBY and info & 0xF0 == _RUNNING_XACTS:
            main = _main_data(rec)
            if main is not None and len(main) >= 16:
                (nxt,) = struct.unpack_from("<I", main, 12)
                note(widen(nxt, next_full) if nxt >= FIRST_NORMAL_XID else nxt)
        prev_lsn = lsn
        pos = (pos + tot_len + 7) & ~7
    return scan
