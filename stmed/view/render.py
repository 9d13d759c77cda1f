"""One card as HTML: the image, its description, and each question with its answers, the
judge's verdict, the eval marks and why a record was skipped or failed.

Every string from a record passes through ``html.escape`` after the scrubber, here and nowhere
else, so model text can hold any markup and still shows as text.
"""

from __future__ import annotations

import json
import math
from html import escape

from stmed import corrupt
from stmed.view.cards import Card, Prediction, Unit, answer_type, eval_mark, outcomes
from stmed.view.scrub import Scrubber
from stmed.view.thumbs import Thumb

MARKS = {"right": "\u2713 right", "partial": "\u00bd partial", "wrong": "\u2717 wrong"}
SEP = " \u00b7 "
CHOSEN, REJECTED = "\u2713 chosen", "\u2717 rejected"
SHOWN_SCORES = {"closed": ("closed_hit", "closed_strict", "exact"),
                "open": ("recall", "precision", "f1", "exact", "bleu1")}


def _num(x) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "" if x is None else str(x)
    return f"{x:g}" if float(x).is_integer() else f"{x:.2f}"


class CardRenderer:
    def __init__(self, scrub: Scrubber):
        self.s = scrub

    def t(self, value) -> str:
        """Model text, escaped."""
        return escape(self.s.text(value))

    def m(self, value) -> str:
        """stmed's own text (ids, errors, model names), escaped and without absolute paths."""
        return escape(self.s.meta(value))

    # ------------------------------------------------------------------ card

    def card(self, card: Card, thumb: Thumb | None, image_name: str | None,
             corrupted: dict[str, Thumb] | None = None) -> str:
        """``corrupted``: unit id -> the corrupted copy its answers were also sampled on."""
        corrupted = corrupted or {}
        units = "".join(self.unit(card, u, thumb, corrupted.get(u.id)) for u in card.units)
        errors = ""
        if card.errors:  # failures before any question: a unit of their own, so the error filter finds them
            errors = "".join(self.error(e) for e in card.errors)
            errors = f'<section class="unit" data-o="error" data-t="">{errors}</section>'
        title = self.m(card.key[len("image:"):] if card.key.startswith("image:") else card.key)
        desc = card.first("description")
        parts = [
            f'<article class="card" data-key="{title}">',
            self.media(thumb, image_name),
            '<div class="body">',
            f'<h2>{title}</h2>',
            f'<div class="file">{escape(image_name)}</div>' if image_name and escape(image_name) != title else "",
            f'<div class="counts">{self.counts(card)}</div>',
            f'<p class="description"><span class="lbl">description</span> {self.t(desc)}</p>' if desc else "",
            self.made_by(card),
            errors, units, "</div></article>",
        ]
        return "".join(parts)

    def media(self, thumb: Thumb | None, name: str | None) -> str:
        if thumb is None:
            return '<div class="media"><div class="noimg">no image in these records</div></div>'
        if thumb.url is None:
            return f'<div class="media"><div class="noimg">image not shown: {self.m(thumb.error)}</div></div>'
        facts = f"{escape(thumb.format or '')} {thumb.size[0]}\u00d7{thumb.size[1]}" if thumb.size else ""
        return (f'<div class="media"><img src="{thumb.url}" alt="{escape(name or "")}">'
                f'<div class="facts">{facts}</div></div>')

    def counts(self, card: Card) -> str:
        tally: dict[str, int] = {}
        for u in card.units:
            for tag in outcomes(u):
                tally[tag] = tally.get(tag, 0) + 1
        if card.errors:
            tally["error"] = tally.get("error", 0) + len(card.errors)
        n = len(card.units) + len(card.errors)
        head = f"{n:,} record{'s' * (n != 1)}"
        return " ".join([head] + [f'<span class="tag {k}">{v} {k}</span>' for k, v in tally.items()])

    def made_by(self, card: Card) -> str:
        """Which model and settings wrote the questions and answers (the first record's)."""
        bits = []
        for key, what in (("gen", "questions"), ("answer_gen", "answers")):
            gen = card.first(key)  # eval records' own gen goes with each prediction instead
            if isinstance(gen, dict) and gen.get("model"):
                how = ", ".join(f"{k} {_num(gen[k])}" for k in ("strategy", "temperature", "top_k", "top_p") if k in gen)
                bits.append(f"{what}: {self.m(gen['model'])}" + (f" ({escape(how)})" if how else ""))
        return f'<div class="gen">{SEP.join(bits)}</div>' if bits else ""

    # ------------------------------------------------------------------ unit

    def unit(self, card: Card, unit: Unit, thumb: Thumb | None = None, corrupted: Thumb | None = None) -> str:
        rec = unit.record
        tags = outcomes(unit)
        atype = answer_type(unit)
        short = unit.id[len(card.key) + 1:] if unit.id.startswith(card.key + ":") else unit.id
        head = [f'<span class="uid">{self.m(short)}</span>']
        if atype:
            head.append(f'<span class="atype">{escape(atype)}</span>')
        if "chosen" in rec and "rejected" in rec:
            head.append(f'<span class="badge pair">pair \u00b7 margin {escape(_num(rec.get("margin")))}</span>')
        if rec.get(corrupt.HARD_NEGATIVE):
            head.append(f'<span class="badge hard">hard negative: {self.m(rec[corrupt.HARD_NEGATIVE])}</span>')
        if "skip" in rec:
            margin = f"{SEP}margin {escape(_num(rec['margin']))}" if "margin" in rec else ""
            head.append(f'<span class="badge skipped">skipped: {self.m(rec["skip"])}{margin}</span>')
        if unit.errors:
            head.append('<span class="badge error">error</span>')
        body = [f'<section class="unit" data-o="{" ".join(tags)}" data-t="{escape(atype or "")}">',
                f'<header>{"".join(head)}</header>']
        if corrupted is not None:
            body.append(self.beside(thumb, corrupted, rec.get(corrupt.FIELD)))
        if rec.get("question"):
            body.append(f'<p class="question"><span class="lbl">Q</span> {self.t(rec["question"])}</p>')
        if unit.predictions:
            body.append(f'<p class="gold"><span class="lbl">answer</span> {self.t(rec.get("answer", ""))}</p>')
            body += [self.prediction(p, rec, len(unit.predictions) > 1) for p in unit.predictions]
        body.append(self.answers(rec))
        if isinstance(rec.get("judge"), dict):
            body.append(self.judge(rec["judge"]))
        body += [self.error(e) for e in unit.errors]
        body.append("</section>")
        return "".join(body)

    def beside(self, real: Thumb | None, corrupted: Thumb, spec) -> str:
        """The real image and the corrupted copy a unit's corrupted-image answers were sampled on."""
        what = SEP.join(f"{k} {_num(spec[k])}" for k in ("kind", "strength", "seed") if k in spec) \
            if isinstance(spec, dict) else ""
        figs = []
        for t, caption in ((real, "real image"), (corrupted, f"corrupted: {what}")):
            img = (f'<img src="{t.url}" alt="{escape(caption)}">' if t is not None and t.url
                   else f'<div class="noimg">{self.m(t.error if t is not None else "no image")}</div>')
            figs.append(f"<figure>{img}<figcaption>{escape(caption)}</figcaption></figure>")
        return f'<div class="beside">{"".join(figs)}</div>'

    def answers(self, rec: dict) -> str:
        """Each sampled answer with its seed, then those on the corrupted image; the chosen and
        the rejected one marked (a hard negative's judge numbers them in that order too)."""
        items = []  # (text, seed, on the corrupted image)
        for key in ("answers", corrupt.ANSWERS):
            raw = rec.get(key)
            if isinstance(raw, list):
                for a in raw:
                    text, seed = (a.get("text"), a.get("seed")) if isinstance(a, dict) else (a, None)
                    items.append((text, seed, key == corrupt.ANSWERS))
        has_pair = "chosen" in rec and "rejected" in rec
        if not items and has_pair:
            items = [(rec["chosen"], None, False), (rec["rejected"], None, False)]
        if not items:
            return ""
        marks = [""] * len(items)
        judge = rec.get("judge") if isinstance(rec.get("judge"), dict) else {}
        if has_pair:
            pair = [i - 1 for i in _pair(judge) if 0 < i <= len(items)] if "pair" in judge else []
            candidates = pair or list(range(len(items)))
            c = next((i for i in candidates if items[i][0] == rec["chosen"]), None)
            r = next((i for i in candidates if i != c and items[i][0] == rec["rejected"]), None)
            if c is not None:
                marks[c] = "chosen"
            if r is not None:
                marks[r] = "rejected"
        means = self._mean_scores(judge, len(items))
        out = ['<ol class="answers">']
        for i, ((text, seed, bad), mark) in enumerate(zip(items, marks)):
            bits = [f'<span class="mark {mark}">{CHOSEN if mark == "chosen" else REJECTED}</span>' if mark else ""]
            bits.append(f'<span class="aid">answer {i + 1}{" on the corrupted image" if bad else ""}</span>')
            if seed is not None:
                bits.append(f'<span class="seed">seed {escape(_num(seed))}</span>')
            if i in means:
                bits.append(f'<span class="score">judge mean {_num(means[i])}</span>')
            out.append(f'<li class="answer {mark}"><div class="ahead">{"".join(bits)}</div>'
                       f'<div class="text">{self.t(text if text is not None else "")}</div></li>')
        out.append("</ol>")
        return "".join(out)

    @staticmethod
    def _mean_scores(judge: dict, n: int) -> dict[int, float]:
        """Answer index -> its mean score over the orders the judge saw it in."""
        got: dict[int, list[float]] = {}
        for shown, scores in _comparisons(judge):
            for i, s in zip(shown, scores):
                if 0 <= i < n:
                    got.setdefault(i, []).append(s)
        return {i: sum(v) / len(v) for i, v in got.items()}

    def judge(self, judge: dict) -> str:
        """The scores in every order the judge saw the answers, and its reasons."""
        about = [self.m(judge.get("model", "judge"))]
        about += [f"{k.replace('_', ' ')} {self.m(judge[k])}" for k in ("backend", "policy", "prompt_version")
                  if judge.get(k) is not None]
        sources = judge.get("sources")
        if sources:
            about.append("from " + self.m(", ".join(map(str, sources)) if isinstance(sources, list) else sources))
        rows = _comparisons(judge)
        table = ""
        if rows:
            shown_once = sorted({i for shown, _ in rows for i in shown})
            cells = "".join(f"<th>answer {i + 1}</th>" for i in shown_once)
            trs = []
            for shown, scores in rows:
                by = dict(zip(shown, scores))
                order = ", then ".join(f"answer {i + 1}" for i in shown)
                trs.append(f"<tr><th>{order}</th>" + "".join(f"<td>{_num(by.get(i))}</td>" for i in shown_once) + "</tr>")
            table = f'<table class="scores"><tr><th>shown</th>{cells}</tr>{"".join(trs)}</table>'
        reasons = []
        raw = judge.get("raw") if isinstance(judge.get("raw"), list) else []
        a, b = _pair(judge)
        labels = [f"answers {a}, then {b}", f"answers {b}, then {a}"]  # raw holds the pair's orders, forward first
        for k, text in enumerate(raw):
            label = labels[k] if k < 2 else f"reply {k + 1}"
            reasons.append(f'<div class="reason"><span class="lbl">{label}</span> {self.t(_reason(text))}</div>')
        return (f'<div class="judge"><div class="about">judge: {SEP.join(about)}</div>{table}'
                f'{"".join(reasons)}</div>')

    def prediction(self, p: Prediction, rec: dict, labelled: bool) -> str:
        from stmed.evaluation.metrics import normalize, normalize_twice

        closed = str(rec.get("answer_type", "")).upper() == "CLOSED"
        norm = normalize if closed else normalize_twice
        mark = eval_mark(rec.get("answer_type"), p.scores)
        shown = SHOWN_SCORES["closed" if closed else "open"]
        scores = SEP.join(f"{k} {_num(p.scores[k])}" for k in shown if p.scores.get(k) is not None)
        label = f'<span class="plabel">{self.m(p.label)}</span>' if labelled else ""
        model = f'<span class="pmodel">{self.m(p.gen["model"])}</span>' if p.gen.get("model") else ""
        return (f'<div class="eval {mark}"><div class="ahead"><span class="mark {mark}">{MARKS[mark]}</span>{label}{model}'
                f'<span class="pscores">{escape(scores)}</span></div>'
                f'<div class="text"><span class="lbl">prediction</span> {self.t(p.text)}</div>'
                f'<div class="norm"><span class="lbl">normalised</span> <q>{self.t(norm(p.text))}</q> against '
                f'<q>{self.t(norm(str(rec.get("answer", ""))))}</q></div></div>')

    def error(self, e: dict) -> str:
        raw = e.get("raw")
        extra = ""
        if raw:
            text = "\n".join(map(str, raw)) if isinstance(raw, list) else str(raw)
            extra = f'<details><summary>raw reply</summary><pre>{self.t(text)}</pre></details>'
        return (f'<div class="error"><span class="lbl">failed</span> {self.m(e.get("error", ""))}'
                f' <span class="src">({self.m(e.get("source", ""))})</span>{extra}</div>')


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_score(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pair(judge: dict) -> tuple[int, int]:
    """The two answers (1-based) the judge compared: ``pair`` when it is two numbers, else 1 and 2."""
    p = judge.get("pair")
    if isinstance(p, list) and len(p) >= 2 and _is_int(p[0]) and _is_int(p[1]):
        return p[0], p[1]
    return 1, 2


def _comparisons(judge: dict) -> list[tuple[list[int], list[float]]]:
    """Every judged order as (0-based answer indices as shown, their scores); an order whose
    fields have another shape (another tool's file, a hand edit) is left out, not guessed at."""
    if isinstance(judge.get("comparisons"), list) and judge["comparisons"]:
        orders = [(c.get("shown"), c.get("scores")) for c in judge["comparisons"] if isinstance(c, dict)]
    else:
        a, b = _pair(judge)
        orders = [([a, b], judge.get("scores")), ([b, a], judge.get("swapped_scores"))]
    return [([i - 1 for i in shown], list(scores)) for shown, scores in orders
            if isinstance(shown, list) and isinstance(scores, list) and shown and len(shown) == len(scores)
            and all(map(_is_int, shown)) and all(map(_is_score, scores))]


def _reason(text) -> str:
    """A JSON reply's ``reason``; any other reply as written (scores on its first line, then why)."""
    text = str(text)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            obj = json.loads(text[start:end + 1])
        except ValueError:
            return text
        if isinstance(obj, dict) and isinstance(obj.get("reason"), str):
            scores = [f"{k} {obj[k]}" for k in obj if k != "reason" and isinstance(obj[k], (int, float))]
            return (", ".join(scores) + ": " if scores else "") + obj["reason"]
    return text
