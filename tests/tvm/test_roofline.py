"""The FMA-peak kernel computes its chains exactly, and its rate is a real measurement."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.lower.kernels.common import run_kernel
from sparsec.lower.kernels.fma_peak import fma_chains, fma_peak_kernel
from sparsec.lower.target import host
from sparsec.runtime.roofline import fma_peak_gflops

pytestmark = pytest.mark.tvm


def test_fma_chains_compute_the_recurrence():
    target = host(2)
    lanes, chains = target.lanes(), fma_chains(target)
    kernel, flops = fma_peak_kernel(target, threads=2, iterations=5)
    a, b = np.linspace(0.5, 0.9, lanes, dtype=np.float32), np.linspace(-1, 1, lanes, dtype=np.float32)
    got = run_kernel(kernel, target, np.stack([a, b]))
    for t in range(2):
        want = b + np.float32(t)
        for _ in range(5):
            want = want * a + b
        np.testing.assert_allclose(got[t].reshape(chains, lanes), np.broadcast_to(want, (chains, lanes)), rtol=1e-6)
    assert flops == 2 * 2 * 5 * chains * lanes


def test_peak_is_measured_per_thread_count():
    target = host(1)
    assert fma_peak_gflops(target, 1, repeats=3) > 1.0  # a real rate, not a constant


def test_peak_keeps_the_best_measurement(monkeypatch):
    """A neighbour holding a core through a later measurement does not lower the peak."""
    from sparsec.runtime import roofline

    target = host(1)
    roofline.fma_peak_gflops(target, 1, repeats=1)  # compiled and calibrated
    seconds = iter([0.05, 0.10, 0.025])
    monkeypatch.setattr(roofline, "_time_one", lambda run: next(seconds))
    monkeypatch.setattr(roofline, "_BEST_GFLOPS", {})
    first = roofline.fma_peak_gflops(target, 1, repeats=1)
    assert roofline.fma_peak_gflops(target, 1, repeats=1) == first  # twice as slow: the neighbour's
    assert roofline.fma_peak_gflops(target, 1, repeats=1) == pytest.approx(2 * first)  # a faster one counts
