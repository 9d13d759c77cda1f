# Every target sets itself up on a fresh machine: a virtual environment in .venv, installed once.
# GPU users: install your own CUDA torch into .venv first (or pass TORCH=...); it is never replaced.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.stmed-installed
TINY   ?= runs/tiny-llava
DEMO   ?= runs/demo

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

$(TINY)/config.json: | $(STAMP)
	$(BIN)/python tools/make_tiny_model.py $(TINY)

## demo: the main job on the embedded default (tiny random model, bundled sample images)
demo: $(STAMP) $(TINY)/config.json
	$(BIN)/stmed inspect examples/images/synpic46720.jpg -m $(TINY) -q "Is there a fracture?"
	$(BIN)/stmed inspect examples/images/synpic45544.jpg -m $(TINY)

## test: the whole suite (CPU, offline, tiny model)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## bench: CPU benchmarks, each printing ratios against the naive way in the same run
bench: $(STAMP)
	$(BIN)/python tools/bench_generate.py

clean:
	rm -rf runs .pytest_cache
