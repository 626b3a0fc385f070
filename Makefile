# Two commands do all set-up on a fresh machine:
#   make demo   trains a tiny model on the built-in arithmetic task and shows before/after accuracy
#   make test   runs the test suite (offline, CPU)
# Both create (or reuse) the virtual environment in $(VENV).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Without an NVIDIA GPU, ask for the CPU build explicitly so pip can never pull CUDA packages.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch==2.13.0,torch==2.13.0+cpu)

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m posttrain demo

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/sft_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
