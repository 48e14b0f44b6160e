"""Compile an optimised IR module for a target into a `CompiledModel`."""

from __future__ import annotations

import dataclasses

import tvm
import tvm_ffi

from sparsec.errors import UserError, error_line
from sparsec.ir.module import Module
from sparsec.lower.relax_build import build_relax
from sparsec.lower.target import tvm_target
from sparsec.runtime.model import CompiledModel, Manifest, TensorSpec, add_signature
from sparsec.target import Target, require_compiler

# Ctrl-C in a Python callback that TVM's C++ called reaches Python again as a bare RuntimeError
# unless tvm_ffi knows the exception's name: name it, so an interrupted compile is an interrupt.
tvm_ffi.register_error("KeyboardInterrupt", KeyboardInterrupt)


def compile_module(module: Module, target: Target) -> CompiledModel:
    """Relax module of kernels -> `tvm.compile` -> a runnable, exportable model."""
    require_compiler(target)  # a missing cross compiler fails before minutes of work
    mod, plans = build_relax(module, target)
    manifest = Manifest(
        inputs=tuple(TensorSpec(p.name, p.type.dtype, p.type.shape) for p in module.inputs),
        outputs=tuple(TensorSpec(name, module.types[f"%{name}"].dtype, module.types[f"%{name}"].shape)
                      for name in module.outputs),
        target=target.name,
        target_json=str(tvm_target(target)),  # TVM prints targets as their JSON
        layers=tuple(_layer_entry(p) for p in plans),
        target_spec=target.to_dict(),
        device_kind=target.device_kind,
    )
    if target.kind == "gpu":
        from sparsec.lower.gpu.program import compile_gpu

        executable, bundle = compile_gpu(module, add_signature(mod, manifest), plans, target,
                                         lambda err: _compile_failure(module, plans, err))
        return CompiledModel(executable, dataclasses.replace(manifest, gpu=_gpu_summary(bundle)), gpu_bundle=bundle)
    try:
        executable = tvm.compile(add_signature(mod, manifest), target=tvm_target(target))
    except (RuntimeError, ValueError) as err:  # what TVM raises
        raise UserError(_compile_failure(module, plans, str(err))) from None
    return CompiledModel(executable, manifest)


def _gpu_summary(bundle) -> dict:
    """What the manifest says of a GPU model's kernels (the bundle beside it holds the rest)."""
    program = bundle.program
    return {"opencl_source_sha256": program.source_sha256, "kernels": sum(len(la.launches) for la in program.layers),
            "checked_with": "PoCL (correctness only; PoCL timings are not Mali timings)"}


def _layer_entry(plan) -> dict:
    """One layer of the manifest: its kernel, format and, for tunable kernels, task key and knobs."""
    entry = {"result": plan.result, "op": plan.op, "format": plan.format, "kernel": plan.kernel,
             "constant_bytes": plan.constant_bytes, "kept_macs": plan.kept_macs}
    if plan.task:
        entry.update(task=plan.task, knobs=plan.knobs)
    return entry


def _compile_failure(module: Module, plans, message: str) -> str:
    """Name the layer whose kernel TVM rejected (kernels are named after their layers)."""
    reason = error_line(message)
    for plan in plans:
        if plan.kernel in message:
            return f"layer %{plan.result} ({plan.op}): TVM failed to compile its kernel {plan.kernel}: {reason}"
    return f"model @{module.name}: TVM failed to compile it: {reason}"
