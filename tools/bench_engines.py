"""Data generation (gen-questions then answer) on the transformers engine and on the vLLM engine,
in one run on the same model and images, with vLLM's own throughput benchmark as the ceiling.

Run it with vLLM's environment (which has transformers too): ``.venv-vllm/bin/python``. Every
sample generates exactly its stage's length (EOS and stop strings ignored): on a GPU a 512-token
description, 5 questions of 40 tokens and 2 answers of 200 tokens per question; shorter on CPU.
Both engines run the real stage code (stmed.stages.questions and .answers). The ceiling is
``vllm bench throughput`` (random text prompts, EOS ignored) at each phase's prompt and output
lengths and counts, its output tokens over its time summed over the three phases.

    .venv-vllm/bin/python tools/bench_engines.py          # CPU: tiny LLaVA around the real processor
    .venv-vllm/bin/python tools/bench_engines.py --gpu    # one GPU, LLaVA-1.5-7B shape, random bf16

The last line is one JSON object: ``tok_s`` per engine, ``ratio`` (vLLM / transformers),
``ceiling_tok_s`` and ``of_ceiling`` (stmed on vLLM / the raw engine).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from bench_pipeline import image_records, stmed_pipeline  # noqa: E402


class Forced:
    """An engine with every sample forced to its full length, counting what it generates."""

    def __init__(self, engine):
        self.engine, self.name, self.processor = engine, engine.name, engine.processor
        self.batch_size, self.tokens = engine.batch_size, 0

    def describe(self):
        return self.engine.describe()

    def generate(self, requests, params):
        for i, out in self.engine.generate(requests, replace(params, ignore_eos=True, stop=())):
            self.tokens += out.total_tokens
            yield i, out


def build_model(gpu: bool, folder: Path) -> Path:
    from make_tiny_model import build, build_from_processor, hub_vision_keys

    if not gpu:
        return build_from_processor(ROOT / "tests" / "fixtures" / "processors" / "llava-1.5-7b-hf", folder, vllm=True)
    out = build(folder, shape="llava-7b", device="cuda")
    hub_vision_keys(out)  # the key names vLLM reads
    return out


def run_engine(name: str, model: Path, records, lengths: dict, batch: int, gpu: bool) -> dict:
    from stmed.core.model import ModelSpec
    from stmed.engines import EngineOptions, open_engine

    spec = ModelSpec(str(model), device="cuda" if gpu else "cpu")
    options = EngineOptions(engine=name, batch_size=batch, static_cache=False,
                            gpu_memory_utilization=0.85, max_model_len=4096)
    start = time.perf_counter()
    engine = Forced(open_engine(options, spec))
    load_s = time.perf_counter() - start
    stmed_pipeline(engine, records[:2], 1, lengths)  # warm-up: kernels, allocator, graphs
    seconds, tokens, n_q = stmed_pipeline(engine, records, 5, lengths)
    result = {"load_s": round(load_s, 1), "seconds": round(seconds, 2), "tokens": tokens,
              "tok_s": round(tokens / seconds, 1), "questions": n_q, **engine.describe()}
    del engine
    gc.collect()
    if gpu:
        import torch

        torch.cuda.empty_cache()
    return result


def ceiling(model: Path, phases: list[tuple[int, int, int]], gpu: bool) -> dict:
    """vLLM's own throughput benchmark at (prompt tokens, output tokens, requests) per phase."""
    from vllm.benchmarks.throughput import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    seconds = tokens = 0.0
    for prompt_len, output_len, n in phases:
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            argv = ["--model", str(model), "--dataset-name", "random", "--random-input-len", str(prompt_len),
                    "--random-output-len", str(output_len), "--num-prompts", str(n), "--max-model-len", "4096",
                    "--output-json", f.name, "--dtype", "bfloat16" if gpu else "float32"]
            if gpu:
                argv += ["--gpu-memory-utilization", "0.85"]
            else:
                argv += ["--enforce-eager"]
            main(parser.parse_args(argv))
            got = json.loads(Path(f.name).read_text())
        seconds += got["elapsed_time"]
        tokens += output_len * n
    return {"tok_s": round(tokens / seconds, 1), "seconds": round(seconds, 2), "phases": phases}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--images", type=int, help="images (default: 64 on GPU, 4 on CPU)")
    ap.add_argument("--batch-size", type=int, help="default: 256 on GPU, 16 on CPU")
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--no-ceiling", action="store_true")
    args = ap.parse_args(argv)
    gpu = args.gpu
    lengths = {"describe": 512, "question": 40, "answer": 200} if gpu else {"describe": 16, "question": 8, "answer": 12}
    n_images, batch = args.images or (64 if gpu else 4), args.batch_size or (256 if gpu else 16)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(gpu, Path(tmp) / "model")
        records = image_records(n_images, 336, Path(tmp))
        results = {name: run_engine(name, model, records, lengths, batch, gpu) for name in args.engines.split(",")}
        for name, r in results.items():
            print(f"{name:>5}: {r['tokens']:,} tokens in {r['seconds']:.1f}s = {r['tok_s']:,.1f} tok/s "
                  f"(load {r['load_s']:.0f}s)", file=sys.stderr)
        # LLaVA-1.5 prompts: 576 image tokens plus the text of each phase
        phases = [(600, lengths["describe"], n_images), (600 + lengths["describe"] + 60, lengths["question"], 5 * n_images),
                  (620, lengths["answer"], 10 * n_images)]
        top = None if args.no_ceiling else ceiling(model, phases, gpu)
    out = {"bench": "engines", "device": _device(gpu), "lengths": lengths, "images": n_images, "batch_size": batch,
           "tok_s": {k: v["tok_s"] for k, v in results.items()}, "runs": results}
    if "hf" in results and "vllm" in results:
        out["ratio"] = round(results["vllm"]["tok_s"] / results["hf"]["tok_s"], 2)
    if top is not None and "vllm" in results:
        out.update(ceiling_tok_s=top["tok_s"], of_ceiling=round(results["vllm"]["tok_s"] / top["tok_s"], 3),
                   ceiling=top)
    print(json.dumps(out))
    return 0


def _device(gpu: bool) -> str:
    import torch

    return torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    raise SystemExit(main())
