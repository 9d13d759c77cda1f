"""End-to-end data generation (gen-questions then answer) against the one-at-a-time loop.

Both sides run the same work per image: a greedy description, ``n`` sampled questions, and two
sampled answers per question. The naive side is how the original scripts generate: a plain
``model.generate`` call per sample. stmed's side is the real stage code (questions.run and
answers.run over the shared core) with batches formed across images and questions. Every
sample generates exactly its stage's length (EOS and stop strings ignored): on a GPU a
512-token description, 40-token questions and 200-token answers, about what the paper's data
holds; shorter on CPU. So tokens/s compare like for like.

``prefill_saving`` is the prompt tokens that prefilling every sample's prompt computes, over
the tokens stmed's shared prefill computes, for the whole stmed run (the paper's n: 5
questions, 2 answers). ``--unshared`` also times stmed with the shared prefill turned off.

    python tools/bench_pipeline.py                      # CPU, tiny model
    python tools/bench_pipeline.py --shape llava-proc   # CPU, LLaVA-1.5's real prompts (576 image tokens)
    python tools/bench_pipeline.py --gpu                # one GPU, LLaVA-1.5-7B shape, random bf16 weights
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
    """The real backend, with every sample forced to its stage's full length (a random model
    stops at random places otherwise, and tokens/s would compare different work)."""

    name = "hf"

    def __init__(self, loaded, batch_size: int, static: bool = False, share: bool = True):
        from stmed.core.generate import Generator

        self.loaded, self.processor = loaded, loaded.processor
        self.generator = Generator(loaded, batch_size, static_cache=static, share_prefill=share)
        self.tokens = 0

    def generate(self, requests, params):
        from dataclasses import replace

        for i, out in self.generator.run(requests, replace(params, ignore_eos=True, stop=())):
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


def stmed_pipeline(backend, records, n_questions: int, lengths: dict) -> tuple[float, int, int]:
    """(seconds, tokens generated, question records) for the real stage code."""
    from stmed.stages import answers, questions

    backend.tokens = 0
    start = time.perf_counter()
    qcfg = questions.QuestionsConfig(n=n_questions, max_tries=1, describe_max_new_tokens=lengths["describe"],
                                     max_new_tokens=lengths["question"])
    qs = [r for o in questions.run(qcfg, backend, records) for r in o.records if o.kind == "done"]
    sync()
    split = time.perf_counter()
    list(answers.run(answers.AnswersConfig(max_new_tokens=lengths["answer"]), backend, qs))
    sync()
    end = time.perf_counter()
    print(f"stmed stages: gen-questions {split - start:.1f}s, answer {end - split:.1f}s "
          f"({len(qs)} questions)", file=sys.stderr)
    return end - start, backend.tokens, len(qs)


def naive_pipeline(loaded, records, n_questions: int, lengths: dict) -> tuple[float, int]:
    """One ``generate`` call per sample, seeded through torch's global generator."""
    import torch

    from stmed import prompts
    from stmed.core.prompt import render
    from stmed.images import record_image

    proc, tok = loaded.processor, loaded.tokenizer
    made = [0]

    def one(messages, image, new_tokens, continue_as="assistant", seed=None):
        enc = proc(text=[render(proc, messages, continue_as=continue_as)], images=[image], return_tensors="pt").to(loaded.device)
        enc["pixel_values"] = enc["pixel_values"].to(loaded.dtype)
        if seed is not None:
            torch.manual_seed(seed)
        out = loaded.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=seed is not None,
                                    temperature=1.2 if seed is not None else None, top_k=100 if seed is not None else None,
                                    pad_token_id=tok.pad_token_id)
        made[0] += out.shape[1] - enc["input_ids"].shape[1]
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    start = time.perf_counter()
    for rec in records:
        image = record_image(rec)
        system = {"role": "system", "content": prompts.VUSER_SYSTEM.text}
        description = one([system, {"role": "user", "content": prompts.DESCRIBE.text}], image, lengths["describe"])
        for k in range(n_questions):
            q = one(prompts.vuser_context(description), image, lengths["question"], "user", seed=k)
            for seed in (40, 42):
                one([{"role": "user", "content": q or "?"}], image, lengths["answer"], seed=seed)
    sync()
    return time.perf_counter() - start, made[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--shape", choices=["tiny", "llava-proc", "llava-7b"],
                    help="model shape (default: tiny on CPU, 7B on GPU)")
    ap.add_argument("--images", type=int, help="images through stmed's pipeline")
    ap.add_argument("--naive-images", type=int, help="images through the one-at-a-time loop")
    ap.add_argument("--questions", type=int, default=5, help="questions per image (paper: 5)")
    ap.add_argument("--naive-questions", type=int, help="questions per image in the one-at-a-time loop")
    ap.add_argument("--describe-tokens", type=int, help="description length (GPU default 512)")
    ap.add_argument("--question-tokens", type=int, help="question length (GPU default 40)")
    ap.add_argument("--answer-tokens", type=int, help="answer length (GPU default 200)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--static-cache", action="store_true", help="static KV cache (+ compiled decode on a GPU)")
    ap.add_argument("--unshared", action="store_true", help="also time stmed without the shared prefill")
    ap.add_argument("--repeats", type=int, help="stmed runs timed, best kept (default: 1 on GPU, 2 on CPU)")
    args = ap.parse_args(argv)
    import torch

    gpu = args.gpu
    lengths = {"describe": args.describe_tokens or (512 if gpu else 32),
               "question": args.question_tokens or (40 if gpu else 8),
               "answer": args.answer_tokens or (200 if gpu else 16)}
    batch = args.batch_size or (128 if gpu else 16)
    n_images = args.images or (48 if gpu else 8)
    naive_images = args.naive_images or 1
    naive_questions = args.naive_questions or (1 if gpu else args.questions)
    shape = args.shape or ("llava-7b" if gpu else "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load(gpu, Path(tmp), shape)
        records = image_records(max(n_images, naive_images), 56 if shape == "tiny" else 336, Path(tmp))
        device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
        backend = FixedLength(loaded, batch, static=args.static_cache)
        warm_start = time.perf_counter()
        stmed_pipeline(backend, records[:2], 1, lengths)  # warm-up: one-off kernel, allocator and compile costs
        warm_s = time.perf_counter() - warm_start
        naive_s, naive_tok = naive_pipeline(loaded, records[:naive_images], naive_questions, lengths)
        plain = FixedLength(loaded, batch, static=args.static_cache, share=False) if args.unshared else None
        if plain:
            stmed_pipeline(plain, records[:2], 1, lengths)
        best, unshared = 0.0, None
        for _ in range(args.repeats or (1 if gpu else 2)):  # interleaved, so load on a shared machine hits both
            backend.generator.prompt_tokens = {"rows": 0, "computed": 0}
            ours_s, ours_tok, n_q = stmed_pipeline(backend, records[:n_images], args.questions, lengths)
            best = max(best, ours_tok / ours_s)
            if plain:
                s, t, _ = stmed_pipeline(plain, records[:n_images], args.questions, lengths)
                unshared = max(unshared or 0.0, t / s)
        counted = backend.generator.prompt_tokens
    naive_rate, ours_rate = naive_tok / naive_s, best
    print(f"one-at-a-time loop   {naive_images:>4} images  {naive_tok:>8} tokens  {naive_rate:>10,.1f} tok/s", file=sys.stderr)
    print(f"stmed (batch {batch:>3})    {n_images:>4} images  {ours_tok:>8} tokens  {ours_rate:>10,.1f} tok/s", file=sys.stderr)
    if unshared:
        print(f"stmed, every row prefilled           {unshared:>10,.1f} tok/s", file=sys.stderr)
    saving = counted["rows"] / max(1, counted["computed"])
    print(f"prompt tokens: {counted['rows']:,} prefilled row by row, {counted['computed']:,} shared "
          f"({saving:.2f}x fewer)", file=sys.stderr)
    result = {"bench": "pipeline", "device": device, "shape": shape, "lengths": lengths, "batch_size": batch,
              "static_cache": args.static_cache, "images": n_images, "questions_per_image": args.questions,
              "question_records": n_q, "naive_images": naive_images, "naive_questions_per_image": naive_questions,
              "warmup_s": round(warm_s, 1), "naive_tok_s": round(naive_rate, 1), "tok_s": round(ours_rate, 1),
              "prompt_tokens": counted, "prefill_saving": round(saving, 2), "ratio": round(ours_rate / naive_rate, 2)}
    if unshared:
        result.update(unshared_tok_s=round(unshared, 1), ratio_vs_unshared=round(ours_rate / unshared, 2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
