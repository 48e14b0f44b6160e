"""`sparsec inspect --target mali`: the static GPU report of a model, layer by layer (see `static`).

For pattern layers it also counts sparsec's dense GPU conv on the same layer (zeros multiplied),
the baseline of the pattern kernel's global loads per useful FMA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sparsec.ir.module import Module
from sparsec.ir.ops import Conv2d
from sparsec.lower.gpu.conv import dense_conv_kernel
from sparsec.lower.gpu.launch import lower
from sparsec.lower.gpu.static import KernelCounts, count_kernel
from sparsec.lower.relax_build import build_relax
from sparsec.lower.target import tvm_target
from sparsec.target import Target
from sparsec.tuning.task import bias_data, original_order


@dataclass(frozen=True)
class GpuLayerReport:
    result: str
    op: str
    format: str
    kernels: tuple[KernelCounts, ...]
    useful_fmas: int  # kept multiply-adds of the layer (0: no weights)
    dense_loads: int = 0  # pattern layers: sparsec's dense GPU conv's global loads on the same layer

    @property
    def loads(self) -> int:
        return sum(k.loads for k in self.kernels)

    @property
    def loads_per_fma(self) -> float | None:
        return self.loads / self.useful_fmas if self.useful_fmas else None

    @property
    def vs_dense(self) -> float | None:
        """Pattern layers: global loads per useful FMA as a fraction of the dense GPU conv's."""
        return self.loads / self.dense_loads if self.dense_loads else None

    def to_json(self) -> dict:
        return {**asdict(self), "loads": self.loads, "loads_per_fma": self.loads_per_fma, "vs_dense": self.vs_dense}


def kernel_counts(func, target: Target, constants: tuple[np.ndarray, ...], *,
                  exhaustive: bool = False) -> tuple[KernelCounts, ...]:
    """The counts of each OpenCL kernel of `func` (a sparsec kernel: its constants are the
    parameters before the output); `exhaustive`: see `static.count_kernel`."""
    lowered = lower(func, tvm_target(target))
    names = lowered.param_names[len(lowered.param_names) - 1 - len(constants): -1]
    consts = dict(zip(names, constants))
    return tuple(count_kernel(lowered.device[la.kernel], la, consts, exhaustive=exhaustive)
                 for la in lowered.launches)


def gpu_report(module: Module, target: Target) -> list[GpuLayerReport]:
    """The static report of an optimised module compiled for a GPU target."""
    mod, plans = build_relax(module, target)
    ops = {op.result: op for op in module.ops}
    reports = []
    for plan in plans:
        if not plan.kernel:
            continue
        kernels = kernel_counts(mod[plan.kernel], target, tuple(plan.constants))
        dense = _dense_loads(ops[plan.result], module, target) if plan.format == "pattern" else 0
        reports.append(GpuLayerReport(plan.result, plan.op, plan.format, kernels, plan.kept_macs, dense))
    return reports


def _dense_loads(op: Conv2d, module: Module, target: Target) -> int:
    weight = original_order(op, module.weight(op.weight))
    kernel = dense_conv_kernel(weight, module.types[op.input].shape, strides=op.strides, pads=op.pads,
                               dilations=op.dilations, bias=bias_data(op, module), activation=op.activation,
                               target=target, name="dense_baseline")
    return sum(k.loads for k in kernel_counts(kernel.func, target, kernel.constants))


def format_gpu_report(reports: list[GpuLayerReport], target: Target) -> str:
    head = (f"{'layer':24} {'op':16} {'format':7} {'work-groups':>11} {'work-items':>10} {'local B':>8} "
            f"{'global loads':>12} {'useful FMAs':>12} {'loads/FMA':>9} {'vs dense':>8} {'divergent':>9}")
    lines = [f"static GPU report for {target.name} (counted from the generated OpenCL kernels' TIR, no GPU run)", head]
    for r in reports:
        wg = sum(k.work_groups for k in r.kernels)
        wi = sum(k.work_items for k in r.kernels)
        local = max((k.local_bytes for k in r.kernels), default=0)
        per = f"{r.loads_per_fma:.4f}" if r.loads_per_fma is not None else "-"
        vs = f"{r.vs_dense:.3f}" if r.vs_dense is not None else "-"
        div = sum(k.divergent_groups for k in r.kernels)
        lines.append(f"%{r.result:23} {r.op:16} {r.format:7} {wg:11d} {wi:10d} {local:8d} {r.loads:12d} "
                     f"{r.useful_fmas:12d} {per:>9} {vs:>8} {div:9d}")
    loads, fmas = sum(r.loads for r in reports), sum(r.useful_fmas for r in reports)
    lines.append(f"total: {loads} global loads, {fmas} useful FMAs ({loads / max(fmas, 1):.4f} loads per useful FMA); "
                 f"divergent work-groups: {sum(k.divergent_groups for r in reports for k in r.kernels)}")
    return "\n".join(lines)
