"""Small inline SVG charts for the HTML report: no script, no external asset, no dependency.

Each function returns one `<svg>` element as text. Values of None are gaps (nothing to
measure in that interval), not zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

PALETTE: tuple[str, ...] = (
    "#2f6fb3",
    "#e07b39",
    "#3a9a5b",
    "#c44e52",
    "#8172b2",
    "#937860",
    "#da8bc3",
    "#8c8c8c",
    "#ccb974",
    "#64b5cd",
)
WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 16, 42
LEGEND_ROW = 16

Formatter = Callable[[float], str]


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.1f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def _bar_width(value: float | None, high: float, plot_w: float) -> float:
    return plot_w * min(max(value or 0.0, 0.0), high) / (high or 1.0)


def _frame(
    title: str,
    labels: Sequence[str],
    top: float,
    bottom: float,
    fmt: Formatter,
    legend: Sequence[str] = (),
) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    height = HEIGHT + _legend_height(legend)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        value = bottom + (top - bottom) * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            'stroke="#e3e3e3" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{escape(fmt(value))}</text>'
        )
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    every = max(1, math.ceil(len(labels) / 12))
    for index, label in enumerate(labels):
        if index % every:
            continue
        x = LEFT + slot * (index + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
            f'font-size="11" fill="#555">{escape(label)}</text>'
        )
    return parts


def _legend_rows(names: Sequence[str]) -> list[list[tuple[int, str, float]]]:
    """The legend's entries (colour index, name, x) in rows that fit the width."""
    rows: list[list[tuple[int, str, float]]] = [[]]
    x = float(LEFT)
    for index, name in enumerate(names):
        width = 22 + 6.5 * len(name)
        if rows[-1] and x + width > WIDTH - RIGHT:
            rows.append([])
            x = float(LEFT)
        rows[-1].append((index, name, x))
        x += width
    return rows


def _legend_height(names: Sequence[str]) -> int:
    return LEGEND_ROW * (len(_legend_rows(names)) - 1)


def _legend(names: Sequence[str]) -> list[str]:
    parts: list[str] = []
    for number, row in enumerate(_legend_rows(names)):
        y = HEIGHT - 14 + LEGEND_ROW * number
        for index, name, x in row:
            colour = PALETTE[index % len(PALETTE)]
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="10" height="10" fill="{colour}"/>'
                f'<text x="{x + 14:.1f}" y="{y + 9}" font-size="11" fill="#333">'
                f"{escape(name)}</text>"
            )
    return parts


def stacked_bars(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    fmt: Formatter = _number,
) -> str:
    """Bars per label, stacked by series (e.g. contacts per interval by channel)."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0.0))
    parts = _frame(title, labels, top, 0.0, fmt, list(series))
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    for index in range(len(labels)):
        y = float(TOP + plot_h)
        for number, values in enumerate(series.values()):
            height = plot_h * values[index] / top
            if height <= 0:
                continue
            y -= height
            parts.append(
                f'<rect x="{LEFT + slot * index + slot * 0.12:.1f}" y="{y:.1f}" '
                f'width="{slot * 0.76:.1f}" height="{height:.1f}" '
                f'fill="{PALETTE[number % len(PALETTE)]}"/>'
            )
    parts.extend(_legend(list(series)))
    parts.append("</svg>")
    return "".join(parts)


def lines(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    fmt: Formatter = _number,
    *,
    top: float | None = None,
    bottom: float = 0.0,
    target: float | None = None,
    target_label: str = "target",
) -> str:
    """One line per series over the labels, gaps where a value is None; an optional dashed
    target line."""
    found = [v for values in series.values() for v in values if v is not None]
    high = top if top is not None else _nice_max(max([*found, target or 0.0], default=0.0))
    parts = _frame(title, labels, high, bottom, fmt, list(series))
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    span = (high - bottom) or 1.0

    def y_of(value: float) -> float:
        clamped = min(max(value, bottom), high)
        return TOP + plot_h - plot_h * (clamped - bottom) / span

    if target is not None:
        y = y_of(target)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            'stroke="#c44e52" stroke-dasharray="5,4" stroke-width="1.2"/>'
            f'<text x="{WIDTH - RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#c44e52">{escape(target_label)}</text>'
        )
    for number, values in enumerate(series.values()):
        colour = PALETTE[number % len(PALETTE)]
        run: list[str] = []
        runs: list[list[str]] = [run]
        for index, value in enumerate(values):
            if value is None:
                run = []
                runs.append(run)
                continue
            x = LEFT + slot * (index + 0.5)
            run.append(f"{x:.1f},{y_of(value):.1f}")
            parts.append(f'<circle cx="{x:.1f}" cy="{y_of(value):.1f}" r="2.5" fill="{colour}"/>')
        for points in runs:
            if len(points) > 1:
                parts.append(
                    f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
                    'stroke-width="2"/>'
                )
    parts.extend(_legend(list(series)))
    parts.append("</svg>")
    return "".join(parts)


def bars(
    title: str,
    values: Mapping[str, float | None],
    fmt: Formatter = _number,
    *,
    top: float | None = None,
    target: float | None = None,
) -> str:
    """Horizontal bars, one per category, value written at the end (None: "n/a")."""
    names = list(values)
    row = 22
    height = TOP + row * max(1, len(names)) + 12
    label_w = 170
    found = [v for v in values.values() if v is not None]
    high = top if top is not None else _nice_max(max([*found, target or 0.0], default=0.0))
    plot_w = WIDTH - label_w - 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}" class="chart"><title>{escape(title)}</title>'
    ]
    for index, name in enumerate(names):
        y = TOP + row * index
        value = values[name]
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" font-size="12" '
            f'fill="#333">{escape(name)}</text>'
        )
        if value is not None:
            width = _bar_width(value, high, plot_w)
            parts.append(
                f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row - 8}" '
                f'fill="{PALETTE[0]}"/>'
            )
        parts.append(
            f'<text x="{label_w + _bar_width(value, high, plot_w) + 6:.1f}" '
            f'y="{y + 14}" font-size="12" fill="#333">'
            f"{escape(fmt(value) if value is not None else 'n/a')}</text>"
        )
    if target is not None:
        x = label_w + plot_w * target / (high or 1.0)
        parts.append(
            f'<line x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{height - 8}" '
            'stroke="#c44e52" stroke-dasharray="5,4" stroke-width="1.2"/>'
        )
    parts.append("</svg>")
    return "".join(parts)
