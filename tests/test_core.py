"""Model core on the tiny real LLaVA: loading, chat rendering, batched and seeded generation, OOM back-off."""

from __future__ import annotations

import copy
import json
import hashlib
import re
import sys
from pathlib import Path

import pytest

from stmed.core.chat import render, role_markers
from stmed.core.generate import GenRequest, Generator, SamplingParams, cut_at_stop
from stmed.core.model import ModelSpec, load_model, resolve_device, resolve_dtype
from stmed.errors import InputError
from stmed.images import load_image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "examples" / "images").glob("*.jpg"))

QUESTIONS = [
    "What is shown?",
    "Is there a fracture of the left femur in this radiograph of the lower limb, and where exactly?",
    "Where?",
    "Describe the image in detail, including every organ you can see and its size.",
    "Is this a CT or an MRI?",
    "Which side is the pleural effusion on?",
    "Is the aorta dilated?",
]
SAMPLED = SamplingParams(max_new_tokens=12, temperature=1.2, top_k=100, top_p=0.95)
GREEDY = SamplingParams(max_new_tokens=12)


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_model(ModelSpec(str(tiny_model), device="cpu"))


@pytest.fixture(scope="module")
def images():
    return [load_image(p)[0] for p in IMAGES]


def requests(images, seeds=(None,)) -> list[GenRequest]:
    return [GenRequest([{"role": "user", "content": q}], images[i % len(images)], seeds=list(seeds))
            for i, q in enumerate(QUESTIONS)]


def run(loaded, reqs, params, batch_size) -> list[list[str]]:
    out = dict(Generator(loaded, batch_size).run(reqs, params))
    assert sorted(out) == list(range(len(reqs))), "every request gets exactly one output"
    return [out[i].texts for i in range(len(reqs))]


# --- loading -------------------------------------------------------------------------------------

def test_tiny_model_saved_and_loaded_back(tiny_model, loaded):
    import torch
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    size = sum(p.stat().st_size for p in tiny_model.rglob("*") if p.is_file())
    assert size < 5_000_000, f"tiny model is {size:,} bytes"
    assert isinstance(loaded.model, LlavaForConditionalGeneration)
    assert not loaded.model.training and loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    saved = {}
    for f in tiny_model.glob("*.safetensors"):
        saved.update(load_file(f))
    state = loaded.model.state_dict()
    assert saved, "no weights on disk"
    assert len(saved) == len(state) > 20

    def fingerprints(tensors) -> list[tuple]:  # names differ between checkpoint layouts; contents must not
        return sorted((tuple(t.shape), hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()) for t in tensors)

    assert fingerprints(state.values()) == fingerprints(saved.values()), "weights changed on the way back"
    assert any(t.abs().sum() > 0 for t in state.values())
    tok = loaded.tokenizer
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert loaded.describe() == {"model": str(tiny_model), "adapter": None, "dtype": "float32"}


def test_tiny_model_build_is_deterministic(tiny_model, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_model import build

    again = build(tmp_path / "again", seed=0)

    def digest(folder: Path) -> str:
        return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.glob("*.safetensors")))).hexdigest()

    assert digest(again) == digest(tiny_model)
    assert (again / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()


def test_bad_model_folder(tmp_path):
    with pytest.raises(InputError, match="no such model folder"):
        load_model(ModelSpec(str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"^-m .*empty: cannot load a vision-language model"):
        load_model(ModelSpec(str(tmp_path / "empty"), device="cpu"))


def test_device_and_dtype_flags():
    import torch

    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(InputError, match="--dtype 'fp8'"):
        resolve_dtype("fp8", cpu)
    with pytest.raises(InputError, match="--device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda:0")
        assert resolve_device("auto").type == "cpu"


# --- chat rendering ------------------------------------------------------------------------------

def test_render_assistant_turn(loaded):
    text = render(loaded.processor, [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "What is this?"}])
    assert text == "Be brief.\nUSER: <image>\nWhat is this? ASSISTANT:"
    assert text.count("<image>") == 1


def test_continue_as_user_ends_with_user_header(loaded):
    msgs = [{"role": "system", "content": "You are also a curious user."},
            {"role": "user", "content": "Describe the image."},
            {"role": "assistant", "content": "A chest x-ray."}]
    text = render(loaded.processor, msgs, continue_as="user")
    # the header keeps its trailing space only where this tokenizer does not merge it into the next word
    assert text.rstrip(" ").endswith("ASSISTANT: A chest x-ray.</s>USER:"), text
    assert text.count("<image>") == 1 and text.rfind("ASSISTANT") < text.rfind("USER:")
    # the same user header the template writes before any user words
    full = render(loaded.processor, [*msgs, {"role": "user", "content": "Q?"}], continue_as="assistant")
    assert full.startswith(text) and full[len(text):].lstrip(" ") == "Q? ASSISTANT:"
    tok = loaded.tokenizer
    head, whole = tok(text)["input_ids"], tok(full)["input_ids"]
    assert whole[: len(head)] == head, "the vuser prompt's ids are not a prefix of a rendered user turn's"


def test_no_chat_template_names_the_flag(loaded, tmp_path):
    from stmed.core.template import NoTemplate, use_template

    proc = copy.deepcopy(loaded.processor)
    proc.chat_template = None
    proc.tokenizer.chat_template = None
    with pytest.raises(NoTemplate, match="--chat-template FILE"):
        use_template(proc)
    # a template that sits only in the tokenizer is used
    proc.tokenizer.chat_template = loaded.processor.chat_template
    use_template(proc)
    assert render(proc, [{"role": "user", "content": "Describe."}]) == "USER: <image>\nDescribe. ASSISTANT:"
    # --chat-template FILE replaces it; one that ignores the image is refused
    textonly = tmp_path / "t.jinja"
    textonly.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(NoTemplate, match="image turn"):
        use_template(proc, str(textonly))
    good = tmp_path / "good.jinja"
    good.write_text("{% for m in messages %}<<{{ m['role'] }}>>{% for p in m['content'] %}"
                    "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}"
                    "{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}")
    use_template(proc, str(good))
    assert render(proc, [{"role": "user", "content": "Hi"}]) == "<<user>><image>Hi<<assistant>>"
    with pytest.raises(NoTemplate, match="no such file"):
        use_template(proc, str(tmp_path / "missing.jinja"))


def test_unusable_template_or_missing_library_is_one_line(tiny_model, tmp_path, monkeypatch):
    from conftest import run_stmed

    from stmed.errors import InputError

    textonly = tmp_path / "t.jinja"
    textonly.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    items = tmp_path / "q.jsonl"
    image = sorted((Path(__file__).parent.parent / "examples" / "images").glob("*.jpg"))[0]
    items.write_text(json.dumps({"id": "a", "image": str(image), "question": "Is it?"}) + "\n")
    r = run_stmed("answer", items, "-m", tiny_model, "--chat-template", textonly, "-o", tmp_path / "a.jsonl")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "cannot render an image turn" in lines[0], r.stderr
    assert "--chat-template FILE" in lines[0] and not (tmp_path / "a.jsonl").exists()

    def no_torchvision(*args, **kwargs):
        raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library")

    import transformers

    from stmed.core.model import load_processor

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", no_torchvision)
    with pytest.raises(InputError, match="needs a library that is missing here .*torchvision"):
        load_processor(ModelSpec(str(tiny_model)))


def test_role_markers(loaded):
    assert role_markers(loaded.processor) == ["ASSISTANT:", "USER:"]


def test_cut_at_stop():
    assert cut_at_stop(" Is it? USER: more ASSISTANT: x", ["ASSISTANT:", "USER:"]) == "Is it?"
    assert cut_at_stop("plain", ["USER:"]) == "plain"


# --- generation ----------------------------------------------------------------------------------

def test_prompts_differ_in_length(loaded, images):
    """The batching tests below mean something only when rows need padding."""
    gen = Generator(loaded)
    lengths = {len(loaded.tokenizer(gen.prompt_of(r))["input_ids"]) for r in requests(images)}
    assert len(lengths) >= 4, lengths


def test_greedy_batched_equals_one_at_a_time(loaded, images):
    reqs = requests(images)
    alone = run(loaded, reqs, GREEDY, batch_size=1)
    for bs in (3, 8):
        assert run(loaded, reqs, GREEDY, batch_size=bs) == alone, f"batch {bs} changed greedy text"
    assert all(len(t) == 1 and t[0] for t in alone), alone
    assert len({t[0] for t in alone}) > 1, "different prompts should give different text"


def test_seeded_sampling_same_across_batch_sizes_and_runs(loaded, images):
    reqs = requests(images, seeds=(40, 42, 7))
    first = run(loaded, reqs, SAMPLED, batch_size=1)
    assert run(loaded, reqs, SAMPLED, batch_size=3) == first
    assert run(loaded, reqs, SAMPLED, batch_size=8) == first
    assert run(loaded, reqs, SAMPLED, batch_size=8) == first, "a second run repeats the first"
    assert all(len(t) == 3 for t in first)
    # a seed's text does not depend on which other seeds or requests share its batch
    solo = run(loaded, [GenRequest(reqs[4].messages, reqs[4].image, seeds=[42])], SAMPLED, batch_size=1)
    assert solo[0][0] == first[4][1]


def test_different_seeds_give_different_text(loaded, images):
    out = run(loaded, requests(images[:1], seeds=range(6))[:1], SAMPLED, batch_size=8)[0]
    assert len(set(out)) == 6, out
    greedy = run(loaded, requests(images)[:1], GREEDY, batch_size=1)[0][0]
    assert greedy not in out, "sampling at T=1.2 should not just reproduce greedy text"


def test_text_only_and_image_requests_together(loaded, images):
    reqs = requests(images)[:3] + [GenRequest([{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    mixed = run(loaded, reqs, GREEDY, batch_size=8)
    assert mixed[:3] == run(loaded, reqs[:3], GREEDY, batch_size=1)
    assert mixed[3:] == run(loaded, reqs[3:], GREEDY, batch_size=1)
    assert mixed[:3] != mixed[3:], "the image should change the text"


def test_token_counts_and_ignore_eos(loaded, images):
    params = SamplingParams(max_new_tokens=9, ignore_eos=True)
    outs = dict(Generator(loaded, 4).run(requests(images, seeds=(None,)), params))
    assert all(o.tokens == [9] for o in outs.values())
    assert sum(o.total_tokens for o in outs.values()) == 9 * len(QUESTIONS)


def test_oom_backoff_splits_batches(loaded, images, monkeypatch, capsys):
    import torch

    reqs = requests(images, seeds=(40, 42))
    expect = run(loaded, reqs, SAMPLED, batch_size=8)
    real_generate = loaded.model.generate
    seen: list[int] = []

    def generate(**kwargs):
        rows = kwargs["input_ids"].shape[0]
        seen.append(rows)
        if rows > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(**kwargs)

    monkeypatch.setattr(loaded.model, "generate", generate)
    gen = Generator(loaded, 8)
    out = dict(gen.run(reqs, SAMPLED))
    assert [out[i].texts for i in range(len(reqs))] == expect, "back-off changed or lost outputs"
    assert gen.batch_size == 2, gen.batch_size
    assert seen[0] == 8 and max(seen[1:]) <= 8 and seen.count(8) == 1, f"kept retrying the big batch: {seen}"
    assert "out of memory at batch 8; continuing with batch size 4" in capsys.readouterr().err


def test_other_errors_are_not_swallowed(loaded, images, monkeypatch):
    def generate(**kwargs):
        raise RuntimeError("shape mismatch in attention")

    monkeypatch.setattr(loaded.model, "generate", generate)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(Generator(loaded, 8).run(requests(images), GREEDY))


def test_stop_strings_end_a_sample_early(loaded, images):
    from stmed.core.generate import Generator

    reqs = requests(images)[:2]
    full = dict(Generator(loaded, 2).run(reqs, SamplingParams(max_new_tokens=24)))
    text = full[0].texts[0]
    # Byte-level BPE on a random model leaves partial characters; stop on a plain word in the text.
    words = [m.group() for m in re.finditer(r"[A-Za-z]{3,}", text) if m.start() > 0]
    assert words, f"need a plain word after the start of the greedy sample: {text!r}"
    stop = words[0]
    cut = dict(Generator(loaded, 2).run(reqs, SamplingParams(max_new_tokens=24, stop=(stop,))))
    assert cut[0].texts[0] == text[: text.find(stop)].strip(), "text must end right before the stop string"
    assert cut[0].tokens[0] < full[0].tokens[0], "generation must stop at the stop string, not run on"


def test_choice_tokens_are_told_apart_by_a_sentencepiece_style_tokenizer():
    """Llama's tokenizer encodes a lone "1" as ["▁", "1"]: first tokens alone would tie "1" and "2"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from stmed.core.generate import divergence

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    raw.train_from_iterator(["ASSISTANT: answer one is better than answer two"] * 5,
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"],
                                                initial_alphabet=list("0123456789\u2581")))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    lone = [tok("1", add_special_tokens=False)["input_ids"], tok("2", add_special_tokens=False)["input_ids"]]
    assert lone[0][0] == lone[1][0], "precondition: a lone digit starts with the same word-boundary token"
    drop, ids = divergence(tok, "USER: which is better? ASSISTANT:", ["1", "2"])
    assert drop == 1 and ids[0] != ids[1]
    assert tok.convert_ids_to_tokens(ids) == ["1", "2"]


def test_choice_logprobs_on_the_tiny_model(loaded, images):
    import math

    from stmed.core.generate import choice_logprobs

    reqs = requests(images)[:3]
    scores = choice_logprobs(loaded, reqs, ["1", "2"], batch_size=2)
    assert len(scores) == 3 and all(set(s) == {"1", "2"} for s in scores)
    assert all(s["1"] != s["2"] and all(v < 0 and math.isfinite(v) for v in s.values()) for s in scores)


def test_a_request_the_model_fails_on_is_isolated(loaded, images, monkeypatch):
    """With isolate_failures, a non-memory error is narrowed down to its request; the rest finish."""
    reqs = requests(images)
    expected = run(loaded, reqs, SamplingParams(max_new_tokens=6), 8)
    real = Generator._run_batch

    def failing(self, batch, requests_, prompts, params):
        if any(i == 2 for i, _, _ in batch):
            raise ValueError("cannot process this image")
        return real(self, batch, requests_, prompts, params)

    monkeypatch.setattr(Generator, "_run_batch", failing)
    out = dict(Generator(loaded, 8, isolate_failures=True).run(reqs, SamplingParams(max_new_tokens=6)))
    assert isinstance(out[2], Exception) and "cannot process this image" in str(out[2])
    assert [out[i].texts for i in range(len(reqs)) if i != 2] == [t for i, t in enumerate(expected) if i != 2]
    with pytest.raises(ValueError):  # without it, the error is the run's (a bug shows its traceback)
        list(Generator(loaded, 8).run(reqs, SamplingParams(max_new_tokens=6)))
