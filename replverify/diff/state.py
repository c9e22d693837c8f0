"""``--state FILE``: remember verified chunks so an interrupted diff resumes where it stopped.

The file is JSON Lines: a header naming the comparison (display DSNs — never passwords —
and the options that shape chunks), then one line per chunk found equal on both sides:
table, the canonical encoding of its key range and its row count. A resumed run walks the
same boundaries (they are keys of the data, so they come out the same while the data does
not change) and skips the chunks already verified; everything else is compared again, so
the verdict is the one an uninterrupted run would reach.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from replverify.diff.ranges import KeyRange
from replverify.errors import OutputError, UsageError
from replverify.types import Key
from replverify.values.canonical import Encoder, encode_row

STATE_SCHEMA = "replverify.state/1"


def range_id(encoders: Sequence[Encoder], rng: KeyRange) -> str:
    """A stable text id of a key range (canonical key encodings, hex)."""

    def one(key: Key | None) -> str:
        return "-" if key is None else encode_row(encoders, key).hex()

    return f"{one(rng.lo)}:{one(rng.hi)}"


@dataclass
class StateFile:
    """Verified chunks of one comparison, read from and appended to ``path``."""

    path: Path
    header: dict[str, Any]
    verified: dict[tuple[str, str], int] = field(default_factory=dict)
    #: chunks of a verified range that held several (a cluster task), when recorded
    chunks: dict[tuple[str, str], int] = field(default_factory=dict)
    _out: IO[str] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], header: dict[str, Any]) -> StateFile:
        """Load ``path`` if it exists (it must describe the same comparison), else start it."""
        p = Path(path)
        header = {"schema": STATE_SCHEMA, **header}
        state = cls(p, header)
        if p.exists() and p.stat().st_size > 0:
            state._load()
        else:
            try:
                p.write_text(json.dumps(header, sort_keys=True) + "\n", encoding="utf-8")
            except OSError as e:
                raise OutputError(f"cannot write state file {p}: {e.strerror}") from None
        try:
            state._out = p.open("a", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"cannot write state file {p}: {e.strerror}") from None
        return state

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read state file {self.path}: {e}") from None
        try:
            found = json.loads(lines[0])
        except json.JSONDecodeError:
            raise UsageError(f"{self.path} is not a replverify state file") from None
        if found != self.header:
            raise UsageError(
                f"state file {self.path} belongs to another comparison",
                hint="use a new --state file, or the same servers, tables and options",
            )
        for n, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                self.verified[(entry["table"], entry["range"])] = int(entry["rows"])
                if "chunks" in entry:
                    self.chunks[(entry["table"], entry["range"])] = int(entry["chunks"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if n == len(lines):  # a line torn by the interruption
                    break
                raise UsageError(f"{self.path}:{n}: bad state line") from None

    def known(self, table: str, rid: str) -> int | None:
        """Rows of a chunk verified before, or None."""
        return self.verified.get((table, rid))

    def record(self, table: str, rid: str, rows: int, chunks: int | None = None) -> None:
        if (table, rid) in self.verified or self._out is None:
            return
        self.verified[(table, rid)] = rows
        line: dict[str, Any] = {"table": table, "range": rid, "rows": rows}
        if chunks is not None:
            self.chunks[(table, rid)] = line["chunks"] = chunks
        try:
            self._out.write(json.dumps(line) + "\n")
            self._out.flush()
        except OSError as e:
            # Drop what is still buffered (closing would try to write it again, and that
            # error would hide this one); a torn last line is skipped when resuming.
            out, self._out = self._out, None
            with contextlib.suppress(OSError):
                out.close()
            raise OutputError(f"cannot write state file {self.path}: {e.strerror}") from None

    def close(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            try:
                out.close()
            except OSError as e:
                raise OutputError(f"cannot write state file {self.path}: {e.strerror}") from None


@dataclass
class TableCheckpoint:
    """The view of a :class:`StateFile` that one table's comparison uses."""

    state: StateFile
    table: str
    key_encoders: Sequence[Encoder]

    def known(self, rng: KeyRange) -> int | None:
        return self.state.known(self.table, range_id(self.key_encoders, rng))

    def record(self, rng: KeyRange, rows: int) -> None:
        self.state.record(self.table, range_id(self.key_encoders, rng), rows)
