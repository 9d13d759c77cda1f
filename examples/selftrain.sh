#!/usr/bin/env bash
# Rounds of self-training, stage by stage into OUT/round-K/; round K+1 starts from round K's
# merged model. Each stage is resumable, and a stage that finished cleanly (exit 0) leaves a
# .done marker so a rerun skips it without loading a model. A stage that finished with some
# failed records (exit 1) goes on, unmarked: the next run retries only those records.
#
#   MODEL=... JUDGE=gpt-4o IMAGES=... ROUNDS=2 OUT=runs/st bash examples/selftrain.sh
set -euo pipefail

MODEL=${MODEL:-llava-hf/llava-1.5-7b-hf}  # round 1's policy
JUDGE=${JUDGE:-gpt-4o}                     # judge model (a served name, or a local model for JUDGE_BACKEND=local)
JUDGE_BACKEND=${JUDGE_BACKEND:-openai}     # openai | batch | local
IMAGES=${IMAGES:-examples/images}          # folder (or JSONL) of unlabeled images
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-runs/selftrain}
STMED=${STMED:-stmed}
N_QUESTIONS=${N_QUESTIONS:-5}              # paper: 5 questions per image
N_ANSWERS=${N_ANSWERS:-2}                  # paper: 2 answers, seeds 40 and 42
ENGINE=${ENGINE:-hf}                       # hf | vllm: the engine gen-questions, answer and a local judge run on
GEN_ARGS=${GEN_ARGS:-}                     # extra flags for gen-questions and answer (e.g. --batch-size 32)
QUESTION_ARGS=${QUESTION_ARGS:-}           # extra flags for gen-questions only (e.g. --strategy instruct)
JUDGE_ARGS=${JUDGE_ARGS:-}                 # extra flags for judge (e.g. --concurrency 32, --policy paper)
DPO_ARGS=${DPO_ARGS:-}                     # extra flags for dpo (e.g. --max-steps 100)
# A launcher for many GPUs, e.g. LAUNCH="accelerate launch --config_file examples/accelerate/ddp.yaml":
# gen-questions, answer, a local judge and dpo then run as its processes (each generation process
# takes a share of the input and the main one merges the parts; dpo trains data-parallel).
LAUNCH=${LAUNCH:-}
if [ -n "$LAUNCH" ]; then RUN="$LAUNCH -m stmed.cli"; else RUN=$STMED; fi
GEN_RUN=$RUN
if [ "$ENGINE" = vllm ] && [ -z "$LAUNCH" ]; then GEN_RUN=${VLLM_STMED:-.venv-vllm/bin/stmed}; fi  # vLLM's own environment
JUDGE_RUN=$STMED
if [ "$JUDGE_BACKEND" = local ]; then JUDGE_RUN=$GEN_RUN; JUDGE_ARGS="--engine $ENGINE $JUDGE_ARGS"; fi

stage() {  # stage NAME DIR COMMAND...: run unless DIR/.NAME.done exists
  local name=$1 dir=$2; shift 2
  if [ -f "$dir/.$name.done" ]; then
    echo "selftrain: $dir: $name already complete, skipped" >&2
    return 0
  fi
  local rc=0
  "$@" || rc=$?
  case $rc in
    0) touch "$dir/.$name.done" ;;
    1) echo "selftrain: $dir: $name finished with failed records (rerun to retry them)" >&2 ;;
    *) echo "selftrain: $dir: $name failed (exit $rc)" >&2; exit "$rc" ;;
  esac
}

policy=$MODEL
for k in $(seq 1 "$ROUNDS"); do
  dir=$OUT/round-$k
  mkdir -p "$dir"
  echo "selftrain: round $k of $ROUNDS, policy $policy" >&2
  # A different seed per round: new questions about the same images.
  # shellcheck disable=SC2086
  stage questions "$dir" $GEN_RUN gen-questions "$IMAGES" -m "$policy" -n "$N_QUESTIONS" --seed "$k" --engine "$ENGINE" \
    $GEN_ARGS $QUESTION_ARGS \
    -o "$dir/questions.jsonl"
  # shellcheck disable=SC2086
  stage answers "$dir" $GEN_RUN answer "$dir/questions.jsonl" -m "$policy" -n "$N_ANSWERS" --engine "$ENGINE" $GEN_ARGS \
    -o "$dir/answers.jsonl"
  # shellcheck disable=SC2086
  stage judge "$dir" $JUDGE_RUN judge "$dir/answers.jsonl" --backend "$JUDGE_BACKEND" --judge-model "$JUDGE" $JUDGE_ARGS \
    -o "$dir/pairs.jsonl" --skipped "$dir/skipped.jsonl" --cache "$OUT/judge-cache.sqlite"
  # --resume: a dpo killed after a checkpoint goes on from it (with none, it starts fresh)
  # shellcheck disable=SC2086
  stage dpo "$dir" $RUN dpo "$dir/pairs.jsonl" -m "$policy" -o "$dir/dpo" --merge --resume $DPO_ARGS
  policy=$dir/dpo/merged
done
echo "selftrain: done; final model $policy" >&2
