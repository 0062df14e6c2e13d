# The README's commands. Everything runs inside .venv at the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The exact tested versions (the package itself declares ranges, pyproject.toml).
CONSTRAINTS := requirements/constraints.txt
# The oldest supported JAX: the library's tests run there too (make test-oldest-jax).
VENV_OLDEST := .venv-jax06
CONSTRAINTS_OLDEST := requirements/constraints-jax06.txt
LIBRARY_TESTS := tests/losses tests/test_metrics.py tests/test_postprocessing.py tests/test_inference.py \
  tests/test_packaging.py

.PHONY: install demo test test-fast bench compare clean lint docs doctest test-oldest-jax \
  bench-accelerator accelerator-wheels

install: $(STAMP)

# Reinstall when the package metadata or the tested versions change.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[train,test,docs]'
	touch $(STAMP)

demo: install
	$(PY) -m train --config=train/configs/default.py --workdir=runs/demo

test: install
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

# Under 3 minutes on 2 cores: every module at small sizes, a sample of each large parametrized
# family and one short training run; the tests marked slow (tests/tiers.py) are left out.
# At these sizes compiling is most of the time, so this tier compiles with XLA's optimisation
# passes off (JAX_DISABLE_MOST_OPTIMIZATIONS, about a fifth faster); `make test` compiles as
# users do.
test-fast: install
	JAX_DISABLE_MOST_OPTIMIZATIONS=1 $(PY) -m pytest -n 2 --dist loadgroup -q -m "not slow" tests

# A smaller version of the region-size study on the embedded multiclass data: four losses,
# the weight tuned on validation over (0.1, 1.0) at temperature 10, two seeds; 12 runs.
# The full study is `python -m train.compare --config=train/configs/compare.py` (README).
compare: install
	$(PY) -m train.compare --config=train/configs/compare.py --workdir=runs/compare/multiclass \
	  --config.losses="('ce','dice','ce+dice','ce+kl')" --config.seeds=2 \
	  --config.tune.weights="(0.1,1.0)" --config.tune.temperatures="(10.0,)"

# The train-step benchmark runs in .venv-bench (with torch, for the PyTorch comparison) when
# `make bench-torch` has created it, else without the comparison.
# train/ is not installed, and a script's own folder (benchmarks/) is what Python puts on
# sys.path, so the benchmarks that import train get the repository root through PYTHONPATH.
ON_REPO_PATH := PYTHONPATH=$(CURDIR)
bench: install
	$(PY) benchmarks/losses.py
	$(PY) benchmarks/pipeline.py
	$(ON_REPO_PATH) $(PY) benchmarks/inference.py
	$(ON_REPO_PATH) $(if $(wildcard .venv-bench/bin/python),.venv-bench/bin/python,$(PY)) benchmarks/train_step.py

# The train step against PyTorch eager. torch goes into its own .venv-bench, never into .venv
# or the package's dependencies. On a CPU-only machine, PyTorch's CPU-only wheel index (see
# its install page) is far smaller: make bench-torch TORCH_PIP_ARGS="--index-url <that index>"
.PHONY: bench-torch
bench-torch: .venv-bench/.installed
	$(ON_REPO_PATH) .venv-bench/bin/python benchmarks/train_step.py

.venv-bench/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet --upgrade pip
	.venv-bench/bin/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[train]'
	.venv-bench/bin/python -m pip install --quiet torch $(TORCH_PIP_ARGS)
	touch $@

# The accelerator suite (benchmarks/accelerator.py): every check and figure that needs a GPU,
# in under 8 minutes, with the machine's own Python and JAX (no .venv, no network). Where
# PyPI is reachable, `make accelerator-wheels` first fetches the wheels of what such a
# machine lacks into build/wheels; carry that folder with the checkout. LOG=file keeps the
# output.
WHEELS := build/wheels
bench-accelerator:
	$(PYTHON) benchmarks/accelerator.py --wheels $(WHEELS) $(if $(LOG),--log $(LOG))

accelerator-wheels:
	$(PYTHON) benchmarks/accelerator_wheels.py --dest $(WHEELS)

# Style: ruff's lint rules and formatting (2-space indentation, 100 columns; pyproject.toml).
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The examples in the library's docstrings.
doctest: install
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules \
	  regionloss_jax/losses regionloss_jax/metrics.py regionloss_jax/inference.py \
	  regionloss_jax/models/unet.py regionloss_jax/postprocessing.py

# HTML API reference of regionloss_jax into build/docs (open build/docs/index.html), and the
# tutorials of docs/tutorials executed into build/docs/tutorials (each page with its
# outputs; a few minutes on a CPU). The subpackages are named because pdoc documents only
# what a package's __all__ lists.
DOC_MODULES := regionloss_jax regionloss_jax.losses regionloss_jax.metrics \
  regionloss_jax.inference regionloss_jax.models regionloss_jax.data
docs: install
	rm -rf build/docs
	$(PY) -m pdoc --docformat google --output-directory build/docs $(DOC_MODULES)
	$(PY) docs/run_tutorials.py --out build/docs/tutorials

# The library's tests (losses, metrics, inference, packaging) on the oldest supported JAX,
# in .venv-jax06, with only the core dependencies and the test extra: no training stack.
test-oldest-jax: $(VENV_OLDEST)/.installed
	$(VENV_OLDEST)/bin/python -m pytest -n 2 --dist loadgroup -q $(LIBRARY_TESTS)

$(VENV_OLDEST)/.installed: pyproject.toml $(CONSTRAINTS_OLDEST)
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_OLDEST)/bin/python -m pip install --quiet -c $(CONSTRAINTS_OLDEST) -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) $(VENV_OLDEST) .venv-bench runs .pytest_cache build/docs
