# Two commands do all the set-up: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else echo "install the Debian package dataset-fashion-mnist (needs root)"; exit 1; fi

# Trains acmix_resnet_tiny on Fashion-MNIST (2 CPU threads); outputs in runs/demo/, last line `test_top1: ...`.
# A passive OpenMP wait policy keeps idle threads from spinning: much faster on a shared (busy) machine.
demo: $(STAMP) $(FMNIST)
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(PY) -m acmix.demo

# mypy: strict on acmix.ops and acmix.nn, default strength elsewhere ([tool.mypy] in pyproject.toml).
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/op_bench.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
