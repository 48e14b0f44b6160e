"""`sparsec calibrate` (`make calibrate`): measure the cost model's throughputs on this machine.

analyze-sparsity picks a weight's format by estimated time = useful MACs / the format kernel's
throughput relative to the dense kernel's. This measures those ratios here, with the kernels the
target really gets: per layer, useful GFLOP/s of the pattern (3x3) or CSR (1x1) kernel over the
dense kernel's on the same masked weight, the dense kernel's counted as the cost model counts it
(Winograd's layers by `winograd_plan.algorithm_work`, its estimate of their work per direct
multiply-add: so estimated times compare as measured ones), in interleaved rounds (medians); the
median over the
layers is written to the calibration file `Target` reads (`sparsec.target.calibration_path`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import tvm

from sparsec.fkw import build_fkw
from sparsec.lower.kernels.common import Kernel
from sparsec.lower.kernels.csr import csr_conv1x1_kernel
from sparsec.lower.kernels.dense_conv import dense_conv_kernel
from sparsec.lower.kernels.pattern_conv import pattern_conv_kernel
from sparsec.lower.kernels.winograd_plan import algorithm_work
from sparsec.lower.target import tvm_target
from sparsec.target import Target, write_calibration

# 8 four-tap patterns with the centre (PCONV's setting), taps row-major in the 3x3 window.
PATTERNS = np.array([[0, 1, 3, 4], [1, 2, 4, 5], [1, 3, 4, 5], [1, 3, 4, 7],
                     [1, 4, 5, 7], [3, 4, 5, 7], [3, 4, 6, 7], [4, 5, 7, 8]])


@dataclass(frozen=True)
class Layer:
    """One calibration layer: `fmt` kernel vs the dense kernel, `keep` of the weights kept."""

    fmt: str  # pattern | csr
    channels: int
    size: int
    keep: float  # pattern: fraction of 3x3 kernels kept; csr: fraction of weights kept

    @property
    def name(self) -> str:
        return f"{self.fmt} {self.channels}x{self.size}x{self.size} keep {self.keep:g}"


LAYERS = (
    Layer("pattern", 128, 56, 0.5), Layer("pattern", 256, 28, 0.278), Layer("pattern", 256, 14, 0.5),
    Layer("csr", 256, 28, 0.2), Layer("csr", 512, 14, 0.1), Layer("csr", 128, 56, 0.2),
)


def _weights(layer: Layer, rng: np.random.Generator) -> np.ndarray:
    c = layer.channels
    if layer.fmt == "csr":
        w = rng.standard_normal((c, c, 1, 1)).astype(np.float32)
        return w * (rng.random(w.shape) < layer.keep)
    w = rng.standard_normal((c, c, 9)).astype(np.float32)
    mask = np.zeros(w.shape, bool)
    pid = rng.integers(0, len(PATTERNS), (c, c))
    mask[np.arange(c)[:, None, None], np.arange(c)[None, :, None], PATTERNS[pid]] = True
    mask &= (rng.random((c, c)) < layer.keep)[:, :, None]
    return (w * mask).reshape(c, c, 3, 3)


def _kernels(layer: Layer, w: np.ndarray, target: Target) -> tuple[Kernel, Kernel]:
    shape = (1, layer.channels, layer.size, layer.size)
    if layer.fmt == "csr":
        return csr_conv1x1_kernel(w, shape, target=target), dense_conv_kernel(w, shape, target=target)
    sparse = pattern_conv_kernel(build_fkw(w), shape, target=target)
    return sparse, dense_conv_kernel(w, shape, pads=(1, 1, 1, 1), target=target)


def _dense_work(layer: Layer, w: np.ndarray, target: Target) -> float:
    """The work the cost model counts for the layer's dense kernel, per direct multiply-add."""
    if layer.fmt == "csr":
        return 1.0
    return algorithm_work(w.shape, (1, layer.channels, layer.size, layer.size), pads=(1, 1, 1, 1), target=target)


def _timer(kernel: Kernel, x: np.ndarray, target: Target):
    """A function timing one call of the compiled kernel (seconds, mean of a short batch)."""
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (x, *kernel.constants)]
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, np.float32), dev)
    evaluator = lib.mod.time_evaluator(str(kernel.func.attrs["global_symbol"]), dev, min_repeat_ms=50)
    return lambda: evaluator(*args, out).mean


def measure_layer(layer: Layer, target: Target, rounds: int) -> dict:
    """Useful-throughput ratio of the layer's sparse kernel over the dense kernel."""
    rng = np.random.default_rng(0)
    w = _weights(layer, rng)
    x = rng.standard_normal((1, layer.channels, layer.size, layer.size)).astype(np.float32)
    sparse, dense = (_timer(k, x, target) for k in _kernels(layer, w, target))
    times = {"sparse": [], "dense": []}
    for _ in range(rounds):
        for name, timer in (("sparse", sparse), ("dense", dense)):
            time.sleep(0.3)  # TVM's pool keeps spinning after a run
            times[name].append(timer())
    t_sparse, t_dense = (statistics.median(times[k]) for k in ("sparse", "dense"))
    kept = float(np.count_nonzero(w)) / w.size
    # per multiply-add the cost model counts for the dense kernel (Winograd's estimate), so
    # estimated times compare as measured ones on these layers
    work = _dense_work(layer, w, target)
    return {"layer": layer.name, "sparse_ms": t_sparse * 1e3, "dense_ms": t_dense * 1e3, "kept": kept,
            "dense_work": work, "ratio": kept * t_dense / (t_sparse * work)}


def calibrate(target: Target, rounds: int = 5, layers=LAYERS, log=print) -> tuple[dict, str]:
    """Measure every layer, write the calibration file; returns (record, path)."""
    rows = []
    log(f"calibrating {target.name} ({target.cpu}, {target.isa}: {target.lanes()} lanes, "
        f"{target.threads} threads); useful throughput of each kernel / the dense kernel's")
    for layer in layers:
        row = measure_layer(layer, target, rounds)
        rows.append(row)
        log(f"  {row['layer']:34} sparse {row['sparse_ms']:8.3f} ms  "
            f"dense {row['dense_ms']:8.3f} ms  ratio {row['ratio']:.2f}")
    ratio = {fmt: round(statistics.median(r["ratio"] for r in rows if r["layer"].startswith(fmt)), 3)
             for fmt in ("pattern", "csr")}
    path = write_calibration(target, ratio["pattern"], ratio["csr"], {"layers": rows, "rounds": rounds})
    log(f"throughputs (dense = 1): pattern {ratio['pattern']}, csr {ratio['csr']} -> {path}")
    return ratio, str(path)
