"""A benchmark case layer by layer: sparsec's kernels against onnxruntime's own per-node times.

    .venv/bin/python benchmarks/compare_layers.py M2 [--runs 25] [--threads 2]

Both engines run the case's masked model in this process on the same threads; layers are matched by
kind in execution order (`sparsec.runtime.peer_profile`). Per sort of layer (with sparsec's useful
GFLOP/s against the FMA peak measured in the same process), what the case's target asks of the
matched layers in those terms, then per layer: onnxruntime / sparsec > 1 where sparsec is faster.
Profilers add a little to every node, so compare ratios, not these milliseconds with `make bench`'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases import CASE_BY_KEY, THREADS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", choices=sorted(CASE_BY_KEY), help="a case of benchmarks/cases.py")
    p.add_argument("--runs", type=int, default=25, help="profiled runs per engine (medians)")
    p.add_argument("--threads", type=int, default=THREADS)
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its pool

    from sparsec.check import seeded_inputs
    from sparsec.errors import UserError
    from sparsec.runtime.bench import input_shapes_of, measure_peak
    from sparsec.runtime.peer_profile import compare_layers, format_comparison

    case = CASE_BY_KEY[args.case]
    inputs = seeded_inputs(input_shapes_of(case.model))
    try:
        pairs = compare_layers(case.model, case.masks, inputs, threads=args.threads, runs=args.runs)
    except UserError as err:
        print(f"compare_layers: {err}", file=sys.stderr)
        return 2
    peak = measure_peak(args.threads)
    print(f"## {case.key}: {case.title} ({args.threads} threads, medians of {args.runs} profiled runs; "
          f"FMA peak {peak:.1f} GFLOP/s)\n")
    print(format_comparison(pairs, peak, case.min_speedup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
