"""Reading judge replies and the two pair policies, on hand-made cases."""

from __future__ import annotations

import pytest

from stmed.judge.prompt import JudgePrompt
from stmed.judge.verdict import Judgement, decide, orders, parse_scores


@pytest.mark.parametrize("text,want", [
    ("8 6\nAnswer 1 is more detailed.", (8, 6)),
    ("7.5 9\n", (7.5, 9)),
    ("8/10 6/10\nreason", (8, 6)),
    ('{"score_1": 9, "score_2": 4, "reason": "x"}', (9, 4)),
    ('```json\n{"Answer 1": "7", "Answer 2": "8"}\n```', (7, 8)),
    ('{"scores": [3, 5]}', (3, 5)),
    ("Score for Answer 1: 6\nScore for Answer 2: 9\nBecause...", (6, 9)),
    ("Answer 1: 8, Answer 2: 3", (8, 3)),
    ("\n\n 5 5 \n tie", (5, 5)),
])
def test_parse_scores(text, want):
    assert parse_scores(text) == want


@pytest.mark.parametrize("text", ["", "I cannot compare these answers.", "8\nonly one score", "11 3", "1 2 3",
                                  '{"score_1": "high", "score_2": 3}'])
def test_unparseable(text):
    assert parse_scores(text) is None


def j(shown, scores):
    return Judgement(tuple(shown), tuple(scores), f"{scores[0]} {scores[1]}")


def test_paper_policy_is_the_original_rule():
    assert orders(2, "paper") == [(0, 1)]
    v = decide([j((0, 1), (8, 6))], 2, "paper", 1)
    assert (v.kind, v.chosen, v.rejected, v.margin) == ("pair", 0, 1, 2)
    v = decide([j((0, 1), (7, 7))], 2, "paper", 1)
    assert (v.kind, v.chosen, v.rejected, v.margin) == ("pair", 1, 0, 0), "ties go to answer 2, as in the paper"
    v = decide([j((0, 1), (6, 6.5))], 2, "paper", 1)
    assert (v.kind, v.chosen) == ("pair", 1), "paper ignores --min-margin"


def test_swap_policy_keeps_only_agreeing_orders():
    assert orders(2, "swap") == [(0, 1), (1, 0)]
    v = decide([j((0, 1), (8, 5)), j((1, 0), (6, 9))], 2, "swap", 1)
    assert (v.kind, v.chosen, v.rejected, v.margin) == ("pair", 0, 1, 3)
    assert v.scores == [8, 5] and v.swapped_scores == [6, 9]
    # position bias: whichever answer is shown first wins, so the orders disagree
    v = decide([j((0, 1), (8, 6)), j((1, 0), (8, 6))], 2, "swap", 1)
    assert (v.kind, v.reason) == ("skipped", "order-inconsistent")
    v = decide([j((0, 1), (7, 7)), j((1, 0), (7, 7))], 2, "swap", 1)
    assert (v.kind, v.reason) == ("skipped", "tie")
    v = decide([j((0, 1), (7, 7)), j((1, 0), (6, 8))], 2, "swap", 0)
    assert (v.kind, v.reason) == ("skipped", "order-inconsistent"), "a tie in one order is not agreement"
    v = decide([j((0, 1), (7, 6.5)), j((1, 0), (6, 7))], 2, "swap", 1)
    assert (v.kind, v.reason, v.chosen, v.margin) == ("skipped", "below-margin", 0, 0.75)
    v = decide([j((0, 1), (7, 6.5)), j((1, 0), (6, 7))], 2, "swap", 0.5)
    assert (v.kind, v.chosen) == ("pair", 0)


def test_three_answers_best_against_worst():
    scores = {0: 5, 1: 9, 2: 2}
    js = [j((a, b), (scores[a], scores[b])) for a, b in orders(3, "swap")]
    v = decide(js, 3, "swap", 1)
    assert (v.kind, v.chosen, v.rejected, v.margin, v.pair) == ("pair", 1, 2, 7, (1, 2)) and len(v.comparisons) == 6
    v = decide([j((a, b), (5, 5)) for a, b in orders(3, "swap")], 3, "swap", 1)
    assert (v.kind, v.reason) == ("skipped", "tie")


def test_prompt_layout_and_template_file(tmp_path):
    text = JudgePrompt().render("Is there a fracture?", "Yes, distal radius.", "No.")
    for marker in ("[Question]", "[Answer 1]", "[End of Answer 1]", "[Answer 2]", "[End of Answer 2]", "[System]"):
        assert marker in text
    assert text.index("[Answer 1]") < text.index("Yes, distal radius.") < text.index("[End of Answer 1]") < text.index("No.")
    assert "first line" in text and "JSON" in JudgePrompt().render("q", "a", "b", mode="json")
    f = tmp_path / "mine.txt"
    f.write_text("Q: {question}\nA: {answer_1}\nB: {answer_2}\nScores?")
    p = JudgePrompt.from_file(f)
    assert p.version.startswith("file:mine.txt@") and p.render("q", "a", "b").startswith("Q: q\nA: a")
    f.write_text("Q: {question} {answer_1}")
    from stmed.errors import InputError

    with pytest.raises(InputError, match=r"mine.txt:1: .*\{answer_2\}"):
        JudgePrompt.from_file(f)


def test_stllava_export(tmp_path):
    import json

    from stmed.judge.export import export_stllava

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "image": "x.jpg", "question": "Is it normal?", "chosen": "No, a mass.",
                                 "rejected": "Yes.", "margin": 3, "judge": {}}) + "\n")
    export_stllava(pairs, tmp_path / "out.json")
    (row,) = json.loads((tmp_path / "out.json").read_text())
    assert row["image"] == "x.jpg" and row["chosen_conversations"][0] == {"from": "human", "value": "<image>\nIs it normal?"}
    assert row["chosen_conversations"][1]["value"] == "No, a mass." and row["reject_conversations"][1]["value"] == "Yes."
