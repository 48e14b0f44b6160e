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
    walk = _HostWalk(params)
    walk.visit(host.body)
    return Lowered(tuple(walk.launches), tuple(walk.temps.values()), device, tuple(walk.temps), params)


class _HostWalk:
    """The host function's scratch allocations and kernel calls, in program order. Buffers are
    traced to what they hold by their data variables: a parameter (declared on the pointer the
    caller passed), a view of another buffer, or a scratch allocation."""

    def __init__(self, params: tuple[str, ...]):
        self.params = params
        self.temps: dict[str, int] = {}
        self.roots: dict = {}  # buffer var -> "param:i" | "temp:j"
        self.launches: list[Launch] = []

    def visit(self, node) -> None:
        if isinstance(node, tirx.SeqStmt):
            for stmt in node.seq:
                self.visit(stmt)
        elif isinstance(node, (tirx.AttrStmt, tirx.For)):
            self.visit(node.body)
        elif isinstance(node, tirx.IfThenElse):
            self.visit(node.then_case)
            if node.else_case is not None:
                self.visit(node.else_case)
        elif isinstance(node, tirx.DeclBuffer):
            self._declare(node)
        elif isinstance(node, tirx.AllocBuffer):
            buf = node.buffer
            self.roots[buf] = f"temp:{len(self.temps)}"
            self.temps[str(buf.name)] = int(np.prod([int(d) for d in buf.shape])) * tvm.DataType(buf.dtype).bits // 8
        elif isinstance(node, tirx.Evaluate) and getattr(getattr(node.value, "op", None), "name", "") == \
                "tirx.call_ffi_kernel":
            self.launches.append(self._launch(node.value))

    def _declare(self, node) -> None:
        data = node.data
        if getattr(getattr(data, "op", None), "name", "") == "tirx.buffer_data":  # a view
            self.roots[node.buffer] = self.roots[data.args[0]]
        elif str(node.buffer.name) in self.params:  # the caller's pointer
            self.roots[node.buffer] = f"param:{self.params.index(str(node.buffer.name))}"

    def _launch(self, call) -> Launch:
        names = [str(p) for p in call.attrs.launch_params]
        assert not any("dyn_shared" in n for n in names), "sparsec kernels use no dynamic shared memory"
        args = list(call.args[1:])
        extents, args = args[len(args) - len(names):], args[: len(args) - len(names)]
        grid, block = [1, 1, 1], [1, 1, 1]
        for name, extent in zip(names, extents):
            scope, axis = name.split(".")
            (grid if scope == "blockIdx" else block)[_AXES[axis]] = int(extent)
        refs = []
        for arg in args:
            assert getattr(getattr(arg, "op", None), "name", "") == "tirx.buffer_data", \
                f"kernel {call.args[0]}: scalar argument {arg} (sparsec kernels have static shapes)"
            refs.append(self.roots[arg.args[0]])
        return Launch(str(call.args[0].value), tuple(refs), tuple(g * b for g, b in zip(grid, block)), tuple(block))
