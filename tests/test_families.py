"""Real model families: tiny random models built around the processor, tokenizer and chat template
files of llava-hf/llava-1.5-7b-hf, Qwen/Qwen2-VL-2B-Instruct, llava-hf/llava-v1.6-mistral-7b-hf
(LLaVA-NeXT: anyres tiles, image_sizes) and google/gemma-3-4b-it (template writes <bos>,
<end_of_turn>, token_type_ids, "\n\n" around the image); see tests/fixtures/processors/README.md
for what is real and what stands in.

What DPO and SFT supervise must be exactly what generation sees and emits: the answer's ids as
generated plus the template's end-of-turn token, the vuser prompt's ids a prefix of a rendered
user turn's, and every stage runs on every family.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE_IMAGES, ROOT, run_stmed

pytestmark = pytest.mark.slow

FIXTURES = ROOT / "tests" / "fixtures" / "processors"
FAMILIES = ["llava-1.5-7b-hf", "qwen2-vl-2b-instruct", "llava-v1.6-mistral-7b-hf", "gemma-3-4b-it"]
MAX_PIXELS = "50176"  # 224 x 224: 64 image tokens for Qwen2-VL instead of thousands
END_TOKENS = {"llava-1.5-7b-hf": ("</s>", False), "qwen2-vl-2b-instruct": ("<|im_end|>", True),
              "llava-v1.6-mistral-7b-hf": ("</s>", True), "gemma-3-4b-it": ("<end_of_turn>", True)}
# A folder without a tokenizer of its own takes these files from another (README: why)
TOKENIZER_FROM = {"llava-v1.6-mistral-7b-hf": "llava-1.5-7b-hf"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> tuple[str, Path]:
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_model import build_from_processor

    name = request.param
    where = tmp_path_factory.mktemp("families")
    folder = FIXTURES / name
    if name in TOKENIZER_FROM:
        import shutil

        folder = shutil.copytree(folder, where / "processor")
        for f in TOKENIZER_FILES:
            shutil.copyfile(FIXTURES / TOKENIZER_FROM[name] / f, folder / f)
    return name, build_from_processor(folder, where / name, seed=0)


@pytest.fixture(scope="module")
def loaded(family):
    from stmed.core.model import ModelSpec, load_model

    return load_model(ModelSpec(str(family[1]), device="cpu"))


def _image(k: int = 0):
    from stmed.images import load_image, prepare

    img, _ = load_image(sorted(EXAMPLE_IMAGES.glob("*.jpg"))[k])
    return prepare(img, max_pixels=int(MAX_PIXELS))


class _WordsOnly:
    """Greedy decoding restricted to whole words and the end token: text that a record stores
    (decoded, stripped) then means exactly these ids, so the comparison tests the token path,
    not the random model's taste for byte fragments."""

    def __init__(self, allowed, first):
        self.allowed, self.first, self.start = allowed, first, None

    def __call__(self, input_ids, scores):
        import torch

        if self.start is None:
            self.start = input_ids.shape[1]
        keep = self.first if input_ids.shape[1] == self.start else self.allowed
        mask = torch.full_like(scores, float("-inf"))
        mask[:, keep] = 0
        return scores + mask


def _generate_words(loaded, messages, image) -> list[int]:
    """Greedy ids the model generates after the prompt, restricted as _WordsOnly says."""
    import torch

    from stmed.core.chat import answer_ids, render
    from stmed.core.generate import stop_ids
    from stmed.core.prompt import encode_batch
    from stmed.core.tokens import turn_end

    proc, tok = loaded.processor, loaded.tokenizer
    sentence = "Yes, there is a small fracture in the right lobe of the liver and no effusion."
    words = answer_ids(proc, messages, sentence)[:-1]  # in-context ids of ordinary words
    pieces = tok.convert_ids_to_tokens(words)
    spaced = [i for i, p in zip(words, pieces) if p[0] in "▁Ġ"]
    # no punctuation (",," merges into one token); the one end token training appends (not Gemma's <eos> too)
    allowed = torch.tensor(sorted({*spaced, turn_end(proc).token_id}))
    first = torch.tensor([words[0]])
    enc = encode_batch(proc, [render(proc, messages)], [image]).to(loaded.device)
    with torch.inference_mode():
        out = loaded.model.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=stop_ids(loaded),
                                    pad_token_id=tok.pad_token_id, logits_processor=[_WordsOnly(allowed, first)])
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_end_token_of_each_template(family, loaded):
    from stmed.core.tokens import turn_end

    end = turn_end(loaded.processor)
    assert (end.token, end.written) == END_TOKENS[family[0]]
    from stmed.core.generate import stop_ids

    assert end.token_id in stop_ids(loaded), "generation must stop at the token training appends"


def test_dpo_and_sft_supervise_what_generation_emits(family, loaded, tmp_path):
    """Greedy-generate an answer, then feed prompt and answer through the DPO and SFT collators:
    the supervised ids are the generated ids, plus the end token where generation stopped early."""
    from stmed.core.generate import GenRequest, Generator, SamplingParams, stop_ids
    from stmed.core.tokens import turn_end
    from stmed.train.data import encode_pair
    from stmed.train.pairs import PairCollator
    from stmed.train.sft_data import IGNORE, SFTCollator

    image, question = _image(0), "Is there a fracture?"
    messages = [{"role": "user", "content": question}]
    generated = _generate_words(loaded, messages, image)
    end = turn_end(loaded.processor).token_id
    stops = set(stop_ids(loaded))  # Gemma may stop at <eos> as well as at <end_of_turn>
    body = generated[: next((k for k, t in enumerate(generated) if t in stops), len(generated))]
    assert len(body) >= 2, f"the model said too little to compare: {generated}"
    # the text a record keeps: what the Generator decodes and stores
    text = loaded.tokenizer.decode(body, skip_special_tokens=True).strip()
    expected = body + [end]

    pair = encode_pair(loaded.processor, messages, text, "No.")
    assert pair["chosen_ids"] == expected, (loaded.tokenizer.convert_ids_to_tokens(pair["chosen_ids"]),
                                            loaded.tokenizer.convert_ids_to_tokens(expected))
    batch = PairCollator(loaded.processor)([{"images": [image], **pair}])
    kept = batch["completion_ids"][0][batch["completion_attention_mask"][0].bool()].tolist()
    assert kept == expected
    # the prompt the collator trains on is the prompt generation ran on, token for token
    from stmed.core.chat import render
    from stmed.core.prompt import encode_batch

    gen_prompt = encode_batch(loaded.processor, [render(loaded.processor, messages)], [image])
    assert batch["prompt_input_ids"][0].tolist() == gen_prompt["input_ids"][0].tolist()
    for key in ("mm_token_type_ids", "image_grid_thw"):
        if key in gen_prompt:
            got = batch.get(f"prompt_{key}", batch.get(key))
            assert got is not None and got.tolist() == gen_prompt[key].tolist(), key

    rows = {"id": "x", "where": "x", "image_path": str(tmp_path / "img.png"),
            "conversation": json.dumps([{"role": "user", "content": question}, {"role": "assistant", "content": text}])}
    image.save(rows["image_path"])
    item = SFTCollator(loaded.processor, sq_ratio=0.0, seed=0).encode(rows)
    supervised = [t for t, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE]
    assert supervised == expected, loaded.tokenizer.convert_ids_to_tokens(supervised)
    # SFT's ids for the prompt part are the processor's, as in generation
    prompt_ids = gen_prompt["input_ids"][0].tolist()
    assert item["input_ids"][: len(prompt_ids)] == prompt_ids
    if "mm_token_type_ids" in gen_prompt:
        assert item["mm_token_type_ids"][: len(prompt_ids)] == gen_prompt["mm_token_type_ids"][0].tolist()
    # and the Generator, which the stages use, gives the same text
    out = dict(Generator(loaded, 2).run([GenRequest(messages, image)], SamplingParams(12)))
    assert isinstance(out[0].texts[0], str)


def test_vuser_prompt_is_a_prefix_of_a_user_turn(family, loaded):
    """What gen-questions continues ends where a user's words begin, with the ids a rendered user
    turn has there; SFT's self-asked turns are tokenized on that same junction."""
    from stmed.core.chat import render
    from stmed.core.tokens import encode
    from stmed.prompts import vuser_context
    from stmed.train.sft_data import render_example, token_labels

    proc, tok = loaded.processor, loaded.tokenizer
    ctx = vuser_context("A frontal chest radiograph.")
    prompt = render(proc, ctx, continue_as="user")
    question = "What is the size of the heart?"
    turn = render(proc, [*ctx, {"role": "user", "content": question}], continue_as="assistant")
    head, whole = encode(tok, prompt), encode(tok, turn)
    assert whole[: len(head)] == head, (tok.convert_ids_to_tokens(head[-4:]), tok.convert_ids_to_tokens(whole[len(head) - 4:len(head) + 2]))
    assert tok.convert_ids_to_tokens(head[-1:]) != ["▁"], "the vuser prompt ends in a stray whitespace token"
    # SFT: the self-asked question's supervised ids follow the same header ids
    msgs = [{"role": "user", "content": "Describe the image in detail."},
            {"role": "assistant", "content": "A frontal chest radiograph."},
            {"role": "user", "content": question}, {"role": "assistant", "content": "Normal."}]
    ids, labels = token_labels(tok, render_example(proc, msgs, [False, True]))
    first_q = next(k for k in range(len(ids)) if labels[k] != -100 and k > 0 and labels[k - 1] == -100
                   and tok.decode(ids[k:k + 3]).strip().startswith("What"))
    header = head[-3:]
    assert ids[first_q - len(header):first_q] == header, "SFT's vuser header differs from gen-questions'"


def test_local_judge_log_prob_fallback(family, loaded):
    """The fallback that compares p("1") and p("2") (it crashed on Qwen2-VL's mm_token_type_ids)."""
    from stmed.core.generate import GenRequest, choice_logprobs

    reqs = [GenRequest([{"role": "user", "content": f"Which answer is better? {k}"}], _image(k)) for k in range(3)]
    out = choice_logprobs(loaded, reqs, ["1", "2"], batch_size=2)
    assert len(out) == 3 and all(set(o) == {"1", "2"} and o["1"] < 0 and o["2"] < 0 for o in out)


def test_batched_generation_matches_one_at_a_time(family, loaded):
    """Each sample gets its own image (nested per sample) whatever the batch: images of different
    sizes (different numbers of image tokens for Qwen2-VL) in one batch give the texts they give alone."""
    from stmed.core.generate import GenRequest, Generator, SamplingParams

    reqs = [GenRequest([{"role": "user", "content": "Describe."}], _image(k)) for k in range(3)]
    alone = [dict(Generator(loaded, 1).run([r], SamplingParams(6)))[0].texts for r in reqs]
    together = dict(Generator(loaded, 3).run(reqs, SamplingParams(6)))
    assert [together[i].texts for i in range(3)] == alone


def test_every_stage_runs(family, tmp_path):
    """inspect, gen-questions, answer, judge (local), dpo, sft and eval on the real processor."""
    name, model = family
    bound = ["--max-pixels", MAX_PIXELS]
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted(EXAMPLE_IMAGES.glob("*.jpg"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    r = run_stmed("inspect", images / sorted(x.name for x in images.iterdir())[0], "-m", model, "-n", "1",
                  "--max-new-tokens", "6", "--json", *bound)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["qa"], "inspect asked and answered nothing"
    q, a, p = tmp_path / "q.jsonl", tmp_path / "a.jsonl", tmp_path / "pairs.jsonl"
    r = run_stmed("gen-questions", images, "-m", model, "-n", "2", "--max-new-tokens", "12",
                  "--describe-max-new-tokens", "12", "-o", q, *bound)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    questions = [json.loads(x) for x in q.read_text().splitlines()]
    assert questions and all(x["gen"]["max_pixels"] == int(MAX_PIXELS) for x in questions)
    r = run_stmed("answer", q, "-m", model, "--max-new-tokens", "12", "-o", a, *bound)
    assert r.returncode == 0, r.stderr[-2000:]
    answers = [json.loads(x) for x in a.read_text().splitlines()]
    assert all(len(x["answers"]) == 2 and x["answer_prompt"]["max_pixels"] == int(MAX_PIXELS) for x in answers)
    r = run_stmed("judge", a, "--backend", "local", "--judge-model", model, "--policy", "paper", "--max-tokens", "8",
                  "-o", p, *bound, env={"OPENAI_API_KEY": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    pairs = [json.loads(x) for x in p.read_text().splitlines()]
    assert pairs and all("answer_prompt" in x for x in pairs), "the judge must pass the answers' prompt on"
    fast = ["--max-steps", "1", "--batch-size", "1", "--grad-accum", "1", "--lora-r", "4", "--lora-alpha", "8"]
    # dpo reads the image settings from the records: a contradicting flag is one line, exit 2
    r = run_stmed("dpo", p, "-m", model, "-o", tmp_path / "bad", "--max-pixels", "100000", *fast)
    assert r.returncode == 2 and "contradicts --max-pixels" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()
    # and from the prompt text they were sampled from: another chat template is refused the same way
    from transformers import AutoProcessor

    other = tmp_path / "other.jinja"
    other.write_text("{{ 'Answer carefully. ' }}" + AutoProcessor.from_pretrained(model).chat_template)
    r = run_stmed("dpo", p, "-m", model, "-o", tmp_path / "bad", "--chat-template", other, *fast)
    assert r.returncode == 2 and "renders differently" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
    r = run_stmed("dpo", p, "-m", model, "-o", tmp_path / "dpo", *fast)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "dpo" / "_meta.json").read_text())
    assert meta["data"]["images"]["max_pixels"] == int(MAX_PIXELS)
    r = run_stmed("sft", a, "-m", model, "-o", tmp_path / "sft", *fast)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "sft" / "adapter_config.json").exists()
    r = run_stmed("eval", "--bench", "jsonl", "--data", _eval_items(tmp_path, images), "-m", model,
                  "--max-new-tokens", "6", "--bootstrap", "0", "-o", tmp_path / "eval.jsonl", *bound)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == 2


def _eval_items(tmp_path: Path, images: Path) -> Path:
    path = tmp_path / "items.jsonl"
    rows = [{"id": f"e{k}", "image": str(img), "question": "Is this normal?", "answer": "yes", "answer_type": "CLOSED"}
            for k, img in enumerate(sorted(images.iterdir()))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dry_run_shows_the_trained_tokens(family, tmp_path):
    name, model = family
    pairs = tmp_path / "pairs.jsonl"
    image = sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0]
    pairs.write_text(json.dumps({"id": "a", "image": str(image), "question": "Is there a fracture?",
                                 "chosen": "Yes, in the right lobe.", "rejected": "No."}) + "\n")
    r = run_stmed("dpo", pairs, "-m", model, "-o", tmp_path / "out", "--dry-run", "--json", "-q",
                  "--max-pixels", MAX_PIXELS)
    assert r.returncode == 0, r.stderr[-2000:]
    shown = json.loads(r.stdout)
    end, _ = END_TOKENS[name]
    assert shown["chosen_tokens"][-1] == end and shown["rejected_tokens"][-1] == end
    assert shown["chosen_tokens"][0].lstrip("▁Ġ").startswith("Yes"), shown["chosen_tokens"]
    assert len(shown["prompt_ids"]) == len(shown["prompt_tokens"]) and not (tmp_path / "out").exists()
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"id": "c", "image": str(image), "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A chest x-ray."},
        {"from": "human", "value": "Is there a fracture?"}, {"from": "gpt", "value": "No."}]}) + "\n")
    r = run_stmed("sft", conv, "-m", model, "-o", tmp_path / "out", "--dry-run", "--json", "-q", "--sq-ratio", "1",
                  "--max-pixels", MAX_PIXELS)
    assert r.returncode == 0, r.stderr[-2000:]
    segments = json.loads(r.stdout)["segments"]
    trained = [s["tokens"] for s in segments if s["supervised"]]
    assert [t[-1] for t in trained] == [end, "?", end], trained  # answer, self-asked question, answer
    assert not (tmp_path / "out").exists()


def test_labels_map_around_an_image_region_that_merges_with_its_neighbours():
    """Gemma 3's processor writes "\n\n" around the image; after the template's "\n" that is one
    "\n\n\n" token, so the tokenizer's ids and the processor's differ there, not only by insertion."""
    from stmed.core.tokens import TokenMismatch, align_expanded

    ours = [2, 10, 3, 6, 20, 21, 5]  # <bos> user "\n" <start_of_image> Is it <end_of_turn>
    theirs = [2, 10, 30, 6, 8, 8, 7, 31, 20, 21, 5]  # "\n\n\n", image tokens, <end_of_image>, "\n\n"
    assert align_expanded(ours, theirs) == [0, 1, None, None, None, None, None, None, 4, 5, 6]
    assert align_expanded([1, 2], [1, 2]) == [0, 1]
    with pytest.raises(TokenMismatch):
        align_expanded([1, 2], [3, 4])
