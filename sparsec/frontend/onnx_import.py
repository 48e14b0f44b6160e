"""ONNX model (+ pruning masks) -> a verified sparsec IR module.

The import is one straight line of named steps (`import_onnx`): read the file, check the opset,
read the constants, apply the masks, bind the input shapes, plan every node (fold at import or
convert to IR ops; one error lists every op that is neither), run the plan, name the outputs,
verify. Converters live in `convert.py` / `convert_tensor.py`, folding rules in `fold.py`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from sparsec.errors import NotSupportedError, UserError, VerifyError
from sparsec.frontend.bind import apply_masks, bind_inputs
from sparsec.frontend.context import Context, attributes, describe
from sparsec.frontend.convert_tensor import CONVERT
from sparsec.frontend.fold import FOLD, LAYOUT_ONLY, TYPE_ONLY
from sparsec.frontend.loader import external_tensors, load_onnx
from sparsec.ir.module import Module
from sparsec.ir.ops import Op
from sparsec.ir.verify import verify

OPSETS = range(11, 22)
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class ImportResult:
    """The imported module (verified) and, per masked weight, how many nonzeros the mask zeroed."""

    module: Module
    zeroed: dict[str, int]


def import_onnx(model: str | os.PathLike | onnx.ModelProto, masks: dict[str, np.ndarray] | None = None,
                input_shapes: dict[str, tuple[int, ...]] | None = None, *,
                source: str | os.PathLike | None = None) -> ImportResult:
    """Import an ONNX model (a path, or a `ModelProto` whose external data is loaded, e.g. by
    `load_onnx`) into the IR. `source` names the file a `ModelProto` came from: errors start with
    it and the module is named after its stem when the graph has no name."""
    proto, where, stem = _read(model, source)                 # parse; external data from the folder
    opset = check_opset(proto, where)                         # 11..21 in the default domain
    graph = proto.graph
    arrays = _initializers(graph, where)                      # ONNX name -> array
    bool_masks, zeroed = apply_masks(arrays, masks or {}, where)   # the mask is the truth
    params = bind_inputs(graph, set(arrays), input_shapes or {}, where)
    plan = plan_nodes(graph, set(arrays), where)              # fold / convert; unsupported -> error
    ctx = _context(graph, plan, params, where, opset)
    ctx.consts.update(arrays)
    ctx.masks.update(bool_masks)
    for node, how in plan:                                    # topological order, as ONNX requires
        if how == "fold":
            fold_node(ctx, node)
        else:
            convert_node(ctx, node)
    outputs = _name_outputs(ctx, graph)                       # graph outputs keep their ONNX names
    module = Module(module_name(graph.name, stem), params, tuple(ctx.ops), outputs, tuple(ctx.weights.values()))
    return ImportResult(_verified(module, where), zeroed)    # what the lowering cannot build fails here


def _verified(module: Module, where: str) -> Module:
    try:
        return verify(module)
    except VerifyError as err:  # imported ops carry no text location: name the model instead
        raise UserError(f"{where}: {err}") from None


def _read(model, source) -> tuple[onnx.ModelProto, str, str]:
    """The model, what errors call it (its file, else its graph name) and the file's stem."""
    if not isinstance(model, onnx.ModelProto):
        return load_onnx(model), str(model), Path(model).stem
    where = str(source) if source is not None else f"onnx model {model.graph.name!r}"
    if external_tensors(model):
        raise UserError(f"{where}: its weights are in external data files; load it with load_onnx(path) "
                        "or pass the model's path instead")
    return model, where, Path(source).stem if source is not None else ""


def check_opset(proto: onnx.ModelProto, where: str) -> int:
    """The default-domain opset, which must be one sparsec reads."""
    versions = {o.domain: o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS}
    version = max(versions.values(), default=None)
    if version not in OPSETS:
        shown = "none" if version is None else str(version)
        raise NotSupportedError(f"{where}: ONNX opset {shown} is not supported; sparsec reads opsets "
                                f"{OPSETS.start} to {OPSETS.stop - 1} (re-export with opset_version=17)")
    return version


def _initializers(graph: onnx.GraphProto, where: str) -> dict[str, np.ndarray]:
    arrays = {}
    for tensor in graph.initializer:
        try:
            arrays[tensor.name] = numpy_helper.to_array(tensor)
        except Exception as err:  # noqa: BLE001 - onnx raises many kinds for bad tensor data
            raise UserError(f"{where}: initializer {tensor.name!r} cannot be read ({err})") from None
    return arrays


def _context(graph: onnx.GraphProto, plan: list, params, where: str, opset: int) -> Context:
    """A fresh context that knows every ONNX name, which ones are read, and the graph inputs."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    ctx = Context(where, opset, names | {name for node in graph.node for name in node.output})
    ctx.used = {name for node, _ in plan for name in node.input} | {o.name for o in graph.output}
    for param in params:
        ctx.define(param.name, "%" + param.name)
        ctx.types["%" + param.name] = param.type
    return ctx


# ---- planning ------------------------------------------------------------------------------


def plan_nodes(graph: onnx.GraphProto, constants: set[str], where: str) -> list[tuple[onnx.NodeProto, str]]:
    """Each node that the outputs need, with "fold" (computed at import) or "convert" (IR ops).

    A node folds when its op has a NumPy rule and its inputs are all constants (`Shape` needs only
    its input's static type); it converts when a converter exists. Anything else is unsupported:
    the error names every such op type at once, so one export round fixes them all."""
    live = _live_nodes(graph)
    _check_defined(graph, live, constants, where)
    known, plan, unsupported = set(constants), [], {}
    for node in live:
        inputs = [name for name in node.input if name]
        default = node.domain in _DEFAULT_DOMAINS
        if default and node.op_type in FOLD and (node.op_type in TYPE_ONLY or all(i in known for i in inputs)):
            plan.append((node, "fold"))
            known.update(node.output)
        elif default and node.op_type in CONVERT:
            plan.append((node, "convert"))
        else:
            op = node.op_type if default else f"{node.domain}.{node.op_type}"
            unsupported.setdefault(op, []).append(node)
    if unsupported:
        raise NotSupportedError(f"{where}: unsupported ops: {_list_unsupported(unsupported)}; sparsec imports "
                                f"{', '.join(sorted(CONVERT))} (and folds shape subgraphs): re-export without them")
    return plan


def _list_unsupported(unsupported: dict[str, list[onnx.NodeProto]]) -> str:
    entries = []
    for op, nodes in unsupported.items():
        name = nodes[0].name or nodes[0].output[0]
        more = f" and {len(nodes) - 1} more" if len(nodes) > 1 else ""
        entries.append(f'{op} (node "{name}"{more})')
    return ", ".join(entries)


def _check_defined(graph: onnx.GraphProto, live: list[onnx.NodeProto], constants: set[str], where: str) -> None:
    """Every tensor is defined once, before its first use (ONNX requires topological order)."""
    defined = constants | {i.name for i in graph.input}
    for node in live:
        for name in (n for n in node.input if n and n not in defined):
            raise UserError(f"{where}: {describe(node)} reads {name!r}, which no earlier node, input or "
                            "initializer defines; the graph is broken or not topologically sorted")
        for name in (n for n in node.output if n in defined):
            raise UserError(f"{where}: {describe(node)} defines {name!r} a second time; the graph is broken")
        defined.update(n for n in node.output if n)
    for output in graph.output:
        if output.name not in defined:
            raise UserError(f"{where}: graph output {output.name!r} is defined by no node or input; "
                            "the graph is broken")
    _check_node_names(graph, where)


def _check_node_names(graph: onnx.GraphProto, where: str) -> None:
    """Node names are unique when given (ONNX requires it, and onnxruntime refuses the model)."""
    seen: set[str] = set()
    for node in graph.node:
        if node.name and node.name in seen:
            raise UserError(f'{where}: two nodes are named "{node.name}"; ONNX requires unique node names '
                            "(onnxruntime refuses the model): rename one and export again")
        seen.add(node.name)


def _live_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes the graph outputs depend on, in graph order (dead nodes are not imported)."""
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
    return live[::-1]


# ---- running the plan ----------------------------------------------------------------------


def fold_node(ctx: Context, node: onnx.NodeProto) -> None:
    """Compute the node's first output with NumPy; a mask follows its weight through layout ops."""
    attrs = attributes(node)
    args = [_fold_arg(ctx, name) for name in node.input]
    try:
        value = np.asarray(FOLD[node.op_type](args, attrs, ctx.opset))
    except (ValueError, IndexError, KeyError, TypeError) as err:
        ctx.fail(node, f"cannot be folded at import ({err})", UserError)
    ctx.consts[node.output[0]] = value
    source = node.input[0] if node.input else ""
    if node.op_type in LAYOUT_ONLY and source in ctx.masks:
        mask_args = [ctx.masks[source]] + args[1:]
        ctx.masks[node.output[0]] = np.asarray(FOLD[node.op_type](mask_args, attrs, ctx.opset)).astype(bool)
    _check_outputs(ctx, node)


def _fold_arg(ctx: Context, name: str) -> np.ndarray | None:
    if not name:
        return None
    if name in ctx.consts:
        return ctx.consts[name]
    # A computed value reaches a type-only op (Shape, Size) as a zero-strided array of its shape.
    type_ = ctx.type_of(name)
    return np.broadcast_to(np.zeros((), type_.np_dtype), type_.shape)


def convert_node(ctx: Context, node: onnx.NodeProto) -> None:
    CONVERT[node.op_type](ctx, node, attributes(node))
    _check_outputs(ctx, node)


def _check_outputs(ctx: Context, node: onnx.NodeProto) -> None:
    """Outputs a node leaves undefined (MaxPool indices, Dropout's mask) must be unused."""
    for name in node.output[1:]:
        if name and name not in ctx.refs and name not in ctx.consts and name in ctx.used:
            ctx.fail(node, f"its output {name!r} is used, but sparsec computes only the first output")


def _name_outputs(ctx: Context, graph: onnx.GraphProto) -> tuple[str, ...]:
    """The graph outputs, each an op result under its ONNX name (aliases renamed onto the op)."""
    producers = {op.result for op in ctx.ops}
    renames: dict[str, str] = {}
    for output in graph.output:
        ref = ctx.refs.get(output.name, "")
        source = ref[1:]
        if source == output.name:
            continue
        if source not in producers or source in renames or source in {o.name for o in graph.output}:
            kind = "a constant" if output.name in ctx.consts else f"the same tensor as {ref!r}"
            raise NotSupportedError(f"{ctx.where}: graph output {output.name!r} is {kind}; sparsec needs "
                                    "each output computed by its own op")
        renames[source] = output.name
    ctx.ops = [_rename(op, renames) for op in ctx.ops]
    return tuple(o.name for o in graph.output)


def _rename(op: Op, renames: dict[str, str]) -> Op:
    def new(ref):
        if isinstance(ref, tuple):
            return tuple(new(r) for r in ref)
        return "%" + renames[ref[1:]] if ref is not None and ref[0] == "%" and ref[1:] in renames else ref

    changes = {name: new(getattr(op, name)) for name in op.operand_fields()}
    return dataclasses.replace(op, result=renames.get(op.result, op.result), **changes)


def module_name(graph_name: str, stem: str) -> str:
    """The graph's name with characters outside the IR's bare names replaced, else the file stem."""
    for candidate in (graph_name, stem):
        name = re.sub(r"[^A-Za-z0-9_.$\-]", "_", candidate)
        if name.strip("_"):
            return name
    return "model"
