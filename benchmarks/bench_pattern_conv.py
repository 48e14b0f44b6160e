"""Time sparsec's pattern-sparse conv kernel against onnxruntime's dense Conv (same weights).

Standalone script (not pytest):

    .venv/bin/python benchmarks/bench_pattern_conv.py [--layers L1,L2,L3] [--rounds 7]
        [--knobs '{"rows_per_step": 8}'] [--threads 2] [--target-json '{"isa": "avx2"}']

The machine is shared and noisy: engines run in interleaved rounds with a pause between them
(both thread pools keep spinning after a run), and the ratio of medians of one run is the figure
to trust, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsec.fkw import build_fkw, fkw_nbytes  # noqa: E402
from sparsec.lower.kernels.pattern_conv import PatternConvKnobs, pattern_conv_kernel  # noqa: E402
from sparsec.lower.target import host, resolve_target, tvm_target  # noqa: E402

# 8 fixed four-tap patterns, all with the centre tap 4 (taps row-major in the 3x3 window).
PATTERNS = np.array(
    [[0, 1, 3, 4], [1, 2, 4, 5], [1, 3, 4, 5], [1, 3, 4, 7],
     [1, 4, 5, 7], [3, 4, 5, 7], [3, 4, 6, 7], [4, 5, 7, 8]]
)


@dataclass(frozen=True)
class Layer:
    name: str
    channels: int  # input channels = filters
    size: int  # input height = width
    keep: float  # fraction of kernels kept after connectivity pruning


LAYERS = {
    "L1": Layer("L1", 256, 56, 0.5),
    "L2": Layer("L2", 512, 28, 0.278),
    "L3": Layer("L3", 256, 14, 0.5),
}


def pruned_weight(rng: np.random.Generator, filters: int, channels: int, keep: float):
    """A random pattern per kernel, then keep the `keep` fraction of kernels of largest norm."""
    w = rng.standard_normal((filters, channels, 9)).astype(np.float32)
    pid = rng.integers(0, len(PATTERNS), (filters, channels))
    mask = np.zeros(w.shape, bool)
    mask[np.arange(filters)[:, None, None], np.arange(channels)[None, :, None], PATTERNS[pid]] = True
    w *= mask
    norms = np.linalg.norm(w, axis=2).ravel()
    kept = np.zeros(norms.shape, bool)
    kept[np.argsort(-norms, kind="stable")[: int(round(keep * norms.size))]] = True
    return (w * kept.reshape(filters, channels, 1)).reshape(filters, channels, 3, 3)


def ort_session(weight: np.ndarray, x_shape, threads: int) -> ort.InferenceSession:
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def timed_ms(call, calls: int) -> float:
    """Median ms of `calls` calls after one warm-up call."""
    call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def tvm_runner(weight, x, knobs: PatternConvKnobs, target, asm_path: str | None = None):
    """Compile the kernel; return (call, output tensor, fkw). Optionally save its assembly."""
    fkw = build_fkw(weight)
    kernel = pattern_conv_kernel(fkw, x.shape, knobs=knobs, target=target)
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    if asm_path:
        asm = lib.mod.inspect_source("asm")
        Path(asm_path).write_text(asm)
        fmas = sum("vfmadd" in line and ("ymm" in line or "zmm" in line) for line in asm.splitlines())
        print(f"  {asm_path}: {fmas} vfmadd...ps ymm/zmm instructions", flush=True)
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(a, dev) for a in (x, *kernel.constants)]
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, np.float32), dev)
    func = lib["pattern_conv"]
    return (lambda: func(*args, out)), out, fkw


def bench_layer(layer: Layer, knobs: PatternConvKnobs, rounds: int, calls: int, target,
                asm_dir: str | None = None):
    rng = np.random.default_rng(0)
    weight = pruned_weight(rng, layer.channels, layer.channels, layer.keep)
    x = rng.standard_normal((1, layer.channels, layer.size, layer.size)).astype(np.float32)
    sess = ort_session(weight, x.shape, target.threads)
    run_ort = lambda: sess.run(None, {"x": x})  # noqa: E731
    asm_path = str(Path(asm_dir) / f"{layer.name}.s") if asm_dir else None
    run_tvm, out, fkw = tvm_runner(weight, x, knobs, target, asm_path)
    run_tvm()
    np.testing.assert_allclose(out.numpy(), run_ort()[0], rtol=1e-3, atol=1e-3)
    ort_ms, tvm_ms = [], []
    for _ in range(rounds):
        for run, acc in ((run_ort, ort_ms), (run_tvm, tvm_ms)):
            time.sleep(0.1)
            acc.append(timed_ms(run, calls))
    report(layer, fkw, float(np.median(ort_ms)), float(np.median(tvm_ms)))


def report(layer: Layer, fkw, ort_ms: float, tvm_ms: float) -> None:
    hw = layer.size * layer.size
    dense_gflop = 2 * layer.channels**2 * 9 * hw / 1e9
    useful_gflop = 2 * fkw.num_kernels * fkw.taps_per_pattern * hw / 1e9
    kept_bytes = fkw.num_kernels * fkw.taps_per_pattern * 4
    print(
        f"{layer.name}: 1x{layer.channels}x{layer.size}x{layer.size}, {layer.keep:.1%} kernels kept | "
        f"onnxruntime {ort_ms:7.2f} ms ({dense_gflop / ort_ms * 1e3:5.1f} dense GFLOP/s) | "
        f"sparsec {tvm_ms:6.2f} ms ({useful_gflop / tvm_ms * 1e3:5.1f} useful GFLOP/s) | "
        f"speedup {ort_ms / tvm_ms:4.2f}x | FKW {fkw_nbytes(fkw)} B = "
        f"{fkw_nbytes(fkw) / kept_bytes:.3f}x kept-weight bytes",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="L1,L2,L3")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per engine per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--knobs", default="{}", help="PatternConvKnobs fields as JSON")
    parser.add_argument("--asm-dir", help="write each layer's kernel assembly here")
    parser.add_argument("--target-json", help="a target other than this machine as it is, e.g. '{\"isa\": \"avx2\"}'")
    args = parser.parse_args(argv)
    knobs = PatternConvKnobs(**json.loads(args.knobs))
    # Read when TVM starts its thread pool. Like onnxruntime's default pool, leave the threads
    # unpinned: on a shared machine a pinned thread waits out a busy core (measured 15.8 ms
    # pinned vs 12.6 ms unpinned on L2 under load), unpinned ones move to a free one.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    target = resolve_target(spec=args.target_json) if args.target_json else host(args.threads)
    print(f"target {target.name}: {target.cpu}, {target.isa}, {target.lanes()} lanes, {target.vector_registers} "
          f"registers; knobs {knobs}; load average {load}", flush=True)
    for name in args.layers.split(","):
        bench_layer(LAYERS[name], knobs, args.rounds, args.calls, target, args.asm_dir)


if __name__ == "__main__":
    main()
