"""Recover what TVM's lowering knows and its compiled module does not: how each OpenCL kernel of a
PrimFunc is launched.

`tvm.compile` runs the TIR pipeline, splits host from device code and keeps only the code. We run
the same pipeline on the same PrimFunc and read the host function: each `call_ffi_kernel` names a
device kernel, its arguments (buffers of the PrimFunc's parameters or scratch buffers the host
allocates) and one extent per launch parameter, CUDA-style (grid x block); the OpenCL global size
of a dimension is blockIdx extent x threadIdx extent, dimensions matched by name (x->0, y->1, z->2).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx

from sparsec.runtime.gpu_program import Launch

_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class Lowered:
    """A PrimFunc after TVM's TIR pipeline: its launches, scratch buffers (bytes) and device code."""

    launches: tuple[Launch, ...]
    temps: tuple[int, ...]
    device: dict[str, tirx.PrimFunc]  # kernel name -> device PrimFunc
    temp_names: tuple[str, ...]
    param_names: tuple[str, ...]


def lower(func: tirx.PrimFunc, target: tvm.target.Target) -> Lowered:
    """Run TVM's default TIR pipeline on `func` for `target`, as `tvm.compile` does."""
    mod = tvm.IRModule({func.attrs["global_symbol"]: func})
    mod = tirx.transform.BindTarget(target.with_host(target.host))(mod)
    pipeline, _, _ = tirx.get_default_tir_pipeline(target)
    mod = pipeline(mod)
    build = importlib.import_module("tvm.tirx.build")  # the module, not the `tirx.build` function
    host_mod, device_mods = build.split_host_device_mods(mod)
    device = {gv.name_hint: f for dm in device_mods.values() for gv, f in dm.functions.items()}
    params = tuple(str(p.name) for p in func.params)
    (host,) = [f for f in host_mod.functions.values() if f.attrs and "tirx.is_entry_func" in f.attrs]
    temps: dict[str, int] = {}
    calls: list = []
    _walk(host.body, temps, calls)
    launches = tuple(_launch(call, params, list(temps)) for call in calls)
    return Lowered(launches, tuple(temps.values()), device, tuple(temps), params)


def _walk(node, temps: dict[str, int], calls: list) -> None:
    """Collect the host's scratch allocations and kernel calls, in program order."""
    if isinstance(node, tirx.SeqStmt):
        for stmt in node.seq:
            _walk(stmt, temps, calls)
    elif isinstance(node, (tirx.AttrStmt, tirx.For)):
        _walk(node.body, temps, calls)
    elif isinstance(node, tirx.IfThenElse):
        _walk(node.then_case, temps, calls)
        if node.else_case is not None:
            _walk(node.else_case, temps, calls)
    elif isinstance(node, tirx.AllocBuffer):
        buf = node.buffer
        temps[str(buf.name)] = int(np.prod([int(d) for d in buf.shape])) * tvm.DataType(buf.dtype).bits // 8
    elif isinstance(node, tirx.Evaluate) and type(node.value).__name__ == "Call":
        if getattr(node.value.op, "name", "") == "tirx.call_ffi_kernel":
            calls.append(node.value)


def _buffer_name(arg) -> str | None:
    """`x.data` (the data pointer of buffer x) -> "x"; None for a scalar."""
    text = str(arg)
    return text[: -len(".data")] if text.endswith(".data") else None


def _launch(call, params: tuple[str, ...], temps: list[str]) -> Launch:
    names = [str(p) for p in call.attrs.launch_params]
    assert not any("dyn_shared" in n for n in names), "dynamic shared memory is not used by sparsec kernels"
    args = list(call.args[1:])
    extents, args = args[len(args) - len(names):], args[: len(args) - len(names)]
    grid, block = [1, 1, 1], [1, 1, 1]
    for name, extent in zip(names, extents):
        scope, axis = name.split(".")
        (grid if scope == "blockIdx" else block)[_AXES[axis]] = int(extent)
    refs = []
    for arg in args:
        name = _buffer_name(arg)
        assert name is not None, f"kernel {call.args[0]}: scalar argument {arg} (sparsec kernels have static shapes)"
        refs.append(f"param:{params.index(name)}" if name in params else f"temp:{temps.index(name)}")
    return Launch(str(call.args[0].value), tuple(refs), tuple(g * b for g, b in zip(grid, block)), tuple(block))
