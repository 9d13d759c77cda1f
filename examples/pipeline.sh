#!/usr/bin/env bash
# The STLLaVA-Med self-training loop as one shell pipeline, with a real model and judge.
#
#   MODEL=llava-hf/llava-1.5-7b-hf IMAGES=/data/pmc-images OUT=runs/real bash examples/pipeline.sh
#
# Every stage is resumable: rerun the same command after a crash or Ctrl-C and it continues.
set -euo pipefail

MODEL=${MODEL:-llava-hf/llava-1.5-7b-hf}   # policy: any HF VLM (LLaVA-Med converted to llava-hf, Qwen2-VL, ...)
JUDGE=${JUDGE:-gpt-4o}                      # the expert; needs OPENAI_API_KEY (or --base-url for vLLM)
IMAGES=${IMAGES:?set IMAGES to a folder of unlabeled medical images}
OUT=${OUT:-runs/pipeline}
mkdir -p "$OUT"

# 1. The policy describes each image (greedy), then asks 5 questions as its own virtual user
#    (T=1.2, top_k=300, top_p=0.95), and answers each twice (seeds 40 and 42, T=1.2, top_k=100).
#    The two stages stream through a pipe; --batch-size keeps the GPU full.
stmed gen-questions "$IMAGES" -m "$MODEL" -n 5 --batch-size 32 -o "$OUT/questions.jsonl"
stmed answer "$OUT/questions.jsonl" -m "$MODEL" -n 2 --seeds 40,42 --batch-size 32 -o "$OUT/answers.jsonl"

# 2. The judge rates both answers in both orders; pairs whose orders agree by >= 1 point are kept.
#    Replies are cached in SQLite: a rerun pays for nothing twice.
stmed judge "$OUT/answers.jsonl" --judge-model "$JUDGE" --concurrency 32 \
  -o "$OUT/pairs.jsonl" --skipped "$OUT/skipped.jsonl"

# 3. DPO with LoRA (beta 0.1, r=128, alpha=256, lr 5e-6, 1 epoch) and a merged copy for inference.
#    Multi-GPU: accelerate launch --config_file examples/accelerate/zero3.yaml -m stmed.cli dpo ...
stmed dpo "$OUT/pairs.jsonl" -m "$MODEL" -o "$OUT/dpo" --merge

# 4. Zero-shot evaluation of the trained model, scored as LLaVA-Med v1.0 scores. Without --data,
#    VQA-RAD and SLAKE (English) are the copies carried in examples/data; PathVQA is downloaded
#    once from the Hugging Face Hub (add --data FILE to score your own copy instead).
for bench in vqa-rad slake; do
  stmed eval --bench "$bench" -m "$OUT/dpo/merged" -o "$OUT/eval-$bench.jsonl" --summary "$OUT/eval-$bench.json"
done
stmed report "$OUT"/eval-*.json --markdown "$OUT/report.md"
