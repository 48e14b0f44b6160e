"""`sparsec calibrate` (`make calibrate`): measure the cost model's throughputs on this machine.

analyze-sparsity picks a weight's format by estimated time = the MACs a format's kernel does /
that kernel's throughput relative to the direct dense kernel's. This measures those ratios here,
with the kernels the target really gets, in interleaved rounds (medians): per layer, useful
GFLOP/s of the pattern (3x3) or CSR (1x1) kernel over the direct dense kernel's on the same
masked weight, and for the 3x3 layers the Winograd kernel's too, its work counted as its estimate
counts it (`winograd_plan.work_ratio`), so estimate / throughput predicts its time on planes of
several GEMM blocks (`winograd_plan.several_blocks`; one block runs at its estimate). The median
over the layers of each is written to the calibration file `Target` reads
(`sparsec.target.calibration_path`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import tvm

from sparsec.fkw import build_fkw
from sparsec.lower.kernels import register_plan
from sparsec.lower.kernels.common import Kernel
from sparsec.lower.kernels.csr import csr_conv1x1_kernel
from sparsec.lower.kernels.dense_conv import DenseConvKnobs, dense_conv_kernel
from sparsec.lower.kernels.pattern_conv import padded_work, pattern_conv_kernel
from sparsec.lower.kernels.winograd_plan import Geometry, auto_tile, plan, several_blocks, work_ratio
from sparsec.lower.target import tvm_target
from sparsec.target import MAX_THROUGHPUT, Target, write_calibration

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


def _kernels(layer: Layer, w: np.ndarray, target: Target, winograd_tile: int) -> dict[str, Kernel]:
    """The layer's kernels by role: sparse (pattern or CSR), direct (dense) and, for 3x3 layers,
    winograd (`winograd_tile`, the tile its estimate picks), where it picks one."""
    shape = (1, layer.channels, layer.size, layer.size)
    if layer.fmt == "csr":
        return {"sparse": csr_conv1x1_kernel(w, shape, target=target),
                "direct": dense_conv_kernel(w, shape, target=target)}
    pads = (1, 1, 1, 1)
    kernels = {"sparse": pattern_conv_kernel(build_fkw(w), shape, target=target),
               "direct": dense_conv_kernel(w, shape, pads=pads, target=target, knobs=DenseConvKnobs(winograd=1))}
    if winograd_tile > 1:  # else Winograd's estimate loses to direct on this shape: nothing to measure
        kernels["winograd"] = dense_conv_kernel(w, shape, pads=pads, target=target,
                                                knobs=DenseConvKnobs(winograd=winograd_tile))
    return kernels


def _winograd_estimate(layer: Layer, target: Target) -> tuple[int, float, bool]:
    """(output tile, estimated work per direct multiply-add, whether its GEMMs run several tile
    blocks: where the target's Winograd throughput applies) of the layer's Winograd kernel."""
    shape = (1, layer.channels, layer.size, layer.size)
    out_block, vectors = register_plan.gemm_tile(target)
    tile = auto_tile(layer.channels, shape, (1, 1, 1, 1), out_block, vectors, target.lanes())
    work = work_ratio(layer.channels, shape, (1, 1, 1, 1), out_block, vectors, target.lanes())
    if tile == 1:
        return tile, work, False
    g = Geometry.of(*shape, layer.channels, (1, 1, 1, 1), tile)
    return tile, work, several_blocks(plan(g, out_block, vectors, target.lanes()))


def _timer(kernel: Kernel, x: np.ndarray, target: Target):
    """A function timing one call of the compiled kernel (seconds, mean of a short batch)."""
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (x, *kernel.constants)]
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, np.float32), dev)
    evaluator = lib.mod.time_evaluator(str(kernel.func.attrs["global_symbol"]), dev, min_repeat_ms=50)
    return lambda: evaluator(*args, out).mean


def measure_layer(layer: Layer, target: Target, rounds: int) -> dict:
    """Useful-throughput ratios of the layer's sparse kernel (and Winograd's) over the direct
    dense kernel's."""
    rng = np.random.default_rng(0)
    w = _weights(layer, rng)
    x = rng.standard_normal((1, layer.channels, layer.size, layer.size)).astype(np.float32)
    tile, work, several = _winograd_estimate(layer, target) if layer.fmt == "pattern" else (1, 1.0, False)
    timers = {role: _timer(k, x, target) for role, k in _kernels(layer, w, target, tile).items()}
    times: dict[str, list[float]] = {role: [] for role in timers}
    for _ in range(rounds):
        for role, timer in timers.items():
            time.sleep(0.3)  # TVM's pool keeps spinning after a run
            times[role].append(timer())
    ms = {role: statistics.median(t) * 1e3 for role, t in times.items()}
    kept = float(np.count_nonzero(w)) / w.size
    # the pattern kernel's padded tiles are charged by the cost model (`padded_work`): its throughput
    # is measured on the work it does, so a 28-wide plane's idle lanes are not counted twice
    padded = padded_work(x.shape, target=target) if layer.fmt == "pattern" else 1.0
    row = {"layer": layer.name, **{f"{role}_ms": v for role, v in ms.items()}, "kept": kept,
           layer.fmt: kept * padded * ms["direct"] / ms["sparse"]}
    if layer.fmt == "pattern":
        row["pattern_padding"] = padded
    if "winograd" in ms:
        speed = work * ms["direct"] / ms["winograd"]
        # the target's throughput covers planes of several GEMM blocks; one block runs at its estimate
        row.update({"winograd_tile": tile, "winograd_work": work,
                    "winograd" if several else "winograd_one_block": speed})
    return row


RETRIES = 2  # more measurements of a layer whose ratio no target would accept
RATIOS = ("pattern", "csr", "winograd", "winograd_one_block")


def plausible(row: dict) -> bool:
    """Whether every throughput ratio of a measured layer is one a target accepts."""
    return all(0.0 < row[key] <= MAX_THROUGHPUT for key in RATIOS if key in row)


def _ratios(row: dict) -> str:
    return ", ".join(f"{key} {row[key]:.2f}" for key in RATIOS if key in row)


def calibrate(target: Target, rounds: int = 5, layers=LAYERS, log=print) -> tuple[dict, str]:
    """Measure every layer, write the calibration file; returns (throughputs, path)."""
    rows = []
    log(f"calibrating {target.name} ({target.cpu}, {target.isa}: {target.lanes()} lanes, "
        f"{target.threads} threads); useful throughput of each kernel / the direct dense kernel's")
    for layer in layers:
        row = measure_layer(layer, target, rounds)
        for _ in range(RETRIES):
            if plausible(row):
                break
            log(f"  {row['layer']:34} ratio {_ratios(row)}: not a throughput (at most {MAX_THROUGHPUT:g}x dense; a "
                "busy neighbour stalled a round): measuring it again")
            row = measure_layer(layer, target, rounds)
        rows.append(row)
        speed = row.get("winograd", row.get("winograd_one_block"))
        wino = "" if speed is None else (f"  winograd F{row['winograd_tile']} {row['winograd_ms']:8.3f} ms ratio "
                                         f"{speed:.2f}{'' if 'winograd' in row else ' (one GEMM block: not counted)'}")
        log(f"  {row['layer']:34} sparse {row['sparse_ms']:8.3f} ms  direct {row['direct_ms']:8.3f} ms  "
            f"ratio {row[layer.fmt]:.2f}{wino}")
    measured = {kind: round(statistics.median(r[kind] for r in rows if kind in r), 3)
                for kind in ("pattern", "csr", "winograd") if any(kind in r for r in rows)}
    measured.setdefault("winograd", 1.0)  # no layer ran Winograd: its estimate stands
    path = write_calibration(target, measured, {"layers": rows, "rounds": rounds})
    log(f"throughputs (direct dense = 1): pattern {measured['pattern']}, csr {measured['csr']}, "
        f"winograd {measured['winograd']} -> {path}")
    return measured, str(path)
