"""Reading the judge's reply, and turning scores into a preference pair (or a reasoned skip).

Pair policies:
- ``swap`` (default): every pair of answers is judged in both orders. The two orders must prefer
  the same answer, and the averaged score gap must be at least ``min_margin``; otherwise the
  record is skipped as ``tie``, ``order-inconsistent`` or ``below-margin``. This removes the
  position bias of a single-order judge.
- ``paper``: STLLaVA-Med's rule exactly: one order, score 1 > score 2 picks answer 1, anything
  else (ties included) picks answer 2. Never skips.

With more than two answers every pair is judged; the answer with the best mean score is paired
with the one with the worst, and the policy is applied to their own comparison.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import combinations

POLICIES = ("swap", "paper")
_NUM = r"(10(?:\.0+)?|\d(?:\.\d+)?)"
_LABELLED = [re.compile(rf"(?:answer|score|assistant|response)[\s_#-]*{k}\b\W{{0,12}}?{_NUM}\b", re.I) for k in (1, 2)]
_JSON_KEYS = [("score_1", "score_2"), ("score1", "score2"), ("answer_1", "answer_2"), ("answer1", "answer2"),
              ("Answer 1", "Answer 2"), ("1", "2")]


def _score(value) -> float | None:
    try:
        x = float(str(value).split("/")[0])
    except (TypeError, ValueError):
        return None
    return x if 0 <= x <= 10 else None


def _from_json(text: str) -> tuple[float, float] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("scores"), list) and len(obj["scores"]) == 2:
        pair = tuple(_score(v) for v in obj["scores"])
        return pair if None not in pair else None  # type: ignore[return-value]
    lower = {str(k).lower(): v for k, v in obj.items()}
    for a, b in _JSON_KEYS:
        if a.lower() in lower and b.lower() in lower:
            pair = (_score(lower[a.lower()]), _score(lower[b.lower()]))
            return pair if None not in pair else None  # type: ignore[return-value]
    return None


def parse_scores(text: str) -> tuple[float, float] | None:
    """The two scores from a judge reply: JSON, 'Answer 1: 8 ... Answer 2: 6', or '8 6' on the first line."""
    if not text or not text.strip():
        return None
    found = _from_json(text)
    if found is not None:
        return found
    labelled = [p.search(text) for p in _LABELLED]
    if all(labelled):
        pair = tuple(_score(m.group(1)) for m in labelled)  # type: ignore[union-attr]
        if None not in pair:
            return pair  # type: ignore[return-value]
    first = next(line for line in text.strip().splitlines() if line.strip())
    first = re.sub(r"\s*(/\s*10|out of 10)\b", "", first, flags=re.I)
    nums = re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", first)
    if len(nums) == 2:
        pair = (_score(nums[0]), _score(nums[1]))
        if None not in pair:
            return pair  # type: ignore[return-value]
    return None


@dataclass
class Judgement:
    """One judged order: answers ``shown[0]`` and ``shown[1]`` (input indices) and their scores."""

    shown: tuple[int, int]
    scores: tuple[float, float]
    raw: str
    source: str = "api"  # api | cache | logprob

    def score_of(self, i: int) -> float:
        return self.scores[self.shown.index(i)]

    def winner(self) -> int | None:
        a, b = self.scores
        return self.shown[0] if a > b else self.shown[1] if b > a else None


@dataclass
class Verdict:
    kind: str  # pair | skipped
    chosen: int | None = None
    rejected: int | None = None
    margin: float = 0.0
    reason: str | None = None  # why skipped: tie | order-inconsistent | below-margin | identical-answers
    pair: tuple[int, int] | None = None
    scores: list[float] | None = None  # the pair shown in input order
    swapped_scores: list[float] | None = None  # the pair shown the other way round, as shown
    raw: list[str] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)  # every judged order, for >2 answers


def orders(n_answers: int, policy: str) -> list[tuple[int, int]]:
    """The (first shown, second shown) orders to judge."""
    out = []
    for i, j in combinations(range(n_answers), 2):
        out.append((i, j))
        if policy == "swap":
            out.append((j, i))
    return out


def decide(judgements: list[Judgement], n_answers: int, policy: str, min_margin: float) -> Verdict:
    by_order = {j.shown: j for j in judgements}
    missing = [o for o in orders(n_answers, policy) if o not in by_order]
    assert not missing, f"decide() needs every order judged; missing {missing}"
    means = {}
    for i in range(n_answers):
        mine = [j.score_of(i) for j in judgements if i in j.shown]
        means[i] = sum(mine) / len(mine)
    if n_answers == 2:
        a, b = 0, 1
    else:  # best against worst by mean score; ties broken by input order so reruns agree
        a = max(range(n_answers), key=lambda i: (means[i], -i))
        b = min((i for i in range(n_answers) if i != a), key=lambda i: (means[i], i))
        a, b = min(a, b), max(a, b)
    forward, backward = by_order[(a, b)], by_order.get((b, a))
    comparisons = [{"shown": list(j.shown), "scores": list(j.scores), "source": j.source} for j in judgements] if n_answers > 2 else []
    base = dict(pair=(a, b), scores=list(forward.scores), swapped_scores=list(backward.scores) if backward else None,
                raw=[forward.raw] + ([backward.raw] if backward else []), comparisons=comparisons)
    if policy == "paper":
        s1, s2 = forward.scores
        chosen, rejected = (a, b) if s1 > s2 else (b, a)  # the original rule: ties go to the second answer
        return Verdict("pair", chosen, rejected, margin=abs(s1 - s2), **base)
    wins = {forward.winner(), backward.winner()}
    if wins == {None}:
        return Verdict("skipped", reason="tie", **base)
    if len(wins) > 1:
        return Verdict("skipped", reason="order-inconsistent", **base)
    winner = wins.pop()
    loser = b if winner == a else a
    margin = (forward.score_of(winner) + backward.score_of(winner) - forward.score_of(loser) - backward.score_of(loser)) / 2
    if margin < min_margin:
        return Verdict("skipped", winner, loser, margin=margin, reason="below-margin", **base)
    return Verdict("pair", winner, loser, margin=margin, **base)
