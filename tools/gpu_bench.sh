#!/usr/bin/env bash
# The GPU benchmarks as one prepared run (about 10 minutes on one H100/H200): generation core,
# data-generation pipeline and DPO steps on the LLaVA-1.5-7B-shaped random model. Each part has
# its own time limit so one failure never hides the others. Logs and JSON lines go to $OUT (or runs/gpu).
#   generate: batch 64 and 128; greedy, seeded, 5 samples per prompt with and without the shared
#             prefill, and the static cache with its one-time compile reported apart (compile_s).
#   pipeline: gen-questions then answer on 32 images at realistic lengths (512-token descriptions,
#             40-token questions, 200-token answers), batch 128; the one-at-a-time loop runs one
#             image with one question (its tokens/s is the baseline).
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/device.txt"
timeout 300 python3 tools/bench_generate.py --gpu --batches 64,128 --samples 5 > "$OUT/generate.json" 2> "$OUT/generate.log"; echo "generate rc=$?"
tail -14 "$OUT/generate.log"; cat "$OUT/generate.json"
timeout 240 python3 tools/bench_pipeline.py --gpu --images 32 > "$OUT/pipeline.json" 2> "$OUT/pipeline.log"; echo "pipeline rc=$?"
tail -8 "$OUT/pipeline.log"; cat "$OUT/pipeline.json"
timeout 200 python3 tools/bench_dpo.py --gpu > "$OUT/dpo.json" 2> "$OUT/dpo.log"; echo "dpo rc=$?"
tail -12 "$OUT/dpo.log"; cat "$OUT/dpo.json"
