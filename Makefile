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

# The region-size study on the embedded data, multiclass then binary, one seed each.
compare: install
	$(PY) -m train.compare --config=train/configs/compare.py --workdir=runs/compare/multiclass \
	  --config.seeds=1
	$(PY) -m train.compare --config=train/configs/compare.py --workdir=runs/compare/binary \
	  --config.seeds=1 --config.base.data.name=imbalanced_shapes/binary \
	  --config.base.loss.mode=binary

bench: install
	$(PY) benchmarks/losses.py
	$(PY) benchmarks/pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache
