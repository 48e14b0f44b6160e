"""Static GPU figures for the benchmark cases (no GPU run): `python benchmarks/gpu_static.py L1 L2 M1`.

Per case: the static GPU report of its mali kernels (`sparsec inspect --target mali` on the case's
model and masks). Counts come from the generated code; nothing here is a timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cases import CASE_BY_KEY  # noqa: E402

from sparsec.driver import import_model, optimize  # noqa: E402
from sparsec.lower.gpu.report import format_gpu_report, gpu_report  # noqa: E402
from sparsec.lower.target import resolve_target  # noqa: E402


def main(keys: list[str]) -> None:
    target = resolve_target("mali")
    for key in keys:
        case = CASE_BY_KEY[key]
        module = optimize(import_model(case.model, case.masks), target=target)
        print(f"## {key}: {case.title}")
        print(format_gpu_report(gpu_report(module, target), target), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["L1", "L2", "M1"])
