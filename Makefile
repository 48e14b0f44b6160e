# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-core test-tvm bench fuzz clean

# A virtual env with sparsec (editable) and the pinned test dependencies.
$(STAMP): pyproject.toml requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet -e .
	touch $@

demo: $(STAMP)
	$(VENV)/bin/sparsec demo

# Lint, then every test tier: core (no TVM), tvm (host builds), torch exports.
test: $(STAMP)
	$(VENV)/bin/ruff check sparsec passes runtime grammar tests benchmarks
	$(PY) -m pytest -q tests

test-core: $(STAMP)
	$(PY) -m pytest -q tests/core

bench: $(STAMP)
	$(PY) benchmarks/write_results.py

# Differential fuzzing: N random small CNNs + masks, each compiled and compared with onnxruntime;
# every failing case is written to build/fuzz/seed-N/ as a reproducer. `make fuzz N=500 START=1000`
N     ?= 100
START ?= 0
fuzz: $(STAMP)
	$(VENV)/bin/sparsec fuzz --seeds $(N) --start $(START) --out build/fuzz

clean:
	rm -rf $(VENV) build *.egg-info
