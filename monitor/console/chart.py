"""An inline SVG of a signal series around an alert: observed values, the EARS baseline and the band up
to the alert bound, the alerting bucket marked. Pure: numbers in, markup out (every text escaped).

Drawn here rather than with matplotlib so a page needs no image request and no font cache, and the
chart scales with the page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 16, 40


@dataclass(frozen=True)
class SeriesPoint:
    """One bucket: its start, the observed value, and (once the method has a full baseline) the
    baseline mean and the alert bound."""

    start: datetime
    observed: float
    expected: float | None = None
    upper: float | None = None
    alert: bool = False


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _ticks(top: float) -> list[float]:
    """Three to six round y ticks from 0 to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(int(math.ceil(top / step)) + 1)]


def series_svg(points: Sequence[SeriesPoint], *, highlight: datetime | None, title: str, unit: str) -> str:
    """The chart as an ``<svg>`` element; ``highlight`` is the alert's bucket start."""
    if not points:
        return f'<svg class="chart" viewBox="0 0 {WIDTH} 60" role="img"><title>{escape(title)}</title>' \
               f'<text x="10" y="35">no data in this window</text></svg>'
    bounds = [p.upper for p in points if p.upper is not None and math.isfinite(p.upper)]
    ticks = _ticks(max([p.observed for p in points] + bounds + [1.0]) * 1.05)
    y_max = ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(points) - 1, 1)

    def x(i: int) -> float:
        return LEFT + i * step

    def y(v: float) -> float:
        return TOP + plot_h * (1 - max(v, 0.0) / y_max)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for tick in ticks:
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_fmt(y(tick))}" y2="{_fmt(y(tick))}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{_fmt(y(tick) + 4)}" text-anchor="end">{tick:g}</text>')
    scored = [(i, p) for i, p in enumerate(points) if p.expected is not None and p.upper is not None]
    if scored:
        top_edge = " ".join(f"{_fmt(x(i))},{_fmt(y(p.upper if math.isfinite(p.upper) else 0.0))}" for i, p in scored)
        bottom_edge = " ".join(f"{_fmt(x(i))},{_fmt(y(p.expected))}" for i, p in reversed(scored))
        parts.append(f'<polygon class="band" points="{top_edge} {bottom_edge}"><title>below the alert bound'
                     f'</title></polygon>')
        parts.append('<polyline class="baseline" points="'
                     + " ".join(f"{_fmt(x(i))},{_fmt(y(p.expected))}" for i, p in scored) + '"/>')
        parts.append(f'<polyline class="bound" points="{top_edge}"/>')
    parts.append('<polyline class="observed" points="'
                 + " ".join(f"{_fmt(x(i))},{_fmt(y(p.observed))}" for i, p in enumerate(points)) + '"/>')
    for i, p in enumerate(points):
        marked = highlight is not None and p.start == highlight
        css = "point alert" if p.alert else "point"
        detail = f"{p.start:%Y-%m-%d %H:%M} UTC: {p.observed:g} {unit}"
        if p.expected is not None:
            detail += f", expected {p.expected:.2f}, bound {p.upper:.2f}"
        parts.append(f'<circle class="{css}{" current" if marked else ""}" cx="{_fmt(x(i))}" cy="{_fmt(y(p.observed))}"'
                     f' r="{6 if marked else 3}"><title>{escape(detail)}</title></circle>')
    label_every = max(1, len(points) // 6)
    for i, p in enumerate(points):
        last = len(points) - 1
        if (i % label_every == 0 and last - i >= label_every) or i == last:
            parts.append(f'<text class="tick" x="{_fmt(x(i))}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                         f'{escape(p.start.strftime("%m-%d %H:%M"))}</text>')
    parts.append(f'<text class="axis" x="{LEFT}" y="{HEIGHT - 6}">bucket start (UTC); {escape(unit)} per bucket; '
                 f'green: baseline mean and band up to the alert bound; red: alerting buckets</text></svg>')
    return "".join(parts)
