"""The PCONV pruner: pattern + connectivity masks for 3x3 convs, magnitude masks for 1x1 / FC.

PCONV (arXiv 1909.05073) keeps 4 of the 9 taps of every 3x3 kernel, always with the centre,
drawn from a small set of patterns (about 8) chosen as the most frequent top-4 tap sets of the
trained weights; connectivity pruning then removes whole kernels. sparsec needs pruned models
to compile, and its users may not have a pruning pipeline, so this module makes the masks from
any ONNX model (a one-shot projection, without the retraining PCONV does to recover accuracy).

Masks are plain bool arrays keyed by initializer name: the format `save_masks` / `load_masks`
read and write, and what a user's own pruning pipeline can produce with `numpy.savez`.
"""

from __future__ import annotations

import difflib
import itertools
import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from sparsec.errors import UserError
from sparsec.npz import load_npz
from sparsec.sparsity import CENTRE_TAP, N_TAPS, bits_of, layer_kind

NON_CENTRE_TAPS = tuple(t for t in range(N_TAPS) if t != CENTRE_TAP)
# All 56 four-tap patterns with the centre, sorted by tap tuple: the order that breaks ties.
CANDIDATE_PATTERNS: tuple[tuple[int, ...], ...] = tuple(
    sorted(tuple(sorted((CENTRE_TAP, *rest))) for rest in itertools.combinations(NON_CENTRE_TAPS, 3))
)
# 9-bit tap mask -> index into CANDIDATE_PATTERNS (only the 56 candidate entries are used).
_CANDIDATE_OF_BITS = np.zeros(1 << N_TAPS, dtype=np.int64)
_CANDIDATE_OF_BITS[[bits_of(p) for p in CANDIDATE_PATTERNS]] = np.arange(len(CANDIDATE_PATTERNS))


@dataclass(frozen=True, slots=True)
class WeightLayer:
    """A Conv, Gemm or MatMul node whose weight is an initializer: the things masks apply to."""

    node: str
    op: str
    weight: str
    shape: tuple[int, ...]
    groups: int
    output: str

    @property
    def kind(self) -> str:
        """"conv3x3" (pattern-prunable), "conv" or "fc", as in `sparsec.sparsity.layer_kind`."""
        return layer_kind(self.shape, self.groups)


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """The weight layers in node order (ONNX keeps nodes topologically sorted); each weight once."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    layers: dict[str, WeightLayer] = {}
    for node in model.graph.node:
        layer = _weight_layer(node, shapes)
        if layer is not None and layer.weight not in layers:
            layers[layer.weight] = layer
    return list(layers.values())


def _weight_layer(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> WeightLayer | None:
    # Conv's W, Gemm's B and MatMul's right operand; a weight computed at run time is not maskable.
    if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in shapes:
        return None
    shape = shapes[node.input[1]]
    if node.op_type != "Conv" and len(shape) != 2:
        return None
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    return WeightLayer(node.name, node.op_type, node.input[1], shape, groups, node.output[0])


# ---- pruning ---------------------------------------------------------------------------------


def prune_model(
    model: onnx.ModelProto,
    *,
    patterns: int = 8,
    keep_kernels: float = 1.0,
    unstructured: float = 0.0,
    prune_first_conv: bool = False,
    kernel_groups: int = 1,
) -> dict[str, np.ndarray]:
    """PCONV masks for every Conv / Gemm / MatMul weight of `model`, keyed by initializer name.

    - 3x3 convs with groups == 1: each kernel keeps the 4-tap pattern (centre + 3 taps) of the
      model-wide set of the `patterns` most frequent top-4 tap sets that keeps the most L2 norm;
      then each layer keeps its `keep_kernels` fraction of kernels with the largest norms
      (rounded to nearest, at least one).
    - 1x1 convs (groups == 1) and FC weights lose their `unstructured` fraction of smallest weights.
    - With `kernel_groups` G > 1, filters go G consecutive at a time and the G kernels of a group
      at one input channel share one pattern and one keep/remove choice (the one keeping the most
      norm over the G), so a kernel that walks G filters together wastes no multiply.
    - Everything else (the first conv unless `prune_first_conv`, depthwise / grouped and other
      kernel sizes) gets an all-True mask. Ties are broken by index, so the result is deterministic.
    """
    _check_options(patterns, keep_kernels, unstructured)
    if isinstance(kernel_groups, bool) or not isinstance(kernel_groups, int | np.integer) or kernel_groups < 1:
        raise UserError(f"kernel_groups={kernel_groups!r}: use a whole number of filters >= 1")
    layers = weight_layers(model)
    weights = _weights(model, {layer.weight for layer in layers})
    masks = {layer.weight: np.ones(layer.shape, dtype=bool) for layer in layers}
    first = next((layer for layer in layers if layer.op == "Conv"), None)
    prunable = [layer for layer in layers if prune_first_conv or layer is not first]
    pattern_layers = [layer for layer in prunable if layer.kind == "conv3x3"]
    chosen = pattern_set([weights[layer.weight] for layer in pattern_layers], patterns)
    for layer in pattern_layers:
        masks[layer.weight] = pattern_mask(weights[layer.weight], chosen, keep_kernels, kernel_groups)
    for layer in prunable:
        if layer.kind == "fc" or (layer.kind == "conv" and layer.shape[2:] == (1, 1) and layer.groups == 1):
            masks[layer.weight] = _magnitude_mask(weights[layer.weight], unstructured)
    return masks


def _check_options(patterns: int, keep_kernels: float, unstructured: float) -> None:
    n = len(CANDIDATE_PATTERNS)
    if isinstance(patterns, bool) or not isinstance(patterns, int | np.integer) or not 1 <= patterns <= n:
        raise UserError(
            f"patterns={patterns!r}: use an integer from 1 to {n} (the 4-tap patterns with the centre)"
        )
    for name, value in (("keep_kernels", keep_kernels), ("unstructured", unstructured)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not 0 <= value <= 1:
            raise UserError(f"{name}={value!r}: use a fraction from 0 to 1")


def _weights(model: onnx.ModelProto, names: set[str]) -> dict[str, np.ndarray]:
    """The named initializers as float arrays; non-finite weights cannot be ranked by magnitude."""
    out = {}
    for init in model.graph.initializer:
        if init.name in names:
            array = numpy_helper.to_array(init)
            if not np.isfinite(array).all():
                raise UserError(f"initializer {init.name!r} holds NaN or infinite values; fix the model first")
            out[init.name] = array
    return out


def top4_patterns(weight: np.ndarray) -> np.ndarray:
    """Per kernel of weight[O, I, 3, 3], the index into CANDIDATE_PATTERNS of its top-4 tap set.

    The tap set is the centre plus the 3 largest-magnitude other taps (lower tap wins ties).
    """
    mags = np.abs(weight.reshape(-1, N_TAPS))[:, NON_CENTRE_TAPS]
    top3 = np.argsort(-mags, axis=1, kind="stable")[:, :3]
    bits = (1 << CENTRE_TAP) + (1 << np.array(NON_CENTRE_TAPS))[top3].sum(axis=1)
    return _CANDIDATE_OF_BITS[bits]


def pattern_set(weights: list[np.ndarray], patterns: int) -> tuple[tuple[int, ...], ...]:
    """The `patterns` most frequent top-4 tap sets over all kernels, most frequent first.

    All-zero kernels do not vote (they have no top taps); equal counts rank by tap tuple, and
    unseen candidates count 0, so the set always has exactly `patterns` members.
    """
    counts = np.zeros(len(CANDIDATE_PATTERNS), dtype=np.int64)
    for weight in weights:
        flat = weight.reshape(-1, N_TAPS)
        votes = top4_patterns(weight)[(flat != 0).any(axis=1)]
        counts += np.bincount(votes, minlength=len(CANDIDATE_PATTERNS))
    order = np.argsort(-counts, kind="stable")[:patterns]
    return tuple(CANDIDATE_PATTERNS[i] for i in order)


def pattern_mask(weight: np.ndarray, chosen: tuple[tuple[int, ...], ...], keep_kernels: float,
                  kernel_groups: int = 1) -> np.ndarray:
    """Projects each kernel (or group of kernels) on its best pattern of `chosen`, then drops the
    weakest kernels (groups); a group is `kernel_groups` consecutive filters at one input channel."""
    members = np.array([[t in p for t in range(N_TAPS)] for p in chosen])
    filters, channels = weight.shape[:2]
    squares = np.square(weight.reshape(filters, channels, N_TAPS), dtype=np.float64)
    group_of = np.arange(filters) // kernel_groups
    grouped = np.zeros((group_of[-1] + 1, channels, N_TAPS)) if filters else squares
    np.add.at(grouped, group_of, squares)  # (groups, channels, taps): the group's summed squares
    kept_norms = grouped.reshape(-1, N_TAPS) @ members.T  # (group kernels, patterns): norm each keeps
    best = np.argmax(kept_norms, axis=1)  # first max: the more frequent pattern wins ties
    n_keep = max(1, _round_half_up(keep_kernels * len(best)))
    keep = _keep_largest(kept_norms[np.arange(len(best)), best], n_keep)
    group_mask = (members[best] & keep[:, None]).reshape(-1, channels, N_TAPS)
    return group_mask[group_of].reshape(weight.shape)


def _magnitude_mask(weight: np.ndarray, fraction: float) -> np.ndarray:
    """Drops exactly round(fraction * size) of the smallest-magnitude weights."""
    n_keep = weight.size - _round_half_up(fraction * weight.size)
    if n_keep == weight.size:
        return np.ones(weight.shape, dtype=bool)
    return _keep_largest(np.abs(weight).ravel(), n_keep).reshape(weight.shape)


def _round_half_up(x: float) -> int:
    # Python's round() goes to even on .5; "round to nearest" here means the usual half-up.
    return int(np.floor(x + 0.5))


def _keep_largest(values: np.ndarray, n_keep: int) -> np.ndarray:
    """Bool mask of the n_keep largest values; among equal values the lower index is kept.

    Same result as a stable argsort, in O(n) with one partition (fc6 of VGG-16 has 10^8 weights).
    """
    keep = np.zeros(values.shape, dtype=bool)
    if n_keep <= 0:
        return keep
    threshold = np.partition(values, values.size - n_keep)[values.size - n_keep]
    keep[values > threshold] = True
    ties = np.flatnonzero(values == threshold)[: n_keep - np.count_nonzero(keep)]
    keep[ties] = True
    return keep


# ---- masks files -----------------------------------------------------------------------------


def save_masks(masks: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes the masks as bool arrays to an .npz file at exactly `path` (no suffix is added),
    all or nothing."""
    from sparsec.ir.files import write_atomically

    def write(tmp) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **{name: np.asarray(mask, dtype=bool) for name, mask in masks.items()})

    write_atomically(path, write)


def load_masks(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Reads masks written by `save_masks` (or numpy.savez) and checks them against `model`.

    Every key must name an initializer of the model and hold a bool or 0/1 array of its shape;
    anything else raises a one-line UserError naming the file and the key. Returns bool arrays.
    """
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    arrays = load_npz(path, "mask", "save masks as bool arrays with numpy.savez")
    return {key: _checked_mask(path, key, mask, shapes) for key, mask in arrays.items()}


def _checked_mask(path, key: str, mask: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
    where = f"{path}: mask '{key}'"
    if key not in shapes:
        raise UserError(f"{where} names no initializer of the model{_did_you_mean(key, shapes)}; "
                        "list the weight names with `sparsec inspect MODEL`")  # fmt: skip
    if mask.shape != shapes[key]:
        raise UserError(f"{where} has shape {mask.shape} but the initializer has shape {shapes[key]}; "
                        "regenerate the masks for this model")  # fmt: skip
    return _as_bool(where, mask)


def _as_bool(where: str, mask: np.ndarray) -> np.ndarray:
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind not in "iuf":
        raise UserError(f"{where} has dtype {mask.dtype}; save masks as bool or 0/1 arrays")
    bad = mask[(mask != 0) & (mask != 1)]
    if bad.size:
        raise UserError(f"{where} holds {bad.ravel()[0].item()!r}, not 0 or 1; save masks as bool or 0/1 arrays")
    return mask != 0


def _did_you_mean(key: str, names: dict[str, tuple[int, ...]]) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def apply_masks(model: onnx.ModelProto, masks: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose masked initializers are zeroed outside their masks (what a dense
    engine runs to compute the pruned model)."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    for init in pruned.graph.initializer:
        if init.name in masks:
            data = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.where(masks[init.name], data, 0).astype(data.dtype), init.name))
    return pruned
