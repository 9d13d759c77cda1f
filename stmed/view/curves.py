"""Training curves as inline SVG: one panel per metric against step, every run overlaid.

Rows come from ``train_log.jsonl`` (one per trainer log event). A resumed run logs some steps
twice; the last row for a step wins. Panels no run has data for are left out, so an sft log
shows its loss alone.
"""

from __future__ import annotations

import math
from html import escape

from stmed.view.inputs import Run
from stmed.view.scrub import Scrubber

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
W, H = 340, 210  # panel size in CSS pixels: three abreast on a laptop screen
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 26, 30  # plot margins inside a panel
MAX_DOTS = 60  # draw a dot per point (with its value on hover) up to this many points


def series(rows: list[dict], metric: str) -> list[tuple[float, float]]:
    by_step: dict[float, float] = {}
    for row in rows:
        x, y = row.get("step"), row.get(metric)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y):
            by_step[float(x)] = float(y)
    return sorted(by_step.items())


def nice_ticks(lo: float, hi: float, n: int = 4) -> tuple[list[float], int]:
    """About n round numbers spanning [lo, hi], and the decimals that tell them apart."""
    if hi <= lo:
        return [lo], 2
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    m = next(m for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    step = m * mag
    decimals = max(0, -math.floor(math.log10(step)) + (m == 2.5))
    first = math.ceil(lo / step) * step
    return [round(first + k * step, 12) for k in range(int((hi - first) / step + 1e-9) + 1)], decimals


def _tick(v: float, decimals: int) -> str:
    text = f"{v:.{decimals}f}"
    return "0" if float(text) == 0 else text  # no "-0.00"


def _bounds(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:  # a flat line sits in the middle of a small band
        pad = abs(lo) * 0.1 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def panel(metric: str, lines: list[tuple[int, list[tuple[float, float]]]]) -> str:
    """One metric's SVG; ``lines`` holds (colour index, points) per run."""
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts]
    x0, x1 = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
    y0, y1 = _bounds(ys)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg class="curve" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" data-metric="{escape(metric)}">',
           f'<title>{escape(metric)} against step</title>',
           f'<text x="{LEFT}" y="16" class="ptitle">{escape(metric)}</text>']
    yticks, ydec = nice_ticks(y0, y1)
    xticks, xdec = nice_ticks(x0, x1)
    for t in yticks:
        y = sy(t)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{LEFT - 5}" y="{y + 3.5:.1f}" class="tick" text-anchor="end">{_tick(t, ydec)}</text>')
    for t in xticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{H - BOTTOM + 14}" class="tick" text-anchor="middle">{_tick(t, xdec)}</text>')
    out.append(f'<text x="{W - RIGHT}" y="{H - 3}" class="tick" text-anchor="end">step</text>'
               f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/>')
    for colour, pts in lines:
        c = COLOURS[colour % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.8" class="run"/>')
        if len(pts) <= MAX_DOTS:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.4" fill="{c}">'
                    f'<title>step {x:g}: {y:.6g}</title></circle>' for x, y in pts]
    out.append("</svg>")
    return "".join(out)


def legend(runs: list[Run], scrub: Scrubber) -> str:
    items = []
    for i, run in enumerate(runs):
        meta = run.meta
        about = []
        if meta.get("stage"):
            about.append(str(meta["stage"]))
        if meta.get("base_model"):
            about.append(scrub.meta(meta["base_model"]))
        cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        for k in ("beta", "loss", "learning_rate", "max_steps"):
            v = cfg.get(k)
            if v not in (None, -1, []):
                about.append(f"{k.replace('_', ' ')} {'+'.join(map(str, v)) if isinstance(v, list) else v}")
        steps = max((r.get("step", 0) for r in run.rows if isinstance(r.get("step"), (int, float))), default=0)
        about.append(f"{steps:g} steps")
        items.append(f'<li><svg width="22" height="10" aria-hidden="true"><line x1="0" x2="22" y1="5" y2="5" '
                     f'stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="3"/></svg> <b>{escape(scrub.path(run.label))}</b> '
                     f'<span class="about">{escape(", ".join(about))}</span></li>')
    return f'<ul class="legend">{"".join(items)}</ul>'


def curves_html(runs: list[Run], scrub: Scrubber) -> str:
    """The training section: a legend and one SVG panel per metric that has data."""
    if not runs:
        return ""
    panels = []
    for metric in METRICS:
        lines = [(i, pts) for i, run in enumerate(runs) if (pts := series(run.rows, metric))]
        if lines:
            panels.append(panel(metric, lines))
    if not panels:
        panels.append('<p class="empty">no loss or reward rows in these logs</p>')
    return (f'<section id="training"><h2>Training</h2>{legend(runs, scrub)}'
            f'<div class="panels">{"".join(panels)}</div></section>')
