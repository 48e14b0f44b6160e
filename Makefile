# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-core test-tvm test-mali pocl-setup bench clean

# A virtual env with sparsec (editable) and the pinned test dependencies.
$(STAMP): pyproject.toml requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet -e .
	touch $@

demo: $(STAMP)
	$(VENV)/bin/sparsec demo

# PoCL (an OpenCL implementation on this CPU) for the mali tier: apt-installs when root and it is
# missing; pyopencl comes with requirements-test.txt.
pocl-setup:
	@if ! ls /etc/OpenCL/vendors/*.icd >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq pocl-opencl-icd ocl-icd-opencl-dev clinfo; \
	  else echo "make pocl-setup: as root, or: sudo apt-get install pocl-opencl-icd ocl-icd-opencl-dev clinfo"; exit 1; fi; fi

# Lint, then every test tier: core (no TVM), tvm (host builds), torch exports, mali on PoCL.
test: $(STAMP) pocl-setup
	$(VENV)/bin/ruff check sparsec passes runtime grammar tests benchmarks
	$(PY) -m pytest -q tests

test-mali: $(STAMP) pocl-setup
	$(PY) -m pytest -q tests/devices/test_mali.py

test-core: $(STAMP)
	$(PY) -m pytest -q tests/core

bench: $(STAMP)
	$(PY) benchmarks/write_results.py

clean:
	rm -rf $(VENV) build *.egg-info
