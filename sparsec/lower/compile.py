"""Compile an optimised IR module for a target into a `CompiledModel`."""

from __future__ import annotations

import tvm

from sparsec.errors import UserError
from sparsec.ir.module import Module
from sparsec.lower.relax_build import build_relax
from sparsec.lower.target import resolve_target
from sparsec.runtime.model import CompiledModel, Manifest, TensorSpec


def compile_module(module: Module, target: str = "host") -> CompiledModel:
    """Relax module of kernels -> `tvm.compile` -> a runnable, exportable model."""
    tvm_target = resolve_target(target)
    mod, plans = build_relax(module)
    try:
        executable = tvm.compile(mod, target=tvm_target)
    except tvm.error.TVMError as err:  # which layer: the first line of TVM's message names the function
        raise UserError(f"TVM failed to compile model @{module.name}: {str(err).splitlines()[0]}") from None
    manifest = Manifest(
        inputs=tuple(TensorSpec(p.name, p.type.dtype, p.type.shape) for p in module.inputs),
        outputs=tuple(TensorSpec(name, module.types[f"%{name}"].dtype, module.types[f"%{name}"].shape)
                      for name in module.outputs),
        target=target,
        target_json=str(tvm_target),  # TVM prints targets as their JSON
        layers=tuple({"result": p.result, "op": p.op, "format": p.format, "kernel": p.kernel} for p in plans),
    )
    return CompiledModel(executable, manifest)
