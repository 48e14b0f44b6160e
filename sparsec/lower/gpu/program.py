"""Compile a module's GPU Relax module into the deployable executable and its emulation bundle.

The Relax pipeline here is TVM's generic GPU one without fusion and without dlight (every kernel
is already scheduled, and a fused kernel would no longer be one layer): legalisation (reshapes
become views), then the dataflow lowering and finalisation passes. The OpenCL source comes from the
compiled executable itself; each layer's launches come from lowering the very PrimFunc the
executable was built from (`launch.lower`); every layer's kernels are then built by the OpenCL
compiler (PoCL here, with -cl-std=CL1.2), so a kernel a driver would reject is a compile error
naming its layer with the build log.
"""

from __future__ import annotations

import tvm
from tvm import relax

from sparsec.errors import UserError
from sparsec.ir.files import weight_arrays
from sparsec.ir.module import Module
from sparsec.ir.printer import print_module
from sparsec.lower.gpu.launch import lower
from sparsec.lower.target import tvm_target
from sparsec.runtime.gpu_program import GpuBundle, GpuLayer, GpuProgram
from sparsec.target import Target


def relax_pipeline() -> tvm.transform.Pass:
    t = relax.transform
    return tvm.transform.Sequential([
        t.LegalizeOps(), t.RewriteDataflowReshape(), t.DeadCodeElimination(["main"]), t.ToNonDataflow(),
        t.RemovePurityChecking(), t.CallTIRRewrite(), t.StaticPlanBlockMemory(), t.LowerAllocTensor(),
        t.KillAfterLastUse(), t.LowerRuntimeBuiltin(), t.ComputePrimValue(), t.VMShapeLower(), t.AttachGlobalSymbol(),
    ])


def opencl_source(executable) -> str:
    """The OpenCL C of every kernel in a compiled executable (its device module, however deep)."""
    pending = [executable.mod]
    while pending:
        module = pending.pop()
        if module.kind == "opencl":
            return module.inspect_source()
        pending.extend(module.imports)
    raise AssertionError("a GPU executable without an OpenCL module")


def gpu_layers(module: Module, mod: tvm.IRModule, plans, target: Target) -> tuple[GpuLayer, ...]:
    """Each layer's launches, read from TVM's lowering of its PrimFunc."""
    layers = []
    for plan in plans:
        shape = module.types[f"%{plan.result}"].shape
        if not plan.kernel:
            layers.append(GpuLayer(plan.result, plan.op, "", plan.inputs, 0, shape))
            continue
        lowered = lower(mod[plan.kernel], tvm_target(target))
        layers.append(GpuLayer(plan.result, plan.op, plan.kernel, plan.inputs, len(plan.constants), shape,
                               lowered.temps, lowered.launches))
    return tuple(layers)


def bundle_of(module: Module, program: GpuProgram, plans) -> GpuBundle:
    return GpuBundle(program, {p.result: tuple(p.constants) for p in plans if p.kernel}, print_module(module),
                     weight_arrays(module))


def check_kernels(program: GpuProgram) -> None:
    """Build every layer's kernels with the OpenCL compiler (a rejection names the layer)."""
    from sparsec.runtime import opencl

    opencl.build_layers(program)


def compile_gpu(module: Module, mod: tvm.IRModule, plans, target: Target, on_failure) -> tuple[object, GpuBundle]:
    """The executable (aarch64 host code + OpenCL kernels) and the bundle `--emulate` replays."""
    try:
        executable = tvm.compile(mod, target=tvm_target(target), relax_pipeline=relax_pipeline())
    except (RuntimeError, ValueError) as err:  # what TVM raises
        raise UserError(on_failure(str(err))) from None
    program = GpuProgram(target.name, opencl_source(executable), gpu_layers(module, mod, plans, target))
    check_kernels(program)
    return executable, bundle_of(module, program, plans)
