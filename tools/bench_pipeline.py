"""End-to-end data generation (gen-questions then answer) against the one-at-a-time loop.

Both sides run the same work per image: a greedy description, ``n`` sampled questions, and two
sampled answers per question. The naive side is how the original scripts generate: a plain
``model.generate`` call per sample. stmed's side is the real stage code (questions.run and
answers.run over the shared core) with batches formed across images and questions. Every
sample generates exactly ``--new-tokens`` tokens, so tokens/s compare like for like.

    python tools/bench_pipeline.py            # CPU, tiny model
    python tools/bench_pipeline.py --gpu      # one GPU, LLaVA-1.5-7B shape, random bf16 weights
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_generate import load, sync  # noqa: E402


class FixedLength:
    """The real backend, with every sample forced to the benchmark's length (a random model
    stops at random places otherwise, and tokens/s would compare different work)."""

    name, continues_as_user = "hf", True

    def __init__(self, loaded, batch_size: int, new_tokens: int, static: bool = False):
        from stmed.core.generate import Generator

        self.loaded, self.processor, self.new_tokens = loaded, loaded.processor, new_tokens
        self.generator = Generator(loaded, batch_size, static_cache=static)
        self.tokens = 0

    def generate(self, requests, params):
        from dataclasses import replace

        for i, out in self.generator.run(requests, replace(params, max_new_tokens=self.new_tokens, ignore_eos=True)):
            self.tokens += out.total_tokens
            yield i, out

    @property
    def batch_size(self):
        return self.generator.batch_size

    def describe(self):
        return {"backend": "hf", **self.loaded.describe()}


def image_records(n: int, image_size: int, workdir: Path):
    from PIL import Image

    from stmed.records import Record

    src = sorted((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.jpg"))
    recs = []
    for i in range(n):
        path = workdir / f"img{i}.png"
        Image.open(src[i % len(src)]).convert("RGB").resize((image_size, image_size)).save(path)
        recs.append(Record.at({"id": f"img{i}", "image": str(path)}, f"bench:{i}", workdir))
    return recs


def stmed_pipeline(backend, records, n_questions: int) -> tuple[float, int]:
    from stmed.records import ErrorSink
    from stmed.stages import answers, questions

    sink = ErrorSink(None)
    backend.tokens = 0
    start = time.perf_counter()
    qs = list(questions.run(questions.QuestionsConfig(n=n_questions, max_tries=1), backend, records, sink))
    sync()
    split = time.perf_counter()
    list(answers.run(answers.AnswersConfig(), backend, qs, sink))
    sync()
    end = time.perf_counter()
    print(f"stmed stages: gen-questions {split - start:.1f}s, answer {end - split:.1f}s", file=sys.stderr)
    return end - start, backend.tokens


def naive_pipeline(loaded, records, n_questions: int, new_tokens: int) -> tuple[float, int]:
    """One ``generate`` call per sample, seeded through torch's global generator."""
    import torch

    from stmed import prompts
    from stmed.core.chat import render
    from stmed.stages.common import record_image

    proc, tok = loaded.processor, loaded.tokenizer

    def one(messages, image, continue_as="assistant", seed=None):
        enc = proc(text=[render(proc, messages, continue_as=continue_as)], images=[image], return_tensors="pt").to(loaded.device)
        enc["pixel_values"] = enc["pixel_values"].to(loaded.dtype)
        if seed is not None:
            torch.manual_seed(seed)
        out = loaded.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=seed is not None,
                                    temperature=1.2 if seed is not None else None, top_k=100 if seed is not None else None,
                                    pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    start, samples = time.perf_counter(), 0
    for rec in records:
        image = record_image(rec)
        system = {"role": "system", "content": prompts.VUSER_SYSTEM.text}
        description = one([system, {"role": "user", "content": prompts.DESCRIBE.text}], image)
        for k in range(n_questions):
            q = one(prompts.vuser_context(description), image, "user", seed=k)
            for seed in (40, 42):
                one([{"role": "user", "content": q or "?"}], image, seed=seed)
                samples += 1
            samples += 1
        samples += 1
    sync()
    return time.perf_counter() - start, samples * new_tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--images", type=int, help="images through stmed's pipeline")
    ap.add_argument("--naive-images", type=int, help="images through the one-at-a-time loop")
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--static-cache", action="store_true", help="GPU: static KV cache + compiled decode")
    args = ap.parse_args(argv)
    import torch

    new_tokens = args.new_tokens or (64 if args.gpu else 16)
    batch = args.batch_size or (128 if args.gpu else 16)
    n_images = args.images or (32 if args.gpu else 8)
    naive_images = args.naive_images or (1 if args.gpu else 2)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load(args.gpu, Path(tmp))
        records = image_records(max(n_images, naive_images), 336 if args.gpu else 56, Path(tmp))
        device = torch.cuda.get_device_name(0) if args.gpu else f"CPU ({torch.get_num_threads()} threads)"
        backend = FixedLength(loaded, batch, new_tokens, static=args.static_cache)
        stmed_pipeline(backend, records[:2], 1)  # warm-up: one-off kernel and allocator costs
        naive_s, naive_tok = naive_pipeline(loaded, records[:naive_images], args.questions, new_tokens)
        ours_s, ours_tok = stmed_pipeline(backend, records[:n_images], args.questions)
    naive_rate, ours_rate = naive_tok / naive_s, ours_tok / ours_s
    print(f"one-at-a-time loop   {naive_images:>4} images  {naive_tok:>8} tokens  {naive_rate:>10,.1f} tok/s", file=sys.stderr)
    print(f"stmed (batch {batch:>3})    {n_images:>4} images  {ours_tok:>8} tokens  {ours_rate:>10,.1f} tok/s", file=sys.stderr)
    print(json.dumps({"bench": "pipeline", "device": device, "new_tokens": new_tokens, "batch_size": batch,
                      "static_cache": args.static_cache, "questions_per_image": args.questions,
                      "naive_tokens_per_s": round(naive_rate, 1), "stmed_tokens_per_s": round(ours_rate, 1),
                      "ratio": round(ours_rate / naive_rate, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
