"""Shared prefill gives the same texts as prefilling every sample's prompt, at any batch size.

A request's samples (one per seed) share one prefill whose KV cache is copied to each sample's
row; the old way, still there as ``share_prefill=False``, runs the whole prompt for every row.
Checked on the tiny LLaVA and on tiny models around every family's processor in test_families
(LLaVA-1.5, Qwen2-VL, whose M-RoPE keeps per-row position offsets that must follow the rows,
LLaVA-NeXT and Gemma 3), with the dynamic and the static KV cache.
"""

from __future__ import annotations

import sys

import pytest

from conftest import EXAMPLE_IMAGES, ROOT
from test_families import FAMILIES, TOKENIZER_FILES, TOKENIZER_FROM
from stmed.core.generate import GenRequest, Generator, SamplingParams
from stmed.core.model import ModelSpec, load_model
from stmed.images import load_image, prepare

pytestmark = pytest.mark.slow

QUESTIONS = ["What is shown?", "Is there a fracture of the left femur in this radiograph, and where exactly?",
             "Where?", "Describe the image in detail, including every organ you can see."]
SAMPLED = SamplingParams(max_new_tokens=10, temperature=1.2, top_k=100, top_p=0.95)
GREEDY = SamplingParams(max_new_tokens=10)


def _images(max_pixels: int | None = None):
    return [prepare(load_image(p)[0], max_pixels=max_pixels) for p in sorted(EXAMPLE_IMAGES.glob("*.jpg"))[:3]]


def _requests(images, seeds) -> list[GenRequest]:
    reqs = [GenRequest([{"role": "user", "content": q}], images[i % len(images)], seeds=list(seeds))
            for i, q in enumerate(QUESTIONS)]
    return reqs + [GenRequest([{"role": "user", "content": "Is a text-only question answered too?"}], None,
                              seeds=list(seeds))]


def _texts(loaded, reqs, params, batch_size, **kwargs) -> tuple[list[list[str]], Generator]:
    gen = Generator(loaded, batch_size, **kwargs)
    out = dict(gen.run(reqs, params))
    assert sorted(out) == list(range(len(reqs))), "every request gets exactly one output"
    return [out[i].texts for i in range(len(reqs))], gen


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(ModelSpec(str(tiny_model), device="cpu"))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    import shutil

    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_model import build_from_processor

    fixtures, where = ROOT / "tests" / "fixtures" / "processors", tmp_path_factory.mktemp("prefill")
    folder = fixtures / request.param
    if request.param in TOKENIZER_FROM:  # as test_families builds it
        folder = shutil.copytree(folder, where / "processor")
        for f in TOKENIZER_FILES:
            if (fixtures / TOKENIZER_FROM[request.param] / f).exists():
                shutil.copyfile(fixtures / TOKENIZER_FROM[request.param] / f, folder / f)
    return load_model(ModelSpec(str(build_from_processor(folder, where / request.param, seed=0)), device="cpu"))


def test_tiny_model_shared_equals_old_path(tiny):
    reqs = _requests(_images(), seeds=(40, 42, 7))
    old, old_gen = _texts(tiny, reqs, SAMPLED, 1, share_prefill=False)
    assert old_gen.prompt_tokens["computed"] == old_gen.prompt_tokens["rows"], "the old way prefills every row"
    for bs in (1, 2, 3, 8, 16):
        new, gen = _texts(tiny, reqs, SAMPLED, bs)
        assert new == old, f"batch {bs}: shared prefill changed the samples"
        if bs >= 3:
            assert gen.prompt_tokens["computed"] < gen.prompt_tokens["rows"] / 2, gen.prompt_tokens
    assert all(len(set(t)) == 3 for t in old), "different seeds must still give different samples"
    greedy = _texts(tiny, _requests(_images(), seeds=(None, None)), GREEDY, 4)[0]
    assert greedy == _texts(tiny, _requests(_images(), seeds=(None, None)), GREEDY, 4, share_prefill=False)[0]


def test_tiny_model_stop_strings_and_ignore_eos_with_sharing(tiny):
    reqs = _requests(_images(), seeds=(1, 2))
    for params in (SamplingParams(16, 1.2, 100, 0.95, stop=("a",)), SamplingParams(7, 1.2, 100, 0.95, ignore_eos=True)):
        old = dict(Generator(tiny, 1, share_prefill=False).run(reqs, params))
        new = dict(Generator(tiny, 8).run(reqs, params))
        assert [(new[i].texts, new[i].tokens) for i in new] == [(old[i].texts, old[i].tokens) for i in new]


def test_static_cache_same_texts_and_one_cache_per_run(tiny):
    reqs = _requests(_images(), seeds=(40, 42))
    old = _texts(tiny, reqs, SAMPLED, 1, share_prefill=False)[0]
    static, gen = _texts(tiny, reqs, SAMPLED, 4, static_cache=True)
    assert static == old, "the static cache changed the samples"
    rows, size, cache = gen._static
    assert rows == 4 and size % 256 == 0, gen._static
    # prompts of other lengths and a second call reuse the same cache (one compiled decode step)
    list(gen.run(reqs[2:], SAMPLED))
    list(gen.run([GenRequest([{"role": "user", "content": "Why? " * 20}], reqs[0].image, seeds=[3])], SAMPLED))
    assert gen._static[2] is cache, "a new cache (and a new compile) for a prompt that fits the bucket"


def test_families_shared_equals_old_path(family):
    reqs = _requests(_images(max_pixels=50176), seeds=(40, 42, 7))
    old = _texts(family, reqs, SAMPLED, 1, share_prefill=False)[0]
    for bs in (3, 8):
        assert _texts(family, reqs, SAMPLED, bs)[0] == old, f"batch {bs}: shared prefill changed the samples"
    assert _texts(family, reqs, SAMPLED, 4, static_cache=True)[0] == old, "static cache changed the samples"


def test_static_cache_decode_step_traced_once_per_bucket(tiny):
    """What --static-cache compiles on a GPU, traced here with dynamo's eager backend on the CPU:
    prompts of other lengths and later calls reuse the one graph; a prompt past the cache's
    length bucket grows the cache, and only then is the step traced again."""
    import torch
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    config = CompileConfig(backend="eager", mode=None)
    config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    before = tiny.model.generation_config.compile_config
    tiny.model.generation_config.compile_config = config
    torch._dynamo.reset()
    counters.clear()
    image = _images()[0]
    try:
        gen = Generator(tiny, 4, static_cache=True)
        for words in ([1, 2, 3, 4, 5], [30, 31], [2]):
            reqs = [GenRequest([{"role": "user", "content": "why " * w}], image, seeds=[1, 2]) for w in words]
            list(gen.run(reqs, SAMPLED))
        assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
        list(gen.run([GenRequest([{"role": "user", "content": "why " * 300}], image, seeds=[1])], SAMPLED))
        assert gen._static[1] > 256 and counters["stats"]["unique_graphs"] == 2, (gen._static, dict(counters["stats"]))
    finally:
        tiny.model.generation_config.compile_config = before
        torch._dynamo.reset()
