"""Charts as inline SVG, drawn on the server: no script, no CDN, nothing for the CSP to allow.

A chart is data (`Chart`: series of points, horizontal reference lines, vertical markers) and one
renderer (`svg`). Colours come from CSS classes (`s1`..`s6`, `ref`, `mark`) so the light and dark
themes restyle every chart without re-rendering. Each point carries a <title>, which browsers
show on hover and screen readers read; the legend is HTML beside the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, Sequence

from ppmlops.dashboard.html_base import esc

W, H = 640, 230
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 34


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    note: str = ""  # the hover text; empty: "<series>: y at x"


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[Point, ...]
    colour: int = 1  # the CSS class s1..s6
    shape: Literal["line", "step", "dots"] = "line"
    dashed: bool = False


@dataclass(frozen=True)
class Reference:
    """A horizontal line: a budget, a cap."""

    y: float
    label: str


@dataclass(frozen=True)
class Marker:
    """A vertical line at x with a short label on top: a tuner decision, a grant closed."""

    x: float
    label: str
    note: str = ""


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    references: tuple[Reference, ...] = ()
    markers: tuple[Marker, ...] = ()
    x_kind: Literal["number", "time", "integer"] = "number"
    x_ticks: tuple[tuple[float, str], ...] = field(default=())  # fixed ticks (categories) instead of computed
    y_from_zero: bool = True

    @property
    def empty(self) -> bool:
        return not any(s.points for s in self.series)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def _fmt(value: float, kind: str = "number") -> str:
    if kind == "time":
        return datetime.fromtimestamp(value, timezone.utc).strftime("%m-%d %H:%M")
    if kind == "integer":
        return str(int(round(value)))
    return f"{value:.3g}"


@dataclass(frozen=True)
class _Frame:
    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, x: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return LEFT + (x - self.x0) / span * (W - LEFT - RIGHT)

    def py(self, y: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return H - BOTTOM - (y - self.y0) / span * (H - TOP - BOTTOM)


def _frame(chart: Chart) -> tuple[_Frame, list[float], list[tuple[float, str]]]:
    xs = [p.x for s in chart.series for p in s.points] + [m.x for m in chart.markers]
    xs += [t for t, _ in chart.x_ticks]
    ys = [p.y for s in chart.series for p in s.points] + [r.y for r in chart.references]
    ys = [y for y in ys if math.isfinite(y)]
    lo_y = min([*ys, 0.0]) if chart.y_from_zero else min(ys or [0.0])
    y_ticks = nice_ticks(lo_y, max(ys or [1.0]))
    x0, x1 = min(xs or [0.0]), max(xs or [1.0])
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if chart.x_ticks:
        x_ticks = list(chart.x_ticks)
    else:
        x_ticks = [(t, _fmt(t, chart.x_kind)) for t in nice_ticks(x0, x1, 4 if chart.x_kind == "time" else 6)
                   if x0 <= t <= x1]
        if chart.x_kind == "integer":
            x_ticks = [(t, s) for t, s in x_ticks if float(t).is_integer()]
    return _Frame(x0, x1, y_ticks[0], y_ticks[-1]), y_ticks, x_ticks


def _path(series: Series, f: _Frame) -> str:
    pts = [p for p in series.points if math.isfinite(p.y)]
    if series.shape == "dots" or len(pts) < 2:
        return ""
    d, prev = [], None
    for p in pts:
        x, y = f.px(p.x), f.py(p.y)
        if prev is None:
            d.append(f"M{x:.1f},{y:.1f}")
        elif series.shape == "step":
            d.append(f"H{x:.1f}V{y:.1f}")
        else:
            d.append(f"L{x:.1f},{y:.1f}")
        prev = p
    dash = ' stroke-dasharray="5 3"' if series.dashed else ""
    return f'<path class="line s{series.colour}" d="{"".join(d)}"{dash}/>'


def _dots(series: Series, f: _Frame, kind: str) -> str:
    out = []
    for p in series.points:
        if not math.isfinite(p.y):
            continue
        note = p.note or f"{series.name}: {_fmt(p.y)} at {_fmt(p.x, kind)}"
        out.append(f'<circle class="dot s{series.colour}" cx="{f.px(p.x):.1f}" cy="{f.py(p.y):.1f}" r="3">'
                   f"<title>{esc(note)}</title></circle>")
    return "".join(out)


def _axes(chart: Chart, f: _Frame, y_ticks: Sequence[float], x_ticks: Sequence[tuple[float, str]]) -> str:
    out = [f'<line class="axis" x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}"/>']
    for t in y_ticks:
        y = f.py(t)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{esc(_fmt(t))}</text>')
    for t, label in x_ticks:
        x = f.px(t)
        out.append(f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 14}" text-anchor="middle">{esc(label)}</text>')
    out.append(f'<text class="label" x="{(LEFT + W - RIGHT) / 2:.0f}" y="{H - 4}" text-anchor="middle">'
               f"{esc(chart.x_label)}</text>"
               f'<text class="label" transform="translate(12 {(TOP + H - BOTTOM) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{esc(chart.y_label)}</text>')
    return "".join(out)


def _references(chart: Chart, f: _Frame) -> str:
    return "".join(
        f'<line class="ref" x1="{LEFT}" y1="{f.py(r.y):.1f}" x2="{W - RIGHT}" y2="{f.py(r.y):.1f}">'
        f"<title>{esc(r.label)}</title></line>"
        f'<text class="reflabel" x="{W - RIGHT - 2}" y="{f.py(r.y) - 4:.1f}" text-anchor="end">{esc(r.label)}</text>'
        for r in chart.references)


def _markers(chart: Chart, f: _Frame) -> str:
    out = []
    for m in chart.markers:
        x = f.px(m.x)
        # a label near the right edge goes on the line's left, inside the picture
        label = (f'<text x="{x - 3:.1f}" y="{TOP + 9}" text-anchor="end">' if x > W - RIGHT - 40
                 else f'<text x="{x + 3:.1f}" y="{TOP + 9}">')
        out.append(f'<g class="mark"><line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}"/>'
                   f"{label}{esc(m.label)}</text><title>{esc(m.note or m.label)}</title></g>")
    return "".join(out)


def legend(chart: Chart) -> str:
    items = [f'<li><span class="swatch s{s.colour}{" dashed" if s.dashed else ""}"></span>{esc(s.name)}</li>'
             for s in chart.series]
    items += [f'<li><span class="swatch ref"></span>{esc(r.label)}</li>' for r in chart.references]
    if chart.markers:
        items.append('<li><span class="swatch mark"></span>marked: '
                     + esc(", ".join(dict.fromkeys(m.label for m in chart.markers))) + "</li>")
    return f'<ul class="legend">{"".join(items)}</ul>'


def svg(chart: Chart) -> str:
    """The chart as a <figure>: title, the SVG, its legend. An empty chart says so instead."""
    if chart.empty:
        return f'<figure class="chart"><figcaption>{esc(chart.title)}</figcaption>' \
               f'<p class="muted">Nothing to plot yet.</p></figure>'
    f, y_ticks, x_ticks = _frame(chart)
    body = (_axes(chart, f, y_ticks, x_ticks) + _references(chart, f) + _markers(chart, f)
            + "".join(_path(s, f) for s in chart.series)
            + "".join(_dots(s, f, chart.x_kind) for s in chart.series))
    return (f'<figure class="chart"><figcaption>{esc(chart.title)}</figcaption>'
            f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{esc(chart.title)}">{body}</svg>{legend(chart)}</figure>')
