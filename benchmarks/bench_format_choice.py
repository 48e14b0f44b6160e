"""The cost model's format choice against the clock: for 3x3 layers pruned with patterns at several
kernel-keep ratios, the pattern kernel and the dense kernel (Winograd where it applies) timed on the
same masked weight, interleaved, next to the format analyze-sparsity picks for this machine.

    .venv/bin/python benchmarks/bench_format_choice.py [--rounds 9] [--layers 256x56,512x28] [--keep 1,0.5]
        [--target-json '{"isa": "avx2", "tvm": {"mcpu": "znver3"}}']

A row's choice is right when the picked format is the faster one (or within the noise of it).
`--target-json` judges another vector shape of this machine (its kernels and its cost model's shipped or
calibrated throughputs: AVX2's on an AVX-512 CPU), as `sparsec bench --target-json` runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (medians)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", default="256x56,512x28,256x14,512x7,64x56,128x28",
                   help="CHANNELSxSIZE of square 3x3 stride-1 layers (as many filters as channels)")
    p.add_argument("--keep", default="1,0.5,0.3", help="fractions of the 3x3 kernels kept (8 patterns)")
    p.add_argument("--target-json", metavar="JSON|FILE",
                   help="another vector shape of this machine (one it runs), e.g. '{\"isa\": \"avx2\"}'")
    return p.parse_args(argv)


def _timer(task, knobs: dict, target):
    """A call running the task's kernel once, built with `knobs` over the layer's own."""
    import tvm

    from sparsec.lower.layers import build_kernel
    from sparsec.lower.target import tvm_target

    kernel = build_kernel(task.call, knobs, target)
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    dev = tvm.cpu()
    x = np.random.default_rng(0).standard_normal(task.call.params["in_shape"]).astype(np.float32)
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(np.ascontiguousarray(c), dev) for c in kernel.constants]
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, np.float32), dev)
    fn = lib[kernel.func.attrs["global_symbol"]]
    return lambda: fn(*args, out)


def _median_ms(calls: dict, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            call()
            start = time.perf_counter()
            for _ in range(10):
                call()
            times[name].append((time.perf_counter() - start) / 10 * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def measure(channels: int, size: int, keep: float, target, rounds: int) -> dict:
    """Both kernels of one layer and the format the cost model picks for it on `target`."""
    from sparsec.driver import import_model, optimize
    from sparsec.models import conv_layer
    from sparsec.prune import prune_model
    from sparsec.runtime.bench import densified
    from sparsec.tuning.task import extract_tasks

    model = conv_layer((1, channels, size, size), channels)
    module = import_model(model, prune_model(model, keep_kernels=keep, prune_first_conv=True))
    picked = optimize(module, target=target).weights[0].layout.kind
    as_pattern = optimize(module)  # no target: the direct-only cost model, patterns at any keep ratio
    (pattern_task,) = extract_tasks(as_pattern, target)
    (dense_task,) = extract_tasks(optimize(densified(module), target=target), target)
    ms = _median_ms({"pattern": _timer(pattern_task, {}, target), "dense": _timer(dense_task, {}, target)}, rounds)
    return {"layer": f"{channels}x{size}x{size}", "keep": keep, "picked": "dense" if picked == "dense" else "pattern",
            **ms}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from sparsec.errors import UserError
    from sparsec.lower.target import host, resolve_runnable

    try:
        target = resolve_runnable(args.target_json, "bench_format_choice.py") if args.target_json else host()
    except UserError as err:
        print(f"bench_format_choice.py: error: {err}", file=sys.stderr)
        return 2
    print(f"target {target.name} ({target.cpu}, {target.isa}), {args.threads} threads, {args.rounds} rounds; "
          f"pattern throughput {target.throughputs.pattern:g} ({target.throughputs.source})")
    print("| layer | kernels kept | pattern ms | dense ms | faster | cost model picks | right |")
    print("|---|---:|---:|---:|---|---|---|")
    for layer in args.layers.split(","):
        channels, size = (int(v) for v in layer.split("x"))
        for keep in (float(k) for k in args.keep.split(",")):
            row = measure(channels, size, keep, target, args.rounds)
            faster = "pattern" if row["pattern"] < row["dense"] else "dense"
            margin = max(row["pattern"], row["dense"]) / min(row["pattern"], row["dense"])
            right = "yes" if row["picked"] == faster else ("within 5%" if margin < 1.05 else "NO")
            print(f"| {row['layer']} | {keep:g} | {row['pattern']:.3f} | {row['dense']:.3f} | {faster} "
                  f"({margin:.2f}x) | {row['picked']} | {right} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
