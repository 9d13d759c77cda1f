"""stmed judge against a real OpenAI-compatible server on 127.0.0.1, through the real openai SDK."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from judge_data import answer, make_records, read_jsonl
from openai_server import serve
from stmed.judge.cost import PRICES
from stmed.stages.judge import JudgeConfig, judge as judge_records
from stmed.stages.runner import Files
from stmed.records import read_records

CANARY = "sk-canary-7f3e9a1c5d2b4e6f8a0b"


@pytest.fixture(autouse=True)
def _key(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("STMED_HOME", str(tmp_path / "home"))  # never touch the user's real cache


def judge(tmp_path: Path, srv, inp: Path, *, out="pairs.jsonl", cache=True, **cfg) -> int:
    options = dict(backend="openai", judge_model="gpt-4o", base_url=srv.base_url, timeout=0.5,
                   backoff_initial=0.02, max_request_seconds=20)
    options.update(cfg)
    return judge_records(JudgeConfig(**options), read_records(inp), Files(str(tmp_path / out), quiet=True),
                         cache=tmp_path / "cache.sqlite" if cache else None, prices=dict(PRICES))


def outcomes(tmp_path: Path, out="pairs") -> tuple[list, list, list]:
    return (read_jsonl(tmp_path / f"{out}.jsonl"), read_jsonl(tmp_path / f"{out}.skipped.jsonl"),
            read_jsonl(tmp_path / f"{out}.errors.jsonl"))


def test_every_record_lands_exactly_once_under_30_percent_faults(tmp_path):
    inp = tmp_path / "answers.jsonl"
    rows = make_records(inp, 60)
    faults = {"429": 0.05, "500": 0.05, "503": 0.04, "slow": 0.04, "drop": 0.04, "badjson": 0.04, "garbage": 0.04}
    with serve(faults=faults, slow_seconds=1.0, seed=3) as srv:
        code = judge(tmp_path, srv, inp, concurrency=16)
        stats = srv.stats
    pairs, skipped, errors = outcomes(tmp_path)
    ids = [r["id"] for r in pairs + skipped + errors]
    assert Counter(ids) == Counter(r["id"] for r in rows), "a record was lost or written twice"
    assert sum(stats.faults.values()) >= 0.2 * stats.chat, f"too few faults injected: {stats.faults}"
    assert set(stats.faults) >= {"429", "500", "503", "slow", "drop", "badjson"}, stats.faults
    assert code == (1 if errors else 0)
    for e in errors:  # only a reply that stayed unparseable after its re-ask may fail here
        assert "no two scores" in e["error"] and e["raw"], e
    assert len(pairs) + len(skipped) >= 55, f"retries should have rescued nearly all: {len(errors)} failed"


def test_pairs_follow_the_scores_and_keep_every_field(tmp_path):
    inp = tmp_path / "answers.jsonl"
    rows = make_records(inp, 30)
    with serve() as srv:
        assert judge(tmp_path, srv, inp) == 0
    pairs, skipped, errors = outcomes(tmp_path)
    assert not errors
    by_id = {r["id"]: r for r in rows}
    for p in pairs:
        a, b = (x["text"] for x in by_id[p["id"]]["answers"])
        longer, shorter = (a, b) if len(a.split()) > len(b.split()) else (b, a)
        assert (p["chosen"], p["rejected"]) == (longer, shorter), "the longer answer scores higher on this server"
        assert p["margin"] >= 1 and p["source"] == "test" and p["answers"] == by_id[p["id"]]["answers"]
        j = p["judge"]
        assert j["prompt_version"] == "stmed-judge-v1" and j["policy"] == "swap" and j["model"] == "gpt-4o"
        assert j["scores"] == j["swapped_scores"][::-1] and len(j["raw"]) == 2
    for s in skipped:
        a, b = (x["text"] for x in by_id[s["id"]]["answers"])
        assert s["skip"] == "tie" and len(a.split()) == len(b.split())
    meta = json.loads((tmp_path / "pairs.meta.json").read_text())
    assert meta["stats"]["requests"] == 60 and meta["cost_usd"] > 0 and meta["judge"]["prompt_version"]


def test_rerun_sends_zero_requests(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 20)
    with serve() as srv:
        judge(tmp_path, srv, inp)
        first = srv.stats.chat
        before = outcomes(tmp_path)
        judge(tmp_path, srv, inp)  # resume: everything is already in pairs or skipped
        assert srv.stats.chat == first
        judge(tmp_path, srv, inp, out="again.jsonl")  # a fresh output: every reply comes from the cache
        assert srv.stats.chat == first, "the cache should have answered every request"
    assert outcomes(tmp_path) == before
    again = {p["id"]: p for p in read_jsonl(tmp_path / "again.jsonl")}
    assert {p["id"]: (p["chosen"], p["margin"]) for p in before[0]} == {k: (p["chosen"], p["margin"]) for k, p in again.items()}


@pytest.mark.parametrize("concurrency,low,high", [(16, 8, 16), (1, 1, 1)])
def test_concurrency_reaches_the_server(tmp_path, concurrency, low, high):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 30 if concurrency > 1 else 4)
    with serve(delay=0.2) as srv:
        judge(tmp_path, srv, inp, concurrency=concurrency, cache=False)
    assert low <= srv.stats.max_in_flight <= high, f"max in flight {srv.stats.max_in_flight}"


def test_retry_after_is_honoured(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 1)
    with serve(script=["429"], retry_after="1") as srv:
        assert judge(tmp_path, srv, inp, concurrency=1, policy="paper") == 0
        (t0, s0), (t1, s1) = srv.stats.times[:2]
    assert (s0, s1) == (429, 200) and t1 - t0 >= 0.95, f"retried {t1 - t0:.2f}s after a Retry-After of 1s"


def test_unparseable_reply_is_asked_once_more_then_reported(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 1)
    with serve(script=["garbage"]) as srv:
        assert judge(tmp_path, srv, inp, policy="paper", out="once.jsonl") == 0
        assert srv.stats.chat == 2 and len(read_jsonl(tmp_path / "once.jsonl")) == 1
    with serve(script=["garbage", "garbage"]) as srv:
        assert judge(tmp_path, srv, inp, policy="paper", out="twice.jsonl", cache=False) == 1
        assert srv.stats.chat == 2
    pairs, skipped, errors = outcomes(tmp_path, "twice")
    assert not pairs and not skipped and errors[0]["raw"] == ["I am unable to compare these answers."]
    assert errors[0]["where"].endswith("answers.jsonl:1")


def test_bad_records_go_to_the_errors_file_and_the_rest_is_judged(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 3)
    extra = [{"id": "one", "image": "x.jpg", "question": "q?", "answers": ["only one"]},
             {"id": "noimg", "image": "missing.jpg", "question": "q?", "answers": ["a b", "c"]},
             {"id": "same", "image": str(Path(read_jsonl(inp)[0]["image"])), "question": "q?", "answers": ["x y", "x y"]}]
    with open(inp, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    with serve() as srv:
        assert judge(tmp_path, srv, inp) == 1
        assert srv.stats.chat == 6, "identical answers are skipped without paying for a request"
    pairs, skipped, errors = outcomes(tmp_path)
    errs = {e["id"]: e["error"] for e in errors}
    assert "needs at least 2 answers" in errs["one"] and "answers.jsonl:4" in errs["one"]
    assert "image not found" in errs["noimg"] and "answers.jsonl:5" in errs["noimg"]
    assert {s["id"]: s["skip"] for s in skipped}.get("same") == "identical-answers"


def test_more_than_two_answers_pairs_best_with_worst(tmp_path):
    inp = tmp_path / "answers.jsonl"
    inp.write_text(json.dumps({"id": "m", "image": str(Path(make_records(tmp_path / "x.jsonl", 1)[0]["image"])),
                               "question": "What is it?", "answers": [answer(5), answer(9), answer(2), answer(6)]}) + "\n")
    with serve() as srv:
        assert judge(tmp_path, srv, inp) == 0
        assert srv.stats.chat == 12  # 6 pairs x 2 orders
    (pair,), _, _ = outcomes(tmp_path)
    assert (pair["chosen"], pair["rejected"]) == (answer(9), answer(2)) and pair["margin"] == 7
    assert len(pair["judge"]["comparisons"]) == 12 and pair["judge"]["pair"] == [2, 3]


def test_canary_key_never_leaks(tmp_path):
    from conftest import run_stmed

    inp = tmp_path / "answers.jsonl"
    make_records(inp, 20)
    faults = {"429": 0.1, "500": 0.1, "garbage": 0.15}
    with serve(faults=faults, expect_key=CANARY, seed=1) as srv:
        args = ["judge", inp, "--base-url", srv.base_url, "-o", tmp_path / "out.jsonl", "--cache", tmp_path / "c.sqlite",
                "--timeout", "2", "--export", "stllava"]
        ok = run_stmed(*args, env={"OPENAI_API_KEY": CANARY})
        bad = run_stmed(*args[:-2], "-o", tmp_path / "bad.jsonl", env={"OPENAI_API_KEY": CANARY[:-4] + "0000"})
        assert f"Bearer {CANARY}" in srv.stats.auth_headers, "the key must really be sent"
    assert ok.returncode in (0, 1) and "retrying" in ok.stderr, ok.stderr[-2000:]
    assert bad.returncode == 2 and "refused the request (HTTP 401)" in bad.stderr and "Traceback" not in bad.stderr
    assert (tmp_path / "out.errors.jsonl").exists(), "garbage replies should have produced some errors"
    blobs = [ok.stdout, ok.stderr, bad.stdout, bad.stderr] + [p.read_bytes().decode("latin-1") for p in tmp_path.glob("*") if p.is_file()]
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        blobs.append(json.dumps(db.execute("SELECT * FROM replies").fetchall()))
    for fragment in (CANARY, CANARY[:12], CANARY[-8:]):
        assert not any(fragment in b for b in blobs), f"{fragment!r} leaked"


def test_missing_key_and_bad_flags_stop_before_any_output(tmp_path, monkeypatch):
    from conftest import run_stmed

    inp = tmp_path / "answers.jsonl"
    make_records(inp, 2)
    env = {"OPENAI_API_KEY": ""}
    r = run_stmed("judge", inp, "-o", tmp_path / "o.jsonl", env=env)
    assert r.returncode == 2 and "no API key: set OPENAI_API_KEY" in r.stderr and not (tmp_path / "o.jsonl").exists()
    r = run_stmed("judge", inp, "--policy", "best", "-o", tmp_path / "o.jsonl", env=env)
    assert r.returncode == 2 and "--policy 'best'" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{oops\n')
    r = run_stmed("judge", tmp_path / "bad.jsonl", "--base-url", "http://127.0.0.1:9/v1", env=env)
    assert r.returncode == 2 and "bad.jsonl:2: not valid JSON" in r.stderr


def test_cache_key_depends_on_the_server_but_never_on_the_key():
    from stmed.api import ChatRequest

    req = ChatRequest([{"role": "user", "content": "Which answer is better?"}], image_sha="ab" * 32)
    a = req.cache_key("llava-med", "http://10.0.0.1:8000/v1")
    b = req.cache_key("llava-med", "http://10.0.0.2:8000/v1")
    assert a != b, "two servers serving one model name must not share cached verdicts"
    assert req.cache_key("llava-med", "http://10.0.0.1:8000/v1/") == a, "a trailing slash is the same server"
    assert req.cache_key("gpt-4o") == req.cache_key("gpt-4o", None)


def test_a_new_server_does_not_reuse_cached_verdicts(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 3)
    with serve() as first, serve() as second:  # same model name, two servers (two ports), one cache file
        assert judge(tmp_path, first, inp, out="a.jsonl") == 0
        assert judge(tmp_path, second, inp, out="b.jsonl") == 0
        assert second.stats.chat == 6, "verdicts cached from the first server were reused"
