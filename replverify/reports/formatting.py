"""Formatting shared by every renderer: durations, keys, values, instants, JSON text and
the Markdown building blocks (one heading shape, escaping, code spans)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

#: How a report, or one item of it, came out: verified (``ok``), a problem found
#: (``bad``), could not tell (``warn``: incomplete, unknown), or no verdict (``info``).
#: Markdown's icon, the HTML banner and the terminal's colour all come from it.
Tone = Literal["ok", "bad", "warn", "info"]


def outcome_tone(complete: bool, ok: bool) -> Tone:
    """A run's tone: ``warn`` when it did not finish, else ``ok`` or ``bad``."""
    if not complete:
        return "warn"
    return "ok" if ok else "bad"


def _plain(text: str, tone: Tone) -> str:
    return text


@dataclass(frozen=True)
class Marks:
    """How a text renderer marks what carries a tone: ``item``, the word of one line (a
    table's verdict, a finding's level); ``verdict``, the report's verdict line. Plain
    by default; the CLI colours both on a terminal from the tone, never from the words."""

    item: Callable[[str, Tone], str] = _plain
    verdict: Callable[[str, Tone], str] = _plain


PLAIN = Marks()


def fmt_seconds(seconds: float) -> str:
    """A measured duration, one format in every report: to the millisecond, ``0.000 s``,
    ``18.460 s``. (Limits the user gave, such as an RPO, are echoed as given.)"""
    return f"{seconds:,.3f} s"


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# -- text ---------------------------------------------------------------------------------
def fmt_key(key: dict[str, Any]) -> str:
    """``col=value`` pairs of a JSON key for text reports (strings quoted, ints bare)."""

    def show(value: Any) -> str:
        if isinstance(value, bool):  # as PostgreSQL prints it, like the database's rows
            value = "t" if value else "f"
        return str(value) if isinstance(value, int) else json.dumps(value, ensure_ascii=False)

    return " ".join(f"{name}={show(value)}" for name, value in key.items())


#: The heading's icon for a report's tone.
MD_ICONS = {"ok": "✅", "bad": "❌", "warn": "⚠️", "info": "ℹ️"}


# backslash-escaped wherever they stand: all that can start inline markup or an entity
_MD_ACTIVE = re.compile(r"([\\`*_\[\]<>|&~#])")


# what would start a list, a heading underline or a numbered item at the start of a line
_MD_LINE_START = re.compile(r"^([-+=]|\d+[.)])")


def _one_line(text: str) -> str:
    # a line break would end a table row or a list item
    return " ".join(text.splitlines())


def md_text(text: str) -> str:
    """Plain text that CommonMark shows as is, on one line, also in a table cell."""
    text = _MD_ACTIVE.sub(r"\\\1", _one_line(text))
    # the mark itself is escaped (1\. not \1.: a backslash before a digit is no escape)
    return _MD_LINE_START.sub(lambda m: m[0][:-1] + "\\" + m[0][-1], text)


def md_cell(text: str) -> str:
    """Text made safe for one Markdown table cell (:func:`md_text`)."""
    return md_text(text)


def md_code(text: str, *, cell: bool = False) -> str:
    """``text`` as one CommonMark code span, whatever it holds: the fence is one backtick
    longer than the longest run inside, padded with a space when the text starts or ends
    with a backtick or a space (CommonMark strips one such pair). Line breaks become the
    spaces a code span shows anyway. ``cell``: inside a table row, where a pipe must be
    escaped even in a code span (GFM)."""
    text = _one_line(text)
    if not text:
        return ""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.strip(" ") and (text[0] in "` " or text[-1] in "` ") else ""
    span = f"{fence}{pad}{text}{pad}{fence}"
    return span.replace("|", "\\|") if cell else span


def md_head(kind: str, tone: Tone, status: str, verdict: str, where: str) -> list[str]:
    """The opening lines of every Markdown report: heading, verdict in bold, where."""
    return [
        f"### replverify {kind}: {MD_ICONS[tone]} {md_text(status)}",
        "",
        f"**{md_text(verdict)}**",
        "",
        where,
    ]


def md_pair(source: str, target: str) -> str:
    return f"{md_code(source)} → {md_code(target)}"


def md_notes(notes: list[str]) -> list[str]:
    return [""] + [f"> {md_text(n)}" for n in notes] if notes else []


def iso_utc(at: datetime | None) -> str | None:
    """ISO 8601 in UTC, the reports' form of an instant."""
    return None if at is None else at.astimezone(timezone.utc).isoformat()


def clock(at: datetime) -> str:
    """An instant as UTC date and time to the millisecond."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def fmt_values(values: dict[str, Any] | None) -> str:
    """A row's values as ``col=value`` pairs, or what stands for an absent or empty row."""
    if values is None:
        return "(no row)"
    if not values:
        return "(row present)"
    return " ".join(value_pairs(values).values())


def value_pairs(values: dict[str, Any]) -> dict[str, str]:
    """Each column's ``col=value`` pair as :func:`fmt_values` shows it (strings quoted,
    ints bare), by column: for renderers that mark some columns."""

    def show(v: Any) -> str:
        if isinstance(v, bool):  # as PostgreSQL prints it, like the database's rows
            v = "t" if v else "f"
        if isinstance(v, int):
            return str(v)
        return json.dumps(v, ensure_ascii=False, default=str)

    return {name: f"{name}={show(v)}" for name, v in values.items()}
