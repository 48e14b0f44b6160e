"""`make demo`: the main job on an embedded default — VGG-16 from the zoo, pruned PCONV-style,
compiled for the host, checked against onnxruntime, then the speed table."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from sparsec.check import check_compiled
from sparsec.driver import compile as compile_model
from sparsec.driver import import_model
from sparsec.models import vgg16
from sparsec.prune import prune_model, save_masks
from sparsec.report import format_report, inspect_model

# PCONV's VGG-16 setting: 8 patterns (2.25x) and 27.8% of kernels kept (3.6x); FC 90% sparse.
PATTERNS, KEEP_KERNELS, UNSTRUCTURED = 8, 0.278, 0.9


def run_demo(resolution: int = 224, threads: int = 2) -> int:
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    with tempfile.TemporaryDirectory(prefix="sparsec-demo-") as tmp:
        model_path, masks_path = Path(tmp) / "vgg16.onnx", Path(tmp) / "masks.npz"
        _step(f"1. VGG-16 at {resolution}x{resolution} from the model zoo -> {model_path.name}")
        model = vgg16(resolution=resolution)
        model_path.write_bytes(model.SerializeToString())
        _step(f"2. PCONV pruning: {PATTERNS} patterns, {KEEP_KERNELS:.1%} of kernels kept, "
              f"FC {UNSTRUCTURED:.0%} sparse")
        masks = prune_model(model, patterns=PATTERNS, keep_kernels=KEEP_KERNELS, unstructured=UNSTRUCTURED)
        save_masks(masks, masks_path)
        print(format_report(inspect_model(model, masks)))
        _step("3. Compile for the host (import -> passes -> TVM)")
        module = import_model(model_path, masks_path)
        start = time.perf_counter()
        compiled = compile_model(module, target="host")
        print(f"compiled in {time.perf_counter() - start:.1f} s; layer formats: {_formats(compiled)}")
        _step("4. Check: compiled model vs the reference interpreter and onnxruntime")
        print(check_compiled(compiled, module, model_path, masks_path))
        _step(f"5. Speed on this CPU ({threads} threads): sparsec vs onnxruntime vs sparsec's dense path")
        from sparsec.runtime.bench import bench_model

        print(bench_model(model, masks, threads=threads, rounds=5).format_report())
    return 0


def _formats(compiled) -> str:
    counts: dict[str, int] = {}
    for layer in compiled.manifest.layers:
        if layer["op"] in ("conv2d", "linear"):
            counts[layer["format"]] = counts.get(layer["format"], 0) + 1
    return ", ".join(f"{n} {fmt}" for fmt, n in sorted(counts.items()))


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)
