"""The whole page: header and totals, training curves, filters, and one ``<template>`` per card.

Cards wait in inert ``<template>``s (their images are not decoded) and the script clones only
the page on screen, so 10,000 records open as fast as 20. A Content-Security-Policy allows
images from data URLs and only this page's own style and script (by hash): the page fetches
nothing, and even text that escaped escaping could not run.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from stmed import __version__
from stmed.errors import InputError
from stmed.images import resolve_path
from stmed.progress import track
from stmed.view.assets import CSS, JS
from stmed.view.cards import OUTCOMES, Card, join, outcomes
from stmed.view.curves import curves_html
from stmed.view.inputs import Inputs, read_inputs
from stmed.view.render import SEP, CardRenderer
from stmed.view.scrub import Scrubber
from stmed.view.thumbs import THUMB_SIDE, Thumb, Thumbnailer

PER_PAGE = 20  # cards on screen at once: a page of radiographs fits a few screens


@dataclass
class ViewConfig:
    paths: list[str]
    image_root: Path | None = None  # relative image paths resolve here instead of beside their file
    thumb_side: int = THUMB_SIDE
    per_page: int = PER_PAGE
    keep_paths: bool = False  # show absolute paths of this machine (off: file names only)
    title: str | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if not 32 <= self.thumb_side <= 1024:
            raise InputError(f"--thumb-size {self.thumb_side}: expected 32 to 1024 pixels")
        if self.per_page < 1:
            raise InputError("--per-page must be 1 or more")


def write_page(path: Path, page: str) -> None:
    """Whole or not at all: a kill mid-write leaves the previous page, never half of one."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)


def script_json(obj) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' at all (so no '</script>' and no
    '<!--'), and no U+2028/U+2029, which older parsers read as line ends."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


CSP = f"default-src 'none'; img-src data:; style-src {_hash(CSS)}; script-src {_hash(JS)}; base-uri 'none'; form-action 'none'"


def build_page(cfg: ViewConfig) -> tuple[str, dict]:
    """The page and its totals (what the command reports on stderr)."""
    inputs = read_inputs(cfg.paths)
    roots = [s.path.resolve().parent for s in inputs.sources if s.path is not None]
    roots += [r.path.resolve() for r in inputs.runs]
    if cfg.image_root is not None:
        roots.append(cfg.image_root)
    scrub = Scrubber(roots, keep_paths=cfg.keep_paths)
    cards = join(inputs.sources)
    templates, unreadable = _render_cards(cards, cfg, scrub)
    totals = {"images": len(cards), "records": sum(len(c.units) + len(c.errors) for c in cards),
              "runs": len(inputs.runs), "outcomes": _tally(cards), "images_not_shown": unreadable,
              "empty_inputs": inputs.empty}
    return _page(cfg, inputs, scrub, templates, totals, cards), totals


def _render_cards(cards: list[Card], cfg: ViewConfig, scrub: Scrubber) -> tuple[list[str], int]:
    thumbs = Thumbnailer(cfg.thumb_side)
    renderer = CardRenderer(scrub)
    paths = [None if c.image is None else resolve_path(c.image[0], c.image[1], cfg.image_root) for c in cards]
    for path in paths:  # the images' folders are this machine's too: cut them from all text, first card on
        if path is not None:
            scrub.add_root(path.parent)
    out = []
    with track("view", len(cards), quiet=cfg.quiet, unit="images") as tracker:
        for card, path in zip(cards, paths):
            thumb, name, corrupted = None, None, {}
            if path is not None:
                thumb, name, corrupted = thumbs(path), scrub.path(card.image[0]), _corrupted(card, path, thumbs)
            out.append(f'<template class="card-t">{renderer.card(card, thumb, name, corrupted)}</template>')
            tracker.advance(kind="done" if thumb is None or thumb.url else "failed")
        tracker.counts = {"images": len(cards), "not shown": thumbs.failed}
    return out, thumbs.failed


def _corrupted(card: Card, path: Path, thumbs: Thumbnailer) -> dict[str, Thumb]:
    """Unit id -> the corrupted image its ``corrupt`` record rebuilds (stmed answer --corrupt)."""
    from stmed.corrupt import FIELD, Corruption
    from stmed.errors import RecordError

    out = {}
    for u in card.units:
        if FIELD in u.record:
            try:
                out[u.id] = thumbs.corrupted(path, Corruption.from_record(u.record[FIELD], u.id))
            except RecordError as e:
                out[u.id] = Thumb(error=str(e))
    return out


def _tally(cards: list[Card]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for c in cards:
        counts["error"] += len(c.errors)
        for u in c.units:
            for tag in outcomes(u):
                counts[tag] += 1
    return {k: v for k, v in counts.items() if v}


def _select(name: str, label: str, options: list[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{escape(v)}">{escape(text)}</option>' for v, text in options)
    return f'<label>{label} <select id="{name}">{opts}</select></label>'


def _filters(cfg: ViewConfig, totals: dict, cards: list[Card]) -> str:
    tally = totals["outcomes"]
    parts = ['<form id="filters" class="filters" role="search">',
             '<input type="search" id="q" placeholder="search questions, answers, reasons, ids" aria-label="search">',
             _select("o", "outcome", [("", "any")] + [(k, f"{k} ({v})") for k, v in tally.items()])]
    types: dict[str, int] = {}
    for c in cards:
        for u in c.units:
            if u.record.get("answer_type"):
                t = str(u.record["answer_type"]).lower()
                types[t] = types.get(t, 0) + 1
    if types:
        parts.append(_select("t", "answer type", [("", "any")] + [(k, f"{k} ({v})") for k, v in sorted(types.items())]))
    sizes = sorted({10, 20, 50, 100, cfg.per_page})
    parts.append('<label>per page <select id="per">' + "".join(
        f'<option value="{n}"{" selected" if n == cfg.per_page else ""}>{n}</option>' for n in sizes) + "</select></label>")
    parts.append("</form>")
    return "".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _common_folder(names: list[str]) -> str:
    """The folder every input sits in (``runs/demo`` for its round's files and evals), or ""."""
    import os

    if any(n == "<stdin>" or os.path.isabs(n) for n in names):
        return ""
    try:
        common = os.path.commonpath([os.path.dirname(n) for n in names])
    except ValueError:
        return ""
    return "" if common in ("", ".") else common


def _page(cfg: ViewConfig, inputs: Inputs, scrub: Scrubber, templates: list[str], totals: dict, cards: list[Card]) -> str:
    shown = [s.name if s.path is None else scrub.path(s.name) for s in inputs.sources]
    # a run outside the working folder would show as "dpo" or "train_log.jsonl": its label tells runs apart
    shown += [r.label if r.path.is_absolute() and scrub.path(r.path) == r.path.name else scrub.path(r.path)
              for r in inputs.runs]
    shown += [scrub.path(n) for n in inputs.empty]
    folder = _common_folder(shown)
    names = [n[len(folder) + 1:] if folder else n for n in shown]
    names = [n + " (empty)" if i >= len(names) - len(inputs.empty) else n for i, n in enumerate(names)]
    title = cfg.title or "stmed view: " + (folder or ", ".join(names[:3]) + (" ..." if len(names) > 3 else ""))
    summary = " ".join([f'{_count(totals["images"], "image")}{SEP}{_count(totals["records"], "record")}'] +
                       [f'<span class="tag {k}">{v} {k}</span>' for k, v in totals["outcomes"].items()])
    data = {"stmed": __version__, "title": scrub.meta(title), "inputs": names, "images": totals["images"],
            "records": totals["records"], "outcomes": totals["outcomes"], "runs": [scrub.path(r.label) for r in inputs.runs],
            "per_page": cfg.per_page}
    records = ""
    if inputs.sources:
        records = (f'<section id="records">{_filters(cfg, totals, cards)}'
                   '<div id="status" class="status" aria-live="polite"></div><div id="cards"></div>'
                   '<nav class="pager"><button type="button" id="prev">\u2039 previous</button><span id="pageinfo"></span>'
                   '<button type="button" id="next">next \u203a</button></nav>'
                   '<noscript><p>The cards need JavaScript (the page loads nothing from the network).</p></noscript>'
                   "</section>")
    script = f'<script>{JS}</script>' if inputs.sources else ""
    return "".join([
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(scrub.meta(title))}</title><style>{CSS}</style></head><body>",
        f'<header class="top"><h1>{escape(scrub.meta(title))}</h1>',
        f'<div class="inputs">{escape(", ".join(names))}{SEP}made by stmed {__version__}</div>',
        f'<div class="totals">{summary}</div>' if inputs.sources else "",
        "</header>",
        curves_html(inputs.runs, scrub),
        records,
        "\n".join(templates),
        f'<script type="application/json" id="stmed-data">{script_json(data)}</script>',
        script,
        "</body></html>\n",
    ])
