"""Session-wide state of the kernel benchmarks: compiled engines (compiling VGG-16 takes up to a
minute, so each case/engine is built once), onnxruntime's outputs and the medians seen so far."""

from __future__ import annotations

import os

from cases import THREADS

# TVM sizes its thread pool from this when the pool starts: before anything imports tvm.
os.environ["TVM_NUM_THREADS"] = str(THREADS)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from cases import Case  # noqa: E402

from sparsec.check import seeded_inputs  # noqa: E402
from sparsec.runtime.bench import Engine, input_shapes_of, make_engine  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--assert-targets", action="store_true",
                     help="fail a sparsec benchmark that misses its speed-up target (off: the machines are noisy)")


class BenchCache:
    """Engines, inputs and reference outputs per case, and each engine's median (seconds)."""

    def __init__(self):
        self._engines: dict[tuple[str, str], Engine] = {}
        self._inputs: dict[str, dict[str, np.ndarray]] = {}
        self._reference: dict[str, list[np.ndarray]] = {}
        self.medians: dict[tuple[str, str], float] = {}

    def inputs(self, case: Case) -> dict[str, np.ndarray]:
        if case.key not in self._inputs:
            self._inputs[case.key] = seeded_inputs(input_shapes_of(case.model))
        return self._inputs[case.key]

    def engine(self, case: Case, name: str) -> Engine:
        if (case.key, name) not in self._engines:
            self._engines[case.key, name] = make_engine(name, case.model, case.masks, self.inputs(case),
                                                        threads=THREADS)
        return self._engines[case.key, name]

    def reference(self, case: Case) -> list[np.ndarray]:
        if case.key not in self._reference:
            self._reference[case.key] = self.engine(case, "onnxruntime").outputs()
        return self._reference[case.key]


@pytest.fixture(scope="session")
def bench_cache() -> BenchCache:
    return BenchCache()


@pytest.fixture(scope="session")
def assert_targets(request) -> bool:
    return request.config.getoption("--assert-targets")
