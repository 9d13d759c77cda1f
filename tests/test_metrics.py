"""Golden tests for the LLaVA-Med v1.0-compatible scorer, each case worked by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from stmed.evaluation import metrics as M
from stmed.evaluation.metrics import bleu, closed_hit, closed_strict, normalize, score_item, token_prf


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("None", "0"),  # number words: the answer "None" becomes "0"
    ("zero", "0"),
    ("Two", "2"),
    ("ten", "10"),
    ("eleven", "eleven"),  # only none, zero, one..ten are mapped
    ("The left lung.", "left lung"),  # article dropped, final period removed
    ("an apple", "apple"),
    ("A", ""),
    ("CT/MRI", "ct mri"),  # a slash inside a word becomes a space
    ("CT / MRI", "ct mri"),  # a slash touching a space is deleted
    ("T2-weighted", "t2 weighted"),
    ("3.5 cm", "3.5 cm"),  # a period followed by a digit stays: decimals survive
    ("2.5.", "2.5"),
    ("1,000 mm (approx.)", "1000 mm approx"),  # digit,digit anywhere: every mark is deleted
    ("1,2", "12"),  # ... even where that glues numbers together
    ("left, right", "left right"),
    ("dont", "don't"),  # VQA contractions are restored
    ("Isnt it?", "isn't it"),
    ("Im", "im"),  # the table's capitalised keys never match lower-cased words
    ("", ""),
    ("  spaced   out  ", "spaced out"),
])
def test_normalize_golden(text, expected):
    assert normalize(text) == expected, f"normalize({text!r})"


def test_only_the_first_32_periods_go():
    # LLaVA-Med passes re.UNICODE (32) where re.sub takes count: later periods survive.
    text = "w." * 34
    assert normalize(text) == "w" * 33 + ".w."


def test_normalize_twice_matches_two_passes():
    text = "none." * 33  # the 33rd "none." keeps its period on pass one, maps to 0 on pass two
    assert M.normalize_twice(text) == normalize(normalize(text))
    assert M.normalize_twice(text) != normalize(text), "the second pass must matter here"
    assert M.normalize_twice("left lung") == "left lung"


@pytest.mark.parametrize("pred, answer, hit", [
    ("not", "no", True),  # "no" inside "not": a hit
    ("it looks normal", "no", True),  # and inside "normal"
    ("yes, it is normal", "no", True),  # both answers hit a hedge
    ("yes, it is normal", "yes", True),
    ("there is a nodule", "yes", False),  # "no" (in nodule) said, but not "yes"
    ("there is a nodule", "no", True),
    ("Left", "left", False),  # a correct non-yes/no answer without yes/no is a miss
    ("", "yes", False),  # empty prediction
    ("Yes.", "yes", True),
])
def test_closed_hit_golden(pred, answer, hit):
    assert closed_hit(normalize(pred), normalize(answer)) is hit


@pytest.mark.parametrize("pred, answer, ok", [
    ("Yes.", "yes", True),
    ("yes and no", "yes", False),  # both words said
    ("not", "no", False),  # the word no is never said
    ("No, there is none.", "no", True),
    ("Left", "left", True),  # non-yes/no closed answer: exact match
    ("the left side", "left", False),
    ("", "no", False),
])
def test_closed_strict_golden(pred, answer, ok):
    assert closed_strict(normalize(pred), normalize(answer)) is ok


def test_token_prf_golden():
    assert token_prf("left lung", "lung") == pytest.approx((1.0, 0.5, 2 / 3))
    # answer "right lower lobe", prediction "lower lobe of right lung": tp 3, fp 2, fn 0
    assert token_prf("lower lobe of right lung", "right lower lobe") == pytest.approx((1.0, 0.6, 0.75))
    # the prediction's counts go to tp: "lung lung" against "left lung" is tp 2, fp 0, fn 1
    assert token_prf("lung lung", "left lung") == pytest.approx((2 / 3, 1.0, 0.8))
    assert token_prf("", "lung") == (0.0, 0.0, 0.0)
    assert token_prf("lung", "") == (0.0, 0.0, 0.0)
    assert token_prf("heart", "lung") == (0.0, 0.0, 0.0)


def test_bleu_golden():
    assert bleu("w x y z", "w x y q", 1) == pytest.approx(0.75)
    assert bleu("w x y z", "w x y q", 2) == pytest.approx(math.sqrt(0.75 * 2 / 3))
    assert bleu("w x", "w x y z", 1) == pytest.approx(math.exp(1 - 4 / 2))  # brevity penalty
    assert bleu("w x", "w x", 3) == 0.0  # shorter than n
    assert bleu("", "w", 1) == 0.0
    assert bleu("w x w x", "w x", 1) == pytest.approx(0.5)  # clipped counts


def test_score_item_open_and_closed():
    s = score_item("Zero", "None", "OPEN")
    assert s["recall"] == 1.0 and s["exact"] == 1.0, "None and zero both normalise to 0"
    s = score_item("The lesion is in the left lung.", "left lung", "OPEN")
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(2 / 5) and s["exact"] == 0.0
    s = score_item("yes", "no", "CLOSED")
    assert s["closed_hit"] == 0.0 and s["closed_as_shipped"] is None, "a wrong yes/no leaves the shipped denominator"
    s = score_item("I am unsure", "yes", "closed")
    assert s["closed_hit"] == 0.0 and s["closed_as_shipped"] == 0.0
    assert score_item("I cannot tell", "yes", "CLOSED")["closed_as_shipped"] is None, "'cannot' says 'no'"
    assert score_item("", "yes", "CLOSED")["closed_hit"] == 0.0


def _items():
    return [
        {"answer_type": "OPEN", "question_type": "POS", "scores": score_item("left lung", "lung", "OPEN")},
        {"answer_type": "OPEN", "question_type": "POS", "scores": score_item("heart", "lung", "OPEN")},
        {"answer_type": "CLOSED", "question_type": "PRES", "scores": score_item("yes", "yes", "CLOSED")},
        {"answer_type": "CLOSED", "question_type": "PRES", "scores": score_item("no", "yes", "CLOSED")},
        {"answer_type": "CLOSED", "scores": score_item("maybe", "yes", "CLOSED")},
    ]


def test_aggregate_headline_numbers_and_rules():
    out = M.aggregate(_items(), resamples=200, seed=1)
    m = out["metrics"]
    assert m["open_recall"]["value"] == 50.0 and m["open_recall"]["n"] == 2
    assert m["open_f1"]["value"] == pytest.approx(100 * (2 / 3) / 2, abs=1e-3)
    assert m["closed_accuracy"]["value"] == pytest.approx(100 / 3, abs=1e-3)
    assert m["closed_accuracy_as_shipped"]["value"] == 50.0 and m["closed_accuracy_as_shipped"]["n"] == 2
    assert out["counts"] == {"total": 5, "open": 2, "closed": 3}
    for name, entry in m.items():
        assert entry["rule"] and isinstance(entry["higher_is_better"], bool), f"{name} must say its rule"
        lo, hi = entry["ci95"]
        assert lo <= entry["value"] <= hi, f"{name}: CI must contain the value"
    assert out["by_question_type"]["POS"]["open"]["open_recall"] == 50.0
    assert out["by_question_type"]["PRES"]["closed"]["n"] == 2
    assert out["by_answer_type"]["CLOSED"]["closed_accuracy"] == pytest.approx(100 / 3, abs=1e-3)


def test_bootstrap_is_seeded():
    values = [0.0, 1.0] * 50
    assert M.bootstrap_ci(values, seed=3) == M.bootstrap_ci(values, seed=3)
    assert M.bootstrap_ci(values, seed=3) != M.bootstrap_ci(values, seed=4)
    lo, hi = M.bootstrap_ci(values, seed=3)
    assert 0.35 < lo < 0.5 < hi < 0.65, "the CI of a 50% mean over 100 items is about +-10 points"


def test_registry_declares_direction_and_suggests():
    assert all(isinstance(m.higher_is_better, bool) for m in M.METRICS.values())
    from stmed.errors import did_you_mean

    assert "did you mean 'open_recall'" in did_you_mean("open_recal", M.METRICS)
    with pytest.raises(AssertionError):
        M.register(M.METRICS["open_f1"])


def test_metrics_import_without_torch_or_numpy():
    code = "import sys, stmed.evaluation.metrics; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
