"""The inspect report: per-layer sparsity of an ONNX model under its masks, as text or JSON.

Works straight from ONNX + masks (no IR), so a user can check what a masks file does to a model
before compiling it. Output shapes for the MAC counts come from ONNX shape inference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from sparsec.errors import NotSupportedError
from sparsec.prune import WeightLayer, weight_layers
from sparsec.sparsity import LayerStats, Totals, layer_stats, totals_of

TOP_PATTERNS = 3  # patterns shown per layer in the text table; the JSON has them all


@dataclass(frozen=True, slots=True)
class InspectReport:
    """The per-layer statistics, in node order, and their sums."""

    layers: tuple[LayerStats, ...]
    totals: Totals


def inspect_model(model: onnx.ModelProto, masks: dict[str, np.ndarray] | None = None) -> InspectReport:
    """Statistics of every Conv / Gemm / MatMul weight, after applying `masks` (by initializer name).

    A weight without a mask counts as it is (zeros in the file count as pruned). Symbolic
    dimensions (a dynamic batch) count as 1, so MACs are then per sample.
    """
    masks = masks or {}
    shapes = _value_shapes(model)
    weights = {init.name: init for init in model.graph.initializer}
    stats = []
    for layer in weight_layers(model):
        kept = numpy_helper.to_array(weights[layer.weight]) != 0
        if layer.weight in masks:
            assert masks[layer.weight].shape == kept.shape, "masks are checked by load_masks"
            kept &= masks[layer.weight].astype(bool)
        stats.append(layer_stats(layer.weight, kept, _output_shape(layer, shapes), layer.groups))
    return InspectReport(tuple(stats), totals_of(stats))


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
    rows = [[cell(s) for _, _, cell in _COLUMNS] for s in report.layers]
    headers = [header for header, _, _ in _COLUMNS]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [_row(headers, widths), _row(["-" * w for w in widths], widths)]
    lines += [_row(r, widths) for r in rows]
    return "\n".join([*lines, "", _totals_line(report.totals)])


def _row(cells: list[str], widths: list[int]) -> str:
    padded = (c.rjust(w) if right else c.ljust(w) for c, w, (_, right, _) in zip(cells, widths, _COLUMNS))
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
    return {
        "layers": [_layer_json(s) for s in report.layers],
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
