"""The ARM cost proxy: dynamic aarch64 instructions and vector FMAs of generated kernels, counted
under qemu user-mode by sparsec's own TCG plugin (runtime/qemu/insn_count.c).

A proxy, not a time: it counts what executes (no caches, no pipeline, no memory system), the same
number on every run. It ranks code variants for an ARM core without a phone; confirm on one.

    counts = count_kernels({"conv1": (kernel, [x]), ...}, target)   # {"conv1": Count(...), ...}
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm

from sparsec.errors import UserError
from sparsec.lower.kernels.common import Kernel
from sparsec.lower.target import tvm_target
from sparsec.runtime.emulator import Arm64Setup
from sparsec.target import Target

SCRIPT = Path(__file__).parent / "qemu" / "count_kernels.py"
PROXY_NOTE = ("PROXY: dynamic aarch64 instructions counted under qemu (sparsec's TCG plugin); "
              "no caches or pipeline: not a phone timing")


@dataclass(frozen=True)
class Count:
    """One kernel call: dynamic instructions, of which vector FMAs (FMLA/FMLS), and its output."""

    instructions: int
    vector_fmas: int
    output: np.ndarray

    @property
    def fma_share(self) -> float:
        return self.vector_fmas / self.instructions if self.instructions else 0.0


def count_kernels(calls: dict[str, tuple[Kernel, list[np.ndarray]]], target: Target,
                  setup: Arm64Setup | None = None) -> dict[str, Count]:
    """Build every kernel for `target` (an arm64 target) into one library, call each once on its
    inputs (+ its constants) under qemu (the target's CPU model, one thread) with the counting
    plugin; per-kernel counts and outputs."""
    if target.arch != "aarch64":
        raise UserError(f"instruction counts are measured for arm64 targets; {target.name} is {target.arch}")
    setup = setup or Arm64Setup.find()
    if not setup.plugin.exists() or not setup.marker.exists():
        raise UserError(f"the instruction-count plugin is not built ({setup.plugin}); run `make arm64-setup`")
    kernels = {name: kernel for name, (kernel, _) in calls.items()}
    funcs = {name: k.func.with_attr("global_symbol", name) for name, k in kernels.items()}
    lib = tvm.compile(tvm.IRModule(funcs), target=tvm_target(target))
    with tempfile.TemporaryDirectory(prefix="sparsec-count-") as tmp:
        tmp = Path(tmp)
        from tvm.support import cc

        lib.export_library(str(tmp / "kernels.so"), fcompile=cc.cross_compiler(target.cc))
        spec = []
        for name, (kernel, inputs) in calls.items():
            arrays = {f"a{i}": np.ascontiguousarray(a) for i, a in enumerate((*inputs, *kernel.constants))}
            np.savez(tmp / f"{name}.npz", **arrays)
            spec.append({"name": name, "arrays": str(tmp / f"{name}.npz"), "out_shape": list(kernel.out_shape)})
        (tmp / "spec.json").write_text(json.dumps(spec))
        windows = _run_counter(setup, target, tmp)
        with np.load(tmp / "outputs.npz") as outputs:
            results = {name: outputs[name] for name in kernels}
    if len(windows) != 2 * len(kernels):
        raise UserError(f"the instruction counter saw {len(windows)} windows for {len(kernels)} kernels")
    counts = {}
    for i, name in enumerate(kernels):
        (insns, fmas), (empty_insns, empty_fmas) = windows[2 * i], windows[2 * i + 1]
        counts[name] = Count(insns - empty_insns, fmas - empty_fmas, results[name])
    return counts


def _run_counter(setup: Arm64Setup, target: Target, tmp: Path) -> list[tuple[int, int]]:
    counts_file = tmp / "counts.txt"
    command = setup.command(SCRIPT, str(tmp / "kernels.so"), str(tmp / "spec.json"), str(setup.marker),
                            str(tmp / "outputs.npz"), qemu_cpu=target.qemu_cpu, plugin_out=counts_file)
    # one thread: the kernel runs on the calling thread, and no idle worker spins into the counts;
    # a fixed hash seed: Python's own path between the markers is the same on every run
    env = {**setup.environment(threads=1), "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"counting under qemu ({target.qemu_cpu}) failed: {last}")
    windows = []
    for line in counts_file.read_text().splitlines():
        kind, insns, fmas = line.split()
        if kind == "window":
            windows.append((int(insns), int(fmas)))
    return windows


# --- per layer of a model --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCount:
    """One conv / linear layer: its kernel's counts, and those of sparsec's direct dense schedule of the
    same (masked) weight; `error` is the max relative difference of their outputs."""

    result: str
    op: str
    format: str
    sparse: Count
    dense: Count
    error: float

    @property
    def reduction(self) -> float:
        """Dense-schedule instructions over this kernel's (how many times fewer it executes)."""
        return self.dense.instructions / self.sparse.instructions if self.sparse.instructions else 0.0


def count_model(module, target: Target, setup: Arm64Setup | None = None, seed: int = 0) -> list[LayerCount]:
    """Count each conv2d / linear layer of an optimised module: its own kernel and the dense
    schedule of the same weights (a layer compiled dense counts once)."""
    from sparsec.ir.ops import Conv2d, Linear
    from sparsec.lower.layers import conv2d_kernel, linear_kernel
    from sparsec.runtime.bench import densified

    rng, dense_module = np.random.default_rng(seed), densified(module, direct=True)
    calls, layers = {}, []
    for i, op in enumerate(module.ops):
        if not isinstance(op, (Conv2d, Linear)):
            continue
        make = conv2d_kernel if isinstance(op, Conv2d) else linear_kernel
        kernel, fmt = make(op, module, target)
        x = [rng.standard_normal(module.types[ref].shape).astype(np.float32)  # data, then a fused residual
             for ref in (op.input, getattr(op, "residual", None)) if ref]
        calls[f"layer{i}"] = (kernel, x)
        if fmt != "dense":  # the dense module's op: its knobs ask for the direct algorithm
            calls[f"layer{i}_dense"] = (make(dense_module.ops[i], dense_module, target)[0], x)
        layers.append((i, op, fmt))
    counts = count_kernels(calls, target, setup)
    rows = []
    for i, op, fmt in layers:
        sparse = counts[f"layer{i}"]
        dense = counts.get(f"layer{i}_dense", sparse)
        scale = max(float(np.abs(dense.output).max()), 1e-30)
        error = float(np.abs(sparse.output - dense.output).max()) / scale
        rows.append(LayerCount(op.result, op.name, fmt, sparse, dense, error))
    return rows


def format_counts(rows: list[LayerCount], target: Target, title: str) -> str:
    """The per-layer table, labelled a proxy."""
    lines = [f"{title}: {target.name} {target.cpu} (qemu {target.qemu_cpu}), one thread", PROXY_NOTE,
             f"{'layer':28} {'op':7} {'format':8} {'instructions':>13} {'vector FMAs':>12} {'FMA %':>6} "
             f"{'dense sched.':>13} {'fewer':>6} {'rel err':>8}"]
    for r in rows:
        lines.append(f"{r.result[:28]:28} {r.op:7} {r.format:8} {r.sparse.instructions:13,d} "
                     f"{r.sparse.vector_fmas:12,d} {100 * r.sparse.fma_share:5.1f}% {r.dense.instructions:13,d} "
                     f"{r.reduction:5.2f}x {r.error:8.1e}")
    sparse, dense = (sum(getattr(r, k).instructions for r in rows) for k in ("sparse", "dense"))
    fmas = sum(r.sparse.vector_fmas for r in rows)
    lines.append(f"{'total':45} {sparse:13,d} {fmas:12,d} {100 * fmas / max(sparse, 1):5.1f}% {dense:13,d} "
                 f"{dense / max(sparse, 1):5.2f}x")
    return "\n".join(lines)


def counts_json(rows: list[LayerCount], target: Target) -> dict:
    return {"proxy": PROXY_NOTE, "target": target.to_dict(), "layers": [
        {"result": r.result, "op": r.op, "format": r.format, "instructions": r.sparse.instructions,
         "vector_fmas": r.sparse.vector_fmas, "fma_share": round(r.sparse.fma_share, 4),
         "dense_schedule_instructions": r.dense.instructions,
         "dense_schedule_vector_fmas": r.dense.vector_fmas, "fewer_than_dense": round(r.reduction, 3),
         "max_rel_error_vs_dense": r.error} for r in rows]}
