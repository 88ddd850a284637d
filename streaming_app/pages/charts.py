"""Small SVG charts drawn on the server: no script, readable by screen readers (title, desc
and a data table beside each chart), crisp at any zoom."""

from __future__ import annotations

import math

from markupsafe import Markup, escape


def format_duration(seconds: float | None) -> str:
    """1:05, 12:00, 1:02:03."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def format_span(seconds: float | None) -> str:
    """A human span: 45 s, 3 min 20 s, 2 h 5 min."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, sec = divmod(s, 60)
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60} min"


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / max(1, target)
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if step >= raw:
            return float(step)
    return float(math.ceil(raw / 3600) * 3600)


def retention_svg(points: list[dict], duration: float | None, *, width: int = 720, height: int = 240) -> Markup:
    """Audience retention: share of views (0..100 %) still watching at each point in time."""
    left, right, top, bottom = 44, 12, 12, 28
    w, h = width - left - right, height - top - bottom
    title = "Audience retention"
    if not points or not duration:
        return Markup(
            f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{title}: no views yet">'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="chart-empty">No views yet</text></svg>')

    def x(t: float) -> float:
        return left + w * min(1.0, max(0.0, t / duration))

    def y(share: float) -> float:
        return top + h * (1 - share)

    step = duration / len(points)
    coords = []
    for p in points:
        coords.append((x(p["t"]), y(p["share"])))
        coords.append((x(p["t"] + step), y(p["share"])))
    line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    area = f"{left},{top + h} {line} {left + w},{top + h}"
    parts = [
        f'<svg class="chart chart-retention" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="ret-title ret-desc" preserveAspectRatio="xMidYMid meet">',
        f'<title id="ret-title">{title}</title>',
        f'<desc id="ret-desc">Share of views that played each moment of the video; '
        f'{round(points[0]["share"] * 100)} % at the start, {round(points[-1]["share"] * 100)} % at the end.</desc>',
    ]
    for pct in (0, 25, 50, 75, 100):
        gy = y(pct / 100)
        parts.append(f'<line class="grid" x1="{left}" x2="{left + w}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end">{pct}%</text>')
    tick = _nice_step(duration)
    t = 0.0
    while t <= duration + 1e-6:
        parts.append(f'<text class="axis" x="{x(t):.1f}" y="{height - 8}" text-anchor="middle">{format_duration(t)}</text>')
        t += tick
    parts.append(f'<polygon class="area" points="{area}"/>')
    parts.append(f'<polyline class="line" points="{line}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bars_svg(items: dict[str, float], *, width: int = 720, bar: int = 26, gap: int = 10,
             label: str = "Time per rendition") -> Markup:
    """Horizontal bars: one per key, length by value, with the value and share written on it."""
    if not items:
        return Markup(
            f'<svg class="chart" viewBox="0 0 {width} 60" role="img" aria-label="{escape(label)}: no data yet">'
            f'<text x="{width / 2}" y="34" text-anchor="middle" class="chart-empty">No playback yet</text></svg>')
    total = sum(items.values()) or 1.0
    biggest = max(items.values()) or 1.0
    left, right = 70, 150
    w = width - left - right
    height = len(items) * (bar + gap) + gap
    parts = [f'<svg class="chart chart-bars" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)}">', f"<title>{escape(label)}</title>"]
    for i, (key, value) in enumerate(items.items()):
        top = gap + i * (bar + gap)
        length = max(2.0, w * value / biggest)
        share = 100 * value / total
        parts.append(f'<text class="axis" x="{left - 8}" y="{top + bar * 0.68:.1f}" text-anchor="end">{escape(key)}</text>')
        parts.append(f'<rect class="bar bar-{i % 6}" x="{left}" y="{top}" width="{length:.1f}" height="{bar}" rx="3"/>')
        parts.append(f'<text class="value" x="{left + length + 8:.1f}" y="{top + bar * 0.68:.1f}">'
                     f'{escape(format_span(value))} · {share:.0f}%</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
