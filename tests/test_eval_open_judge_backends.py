"""The open judge on every judge backend, and the judge core's own call (what a reward model
makes): batch through the real loopback server's files and batches endpoints, local on the tiny
model, the core's ask_all against the real server through the real openai SDK."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_IMAGES, run_stmed
from openai_server import serve
from test_eval_open_judge import REPLIES, _eval, _read, _reply, bench  # noqa: F401 - bench is a fixture
from stmed.evaluation.open_judge import PROMPT_VERSION, parse_verdict


def test_batch_backend_grades_in_one_round_of_files_at_half_price_and_a_rerun_pays_nothing(tmp_path, bench):
    with serve(reply=_reply(REPLIES)) as srv:
        proc = _eval(tmp_path, srv, bench, "--open-judge-backend", "batch", "--open-judge-poll-interval", "0.05")
        assert proc.returncode == 0, proc.stderr
        assert srv.stats.chat == 0 and len(srv.batches) == 1, "one batch for the run, no chat request"
        items, s = _read(tmp_path)
        assert {k: it["scores"].get("open_judge") for k, it in items.items()} == \
            {"o1": 1.0, "o2": 0.0, "o3": 1.0, "c1": None, "c2": None}
        assert items["o1"]["open_judge"] == {"model": "gpt-4o", "prompt_version": PROMPT_VERSION, "backend": "batch",
                                             "reply": "1\nSame organ."}
        lines = (tmp_path / "items.open-judge.batch" / "requests-0001.jsonl").read_text().splitlines()
        assert len(lines) == 3 and all('"o1"' not in line for line in lines), "custom ids are opaque"
        j = s["open_judge"]
        assert (j["judged"], j["requests"], j["cache_hits"], j["failures"]) == (3, 3, 0, 0)
        pt, ct = j["usage"]["prompt_tokens"], j["usage"]["completion_tokens"]
        assert pt > 0 and j["cost_usd"] == round((pt * 2.50 + ct * 10.00) / 1e6 * 0.5, 6), "the Batch API bills half"

        again = _eval(tmp_path, srv, bench, "--open-judge-backend", "batch", "--open-judge-poll-interval", "0.05",
                      out="again.jsonl")
        assert again.returncode == 0, again.stderr
        assert len(srv.batches) == 1, "every reply is in the cache: no second batch"
        assert _read(tmp_path, "again.jsonl")[1]["open_judge"]["cache_hits"] == 3


def test_batch_backend_under_a_launcher_is_one_line(tmp_path, bench):
    data, preds = bench
    proc = run_stmed("eval", "--bench", "jsonl", "--data", data, "--predictions", preds, "-o", tmp_path / "i.jsonl",
                     "--open-judge", "gpt-4o", "--open-judge-backend", "batch",
                     env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                          "MASTER_PORT": "29555", "OPENAI_API_KEY": "sk-x"})
    assert proc.returncode == 2 and "--open-judge-backend batch runs as one process" in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not (tmp_path / "i.jsonl").exists()


def test_an_unknown_open_judge_backend_is_one_line(tmp_path, bench):
    data, preds = bench
    proc = run_stmed("eval", "--bench", "jsonl", "--data", data, "--predictions", preds, "--open-judge", "gpt-4o",
                     "--open-judge-backend", "btach")
    assert proc.returncode == 2 and "--open-judge-backend 'btach': unknown (did you mean 'batch'?)" in proc.stderr


@pytest.mark.slow
def test_local_backend_gives_every_open_item_a_verdict_and_caches_nothing(tmp_path, bench, tiny_model):
    pytest.importorskip("torch")
    data, preds = bench
    home = tmp_path / "home"
    proc = run_stmed("eval", "--bench", "jsonl", "--data", data, "--predictions", preds, "-o", tmp_path / "items.jsonl",
                     "--summary", tmp_path / "summary.json", "--bootstrap", "0", "--open-judge", tiny_model,
                     "--open-judge-backend", "local", "--device", "cpu",
                     env={"OPENAI_API_KEY": "", "STMED_CACHE_DIR": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    items, s = _read(tmp_path)
    for k in ("o1", "o2", "o3"):
        made = items[k]["open_judge"]
        assert items[k]["scores"]["open_judge"] in (0.0, 1.0), made
        assert (made["model"], made["prompt_version"], made["backend"]) == (str(tiny_model), PROMPT_VERSION, "local")
        assert parse_verdict(made["reply"]) is not None or "\n[log-prob fallback: p(1)=" in made["reply"], made
    assert "open_judge" not in items["c1"] and "open_judge" not in items["c1"]["scores"]
    j = s["open_judge"]
    assert (j["judged"], j["requests"], j["failures"], j["cost_usd"]) == (3, 3, 0, None)
    assert not (home / "judge-cache.sqlite").exists(), "a local judge's replies are not cached"


def test_ask_all_returns_parsed_scores_in_order_cached_and_reasked_once(tmp_path, monkeypatch):
    """The reward model's call: (image, messages) requests in, one parsed score per request out."""
    from stmed.api import ChatRequest
    from stmed.api.settings import ClientSettings
    from stmed.images import encode_for_api, load_image
    from stmed.judge.cache import ReplyCache
    from stmed.judge.core import JudgeCore

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    url, sha = encode_for_api(load_image(sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0])[0])
    scripted = {"rate a": "Score: 7", "rate b": "Score: 3", "rate c": "I would rather not say."}
    asks = [ChatRequest([{"role": "user", "content": q}], image_url=url, image_sha=sha, max_tokens=16) for q in scripted]

    def parse(text: str):
        return float(text.split(":")[1]) if text.startswith("Score:") else None

    with serve(reply=lambda prompt: scripted.get(prompt.strip())) as srv:
        core = JudgeCore("judge-model", client=ClientSettings(base_url=srv.base_url, concurrency=2),
                         cache=ReplyCache(tmp_path / "cache.sqlite"))
        replies = core.ask_all(asks, parse)
        assert [r.value for r in replies] == [7.0, 3.0, None]
        assert [r.source for r in replies] == ["api", "api", "api"] and replies[2].text == "I would rather not say."
        assert srv.stats.chat == 4 and core.stats.reasks == 1, "the unparseable reply is asked once more, only once"
        assert len(srv.stats.images) == 4, "the image goes with every request"

        again = core.ask_all(asks, parse)
        assert [r.value for r in again] == [7.0, 3.0, None] and [r.source for r in again][:2] == ["cache", "cache"]
        assert srv.stats.chat == 6 and core.stats.cache_hits == 2, "parsed replies come from the cache"
    assert core.stats.requests == 6 and core.stats.usage.prompt_tokens > 0
    core.cache.close()


def test_ask_all_turns_a_request_that_fails_for_good_into_its_reply_error(monkeypatch):
    from stmed.api import ChatRequest
    from stmed.api.settings import ClientSettings
    from stmed.judge.core import JudgeCore

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    with serve(script=["500"] * 3) as srv:
        core = JudgeCore("m", client=ClientSettings(base_url=srv.base_url, concurrency=1, backoff_initial=0.01,
                                                    max_request_seconds=0.5, timeout=2))
        core.client.cfg.max_attempts = 2
        (reply,) = core.ask_all([ChatRequest([{"role": "user", "content": "hello"}])], lambda t: t or None)
    assert reply.value is None and "gave up after 2 attempts" in reply.error, reply
    assert json.dumps(core.stats.to_dict())  # the spend still adds up to a plain dict
