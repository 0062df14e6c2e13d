# The README's commands. Everything runs inside .venv at the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench compare clean

install: $(STAMP)

# Reinstall when the package metadata changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(PY) -m train --config=train/configs/default.py --workdir=runs/demo

test: install
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

# A smaller version of the region-size study on the embedded multiclass data: four losses,
# the weight tuned on validation over (0.1, 1.0) at temperature 10, two seeds; 12 runs.
# The full study is `python -m train.compare --config=train/configs/compare.py` (README).
compare: install
	$(PY) -m train.compare --config=train/configs/compare.py --workdir=runs/compare/multiclass \
	  --config.losses="('ce','dice','ce+dice','ce+kl')" --config.seeds=2 \
	  --config.tune.weights="(0.1,1.0)" --config.tune.temperatures="(10.0,)"

# The train-step benchmark runs in .venv-bench (with torch, for the PyTorch comparison) when
# `make bench-torch` has created it, else without the comparison.
bench: install
	$(PY) benchmarks/losses.py
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/inference.py
	$(if $(wildcard .venv-bench/bin/python),.venv-bench/bin/python,$(PY)) benchmarks/train_step.py

# The train step against PyTorch eager. torch goes into its own .venv-bench, never into .venv
# or the package's dependencies. On a CPU-only machine, PyTorch's CPU-only wheel index (see
# its install page) is far smaller: make bench-torch TORCH_PIP_ARGS="--index-url <that index>"
.PHONY: bench-torch
bench-torch: .venv-bench/.installed
	.venv-bench/bin/python benchmarks/train_step.py

.venv-bench/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet --upgrade pip
	.venv-bench/bin/python -m pip install --quiet -e .
	.venv-bench/bin/python -m pip install --quiet torch $(TORCH_PIP_ARGS)
	touch $@

clean:
	rm -rf $(VENV) .venv-bench runs .pytest_cache
