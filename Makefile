# The README's commands. Everything runs inside .venv at the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

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

bench: install
	$(PY) benchmarks/losses.py
	$(PY) benchmarks/pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache
