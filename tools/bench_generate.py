"""Generation throughput: stmed's core against the naive ways, measured in the same run.

CPU mode (default) uses the tiny random model from tools/make_tiny_model.py (``--shape
llava-proc``: tiny weights around the real llava-1.5-7b-hf processor, so prompts have LLaVA-1.5's
576 image tokens and real lengths). ``--gpu`` builds a LLaVA-1.5-7B-shaped model with random
bf16 weights in memory (CLIP ViT-L/14-336, 576 image tokens, Llama-7B text model) and prints
the table of DESIGN.md section 8.

Rows: one sample at a time (how the original scripts generate), plain batched ``generate``
(the HF call with nothing around it), and stmed's Generator (greedy and seeded sampling; on
a GPU also the static KV cache with compiled decode, its one-time compile reported apart as
``compile_s``). ``--samples N`` adds rows with N seeds per prompt (gen-questions asks 5, answer
2), with and without the shared prefill. The last line is JSON; its "ratio" is stmed at the
headline batch size over one-at-a-time.

    python tools/bench_generate.py                 # CPU, tiny model
    python tools/bench_generate.py --gpu           # one GPU, 7B shape
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

QUESTIONS = ["Describe the image in detail.", "Is there a fracture?", "What organ is shown in this scan?",
             "Where is the abnormality located, and what could it be?", "Which modality is this?",
             "Is the heart size normal?", "Are there signs of pleural effusion on either side?", "What plane is this?"]


def load(gpu: bool, workdir: Path, shape: str | None = None):
    """CPU: the tiny model saved and loaded like a checkpoint. GPU: the 7B shape built in place."""
    import torch
    from make_tiny_model import build, build_in_memory

    from stmed.core.model import Loaded, ModelSpec, load_model

    shape = shape or ("llava-7b" if gpu else "tiny")
    if not gpu and shape == "tiny":
        return load_model(ModelSpec(str(build(workdir / "tiny", seed=0)), device="cpu", dtype="float32"))
    if shape == "llava-proc":
        from make_tiny_model import build_from_processor

        folder = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "processors" / "llava-1.5-7b-hf"
        return load_model(ModelSpec(str(build_from_processor(folder, workdir / shape, seed=0)),
                                    device="cuda" if gpu else "cpu", dtype="float32"))
    device = torch.device("cuda" if gpu else "cpu")
    model, proc = build_in_memory(shape, device=str(device))
    proc.tokenizer.padding_side = "left"
    model.eval()
    torch.set_grad_enabled(False)
    dtype = next(model.parameters()).dtype
    spec = ModelSpec(f"random-{shape}", device=str(device), dtype=str(dtype).replace("torch.", ""))
    return Loaded(model=model, processor=proc, spec=spec, device=device, dtype=dtype)


def requests(n: int, image_size: int):
    from PIL import Image

    from stmed.core.generate import GenRequest

    root = Path(__file__).resolve().parents[1] / "examples" / "images"
    images = [Image.open(p).convert("RGB").resize((image_size, image_size)) for p in sorted(root.glob("*.jpg"))]
    return [GenRequest([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], images[i % len(images)])
            for i in range(n)]


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_generate(loaded, reqs, batch: int, new_tokens: int) -> float:
    """The HF call with nothing around it: processor, generate, decode."""
    import torch

    from stmed.core.prompt import render

    tok = loaded.tokenizer
    start = time.perf_counter()
    for i in range(0, len(reqs), batch):
        chunk = reqs[i:i + batch]
        enc = loaded.processor(text=[render(loaded.processor, r.messages) for r in chunk], images=[r.image for r in chunk],
                               padding=True, return_tensors="pt").to(loaded.device)
        enc["pixel_values"] = enc["pixel_values"].to(loaded.dtype)
        with torch.inference_mode():
            out = loaded.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                        pad_token_id=tok.pad_token_id)
        tok.batch_decode(out[:, enc["input_ids"].shape[1]:])
    sync()
    return time.perf_counter() - start


def stmed_generate(loaded, reqs, batch: int, new_tokens: int, *, sampled: bool = False, static: bool = False,
                   samples: int = 1, share: bool = True, gen=None) -> float:
    """Seconds for stmed's Generator over ``reqs`` (``samples`` seeds per request when sampled);
    pass ``gen`` to reuse one Generator (and its static cache) across calls."""
    from stmed.core.generate import GenRequest, Generator, SamplingParams

    params = SamplingParams(new_tokens, 1.2 if sampled else 0.0, 100, 0.95, ignore_eos=True)
    if sampled:
        reqs = [GenRequest(r.messages, r.image, seeds=[40 + samples * i + k for k in range(samples)])
                for i, r in enumerate(reqs)]
    gen = gen or Generator(loaded, batch, static_cache=static, share_prefill=share)
    start = time.perf_counter()
    for _ in gen.run(reqs, params):
        pass
    sync()
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--shape", choices=["tiny", "llava-proc", "llava-7b"],
                    help="model shape (default: tiny on CPU, 7B on GPU)")
    ap.add_argument("--samples", type=int, default=0,
                    help="also time N seeds per prompt, with and without the shared prefill (0: skip)")
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes")
    ap.add_argument("--naive-requests", type=int, help="requests timed one at a time (the slow row)")
    ap.add_argument("--no-static", action="store_true", help="GPU: skip the static-cache rows (compile takes ~1 min)")
    ap.add_argument("--static", action="store_true", help="CPU: add the static-cache rows (not compiled on a CPU)")
    args = ap.parse_args(argv)
    import torch

    new_tokens = args.new_tokens or 64 if args.gpu else args.new_tokens or 32
    batches = [int(b) for b in (args.batches or ("16,64,128" if args.gpu else "16")).split(",")]
    naive_n = args.naive_requests or (8 if args.gpu else 16)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load(args.gpu, Path(tmp), args.shape)
        image_size = 56 if (args.shape or ('llava-7b' if args.gpu else 'tiny')) == 'tiny' else 336
        compile_s: dict[int, float] = {}
        device = torch.cuda.get_device_name(0) if args.gpu else f"CPU ({torch.get_num_threads()} threads)"
        rows = []
        repeats = 1 if args.gpu else 2  # GPU rows are long enough; CPU rows are short and noisy

        def row(name, batch, n, run, samples=1):
            seconds = min(run() for _ in range(repeats))  # best of: one-off shape costs are not throughput
            rows.append({"how": name, "batch": batch, "requests": n,
                         "tokens_per_s": round(n * samples * new_tokens / seconds, 1)})
            print(f"{name:<44} batch {batch:>4}  {rows[-1]['tokens_per_s']:>10,.1f} tok/s", file=sys.stderr, flush=True)

        warm = requests(2, image_size)
        plain_generate(loaded, warm, 2, 4)  # first call pays one-off costs (kernels, allocator)
        reqs = requests(naive_n, image_size)
        row("one at a time (original scripts)", 1, naive_n, lambda: plain_generate(loaded, reqs, 1, new_tokens))
        for b in batches:
            reqs = requests(max(b, naive_n) * (1 if args.gpu else 2), image_size)
            plain_generate(loaded, reqs[:b], b, 4)  # each batch shape's first-use cost stays out of every row
            row("plain batched generate", b, len(reqs), lambda: plain_generate(loaded, reqs, b, new_tokens))
            row("stmed greedy", b, len(reqs), lambda: stmed_generate(loaded, reqs, b, new_tokens))
            row("stmed seeded sampling", b, len(reqs),
                lambda: stmed_generate(loaded, reqs, b, new_tokens, sampled=True))
            if args.samples:
                per = max(1, len(reqs) // args.samples)  # the same number of rows as the rows above
                row(f"stmed sampling, {args.samples} per prompt, shared prefill", b, per,
                    lambda: stmed_generate(loaded, reqs[:per], b, new_tokens, sampled=True, samples=args.samples),
                    samples=args.samples)
                row(f"stmed sampling, {args.samples} per prompt, every row prefilled", b, per,
                    lambda: stmed_generate(loaded, reqs[:per], b, new_tokens, sampled=True, samples=args.samples,
                                           share=False), samples=args.samples)
            if (args.gpu and not args.no_static) or args.static:
                try:
                    from stmed.core.generate import Generator

                    gen = Generator(loaded, b, static_cache=True)
                    # One batch, timed twice: the first pays the compile (one per run: fixed batch,
                    # one cache-length bucket); the difference is the compile time.
                    first = stmed_generate(loaded, reqs[:b], b, new_tokens, gen=gen)
                    again = stmed_generate(loaded, reqs[:b], b, new_tokens, gen=gen)
                    compile_s[b] = round(first - again, 1)
                    print(f"static cache at batch {b}: compile {compile_s[b]:.1f}s", file=sys.stderr)
                    row("stmed greedy, static cache" + (" + compiled decode" if args.gpu else ""), b, len(reqs),
                        lambda: stmed_generate(loaded, reqs, b, new_tokens, gen=gen))
                except Exception as e:  # report, keep the other rows
                    print(f"static cache at batch {b} failed: {type(e).__name__}: {e}", file=sys.stderr)
    naive = rows[0]["tokens_per_s"]
    head = batches[0] if not args.gpu else max(batches)
    best = max(r["tokens_per_s"] for r in rows if r["batch"] == head and r["how"].startswith("stmed"))
    plain = max(r["tokens_per_s"] for r in rows if r["batch"] == head and r["how"].startswith("plain"))
    print(json.dumps({"bench": "generate", "device": device, "new_tokens": new_tokens, "rows": rows,
                      "ratio": round(best / naive, 2), "ratio_vs_plain_batched": round(best / plain, 2),
                      "headline_batch": head, "compile_s": compile_s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
