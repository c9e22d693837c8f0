"""``replverify files``: compare two directory trees (geo-redundant attachment/blob copies).

The walk is a merge of two sorted, depth-first listings, so memory holds one directory
listing per level, never the whole tree. Files present on both sides are compared by
size first and, only when the sizes agree, by an xxh3-128 digest of their content read
in blocks. Symbolic links are never followed: a link is compared by its target text.
Anything that cannot be read (permissions, a file vanishing mid-walk) is reported as
``unreadable``, never raised: the report is then incomplete (exit 2: never 0 when
something could not be checked).

The core (:func:`walk`, :func:`file_digest`, :func:`compare_trees`) is synchronous and
pure apart from reading the file system; the CLI calls it directly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import xxhash

from replverify.errors import UsageError
from replverify.ops.objstore import ObjectInfo, ObjectStore, StoreError

__all__ = [
    "BLOCK_SIZE",
    "Entry",
    "FileDifference",
    "FilesReport",
    "RpoCheck",
    "compare_objects",
    "compare_trees",
    "file_digest",
    "walk",
]

BLOCK_SIZE = 1 << 20

EntryKind = Literal["file", "dir", "symlink", "other"]
DiffKind = Literal["missing", "extra", "changed", "unreadable"]


@dataclass(frozen=True)
class Entry:
    """One name in a tree; ``path`` is relative, with ``/`` separators."""

    path: str
    kind: EntryKind
    size: int = 0
    link: str | None = None  # a symlink's target text
    error: str | None = None  # set when the entry (or its directory) could not be read


@dataclass(frozen=True)
class FileDifference:
    """``missing``: in A only; ``extra``: in B only; ``changed``: both, different
    (``reason``: size, content, type, symlink target); ``unreadable``: not checked."""

    kind: DiffKind
    path: str
    reason: str = ""
    side: str = ""  # for unreadable: "a", "b" or "both"
    #: how it was found: ``listing`` (in one listing only, or of another type), ``size``,
    #: ``md5`` (both listings' Content-MD5) or ``content`` (both read and hashed)
    method: str = "listing"


@dataclass
class FilesReport:
    dir_a: str
    dir_b: str
    differences: list[FileDifference] = field(default_factory=list)
    files_a: int = 0
    files_b: int = 0
    compared: int = 0  # regular files present on both sides and checked
    hashed: int = 0  # of those, how many needed their content read
    bytes_read: int = 0
    symlinks: int = 0
    elapsed_s: float = 0.0
    #: objects present on both sides settled from the listings: sizes differ, or both
    #: listings carry a Content-MD5 (compared, not read); the rest were ``hashed``
    by_listing: int = 0
    rpo: RpoCheck | None = None
    resumed_after: str | None = None  # --state: the run went on after this key

    @property
    def within_rpo(self) -> bool | None:
        return None if self.rpo is None else self.rpo.within

    @property
    def complete(self) -> bool:
        if self.rpo is not None and self.rpo.within is None:
            return False
        return not any(d.kind == "unreadable" for d in self.differences)

    @property
    def status(self) -> Literal["identical", "different"]:
        return "identical" if not self.differences else "different"

    def counts(self) -> dict[str, int]:
        out = {"missing": 0, "extra": 0, "changed": 0, "unreadable": 0}
        for d in self.differences:
            out[d.kind] += 1
        return out


@dataclass(frozen=True)
class RpoCheck:
    """``--rpo``: the geo-secondary's last sync time judged against ``rpo_seconds``.
    ``within`` is None when it cannot be told (then ``note`` says why)."""

    rpo_seconds: float
    checked_at: dt.datetime
    status: str | None = None
    last_sync: dt.datetime | None = None
    note: str = ""

    @property
    def lag_seconds(self) -> float | None:
        if self.last_sync is None:
            return None
        return max((self.checked_at - self.last_sync).total_seconds(), 0.0)

    @property
    def within(self) -> bool | None:
        lag = self.lag_seconds
        if lag is None or self.status != "live":
            return None
        return lag <= self.rpo_seconds


def _kind(mode: int) -> EntryKind:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def walk(root: str | os.PathLike[str]) -> Iterator[Entry]:
    """Every entry below ``root``, depth first, in component-wise sorted order (a
    directory's contents follow it directly: ``a``, ``a/x``, ``a.b``), which is what the
    merge in :func:`compare_trees` needs. Symlinks are not followed. An unreadable
    directory yields one entry with ``error`` set."""
    base = os.fspath(root)

    def listing(rel: tuple[str, ...]) -> Iterator[Entry]:
        here = os.path.join(base, *rel)
        try:
            names = sorted(os.listdir(here))
        except OSError as e:
            yield Entry("/".join(rel), "dir", error=_reason(e))
            return
        for name in names:
            parts = (*rel, name)
            path = os.path.join(here, name)
            relpath = "/".join(parts)
            try:
                st = os.lstat(path)
            except OSError as e:
                yield Entry(relpath, "other", error=_reason(e))
                continue
            kind = _kind(st.st_mode)
            if kind == "symlink":
                try:
                    link: str | None = os.readlink(path)
                except OSError as e:
                    yield Entry(relpath, kind, error=_reason(e))
                    continue
                yield Entry(relpath, kind, link=link)
            elif kind == "dir":
                yield Entry(relpath, kind)
                yield from listing(parts)
            else:
                yield Entry(relpath, kind, size=st.st_size if kind == "file" else 0)

    yield from listing(())


def file_digest(path: str | os.PathLike[str], block_size: int = BLOCK_SIZE) -> tuple[str, int]:
    """xxh3-128 of the file's content read in blocks, and the bytes read."""
    h = xxhash.xxh3_128()
    total = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block_size)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            total += n
    return h.hexdigest(), total


def _order(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def compare_trees(
    dir_a: str | os.PathLike[str],
    dir_b: str | os.PathLike[str],
    *,
    block_size: int = BLOCK_SIZE,
    progress: Callable[[str], None] | None = None,
    ledger: HashLedger | None = None,
) -> FilesReport:
    """Compare the trees below ``dir_a`` and ``dir_b``; differences are in the report.

    Raises :class:`~replverify.errors.UsageError` only when a root is not a directory.
    """
    a, b = os.fspath(dir_a), os.fspath(dir_b)
    for d in (a, b):
        if not os.path.isdir(d):
            raise UsageError(f"{d} is not a directory")
    started = time.perf_counter()
    report = FilesReport(a, b)
    if ledger is not None:
        ledger.order = _order
        report.resumed_after = ledger.resumed_after
    diffs = report.differences
    ia, ib = walk(a), walk(b)
    ea, eb = next(ia, None), next(ib, None)
    while ea is not None or eb is not None:
        if eb is None or (ea is not None and _order(ea.path) < _order(eb.path)):
            assert ea is not None
            _count(report, ea, "a")
            diffs.append(_one_side(ea, "missing", "a"))
            if ea.error and ea.kind == "dir":  # A's listing failed: B's side is unchecked
                eb = _drop_below(ea.path, eb, ib)
            ea = _skip_below(ea, ia, report, "a", "missing")
            continue
        if ea is None or _order(eb.path) < _order(ea.path):
            _count(report, eb, "b")
            diffs.append(_one_side(eb, "extra", "b"))
            if eb.error and eb.kind == "dir":
                ea = _drop_below(eb.path, ea, ia)
            eb = _skip_below(eb, ib, report, "b", "extra")
            continue
        _count(report, ea, "a")
        _count(report, eb, "b")
        if progress is not None:
            progress(ea.path)
        found = _compare(a, b, ea, eb, report, block_size, ledger)
        if found is not None:
            diffs.append(found)
            if ea.kind == "dir" and eb.kind != "dir":
                ea = _skip_below(ea, ia, report, "a", "missing")
                eb = next(ib, None)
                continue
            if eb.kind == "dir" and ea.kind != "dir":
                eb = _skip_below(eb, ib, report, "b", "extra")
                ea = next(ia, None)
                continue
        ea, eb = next(ia, None), next(ib, None)
    report.elapsed_s = time.perf_counter() - started
    return report


def _count(report: FilesReport, e: Entry, side: str) -> None:
    if e.kind == "dir":
        return
    if side == "a":
        report.files_a += 1
    else:
        report.files_b += 1
    if e.kind == "symlink":
        report.symlinks += 1


def _one_side(e: Entry, kind: DiffKind, side: str) -> FileDifference:
    if e.error:
        return FileDifference("unreadable", e.path, e.error, side)
    what = {"dir": "directory", "symlink": f"symlink -> {e.link}", "other": "special file"}
    return FileDifference(kind, e.path, what.get(e.kind, ""))


def _drop_below(path: str, e: Entry | None, it: Iterator[Entry]) -> Entry | None:
    """Skip the entries below ``path`` (not checked: the other side could not list it)."""
    prefix = _order(path)
    while e is not None and _order(e.path)[: len(prefix)] == prefix:
        e = next(it, None)
    return e


def _skip_below(
    e: Entry, it: Iterator[Entry], report: FilesReport, side: str, kind: DiffKind
) -> Entry | None:
    """After a directory found on one side only, report what it holds the same way."""
    nxt = next(it, None)
    if e.kind != "dir":
        return nxt
    prefix = _order(e.path)
    while nxt is not None and _order(nxt.path)[: len(prefix)] == prefix:
        _count(report, nxt, side)
        if nxt.kind != "dir" or nxt.error:
            report.differences.append(_one_side(nxt, kind, side))
        nxt = next(it, None)
    return nxt


def _compare(
    a: str,
    b: str,
    ea: Entry,
    eb: Entry,
    report: FilesReport,
    block_size: int,
    ledger: HashLedger | None = None,
) -> FileDifference | None:
    if ea.error or eb.error:
        side = "both" if ea.error and eb.error else ("a" if ea.error else "b")
        return FileDifference("unreadable", ea.path, ea.error or eb.error or "", side)
    if ea.kind != eb.kind:
        return FileDifference("changed", ea.path, f"type: {ea.kind} vs {eb.kind}")
    if ea.kind == "symlink":
        if ea.link != eb.link:
            return FileDifference("changed", ea.path, f"symlink target: {ea.link} vs {eb.link}")
        return None
    if ea.kind != "file":
        return None
    report.compared += 1
    if ea.size != eb.size:
        report.by_listing += 1
        return FileDifference(
            "changed", ea.path, f"size: {ea.size} vs {eb.size} bytes", method="size"
        )
    known = ledger.known(ea.path) if ledger is not None else None
    if known is not None:
        report.hashed += 1
        return None if known else FileDifference("changed", ea.path, "content", method="content")
    digests = []
    for root, side in ((a, "a"), (b, "b")):
        try:
            digest, n = file_digest(os.path.join(root, *ea.path.split("/")), block_size)
        except OSError as e:
            return FileDifference("unreadable", ea.path, _reason(e), side, "content")
        report.bytes_read += n
        digests.append(digest)
    report.hashed += 1
    if ledger is not None:
        ledger.record(ea.path, digests[0] == digests[1])
    if digests[0] != digests[1]:
        return FileDifference("changed", ea.path, "content", method="content")
    return None


# == objects: any two stores ===============================================================
FILES_STATE_SCHEMA = "replverify.ops.files-state/1"


class HashLedger:
    """``--state FILE`` for ``files``: what reading content already settled.

    Listings are cheap and are always taken again; reading content is what a resumed run
    spares. The file is JSON Lines: a header naming the two locations, then checkpoint
    lines ``{"upto": KEY, "changed": [...]}``: every pair up to KEY (in walk order) that
    had to be read was found equal, except the ``changed`` ones. A resumed run answers
    those pairs from the file while their sizes still agree and reads the rest, so its
    verdict is the one an uninterrupted run reaches on unchanged data. Memory holds the
    changed keys only.
    """

    def __init__(
        self,
        path: str,
        source: str,
        target: str,
        *,
        order: Callable[[str], Any] = lambda k: k,
        every_s: float = 2.0,
    ) -> None:
        self.path = path
        self.order = order
        self.every_s = every_s
        self.upto: str | None = None
        self.changed: set[str] = set()
        header = {"schema": FILES_STATE_SCHEMA, "source": source, "target": target}
        if os.path.exists(path) and os.path.getsize(path) > 0:
            self._load(header)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        else:
            self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115
            self._file.write(json.dumps(header) + "\n")
            self._file.flush()
        self.resumed_after = self.upto
        self._pending: list[str] = []
        self._last_key: str | None = None
        self._last_write = time.monotonic()

    def _load(self, header: dict[str, str]) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        try:
            first = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            raise UsageError(f"--state {self.path}: not a replverify files state file") from None
        if first != header:
            raise UsageError(
                f"--state {self.path} records another comparison "
                f"({first.get('source')} vs {first.get('target')})"
            )
        for n, line in enumerate(lines[1:], start=2):
            try:
                rec = json.loads(line)
                upto, changed = rec["upto"], rec["changed"]
            except (json.JSONDecodeError, KeyError, TypeError):
                if n == len(lines):  # a torn last line: that checkpoint is not taken
                    break
                raise UsageError(f"--state {self.path}: line {n} is damaged") from None
            self.upto = upto
            self.changed.update(changed)

    def known(self, key: str) -> bool | None:
        """True: read before and equal; False: read before and changed; None: read it."""
        if self.resumed_after is None or self.order(key) > self.order(self.resumed_after):
            return None
        return key not in self.changed

    def record(self, key: str, equal: bool) -> None:
        if not equal:
            self._pending.append(key)
        self._last_key = key
        if time.monotonic() - self._last_write >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._last_key is None:
            return
        if self.upto is not None and self.order(self._last_key) <= self.order(self.upto):
            return
        self._file.write(json.dumps({"upto": self._last_key, "changed": self._pending}) + "\n")
        self._file.flush()
        self.upto = self._last_key
        self._pending = []
        self._last_write = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._file.close()


def _digest_blocks(blocks: Iterator[bytes]) -> tuple[str, int]:
    h = xxhash.xxh3_128()
    total = 0
    for block in blocks:
        h.update(block)
        total += len(block)
    return h.hexdigest(), total


def _ordered(it: Iterator[ObjectInfo], store: ObjectStore) -> Iterator[ObjectInfo]:
    """The listing, refused if it is not in strict key order: the merge would report
    objects as missing and extra that are on both sides."""
    last: str | None = None
    for info in it:
        if last is not None and info.key <= last:
            raise StoreError(
                f"the listing of {store.display} is not in key order ({last!r} then "
                f"{info.key!r}): cannot merge it with the other side's"
            )
        last = info.key
        yield info


def compare_objects(
    a: ObjectStore,
    b: ObjectStore,
    *,
    progress: Callable[[FilesReport], None] | None = None,
    ledger: HashLedger | None = None,
) -> FilesReport:
    """Compare every object of ``a`` with ``b`` by merging their listings.

    A pair is settled from the listings when the sizes differ or both carry a
    Content-MD5; otherwise both are read and hashed (xxh3-128). Each difference says
    which (``method``). A listing or read that fails raises
    :class:`~replverify.ops.objstore.StoreError`; an entry that is no object (a local symlink)
    is reported ``unreadable``.
    """
    started = time.perf_counter()
    report = FilesReport(a.display, b.display)
    if ledger is not None:
        report.resumed_after = ledger.resumed_after
    diffs = report.differences
    ia, ib = _ordered(a.list(), a), _ordered(b.list(), b)
    oa, ob = next(ia, None), next(ib, None)
    while oa is not None or ob is not None:
        if ob is None or (oa is not None and oa.key < ob.key):
            assert oa is not None
            report.files_a += 1
            diffs.append(_lonely(oa, "missing", "a"))
            oa = next(ia, None)
        elif oa is None or ob.key < oa.key:
            report.files_b += 1
            diffs.append(_lonely(ob, "extra", "b"))
            ob = next(ib, None)
        else:
            report.files_a += 1
            report.files_b += 1
            found = _compare_pair(a, b, oa, ob, report, ledger)
            if found is not None:
                diffs.append(found)
            oa, ob = next(ia, None), next(ib, None)
        if progress is not None:
            progress(report)
    report.elapsed_s = time.perf_counter() - started
    return report


def _lonely(o: ObjectInfo, kind: DiffKind, side: str) -> FileDifference:
    if o.error:
        return FileDifference("unreadable", o.key, o.error, side)
    return FileDifference(kind, o.key)


def _compare_pair(
    a: ObjectStore,
    b: ObjectStore,
    oa: ObjectInfo,
    ob: ObjectInfo,
    report: FilesReport,
    ledger: HashLedger | None,
) -> FileDifference | None:
    if oa.error or ob.error:
        side = "both" if oa.error and ob.error else ("a" if oa.error else "b")
        return FileDifference("unreadable", oa.key, oa.error or ob.error or "", side)
    report.compared += 1
    if oa.size != ob.size:
        report.by_listing += 1
        reason = f"size: {oa.size} vs {ob.size} bytes"
        return FileDifference("changed", oa.key, reason, method="size")
    if oa.md5 is not None and ob.md5 is not None:
        report.by_listing += 1
        if oa.md5 != ob.md5:
            return FileDifference("changed", oa.key, "content (Content-MD5)", method="md5")
        return None
    known = ledger.known(oa.key) if ledger is not None else None
    if known is None:
        digest_a, n_a = _digest_blocks(a.read(oa.key))
        digest_b, n_b = _digest_blocks(b.read(ob.key))
        report.bytes_read += n_a + n_b
        known = digest_a == digest_b
        if ledger is not None:
            ledger.record(oa.key, known)
    report.hashed += 1
    return None if known else FileDifference("changed", oa.key, "content", method="content")
