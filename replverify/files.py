"""``replverify files``: compare two directory trees (geo-redundant attachment/blob copies).

The walk is a merge of two sorted, depth-first listings, so memory holds one directory
listing per level, never the whole tree. Files present on both sides are compared by
size first and, only when the sizes agree, by an xxh3-128 digest of their content read
in blocks. Symbolic links are never followed: a link is compared by its target text.
Anything that cannot be read (permissions, a file vanishing mid-walk) is reported as
``unreadable``, never raised: the report is then incomplete (exit 2, as DESIGN.md says:
never 0 when something could not be checked).

The core (:func:`walk`, :func:`file_digest`, :func:`compare_trees`) is synchronous and
pure apart from reading the file system; the CLI calls it directly.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import xxhash

from .errors import UsageError

__all__ = [
    "BLOCK_SIZE",
    "FILES_SCHEMA",
    "Entry",
    "FileDifference",
    "FilesReport",
    "compare_trees",
    "file_digest",
    "walk",
]

FILES_SCHEMA = "replverify.files/1"
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

    @property
    def complete(self) -> bool:
        return not any(d.kind == "unreadable" for d in self.differences)

    @property
    def status(self) -> Literal["identical", "different"]:
        return "identical" if not self.differences else "different"

    def counts(self) -> dict[str, int]:
        out = {"missing": 0, "extra": 0, "changed": 0, "unreadable": 0}
        for d in self.differences:
            out[d.kind] += 1
        return out


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
        found = _compare(a, b, ea, eb, report, block_size)
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
    a: str, b: str, ea: Entry, eb: Entry, report: FilesReport, block_size: int
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
        return FileDifference("changed", ea.path, f"size: {ea.size} vs {eb.size} bytes")
    digests = []
    for root, side in ((a, "a"), (b, "b")):
        try:
            digest, n = file_digest(os.path.join(root, *ea.path.split("/")), block_size)
        except OSError as e:
            return FileDifference("unreadable", ea.path, _reason(e), side)
        report.bytes_read += n
        digests.append(digest)
    report.hashed += 1
    if digests[0] != digests[1]:
        return FileDifference("changed", ea.path, "content")
    return None
