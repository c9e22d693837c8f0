"""Pass 1's log of settled writes, spilled to an anonymous temporary file so that memory
stays flat in the journal's length (about 32 bytes a settled write go to disk instead)."""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Iterator
from typing import IO

__all__ = ["Spill"]


class Spill:
    """Arrays of ints kept in order and read back one at a time: the first in memory,
    the rest in a temporary file (made when a second arrives, removed by :meth:`close`),
    so a short journal never touches the disk."""

    def __init__(self) -> None:
        self._first: array[int] | None = None
        self._file: IO[bytes] | None = None
        self._sizes: list[int] = []

    def __call__(self, chunk: array[int]) -> None:
        if self._first is None:
            self._first = array("q", chunk)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="replverify-")  # noqa: SIM115 - close()
        chunk.tofile(self._file)
        self._sizes.append(len(chunk))

    def chunks(self) -> Iterator[array[int]]:
        """The arrays handed in so far, in order."""
        if self._first is not None:
            yield self._first
        f = self._file
        if f is None:
            return
        f.flush()
        f.seek(0)
        for n in self._sizes:
            a = array("q")
            a.fromfile(f, n)
            yield a

    def close(self) -> None:
        self._first = None
        if self._file is not None:
            self._file.close()
            self._file = None
