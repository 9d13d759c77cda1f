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
EVAL_LIMIT=${EVAL_LIMIT:-24}
# Demo settings, not the paper's (lr 5e-6, one epoch over 10k pairs): on a dozen pairs the paper's
# learning rate leaves the adapter where it started (loss ln 2 = 0.693 throughout), so the demo
# trains with a large one for a few epochs, and its train_log.jsonl shows loss and margins move.
DEMO_LR=${DEMO_LR:-5e-3}
DEMO_STEPS=${DEMO_STEPS:-24}  # 4 epochs over the demo's 12 pairs, 2 pairs a step
mkdir -p "$OUT"

[ -f "$TINY/config.json" ] || .venv/bin/python tools/make_tiny_model.py "$TINY"

echo "== inspect one image" >&2
$STMED inspect examples/images/synpic46720.jpg -m "$TINY" --question "Is there a fracture?" -n 2 --max-new-tokens 16

echo "== self-training round: gen-questions | answer | judge (local) | dpo" >&2
# The random judge's preferences are noise, so the paper's single-order rule keeps every pair
# (the default swap policy would rightly drop most of them as order-inconsistent).
MODEL=$TINY JUDGE=$TINY JUDGE_BACKEND=local IMAGES=examples/images ROUNDS=1 OUT=$OUT STMED=$STMED \
  N_QUESTIONS=2 GEN_ARGS="--max-new-tokens 16 --batch-size 16" QUESTION_ARGS="--describe-max-new-tokens 32" \
  JUDGE_ARGS="--policy paper --max-tokens 8" \
  DPO_ARGS="--lr $DEMO_LR --max-steps $DEMO_STEPS --batch-size 2 --grad-accum 1" \
  bash examples/selftrain.sh

echo "== what DPO did (from $OUT/round-1/dpo/train_log.jsonl)" >&2
.venv/bin/python - "$OUT/round-1/dpo/train_log.jsonl" >&2 <<'PY'
import json, sys
steps = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
for r in (steps[0], steps[-1]):
    print(f"step {r['step']:3d}: loss {r['loss']:.3f}, reward margin {r['rewards/margins']:+.3f}, "
          f"accuracy {r['rewards/accuracies']:.2f}")
PY

echo "== zero-shot VQA-RAD (first $EVAL_LIMIT test questions, the copy in examples/data), base vs trained" >&2
for name in base trained; do
  model=$TINY; [ "$name" = trained ] && model=$OUT/round-1/dpo/merged
  $STMED eval --bench vqa-rad -m "$model" --limit "$EVAL_LIMIT" --max-new-tokens 8 \
    --name "$name" -o "$OUT/eval-$name.jsonl" --summary "$OUT/eval-$name.json" --bootstrap 200
done
$STMED report "$OUT/eval-base.json" "$OUT/eval-trained.json" --markdown "$OUT/report.md"

cat >&2 <<'TXT'

The model above is tiny and random: its words are noise and its scores mean nothing.
With a real model and judge:
  make selftrain MODEL=llava-hf/llava-1.5-7b-hf JUDGE=gpt-4o IMAGES=/path/to/images OUT=runs/real
  make eval MODEL=runs/real/round-1/dpo/merged
TXT
