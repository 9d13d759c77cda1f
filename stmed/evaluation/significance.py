"""Is a difference between two runs more than noise? Paired tests on the items both runs scored.

The papers' gaps between variants are often a point or two, within the bootstrap CIs of
either number; but two runs on the same questions are paired, and a paired test sees far
smaller differences than two overlapping CIs do. Graded scores (open recall and F1, in [0, 1]
per item) get a paired bootstrap; hits and misses (closed accuracy) get McNemar's exact test.
Both are plain Python and numpy.
"""

from __future__ import annotations

import math

from stmed.evaluation.metrics import METRICS

ALPHA = 0.05  # a difference is marked significant when p < ALPHA (uncorrected for multiple comparisons)
TESTS = {"bootstrap": "paired bootstrap", "mcnemar": "McNemar exact"}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p for b items only the first run got right and c only the second.

    With no difference each discordant item favours either run with probability 1/2, so
    min(b, c) is a Binomial(b + c, 1/2) tail; the p-value doubles that tail, capped at 1.
    Concordant items carry no information and do not enter. Exact in integers, then divided.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap(a: list[float], b: list[float], *, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of b - a over paired items, its percentile CI, and a two-sided bootstrap p-value.

    Each resample draws n items with replacement (one RNG seeded by ``seed``) and takes the
    mean difference d*. The p-value tests "no difference" by centring that distribution on
    zero: p = (1 + #{|d* - d| >= |d|}) / (resamples + 1), so identical runs give p = 1 and
    the smallest p is 1 / (resamples + 1).
    """
    import numpy as np

    assert len(a) == len(b) and len(a) > 0, "paired_bootstrap needs two equally long, non-empty lists"
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = d.size
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 5_000_000 // n)  # bounded memory: resamples drawn in slabs of at most 5M indices
    for start in range(0, resamples, step):
        k = min(resamples, start + step) - start
        means[start:start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    # the tolerance keeps float noise in a mean of equal values from counting as extreme
    extreme = int(np.count_nonzero(np.abs(means - observed) >= abs(observed) - 1e-12))
    return {"diff": observed, "ci95": [float(lo), float(hi)], "p": (extreme + 1) / (resamples + 1)}


# ---------------------------------------------------------------- pairing two summaries


def bench_key(summary: dict) -> tuple:
    b = summary.get("benchmark", {})
    return (b.get("bench"), b.get("split"), b.get("lang"))


def matched(base: dict, run: dict, metric: str) -> tuple[list, list]:
    """The two runs' per-item scores of ``metric`` on the items both scored (by id), in the baseline's order."""
    kind = METRICS[metric].answer_type.lower()
    a, b = base["per_item"].get(kind, {}), run["per_item"].get(kind, {})
    theirs = dict(zip(b.get("ids", []), b.get(metric, [])))
    pairs = [(x, theirs[i]) for i, x in zip(a.get("ids", []), a.get(metric, []))
             if i in theirs and x is not None and theirs[i] is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def compare(base: dict, run: dict, metric: str, *, resamples: int = 1000, seed: int = 0) -> dict | None:
    """``run`` minus ``base`` on ``metric`` over their shared items (x100), with the metric's test; None if none shared."""
    a, b = matched(base, run, metric)
    if not a:
        return None
    test = METRICS[metric].paired_test
    boot = paired_bootstrap(a, b, resamples=resamples, seed=seed)
    out = {"metric": metric, "n": len(a), "diff": round(100 * boot["diff"], 4),
           "ci95": [round(100 * x, 4) for x in boot["ci95"]], "test": TESTS[test]}
    if test == "mcnemar":
        only_base = sum(1 for x, y in zip(a, b) if x and not y)
        only_run = sum(1 for x, y in zip(a, b) if y and not x)
        out.update(p=mcnemar_exact(only_base, only_run), discordant={"only_baseline": only_base, "only_run": only_run})
    else:
        out["p"] = boot["p"]
    out["significant"] = out["p"] < ALPHA
    return out


def compare_all(summaries: list[dict], *, resamples: int = 1000, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Every run against the first run on its benchmark, on each tested headline metric.

    Returns (comparisons, notes): each comparison names its ``column`` (the run's position),
    the baseline and run names, the benchmark, the matched item count and the test's result;
    the notes say which pairs could not be compared and where not every item matched.
    """
    tested = [m.name for m in METRICS.values() if m.headline and m.paired_test]
    comparisons, notes, baselines = [], [], {}
    for i, s in enumerate(summaries):
        key = bench_key(s)
        if key not in baselines:
            baselines[key] = i
            continue
        base = summaries[baselines[key]]
        where = f"{s['name']} vs {base['name']} on {key[0]} {key[1] or ''}".rstrip()
        missing = [x["name"] for x in (base, s) if not isinstance(x.get("per_item"), dict)]
        if missing:
            notes.append(f"{where}: not tested, {' and '.join(map(str, missing))} has no per-item scores "
                         "(a summary from an older stmed: score its predictions again with stmed eval)")
            continue
        shared = set()
        for kind in ("open", "closed"):
            shared |= set(base["per_item"].get(kind, {}).get("ids", [])) & set(s["per_item"].get(kind, {}).get("ids", []))
        sizes = [sum(len(x["per_item"].get(k, {}).get("ids", [])) for k in ("open", "closed")) for x in (base, s)]
        if len(shared) < max(sizes):
            notes.append(f"{where}: {len(shared)} items matched by id ({base['name']} has {sizes[0]}, "
                         f"{s['name']} {sizes[1]}); only those are compared")
        for metric in tested:
            result = compare(base, s, metric, resamples=resamples, seed=seed)
            if result is not None:
                comparisons.append({"column": i, "run": s["name"], "baseline": base["name"], "benchmark": key[0],
                                    "split": key[1], "lang": key[2], **result})
    return comparisons, notes
