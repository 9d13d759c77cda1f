"""DPO training-step throughput: stmed's step against the naive one, measured in the same run.

Both run the same LoRA DPO step (paper's LoRA: r=128 on every language-model projection;
sigmoid loss, beta 0.1; AdamW on the adapter): policy forward+backward and reference forward
(adapter disabled). They differ only in how log-probs are computed:

- naive: prompt+chosen and prompt+rejected as two full sequences each (what trl's DPOTrainer
  does), in the policy and in the reference pass;
- stmed: the image prompt once per pair with a KV cache, both answers on top of it
  (stmed.train.pairs.shared_prefix_logps; same log-probs and gradients to float precision).

Tokens/s counts the work a step does the way trl counts it (both full sequences of every
pair), so the two rows are comparable with each other and with DESIGN.md section 8.

    python tools/bench_dpo.py          # CPU, tiny model
    python tools/bench_dpo.py --gpu    # one GPU, LLaVA-1.5-7B shape, bf16; needs no trl

The last line is JSON; "ratio" is stmed over naive tokens/s at 4 pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAIVE_H200 = 4384  # DESIGN.md section 8: LoRA DPO step, 4 pairs, ~745 tokens each, one H200
WORDS = ("the chest radiograph shows the heart size the lungs and the pleural spaces; describe every finding "
         "and where it is located ").split()


def make_batch(processor, pairs: int, text_tokens: int, answer_tokens: int, device):
    """``pairs`` prompts of one image + ~``text_tokens`` of text; answers of exactly ``answer_tokens``."""
    import torch
    from PIL import Image

    from stmed.core.prompt import render
    from stmed.train.data import encode_pair
    from stmed.train.pairs import PairCollator

    tok = processor.tokenizer
    words, question = list(WORDS), ""
    ask = lambda q: [{"role": "user", "content": q}]  # noqa: E731
    while len(tok(render(processor, ask(question)), add_special_tokens=False)["input_ids"]) < text_tokens + 1:
        question += words[len(question.split()) % len(words)] + " "
    image = Image.new("RGB", (336, 336), (90, 90, 90))
    examples = [{"images": [image], **encode_pair(processor, ask(question.strip()), "a", "b")} for _ in range(pairs)]
    batch = PairCollator(processor)(examples)
    g = torch.Generator().manual_seed(0)
    batch["completion_ids"] = torch.randint(10, len(tok), (2 * pairs, answer_tokens), generator=g)
    batch["completion_attention_mask"] = torch.ones(2 * pairs, answer_tokens, dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}


def step(model, opt, batch, share_prefix: bool, sync) -> dict:
    """One DPO step; returns the seconds spent in the reference pass and in the policy pass."""
    import torch

    from stmed.train.pairs import pair_logps, sigmoid_dpo_loss

    t0 = time.perf_counter()
    with torch.no_grad(), model.disable_adapter():
        ref_c, ref_r = pair_logps(model, batch, share_prefix=share_prefix).sums()
    sync()
    t1 = time.perf_counter()
    loss, _ = sigmoid_dpo_loss(pair_logps(model, batch, share_prefix=share_prefix), ref_c, ref_r, beta=0.1)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return {"ref": t1 - t0, "policy": time.perf_counter() - t1}


def measure(model, opt, batch, share_prefix: bool, steps: int, sync, cuda: bool) -> dict:
    import torch

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step(model, opt, batch, share_prefix, sync)  # warm-up: allocator, kernels
    parts = [step(model, opt, batch, share_prefix, sync) for _ in range(steps)]
    ref, pol = sum(p["ref"] for p in parts) / steps, sum(p["policy"] for p in parts) / steps
    pairs, seq = batch["prompt_input_ids"].shape[0], batch["prompt_input_ids"].shape[1] + batch["completion_ids"].shape[1]
    out = {"seconds_per_step": round(ref + pol, 4), "tokens_per_s": round(2 * pairs * seq / (ref + pol), 1),
           "ref_share": round(ref / (ref + pol), 3), "pairs": pairs, "seq_len": seq}
    if cuda:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="LLaVA-1.5-7B shape in bf16 on cuda:0")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up)")
    ap.add_argument("--pairs", default="4,8")
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--text-tokens", type=int, default=104, help="prompt text tokens besides the image (745 in all on 7B)")
    args = ap.parse_args(argv)

    import torch
    from make_tiny_model import build_in_memory
    from peft import get_peft_model

    from stmed.train.common import DPOConfig, lora_config

    cuda = args.gpu
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    model, processor = build_in_memory("llava-7b" if cuda else "tiny", device=str(device))
    model = get_peft_model(model, lora_config(DPOConfig()))  # the paper's r=128 adapter
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-6, weight_decay=0.0)
    card = torch.cuda.get_device_name(0) if cuda else "CPU"
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0
    rows = []
    for pairs in (int(p) for p in args.pairs.split(",")):
        batch = make_batch(processor, pairs, args.text_tokens, args.answer_tokens, device)
        for name, share in (("naive", False), ("stmed", True)):
            if cuda and name == "naive" and pairs > 4 and total_gib < 120:
                rows.append({"how": name, "pairs": pairs, "skipped": "needs more than 80 GB without checkpointing"})
                continue
            try:
                rows.append({"how": name, **measure(model, opt, batch, share, args.steps, sync, cuda)})
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows.append({"how": name, "pairs": pairs, "skipped": "out of memory"})
    print(f"DPO step, {card}, LoRA r=128, answers {args.answer_tokens} tokens", file=sys.stderr)
    print(f"{'how':8} {'pairs':>5} {'seq':>5} {'s/step':>8} {'tokens/s':>9} {'ref share':>9} {'peak GiB':>8}",
          file=sys.stderr)
    for r in rows:
        if "skipped" in r:
            print(f"{r['how']:8} {r['pairs']:>5}  skipped: {r['skipped']}", file=sys.stderr)
            continue
        print(f"{r['how']:8} {r['pairs']:>5} {r['seq_len']:>5} {r['seconds_per_step']:>8.3f} {r['tokens_per_s']:>9,.0f}"
              f" {r['ref_share']:>9.2f} {r.get('peak_gib', '-'):>8}", file=sys.stderr)
    if cuda:
        print(f"{'design':8} {4:>5} {745:>5} {'':>8} {NAIVE_H200:>9,} {'':>9} {'':>8}  (DESIGN.md section 8, H200)",
              file=sys.stderr)
    by = {(r["how"], r["pairs"]): r for r in rows if "skipped" not in r}
    naive, ours = by.get(("naive", 4)), by.get(("stmed", 4))
    ratio = round(ours["tokens_per_s"] / naive["tokens_per_s"], 2) if naive and ours else None
    print(json.dumps({"bench": "dpo", "device": card, "rows": rows, "design_naive_h200": NAIVE_H200,
                      "ratio": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
