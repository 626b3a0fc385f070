# Two commands do all set-up on a fresh machine:
#   make demo   trains a tiny model on the built-in arithmetic task and shows before/after accuracy
#   make test   runs the test suite (offline, CPU)
# Both create (or reuse) the virtual environment in $(VENV). `make lint` runs ruff;
# `make test-learning` runs the learning tests (each trains for real; CI runs them after `make test`).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
HAS_NVIDIA_GPU := $(shell command -v nvidia-smi 2>/dev/null)
# Without an NVIDIA GPU, ask for the CPU build explicitly so pip can never pull CUDA packages.
TORCH_SPEC ?= $(if $(HAS_NVIDIA_GPU),torch==$(TORCH_VERSION),torch==$(TORCH_VERSION)+cpu)
# The +cpu builds live on PyTorch's own index, not on PyPI. Where the configured indexes lack
# them (an ordinary fresh machine), torch alone comes from there; PyPI stays an extra index for
# torch's own dependencies. Every other package is installed afterwards from the configured ones.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYPI_INDEX ?= https://pypi.org/simple
TORCH_FALLBACK = { echo "$(TORCH_SPEC) is not on the configured package index; installing it from $(TORCH_CPU_INDEX)"; \
	$(PY) -m pip install --quiet --index-url $(TORCH_CPU_INDEX) --extra-index-url $(PYPI_INDEX) "$(TORCH_SPEC)"; }

.PHONY: demo test test-learning lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(HAS_NVIDIA_GPU),,2>/dev/null || $(TORCH_FALLBACK))
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m posttrain demo

test: $(VENV)/.installed
	$(PY) -m pytest

test-learning: $(VENV)/.installed
	$(PY) -m pytest -m learning

lint: $(VENV)/.installed
	$(PY) -m ruff check .

bench: $(VENV)/.installed
	$(PY) benchmarks/sft_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
