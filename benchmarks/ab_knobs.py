"""Interleaved A/B of kernel knob sets on one layer, kernels alone: the measurement behind a
register-plan rule (`sparsec/lower/kernels/register_plan.py`).

    .venv/bin/python benchmarks/ab_knobs.py pattern 256x56 --keep 0.5 '{}' '{"tap_copies": 1}'
    .venv/bin/python benchmarks/ab_knobs.py pattern 256x56 --kernel-groups 4 \
        '{"filters_per_group": 4}' '{"filters_per_group": 2}'
    .venv/bin/python benchmarks/ab_knobs.py pattern 512x14 --stride 2 '{}' '{"filter_splits": 2}'
    .venv/bin/python benchmarks/ab_knobs.py pointwise 64x56 --filters 256 --residual '{}' '{"vectors": 4}'
    .venv/bin/python benchmarks/ab_knobs.py pattern 256x14 '{}' \
        '{"target": {"isa": "avx2", "l2_bytes": 524288, "tvm": {"mcpu": "znver3"}}}'

LAYER is CHANNELSxSIZE (a square input plane); a pattern layer has as many filters as channels, random
8-pattern kernels of which `--keep` survive (with `--kernel-groups G`, G consecutive filters keep the
same kernels, as `sparsec prune --kernel-groups` makes them); a pointwise layer is a dense 1x1 conv
with bias and ReLU. Each variant prints the knobs it resolves to, its median ms over the rounds (each
round times every variant, the order reversed every other round, ~0.15 s of back-to-back calls after
a short pause), useful GFLOP/s, the share of the FMA peak measured in the same process, and its speed
against the first variant. Every variant's output must match the first's (1e-4 relative, or 1e-5 of its
largest value: sums in another order round differently). `--flush-mb N` writes N MB before each call,
so the kernel finds its data out of the caches, as a layer inside a model does. A variant's "target" (a
`--target-json` object) compiles it for another vector shape of this machine (AVX2 code on an AVX-512 CPU),
its own plan and peak: the ISAs side by side, interleaved.
The machine is shared and noisy: trust ratios measured in one run, and repeat a run before keeping a rule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PAUSE_S = 0.05  # between batches: TVM's spinning workers and the previous batch settle
BATCH_S = 0.15  # back-to-back calls per variant per round


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("pattern", "pointwise"))
    p.add_argument("layer", help="CHANNELSxSIZE, e.g. 256x56 (input channels x square input plane)")
    p.add_argument("variants", nargs="+", help="knob sets as JSON (PatternConvKnobs / DenseConvKnobs fields)")
    p.add_argument("--keep", type=float, default=0.5, help="pattern: fraction of kernels kept (default 0.5)")
    p.add_argument("--kernel-groups", type=int, default=1, metavar="G", help="pattern: filters sharing kernels")
    p.add_argument("--filters", type=int, help="pointwise: output channels (default: the input channels)")
    p.add_argument("--residual", action="store_true", help="pointwise: a fused residual add")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--flush-mb", type=int, default=0, metavar="N", help="MB written before each call")
    args = p.parse_args(argv)
    try:
        args.channels, args.size = (int(v) for v in args.layer.lower().split("x"))
        args.knobs = [json.loads(v) for v in args.variants]
    except ValueError as err:
        p.error(f"layer must be CHANNELSxSIZE and variants JSON objects: {err}")
    return args


def grouped_pattern_weight(rng, filters: int, channels: int, keep: float, groups: int) -> np.ndarray:
    """Random 8-pattern kernels, `keep` of them kept; `groups` consecutive filters keep the same ones."""
    from bench_pattern_conv import pruned_weight

    if groups == 1:
        return pruned_weight(rng, filters, channels, keep)
    mask = np.repeat(pruned_weight(rng, -(-filters // groups), channels, keep) != 0, groups, axis=0)[:filters]
    return rng.standard_normal(mask.shape).astype(np.float32) * mask


def build(args, knobs: dict, target, data):
    """(kernel, resolved knobs, useful multiply-adds) of one variant."""
    from sparsec.ir.activation import Activation

    strides = (args.stride, args.stride)
    if args.kind == "pattern":
        from sparsec.fkw import build_fkw
        from sparsec.lower.kernels.pattern_conv import PatternConvKnobs, pattern_conv_kernel, resolve_knobs

        fkw, asked = build_fkw(data["weight"]), PatternConvKnobs(**knobs)
        kernel = pattern_conv_kernel(fkw, data["x"].shape, strides=strides, knobs=asked, target=target)
        kept = fkw.num_kernels / (fkw.num_filters * args.channels)
        resolved = resolve_knobs(data["x"].shape, strides, knobs=asked, target=target, filters=fkw.num_filters,
                                 kept=kept)
        return kernel, resolved, fkw.num_kernels * fkw.taps_per_pattern * kernel.out_shape[2] * kernel.out_shape[3]
    from sparsec.lower.kernels.dense_conv import DenseConvKnobs, dense_conv_kernel, resolve_knobs

    w, asked = data["weight"], DenseConvKnobs(**knobs)
    kernel = dense_conv_kernel(w, data["x"].shape, strides=strides, bias=data["bias"], activation=Activation("relu"),
                               residual=args.residual, knobs=asked, target=target)
    resolved = resolve_knobs(w.shape, data["x"].shape, strides, knobs=asked, target=target)
    return kernel, resolved, w.size * kernel.out_shape[2] * kernel.out_shape[3]


def layer_data(args) -> dict:
    rng = np.random.default_rng(0)
    c, size = args.channels, args.size
    data = {"x": rng.standard_normal((1, c, size, size)).astype(np.float32)}
    if args.kind == "pattern":
        data["weight"] = grouped_pattern_weight(rng, c, c, args.keep, args.kernel_groups)
        return data
    filters = args.filters or c
    out = (size - 1) // args.stride + 1
    data["weight"] = (rng.standard_normal((filters, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
    data["bias"] = rng.standard_normal(filters).astype(np.float32)
    data["residual"] = rng.standard_normal((1, filters, out, out)).astype(np.float32)
    return data


def runner(kernel, target, data, residual: bool):
    """A call of the compiled kernel on the layer's data, and its output tensor."""
    import tvm

    from sparsec.lower.target import tvm_target

    lib = tvm.compile(kernel.func, target=tvm_target(target))
    dev = tvm.cpu(0)
    inputs = (data["x"], *([data["residual"]] if residual else []), *kernel.constants)
    args = [tvm.runtime.tensor(a, dev) for a in inputs]
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, np.float32), dev)
    func = lib[kernel.func.attrs["global_symbol"]]
    return (lambda: func(*args, out)), out


def median_ms(call, calls: int, flush: np.ndarray) -> float:
    times = []
    for _ in range(calls):
        if flush.size:
            np.add(flush, 1.0, out=flush)
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its pool
    from sparsec.errors import UserError
    from sparsec.runtime.roofline import fma_peak_gflops

    data = layer_data(args)
    runs, first, targets = [], None, []
    for variant in args.knobs:
        knobs = {k: v for k, v in variant.items() if k != "target"}
        try:
            target = variant_target(variant, args.threads)
            kernel, resolved, macs = build(args, knobs, target, data)
        except (TypeError, ValueError, UserError) as err:  # an unknown knob or a value the generator refuses
            print(f"ab_knobs.py: error: knobs {json.dumps(variant)}: {err}", file=sys.stderr)
            return 2
        targets.append(target)
        call, out = runner(kernel, target, data, args.kind == "pointwise" and args.residual)
        call()
        if first is None:
            first = out.numpy()
        else:
            # sums in another order: fp32 rounding grows with the output's scale (a 1024-channel
            # layer's outputs reach ~250, and its near-zero ones differ by 2e-4 between tilings)
            scale = max(1.0, float(np.abs(first).max()))
            np.testing.assert_allclose(out.numpy(), first, rtol=1e-4, atol=1e-5 * scale)
        print(f"{json.dumps(variant)} -> {resolved}", flush=True)
        runs.append((json.dumps(variant), call, macs))
    # measured before and after the rounds, the best kept: a neighbour holding a core through one
    # measurement (0.35 s) halves it (this script once printed 156% of such a peak)
    for target in dict.fromkeys(targets):
        fma_peak_gflops(target, args.threads)
    flush = np.ones(args.flush_mb << 18, np.float32)
    calls = max(3, int(BATCH_S * 1e3 / max(median_ms(runs[0][1], 3, flush), 1e-3)))
    times: list[list[float]] = [[] for _ in runs]
    for rnd in range(args.rounds):
        for i in (range(len(runs)) if rnd % 2 == 0 else reversed(range(len(runs)))):
            time.sleep(PAUSE_S)
            times[i].append(median_ms(runs[i][1], calls, flush))
    peaks = {target: fma_peak_gflops(target, args.threads) for target in dict.fromkeys(targets)}
    base = float(np.median(times[0]))
    flushed = f", {args.flush_mb} MB written before each" if flush.size else ""
    print(", ".join(f"{t.cpu} ({t.isa}) FMA peak {peak:.1f} GFLOP/s" for t, peak in peaks.items())
          + f"; {args.threads} threads, {args.rounds} rounds of {calls} calls{flushed}")
    for (name, _, macs), ts, target in zip(runs, times, targets):
        ms = float(np.median(ts))
        gflops = 2 * macs / ms / 1e6
        print(f"{ms:8.3f} ms {gflops:7.1f} GFLOP/s {gflops / peaks[target]:5.0%} of peak  x{base / ms:5.3f}  {name}")
    return 0


def variant_target(variant: dict, threads: int):
    """This machine's target, or the variant's "target" (a `--target-json` object) if it runs here."""
    from sparsec.lower.target import host, resolve_runnable

    if "target" not in variant:
        return host(threads)
    return resolve_runnable(json.dumps({"threads": threads, **variant["target"]}), "ab_knobs.py")


if __name__ == "__main__":
    sys.exit(main())
