"""The lag chart of the HTML page: lag over time as inline SVG, with nice ticks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replverify.lag.model import LagReport
from replverify.reports.formatting import clock
from replverify.reports.lag import (
    lag_sample_line,
)

if TYPE_CHECKING:  # the records only: their modules do I/O, rendering must not import it
    pass

from replverify.reports.html import (
    Html,
    el,
    void,
)

# == lag ==================================================================================
# chart geometry (SVG user units): room on the left and below for tick labels and titles
_W, _H = 960, 230


_LEFT, _RIGHT, _TOP, _BOTTOM = 76, 24, 14, 44


def _nice(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``raw`` (> 0)."""
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))


def ticks(top: float, steps: int) -> list[float]:
    """Round values from 0 to at least ``top`` in about ``steps`` steps; ``[0.0]`` for 0."""
    if top <= 0:
        return [0.0]
    step = _nice(top / steps)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _si_bytes(value: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


@dataclass(frozen=True)
class _TimeAxis:
    """The shared x axis: values from 0 to ``hi`` (0: a single instant), round ticks."""

    hi: float
    ticks: Sequence[float]
    title: str


def _panel(
    name: str,
    x: _TimeAxis,
    xs: Sequence[float],
    ys: Sequence[float],
    y_title: str,
    y_label: Callable[[float], str],
    point_class: Sequence[str],
    point_title: Sequence[str],
    rpo: float | None = None,
) -> Html:
    """One SVG line chart with a point per sample: ``ys`` over ``xs``, from 0 up."""
    y_ticks = ticks(max([*ys, rpo or 0.0]) * 1.05, 4)
    if len(y_ticks) == 1:  # all zero: keep a visible scale
        y_ticks = [0.0, 1.0]
    # a single instant sits in the middle
    x_lo, x_hi = (0.0, x.hi) if x.hi > 0 else (-1.0, 1.0)
    width, height = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    bottom = _TOP + height

    def px(t: float) -> float:
        return _LEFT + (t - x_lo) / (x_hi - x_lo) * width

    def py(v: float) -> float:
        return bottom - v / y_ticks[-1] * height

    parts: list[Html] = []
    for v in y_ticks:
        y = f"{py(v):.1f}"
        parts.append(void("line", x1=_LEFT, x2=_W - _RIGHT, y1=y, y2=y, class_="grid"))
        parts.append(el("text", y_label(v), x=_LEFT - 8, y=f"{py(v) + 4:.1f}", text_anchor="end"))
    for v in x.ticks:
        at = f"{px(v):.1f}"
        parts.append(void("line", x1=at, x2=at, y1=bottom, y2=bottom + 5, class_="axis"))
        parts.append(el("text", f"{v:g}", x=at, y=bottom + 19, text_anchor="middle"))
    parts.append(void("line", x1=_LEFT, x2=_W - _RIGHT, y1=bottom, y2=bottom, class_="axis"))
    parts.append(void("line", x1=_LEFT, x2=_LEFT, y1=_TOP, y2=bottom, class_="axis"))
    parts.append(el("text", x.title, x=_LEFT + width / 2, y=_H - 6, text_anchor="middle"))
    mid = _TOP + height / 2
    parts.append(
        el(
            "text",
            y_title,
            x=14,
            y=f"{mid:.1f}",
            text_anchor="middle",
            transform=f"rotate(-90 14 {mid:.1f})",
        )
    )
    if rpo is not None:
        y = f"{py(rpo):.1f}"
        parts.append(void("line", x1=_LEFT, x2=_W - _RIGHT, y1=y, y2=y, class_="rpo"))
        parts.append(
            el(
                "text",
                f"RPO {rpo:g} s",
                x=_W - _RIGHT - 4,
                y=f"{py(rpo) - 5:.1f}",
                text_anchor="end",
                class_="rpo",
            )
        )
    points = [(px(t), py(v)) for t, v in zip(xs, ys, strict=True)]
    if len(points) > 1:
        line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in points)
        parts.append(void("polyline", points=line, class_="series"))
    # big enough to see alone, small enough that a thousand do not merge into a band
    r = 3.5 if len(points) <= 60 else 2.5 if len(points) <= 300 else 1.6

    def layer(i: int) -> int:
        # bounds last and never smaller than a readable ring: drawn first, the samples
        # around them covered their hollow markers
        return 2 if "bound" in point_class[i] else 1 if "over" in point_class[i] else 0

    for i in sorted(range(len(points)), key=layer):
        (cx, cy), cls = points[i], point_class[i]
        size = r + 1 if "over" in cls else r
        if "bound" in cls:
            size = max(size + 1, 4.0)
        parts.append(
            el(
                "circle",
                el("title", point_title[i]),
                cx=f"{cx:.1f}",
                cy=f"{cy:.1f}",
                r=f"{size:g}",
                class_=cls,
            )
        )
    return el(
        "svg",
        parts,
        viewBox=f"0 0 {_W} {_H}",
        class_="chart",
        id=name,
        role="img",
        aria_label=f"{y_title} over time, {len(points)} samples",
        data_points=len(points),
    )


def lag_chart(report: LagReport) -> Html:
    """Lag seconds (with the RPO as a dashed line) and bytes over the sample time; samples
    over the RPO are red, lower or upper bounds hollow."""
    samples = report.samples
    start = min(s.at for s in samples)  # not the first: the source's clock may step back
    offsets = [(s.at - start).total_seconds() for s in samples]
    span = max(offsets)
    unit, size = ("s", 1) if span <= 180 else ("min", 60) if span <= 3 * 3600 else ("h", 3600)
    xs = [o / size for o in offsets]
    hi = max(xs)
    # the axis ends with the last sample, not at the next round value
    x_ticks = [t for t in ticks(hi, 6) if t <= hi * (1 + 1e-9)]
    x = _TimeAxis(hi, x_ticks, f"time since {clock(start)} UTC, source clock ({unit})")
    rpo = report.rpo_seconds
    classes = []
    for s in samples:
        cls = "pt"
        if s.bound != "estimate":
            cls += " bound"
        if rpo is not None and s.lag_seconds > rpo:
            cls += " over"
        classes.append(cls)
    titles = [lag_sample_line(s) for s in samples]
    legend = [el("span", el("span", "", class_="key"), "sample")]
    if any("bound" in c for c in classes):
        legend.append(el("span", el("span", "", class_="key bound"), "a bound, not an estimate"))
    if any("bound" in c and "over" in c for c in classes):
        legend.append(el("span", el("span", "", class_="key bound over"), "a bound over the RPO"))
    if any("over" in c for c in classes):
        legend.append(el("span", el("span", "", class_="key over"), "over the RPO"))
    if rpo is not None:
        legend.append(el("span", el("span", "", class_="key rpo"), f"RPO {rpo:g} s"))
    return el(
        "figure",
        _panel(
            "lag-seconds",
            x,
            xs,
            [s.lag_seconds for s in samples],
            "lag (seconds)",
            lambda v: f"{v:g}",
            classes,
            titles,
            rpo,
        ),
        _panel(
            "lag-bytes",
            x,
            xs,
            [float(s.lag_bytes) for s in samples],
            "WAL not replayed (bytes)",
            _si_bytes,
            classes,
            titles,
        ),
        el("figcaption", legend),
    )
