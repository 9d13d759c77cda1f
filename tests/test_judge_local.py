"""The local judge on the tiny random model: every record gets a verdict, via log-probs if need be."""

from __future__ import annotations

from collections import Counter

import pytest

from judge_data import make_records, read_jsonl

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("policy", ["swap", "paper"])
def test_local_judge_gives_every_record_a_verdict(tmp_path, tiny_model, policy):
    from conftest import run_stmed

    inp = tmp_path / "answers.jsonl"
    rows = make_records(inp, 5, seed=policy == "swap")
    r = run_stmed("judge", inp, "--backend", "local", "--judge-model", tiny_model, "--device", "cpu", "--policy", policy,
                  "--max-tokens", "8", "--batch-size", "4", "-o", tmp_path / "pairs.jsonl", env={"OPENAI_API_KEY": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    pairs, skipped = read_jsonl(tmp_path / "pairs.jsonl"), read_jsonl(tmp_path / "pairs.skipped.jsonl")
    assert not (tmp_path / "pairs.errors.jsonl").exists()
    assert Counter(x["id"] for x in pairs + skipped) == Counter(x["id"] for x in rows)
    if policy == "paper":
        assert len(pairs) == 5, "the paper rule never skips"
    for x in pairs + skipped:
        j = x["judge"]
        assert j["model"] == str(tiny_model) and j["backend"] == "local" and len(j["scores"]) == 2
        assert set(j["sources"]) <= {"local", "logprob"}
        if "logprob" in j["sources"]:
            assert "[log-prob fallback: p(1)=" in j["raw"][0] and abs(sum(j["scores"]) - 10) < 1e-3
    for s in skipped:
        assert s["skip"] in {"tie", "order-inconsistent", "below-margin"}
