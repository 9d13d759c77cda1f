#!/usr/bin/env bash
# The whole loop on the embedded default, on a CPU, in a few minutes: a tiny RANDOM model asks
# questions about the bundled VQA-RAD train-only images, answers them, judges its own answers
# (local judge), trains with DPO, and both models are evaluated on a slice of the VQA-RAD test
# split. The machinery is real; the model is noise, so the numbers mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

STMED=${STMED:-.venv/bin/stmed}
TINY=${TINY:-runs/tiny-llava}
OUT=${OUT:-runs/demo}
VQA_RAD=${VQA_RAD:-../shared/data/vqa_rad/VQA_RAD Dataset Public.json}
EVAL_LIMIT=${EVAL_LIMIT:-24}
mkdir -p "$OUT"

[ -f "$TINY/config.json" ] || .venv/bin/python tools/make_tiny_model.py "$TINY"

echo "== inspect one image" >&2
$STMED inspect examples/images/synpic46720.jpg -m "$TINY" -q "Is there a fracture?" -n 2 --max-new-tokens 16

echo "== self-training round: gen-questions | answer | judge (local) | dpo" >&2
# The random judge's preferences are noise, so the paper's single-order rule keeps every pair
# (the default swap policy would rightly drop most of them as order-inconsistent).
MODEL=$TINY JUDGE=$TINY JUDGE_BACKEND=local IMAGES=examples/images ROUNDS=1 OUT=$OUT STMED=$STMED \
  N_QUESTIONS=2 GEN_ARGS="--max-new-tokens 16 --batch-size 16" QUESTION_ARGS="--describe-max-new-tokens 32" \
  JUDGE_ARGS="--policy paper --max-tokens 8" DPO_ARGS="--max-steps 4 --batch-size 2 --grad-accum 1" \
  bash examples/selftrain.sh

echo "== zero-shot VQA-RAD (first $EVAL_LIMIT test questions), base vs trained" >&2
if [ -f "$VQA_RAD" ]; then
  for name in base trained; do
    model=$TINY; [ "$name" = trained ] && model=$OUT/round-1/dpo/merged
    $STMED eval --bench vqa-rad --data "$VQA_RAD" -m "$model" --limit "$EVAL_LIMIT" --max-new-tokens 8 \
      --name "$name" -o "$OUT/eval-$name.jsonl" --summary "$OUT/eval-$name.json" --bootstrap 200
  done
  $STMED report "$OUT/eval-base.json" "$OUT/eval-trained.json" --markdown "$OUT/report.md"
else
  echo "demo: $VQA_RAD not found; skipping evaluation" >&2
fi

cat >&2 <<'TXT'

The model above is tiny and random: its words are noise and its scores mean nothing.
With a real model and judge:
  make selftrain MODEL=llava-hf/llava-1.5-7b-hf JUDGE=gpt-4o IMAGES=/path/to/images OUT=runs/real
  make eval MODEL=runs/real/round-1/dpo/merged
TXT
