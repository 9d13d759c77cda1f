"""The vLLM engine against the transformers engine, on tiny models around the real LLaVA-1.5 and
Qwen2-VL processor files, with images, on CPU (vLLM's community CPU build).

vLLM lives in its own environment (.venv-vllm, `make vllm-env`): the vLLM side runs there in a
subprocess (tests/vllm_probe.py, and the real `stmed` command line), the transformers side here,
and the two are compared: the prompt ids vLLM ends up with equal the HF processor's, greedy ids
are the same, samples are stable across reruns and batch mates, every request carries a seed,
the judge's log-probs agree, records have the transformers engine's shape, and DPO trains on
the ids vLLM emitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from conftest import EXAMPLE_IMAGES, ROOT, run_stmed

VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
PROCESSORS = ROOT / "tests" / "fixtures" / "processors"
FAMILIES = ["llava-1.5-7b-hf", "qwen2-vl-2b-instruct"]


def _vllm_ready() -> bool:
    if not VLLM_PY.exists():
        return False
    probe = subprocess.run([str(VLLM_PY), "-c", "import vllm"], capture_output=True, timeout=300)
    return probe.returncode == 0


if not _vllm_ready():
    pytest.skip("no vLLM environment (.venv-vllm; `make vllm-env` builds it): the vLLM engine is not tested here",
                allow_module_level=True)

sys.path.insert(0, str(ROOT / "tests"))
import vllm_probe  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
       "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1"}


def run_vllm_env(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(VLLM_PY), *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, a tiny model vLLM's CPU build runs around that family's real processor, its probe JSON)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_model import build_from_processor

    folder = tmp_path_factory.mktemp(request.param)
    model = build_from_processor(PROCESSORS / request.param, folder / "model", vllm=True)
    probe = run_vllm_env(ROOT / "tests" / "vllm_probe.py", model, folder / "probe.json")
    assert probe.returncode == 0, probe.stderr[-4000:]
    return request.param, model, json.loads((folder / "probe.json").read_text())


@pytest.fixture(scope="module")
def hf(family):
    from stmed.core.generate import Generator
    from stmed.core.model import ModelSpec, load_model

    loaded = load_model(ModelSpec(str(family[1]), device="cpu"))
    return loaded, Generator(loaded, 8)


def test_vllm_sees_the_prompt_ids_the_transformers_engine_sees(family, hf):
    from stmed.core.prompt import encode_batch

    name, _, probe = family
    loaded, gen = hf
    image_token = loaded.model.config.image_token_id
    for key, req in vllm_probe.requests().items():
        expanded = encode_batch(loaded.processor, [gen.prompt_of(req)], [req.image])["input_ids"][0].tolist()
        assert probe["batch"][key]["prompt_ids"] == expanded, f"{name} {key}: vLLM's prompt differs from the processor's"
        sent = probe["engine_prompt_ids"][key]
        assert sent.count(image_token) == 1 < expanded.count(image_token), \
            f"{name} {key}: the engine must send one image placeholder, which vLLM expands"


def test_greedy_ids_equal_the_transformers_engines(family, hf):
    from stmed.core.generate import SamplingParams

    name, _, probe = family
    _, gen = hf
    reqs = vllm_probe.requests()
    got = dict(gen.run([replace(r, seeds=[None]) for r in reqs.values()], SamplingParams(max_new_tokens=8)))
    for i, key in enumerate(reqs):
        assert probe["greedy"][key]["ids"] == got[i].ids, f"{name} {key}: greedy ids differ between engines"


def test_samples_are_stable_across_batch_mates_and_every_request_has_its_own_seed(family):
    from stmed.engines.vllm import request_seed

    name, _, probe = family
    for key in probe["alone"]:
        assert probe["alone"][key]["ids"] == probe["batch"][key]["ids"] == probe["reordered"][key]["ids"], \
            f"{name} {key}: a sample changed with its batch mates"
    assert all(isinstance(s, int) for s in probe["seeds_sent"]), "a request without a seed (vllm#51226)"
    what, fracture = probe["engine_prompt_ids"]["what"], probe["engine_prompt_ids"]["fracture"]
    assert request_seed(40, what) != request_seed(40, fracture), "one seed on two prompts must not share a stream"
    assert probe["batch"]["what"]["ids"][0] != probe["batch"]["what"]["ids"][1], "seeds 40 and 42 gave one sample"


def test_judge_logprobs_agree_with_the_transformers_engine(family, hf):
    from stmed.core.generate import choice_logprobs

    name, _, probe = family
    loaded, _ = hf
    mine = choice_logprobs(loaded, [vllm_probe.requests()["fracture"]], ["1", "2"])[0]
    for c in ("1", "2"):
        assert abs(mine[c] - probe["choice_logprobs"][c]) < 1e-3, f"{name}: log p({c}) {mine[c]} vs {probe['choice_logprobs']}"


@pytest.fixture(scope="module")
def answers_both(tmp_path_factory):
    """`stmed answer` on the same questions with the transformers engine here and with --engine vllm
    in vLLM's environment (tiny LLaVA around the real processor)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_model import build_from_processor

    folder = tmp_path_factory.mktemp("answers")
    model = build_from_processor(PROCESSORS / "llava-1.5-7b-hf", folder / "model", vllm=True)
    images = sorted(EXAMPLE_IMAGES.glob("*.jpg"))[:2]
    questions = folder / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "image": str(p), "question": q}) + "\n"
                                 for i, (p, q) in enumerate(zip(images, ["What is shown?", "Is there a fracture?"]))))
    common = ["answer", questions, "-m", model, "--device", "cpu", "--max-new-tokens", "8"]
    hf_run = run_stmed(*common, "-o", folder / "hf.jsonl")
    assert hf_run.returncode == 0, hf_run.stderr
    v = run_vllm_env("-m", "stmed.cli", *common, "--engine", "vllm", "-o", folder / "vllm.jsonl")
    assert v.returncode == 0, v.stderr[-4000:]
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    return model, read(folder / "hf.jsonl"), read(folder / "vllm.jsonl"), folder


def test_vllm_answer_records_have_the_transformers_shape(answers_both):
    _, hf_recs, vllm_recs, _ = answers_both
    assert [r["id"] for r in hf_recs] == [r["id"] for r in vllm_recs]
    for a, b in zip(hf_recs, vllm_recs):
        assert set(a) == set(b), "same record keys"
        assert [set(x) for x in a["answers"]] == [set(x) for x in b["answers"]] == [{"text", "seed", "ids"}] * 2
        assert [x["seed"] for x in b["answers"]] == [40, 42], "the recorded seeds are the paper's"
        assert a["answer_prompt"] == b["answer_prompt"], "the same prompt, fingerprint included"
        assert b["answer_gen"]["backend"] == "vllm" and set(a["answer_gen"]) <= set(b["answer_gen"])


def test_dpo_trains_on_the_ids_vllm_emitted(answers_both):
    from stmed.core.model import load_processor, ModelSpec
    from stmed.core.tokens import turn_end

    model, _, vllm_recs, folder = answers_both
    rec = vllm_recs[0]
    pair = {**rec, "chosen": rec["answers"][0]["text"], "rejected": rec["answers"][1]["text"]}
    pairs = folder / "pairs.jsonl"
    pairs.write_text(json.dumps(pair) + "\n")
    r = run_stmed("dpo", pairs, "-m", model, "-o", folder / "dpo", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    end = turn_end(load_processor(ModelSpec(str(model)))).token_id
    assert shown["chosen_ids"] == rec["answers"][0]["ids"] + [end]
    assert shown["rejected_ids"] == rec["answers"][1]["ids"] + [end]


def test_an_adapter_runs_through_vllms_lora_as_merged_weights_run_here(answers_both):
    """Round 2 of self-training needs no merge: --adapter on vLLM gives the greedy ids the
    transformers engine gives with the adapter merged into the weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from stmed.core.generate import Generator, SamplingParams
    from stmed.core.model import ModelSpec, load_model
    from stmed.train.common import LANGUAGE_PARTS, LLM_PROJECTIONS

    model, _, _, folder = answers_both
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                      target_modules=rf".*{LANGUAGE_PARTS}.*\.({'|'.join(LLM_PROJECTIONS)})")
    peft_model = get_peft_model(AutoModelForImageTextToText.from_pretrained(model), lora)
    with torch.no_grad():
        for name, w in peft_model.named_parameters():
            if "lora_" in name:
                w.mul_(3.0)  # big enough to change what a random model says
    peft_model.save_pretrained(folder / "adapter")
    probe = run_vllm_env(ROOT / "tests" / "vllm_probe.py", model, folder / "lora.json", folder / "adapter")
    assert probe.returncode == 0, probe.stderr[-4000:]
    got = json.loads((folder / "lora.json").read_text())
    reqs = vllm_probe.requests()
    gen = Generator(load_model(ModelSpec(str(model), adapter=str(folder / "adapter"), device="cpu")))
    mine = dict(gen.run([replace(r, seeds=[None]) for r in reqs.values()], SamplingParams(max_new_tokens=8)))
    plain = dict(Generator(load_model(ModelSpec(str(model), device="cpu"))).run(
        [replace(r, seeds=[None]) for r in reqs.values()], SamplingParams(max_new_tokens=8)))
    for i, key in enumerate(reqs):
        assert got[key] == mine[i].ids, f"{key}: vLLM+LoRA differs from the merged adapter"
    assert any(mine[i].ids != plain[i].ids for i in range(len(reqs))), "the adapter changed nothing to test"
