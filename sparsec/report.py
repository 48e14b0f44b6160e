"""The inspect report: per-layer sparsity of an ONNX model under its masks, as text or JSON.

Works straight from ONNX + masks, so a user can check what a masks file does to a model before
compiling it. Output shapes for the MAC counts come from ONNX shape inference. Given a target, it
also says which format each weight compiles to there (analyze-sparsity's cost model: pattern, csr
or dense), which needs the model imported into the IR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from sparsec.errors import NotSupportedError, UserError
from sparsec.ir.types import Pattern
from sparsec.prune import WeightLayer, pattern_mask, weight_layers
from sparsec.sparsity import LayerStats, Totals, layer_stats, totals_of
from sparsec.target import Target

TOP_PATTERNS = 3  # patterns shown per layer in the text table; the JSON has them all


@dataclass(frozen=True, slots=True)
class GroupCost:
    """What sharing kernels across filter groups costs a pattern layer, in kept weight norm: the
    squared L2 norm its mask keeps, and what the ungrouped PCONV choice with the same patterns
    and the same number of kernels keeps (both as fractions of the layer's norm)."""

    name: str
    kernel_groups: int
    kept_norm: float
    ungrouped_kept_norm: float


@dataclass(frozen=True, slots=True)
class InspectReport:
    """The per-layer statistics, in node order, their sums, and the group cost of the layers
    whose filters share kernels in groups."""

    layers: tuple[LayerStats, ...]
    totals: Totals
    group_costs: tuple[GroupCost, ...] = ()
    formats: dict[str, str] | None = None  # weight -> the format it compiles to (with a target)
    formats_error: str = ""  # why there are none (the model did not import)


def inspect_model(model: onnx.ModelProto, masks: dict[str, np.ndarray] | None = None,
                  target: Target | None = None) -> InspectReport:
    """Statistics of every Conv / Gemm / MatMul weight, after applying `masks` (by initializer name),
    and with a `target` the format each compiles to there.

    A weight without a mask counts as it is (zeros in the file count as pruned). Symbolic
    dimensions (a dynamic batch) count as 1, so MACs are then per sample.
    """
    masks = masks or {}
    shapes = _value_shapes(model)
    weights = {init.name: init for init in model.graph.initializer}
    stats, costs = [], []
    for layer in weight_layers(model):
        values = numpy_helper.to_array(weights[layer.weight])
        kept = values != 0
        if layer.weight in masks:
            assert masks[layer.weight].shape == kept.shape, "masks are checked by load_masks"
            kept &= masks[layer.weight].astype(bool)
        stats.append(layer_stats(layer.weight, kept, _output_shape(layer, shapes), layer.groups))
        if stats[-1].kind == "conv3x3" and stats[-1].histogram and stats[-1].density < 1:  # an unpruned
            # layer's filters trivially "share" every kernel
            cost = group_cost(layer.weight, values, kept, stats[-1])
            costs += [cost] if cost.kernel_groups > 1 else []
    formats, error = compiled_formats(model, masks, target) if target is not None else (None, "")
    return InspectReport(tuple(stats), totals_of(stats), tuple(costs), formats, error)


def compiled_formats(model: onnx.ModelProto, masks: dict[str, np.ndarray],
                     target: Target) -> tuple[dict[str, str] | None, str]:
    """(weight -> pattern / csr / dense as analyze-sparsity picks it for `target`, ""), or (None,
    the reason) when sparsec cannot import the model: the statistics do not need it."""
    from sparsec.driver import import_model, optimize

    try:
        module = optimize(import_model(model, masks), target=target)
    except UserError as err:
        return None, str(err).splitlines()[0]
    return {w.name: "pattern" if isinstance(w.layout, Pattern) else w.layout.kind for w in module.weights}, ""


def kernel_groups_of(kept: np.ndarray) -> int:
    """The widest G (a power of two up to 64) such that every G consecutive filters keep the same
    kernels with the same taps (1 when filters choose alone)."""
    best, width = 1, 2
    while width <= min(64, kept.shape[0]):
        groups = kept[: kept.shape[0] // width * width].reshape(-1, width, *kept.shape[1:])
        if groups.shape[0] == 0 or not (groups == groups[:, :1]).all():
            break
        best, width = width, width * 2
    return best


def group_cost(name: str, weight: np.ndarray, kept: np.ndarray, stats: LayerStats) -> GroupCost:
    """The kept norm of a pattern layer's mask against the ungrouped choice (see GroupCost)."""
    patterns = tuple(taps for taps, _ in stats.histogram)
    kernels_kept = (stats.total_kernels - stats.empty_kernels) / stats.total_kernels
    ungrouped = pattern_mask(weight, patterns, kernels_kept)
    total = float(np.square(weight, dtype=np.float64).sum()) or 1.0
    norm = lambda mask: float(np.square(weight[mask], dtype=np.float64).sum()) / total  # noqa: E731
    return GroupCost(name, kernel_groups_of(kept), norm(kept), norm(ungrouped))


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Static shapes of every value shape inference can type (symbolic dims -> 1)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {info.name: _static_shape(info) for info in infos}


def _static_shape(info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim)


def _output_shape(layer: WeightLayer, shapes: dict[str, tuple[int, ...] | None]) -> tuple[int, ...]:
    shape = shapes.get(layer.output)
    if shape is None:
        raise NotSupportedError(
            f"{layer.op} node {layer.node!r}: ONNX shape inference gives no output shape; "
            "give the model static input shapes"
        )
    return shape


# ---- text ------------------------------------------------------------------------------------


def format_patterns(histogram: tuple[tuple[tuple[int, ...], int], ...], top: int = TOP_PATTERNS) -> str:
    """"1246:812 0134:790 +6": tap ids run together (all single digits), then the count."""
    shown = " ".join(f"{''.join(map(str, taps))}:{count}" for taps, count in histogram[:top])
    rest = len(histogram) - top
    return f"{shown} +{rest}" if rest > 0 else shown or "-"


# (header, right-aligned?, cell) for each column of the table.
_COLUMNS: tuple[tuple[str, bool, Callable[[LayerStats], str]], ...] = (
    ("weight", False, lambda s: s.name),
    ("kind", False, lambda s: s.kind if s.groups == 1 else f"{s.kind}/g{s.groups}"),
    ("shape", False, lambda s: "x".join(map(str, s.weight_shape))),
    ("density", True, lambda s: f"{s.density:.3f}"),
    ("pats", True, lambda s: str(s.n_patterns) if s.histogram else "-"),
    ("top patterns (taps:kernels)", False, lambda s: format_patterns(s.histogram)),
    ("empty/kernels", True, lambda s: f"{s.empty_kernels}/{s.total_kernels}"),
    ("MMAC dense", True, lambda s: f"{s.macs_dense / 1e6:.2f}"),
    ("MMAC kept", True, lambda s: f"{s.macs_kept / 1e6:.2f}"),
    ("saved", True, lambda s: _times(s.macs_dense, s.macs_kept)),
)


def format_report(report: InspectReport) -> str:
    """A fixed-width table, one row per weight layer, and a totals line."""
    columns = _COLUMNS
    if report.formats is not None:
        formats = report.formats
        columns = (*_COLUMNS[:2], ("compiles as", False, lambda s: formats.get(s.name, "-")), *_COLUMNS[2:])
    rows = [[cell(s) for _, _, cell in columns] for s in report.layers]
    headers = [header for header, _, _ in columns]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [_row(headers, widths, columns), _row(["-" * w for w in widths], widths, columns)]
    lines += [_row(r, widths, columns) for r in rows]
    lines += ["", _totals_line(report.totals)]
    if report.formats_error:
        lines.append(f"formats: not known, sparsec cannot import the model ({report.formats_error})")
    dense = [s.name for s in report.layers if s.kind == "conv3x3" and s.histogram and s.density < 1
             and (report.formats or {}).get(s.name) == "dense"]
    if dense:
        lines.append(f"{len(dense)} pattern-pruned 3x3 layer(s) compile dense ({', '.join(dense[:3])}"
                     f"{', ...' if len(dense) > 3 else ''}): at their density the cost model estimates the dense "
                     "kernel (Winograd for 3x3 stride-1 convs) faster; remove more kernels to gain from patterns")
    for cost in report.group_costs:
        lines.append(f"{cost.name}: kernels shared by {cost.kernel_groups} filters; kept weight norm "
                     f"{cost.kept_norm:.1%} (ungrouped choice, same patterns and kernel count: "
                     f"{cost.ungrouped_kept_norm:.1%})")
    return "\n".join(lines)


def _row(cells: list[str], widths: list[int], columns=_COLUMNS) -> str:
    padded = (c.rjust(w) if right else c.ljust(w) for c, w, (_, right, _) in zip(cells, widths, columns))
    return "  ".join(padded).rstrip()


def _totals_line(t: Totals) -> str:
    return (
        f"total: {t.layers} layers, weights {_si(t.params)} -> {_si(t.params_kept)} "
        f"(density {t.density:.3f}), MACs {_si(t.macs_dense)} -> {_si(t.macs_kept)} "
        f"({_times(t.macs_dense, t.macs_kept)} fewer)"
    )


def _times(dense: int, kept: int) -> str:
    return f"{dense / kept:.2f}x" if kept else "all"


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


# ---- JSON ------------------------------------------------------------------------------------


def report_json(report: InspectReport) -> dict:
    """The report as plain dicts, lists, ints, floats and strings (`json.dumps`-ready)."""
    t = report.totals
    costs = {c.name: c for c in report.group_costs}
    return {
        "layers": [_layer_json(s) | _cost_json(costs.get(s.name)) | _format_json(report, s.name)
                   for s in report.layers],
        "totals": {
            "layers": t.layers,
            "params": t.params,
            "params_kept": t.params_kept,
            "density": t.density,
            "macs_dense": t.macs_dense,
            "macs_kept": t.macs_kept,
            # null rather than Infinity when nothing is kept: strict JSON has no infinities.
            "mac_reduction": t.mac_reduction if t.macs_kept else None,
        },
    }


def _format_json(report: InspectReport, name: str) -> dict:
    if report.formats is None:
        return {}
    return {"compiles_as": report.formats.get(name)}


def _cost_json(cost: GroupCost | None) -> dict:
    if cost is None:
        return {"kernel_groups": 1}
    return {"kernel_groups": cost.kernel_groups, "kept_norm": cost.kept_norm,
            "ungrouped_kept_norm": cost.ungrouped_kept_norm}


def _layer_json(s: LayerStats) -> dict:
    return {
        "name": s.name,
        "kind": s.kind,
        "weight_shape": list(s.weight_shape),
        "groups": s.groups,
        "nonzeros": s.nonzeros,
        "density": s.density,
        "n_patterns": s.n_patterns,
        "patterns": [{"taps": list(taps), "count": count} for taps, count in s.histogram],
        "empty_kernels": s.empty_kernels,
        "total_kernels": s.total_kernels,
        "macs_dense": s.macs_dense,
        "macs_kept": s.macs_kept,
    }
