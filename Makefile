# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

ARM64  := build/arm64

.PHONY: demo test test-core test-tvm test-arm64 test-mali arm64-setup pocl-setup bench bench-tuning calibrate fuzz clean

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

# The emulated arm64 device's set-up, cached under build/arm64: qemu-user and the cross toolchain
# (apt-get, when root), an aarch64 sysroot with Python 3.11 (Debian arm64 debs), the aarch64 TVM
# runtime wheels, the instruction-count TCG plugin. See runtime/qemu/setup_arm64.sh.
arm64-setup: $(ARM64)/ready
$(ARM64)/ready: runtime/qemu/setup_arm64.sh runtime/qemu/insn_count.c runtime/qemu/marker.c | $(STAMP)
	PYTHON=$(PY) sh runtime/qemu/setup_arm64.sh $(ARM64)
	touch $@

# Lint, then every test tier: core (no TVM), tvm (host builds), torch exports, devices (arm64 under qemu,
# mali on PoCL).
test: $(STAMP) $(ARM64)/ready pocl-setup
	$(VENV)/bin/ruff check sparsec passes runtime grammar tests benchmarks
	$(PY) -m pytest -q tests

test-arm64: $(STAMP) $(ARM64)/ready
	$(PY) -m pytest -q tests/devices -m "arm64 and not mali"

# The cost model's throughputs measured on this machine (read by every later host target).
calibrate: $(STAMP)
	$(VENV)/bin/sparsec calibrate

test-mali: $(STAMP) pocl-setup
	$(PY) -m pytest -q tests/devices/test_mali.py

test-core: $(STAMP)
	$(PY) -m pytest -q tests/core

bench: $(STAMP)
	$(PY) benchmarks/write_results.py

# The tuning figures of RESULTS.md (device farms on 127.0.0.1; the arm64 one needs arm64-setup).
bench-tuning: $(STAMP) $(ARM64)/ready
	$(PY) benchmarks/bench_tuning.py quality gain scaling kill arm64 --write

# Differential fuzzing: N random small CNNs + masks, each compiled and compared with onnxruntime;
# every failing case is written to build/fuzz/seed-N/ as a reproducer. `make fuzz N=500 START=1000`
N     ?= 100
START ?= 0
fuzz: $(STAMP)
	$(VENV)/bin/sparsec fuzz --seeds $(N) --start $(START) --out build/fuzz

clean:
	rm -rf $(VENV) build *.egg-info
