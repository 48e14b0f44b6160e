"""Roofline accounting: the measured fp32 FMA peak of the machine at a thread count, and how
close a kernel comes to it on its useful (kept) MACs.

    peak = fma_peak_gflops(target, threads=2)      # GFLOP/s
    useful = sparsity.useful_gflops(kept_macs, ms)  # GFLOP/s; useful / peak is the kernel's grade
"""

from __future__ import annotations

import functools
import time

import numpy as np
import tvm

from sparsec.lower.kernels.fma_peak import fma_peak_kernel
from sparsec.lower.target import tvm_target
from sparsec.target import Target

CALL_TARGET_S = 0.05  # one call long enough that the thread pool's start-up is noise
_BEST_GFLOPS: dict[tuple[Target, int], float] = {}  # (target, threads) -> the best rate this process measured


def fma_peak_gflops(target: Target, threads: int, repeats: int = 7) -> float:
    """The best sustained fp32 FMA rate TVM's code reaches on this machine with `threads` threads
    (GFLOP/s): measured now (the fastest of `repeats` timed calls, each about CALL_TARGET_S long),
    and the best such measurement of this process. A peak is what the machine can do: a busy
    neighbour only ever slows a call, and it once held a whole measurement at one core's rate
    (116 against 221-233 GFLOP/s on znver4), so a later, lower figure is the neighbour's."""
    run, flops = _calibrated(target, threads)
    rate = flops / min(_time_one(run) for _ in range(repeats)) / 1e9
    key = (target, threads)
    _BEST_GFLOPS[key] = max(_BEST_GFLOPS.get(key, 0.0), rate)
    return _BEST_GFLOPS[key]


@functools.cache
def _calibrated(target: Target, threads: int):
    """The peak kernel compiled with iterations for one call of about CALL_TARGET_S, and its FLOPs."""
    iterations = 1 << 14
    run, _ = _compiled(target, threads, iterations)
    run()  # the first call pays for loading and starting the thread pool
    once = _time_one(run)
    scale = max(1, int(CALL_TARGET_S / max(once, 1e-6)))
    run, flops = _compiled(target, threads, iterations * scale)
    run()
    return run, flops


def _compiled(target: Target, threads: int, iterations: int):
    kernel, flops = fma_peak_kernel(target, threads, iterations)
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    dev = tvm.cpu(0)
    lanes = target.lanes("float32")
    coef = tvm.runtime.tensor(np.stack([np.full(lanes, 0.999, np.float32), np.full(lanes, 1e-3, np.float32)]), dev)
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, np.float32), dev)
    return (lambda: lib["fma_peak"](coef, out)), flops


def _time_one(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start
