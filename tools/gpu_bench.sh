#!/usr/bin/env bash
# The GPU benchmarks as one prepared run (about 8 minutes on one H100/H200): generation core,
# data-generation pipeline and DPO steps on the LLaVA-1.5-7B-shaped random model. Each part has
# its own time limit so one failure never hides the others. Logs and JSON lines go to $OUT (or runs/gpu).
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/device.txt"
timeout 230 python3 tools/bench_generate.py --gpu --batches 16,64,128 > "$OUT/generate.json" 2> "$OUT/generate.log"; echo "generate rc=$?"
tail -12 "$OUT/generate.log"; cat "$OUT/generate.json"
timeout 130 python3 tools/bench_pipeline.py --gpu > "$OUT/pipeline.json" 2> "$OUT/pipeline.log"; echo "pipeline rc=$?"
tail -5 "$OUT/pipeline.log"; cat "$OUT/pipeline.json"
timeout 200 python3 tools/bench_dpo.py --gpu > "$OUT/dpo.json" 2> "$OUT/dpo.log"; echo "dpo rc=$?"
tail -12 "$OUT/dpo.log"; cat "$OUT/dpo.json"
