"""The canonical printer of the IR text form: deterministic, attributes sorted, defaults omitted."""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields

import numpy as np

from sparsec.ir.activation import Activation
from sparsec.ir.knobs import Knobs
from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import Op
from sparsec.ir.types import Layout, dtype_name

_BARE_NAME = re.compile(r"[A-Za-z0-9_.$\-]+")


def format_name(sigil: str, name: str) -> str:
    """`%name`, or `%"quoted name"` when the name has other characters."""
    return sigil + (name if _BARE_NAME.fullmatch(name) else json.dumps(name))


def format_ref(ref: str | None) -> str:
    """An operand reference as text: `%x`, `@w` or `none`."""
    return "none" if ref is None else format_name(ref[0], ref[1:])


def format_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_literal(v) for v in value) + "]"
    if isinstance(value, Activation):
        return _format_call(value.kind, [format_literal(p) for p in value.params])
    if isinstance(value, np.ndarray):
        return format_array(value)
    if isinstance(value, Knobs):
        return "{" + ", ".join(f"{k} = {format_literal(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, Layout):
        options = value.options()
        return _format_call(value.kind, [f"{k} = {format_literal(v)}" for k, v in sorted(options.items())])
    raise TypeError(f"no text form for {type(value).__name__}")


def _format_call(name: str, args: list[str]) -> str:
    return f"{name}({', '.join(args)})" if args else name


def format_op(op: Op) -> str:
    operands = []
    for name in op.operand_fields():
        value = getattr(op, name)
        is_list = isinstance(value, tuple)
        operands.append("[" + ", ".join(map(format_ref, value)) + "]" if is_list else format_ref(value))
    while operands and operands[-1] == "none":  # trailing optional operands stay implicit
        operands.pop()
    text = f"{format_name('%', op.result)} : {op.type} = {op.name}({', '.join(operands)})"
    attrs = _non_default_attrs(op)
    if attrs:
        text += " {" + ", ".join(f"{k} = {format_literal(v)}" for k, v in sorted(attrs.items())) + "}"
    return text


def _non_default_attrs(op: Op) -> dict[str, object]:
    defaults = {f.name: f.default for f in fields(op)}
    return {
        name: getattr(op, name)
        for name in op.attr_fields()
        if defaults[name] is MISSING or getattr(op, name) != defaults[name]
    }


def format_weight(weight: Weight, inline: bool = False) -> str:
    text = f"const {format_name('@', weight.name)} : {weight.type} {format_literal(weight.layout)}"
    if inline:
        arrays = {"data": weight.data, **weight.parts}
        text += " = {" + ", ".join(f"{k} = {format_array(v)}" for k, v in arrays.items()) + "}"
    return text


def format_array(array: np.ndarray) -> str:
    """A typed nested list, `f32[[1.0, 2.0], [3.0, 4.0]]`; scalars print as one-element lists."""
    flat = array.reshape(-1) if array.ndim else array.reshape(1)
    if array.dtype.kind == "f":  # shortest text that reads back to the same float32/float64
        items = [str(v) for v in flat]
    else:
        items = [format_literal(v) for v in flat.tolist()]
    return dtype_name(array.dtype) + _nest(items, array.shape if array.ndim else (1,))


def _nest(items: list[str], shape: tuple[int, ...]) -> str:
    if len(shape) <= 1:
        return "[" + ", ".join(items) + "]"
    step = len(items) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(items[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def print_module(module: Module, weights_file: str | None = None, inline_weights: bool = False) -> str:
    """The module as IR text; `weights_file` (relative to the text) names the `.npz` of weights,
    `inline_weights` writes the data into the text instead (for small tests)."""
    lines = [f"module {format_name('@', module.name)}"]
    if module.passes:
        lines.append(f"passes {format_literal(list(module.passes))}")
    if weights_file is not None:
        lines.append(f"weights {json.dumps(weights_file)}")
    lines.append("")
    lines.extend(format_weight(w, inline_weights) for w in module.weights)
    if module.weights:
        lines.append("")
    params = ", ".join(f"{format_name('%', p.name)} : {p.type}" for p in module.inputs)
    lines.append(f"func @main({params}) {{")
    lines.extend("  " + format_op(op) for op in module.ops)
    lines.append("  return " + ", ".join(format_name("%", o) for o in module.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
