"""Tasks: one kernel generator + the structure its code depends on + the target, with a stable key.

A layer's kernel is a `KernelCall`: the generator's name, its static parameters (shapes, geometry,
activation), its *structure* arrays (FKW index arrays, a CSR's nonzero mask: they shape the loops)
and its *value* arrays (weights, bias: runtime data, not part of the key). Layers whose calls have
equal structure on the same target share one task, across layers and models: tuning one tunes all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from sparsec.errors import UserError
from sparsec.ir.activation import Activation
from sparsec.ir.legality import layout_problem
from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import Conv2d, Linear, Op
from sparsec.ir.types import CSR, Pattern
from sparsec.target import Target

# generator -> the weight format its kernel reads (the manifest's "format")
FORMATS = {"pattern_conv": "pattern", "csr_conv1x1": "csr", "dense_conv": "dense", "csr_dense": "csr",
           "dense": "dense"}


@dataclass(frozen=True, eq=False)
class KernelCall:
    """What one layer's kernel generator is called with (see the module docstring)."""

    generator: str
    params: dict  # JSON values: in_shape, strides, pads, activation, residual (when true), ...
    structure: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def activation(self) -> Activation | None:
        act = self.params.get("activation")
        return Activation(act[0], tuple(act[1:])) if act else None

    @property
    def residual(self) -> bool:
        """Whether the kernel reads a residual (an input shaped like its output, after the data)."""
        return bool(self.params.get("residual"))


def structural_key(call: KernelCall, target: Target) -> str:
    """16 hex digits of a SHA-256 over the generator, its parameters, its structure arrays (dtype,
    shape, bytes) and the target's TVM JSON; weight values are left out."""
    digest = hashlib.sha256()
    head = {"generator": call.generator, "params": call.params, "target": json.loads(target.tvm)}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for name in sorted(call.structure):
        array = np.ascontiguousarray(call.structure[name])
        digest.update(f"\n{name}:{array.dtype.str}:{list(array.shape)}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Task:
    """One kernel to tune on one target: its call (from the first layer that has it), the key, and
    every layer (`%result`) that shares it."""

    key: str
    call: KernelCall
    target: Target
    layers: tuple[str, ...]

    @property
    def generator(self) -> str:
        return self.call.generator

    def __str__(self) -> str:
        more = f" (+{len(self.layers) - 1} more)" if len(self.layers) > 1 else ""
        return f"{self.generator} %{self.layers[0]}{more} [{self.key[:8]}]"


def _activation(op: Conv2d | Linear) -> list | None:
    return [op.activation.kind, *op.activation.params] if op.activation else None


def legal_weight(op: Conv2d | Linear, module: Module) -> Weight:
    weight = module.weight(op.weight)
    problem = layout_problem(op, "weight", weight.type, weight.layout)
    if problem:
        raise UserError(f"layer %{op.result} ({op.name}): {problem}")
    return weight


def original_order(op: Conv2d, weight: Weight) -> np.ndarray:
    """Weight rows in output-channel order (undoing a recorded filter permutation)."""
    if not op.filter_order:
        return weight.data
    data = np.empty_like(weight.data)
    data[list(op.filter_order)] = weight.data
    return data


def bias_data(op: Conv2d | Linear, module: Module) -> np.ndarray | None:
    """The layer's bias values, or None without one."""
    return module.weight(op.bias).data if op.bias else None


def _values(weight: np.ndarray, op: Conv2d | Linear, module: Module) -> dict[str, np.ndarray]:
    bias = {"bias": module.weight(op.bias).data} if op.bias else {}
    return {"weight": weight, **bias}


def _mask(data: np.ndarray) -> dict[str, np.ndarray]:
    return {"mask": np.packbits(np.asarray(data) != 0)}


def conv2d_call(op: Conv2d, module: Module) -> KernelCall:
    """The generator call of a conv2d, picked by its weight's layout (pattern / csr / dense)."""
    from sparsec.passes.compress_fkw import fkw_of

    weight = legal_weight(op, module)
    params = {"in_shape": list(module.types[op.input].shape), "activation": _activation(op),
              "bias": op.bias is not None, "strides": list(op.strides)}
    if op.residual is not None:  # only then: the keys (and tuning logs) of other layers stay as they were
        params["residual"] = True
    if isinstance(weight.layout, Pattern):  # pattern and fkw: the FKW arrays derive from the data
        fkw = fkw_of(op, weight)
        structure = {name: getattr(fkw, name) for name in ("patterns", "filter_order", "offset", "stride", "index")}
        params.update(pads=list(op.pads), dilations=list(op.dilations),
                      filters_per_group=max(op.filter_groups) if op.filter_groups else 1)
        return KernelCall("pattern_conv", params, structure, _values(fkw.weight, op, module))
    data = original_order(op, weight)
    if isinstance(weight.layout, CSR):
        params["weight_shape"] = list(data.shape)
        return KernelCall("csr_conv1x1", params, _mask(data), _values(data, op, module))
    params.update(weight_shape=list(data.shape), pads=list(op.pads), dilations=list(op.dilations), groups=op.groups)
    return KernelCall("dense_conv", params, {}, _values(data, op, module))


def linear_call(op: Linear, module: Module) -> KernelCall:
    weight = legal_weight(op, module)
    params = {"in_shape": list(module.types[op.input].shape), "weight_shape": list(weight.data.shape),
              "activation": _activation(op), "bias": op.bias is not None}
    if isinstance(weight.layout, CSR):
        return KernelCall("csr_dense", params, _mask(weight.data), _values(weight.data, op, module))
    return KernelCall("dense", params, {}, _values(weight.data, op, module))


def kernel_call(op: Op, module: Module) -> KernelCall | None:
    """The tunable kernel call of an op (None for ops whose kernels have no knobs)."""
    if isinstance(op, Conv2d):
        return conv2d_call(op, module)
    if isinstance(op, Linear):
        return linear_call(op, module)
    return None


def extract_tasks(module: Module, target: Target) -> list[Task]:
    """The module's tasks in layer order, equal structures merged into one task."""
    found: dict[str, Task] = {}
    for op in module.ops:
        call = kernel_call(op, module)
        if call is None:
            continue
        key = structural_key(call, target)
        if key in found:
            task = found[key]
            found[key] = Task(key, task.call, target, task.layers + (op.result,))
        else:
            found[key] = Task(key, call, target, (op.result,))
    return list(found.values())
