"""stmed sft: self-asked turns and their labels on real VQA-RAD questions; training on the tiny model."""

from __future__ import annotations

import collections
import json

import pytest

from conftest import run_stmed


@pytest.fixture(scope="module")
def vqa_rad_conversations(bench_data, tmp_path_factory):
    """LLaVA conversations of three VQA-RAD train questions about one image each, plus malformed ones."""
    root = bench_data / "vqa_rad"
    rows = json.loads((root / "VQA_RAD Dataset Public.json").read_text())
    by_image = collections.defaultdict(list)
    for r in rows:
        if r["phrase_type"] in ("freeform", "para"):  # the train split
            by_image[r["image_name"]].append(r)
    convs = []
    for name, qs in [(k, v) for k, v in by_image.items() if len(v) >= 3][:6]:
        turns = []
        for i, r in enumerate(qs[:3]):
            turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + r["question"]},
                      {"from": "gpt", "value": str(r["answer"])}]
        convs.append({"id": name, "image": str(root / "images" / name), "conversations": turns})
    good = convs[0]
    convs += [
        {"id": "no-human", "image": good["image"], "conversations": [{"from": "gpt", "value": "Yes"}]},
        {"id": "two-tags", "image": good["image"], "conversations": [{"from": "human", "value": "<image><image> q"},
                                                                     {"from": "gpt", "value": "a"}]},
        {"id": "no-image", "image": "missing.jpg", "conversations": good["conversations"]},
        {"id": "odd-order", "image": good["image"], "conversations": good["conversations"][:2] * 1
         + [{"from": "gpt", "value": "again"}]},
    ]
    path = tmp_path_factory.mktemp("sft") / "conv.json"
    path.write_text(json.dumps(convs, indent=1))
    return path, good


def _supervised_runs(tokenizer, ids, labels):
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != -100:
            assert lab == i, "a supervised label must be the token itself"
            cur.append(i)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    return runs + ([tokenizer.decode(cur)] if cur else [])


def test_labels_token_by_token_for_sq_ratio_0_1_and_seeded_half(vqa_rad_conversations, tiny_model):
    from transformers import AutoProcessor

    from stmed.core.chat import render
    from stmed.prompts import VUSER_SYSTEM
    from stmed.records import Record
    from stmed.train.sft_data import draw_self_asked, parse_conversation, render_example, token_labels

    _, good = vqa_rad_conversations
    processor = AutoProcessor.from_pretrained(tiny_model)
    tok = processor.tokenizer
    msgs = parse_conversation(Record.at(good, "conv.json[0]"))
    q = [m["content"] for m in msgs if m["role"] == "user"]
    a = [f" {m['content']}</s>" for m in msgs if m["role"] == "assistant"]

    none = render_example(processor, msgs, draw_self_asked(3, 0.0, 42, good["id"], 0))
    ids, labels = token_labels(tok, none)
    assert _supervised_runs(tok, ids, labels) == a, "sq-ratio 0: only the answers carry loss"
    assert VUSER_SYSTEM.text not in none.text

    every = render_example(processor, msgs, draw_self_asked(3, 1.0, 42, good["id"], 0))
    ids, labels = token_labels(tok, every)
    assert _supervised_runs(tok, ids, labels) == [a[0], q[1], a[1], q[2], a[2]], \
        "sq-ratio 1: every later question (its text only, not 'USER:') carries loss too"
    assert every.text.startswith(VUSER_SYSTEM.text), "self-asking happens under the vuser system prompt"
    # The self-asked question sits exactly where gen-questions --strategy vuser lets the model speak.
    system = [{"role": "system", "content": VUSER_SYSTEM.text}]
    vuser_prompt = render(processor, system + msgs[:2], continue_as="user")
    assert every.text.startswith(vuser_prompt + q[1])
    picks = draw_self_asked(3, 0.5, 42, good["id"], 0)
    assert picks == draw_self_asked(3, 0.5, 42, good["id"], 0), "the draw is seeded"
    assert picks[0] is False, "the first turn (with the image) is never self-asked"
    draws = {tuple(draw_self_asked(3, 0.5, 42, good["id"], epoch)) for epoch in range(8)}
    assert len(draws) > 1, "each epoch draws again"
    half = render_example(processor, msgs, picks)
    ids, labels = token_labels(tok, half)
    want = [a[0]] + [x for k in (1, 2) for x in ([q[k]] if picks[k] else []) + [a[k]]]
    assert _supervised_runs(tok, ids, labels) == want


def test_sft_lowers_loss_skips_malformed_and_adapter_loads(vqa_rad_conversations, tiny_model, tmp_path):
    from stmed.core.model import ModelSpec, load_model
    from stmed.images import load_image
    from stmed.prompts import VUSER_SYSTEM

    path, good = vqa_rad_conversations
    out = tmp_path / "out"
    proc = run_stmed("sft", path, "-m", tiny_model, "-o", out, "--max-steps", "12", "--batch-size", "3",
                     "--grad-accum", "1", "--lr", "1e-2", "--lora-r", "8", "--lora-alpha", "16", "--sq-ratio", "1")
    assert proc.returncode == 1, f"malformed conversations are reported, the run goes on: {proc.stderr}"
    errors = {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"no-human", "two-tags", "no-image", "odd-order"}
    assert errors["two-tags"]["where"] == f"{path}[7]" and "2 <image> tags" in errors["two-tags"]["error"]
    assert "no human turn" in errors["no-human"]["error"] and "expected 'human'" in errors["odd-order"]["error"]
    losses = [r["loss"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, f"loss did not fall: {losses}"
    # The adapter loads the way gen-questions --adapter loads it, and in the vuser context (what
    # gen-questions prompts with) it now finds a trained self-asked question more likely than the base does.
    second = good["conversations"][2]["value"]
    context = [{"role": "system", "content": VUSER_SYSTEM.text},
               {"role": "user", "content": good["conversations"][0]["value"].replace("<image>", "").strip()},
               {"role": "assistant", "content": good["conversations"][1]["value"]}]
    image = load_image(good["image"])[0]  # unpadded: sft's default, like gen-questions
    base = _question_logprob(load_model(ModelSpec(str(tiny_model), device="cpu")), context, second, image)
    tuned = _question_logprob(load_model(ModelSpec(str(tiny_model), adapter=str(out), device="cpu")),
                              context, second, image)
    assert tuned > base + 1.0, f"self-asked question not learned: base {base:.2f}, tuned {tuned:.2f}"


def _question_logprob(loaded, context, question, image):
    import torch

    from stmed.core.chat import render

    prompt = render(loaded.processor, context, continue_as="user")
    enc = loaded.processor(text=[prompt + question], images=[image], return_tensors="pt")
    n_prompt = loaded.processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1]
    with torch.no_grad():
        logits = loaded.model(**enc).logits[0, :-1].float().log_softmax(-1)
    ids = enc["input_ids"][0, 1:]
    return float(logits.gather(-1, ids[:, None])[n_prompt - 1:].sum())


def test_export_questions(vqa_rad_conversations, tmp_path):
    path, good = vqa_rad_conversations
    out = tmp_path / "questions.jsonl"
    proc = run_stmed("sft", path, "--export-questions", out)
    assert proc.returncode == 1, proc.stderr  # the malformed ones are reported
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    first = [r for r in recs if r["image_id"] == good["id"]]
    assert [r["id"] for r in first] == [f"{good['id']}:q{k}" for k in range(3)]
    assert first[0]["question"] == good["conversations"][0]["value"].replace("<image>", "").strip()
    assert first[0]["image"] == good["image"] and first[0]["gen"]["model"] == "human"


def test_qa_records_with_answers_as_strings_or_text_objects(tmp_path):
    from stmed.errors import RecordError
    from stmed.records import Record
    from stmed.train.sft_data import parse_conversation

    for answers in (["yes", "no"], [{"text": "yes", "seed": 40}, {"text": "no"}]):
        msgs = parse_conversation(Record.at({"question": "Is it?", "answers": answers}, "f:1"))
        assert msgs == [{"role": "user", "content": "Is it?"}, {"role": "assistant", "content": "yes"}]
    for bad in ([1, 2], "yes", [{"answer": "yes"}]):
        with pytest.raises(RecordError, match="f:2"):
            parse_conversation(Record.at({"question": "Is it?", "answers": bad}, "f:2"))
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "x.jpg", "question": "Is it?", "answers": ["yes", "no"]}) + "\n"
                    + json.dumps({"id": "b", "image": "x.jpg", "question": "Is it?", "answers": [3]}) + "\n")
    out = tmp_path / "questions.jsonl"
    proc = run_stmed("sft", data, "--export-questions", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "qa.jsonl:2" in proc.stderr and [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a:q0"]
