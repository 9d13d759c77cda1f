#!/usr/bin/env bash
# The GPU benchmarks as one prepared run (about 10 minutes on one H100/H200): generation core,
# data-generation pipeline and DPO steps on the LLaVA-1.5-7B-shaped random model. Each part has
# its own time limit so one failure never hides the others. Logs and JSON lines go to $OUT (or runs/gpu).
#   generate: batch 64 and 128; greedy, seeded, 5 samples per prompt with and without the shared
#             prefill, and the static cache with its one-time compile reported apart (compile_s).
#   pipeline: gen-questions then answer on 32 images at realistic lengths (512-token descriptions,
#             40-token questions, 200-token answers), batch 128; the one-at-a-time loop runs one
#             image with one question (its tokens/s is the baseline).
#   engines:  the pipeline on the transformers and the vLLM engine side by side, and vLLM's own
#             throughput benchmark as the ceiling (PARTS=engines runs this part alone, inside 8 minutes).
set -u
OUT=${OUT:-runs/gpu}
PARTS=${PARTS:-generate pipeline dpo engines}
part() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/device.txt"
part generate && timeout 300 python3 tools/bench_generate.py --gpu --batches 64,128 --samples 5 > "$OUT/generate.json" 2> "$OUT/generate.log"; echo "generate rc=$?"
part generate && { tail -14 "$OUT/generate.log"; cat "$OUT/generate.json"; }
part pipeline && timeout 240 python3 tools/bench_pipeline.py --gpu --images 32 > "$OUT/pipeline.json" 2> "$OUT/pipeline.log"; echo "pipeline rc=$?"
part pipeline && { tail -8 "$OUT/pipeline.log"; cat "$OUT/pipeline.json"; }
part dpo && timeout 200 python3 tools/bench_dpo.py --gpu > "$OUT/dpo.json" 2> "$OUT/dpo.log"; echo "dpo rc=$?"
part dpo && { tail -12 "$OUT/dpo.log"; cat "$OUT/dpo.json"; }
# Engines: the same pipeline on the transformers and the vLLM engine side by side, plus vLLM's own
# throughput benchmark at the same lengths (needs .venv-vllm: make vllm-env VLLM=vllm==0.32.0).
if ! part engines; then :
elif [ -x .venv-vllm/bin/python ] || make vllm-env VLLM=vllm==0.32.0 > "$OUT/vllm-env.log" 2>&1; then
  timeout 480 .venv-vllm/bin/python tools/bench_engines.py --gpu > "$OUT/engines.json" 2> "$OUT/engines.log"; echo "engines rc=$?"
  grep -E "tok/s|Throughput" "$OUT/engines.log" | tail -8; cat "$OUT/engines.json"
else
  echo "engines: no vLLM environment (see $OUT/vllm-env.log)"
fi
