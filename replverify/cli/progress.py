"""Progress on stderr, redrawn in place: ``diff``'s rows per table and ``files``'
objects compared. The counting is pure (:class:`DiffProgress`), tested without a
terminal; the drawers only decide when to redraw."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import click

from replverify.types import TableRef

if TYPE_CHECKING:
    from replverify.ops.files import FilesReport


@dataclasses.dataclass
class DiffProgress:
    """Rows done and estimated per table, in the order the tables were announced (a
    diff announces every planned table with 0 rows done before it starts), and the line
    that shows them: pure, so it is tested without a terminal."""

    tables: dict[TableRef, tuple[int, int]] = dataclasses.field(default_factory=dict)
    current: TableRef | None = None

    def update(self, table: TableRef, done: int, estimate: int) -> None:
        self.tables[table] = (done, max(estimate, done))
        if done or self.current is None:
            self.current = table

    def line(self, elapsed: float) -> str:
        """``table 3/6 public.orders  1,000 / 5,000 rows  ·  all: 9,000 / 20,000 rows,
        4,500 rows/s, ETA 2 s``: the table last heard of, its count against its own
        estimate, then the totals."""
        if self.current is None:
            return ""
        order = list(self.tables)
        done, estimate = self.tables[self.current]
        rows = sum(d for d, _ in self.tables.values())
        total = sum(e for _, e in self.tables.values())
        rate = rows / max(elapsed, 1e-6)
        eta = ""
        if rate > 0 and total > rows:
            eta = f", ETA {fmt_duration((total - rows) / rate)}"
        return (
            f"table {order.index(self.current) + 1}/{len(order)} {self.current}  "
            f"{done:,} / {estimate:,} rows  ·  all: {rows:,} / {total:,} rows, "
            f"{rate:,.0f} rows/s{eta}"
        )


def fmt_duration(seconds: float) -> str:
    """A duration for people: ``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressLine:
    """:class:`DiffProgress` on stderr, redrawn in place at most 5 times a second.

    Hand-drawn rather than ``click.progressbar``: that bar has one label and one length,
    and hides itself when stderr is not a terminal, which ``--progress`` must override.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.state = DiffProgress()
        self.last = 0.0

    def __call__(self, table: TableRef, done: int, estimate: int) -> None:
        if not self.enabled:
            return
        self.state.update(table, done, estimate)
        now = time.monotonic()
        if now - self.last < 0.2 or not done:
            return
        self.last = now
        click.echo(f"\r\033[K{self.state.line(now - self.started)}", err=True, nl=False)

    def close(self) -> None:
        if self.enabled and self.state.tables:
            click.echo("\r\033[K", err=True, nl=False)


class FilesProgress:
    """``objects compared, bytes read`` on stderr, redrawn in place."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False
        self.count = 0

    def __call__(self, report: FilesReport) -> None:
        self.count = max(report.files_a, report.files_b)
        self._draw(report.bytes_read)

    def path(self, _path: str) -> None:
        self.count += 1
        self._draw(None)

    def _draw(self, bytes_read: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        rate = self.count / max(now - self.started, 1e-6)
        read = "" if bytes_read is None else f"  {bytes_read / 2**20:,.1f} MiB read"
        click.echo(f"\r\033[K{self.count:,} objects  {rate:,.0f}/s{read}", err=True, nl=False)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            click.echo("\r\033[K", err=True, nl=False)
            self.shown = False
