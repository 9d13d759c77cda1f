"""Runs stmed's vLLM engine on a few requests and writes what came back as JSON; run by
tests/test_vllm.py with the Python of .venv-vllm (vLLM's own environment):

    .venv-vllm/bin/python tests/vllm_probe.py MODEL OUT.json            # the checks of test_vllm.py
    .venv-vllm/bin/python tests/vllm_probe.py MODEL OUT.json ADAPTER    # greedy ids through vLLM's LoRA

The requests are defined here, so the test builds the very same ones for the transformers
engine in the project's environment and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLED = dict(max_new_tokens=8, temperature=1.2, top_k=100, top_p=0.95)


def requests():
    """name -> GenRequest: two answer prompts with images, and the vuser continuation that
    gen-questions sends (the model continues in the user's role after its description)."""
    from PIL import Image

    from stmed import prompts
    from stmed.core.generate import GenRequest

    a, b = (Image.open(p).convert("RGB") for p in sorted((ROOT / "examples" / "images").glob("*.jpg"))[:2])
    vuser = prompts.vuser_context("A frontal chest radiograph with clear lungs.")
    return {
        "what": GenRequest([{"role": "user", "content": "What is shown?"}], a, seeds=[40, 42]),
        "fracture": GenRequest([{"role": "user", "content": "Is there a fracture?"}], b, seeds=[40]),
        "vuser": GenRequest(vuser, a, seeds=[7, 8], continue_as="user"),
    }


def main(model: str, out: str) -> None:
    from dataclasses import replace

    from stmed.core.generate import SamplingParams
    from stmed.core.model import ModelSpec
    from stmed.engines.vllm import VLLMEngine

    engine = VLLMEngine(ModelSpec(model, device="cpu"), max_model_len=2048)
    sent: list = []
    generate = engine.llm.generate

    def spy(prompts, sampling, **kwargs):  # every request vLLM gets, with its seed
        sent.extend(s.seed for s in sampling)
        return generate(prompts, sampling, **kwargs)

    engine.llm.generate = spy
    reqs = requests()
    names = list(reqs)
    sampled = SamplingParams(**SAMPLED)

    def run(order: list[str], params: SamplingParams = sampled) -> dict:
        got = dict(engine.generate([reqs[n] for n in order], params))
        return {order[i]: {"texts": o.texts, "ids": o.ids, "prompt_ids": o.prompt_ids} for i, o in got.items()}

    greedy = {n: replace(r, seeds=[None]) for n, r in reqs.items()}
    result = {
        "engine_prompt_ids": {n: engine.prompt_ids(r) for n, r in reqs.items()},
        "batch": run(names),
        "alone": run(["what"]),
        "reordered": run(list(reversed(names))),
        "greedy": {n: v for n, v in zip(names, (o for _, o in engine.generate(list(greedy.values()),
                                                                             SamplingParams(max_new_tokens=8))))},
        "choice_logprobs": engine.choice_logprobs([reqs["fracture"]], ["1", "2"])[0],
    }
    result["greedy"] = {n: {"texts": o.texts, "ids": o.ids} for n, o in result["greedy"].items()}
    result["seeds_sent"] = sent
    Path(out).write_text(json.dumps(result), encoding="utf-8")


def with_adapter(model: str, adapter: str, out: str) -> None:
    from dataclasses import replace

    from stmed.core.generate import SamplingParams
    from stmed.core.model import ModelSpec
    from stmed.engines.vllm import VLLMEngine

    engine = VLLMEngine(ModelSpec(model, adapter=adapter, device="cpu"), max_model_len=2048)
    reqs = requests()
    got = dict(engine.generate([replace(r, seeds=[None]) for r in reqs.values()], SamplingParams(max_new_tokens=8)))
    Path(out).write_text(json.dumps({name: got[i].ids for i, name in enumerate(reqs)}), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) > 3:
        with_adapter(sys.argv[1], sys.argv[3], sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
