"""`stmed eval --open-judge`: open answers graded by a judge model on a real OpenAI-compatible
server on 127.0.0.1, through the real command line and the real openai SDK."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_stmed
from openai_server import serve
from stmed.evaluation.open_judge import PROMPT_VERSION, parse_verdict

ITEMS = [  # (id, answer_type, question, answer, prediction)
    ("o1", "OPEN", "Which organ is shown?", "liver", "The liver."),
    ("o2", "OPEN", "Which lung is affected?", "left lung", "right lung"),
    ("o3", "OPEN", "What is enlarged?", "kidney", "the kidney"),
    ("c1", "CLOSED", "Is there a mass?", "yes", "yes"),
    ("c2", "CLOSED", "Is this normal?", "no", "yes"),
]
# the judge's scripted reply to each candidate answer
REPLIES = {"The liver.": "1\nSame organ.", "right lung": "0", "the kidney": "Verdict: 1 - same finding"}
_CANDIDATE = re.compile(r"\[Candidate answer\]\n(.*?)\n\n", re.S)


def _reply(replies: dict):
    def reply(prompt: str) -> str | None:
        m = _CANDIDATE.search(prompt)
        return replies.get(m.group(1)) if m else None

    return reply


@pytest.fixture
def bench(tmp_path) -> tuple[Path, Path]:
    data, preds = tmp_path / "bench.jsonl", tmp_path / "preds.jsonl"
    with open(data, "w") as d, open(preds, "w") as p:
        for id_, kind, q, a, pred in ITEMS:
            d.write(json.dumps({"id": id_, "image": "x.png", "question": q, "answer": a, "answer_type": kind}) + "\n")
            p.write(json.dumps({"question_id": id_, "text": pred}) + "\n")
    return data, preds


def _eval(tmp_path, srv, bench, *extra, out="items.jsonl", model="gpt-4o", env=None):
    data, preds = bench
    return run_stmed("eval", "--bench", "jsonl", "--data", data, "--predictions", preds, "-o", tmp_path / out,
                     "--summary", tmp_path / "summary.json", "--bootstrap", "50", "--open-judge", model,
                     "--open-judge-base-url", srv.base_url, "--cache", tmp_path / "cache.sqlite", *extra,
                     env={"STMED_HOME": str(tmp_path / "home"), **(env or {})})


def _read(tmp_path, out="items.jsonl") -> tuple[dict, dict]:
    items = {r["id"]: r for r in map(json.loads, (tmp_path / out).read_text().splitlines())}
    return items, json.loads((tmp_path / "summary.json").read_text())


def test_open_judge_scores_open_items_and_a_rerun_pays_nothing(tmp_path, bench):
    with serve(reply=_reply(REPLIES)) as srv:
        proc = _eval(tmp_path, srv, bench)
        assert proc.returncode == 0, proc.stderr
        assert srv.stats.chat == 3, "one request per open item, none for closed items"
        items, s = _read(tmp_path)
        assert {k: it["scores"].get("open_judge") for k, it in items.items()} == \
            {"o1": 1.0, "o2": 0.0, "o3": 1.0, "c1": None, "c2": None}
        assert items["o1"]["open_judge"] == {"model": "gpt-4o", "prompt_version": PROMPT_VERSION, "reply": "1\nSame organ."}
        assert "open_judge" not in items["c1"] and items["c2"]["scores"]["closed_hit"] == 0.0, "closed rules unchanged"
        m = s["metrics"]["open_judge"]
        assert m["value"] == round(100 * 2 / 3, 4) and m["n"] == 3 and len(m["ci95"]) == 2
        assert s["metrics"]["open_recall"]["value"] == round(100 * (1 + 0.5 + 1) / 3, 4), "recall beside it, as before"
        j = s["open_judge"]
        assert (j["model"], j["prompt_version"], j["judged"], j["requests"], j["cache_hits"], j["failures"]) == \
            ("gpt-4o", PROMPT_VERSION, 3, 3, 0, 0)
        pt, ct = j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"]
        assert pt > 0 and ct > 0 and j["cost_usd"] == round((pt * 2.50 + ct * 10.00) / 1e6, 6), "gpt-4o list price"
        assert f"open judge gpt-4o ({PROMPT_VERSION}): 3 open answers judged, 0 failed; 3 requests" in proc.stderr

        again = _eval(tmp_path, srv, bench, out="again.jsonl")
        assert again.returncode == 0, again.stderr
        assert srv.stats.chat == 3, "the rerun is answered from the cache: zero requests"
        items2, s2 = _read(tmp_path, "again.jsonl")
        assert s2["metrics"]["open_judge"] == m and items2["o3"]["scores"] == items["o3"]["scores"]
        j2 = s2["open_judge"]
        assert (j2["requests"], j2["cache_hits"], j2["cost_usd"]) == (0, 3, 0.0)
    r = run_stmed("report", tmp_path / "summary.json", "--markdown", "-")
    assert r.returncode == 0 and f"| open (judge) | {m['value']:.2f}" in r.stdout, r.stdout


def test_no_verdict_is_asked_again_then_counted_not_fatal(tmp_path, bench):
    with serve(reply=_reply({**REPLIES, "right lung": "I cannot tell without the image."})) as srv:
        proc = _eval(tmp_path, srv, bench, "--no-cache")
        assert proc.returncode == 0, proc.stderr
        assert srv.stats.chat == 4, "the unparseable reply is asked once more, and only once"
    items, s = _read(tmp_path)
    assert "open_judge" not in items["o2"]["scores"] and "recall" in items["o2"]["scores"]
    assert items["o2"]["open_judge"]["error"] and items["o2"]["open_judge"]["reply"].startswith("I cannot tell")
    assert s["metrics"]["open_judge"]["value"] == 100.0 and s["metrics"]["open_judge"]["n"] == 2
    j = s["open_judge"]
    assert (j["judged"], j["requests"], j["reasks"], j["failures"], j["failure_reasons"]) == \
        (2, 4, 1, 1, {"no verdict": 1})
    assert "1 failed" in proc.stderr


def test_server_errors_are_retried_and_reported(tmp_path, bench):
    with serve(reply=_reply(REPLIES), script=["500", "429"]) as srv:
        proc = _eval(tmp_path, srv, bench, "--open-judge-concurrency", "1")
        assert proc.returncode == 0, proc.stderr
        assert srv.stats.chat == 5 and srv.stats.faults == {"500": 1, "429": 1}
    assert "failed (HTTP 500); retrying" in proc.stderr and "failed (429 rate limited); retrying" in proc.stderr
    items, s = _read(tmp_path)
    assert [items[k]["scores"]["open_judge"] for k in ("o1", "o2", "o3")] == [1.0, 0.0, 1.0]
    assert s["open_judge"]["retries"] == 2 and s["open_judge"]["failures"] == 0


def test_a_missing_key_is_one_line_before_any_work(tmp_path, bench):
    data, preds = bench
    proc = run_stmed("eval", "--bench", "jsonl", "--data", data, "--predictions", preds, "-o", tmp_path / "items.jsonl",
                     "--open-judge", "gpt-4o", "--open-judge-api-key-env", "STMED_TEST_NO_SUCH_KEY",
                     env={"STMED_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["stmed: error: --open-judge: no API key: set STMED_TEST_NO_SUCH_KEY "
                                                "(or name another variable with --open-judge-api-key-env)"]
    assert not (tmp_path / "items.jsonl").exists()


def test_without_the_flag_no_judge_metric(tmp_path, bench):
    data, preds = bench
    proc = run_stmed("eval", "--bench", "jsonl", "--data", data, "--predictions", preds, "-o", tmp_path / "items.jsonl",
                     "--summary", tmp_path / "summary.json", "--bootstrap", "0", "-q")
    assert proc.returncode == 0, proc.stderr
    items, s = _read(tmp_path)
    assert "open_judge" not in s and "open_judge" not in s["metrics"]
    assert not any("open_judge" in it or "open_judge" in it["scores"] for it in items.values())


def test_summarize_keeps_only_this_judges_scores():
    from stmed.evaluation.open_judge import kept_score

    judge = {"model": "gpt-4o", "prompt_version": PROMPT_VERSION}
    line = {"answer_type": "OPEN", "scores": {"recall": 1.0, "open_judge": 0.0}, "open_judge": dict(judge)}
    assert kept_score(line, judge) == {"open_judge": 0.0}, "a recorded score is kept, never re-asked"
    assert kept_score(line, {**judge, "model": "gpt-4o-mini"}) == {}, "another judge's score is not this one's"
    assert kept_score(line, None) == {}, "without --open-judge the column is dropped"
    assert kept_score({**line, "answer_type": "CLOSED"}, judge) == {}


@pytest.mark.parametrize("text,verdict", [
    ("1", 1.0), ("0", 0.0), ("**1**\nSame organ.", 1.0), ("Verdict: 0", 0.0), ("1 - same finding", 1.0),
    ("0.", 0.0), ('{"verdict": 1, "reason": "same"}', 1.0), ('{"correct": false}', 0.0), ("Correct.", 1.0),
    ("Incorrect: wrong side", 0.0), ("\n\n  1\n", 1.0),
    ("10", None), ("0.5", None), ("I cannot tell.", None), ("", None), (None, None), ('{"reason": "x"}', None),
    ("The answer 1 is right", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_generated_answers_judged_and_a_resumed_run_keeps_or_redoes_scores(tmp_path):
    """Generation through --engine openai, then the same output resumed: a recorded judge score is
    kept (no request); a different judge model grades the resumed lines in the summary."""
    from conftest import BENCH_DATA

    rad = BENCH_DATA / "vqa_rad" / "VQA_RAD Dataset Public.json"
    out, summary = tmp_path / "items.jsonl", tmp_path / "summary.json"

    def ev(judge: str):
        return run_stmed("eval", "--engine", "openai", "--base-url", srv.base_url, "-m", "served", "--bench", "vqa-rad",
                         "--data", rad, "--limit", "12", "-o", out, "--summary", summary, "--bootstrap", "0",
                         "--open-judge", judge, "--open-judge-base-url", srv.base_url, "--cache", tmp_path / "c.sqlite",
                         env={"STMED_HOME": str(tmp_path / "home")})

    with serve(reply=lambda p: "1" if "[Candidate answer]" in p else None) as srv:
        assert (proc := ev("judge-a")).returncode == 0, proc.stderr
        items = [json.loads(line) for line in out.read_text().splitlines()]
        n_open = sum(it["answer_type"] == "OPEN" for it in items)
        assert 0 < n_open < 12 and srv.stats.chat == 12 + n_open, "12 answers, then one judge request per open item"
        assert all(("open_judge" in it["scores"]) == (it["answer_type"] == "OPEN") for it in items)
        first = json.loads(summary.read_text())
        assert first["metrics"]["open_judge"] == {**first["metrics"]["open_judge"], "value": 100.0, "n": n_open}

        assert (proc := ev("judge-a")).returncode == 0, proc.stderr
        assert srv.stats.chat == 12 + n_open, "resumed: every line is done and its judge score is kept"
        assert json.loads(summary.read_text())["metrics"]["open_judge"]["n"] == n_open

        assert (proc := ev("judge-b")).returncode == 0, proc.stderr
        assert srv.stats.chat == 12 + 2 * n_open, "another judge grades the resumed open lines once"
        s = json.loads(summary.read_text())
        assert s["open_judge"]["model"] == "judge-b" and s["open_judge"]["requests"] == n_open
        assert s["metrics"]["open_judge"]["n"] == n_open


def test_a_refused_key_stops_with_one_line_and_never_shows_the_key(tmp_path, bench):
    key = "sk-wrong-key-7f3e9a1c5d2b"
    with serve(reply=_reply(REPLIES), expect_key="sk-the-right-one-0000") as srv:
        proc = _eval(tmp_path, srv, bench, env={"OPENAI_API_KEY": key})
    assert proc.returncode == 2, proc.stderr
    assert "refused the request (HTTP 401)" in proc.stderr.strip().splitlines()[-1]
    assert key not in proc.stderr and key[3:-4] not in proc.stderr
