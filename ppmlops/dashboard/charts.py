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


# -- the block chart --------------------------------------------------------------------------
# Blocks of event time along x (one slot each, oldest first), each split's share of the block's
# lifetime budget as a bar, and below them one lane per run: a line over the blocks it was
# charged to and a cross on each block it retired. Categories rather than a time axis: blocks are
# equal slices of the calendar, and a share is a property of a block, not of an instant.

LANE_H = 11  # pixels per run lane


@dataclass(frozen=True)
class Bar:
    slot: int
    value: float  # a share of the block's lifetime budget, 0..1
    colour: int
    note: str
    highlight: bool = False  # the dataset's figure: the worst (block, split)


@dataclass(frozen=True)
class Lane:
    """A run: the slots it was charged to, and the slots it retired (with why)."""

    label: str
    slots: tuple[int, ...]
    retired: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class BlockChart:
    title: str
    slots: tuple[str, ...]  # block ids, oldest first
    bars: tuple[Bar, ...]
    lanes: tuple[Lane, ...] = ()
    legend: tuple[tuple[str, int], ...] = ()  # (name, colour) of the bar series
    reference: str = "a block's lifetime budget (100%)"
    omitted_lanes: int = 0  # older runs left out of the lanes (the table lists every run)


def _runs_of(slots: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous stretches of slots."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(slots)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def block_svg(chart: BlockChart) -> str:
    """The block chart as a <figure>; one without blocks says so."""
    if not chart.slots:
        return f'<figure class="chart"><figcaption>{esc(chart.title)}</figcaption>' \
               f'<p class="muted">No block has been charged yet.</p></figure>'
    n = len(chart.slots)
    top_h = H  # the bar area uses the frame of the other charts
    height = top_h + (len(chart.lanes) * LANE_H + 16 if chart.lanes else 0)
    slot_w = (W - LEFT - RIGHT) / n
    peak = max([b.value for b in chart.bars if math.isfinite(b.value)] + [1.0])
    y_ticks = nice_ticks(0.0, peak, 4)
    y_top = y_ticks[-1]

    def py(v: float) -> float:
        return top_h - BOTTOM - v / y_top * (top_h - TOP - BOTTOM)

    out = [f'<line class="axis" x1="{LEFT}" y1="{top_h - BOTTOM}" x2="{W - RIGHT}" y2="{top_h - BOTTOM}"/>']
    for t in y_ticks:
        out.append(f'<line class="grid" x1="{LEFT}" y1="{py(t):.1f}" x2="{W - RIGHT}" y2="{py(t):.1f}"/>'
                   f'<text class="tick" x="{LEFT - 5}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.0%}</text>')
    out.append(f'<line class="ref" x1="{LEFT}" y1="{py(1.0):.1f}" x2="{W - RIGHT}" y2="{py(1.0):.1f}">'
               f'<title>{esc(chart.reference)}</title></line>')
    every = max(1, math.ceil(n / 8))  # at most about 8 block labels; every bar has its own hover text
    for i, label in enumerate(chart.slots):
        # the last block is labelled too, unless that would crowd the label before it
        if i % every == 0 or (i == n - 1 and i % every >= max(1, every // 2)):
            out.append(f'<text class="tick" x="{LEFT + (i + 0.5) * slot_w:.1f}" y="{top_h - BOTTOM + 14}" '
                       f'text-anchor="middle">{esc(label)}</text>')
    per_slot: dict[int, list[Bar]] = {}
    for b in chart.bars:
        per_slot.setdefault(b.slot, []).append(b)
    for slot, bars in per_slot.items():
        width = slot_w * 0.8 / len(bars)
        for k, b in enumerate(bars):
            if not math.isfinite(b.value):
                continue
            x = LEFT + slot * slot_w + slot_w * 0.1 + k * width
            y = py(min(b.value, y_top))
            cls = f"bar s{b.colour}" + (" worst" if b.highlight else "")
            out.append(f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(width - 1, 1):.1f}" '
                       f'height="{top_h - BOTTOM - y:.1f}"><title>{esc(b.note)}</title></rect>')
            if b.highlight:
                out.append(f'<text class="reflabel" x="{x + width / 2:.1f}" y="{y - 4:.1f}" '
                           f'text-anchor="middle">worst</text>')
    out.append(f'<text class="label" transform="translate(12 {(TOP + top_h - BOTTOM) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">share of the block\'s budget used</text>')
    if chart.lanes:
        y0 = top_h + 4
        out.append(f'<text class="label" x="{LEFT - 5}" y="{y0 + 6}" text-anchor="end">runs</text>')
        for j, lane in enumerate(chart.lanes):
            y = y0 + j * LANE_H + LANE_H / 2
            for a, b in _runs_of(lane.slots):
                out.append(f'<line class="lane s1" x1="{LEFT + a * slot_w + 2:.1f}" y1="{y:.1f}" '
                           f'x2="{LEFT + (b + 1) * slot_w - 2:.1f}" y2="{y:.1f}"><title>{esc(lane.label)}: charged '
                           f'to {esc(chart.slots[a])} to {esc(chart.slots[b])}</title></line>')
            for slot, why in lane.retired:
                cx = LEFT + (slot + 0.5) * slot_w
                out.append(f'<g class="retired"><path d="M{cx - 4:.1f},{y - 4:.1f}l8,8m0,-8l-8,8"/>'
                           f'<title>{esc(lane.label)} retired block {esc(chart.slots[slot])}: {esc(why)}</title></g>')
    items = [f'<li><span class="swatch s{c}"></span>{esc(name)}</li>' for name, c in chart.legend]
    items.append(f'<li><span class="swatch ref"></span>{esc(chart.reference)}</li>')
    items.append('<li><span class="swatch worst"></span>worst: the block and split whose share is the dataset\'s</li>')
    if chart.lanes:
        items.append('<li><span class="swatch s1"></span>a run, over the blocks it was charged to; × a block it '
                     'retired' + (f" ({chart.omitted_lanes} older runs not drawn)" if chart.omitted_lanes else "")
                     + "</li>")
    return (f'<figure class="chart blocks"><figcaption>{esc(chart.title)}</figcaption>'
            f'<svg viewBox="0 0 {W} {height}" role="img" aria-label="{esc(chart.title)}">{"".join(out)}</svg>'
            f'<ul class="legend">{"".join(items)}</ul></figure>')
