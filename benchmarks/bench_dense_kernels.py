"""Time sparsec's host kernels (dense conv, FC / matmul, CSR, pooling) against onnxruntime.

Each case is one kernel and the single-node ONNX model computing the same thing (for a CSR
kernel: onnxruntime's *dense* op on the same masked weight). Both engines get the same number
of threads; rounds are interleaved, with a pause between engines (both keep spinning thread
pools after a run: TVM's for ~0.17 s), and the table shows medians of the per-round means and
their ratio.

    .venv/bin/python benchmarks/bench_dense_kernels.py [--threads 2] [--rounds 15] [-k conv]
        [--target-json '{"isa": "avx2"}'] [--knobs '{"out_block": 12}']

On a shared machine, `--threads 1 --cpu-time` is steadier: it times process CPU time, which
other processes' time slices do not inflate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    # TVM's pool workers spin ~0.17 s after a parallel run here (its default spin count), on
    # cores onnxruntime's threads then share: a 0.1 s pause halved onnxruntime's 2-thread speed
    p.add_argument("--pause", type=float, default=0.3, help="seconds between engines")
    p.add_argument("-k", "--filter", default="", help="only cases whose name contains this")
    p.add_argument("--cpu-time", action="store_true", help="time CPU time (needs --threads 1)")
    p.add_argument("--target-json", help="a target other than this machine as it is, e.g. '{\"isa\": \"avx2\"}'")
    p.add_argument("--knobs", default="{}", help="knob overrides (JSON) for every kernel whose knobs have them")
    args = p.parse_args()
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time counts every thread's time: use it with --threads 1")
    return args


ARGS = _parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # TVM's thread pool reads this when it starts
    os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)

import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsec.ir.activation import Activation  # noqa: E402
from sparsec.lower.kernels.common import Kernel  # noqa: E402
from sparsec.lower.kernels.csr import CsrKnobs, csr_conv1x1_kernel, csr_dense_kernel  # noqa: E402
from sparsec.lower.kernels.dense_conv import DenseConvKnobs, dense_conv_kernel  # noqa: E402
from sparsec.lower.kernels.dense_matmul import MatmulKnobs, dense_kernel, matmul_kernel  # noqa: E402
from sparsec.lower.kernels.pool import avg_pool_kernel, global_avg_pool_kernel, max_pool_kernel  # noqa: E402
from sparsec.lower.target import host, resolve_target, tvm_target  # noqa: E402
from sparsec.target import Target  # noqa: E402

RNG = np.random.default_rng(0)


def _knobs(cls) -> dict:
    """{"knobs": cls(...)} with the --knobs overrides this knob class has (none: {})."""
    import json

    given = json.loads(ARGS.knobs) if ARGS is not None else {}
    mine = {k: v for k, v in given.items() if k in cls.__dataclass_fields__}
    return {"knobs": cls(**mine)} if mine else {}


@dataclass
class Case:
    """One kernel and its onnxruntime twin; `flops` counts useful work (0: not shown)."""

    name: str
    kernel: Callable[[Target], Kernel]
    nodes: list  # ONNX nodes reading "x" (and "b" for two-input cases), writing "y"
    inputs: dict[str, np.ndarray]
    initializers: dict[str, np.ndarray]
    flops: float = 0.0


# --- model builders ------------------------------------------------------------------------


def _onnx_session(case: Case, threads: int) -> ort.InferenceSession:
    ins = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in case.inputs.items()]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(v, k) for k, v in case.initializers.items()]
    graph = helper.make_graph(case.nodes, case.name, ins, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _rand(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _masked(shape, density: float) -> np.ndarray:
    w = _rand(*shape)
    w[RNG.random(shape) >= density] = 0
    return w


def conv_case(name, in_shape, out_ch, k, stride=1, pad=0, groups=1, density=1.0, bias=False,
              relu=False, sparse=False) -> Case:
    w = _masked((out_ch, in_shape[1] // groups, k, k), density)
    b = _rand(out_ch) if bias else None
    act = Activation("relu") if relu else None
    nodes = [helper.make_node("Conv", ["x", "w", *(["bias"] if bias else [])], ["c" if relu else "y"],
                              strides=[stride] * 2, pads=[pad] * 4, group=groups)]
    nodes += [helper.make_node("Relu", ["c"], ["y"])] if relu else []
    if sparse:
        make = lambda t: csr_conv1x1_kernel(w, in_shape, (stride, stride), b, act, target=t,  # noqa: E731
                                            **_knobs(CsrKnobs))
    else:
        make = lambda t: dense_conv_kernel(w, in_shape, strides=(stride, stride), pads=(pad,) * 4,  # noqa: E731
                                           groups=groups, bias=b, activation=act, target=t, **_knobs(DenseConvKnobs))
    oh = (in_shape[2] + 2 * pad - k) // stride + 1
    flops = 2.0 * np.count_nonzero(w) * oh * oh * in_shape[0]
    inits = {"w": w, **({"bias": b} if bias else {})}
    return Case(name, make, nodes, {"x": _rand(*in_shape)}, inits, flops)


def fc_case(name, m, k, n, density=1.0, sparse=False) -> Case:
    w = _masked((n, k), density)
    make = ((lambda t: csr_dense_kernel(w, (m, k), target=t, **_knobs(CsrKnobs))) if sparse
            else (lambda t: dense_kernel(w, (m, k), target=t, **_knobs(MatmulKnobs))))
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    return Case(name, make, nodes, {"x": _rand(m, k)}, {"w": w}, 2.0 * m * np.count_nonzero(w))


def matmul_case(name, a_shape, b_shape) -> Case:
    nodes = [helper.make_node("MatMul", ["x", "b"], ["y"])]
    flops = 2.0 * np.prod(a_shape) * b_shape[-1]
    return Case(name, lambda t: matmul_kernel(a_shape, b_shape, target=t, **_knobs(MatmulKnobs)), nodes,
                {"x": _rand(*a_shape), "b": _rand(*b_shape)}, {}, flops)


def pool_case(name, op, in_shape, k=0, stride=1, pad=0) -> Case:
    if op == "GlobalAveragePool":
        make, attrs = (lambda t: global_avg_pool_kernel(in_shape, target=t)), {}
    else:
        fn = max_pool_kernel if op == "MaxPool" else avg_pool_kernel
        make = lambda t: fn(in_shape, (k, k), (stride, stride), (pad,) * 4)  # noqa: E731
        attrs = dict(kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4)
    return Case(name, make, [helper.make_node(op, ["x"], ["y"], **attrs)], {"x": _rand(*in_shape)}, {})


def cases() -> list[Case]:
    return [
        conv_case("conv3x3 256x56x56->256 (VGG conv3)", (1, 256, 56, 56), 256, 3, pad=1),
        conv_case("conv3x3 64x56x56->64 (ResNet layer1)", (1, 64, 56, 56), 64, 3, pad=1),
        conv_case("conv3x3 s2 128x56x56->128", (1, 128, 56, 56), 128, 3, stride=2, pad=1),
        conv_case("conv3x3 512x7x7->512 (ResNet layer4)", (1, 512, 7, 7), 512, 3, pad=1),
        conv_case("conv7x7 s2 3x224x224->64 (stem)", (1, 3, 224, 224), 64, 7, stride=2, pad=3),
        conv_case("conv1x1 512x28x28->512", (1, 512, 28, 28), 512, 1),
        conv_case("conv1x1 512x28x28->512 +bias+relu", (1, 512, 28, 28), 512, 1, bias=True, relu=True),
        conv_case("conv1x1 s2 256x56x56->512 (ResNet-50 down)", (1, 256, 56, 56), 512, 1, stride=2),
        conv_case("conv1x1 24x56x56->144 (MBv2 expand)", (1, 24, 56, 56), 144, 1),
        conv_case("conv1x1 144x56x56->24 (MBv2 project)", (1, 144, 56, 56), 24, 1),
        conv_case("dwconv3x3 144x56x56", (1, 144, 56, 56), 144, 3, pad=1, groups=144),
        conv_case("dwconv3x3 s2 144x56x56", (1, 144, 56, 56), 144, 3, stride=2, pad=1, groups=144),
        conv_case("grouped3x3 g32 128x56x56->128", (1, 128, 56, 56), 128, 3, pad=1, groups=32),
        fc_case("fc 1x25088->4096 (VGG fc6)", 1, 25088, 4096),
        fc_case("fc 1x4096->4096 (VGG fc7)", 1, 4096, 4096),
        fc_case("fc 64x512->512", 64, 512, 512),
        matmul_case("matmul 64x512 @ 512x512", (64, 512), (512, 512)),
        conv_case("L4 csr1x1 512x28x28->512 80% sparse (ort dense)", (1, 512, 28, 28), 512, 1,
                  density=0.2, sparse=True),
        fc_case("csr fc 1x25088->4096 90% sparse (ort dense)", 1, 25088, 4096, density=0.1, sparse=True),
        pool_case("maxpool3x3 s2 64x112x112", "MaxPool", (1, 64, 112, 112), 3, 2, 1),
        pool_case("maxpool2x2 s2 64x224x224", "MaxPool", (1, 64, 224, 224), 2, 2),
        pool_case("avgpool3x3 s1 256x28x28", "AveragePool", (1, 256, 28, 28), 3, 1, 1),
        pool_case("global avgpool 2048x7x7", "GlobalAveragePool", (1, 2048, 7, 7)),
    ]


# --- timing --------------------------------------------------------------------------------


def _mean_time(fn: Callable[[], object], min_seconds: float = 0.02) -> float:
    """Mean seconds per call over enough calls to fill `min_seconds`."""
    clock = time.process_time if ARGS is not None and ARGS.cpu_time else time.perf_counter
    calls, start = 0, clock()
    while True:
        fn()
        calls += 1
        elapsed = clock() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def _tvm_runner(kernel: Kernel, inputs: dict[str, np.ndarray], target: Target):
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    dev = tvm.cpu(0)
    args = [tvm.runtime.tensor(a, dev) for a in (*inputs.values(), *kernel.constants)]
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, kernel.out_dtype), dev)
    fn = lib[str(kernel.func.attrs["global_symbol"])]
    return lambda: fn(*args, out), out


def run_case(case: Case, target: Target, rounds: int, pause: float) -> None:
    kernel = case.kernel(target)
    tvm_run, out = _tvm_runner(kernel, case.inputs, target)
    sess = _onnx_session(case, target.threads)
    ort_run = lambda: sess.run(None, case.inputs)  # noqa: E731
    want, _ = ort_run()[0], tvm_run()
    err = float(np.abs(out.numpy() - want).max() / max(np.abs(want).max(), 1e-30))
    times = {"tvm": [], "ort": []}
    for _ in range(rounds):
        for name, fn in (("tvm", tvm_run), ("ort", ort_run)):
            time.sleep(pause)
            fn()  # warm the engine's thread pool after the pause
            times[name].append(_mean_time(fn))
    t_tvm, t_ort = (float(np.median(times[k])) * 1e3 for k in ("tvm", "ort"))
    rate = f"{case.flops / t_tvm / 1e6:7.1f}" if case.flops else "      -"
    print(f"{case.name:<50} {t_tvm:9.3f} {t_ort:9.3f} {t_tvm / t_ort:7.2f} {rate}  {err:.0e}", flush=True)


def main() -> int:
    args = ARGS
    target = resolve_target(spec=args.target_json) if args.target_json else host(args.threads)
    print(f"threads={args.threads} rounds={args.rounds} target {target.name}: {target.cpu}, {target.isa}, "
          f"{target.lanes()} lanes, {target.vector_registers} registers; knobs {args.knobs}")
    print(f"{'case':<50} {'tvm ms':>9} {'ort ms':>9} {'tvm/ort':>7} {'GF/s':>7}  max rel err")
    for case in cases():
        if args.filter in case.name:
            run_case(case, target, args.rounds, args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
