"""The static GPU report: what each layer's generated OpenCL code does, counted without a GPU.

For each kernel, TVM's lowered device code (what its OpenCL code generator prints) is executed
symbolically over the whole NDRange, every work-item at once as NumPy arrays: loop bounds, branch
conditions and indices are evaluated, with the kernel's integer constant arrays (FKW / CSR arrays)
as the only memory read (float weights and biases are data, never control); every load from global
memory is counted where it executes (a float4 load is one load of 16 bytes). It reports
work-groups, work-items, local memory, global loads per useful FMA (kept multiply-adds of the
layer) and the work-groups whose work-items disagree on a data-dependent loop's trip count
(divergence: different pattern sequences inside one work-group).

One shortcut spares visiting most loop iterations: a loop whose body has no loop or branch
(`_straight`) executes the same loads every iteration, so its body is visited once and its loads
multiplied by the trip counts, summed over the work-items that run it. Counts are Python integers.
`count_kernel(..., exhaustive=True)` visits every iteration instead: the definition the shortcut is
tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx

from sparsec.runtime.gpu_program import Launch

_TAGS = {"blockIdx": "group", "threadIdx": "local"}
_AXES = {"x": 0, "y": 1, "z": 2}


class _Unknown(Exception):
    """A value read from memory the analysis does not know (activations)."""


@dataclass(frozen=True)
class KernelCounts:
    kernel: str
    work_groups: int
    work_items: int
    local_bytes: int
    loads: int  # global load instructions executed, all work-items together
    load_bytes: int
    data_loops: int  # data-dependent loops
    divergent_groups: int  # work-groups whose work-items run a data-dependent loop a different number of times


def count_kernel(func: tirx.PrimFunc, launch: Launch, constants: dict[str, np.ndarray], *,
                 exhaustive: bool = False) -> KernelCounts:
    """Execute `func` (a device PrimFunc) symbolically over `launch`'s NDRange; `exhaustive`: visit
    every iteration of every loop (slow; the straight-body shortcut's reference)."""
    sim = _Sim(launch, constants, exhaustive)
    sim.visit(func.body, np.ones(sim.items, bool))
    return KernelCounts(launch.kernel, launch.work_groups, launch.work_items, sim.local_bytes, sim.loads,
                        sim.load_bytes, sim.data_loops, int(sim.divergent.sum()))


class _Sim:
    def __init__(self, launch: Launch, constants: dict[str, np.ndarray], exhaustive: bool = False):
        grid = np.indices(launch.global_size).reshape(3, -1)
        local = np.asarray(launch.local_size)[:, None]
        self.ids = {"group": grid // local, "local": grid % local}
        groups = np.asarray(launch.global_size) // np.asarray(launch.local_size)
        g = self.ids["group"]
        self.group_of = (g[2] * groups[1] + g[1]) * groups[0] + g[0]
        self.items = grid.shape[1]
        self.constants = {k: np.asarray(v).reshape(-1) for k, v in constants.items()}
        self.env: dict = {}
        self.buffers: dict = {}  # buffer var -> name (for constant lookups)
        self.exhaustive = exhaustive
        self.loads = self.load_bytes = 0  # Python ints: exact at any size
        self.load_counts: dict = {}  # expression -> its (loads, bytes); loop bodies are visited many times
        self.local_bytes = 0
        self.data_loops = 0
        self.divergent = np.zeros(int(np.prod(groups)), bool)

    # --- statements ---------------------------------------------------------------------------

    def visit(self, node, mask: np.ndarray) -> None:
        if isinstance(node, tirx.SeqStmt):
            for stmt in node.seq:
                self.visit(stmt, mask)
        elif isinstance(node, tirx.AttrStmt):
            if node.attr_key == "thread_extent":
                scope, axis = str(node.node.thread_tag).split(".")
                self.env[node.node.var] = self.ids[_TAGS[scope]][_AXES[axis]]
            self.visit(node.body, mask)
        elif isinstance(node, tirx.For):
            self._for(node, mask)
        elif isinstance(node, tirx.IfThenElse):
            self._loads(node.condition, mask)
            try:
                cond = np.broadcast_to(np.asarray(self.eval(node.condition), bool), mask.shape)
            except _Unknown:
                cond = np.ones_like(mask)  # unknown: count the then-branch (an upper bound)
            self.visit(node.then_case, mask & cond)
            if node.else_case is not None:
                self.visit(node.else_case, mask & ~cond)
        elif isinstance(node, tirx.Bind):
            self._loads(node.value, mask)
            self._bind(node.var, node.value)
        elif isinstance(node, tirx.BufferStore):
            self._loads(node.value, mask)
            for index in node.indices:
                self._loads(index, mask)
        elif isinstance(node, tirx.Evaluate):
            self._loads(node.value, mask)
        elif isinstance(node, (tirx.DeclBuffer, tirx.AllocBuffer)):
            self.buffers[node.buffer] = str(node.buffer.name)
            if isinstance(node, tirx.AllocBuffer) and node.buffer.scope() == "shared":
                self.local_bytes += int(np.prod([int(d) for d in node.buffer.shape])) * _bytes(node.buffer.dtype)

    def _bind(self, var, value) -> None:
        try:
            self.env[var] = self.eval(value)
        except _Unknown:
            self.env.pop(var, None)

    def _for(self, node, mask: np.ndarray) -> None:
        self._loads(node.min, mask)
        self._loads(node.extent, mask)
        lo, extent = self.eval(node.min), self.eval(node.extent)
        varying = np.ndim(extent) > 0 or np.ndim(lo) > 0
        if varying:
            self.data_loops += 1
            self._divergence(np.broadcast_to(extent, mask.shape), mask)
        extent = np.where(mask, extent, 0) if varying else extent
        if _straight(node.body) and not self.exhaustive:  # the same loads every iteration: count them once
            self.env[node.loop_var] = lo
            runs = mask & (extent > 0) if varying else mask
            active = int(runs.sum())
            trips = int(np.where(runs, extent, 0).sum()) if varying else int(extent) * active
            before = (self.loads, self.load_bytes)
            self.visit(node.body, runs)
            if active:  # the body added (per work-item count) x active: scale it to the trips
                self.loads = before[0] + (self.loads - before[0]) // active * trips
                self.load_bytes = before[1] + (self.load_bytes - before[1]) // active * trips
            return
        for i in range(int(np.max(extent, initial=0))):
            self.env[node.loop_var] = lo + i
            self.visit(node.body, mask & (i < extent) if varying else mask)

    def _divergence(self, extent, mask) -> None:
        groups = len(self.divergent)
        hi = np.full(groups, -(2 ** 62))
        lo = np.full(groups, 2 ** 62)
        np.maximum.at(hi, self.group_of[mask], extent[mask])
        np.minimum.at(lo, self.group_of[mask], extent[mask])
        self.divergent |= (hi != lo) & (hi > -(2 ** 62))

    # --- expressions --------------------------------------------------------------------------

    def _loads(self, expr, mask) -> None:
        if expr not in self.load_counts:
            self.load_counts[expr] = _global_loads(expr)
        count, nbytes = self.load_counts[expr]
        if count:
            active = int(mask.sum())
            self.loads += count * active
            self.load_bytes += nbytes * active

    def eval(self, e):
        if isinstance(e, tirx.IntImm):
            return int(e.value)
        if isinstance(e, tirx.FloatImm):
            raise _Unknown
        if isinstance(e, tirx.Var):
            if e not in self.env:
                raise _Unknown
            return self.env[e]
        if isinstance(e, tirx.Cast):
            return self.eval(e.value)
        op = _BINARY.get(type(e))
        if op is not None:
            return op(self.eval(e.a), self.eval(e.b))
        if isinstance(e, tirx.Not):
            return np.logical_not(self.eval(e.a))
        if isinstance(e, tirx.Select):
            return np.where(self.eval(e.condition), self.eval(e.true_value), self.eval(e.false_value))
        if isinstance(e, tvm.ir.TensorLoad):
            name = self.buffers.get(e.source, str(e.source.name))
            data = self.constants.get(name)
            # float weights and biases are data, never a bound, a condition or an index: not evaluated
            if data is None or data.dtype.kind == "f" or len(e.indices) != 1 or isinstance(e.indices[0], tirx.Ramp):
                raise _Unknown
            return data[np.clip(np.asarray(self.eval(e.indices[0])), 0, len(data) - 1)].astype(np.int64)
        if type(e).__name__ == "Call" and getattr(e.op, "name", "") == "tirx.if_then_else":
            return np.where(self.eval(e.args[0]), self.eval(e.args[1]), self.eval(e.args[2]))
        raise _Unknown


_BINARY = {
    tirx.Add: np.add, tirx.Sub: np.subtract, tirx.Mul: np.multiply, tirx.FloorDiv: np.floor_divide,
    tirx.FloorMod: np.mod, tirx.Div: lambda a, b: np.trunc(np.divide(a, b)).astype(np.int64),
    tirx.Mod: np.fmod, tirx.Min: np.minimum, tirx.Max: np.maximum, tirx.LT: np.less, tirx.LE: np.less_equal,
    tirx.GT: np.greater, tirx.GE: np.greater_equal, tirx.EQ: np.equal, tirx.NE: np.not_equal,
    tirx.And: np.logical_and, tirx.Or: np.logical_or,
}


def _bytes(dtype) -> int:
    t = tvm.DataType(str(dtype))
    return t.bits * t.lanes // 8


def _children(e):
    for name in ("a", "b", "value", "condition", "true_value", "false_value", "base", "stride", "body"):
        child = getattr(e, name, None)
        if isinstance(child, tvm.ir.Expr):
            yield child
    for seq in ("indices", "args"):
        for child in getattr(e, seq, None) or ():
            if isinstance(child, tvm.ir.Expr):
                yield child


def _global_loads(expr) -> tuple[int, int]:
    """(load instructions, bytes) of global memory in one evaluation of `expr`."""
    count = nbytes = 0
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, tvm.ir.TensorLoad) and e.source.scope() == "global":
            count += 1
            nbytes += _bytes(e.ty)
        stack.extend(_children(e))
    return count, nbytes


def _straight(stmt) -> bool:
    """A body without loops or branches (its load count is the same every iteration)."""
    if isinstance(stmt, tirx.SeqStmt):
        return all(_straight(s) for s in stmt.seq)
    return isinstance(stmt, (tirx.Bind, tirx.BufferStore, tirx.Evaluate, tirx.DeclBuffer, tirx.AllocBuffer))
