"""Scoring for medical VQA, compatible with LLaVA-Med v1.0's scorer (DESIGN.md section 6).

Pure Python: importable without torch (numpy is imported lazily, only for bootstrap CIs).
The normaliser reproduces LLaVA-Med's ``normalize_word`` (itself the VQA v2 answer
normaliser), quirks included, so numbers here can be set beside the papers':

* a punctuation mark is deleted where it touches a space (or anywhere, when the text holds a
  digit,digit), else replaced by a space: "left/right" -> "left right", "a / b" -> "a b";
* a period not followed by a digit is removed, but only the first 32 of them (the original
  passes ``re.UNICODE`` (= 32) where ``re.sub`` expects ``count``);
* number words none..ten become digits, so the answer "None" is "0";
* the contraction table's capitalised keys (Im, Ive, ...) never match lower-cased words.

Open questions score bag-of-words recall against the answer (the papers' "open" number);
closed questions score a substring hit, so "no" matches inside "not", "normal", "node".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

RULES_VERSION = "llava-med-v1.0/1"

_PUNCT = ";/[]\"{}()=+\\_-><@`,?!"  # each mark is judged on the original text, so order is free
_PUNCT_SET = frozenset(_PUNCT)
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_COUNT = 32  # see the module docstring: the original's count is re.UNICODE == 32
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = frozenset(("a", "an", "the"))
# The VQA v2 contraction table, as LLaVA-Med ships it: only keys that a lower-cased word can
# reach are listed (its capitalised keys Im, Ive, Id've, I'dve are dead), and its odd entries
# are kept ("somebody'd" -> "somebodyd") because they change scores.
_CONTRACTIONS = dict(
    pair.split("=")
    for pair in (
        "aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've "
        "couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've "
        "hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's "
        "howd=how'd howll=how'll hows=how's isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll "
        "let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've "
        "mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock "
        "oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't "
        "shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't "
        "shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd "
        "somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll "
        "somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've "
        "someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've "
        "something'dve=something'd've somethingll=something'll thats=that's thered=there'd "
        "thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd "
        "theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've "
        "twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't "
        "whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd "
        "wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll "
        "whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've "
        "wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll "
        "y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd "
        "youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've"
    ).split()
)


def normalize(text: str) -> str:
    """LLaVA-Med v1.0's answer normaliser (one pass); see the module docstring for its rules."""
    text = str(text)
    marks = _PUNCT_SET.intersection(text)
    if marks:
        # Each mark is judged on the original text, as the original does, and the edits never
        # interact, so one translate() does the original's 21 sequential replaces.
        delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
        table = {ord(p): "" if delete_all or (p + " ") in text or (" " + p) in text else " " for p in marks}
        text = text.translate(table)
    if "." in text:
        text = _PERIOD.sub("", text, count=_PERIOD_COUNT)
    words = []
    for w in text.lower().split():
        w = _NUMBERS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words).replace(",", "")


def normalize_twice(text: str) -> str:
    """What LLaVA-Med's open metrics see: its scorer normalises, then its F1 normalises again.

    A second pass changes nothing unless a period survived the first (a decimal, or beyond
    the 32-period cap), so the common case costs one pass.
    """
    once = normalize(text)
    return normalize(once) if "." in once else once


# ---------------------------------------------------------------- per-item scores


def token_prf(prediction: str, answer: str) -> tuple[float, float, float]:
    """(recall, precision, F1) of bag-of-words over normalised strings; 0s when nothing matches."""
    pred, ref = Counter(prediction.split()), Counter(answer.split())
    if not pred or not ref:
        return 0.0, 0.0, 0.0
    tp = sum(c for w, c in pred.items() if w in ref)
    if tp == 0:
        return 0.0, 0.0, 0.0
    fp = sum(pred.values()) - tp
    fn = sum(c for w, c in ref.items() if w not in pred)
    recall, precision = tp / (tp + fn), tp / (tp + fp)
    return recall, precision, 2 * precision * recall / (precision + recall)


def closed_hit(prediction: str, answer: str) -> bool:
    """LLaVA-Med's closed rule: the prediction holds "yes" or "no" (as substrings) and the answer."""
    return ("yes" in prediction or "no" in prediction) and answer in prediction


def closed_strict(prediction: str, answer: str) -> bool:
    """Yes/no answers: exactly one of the words yes/no appears and it is the answer; else exact."""
    if answer in ("yes", "no"):
        said = {w for w in prediction.split() if w in ("yes", "no")}
        return said == {answer}
    return prediction == answer


def bleu(prediction: str, answer: str, n: int) -> float:
    """Sentence BLEU-n against one reference: uniform weights over orders 1..n, no smoothing.

    Equals nltk's ``sentence_bleu`` with weights (1/n,)*n, except that nltk returns about
    1e-77 instead of 0 when a higher order has no match.
    """
    return bleu_upto(prediction.split(), answer.split(), n)[n - 1]


def bleu_upto(hyp: list[str], ref: list[str], n: int = 4) -> list[float]:
    """[BLEU-1, ..., BLEU-n] sharing one pass over the n-grams (orders after a miss are 0)."""
    c, r = len(hyp), len(ref)
    out = [0.0] * n
    if c == 0:
        return out
    penalty = 1.0 if c > r else math.exp(1 - r / c)
    log_sum = 0.0
    for k in range(1, min(n, c) + 1):
        if k > r:
            break  # the reference has no k-grams: precision 0 from here on
        h = Counter(zip(*(hyp[i:] for i in range(k))))
        rf = Counter(zip(*(ref[i:] for i in range(k))))
        matched = sum(min(cnt, rf[g]) for g, cnt in h.items() if g in rf)
        if matched == 0:
            break
        log_sum += math.log(matched / (c - k + 1))
        out[k - 1] = penalty * math.exp(log_sum / k)
    return out


def score_item(prediction: str, answer: str, answer_type: str) -> dict:
    """Every per-item score an item of this answer type gets, under the metric names below."""
    if str(answer_type).upper() == "CLOSED":
        pred, ans = normalize(prediction), normalize(answer)
        hit, said = closed_hit(pred, ans), ("yes" in pred or "no" in pred)
        return {
            "closed_hit": float(hit),
            # LLaVA-Med's shipped run_eval.py appends nothing for a wrong answer that says yes/no,
            # so such items leave its denominator; None keeps them out of that mean here too.
            "closed_as_shipped": 1.0 if hit else (None if said else 0.0),
            "closed_strict": float(closed_strict(pred, ans)),
            "exact": float(pred == ans),
        }
    pred, ans = normalize_twice(prediction), normalize_twice(answer)
    recall, precision, f1 = token_prf(pred, ans)
    scores = {"recall": recall, "precision": precision, "f1": f1, "exact": float(pred == ans)}
    # no shared word means no shared n-gram: every BLEU is 0 (the common case for long answers)
    b = bleu_upto(pred.split(), ans.split(), 4) if recall else [0.0] * 4
    scores.update(bleu1=b[0], bleu2=b[1], bleu3=b[2], bleu4=b[3])
    return scores


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    name: str  # key in the summary
    item_key: str  # per-item score it averages
    answer_type: str  # OPEN or CLOSED: the items it averages over
    rule: str  # how it was computed, copied into every summary
    higher_is_better: bool = True
    headline: bool = False
    # how `stmed report` tests a difference between two runs on the same items (see
    # significance.py): "bootstrap" for graded scores, "mcnemar" for hits; such a metric's
    # per-item scores are kept in the summary
    paired_test: str | None = None
    optional: bool = False  # only some runs score it (a judge): left out of a summary where no item has it


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    assert metric.name not in METRICS, f"metric {metric.name} registered twice"
    METRICS[metric.name] = metric
    return metric


_NORM = "LLaVA-Med v1.0 normalisation"
for _m in (
    Metric("open_recall", "recall", "OPEN", f"mean bag-of-words recall of the answer's words, {_NORM} (the papers' open)", headline=True, paired_test="bootstrap"),
    Metric("closed_accuracy", "closed_hit", "CLOSED", f"hit when the prediction contains 'yes' or 'no' and the answer as substrings, {_NORM} (the papers' closed)", headline=True, paired_test="mcnemar"),
    Metric("open_f1", "f1", "OPEN", f"mean bag-of-words F1, {_NORM}", headline=True, paired_test="bootstrap"),
    Metric("open_precision", "precision", "OPEN", f"mean bag-of-words precision, {_NORM}"),
    Metric("open_exact", "exact", "OPEN", f"normalised prediction equals normalised answer, {_NORM}"),
    Metric("closed_strict", "closed_strict", "CLOSED", "yes/no answers: exactly one of the words yes/no said and it is the answer; other answers: exact match", headline=True, paired_test="mcnemar"),
    Metric("closed_accuracy_as_shipped", "closed_as_shipped", "CLOSED", "LLaVA-Med's released run_eval.py: as closed_accuracy, but wrong answers that say yes/no leave the denominator (inflated; for reproducing its numbers only)"),
    Metric("closed_exact", "exact", "CLOSED", f"normalised prediction equals normalised answer, {_NORM}"),
    *(Metric(f"open_bleu{k}", f"bleu{k}", "OPEN", f"sentence BLEU-{k} (uniform weights 1..{k}, no smoothing), {_NORM}") for k in (1, 2, 3, 4)),
    # stmed eval --open-judge: the judge model and prompt version are in the summary's "open_judge"
    Metric("open_judge", "open_judge", "OPEN", "share of open answers a judge model graded as meaning the reference "
           "answer (text only; not the papers' metric); items the judge failed on are left out", optional=True),
):
    register(_m)


# ---------------------------------------------------------------- aggregation


def bootstrap_ci(values: list[float], *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of one list; seeded, so a summary is reproducible."""
    if not values:
        return (math.nan, math.nan)
    return bootstrap_columns([[v] for v in values], resamples=resamples, seed=seed, level=level)[0]


def bootstrap_columns(rows: list[list[float | None]], *, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> list[tuple[float, float]]:
    """Percentile CIs of each column's mean, every column judged on the same resampled items.

    A None cell leaves that item out of its column's mean (a ratio estimator), as the
    as-shipped closed metric needs. One resample is a vector of item counts, so all columns
    cost one matrix product instead of a gather per metric.
    """
    import numpy as np

    n = len(rows)
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
    present = ~np.isnan(values)
    values = np.where(present, values, 0.0)
    present = present.astype(np.float64)
    rng = np.random.default_rng(seed)
    sums = np.empty((resamples, values.shape[1]))
    counts = np.empty_like(sums)
    step = max(1, 5_000_000 // max(n, 1))  # bounded memory (about 60 MB): resamples drawn in slabs
    for start in range(0, resamples, step):
        k = min(resamples, start + step) - start
        idx = rng.integers(0, n, size=(k, n), dtype=np.int32)  # k * n <= 5M fits; 32-bit draws are cheaper
        idx += (np.arange(k, dtype=np.int32) * n)[:, None]  # row r counts into its own n bins
        weights = np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(np.float64)
        sums[start:start + k] = weights @ values
        counts[start:start + k] = weights @ present
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    out = []
    for j in range(values.shape[1]):
        col = means[:, j][~np.isnan(means[:, j])]
        out.append(tuple(float(x) for x in np.quantile(col, q)) if col.size else (math.nan, math.nan))
    return out


def aggregate(items: list[dict], *, resamples: int = 1000, seed: int = 0) -> dict:
    """Summary metrics (x100) with CIs, counts, and per question type / answer type breakdowns."""
    by_type: dict[str, list[dict]] = {"OPEN": [], "CLOSED": []}
    for it in items:
        by_type.setdefault(str(it["answer_type"]).upper(), []).append(it["scores"])
    metrics = {}
    for kind, scores in by_type.items():
        mine = [m for m in METRICS.values() if m.answer_type == kind]
        cis = (bootstrap_columns([[s.get(m.item_key) for m in mine] for s in scores], resamples=resamples, seed=seed)
               if resamples and scores else [None] * len(mine))
        for m, ci in zip(mine, cis):
            values = [s[m.item_key] for s in scores if s.get(m.item_key) is not None]
            if m.optional and not values:
                continue
            entry = {"value": _pct(values), "n": len(values), "rule": m.rule, "higher_is_better": m.higher_is_better}
            if ci is not None and values:
                entry["ci95"] = [round(ci[0] * 100, 4), round(ci[1] * 100, 4)]
            metrics[m.name] = entry
    metrics = {name: metrics[name] for name in METRICS if name in metrics}  # registry order
    return {
        "metrics": metrics,
        "counts": {"total": len(items), **{k.lower(): len(v) for k, v in by_type.items()}},
        "by_question_type": _breakdown(items, "question_type"),
        "by_answer_type": {k: _headline_of(v, k) for k, v in by_type.items() if v},
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "method": "percentile, items resampled "
                      "within each answer type, shared by that type's metrics"},
        "rules_version": RULES_VERSION,
    }


def per_item(items: list[dict]) -> dict:
    """The per-item scores of every metric with a paired test, one column per metric beside the
    item ids, by answer type: {"open": {"ids": [...], "open_recall": [...]}, "closed": {...}}.

    This is what lets ``stmed report`` pair two runs item by item; 0/1 are written as ints and
    graded scores to 6 decimals, so a PathVQA summary grows by a few hundred kB at most.
    """
    out = {}
    for kind in ("OPEN", "CLOSED"):
        group = [it for it in items if str(it["answer_type"]).upper() == kind]
        if not group:
            continue
        col: dict[str, list] = {"ids": [str(it["id"]) for it in group]}
        for m in METRICS.values():
            if m.answer_type == kind and m.paired_test:
                col[m.name] = [_compact(it["scores"].get(m.item_key)) for it in group]
        out[kind.lower()] = col
    return out


def _compact(v: float | None) -> float | int | None:
    if v is None:
        return None
    return int(v) if v in (0.0, 1.0) else round(v, 6)


def _pct(values: list[float]) -> float | None:
    return round(100 * sum(values) / len(values), 4) if values else None


def _headline_of(scores: list[dict], answer_type: str) -> dict:
    out = {"n": len(scores)}
    for m in METRICS.values():
        if m.answer_type == answer_type and m.headline:
            out[m.name] = _pct([s[m.item_key] for s in scores])
    return out


def _breakdown(items: list[dict], field: str) -> dict:
    """Headline metrics per value of ``field`` (items without it are left out)."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for it in items:
        key = it.get(field)
        if key in (None, ""):
            continue
        groups.setdefault(str(key), {}).setdefault(str(it["answer_type"]).upper(), []).append(it["scores"])
    return {
        key: {t.lower(): _headline_of(scores, t) for t, scores in sorted(per.items())}
        for key, per in sorted(groups.items())
    }
