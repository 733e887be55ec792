# Two commands on a fresh machine (README "Quick start"):
#   make demo   - set up .venv and run the main job (`vlmprune bench` on the built-in tiny model, CPU)
#   make test   - set up .venv and run the test-suite
# torch is pinned to the CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench compare eval clean

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
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

compare: setup
	$(BIN)/vlmprune compare --image skimage:chelsea --methods promprune,sppruner,fastv,divprune --budget 64

eval: setup  # about 8 minutes on two CPU cores; --samples 1000 --dtype bfloat16 for the documented table
	$(BIN)/vlmprune eval

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
