"""HTML building blocks: every report as one self-contained page, for CI artifacts, mail
and browsers.

A page carries its CSS (the package resource ``report.css``) inline and draws the lag
chart as inline SVG (:mod:`replverify.reports.chart`); it has no scripts and loads nothing
(its Content-Security-Policy tells the browser so too). Each report kind's page is in
:mod:`replverify.reports.pages`.

Escaping has one rule: :func:`el` escapes every ``str`` it is given (table names, keys,
values, DSNs, notes) with :func:`html.escape`; only :class:`Html`, made by :func:`el`
itself, goes in as markup.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any

from replverify import __version__
from replverify.reports.formatting import Tone, fmt_values, value_pairs

if TYPE_CHECKING:  # the records only: their modules do I/O, rendering must not import it
    pass


#: Rows listed per table of findings or differences (JSON has all that were kept).
SHOWN = 1000


# == building blocks ========================================================================
class Html(str):
    """Markup made by :func:`el`: inserted as is, where any other ``str`` is escaped."""

    __slots__ = ()


Content = Html | str | int | float | None | Sequence[Any]


def _join(content: Iterable[Content]) -> str:
    out: list[str] = []
    for c in content:
        if c is None:
            continue
        if isinstance(c, Html):
            out.append(c)
        elif isinstance(c, str | int | float):
            out.append(html.escape(str(c)))
        else:
            out.append(_join(c))
    return "".join(out)


def _attrs(attrs: dict[str, object]) -> str:
    out = []
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        # class_ -> class, aria_label -> aria-label; viewBox keeps its case
        name = name.rstrip("_").replace("_", "-")
        out.append(f" {name}" if value is True else f' {name}="{html.escape(str(value))}"')
    return "".join(out)


def el(tag: str, *content: Content, **attrs: object) -> Html:
    """``<tag attrs>content</tag>``, every ``str`` in ``content`` and ``attrs`` escaped;
    None (content or attribute) is left out."""
    return Html(f"<{tag}{_attrs(attrs)}>{_join(content)}</{tag}>")


def void(tag: str, **attrs: object) -> Html:
    """An element without content (``meta``, ``line``, ...)."""
    # self-closed: inside <svg> a bare <line> would swallow what follows it
    return Html(f"<{tag}{_attrs(attrs)}/>")


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "—"}[value]


def badge(label: str, tone: Tone | None) -> Html:
    return el("span", label, class_=f"badge {tone}" if tone else "badge")


def stats(items: Iterable[tuple[str, str, Tone | None]]) -> Html:
    """The key numbers of a report, large: (label, value, tone)."""
    return el(
        "div",
        [
            el(
                "div",
                el("span", value, class_="num"),
                el("span", label, class_="label"),
                class_=tone,
            )
            for label, value, tone in items
        ],
        class_="stats",
    )


def facts(items: Iterable[tuple[str, Content]]) -> Html:
    rows = [el("div", el("dt", k), el("dd", "—" if v is None else v)) for k, v in items]
    return el("dl", rows, class_="facts")


def table(
    head: Sequence[str],
    rows: Iterable[Sequence[Content]],
    *,
    num: Sequence[int] = (),
    word: Sequence[int] = (),
    wrap: Sequence[int] = (),
    val: Sequence[int] = (),
    tones: Sequence[Tone | None] | None = None,
) -> Html:
    """A table in a container that scrolls sideways when the table cannot fit.

    Columns at the indexes ``num`` are right-aligned numbers, ``word`` short identifiers
    (an op, a table name, an LSN) that never break, ``wrap`` keys and ``val`` row images
    that wrap between their ``col=value`` pairs and break inside one only when it is wider
    than the column's minimum (12 and 20 characters); ``tones`` marks rows. Other columns
    wrap between words only.
    """
    kinds = {i: "wrap val" for i in val} | {i: "wrap" for i in wrap}
    kinds |= {i: "word" for i in word} | {i: "num" for i in num}
    cls = [kinds.get(i) for i in range(len(head))]
    body = [
        el(
            "tr",
            [el("td", c, class_=cls[i]) for i, c in enumerate(row)],
            class_=tones[r] if tones else None,
        )
        for r, row in enumerate(rows)
    ]
    return el(
        "div",
        el(
            "table",
            el("thead", el("tr", [el("th", h, class_=cls[i]) for i, h in enumerate(head)])),
            el("tbody", body),
        ),
        class_="scroll",
    )


def section(title: str, *content: Content) -> Html:
    return el("section", el("h2", title), *content)


def notes(items: Iterable[str]) -> Html | None:
    shown = [el("p", n, class_="note") for n in items]
    return section("Notes", shown) if shown else None


def more(shown: int, total: int, what: str) -> Html | None:
    """A line saying how many of ``total`` are not listed."""
    if total <= shown:
        return None
    return el("p", f"… and {total - shown:,} more {what} (--format json)", class_="muted")


def code(value: str) -> Html:
    return el("code", value)


def instant(iso: str | None) -> Html | None:
    """An ISO 8601 instant that may break after its date (before the time), nowhere else."""
    if iso is None:
        return None
    date, t, rest = iso.partition("T")
    return Html(html.escape(date + t) + "<wbr>" + html.escape(rest)) if t else Html(iso)


def image(values: dict[str, Any] | None, changed: Sequence[str] = ()) -> Html:
    """A row's values as ``col=value`` pairs, the ``changed`` columns marked."""
    if not values:
        return code(fmt_values(values))
    pairs = value_pairs(values)
    parts: list[Content] = []
    for name, pair in pairs.items():
        if parts:
            parts.append(" ")
        parts.append(el("mark", pair) if name in changed else pair)
    return el("code", parts)


#: The page's style sheet, a package resource (``report.css``), inlined in every page.
CSS = resources.files("replverify.reports").joinpath("report.css").read_text(encoding="utf-8")


#: Nothing may load: no scripts, fonts, images or frames, only the inline styles.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def page(kind: str, tone: Tone, verdict: str, *body: Content) -> str:
    """A whole document: a coloured banner with the verdict and when (UTC) and by which
    replverify the page was made, then ``body``."""
    made = _now().replace(microsecond=0)
    head = el(
        "head",
        void("meta", charset="utf-8"),
        void("meta", http_equiv="Content-Security-Policy", content=CSP),
        void("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("title", f"replverify {kind}: {verdict}"),
        el("style", Html(CSS)),
    )
    body_el = el(
        "body",
        el(
            "header",
            el("p", f"replverify {kind}", class_="kind"),
            el("h1", verdict),
            el(
                "p",
                "generated ",
                el("time", made.strftime("%Y-%m-%d %H:%M:%S UTC"), datetime=made.isoformat()),
                f" by replverify {__version__}",
                class_="generated",
            ),
            class_=f"banner {tone}",
        ),
        el("main", *body),
        el("footer", f"replverify {__version__}"),
    )
    return "<!doctype html>\n" + el("html", head, body_el, lang="en") + "\n"
