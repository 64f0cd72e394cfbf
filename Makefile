# One entry point for the README's commands. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
KSERVE_VENV ?= .venv-kserve
GPU_VENV ?= .venv-gpu
BIN := $(VENV)/bin
SERVE_BIN := $(SERVE_VENV)/bin
GPU_BIN := $(GPU_VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help setup setup-serve setup-gpu kserve-client grpc-descriptors serve test lint format train-digits export-digits bundle-model gpu-check gpu-check-dry-run bench-train bench-serve bench-serving evaluate-digits clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(SERVE_BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_BIN)/python -m pip install -q --upgrade pip
	$(SERVE_BIN)/python -m pip install -q -e '.[serve]'
	touch $@

# onnxruntime-gpu and onnxruntime share the `onnxruntime` module (the last one installed silently wins), so the
# GPU service gets its own environment: .[serve-gpu] only, no torch, no plain onnxruntime.
$(GPU_BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_BIN)/python -m pip install -q --upgrade pip
	$(GPU_BIN)/python -m pip install -q -e '.[serve-gpu]'
	$(GPU_BIN)/python -c "import importlib.metadata as m, sys; \
		names = {(d.metadata['Name'] or '').lower() for d in m.distributions()}; \
		sys.exit('onnxruntime and onnxruntime-gpu both installed in $(GPU_VENV)' if 'onnxruntime' in names else 0)"
	touch $@

setup: $(BIN)/.installed  ## create .venv with everything (train, export, serve, dev tools)

$(KSERVE_VENV)/.installed: requirements/kserve-client.txt
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(KSERVE_VENV)/bin/python -m pip install -q -r requirements/kserve-client.txt
	touch $@

kserve-client: $(KSERVE_VENV)/.installed  ## KServe's Python client in its own venv .venv-kserve (the tests use it)

grpc-descriptors: setup kserve-client  ## regenerate the gRPC descriptor sets in service/protocols/
	$(KSERVE_VENV)/bin/python -m grpc_tools.protoc -Iservice/protocols \
		--descriptor_set_out=service/protocols/grpc_predict_v2.desc grpc_predict_v2.proto
	$(BIN)/python scripts/triton_descriptors.py

setup-serve: $(SERVE_BIN)/.installed  ## create .venv-serve with the service only (no torch)

setup-gpu: $(GPU_BIN)/.installed  ## create .venv-gpu: the service on onnxruntime-gpu (CUDA 13 wheels), no torch

serve: setup-serve  ## run the API on the bundled default model (models/digits_lt) at http://$(HOST):$(PORT)
	$(SERVE_BIN)/python -m service --model-repository models --host $(HOST) --port $(PORT)

test: setup kserve-client  ## run the test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup  ## ruff lint (docstrings: Google convention on rescom/, service/, export/) + format check + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup  ## ruff format + autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train-digits: setup  ## train the default digits-LT recipe into runs/digits_lt
	$(BIN)/python training/train.py --config training/configs/digits_lt.yaml --output-dir runs/digits_lt

export-digits: setup  ## export runs/digits_lt/best.pt as a new version of models/digits_lt
	$(BIN)/python export/to_onnx.py --checkpoint runs/digits_lt/best.pt --model-repository models --name digits_lt

bundle-model: setup  ## rebuild the bundled default model (models/digits_lt/1) exactly from the recipe
	rm -rf runs/bundle
	$(BIN)/python training/train.py --config training/configs/digits_lt.yaml --output-dir runs/bundle --no-progress
	$(BIN)/python export/to_onnx.py --checkpoint runs/bundle/best.pt --model-repository models --name digits_lt \
		--version 1 --force

gpu-check: setup setup-gpu  ## on a CUDA machine: AMP/DDP training, iNat-scale loss, ORT-CUDA service vs raw -> benchmarks/results/gpu.md
	PYTHON=$(BIN)/python GPU_PYTHON=$(GPU_BIN)/python bash scripts/gpu_check.sh

gpu-check-dry-run: setup  ## the GPU check's commands, flags and imports on the CPU (what CI runs)
	PYTHON=$(BIN)/python bash scripts/gpu_check.sh --dry-run

bench-train: setup  ## ResCom step overhead vs CE, and iNaturalist-scale loss memory
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/loss_scale.py

bench-serve: setup  ## load benchmark of the service vs raw ONNX Runtime
	$(BIN)/python benchmarks/serve_load.py --json benchmarks/results/serve_load.json

bench-serving: setup  ## side by side: our service vs Mosec, LitServe, BentoML, PyTriton (needs `apt-get install wrk`)
	$(BIN)/python benchmarks/serving/run_all.py

evaluate-digits: setup  ## evaluation report + label-shift study of the bundled model into report/
	$(BIN)/python training/evaluate.py --model-repository models --name digits_lt --many-threshold 50 --seeds 20 \
		--out report

.PHONY: results results-train results-serve docs-figures

results: results-train results-serve  ## rerun every benchmark the README quotes into benchmarks/results/ (long: ~1 h on 2 cores)

results-train: setup  ## digits-LT methods + wall time, ResCom step overhead, iNaturalist-scale loss memory
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/digits_methods.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/loss_scale.py

results-serve: setup  ## service load vs raw ONNX Runtime, overload, the side-by-side serving comparison, per-request costs, SIGTERM under load
	$(BIN)/python benchmarks/serve_load.py --json benchmarks/results/serve_load.json
	$(BIN)/python benchmarks/overload.py --json benchmarks/results/overload.json
	$(BIN)/python benchmarks/serving/run_all.py
	$(BIN)/python benchmarks/request_costs.py
	$(BIN)/python benchmarks/hostile.py --only sigterm

docs-figures: setup  ## regenerate docs/evaluation/*.png (bundled model) and docs/screenshots/*.png (needs chromium)
	rm -rf runs/docs-report
	$(BIN)/python training/evaluate.py --model-repository models --name digits_lt --many-threshold 50 --seeds 20 \
		--out runs/docs-report
	cp runs/docs-report/digits_lt_1_per_class.png runs/docs-report/digits_lt_1_reliability.png \
		runs/docs-report/digits_lt_1_label_shift.png docs/evaluation/
	$(BIN)/python scripts/demo_screenshots.py --out docs/screenshots

.PHONY: typecheck

typecheck: setup  ## mypy alone on service/ and the torch-free part of rescom/ ([tool.mypy]; part of `make lint`)
	$(BIN)/mypy

clean:  ## remove caches and run outputs (keeps the venvs)
	rm -rf runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
