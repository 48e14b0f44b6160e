"""Random pruning masks for a generated model: PCONV patterns, unstructured, none, all-ones.

A case's masks come one of three ways: per layer from the styles below (most cases), from the
project's own pruner (`sparsec.prune.prune_model` with random options, so the pruner is fuzzed
too), or not at all. Per layer, a 3x3 conv (groups 1) gets PCONV masks (a few 4-tap patterns
with the centre, kernels and sometimes whole filters or input channels removed), arbitrary tap
sets, or unstructured ones; 1x1 convs and FC weights get unstructured masks, sometimes with whole
rows removed or nothing kept; other convs (depthwise, grouped, 5x5...) unstructured ones. Any
layer may also get no mask or an all-ones mask.
"""

from __future__ import annotations

import numpy as np
import onnx

from sparsec.prune import CANDIDATE_PATTERNS, WeightLayer, prune_model, weight_layers
from sparsec.sparsity import N_TAPS


def random_masks(model: onnx.ModelProto, rng: np.random.Generator, hidden: set[str]) -> dict[str, np.ndarray]:
    """Masks keyed by initializer name for the Conv / Gemm / MatMul weights of `model`, and for
    the `hidden` FC weights that reach their Gemm through a layout op (the pruner misses those)."""
    layers = weight_layers(model)
    source = rng.choice(3, p=[0.7, 0.25, 0.05])
    if source == 0:
        masks = {layer.weight: m for layer in layers if (m := layer_mask(layer, rng)) is not None}
        shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
        masks |= {name: rng.random(shapes[name]) < rng.uniform(0.05, 0.9) for name in sorted(hidden)
                  if rng.random() < 0.7}
    elif source == 1:
        masks = _pruner_masks(model, rng)
    else:
        masks = {}
    return masks


def _pruner_masks(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    masks = prune_model(model, patterns=int(rng.integers(1, 13)),
                        keep_kernels=float(rng.choice([1.0, 0.5, 0.278, 0.1])),
                        unstructured=float(rng.choice([0.0, 0.5, 0.8, 0.95])),
                        prune_first_conv=bool(rng.random() < 0.5))
    return {name: m for name, m in masks.items() if rng.random() < 0.9}  # sometimes a layer without one


def layer_mask(layer: WeightLayer, rng: np.random.Generator) -> np.ndarray | None:
    """One layer's mask in a random style for its kind; None for no mask at all."""
    shape = layer.shape
    pointwise = layer.kind == "conv" and shape[2:] == (1, 1) and layer.groups == 1
    if layer.kind == "conv3x3":
        style = rng.choice(["none", "ones", "pconv", "taps", "unstructured"], p=[0.08, 0.08, 0.54, 0.15, 0.15])
    elif pointwise or layer.kind == "fc":
        style = rng.choice(["none", "ones", "unstructured", "rows", "zero"], p=[0.08, 0.08, 0.6, 0.19, 0.05])
    else:
        style = rng.choice(["none", "ones", "unstructured"], p=[0.3, 0.2, 0.5])
    if style == "none":
        return None
    if style == "ones":
        return np.ones(shape, bool)
    if style == "zero":
        return np.zeros(shape, bool)
    if style == "pconv":
        return pconv_mask(shape, rng)
    if style == "taps":
        return taps_mask(shape, rng)
    mask = rng.random(shape) < rng.uniform(0.02, 0.95)
    if style == "rows":  # whole output rows (or, for a [K, N] weight, input rows) removed too
        mask[rng.random(shape[0]) < 0.3] = False
    return mask


def pconv_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """PCONV: each kernel keeps one of a few 4-tap patterns with the centre; a random fraction of
    kernels is removed, and sometimes whole filters or whole input channels. Sometimes filters
    come in identical groups (what lets eliminate-redundant-loads group them)."""
    o, i = shape[:2]
    count = int(rng.integers(17, 21)) if rng.random() < 0.05 else int(rng.integers(1, 9))  # > 16: dense
    chosen = np.array([CANDIDATE_PATTERNS[p] for p in rng.choice(len(CANDIDATE_PATTERNS), count, replace=False)])
    taps = np.zeros((count, N_TAPS), bool)
    taps[np.arange(count)[:, None], chosen] = True
    mask = taps[rng.integers(0, count, (o, i))]
    mask &= (rng.random((o, i)) < rng.uniform(0.1, 1.0))[..., None]
    if rng.random() < 0.3:  # filters alike in 2s to 4s, shuffled: they can share input loads
        mask = mask[rng.permutation(np.arange(o) // int(rng.integers(2, 5)))]
    if rng.random() < 0.25:
        mask[rng.random(o) < 0.3] = False
    if rng.random() < 0.1:
        mask[:, rng.random(i) < 0.3] = False
    return mask.reshape(shape)


def taps_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Arbitrary tap sets (1 to 9 taps, centre or not) drawn from a small pool, kernels removed;
    half the time every set of the pool has the same number of taps."""
    o, i = shape[:2]
    count = int(rng.integers(1, 7))
    if rng.random() < 0.5:
        size = int(rng.integers(1, N_TAPS + 1))
        pool = np.zeros((count, N_TAPS), bool)
        pool[np.arange(count)[:, None], np.argsort(rng.random((count, N_TAPS)), axis=1)[:, :size]] = True
    else:
        pool = rng.random((count, N_TAPS)) < rng.uniform(0.1, 1.0)
        pool[np.arange(count), rng.integers(0, N_TAPS, count)] = True  # no empty set
    mask = pool[rng.integers(0, len(pool), (o, i))]
    mask &= (rng.random((o, i)) < rng.uniform(0.3, 1.0))[..., None]
    return mask.reshape(shape)
