"""Compile an optimised IR module for a target into a `CompiledModel`."""

from __future__ import annotations

import tvm

from sparsec.errors import UserError
from sparsec.ir.module import Module
from sparsec.lower.relax_build import build_relax
from sparsec.lower.target import tvm_target
from sparsec.runtime.model import CompiledModel, Manifest, TensorSpec
from sparsec.target import Target, require_compiler


def compile_module(module: Module, target: Target) -> CompiledModel:
    """Relax module of kernels -> `tvm.compile` -> a runnable, exportable model."""
    require_compiler(target)  # a missing cross compiler fails before minutes of work
    mod, plans = build_relax(module, target)
    bundle = None
    if target.kind == "gpu":
        from sparsec.lower.gpu.program import compile_gpu

        executable, bundle = compile_gpu(module, mod, plans, target, lambda err: _compile_failure(module, plans, err))
    else:
        try:
            executable = tvm.compile(mod, target=tvm_target(target))
        except (RuntimeError, ValueError) as err:  # what TVM raises
            raise UserError(_compile_failure(module, plans, str(err))) from None
    manifest = Manifest(
        inputs=tuple(TensorSpec(p.name, p.type.dtype, p.type.shape) for p in module.inputs),
        outputs=tuple(TensorSpec(name, module.types[f"%{name}"].dtype, module.types[f"%{name}"].shape)
                      for name in module.outputs),
        target=target.name,
        target_json=str(tvm_target(target)),  # TVM prints targets as their JSON
        layers=tuple({"result": p.result, "op": p.op, "format": p.format, "kernel": p.kernel,
                      "constant_bytes": p.constant_bytes, "kept_macs": p.kept_macs} for p in plans),
        target_spec=target.to_dict(),
        device_kind=target.device_kind,
        gpu=_gpu_summary(bundle) if bundle else {},
    )
    return CompiledModel(executable, manifest, gpu_bundle=bundle)


def _gpu_summary(bundle) -> dict:
    """What the manifest says of a GPU model's kernels (the bundle beside it holds the rest)."""
    program = bundle.program
    return {"opencl_source_sha256": program.source_sha256, "kernels": sum(len(la.launches) for la in program.layers),
            "checked_with": "PoCL (correctness only; PoCL timings are not Mali timings)"}


def _compile_failure(module: Module, plans, message: str) -> str:
    """Name the layer whose kernel TVM rejected (kernels are named after their layers)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "no message"
    for plan in plans:
        if plan.kernel in message:
            return f"layer %{plan.result} ({plan.op}): TVM failed to compile its kernel {plan.kernel}: {reason}"
    return f"model @{module.name}: TVM failed to compile it: {reason}"
